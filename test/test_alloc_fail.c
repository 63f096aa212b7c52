/* Allocation-failure injection. For every n, the n-th allocation the
 * library makes (bmi_alloc_fail_at, lib/common.h) fails during a whole
 * cycle: load + session + states + prefill + batched prefill + step +
 * batched step + copy + save + load + step, on both tiny fixtures and both
 * file formats; then the same for a tokenizer (parse + encode + decode +
 * streamed decode). Each call either succeeds or returns
 * BM_ERR_OUT_OF_MEMORY with a message; a failed call leaves its state as it
 * was; everything made is freed (LeakSanitizer checks that in the ASan
 * build of CI); nothing crashes. The sweep over n ends with the first run in
 * which the n-th allocation is never reached, and that run's results must
 * equal those of a run without injection.
 *
 * Only allocations of the library itself are counted (bmi_malloc & co.);
 * those inside libyaml, jansson and utf8proc are not injected.
 *
 * BM_ALLOC_SWEEP_STRIDE=k tries only every k-th n (for quick local runs). */
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "fixture.h"
#include "tokenizer.h"

enum { N_PROMPT = 5, N_BATCH = 2 };

/* What a cycle computed, to compare a completed run with the reference. */
typedef struct results {
    float *logits;     /* [V] after the prefill, step, batch and reload */
    size_t n_logits;
    uint8_t *saved;
    size_t saved_len;
} results;

static void results_free(results *r) {
    free(r->logits);
    free(r->saved);
    memset(r, 0, sizeof *r);
}

/* Calls of the current cycle that failed (with BM_ERR_OUT_OF_MEMORY or, a
 * test failure, anything else). */
static int oom_seen;
static uint64_t total_calls;

/* A library call inside the sweep: BM_OK, or BM_ERR_OUT_OF_MEMORY with a
 * message of its own (the message is cleared before the call). Anything else
 * is a failure of the test. Returns 1 on success. */
#define STEP_OK(call) (bmi_clear_error(), step_result((call), #call, __LINE__))

static int step_result(bm_status st, const char *what, int line) {
    total_calls++;
    if (st == BM_OK) return 1;
    if (st == BM_ERR_OUT_OF_MEMORY && bm_last_error()[0]) {
        oom_seen++;
        return 0;
    }
    check_failed++;
    fprintf(stderr, "test_alloc_fail.c:%d: %s -> %d (%s), expected BM_OK or BM_ERR_OUT_OF_MEMORY\n", line, what,
            (int)st, bm_last_error());
    oom_seen++; /* stop the cycle */
    return 0;
}

/* Bytes of a state, saved with injection paused (bm_state_save makes no
 * allocation of its own; the caller's buffer holds everything). */
static uint8_t *snapshot(const bm_state *s, size_t *len) {
    if (bm_state_save(s, NULL, 0, len) != BM_OK) return NULL;
    uint8_t *b = malloc(*len);
    if (b && bm_state_save(s, b, *len, len) != BM_OK) {
        free(b);
        return NULL;
    }
    return b;
}

/* After a failed call: the state saves to the same bytes as before it. */
static void check_state_unchanged(const bm_state *s, const uint8_t *before, size_t before_len, int line) {
    size_t len = 0;
    uint8_t *now = snapshot(s, &len);
    CHECK_MSG(now && len == before_len && memcmp(now, before, len) == 0,
              "line %d: a call that failed for lack of memory changed its state", line);
    free(now);
}

/* Injection with pauses: bmi_alloc_fail_at restarts its count at each call,
 * so keep the absolute count of the cycle here. */
static uint64_t inj_made, inj_fail;
static void inj_arm(uint64_t fail_at) {
    bmi_alloc_fail_at(0);
    inj_made = 0;
    inj_fail = fail_at;
    bmi_alloc_fail_at(fail_at);
}
static void inj_pause(void) { inj_made += bmi_alloc_fail_at(0); }
static void inj_resume(void) { bmi_alloc_fail_at(inj_fail > inj_made ? inj_fail - inj_made : 0); }

/* One cycle on `path` with the `fail_at`-th allocation failing (0: none).
 * Returns 1 if it ran to the end (then `out` holds its results), 0 if a call
 * failed; *made receives the number of allocations made. */
