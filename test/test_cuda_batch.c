/* Many streams at once on the CUDA backend: batched steps and batched prefill
 * against the same streams run alone.
 *
 * Three CUDA models are made over the same random weights: a reference that
 * always takes the GEMV path (BM_CUDA_ROWS_MIN huge; one stream at a time, it
 * matches the CPU to ~1e-5), one with the default choice of path (GEMV below
 * the crossover, the row path of GEMMs at and above it), and one that takes
 * the row path for every batch, even of one stream (padding rows of a
 * bucket). Checked within the SPEC.md bf16 tolerance (2e-2 relative over the
 * logits vector), the same greedy token wherever the reference's top-2
 * margin exceeds 1e-2, and the states after the steps:
 *  - batches of 1, 2, 3, 7, 64 and 300 streams with different histories
 *    (prompts of 1..40 tokens), two rounds of bm_step_batch with logits,
 *    two without (states compared), then bm_step_batch_sample (greedy);
 *  - the same state twice in one batch is rejected and changes nothing;
 *  - 100 streams in one state and one token (every MoE layer routes all rows
 *    to one expert, more rows than one GEMM tile) and 8 streams whose first
 *    MoE layer routes each to a different expert;
 *  - bm_prefill_batch of ragged prompts (1 to 2100 tokens, so one prompt
 *    crosses a chunk boundary) against separate bm_prefill calls: logits and
 *    states; and a cancel between chunks leaves whole segments done.
 * Models: a small one (d 64, layers 8,r,8,r8,1 with biases: an MoE-only first
 * layer, a parallel layer, a dense MLP), an f16 one, and the 2.8B widths and vocabulary
 * in five layers and, unless BM_CUDA_TEST_SMALL is set, the released 2.8B
 * dims at full depth (36 layers: where plain bf16 activations would flip
 * near-tied routing decisions; the row path's two-halves inputs must not).
 * Without a GPU there is nothing to run. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "blackmamba.h"
#include "bmcuda.h"
#include "check.h"
#include "fixture.h"
#include "common.h"
#include "model.h"
#include "test_cuda_random.h"

#define TOLERANCE 2e-2
#define MARGIN 1e-2

static int clear_winner(const float *ref, size_t n) { return top2_margin(ref, n) > MARGIN; }

typedef struct tally {
    double worst;
    int rows, greedy_checked, greedy_wrong, over;
} tally;

static void compare_rows(tally *t, const float *got, const float *ref, size_t rows, size_t V) {
    for (size_t r = 0; r < rows; r++) {
        double e = rel_error(got + r * V, ref + r * V, V);
        if (e > t->worst || isnan(e)) t->worst = e;
        if (!(e <= TOLERANCE)) t->over++;
        t->rows++;
        if (clear_winner(ref + r * V, V)) {
            t->greedy_checked++;
            if (argmax(got + r * V, V) != argmax(ref + r * V, V)) t->greedy_wrong++;
        }
    }
}

/* checked 0: printed only */
static void report(const char *what, const tally *t, int checked) {
    printf("  %-58s rows %4d  worst rel err %.2e  greedy %d/%d agree", what, t->rows, t->worst,
           t->greedy_checked - t->greedy_wrong, t->greedy_checked);
    if (t->over) printf("  (%d rows over %.0e)", t->over, TOLERANCE);
    printf("%s\n", checked ? "" : "  [diagnostic]");
    if (checked) {
        CHECK_MSG(t->worst <= TOLERANCE, "%s: relative error %.3e above %.0e", what, t->worst, TOLERANCE);
        CHECK_MSG(t->greedy_wrong == 0, "%s: %d of %d clear greedy choices differ", what, t->greedy_wrong,
                  t->greedy_checked);
    } else {
        CHECK_MSG(!isnan(t->worst) && !isinf(t->worst), "%s: NaN or inf", what);
    }
}

