/* Threads: one model (and one tokenizer) shared by 8 threads, each with its
 * own session and states, running prefill, batched prefill, steps, batched
 * steps, state save/load/copy, sampling and tokenization at the same time.
 * Every thread's results must equal, bit for bit, those of the same work run
 * on one thread beforehand. Each thread also makes calls fail on purpose and
 * checks that bm_last_error() holds its own message.
 *
 * The ThreadSanitizer build of CI runs this program:
 *   make BUILD=build-tsan CUDA=0 SAN=-fsanitize=thread CFLAGS="-O1 -g" build-tsan/test_threads
 * BM_THREADS_ROUNDS=n repeats the concurrent part n times (default 3). */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "fixture.h"

enum { N_THREADS = 8, N_PROMPT = 7, N_STEPS = 6, N_BATCH = 3, MAX_TOKENS = 128 };

typedef struct work {
    int index;
    const bm_model *model;
    const bm_tokenizer *tok; /* may be NULL */
    int session_threads;     /* 1 or 2: the sessions' worker pools run too */
    /* results */
    float *logits;           /* [V] after the last step of stream a */
    float *batch_logits;     /* [N_BATCH * V] */
    uint8_t *saved;          /* stream a saved after its steps */
    size_t saved_len;
    uint64_t n_tokens;
    int32_t sampled[N_STEPS];
    int32_t ids[MAX_TOKENS];
    size_t n_ids;
    char text[512];
    size_t text_len;
    int errors;              /* calls that failed unexpectedly, or bad error messages */
    char first_error[256];
} work;

static void note_error(work *w, const char *what) {
    if (w->errors++ == 0) snprintf(w->first_error, sizeof w->first_error, "%s: %s", what, bm_last_error());
}