static int model_cycle(const char *path, uint64_t fail_at, results *out, uint64_t *made) {
    bm_model *m = NULL;
    bm_session *s = NULL;
    bm_state *a = NULL, *b = NULL, *c = NULL;
    float *logits = NULL, *batch_logits = NULL;
    uint8_t *saved = NULL, *before = NULL;
    size_t saved_len = 0, before_len = 0;
    int done = 0;
    oom_seen = 0;
    memset(out, 0, sizeof *out);

    bm_model_params mp;
    bm_model_params_init(&mp);
    mp.backend = BM_BACKEND_CPU;
    mp.n_threads = 2;
    bm_session_params sp;
    bm_session_params_init(&sp);
    sp.n_threads = 2;

    inj_arm(fail_at);
    if (!STEP_OK(bm_model_load(path, &mp, &m))) goto out;
    CHECK(m != NULL);
    bm_model_info info;
    info.size = sizeof info;
    if (!STEP_OK(bm_model_get_info(m, &info))) goto out;
    size_t V = (size_t)info.vocab_size;
    logits = malloc(V * sizeof *logits);
    batch_logits = malloc(N_BATCH * V * sizeof *batch_logits);
    if (!logits || !batch_logits) goto out;
    if (!STEP_OK(bm_session_new(m, &sp, &s))) goto out;
    if (!STEP_OK(bm_state_new(m, &a))) goto out;
    if (!STEP_OK(bm_state_new(m, &b))) goto out;
    if (!STEP_OK(bm_state_new(m, &c))) goto out;

    static const int32_t prompt[N_PROMPT] = {3, 1, 4, 1, 5};
    static const int32_t prompt2[3] = {9, 2, 6};

/* A call that takes state `st`: on failure, `st` must be unchanged (checked
 * with the injection paused: saving allocates nothing in the library). */
#define STATE_STEP(st, call)                                                                 \
    do {                                                                                     \
        inj_pause();                                                                         \
        free(before);                                                                        \
        before = snapshot(st, &before_len);                                                  \
        inj_resume();                                                                        \
        if (!STEP_OK(call)) {                                                                \
            inj_pause();                                                                     \
            check_state_unchanged(st, before, before_len, __LINE__);                         \
            goto out;                                                                        \
        }                                                                                    \
    } while (0)

    STATE_STEP(a, bm_prefill(s, a, prompt, N_PROMPT, logits));
    {
        bm_state *states[N_BATCH] = {b, c};
        const int32_t *toks[N_BATCH] = {prompt, prompt2};
        const size_t ns[N_BATCH] = {N_PROMPT, 3};
        STATE_STEP(b, bm_prefill_batch(s, states, toks, ns, N_BATCH, batch_logits));
    }
    STATE_STEP(a, bm_step(s, a, 7, logits));
    {
        bm_state *states[N_BATCH] = {a, b};
        const int32_t toks[N_BATCH] = {8, 7};
        STATE_STEP(a, bm_step_batch(s, states, toks, N_BATCH, batch_logits));
    }
    STATE_STEP(c, bm_state_copy(c, a));
    inj_pause();
    saved = snapshot(c, &saved_len); /* the caller's buffer: nothing to inject */
    inj_resume();
    if (!saved) goto out;
    STATE_STEP(b, bm_state_load(b, saved, saved_len));
    STATE_STEP(b, bm_step(s, b, 2, logits));
#undef STATE_STEP
    done = 1;
    out->logits = logits;
    out->n_logits = V;
    logits = NULL;
    out->saved = saved;
    out->saved_len = saved_len;
    saved = NULL;

out:
    inj_pause();
    *made = inj_made;
    bm_state_free(a);
    bm_state_free(b);
    bm_state_free(c);
    bm_session_free(s);
    bm_model_free(m);
    free(logits);
    free(batch_logits);
    free(saved);
    free(before);
    return done;
}

/* Sweep n = 1, 2, ... until a run completes with the n-th allocation never
 * reached. Returns the number of runs. */