static void random_tokens(int32_t *t, size_t n, uint32_t seed, size_t V) {
    uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
    for (size_t i = 0; i < n; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        t[i] = (int32_t)(x % V);
    }
}

typedef struct models {
    random_weights w;
    bm_model *ref, *dflt, *rows; /* GEMV always; default crossover; row path always */
    bm_session *sref, *sdflt, *srows;
    size_t V, state_len;
} models;

static bm_status make_model(models *M, const char *rows_min, bm_model **m, bm_session **s) {
    if (rows_min) setenv("BM_CUDA_ROWS_MIN", rows_min, 1);
    else unsetenv("BM_CUDA_ROWS_MIN");
    bm_status st = random_model_create(&M->w, BM_BACKEND_CUDA, 0, m);
    unsetenv("BM_CUDA_ROWS_MIN");
    if (st == BM_OK) st = bm_session_new(*m, NULL, s);
    return st;
}

static int models_make(models *M, const bmi_random_config *rc) {
    memset(M, 0, sizeof *M);
    bm_status st = random_weights_make(rc, 16, &M->w);
    CHECK_MSG(st == BM_OK, "random weights: %s", bm_last_error());
    if (st) return 0;
    st = make_model(M, "1000000000", &M->ref, &M->sref);
    if (st == BM_OK) st = make_model(M, NULL, &M->dflt, &M->sdflt);
    if (st == BM_OK) st = make_model(M, "1", &M->rows, &M->srows);
    CHECK_MSG(st == BM_OK, "CUDA models: %s", bm_last_error());
    if (st) return 0;
    M->V = (size_t)M->ref->config.vocab_size;
    bm_state *tmp = NULL;
    CHECK_OK(bm_state_new(M->ref, &tmp));
    CHECK_OK(bm_state_save(tmp, NULL, 0, &M->state_len));
    bm_state_free(tmp);
    return 1;
}

static void models_free(models *M) {
    bm_session_free(M->sref);
    bm_session_free(M->sdflt);
    bm_session_free(M->srows);
    bm_model_free(M->ref);
    bm_model_free(M->dflt);
    bm_model_free(M->rows);
    random_weights_free(&M->w);
}

/* dst (another model's state) = src, through save/load */
static void hand_over(const models *M, bm_state *dst, const bm_state *src, void *buf) {
    size_t len = M->state_len;
    CHECK_OK(bm_state_save(src, buf, len, &len));
    CHECK_OK(bm_state_load(dst, buf, len));
}

static double state_error(const models *M, const bm_state *got, const bm_state *ref, void *a, void *b) {
    size_t len = M->state_len;
    CHECK_OK(bm_state_save(got, a, len, &len));
    CHECK_OK(bm_state_save(ref, b, len, &len));
    return rel_error((const float *)((const char *)a + 64), (const float *)((const char *)b + 64), (len - 64) / 4);
}

/* n streams of model `m` (session s) against the reference model's same
 * streams stepped one at a time. prompts: NULL for histories of 1..40 random
 * tokens per stream, else every stream starts from one state (prompt of 16)
 * (`same` 1) ; tokens: NULL for random, else given. */
