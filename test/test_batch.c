/* Many streams at once (CPU): bm_step_batch, bm_step_batch_sample and
 * bm_prefill_batch equal the same work done one stream at a time, for
 * batches of many sizes with different histories; cancellation leaves states
 * as documented. */
#include <stdlib.h>
#include <time.h>

#include "check.h"
#include "fixture.h"

static uint64_t seed;
static uint32_t next_rand(void) {
    seed = seed * 6364136223846793005ull + 1442695040888963407ull;
    return (uint32_t)(seed >> 33);
}

static bm_model *model;
static bm_session *session;
static size_t V;

/* Streams with random histories: ref[i] and batch[i] start equal. */
static void make_streams(bm_state **ref, bm_state **batch, size_t n, int identical) {
    int32_t prompt[40];
    size_t len = 1 + next_rand() % 30;
    for (size_t k = 0; k < len; k++) prompt[k] = (int32_t)(next_rand() % V);
    for (size_t i = 0; i < n; i++) {
        CHECK_OK(bm_state_new(model, &ref[i]));
        CHECK_OK(bm_state_new(model, &batch[i]));
        if (!identical) {
            len = 1 + next_rand() % 30;
            for (size_t k = 0; k < len; k++) prompt[k] = (int32_t)(next_rand() % V);
        }
        CHECK_OK(bm_prefill(session, ref[i], prompt, len, NULL));
        CHECK_OK(bm_state_copy(batch[i], ref[i]));
    }
}

static void free_streams(bm_state **a, bm_state **b, size_t n) {
    for (size_t i = 0; i < n; i++) {
        bm_state_free(a[i]);
        bm_state_free(b[i]);
    }
}

static void check_step_batch(size_t n, int identical) {
    bm_state **ref = calloc(n, sizeof *ref), **batch = calloc(n, sizeof *batch);
    int32_t *tokens = malloc(n * sizeof *tokens);
    float *lb = malloc(n * V * sizeof(float)), *lr = malloc(V * sizeof(float));
    make_streams(ref, batch, n, identical);
    double worst = 0;
    for (int round = 0; round < 2; round++) {
        int32_t t0 = (int32_t)(next_rand() % V);
        for (size_t i = 0; i < n; i++) tokens[i] = identical ? t0 : (int32_t)(next_rand() % V);
        CHECK_OK(bm_step_batch(session, batch, tokens, n, lb));
        for (size_t i = 0; i < n; i++) {
            CHECK_OK(bm_step(session, ref[i], tokens[i], lr));
            double e = rel_error(lb + i * V, lr, V);
            if (e > worst) worst = e;
        }
    }
    CHECK_MSG(worst <= 1e-4, "step_batch of %zu%s: rel error %.3g", n, identical ? " identical" : "", worst);
    /* and the states themselves agree: one more step each, alone */
    for (size_t i = 0; i < n; i += 1 + n / 8) {
        CHECK_OK(bm_step(session, ref[i], 1, lr));
        CHECK_OK(bm_step(session, batch[i], 1, lb));
        CHECK(rel_error(lb, lr, V) <= 1e-4);
        CHECK(bm_state_n_tokens(ref[i]) == bm_state_n_tokens(batch[i]));
    }
    free_streams(ref, batch, n);
    free(ref);
    free(batch);
    free(tokens);
    free(lb);
    free(lr);
}

static void check_step_batch_sample(size_t n) {
    bm_state **ref = calloc(n, sizeof *ref), **batch = calloc(n, sizeof *batch);
    int32_t *tokens = malloc(n * sizeof *tokens), *out = malloc(n * sizeof *out);
    uint64_t *rngs = malloc(n * sizeof *rngs), *ref_rngs = malloc(n * sizeof *rngs);
    float *lr = malloc(V * sizeof(float));
    make_streams(ref, batch, n, 0);
    bm_sampler_params p;
    bm_sampler_params_init(&p);
    p.repeat_penalty = 1;
    for (size_t i = 0; i < n; i++) {
        tokens[i] = (int32_t)(next_rand() % V);
        rngs[i] = ref_rngs[i] = 1000 + i;
    }
    int same = 1;
    for (int round = 0; round < 3; round++) {
        CHECK_OK(bm_step_batch_sample(session, batch, tokens, n, &p, rngs, out));
        for (size_t i = 0; i < n; i++) {
            int32_t want;
            CHECK_OK(bm_step(session, ref[i], tokens[i], lr));
            CHECK_OK(bm_sample(lr, V, &p, &ref_rngs[i], NULL, 0, &want));
            same &= want == out[i] && rngs[i] == ref_rngs[i];
            tokens[i] = out[i];
        }
    }
    CHECK_MSG(same, "step_batch_sample of %zu streams differs from step + sample", n);
    p.repeat_penalty = 1.3f;
    CHECK_ERR(bm_step_batch_sample(session, batch, tokens, n, &p, rngs, out), BM_ERR_INVALID_ARGUMENT);
    free_streams(ref, batch, n);
    free(ref);
    free(batch);
    free(tokens);
    free(out);
    free(rngs);
    free(ref_rngs);
    free(lr);
}