static int sweep_model(const char *name, const char *path) {
    results ref;
    uint64_t made = 0;
    CHECK_MSG(model_cycle(path, 0, &ref, &made), "%s: the cycle fails without injection: %s", name,
              bm_last_error());
    if (!ref.logits) return 0;
    const char *stride_env = getenv("BM_ALLOC_SWEEP_STRIDE");
    uint64_t stride = stride_env ? strtoull(stride_env, NULL, 10) : 1;
    if (stride < 1) stride = 1;
    uint64_t n, runs = 0, failures = 0;
    for (n = 1;; n += stride) {
        results r;
        uint64_t got = 0;
        int before_failed = check_failed;
        int completed = model_cycle(path, n, &r, &got);
        runs++;
        if (got >= n) {
            /* The n-th allocation was made and failed: some call must say so. */
            CHECK_MSG(!completed && oom_seen, "%s: allocation %llu failed but every call succeeded", name,
                      (unsigned long long)n);
            failures++;
        } else {
            CHECK_MSG(completed, "%s: no injected failure at n=%llu (%llu allocations) yet a call failed: %s",
                      name, (unsigned long long)n, (unsigned long long)got, bm_last_error());
            if (completed) {
                CHECK_MSG(r.n_logits == ref.n_logits &&
                              memcmp(r.logits, ref.logits, r.n_logits * sizeof(float)) == 0 &&
                              r.saved_len == ref.saved_len && memcmp(r.saved, ref.saved, r.saved_len) == 0,
                          "%s: results of the uninjected run differ", name);
            }
            results_free(&r);
            break;
        }
        results_free(&r);
        if (check_failed - before_failed > 0 && check_failed > 20) break; /* enough noise */
        if (n > 1000000) {
            CHECK_MSG(0, "%s: the sweep does not end", name);
            break;
        }
    }
    printf("%s: %llu runs, %llu injected failures, %llu allocations per cycle\n", name, (unsigned long long)runs,
           (unsigned long long)failures, (unsigned long long)made);
    results_free(&ref);
    return (int)runs;
}

/* ---- tokenizer ------------------------------------------------------------ */

static const char TEXT[] = "Hello, world! <|endoftext|> caf\xc3\xa9 na\xc3\xafve \xf0\x9f\x98\x80 12345 it's\n\n\t  x";

static int tok_step(bm_status st, const char *what, int line) { return step_result(st, what, line); }
#define TOK_OK(call) (bmi_clear_error(), tok_step((call), #call, __LINE__))

/* Parse + encode + decode + streamed decode. Returns 1 when complete and
 * writes the decoded text's length. */
static int tokenizer_cycle(const char *json, size_t json_len, uint64_t fail_at, uint64_t *made, size_t *out_len,
                           int32_t *out_ids, size_t *out_n) {
    bm_tokenizer *t = NULL;
    bm_detokenizer *d = NULL;
    int done = 0;
    oom_seen = 0;
    int32_t ids[256];
    char text[1024];
    size_t n = 0, len = 0, piece = 0, used = 0;
    bmi_alloc_fail_at(fail_at);
    if (!TOK_OK(bmi_tokenizer_parse(json, json_len, &t))) goto out;
    if (!TOK_OK(bm_tokenize(t, TEXT, sizeof TEXT - 1, ids, 256, &n))) goto out;
    if (!TOK_OK(bm_detokenize(t, ids, n, text, sizeof text, &len))) goto out;
    if (!TOK_OK(bm_detokenizer_new(t, &d))) goto out;
    for (size_t i = 0; i < n; i++) {
        if (!TOK_OK(bm_detokenizer_push(d, ids[i], text + used, sizeof text - used, &piece))) goto out;
        used += piece;
    }
    if (!TOK_OK(bm_detokenizer_flush(d, text + used, sizeof text - used, &piece))) goto out;
    used += piece;
    CHECK(used == len);
    *out_len = len;
    memcpy(out_ids, ids, n * sizeof *ids);
    *out_n = n;
    done = 1;
out:
    *made = bmi_alloc_fail_at(0);
    bm_detokenizer_free(d);
    bm_tokenizer_free(t);
    return done;
}

static int sweep_tokenizer(const char *name, const char *json, size_t json_len, uint64_t stride) {
    uint64_t made = 0;
    size_t ref_len = 0, ref_n = 0;
    int32_t ref_ids[256];
    CHECK_MSG(tokenizer_cycle(json, json_len, 0, &made, &ref_len, ref_ids, &ref_n),
              "%s: the cycle fails without injection: %s", name, bm_last_error());
    uint64_t n, runs = 0, failures = 0;
    for (n = 1;; n += stride) {
        uint64_t got = 0;
        size_t len = 0, nids = 0;
        int32_t ids[256];
        int completed = tokenizer_cycle(json, json_len, n, &got, &len, ids, &nids);
        runs++;
        if (got >= n) {
            CHECK_MSG(!completed && oom_seen, "%s: allocation %llu failed but every call succeeded", name,
                      (unsigned long long)n);
            failures++;
        } else {
            CHECK_MSG(completed && len == ref_len && nids == ref_n && memcmp(ids, ref_ids, nids * sizeof *ids) == 0,
                      "%s: the run without injected failure (n=%llu) differs", name, (unsigned long long)n);
            break;
        }
        if (check_failed > 20) break;
    }
    printf("%s: %llu runs, %llu injected failures, %llu allocations per cycle\n", name, (unsigned long long)runs,
           (unsigned long long)failures, (unsigned long long)made);
    return (int)runs;
}