static void batch_vs_single(models *M, bm_model *m, bm_session *s, const char *label, size_t n, int same,
                            const int32_t *first_tokens, int checked, int expect_pairs) {
    const size_t V = M->V;
    bm_state **r = (bm_state **)calloc(n, sizeof *r), **b = (bm_state **)calloc(n, sizeof *b);
    int32_t *tok = (int32_t *)malloc(n * sizeof(int32_t)), *out = (int32_t *)malloc(n * sizeof(int32_t));
    uint64_t *rngs = (uint64_t *)malloc(n * sizeof(uint64_t));
    float *lr = (float *)malloc(n * V * sizeof(float)), *lb = (float *)malloc(n * V * sizeof(float));
    void *buf = malloc(M->state_len), *buf2 = malloc(M->state_len);
    int32_t **prompts = (int32_t **)calloc(n, sizeof *prompts);
    size_t *lens = (size_t *)calloc(n, sizeof *lens);
    for (size_t i = 0; i < n; i++) {
        CHECK_OK(bm_state_new(M->ref, &r[i]));
        CHECK_OK(bm_state_new(m, &b[i]));
        lens[i] = same ? 16 : 1 + (i * 7) % 40;
        prompts[i] = (int32_t *)malloc(lens[i] * sizeof(int32_t));
        random_tokens(prompts[i], lens[i], same ? 99 : 100 + (uint32_t)i, V);
    }
    /* the histories, all in one batched prefill on the reference model */
    CHECK_OK(bm_prefill_batch(M->sref, r, (const int32_t *const *)prompts, lens, n, NULL));
    for (size_t i = 0; i < n; i++) hand_over(M, b[i], r[i], buf);
    if (first_tokens) memcpy(tok, first_tokens, n * sizeof(int32_t));
    else if (same) for (size_t i = 0; i < n; i++) tok[i] = 7;
    else random_tokens(tok, n, 7, V);
    tally t = {0};
    for (int round = 0; round < 2; round++) {
        CHECK_OK(bm_step_batch(s, b, tok, n, lb));
        if (round == 0 && expect_pairs >= 0) {
            int pairs = -2, rows = 0;
            CHECK_OK(bmi_cuda_last_step_experts(s, &pairs, &rows));
            if (rows > 0) CHECK_MSG(pairs == expect_pairs, "%s: %d (layer, expert) pairs read, expected %d", label, pairs, expect_pairs);
            printf("  %-58s step read %d (MoE layer, expert) pairs (row path: %s)\n", label, pairs, rows ? "yes" : "no");
        }
        for (size_t i = 0; i < n; i++) CHECK_OK(bm_step(M->sref, r[i], tok[i], lr + i * V));
        compare_rows(&t, lb, lr, n, V);
        for (size_t i = 0; i < n; i++) tok[i] = argmax(lr + i * V, V);
    }
    /* two steps without logits (the step graph without the LM head) */
    for (int round = 0; round < 2; round++) {
        CHECK_OK(bm_step_batch(s, b, tok, n, NULL));
        for (size_t i = 0; i < n; i++) CHECK_OK(bm_step(M->sref, r[i], tok[i], NULL));
        for (size_t i = 0; i < n; i++) tok[i] = (tok[i] + 1 + (int32_t)round) % (int32_t)V;
    }
    double worst_state = 0;
    for (size_t i = 0; i < n; i++) {
        double e = state_error(M, b[i], r[i], buf, buf2);
        if (e > worst_state || isnan(e)) worst_state = e;
        CHECK(bm_state_n_tokens(b[i]) == bm_state_n_tokens(r[i]));
    }
    char what[160];
    snprintf(what, sizeof what, "%s: %zu streams, 2 steps", label, n);
    report(what, &t, checked);
    printf("  %-58s worst state rel err %.2e (after 2 more steps without logits)\n", "", worst_state);
    if (checked) CHECK_MSG(worst_state <= TOLERANCE, "%s: state error %.3e", what, worst_state);
    /* step + sample (greedy) against the reference's argmax */
    for (size_t i = 0; i < n; i++) rngs[i] = 5000 + i;
    CHECK_OK(bm_step_batch_sample(s, b, tok, n, NULL, rngs, out));
    int clear = 0, wrong = 0;
    for (size_t i = 0; i < n; i++) {
        CHECK_OK(bm_step(M->sref, r[i], tok[i], lr + i * V));
        CHECK(rngs[i] != 5000 + i);
        if (clear_winner(lr + i * V, V)) {
            clear++;
            wrong += out[i] != argmax(lr + i * V, V);
        }
    }
    printf("  %-58s greedy %d/%d agree\n", "  then bm_step_batch_sample", clear - wrong, clear);
    if (checked) CHECK(wrong == 0);
    for (size_t i = 0; i < n; i++) {
        bm_state_free(r[i]);
        bm_state_free(b[i]);
        free(prompts[i]);
    }
    free(prompts);
    free(lens);
    free(r);
    free(b);
    free(tok);
    free(out);
    free(rngs);
    free(lr);
    free(lb);
    free(buf);
    free(buf2);
}