static void check_prefill_batch(size_t n, size_t max_len) {
    bm_state **ref = calloc(n, sizeof *ref), **batch = calloc(n, sizeof *batch);
    int32_t **prompts = calloc(n, sizeof *prompts);
    size_t *lens = calloc(n, sizeof *lens);
    float *lb = malloc(n * V * sizeof(float)), *lr = malloc(V * sizeof(float));
    make_streams(ref, batch, n, 0); /* different histories before the prompts too */
    for (size_t i = 0; i < n; i++) {
        lens[i] = 1 + next_rand() % max_len;
        prompts[i] = malloc(lens[i] * sizeof(int32_t));
        for (size_t k = 0; k < lens[i]; k++) prompts[i][k] = (int32_t)(next_rand() % V);
    }
    CHECK_OK(bm_prefill_batch(session, batch, (const int32_t *const *)prompts, lens, n, lb));
    double worst = 0;
    int counts = 1;
    for (size_t i = 0; i < n; i++) {
        CHECK_OK(bm_prefill(session, ref[i], prompts[i], lens[i], lr));
        double e = rel_error(lb + i * V, lr, V);
        if (e > worst) worst = e;
        counts &= bm_state_n_tokens(ref[i]) == bm_state_n_tokens(batch[i]);
    }
    CHECK_MSG(worst <= 1e-4, "prefill_batch of %zu (up to %zu tokens): rel error %.3g", n, max_len, worst);
    CHECK(counts);
    for (size_t i = 0; i < n; i += 1 + n / 5) {
        CHECK_OK(bm_step(session, ref[i], 2, lr));
        CHECK_OK(bm_step(session, batch[i], 2, lb));
        CHECK(rel_error(lb, lr, V) <= 1e-4);
    }
    /* the same state twice is refused before anything runs */
    if (n >= 2) {
        bm_state *dup[2] = {batch[0], batch[0]};
        uint64_t before = bm_state_n_tokens(batch[0]);
        CHECK_ERR(bm_prefill_batch(session, dup, (const int32_t *const *)prompts, lens, 2, NULL),
                  BM_ERR_INVALID_ARGUMENT);
        CHECK(bm_state_n_tokens(batch[0]) == before);
    }
    for (size_t i = 0; i < n; i++) free(prompts[i]);
    free_streams(ref, batch, n);
    free(ref);
    free(batch);
    free(prompts);
    free(lens);
    free(lb);
    free(lr);
}

static int polls_left;
static int cancel_after(void *unused) {
    (void)unused;
    return polls_left-- <= 0;
}

/* A long prefill cancelled between chunks: the state has consumed whole
 * chunks, and equals a prefill of exactly that prefix. */
static void check_cancellation(void) {
    bm_session_params sp;
    bm_session_params_init(&sp);
    sp.cancel = cancel_after;
    bm_session *cs = NULL;
    CHECK_OK(bm_session_new(model, &sp, &cs));
    enum { LEN = 700 };
    int32_t *prompt = malloc(LEN * sizeof(int32_t));
    for (int k = 0; k < LEN; k++) prompt[k] = (int32_t)(next_rand() % V);
    bm_state *st = NULL, *ref = NULL;
    CHECK_OK(bm_state_new(model, &st));
    CHECK_OK(bm_state_new(model, &ref));
    polls_left = 0; /* the first poll, before any work, cancels: untouched */
    CHECK_ERR(bm_prefill(cs, st, prompt, LEN, NULL), BM_ERR_CANCELLED);
    CHECK(bm_state_n_tokens(st) == 0);
    polls_left = 2; /* the check before work passes, one chunk boundary passes, then stop */
    CHECK_ERR(bm_prefill(cs, st, prompt, LEN, NULL), BM_ERR_CANCELLED);
    uint64_t done = bm_state_n_tokens(st);
    CHECK_MSG(done > 0 && done < LEN, "cancelled prefill consumed %llu of %d", (unsigned long long)done, LEN);
    CHECK_OK(bm_prefill(session, ref, prompt, (size_t)done, NULL));
    float *a = malloc(V * 4), *b = malloc(V * 4);
    CHECK_OK(bm_step(session, st, 5, a));
    CHECK_OK(bm_step(session, ref, 5, b));
    CHECK_MSG(rel_error(a, b, V) <= 1e-5, "cancelled state differs from a prefill of its prefix");
    /* step_batch is cancelled before any work */
    polls_left = 0;
    bm_state *one[1] = {st};
    int32_t tok = 3;
    uint64_t before = bm_state_n_tokens(st);
    CHECK_ERR(bm_step_batch(cs, one, &tok, 1, NULL), BM_ERR_CANCELLED);
    CHECK(bm_state_n_tokens(st) == before);
    free(a);
    free(b);
    free(prompt);
    bm_state_free(st);
    bm_state_free(ref);
    bm_session_free(cs);
}

int main(void) {
    seed = (uint64_t)time(NULL);
    printf("seed %llu\n", (unsigned long long)seed);
    bm_model_params p;
    bm_model_params_init(&p);
    p.backend = BM_BACKEND_CPU;
    p.n_threads = 2;
    CHECK_OK(bm_model_load(fixture_path("fixtures/tiny-bf16"), &p, &model));
    if (!model) return check_summary("test_batch");
    CHECK_OK(bm_session_new(model, NULL, &session));
    bm_model_info info = {.size = sizeof info};
    bm_model_get_info(model, &info);
    V = (size_t)info.vocab_size;
    size_t sizes[] = {1, 2, 3, 7, 64, 300};
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) check_step_batch(sizes[k], 0);
    check_step_batch(64, 1); /* every stream routed to the same experts */
    check_step_batch_sample(7);
    check_step_batch_sample(300);
    check_prefill_batch(1, 5);
    check_prefill_batch(3, 40);
    check_prefill_batch(7, 600); /* streams longer than a chunk, split across passes */
    check_prefill_batch(300, 12); /* many short prompts packed */
    check_cancellation();
    bm_session_free(session);
    bm_model_free(model);
    return check_summary("test_batch");
}