#define W_OK(w, call)                                                                        \
    do {                                                                                     \
        if ((call) != BM_OK) note_error((w), #call);                                         \
    } while (0)

/* The whole per-thread job. Deterministic in w->index. */
static void *run_work(void *arg) {
    work *w = arg;
    const bm_model *m = w->model;
    bm_model_info info;
    info.size = sizeof info;
    if (bm_model_get_info(m, &info) != BM_OK) {
        note_error(w, "bm_model_get_info");
        return NULL;
    }
    size_t V = (size_t)info.vocab_size;
    bm_session_params sp;
    bm_session_params_init(&sp);
    sp.n_threads = w->session_threads;
    bm_session *s = NULL;
    bm_state *a = NULL, *b = NULL, *c = NULL;
    float *logits = malloc(V * sizeof *logits);
    float *batch = malloc(N_BATCH * V * sizeof *batch);
    uint8_t *buf = NULL;
    W_OK(w, bm_session_new(m, &sp, &s));
    W_OK(w, bm_state_new(m, &a));
    W_OK(w, bm_state_new(m, &b));
    W_OK(w, bm_state_new(m, &c));
    if (w->errors || !logits || !batch) goto out;

    int32_t prompt[N_PROMPT];
    for (int i = 0; i < N_PROMPT; i++) prompt[i] = (int32_t)((w->index * 37 + i * 11 + 1) % (int)V);

    /* Prefill, then sample and step. */
    W_OK(w, bm_prefill(s, a, prompt, N_PROMPT, logits));
    bm_sampler_params sampler;
    bm_sampler_params_init(&sampler);
    uint64_t rng = 1000 + (uint64_t)w->index;
    for (int i = 0; i < N_STEPS; i++) {
        W_OK(w, bm_sample(logits, V, &sampler, &rng, prompt, N_PROMPT, &w->sampled[i]));
        W_OK(w, bm_step(s, a, w->sampled[i], logits));
    }

    /* Save a, load it into b, step both with the same token: equal logits. */
    size_t len = 0;
    W_OK(w, bm_state_save(a, NULL, 0, &len));
    buf = malloc(len ? len : 1);
    if (!buf) goto out;
    W_OK(w, bm_state_save(a, buf, len, &len));
    W_OK(w, bm_state_load(b, buf, len));
    W_OK(w, bm_state_copy(c, b));
    {
        bm_state *states[N_BATCH] = {a, b, c};
        const int32_t toks[N_BATCH] = {5, 5, (int32_t)(w->index % (int)V)};
        W_OK(w, bm_step_batch(s, states, toks, N_BATCH, batch));
        if (memcmp(batch, batch + V, V * sizeof *batch) != 0) note_error(w, "a saved and loaded state steps differently");
    }
    /* Batched prefill of three different prompts. */
    {
        bm_state *states[N_BATCH] = {a, b, c};
        const int32_t *toks[N_BATCH] = {prompt, prompt + 1, prompt + 2};
        const size_t ns[N_BATCH] = {N_PROMPT, N_PROMPT - 1, 2};
        W_OK(w, bm_prefill_batch(s, states, toks, ns, N_BATCH, batch));
    }
    W_OK(w, bm_step(s, a, 3, logits));
    w->n_tokens = bm_state_n_tokens(a);
    W_OK(w, bm_state_save(a, buf, len, &w->saved_len));
    w->saved = buf;
    buf = NULL;
    w->logits = logits;
    logits = NULL;
    w->batch_logits = batch;
    batch = NULL;

    /* Errors are per thread: make one with a message naming this thread. */
    {
        char want[64];
        int32_t bad = (int32_t)V + w->index;
        if (bm_step(s, a, bad, NULL) != BM_ERR_INVALID_ARGUMENT) note_error(w, "bm_step accepted a bad token");
        snprintf(want, sizeof want, "%d", (int)bad);
        if (!strstr(bm_last_error(), want)) note_error(w, "bm_last_error does not name this thread's token");
    }

    /* The shared tokenizer. */
    if (w->tok) {
        char text[160];
        int n = snprintf(text, sizeof text, "Thread %d says hello, caf\xc3\xa9 \xf0\x9f\x98\x80<|endoftext|> %d",
                         w->index, w->index * 12345);
        W_OK(w, bm_tokenize(w->tok, text, (size_t)n, w->ids, MAX_TOKENS, &w->n_ids));
        W_OK(w, bm_detokenize(w->tok, w->ids, w->n_ids, w->text, sizeof w->text, &w->text_len));
        if (w->text_len != (size_t)n || memcmp(w->text, text, (size_t)n) != 0) note_error(w, "round trip");
    }
out:
    bm_state_free(a);
    bm_state_free(b);
    bm_state_free(c);
    bm_session_free(s);
    free(logits);
    free(batch);
    free(buf);
    return NULL;
}

static void work_free(work *w) {
    free(w->logits);
    free(w->batch_logits);
    free(w->saved);
}

static void init_work(work *w, int i, const bm_model *m, const bm_tokenizer *t) {
    memset(w, 0, sizeof *w);
    w->index = i;
    w->model = m;
    w->tok = t;
    w->session_threads = 1 + (i % 2);
}

static int same(const work *x, const work *y, size_t V) {
    return x->logits && y->logits && memcmp(x->logits, y->logits, V * sizeof(float)) == 0 &&
           memcmp(x->batch_logits, y->batch_logits, N_BATCH * V * sizeof(float)) == 0 &&
           x->saved_len == y->saved_len && memcmp(x->saved, y->saved, x->saved_len) == 0 &&
           x->n_tokens == y->n_tokens && memcmp(x->sampled, y->sampled, sizeof x->sampled) == 0 &&
           x->n_ids == y->n_ids && memcmp(x->ids, y->ids, x->n_ids * sizeof(int32_t)) == 0 &&
           x->text_len == y->text_len && memcmp(x->text, y->text, x->text_len) == 0;
}

static void run_model(const char *name, const char *dir, const bm_tokenizer *tok, int rounds) {
    bm_model_params p;
    bm_model_params_init(&p);
    p.backend = BM_BACKEND_CPU;
    p.n_threads = 2;
    bm_model *m = NULL;
    CHECK_OK(bm_model_load(dir, &p, &m));
    if (!m) return;
    bm_model_info info;
    info.size = sizeof info;
    CHECK_OK(bm_model_get_info(m, &info));
    size_t V = (size_t)info.vocab_size;

    /* The reference: every thread's work, one after another on this thread. */
    static work ref[N_THREADS], got[N_THREADS];
    for (int i = 0; i < N_THREADS; i++) {
        init_work(&ref[i], i, m, tok);
        run_work(&ref[i]);
        CHECK_MSG(ref[i].errors == 0, "%s reference %d: %s", name, i, ref[i].first_error);
    }
    for (int r = 0; r < rounds; r++) {
        pthread_t th[N_THREADS];
        int started[N_THREADS] = {0};
        for (int i = 0; i < N_THREADS; i++) {
            init_work(&got[i], i, m, tok);
            started[i] = pthread_create(&th[i], NULL, run_work, &got[i]) == 0;
            CHECK(started[i]);
        }
        for (int i = 0; i < N_THREADS; i++)
            if (started[i]) pthread_join(th[i], NULL);
        for (int i = 0; i < N_THREADS; i++) {
            CHECK_MSG(got[i].errors == 0, "%s round %d thread %d: %s", name, r, i, got[i].first_error);
            CHECK_MSG(same(&got[i], &ref[i], V), "%s round %d thread %d: results differ from one thread's", name,
                      r, i);
            work_free(&got[i]);
        }
    }
    for (int i = 0; i < N_THREADS; i++) work_free(&ref[i]);
    bm_model_free(m);
}

int main(void) {
    const char *rounds_env = getenv("BM_THREADS_ROUNDS");
    int rounds = rounds_env ? atoi(rounds_env) : 3;
    if (rounds < 1) rounds = 1;
    bm_tokenizer *tok = NULL;
    CHECK_OK(bm_tokenizer_load(fixture_path("tokenizer/20B_tokenizer.json"), &tok));
    char f32[4096], bf16[4096];
    snprintf(f32, sizeof f32, "%s", fixture_path("fixtures/tiny-f32"));
    snprintf(bf16, sizeof bf16, "%s", fixture_path("fixtures/tiny-bf16/pytorch_model.bin"));
    run_model("tiny-f32", f32, tok, rounds);
    run_model("tiny-bf16 (torch)", bf16, NULL, rounds);
    bm_tokenizer_free(tok);
    return check_summary("test_threads");
}