static void duplicates_rejected(models *M, bm_model *m, bm_session *s) {
    bm_state *a = NULL, *b = NULL;
    CHECK_OK(bm_state_new(m, &a));
    CHECK_OK(bm_state_new(m, &b));
    bm_state *three[3] = {a, b, a};
    int32_t tok[3] = {1, 2, 3}, out[3];
    uint64_t rng[3] = {1, 2, 3};
    const int32_t *prompts[3] = {tok, tok, tok};
    size_t lens[3] = {3, 3, 3};
    CHECK_ERR(bm_step_batch(s, three, tok, 3, NULL), BM_ERR_INVALID_ARGUMENT);
    CHECK_ERR(bm_step_batch_sample(s, three, tok, 3, NULL, rng, out), BM_ERR_INVALID_ARGUMENT);
    CHECK_ERR(bm_prefill_batch(s, three, prompts, lens, 3, NULL), BM_ERR_INVALID_ARGUMENT);
    CHECK(bm_state_n_tokens(a) == 0 && bm_state_n_tokens(b) == 0);
    CHECK(rng[0] == 1 && rng[1] == 2 && rng[2] == 3);
    /* and both states are still zero: one clean step each gives equal logits */
    float *la = (float *)malloc(M->V * 4), *lb = (float *)malloc(M->V * 4);
    CHECK_OK(bm_step(s, a, 5, la));
    CHECK_OK(bm_step(s, b, 5, lb));
    CHECK(rel_error(la, lb, M->V) == 0.0);
    printf("  the same state twice in a batch: rejected, nothing changed\n");
    free(la);
    free(lb);
    bm_state_free(a);
    bm_state_free(b);
}

/* Tokens whose routing in the first layer (an MoE-only layer: its input is
 * the embedding row) goes to each expert in turn, found on the host. */
static int tokens_per_expert(const bm_model *m, int32_t *out) {
    const bmi_config *c = &m->config;
    const bmi_layer_weights *L = &m->weights.layers[0];
    if (c->layers[0].has_mamba || c->layers[0].n_experts < 2) return 0;
    const int E = c->layers[0].n_experts, d = c->d_model;
    int found = 0;
    for (int e = 0; e < E; e++) out[e] = -1;
    for (int t = 0; t < c->vocab_size && found < E; t++) {
        double x[8192], ss = 0;
        for (int k = 0; k < d; k++) {
            const void *row = m->weights.embedding.data;
            x[k] = m->weights.embedding.dtype == BMI_BF16 ? bmi_bf16_to_f32(((const uint16_t *)row)[(size_t)t * d + k])
                   : m->weights.embedding.dtype == BMI_F16 ? bmi_f16_to_f32(((const uint16_t *)row)[(size_t)t * d + k])
                                                           : ((const float *)row)[(size_t)t * d + k];
            ss += x[k] * x[k];
        }
        const double scale = 1.0 / sqrt(ss / d + 1e-5);
        int best = 0;
        double best_l = -INFINITY, second = -INFINITY;
        for (int e = 0; e < E; e++) {
            double l = L->router_bias ? L->router_bias[e] : 0.0;
            for (int k = 0; k < d; k++) {
                const size_t i = (size_t)e * d + k;
                const double w = L->router.dtype == BMI_F32 ? ((const float *)L->router.data)[i]
                                 : L->router.dtype == BMI_BF16 ? bmi_bf16_to_f32(((const uint16_t *)L->router.data)[i])
                                                               : bmi_f16_to_f32(((const uint16_t *)L->router.data)[i]);
                l += w * x[k] * scale * L->norm[k];
            }
            if (l > best_l) {
                second = best_l;
                best_l = l;
                best = e;
            } else if (l > second) {
                second = l;
            }
        }
        if (out[best] < 0 && best_l - second > 1e-3) {
            out[best] = t;
            found++;
        }
    }
    return found == E ? E : 0;
}