/* The real tokenizer.json cut down to its first `keep` ids (vocabulary,
 * merges among them, added tokens among them), as JSON text, so the sweep
 * stays short. NULL if jansson cannot read it. */
#include <jansson.h>
static char *cut_tokenizer(const char *path, int keep, size_t *len) {
    json_error_t err;
    json_t *root = json_load_file(path, 0, &err);
    if (!root) return NULL;
    json_t *model = json_object_get(root, "model");
    json_t *vocab = json_object_get(model, "vocab");
    json_t *merges = json_object_get(model, "merges");
    json_t *added = json_object_get(root, "added_tokens");
    char *out = NULL;
    if (!json_is_object(vocab) || !json_is_array(merges) || !json_is_array(added)) goto done;
    json_t *small = json_object();
    const char *key;
    json_t *value;
    json_object_foreach(vocab, key, value) {
        if (json_integer_value(value) < keep) json_object_set(small, key, value);
    }
    json_t *small_merges = json_array();
    size_t i;
    json_array_foreach(merges, i, value) {
        const char *m = json_string_value(value);
        if (!m) continue;
        const char *sp = strchr(m, ' ');
        if (!sp) continue;
        char a[512], b[512], ab[1024];
        size_t la = (size_t)(sp - m), lb = strlen(sp + 1);
        if (la >= sizeof a || lb >= sizeof b) continue;
        memcpy(a, m, la);
        a[la] = '\0';
        memcpy(b, sp + 1, lb + 1);
        snprintf(ab, sizeof ab, "%s%s", a, b);
        if (json_object_get(small, a) && json_object_get(small, b) && json_object_get(small, ab))
            json_array_append(small_merges, value);
    }
    json_t *small_added = json_array();
    json_array_foreach(added, i, value) {
        if (json_integer_value(json_object_get(value, "id")) < keep) json_array_append(small_added, value);
    }
    json_object_set_new(model, "vocab", small);
    json_object_set_new(model, "merges", small_merges);
    json_object_set_new(root, "added_tokens", small_added);
    out = json_dumps(root, JSON_COMPACT);
    if (out) *len = strlen(out);
done:
    json_decref(root);
    return out;
}

int main(void) {
    static const char *fixtures[] = {"fixtures/tiny-f32", "fixtures/tiny-bf16"};
    static const char *files[] = {"model.safetensors", "pytorch_model.bin"};
    for (int f = 0; f < 2; f++) {
        for (int k = 0; k < 2; k++) {
            char rel[256], name[256];
            snprintf(rel, sizeof rel, "%s/%s", fixtures[f], files[k]);
            snprintf(name, sizeof name, "alloc sweep %s", rel);
            sweep_model(name, fixture_path(rel));
        }
    }

    size_t len = 0;
    char *json = cut_tokenizer(fixture_path("tokenizer/20B_tokenizer.json"), 400, &len);
    CHECK_MSG(json != NULL, "cannot read the tokenizer fixture");
    if (json) {
        sweep_tokenizer("alloc sweep tokenizer (cut to 400 ids)", json, len, 1);
        free(json);
    }
    /* The full tokenizer: every n while that stays under ~2000 runs (it
     * makes a few dozen allocations today), else a stride over them. */
    json = read_file(fixture_path("tokenizer/20B_tokenizer.json"), &len);
    if (json) {
        uint64_t made = 0;
        size_t l = 0, nids = 0;
        int32_t ids[256];
        tokenizer_cycle(json, len, 0, &made, &l, ids, &nids);
        uint64_t stride = made / 2000 + 1;
        sweep_tokenizer(stride > 1 ? "alloc sweep tokenizer (full, sampled)" : "alloc sweep tokenizer (full)", json, len, stride);
        free(json);
    }
    return check_summary("test_alloc_fail");
}