static int cancel_second(void *data) { return ++*(int *)data >= 2; }

static void prefill_batch_vs_single(models *M, const char *label) {
    const size_t V = M->V;
    const size_t lens[6] = {1, 5, 17, 64, 300, 2100};
    const size_t n = 6;
    bm_state *b[6], *r[6];
    int32_t *prompts[6];
    float *lb = (float *)malloc(n * V * 4), *lr = (float *)malloc(n * V * 4);
    void *buf = malloc(M->state_len), *buf2 = malloc(M->state_len);
    for (size_t i = 0; i < n; i++) {
        prompts[i] = (int32_t *)malloc(lens[i] * sizeof(int32_t));
        random_tokens(prompts[i], lens[i], 300 + (uint32_t)i, V);
        CHECK_OK(bm_state_new(M->dflt, &b[i]));
        CHECK_OK(bm_state_new(M->dflt, &r[i]));
        /* a history first, so the prefill continues a state */
        int32_t pre[3] = {1, 2, (int32_t)i};
        CHECK_OK(bm_prefill(M->sdflt, b[i], pre, 3, NULL));
        CHECK_OK(bm_prefill(M->sdflt, r[i], pre, 3, NULL));
    }
    CHECK_OK(bm_prefill_batch(M->sdflt, b, (const int32_t *const *)prompts, lens, n, lb));
    for (size_t i = 0; i < n; i++) CHECK_OK(bm_prefill(M->sdflt, r[i], prompts[i], lens[i], lr + i * V));
    tally t = {0};
    compare_rows(&t, lb, lr, n, V);
    double worst_state = 0;
    for (size_t i = 0; i < n; i++) {
        double e = state_error(M, b[i], r[i], buf, buf2);
        if (e > worst_state) worst_state = e;
        CHECK(bm_state_n_tokens(b[i]) == bm_state_n_tokens(r[i]));
    }
    char what[160];
    snprintf(what, sizeof what, "%s: bm_prefill_batch of 6 ragged prompts (1..2100)", label);
    report(what, &t, 1);
    printf("  %-58s worst state rel err %.2e\n", "", worst_state);
    CHECK_MSG(worst_state <= TOLERANCE, "%s: state error %.3e", what, worst_state);

    /* cancelled between chunks: 2100 + 1500 tokens are two chunks; the host
     * polls once before the call, the backend once between the chunks */
    bm_session_params sp;
    bm_session_params_init(&sp);
    int polls = 0;
    sp.cancel = cancel_second;
    sp.cancel_data = &polls;
    bm_session *sc = NULL;
    CHECK_OK(bm_session_new(M->dflt, &sp, &sc));
    bm_state *c2[2];
    CHECK_OK(bm_state_new(M->dflt, &c2[0]));
    CHECK_OK(bm_state_new(M->dflt, &c2[1]));
    const int32_t *pp[2] = {prompts[5], prompts[4]};
    size_t ll[2] = {2100, 300};
    CHECK_ERR(bm_prefill_batch(sc, c2, pp, ll, 2, NULL), BM_ERR_CANCELLED);
    const uint64_t a0 = bm_state_n_tokens(c2[0]), a1 = bm_state_n_tokens(c2[1]);
    printf("  cancelled between chunks: streams advanced by %llu and %llu tokens (whole segments)\n",
           (unsigned long long)a0, (unsigned long long)a1);
    CHECK(a0 == 2048 && a1 == 0);
    /* the advanced one is what a lone prefill of its first 2048 tokens gives */
    bm_state *lone = NULL;
    CHECK_OK(bm_state_new(M->dflt, &lone));
    CHECK_OK(bm_prefill(M->sdflt, lone, prompts[5], 2048, NULL));
    double e = state_error(M, c2[0], lone, buf, buf2);
    CHECK_MSG(e <= TOLERANCE, "cancelled prefill state error %.3e", e);
    bm_state_free(lone);
    bm_state_free(c2[0]);
    bm_state_free(c2[1]);
    bm_session_free(sc);
    for (size_t i = 0; i < n; i++) {
        bm_state_free(b[i]);
        bm_state_free(r[i]);
        free(prompts[i]);
    }
    free(lb);
    free(lr);
    free(buf);
    free(buf2);
}

static int moe_layers(const bm_model *m) {
    int k = 0;
    for (int i = 0; i < m->config.n_layers; i++) k += m->config.layers[i].n_experts >= 2;
    return k;
}

static void test_config(const char *label, const bmi_random_config *rc, int checked, int full) {
    printf("model %s\n", label);
    models M;
    if (!models_make(&M, rc)) {
        models_free(&M);
        return;
    }
    const size_t sizes[6] = {1, 2, 3, 7, 64, 300};
    char what[128];
    for (int k = 0; k < 6; k++) {
        if (!full && sizes[k] != 3 && sizes[k] != 64 && sizes[k] != 300) continue;
        snprintf(what, sizeof what, "default path");
        batch_vs_single(&M, M.dflt, M.sdflt, what, sizes[k], 0, NULL, checked, -1);
    }
    if (full) {
        /* the row path for batches that the default sends to the GEMV path:
         * one stream in a bucket of 4, three, and a bucket boundary */
        const size_t forced[3] = {1, 3, 65};
        for (int k = 0; k < 3; k++) batch_vs_single(&M, M.rows, M.srows, "row path forced", forced[k], 0, NULL, checked, -1);
        duplicates_rejected(&M, M.rows, M.srows);
        duplicates_rejected(&M, M.dflt, M.sdflt);
        /* all streams alike: one expert per MoE layer, 100 rows in it */
        batch_vs_single(&M, M.rows, M.srows, "experts all coincide", 100, 1, NULL, checked, moe_layers(M.rows));
        int32_t per[64];
        const int E = tokens_per_expert(M.ref, per);
        if (E > 0) {
            batch_vs_single(&M, M.rows, M.srows, "first MoE layer: experts all differ", (size_t)E, 0, per, checked, -1);
            batch_vs_single(&M, M.dflt, M.sdflt, "first MoE layer: experts all differ", (size_t)E, 0, per, checked, -1);
        }
        prefill_batch_vs_single(&M, label);
    }
    models_free(&M);
}

int main(void) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (!bmi_cuda_available(0)) {
        printf("no usable GPU: nothing to run\n");
        return check_summary("test_cuda_batch");
    }
    const int small = getenv("BM_CUDA_TEST_SMALL") != NULL;
    bmi_random_config rc;
    CHECK_OK(bmi_random_config_preset(&rc, "tiny"));
    CHECK_OK(bmi_random_parse_layers(&rc, "8,r,8,r8,1"));
    rc.add_bias_linear = 1;
    test_config("d 64, layers 8,r,8,r8,1 with biases (bf16)", &rc, 1, 1);
    CHECK_OK(bmi_random_config_preset(&rc, "tiny"));
    CHECK_OK(bmi_random_parse_layers(&rc, "r,8,r,8"));
    rc.dtype = BMI_F16;
    rc.d_model = 128;
    test_config("d 128, layers r,8,r,8 (f16)", &rc, 1, 0);
    if (!small) {
        CHECK_OK(bmi_random_config_preset(&rc, "2.8B"));
        CHECK_OK(bmi_random_parse_layers(&rc, "8,r,8,r,8"));
        test_config("2.8B widths, layers 8,r,8,r,8 (bf16)", &rc, 1, 1);
        CHECK_OK(bmi_random_config_preset(&rc, "2.8B"));
        test_config("2.8B dims, 36 layers (bf16)", &rc, 1, 0);
    }
    return check_summary("test_cuda_batch");
}
