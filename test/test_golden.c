/* The CPU backend against the golden fixtures of ../shared/fixtures (logits
 * from the reference code): every prompt, both checkpoint formats, prefill,
 * decode, greedy tokens; and the equivalences between the ways of running:
 * prefill vs steps, step_batch vs steps, copied and reloaded states. */
#include <math.h>
#include <stdlib.h>

#include "check.h"
#include "fixture.h"

#define TOL 1e-4

static const char *fixtures[] = {"tiny-f32", "tiny-bf16"};
static const char *weight_files[] = {"model.safetensors", "pytorch_model.bin", NULL /* the directory */};

static bm_model *load(const char *dir, const char *file, int threads) {
    char path[4096];
    if (file) snprintf(path, sizeof path, "%s/%s", dir, file);
    else snprintf(path, sizeof path, "%s", dir);
    bm_model_params p;
    bm_model_params_init(&p);
    p.backend = BM_BACKEND_CPU;
    p.n_threads = threads;
    bm_model *m = NULL;
    CHECK_OK(bm_model_load(path, &p, &m));
    return m;
}

static void check_against_golden(bm_model *m, const golden_set *g, const char *label) {
    bm_session *s = NULL;
    bm_state *st = NULL;
    CHECK_OK(bm_session_new(m, NULL, &s));
    CHECK_OK(bm_state_new(m, &st));
    if (!s || !st) return;
    size_t V = (size_t)g->vocab;
    for (int k = 0; k < g->n_prompts; k++) {
        const golden_prompt *p = &g->prompts[k];
        float *all = malloc(p->n_prompt * V * sizeof(float)), *logits = malloc(V * sizeof(float));
        CHECK_OK(bm_state_reset(st));
        CHECK_OK(bm_prefill_all(s, st, p->prompt, p->n_prompt, all));
        if (p->prefill_logits) {
            double worst = 0;
            for (size_t t = 0; t < p->n_prompt; t++) {
                double e = rel_error(all + t * V, p->prefill_logits + t * V, V);
                if (e > worst) worst = e;
            }
            CHECK_MSG(worst <= TOL, "%s p%d prefill_all rel error %.3g", label, k, worst);
        }
        /* The last prefill row is the logits that chose the first decode token. */
        double e0 = rel_error(all + (p->n_prompt - 1) * V, p->decode_logits, V);
        CHECK_MSG(e0 <= TOL, "%s p%d last prefill row rel error %.3g", label, k, e0);
        /* bm_prefill + bm_step at every decode step */
        CHECK_OK(bm_state_reset(st));
        CHECK_OK(bm_prefill(s, st, p->prompt, p->n_prompt, logits));
        double worst = 0;
        int tokens_ok = 1;
        for (size_t i = 0; i < p->n_decode; i++) {
            if (i > 0) CHECK_OK(bm_step(s, st, p->decode_tokens[i - 1], logits));
            double e = rel_error(logits, p->decode_logits + i * V, V);
            if (e > worst) worst = e;
            if (argmax(logits, V) != p->decode_tokens[i]) tokens_ok = 0;
        }
        CHECK_MSG(worst <= TOL, "%s p%d decode rel error %.3g", label, k, worst);
        CHECK_MSG(tokens_ok, "%s p%d greedy tokens differ", label, k);
        CHECK(bm_state_n_tokens(st) == p->n_prompt + p->n_decode - 1);
        free(all);
        free(logits);
    }
    bm_state_free(st);
    bm_session_free(s);
}

/* Prefill of a prompt equals stepping its tokens one by one. */
static void check_prefill_equals_steps(bm_model *m, const golden_set *g) {
    bm_session *s = NULL;
    bm_state *a = NULL, *b = NULL;
    CHECK_OK(bm_session_new(m, NULL, &s));
    CHECK_OK(bm_state_new(m, &a));
    CHECK_OK(bm_state_new(m, &b));
    size_t V = (size_t)g->vocab;
    float *la = malloc(V * sizeof(float)), *lb = malloc(V * sizeof(float));
    for (int k = 0; k < g->n_prompts; k++) {
        const golden_prompt *p = &g->prompts[k];
        bm_state_reset(a);
        bm_state_reset(b);
        CHECK_OK(bm_prefill(s, a, p->prompt, p->n_prompt, la));
        for (size_t t = 0; t < p->n_prompt; t++) CHECK_OK(bm_step(s, b, p->prompt[t], lb));
        double e = rel_error(la, lb, V);
        CHECK_MSG(e <= 1e-5, "prefill vs steps p%d rel error %.3g", k, e);
        /* and the states go on alike */
        CHECK_OK(bm_step(s, a, p->decode_tokens[0], la));
        CHECK_OK(bm_step(s, b, p->decode_tokens[0], lb));
        e = rel_error(la, lb, V);
        CHECK_MSG(e <= 1e-5, "state after prefill vs steps p%d rel error %.3g", k, e);
    }
    free(la);
    free(lb);
    bm_state_free(a);
    bm_state_free(b);
    bm_session_free(s);
}

/* A batch of streams with different histories equals each stream stepped
 * alone, logits bit for bit close. */
static void check_step_batch(bm_model *m, const golden_set *g) {
    enum { MAXB = 16 };
    bm_session *s = NULL;
    CHECK_OK(bm_session_new(m, NULL, &s));
    size_t V = (size_t)g->vocab;
    int n = g->n_prompts;
    bm_state *batch[MAXB], *alone[MAXB];
    int32_t next[MAXB];
    float *lb = malloc((size_t)n * V * sizeof(float)), *la = malloc(V * sizeof(float));
    for (int k = 0; k < n; k++) {
        CHECK_OK(bm_state_new(m, &batch[k]));
        CHECK_OK(bm_state_new(m, &alone[k]));
        CHECK_OK(bm_prefill(s, batch[k], g->prompts[k].prompt, g->prompts[k].n_prompt, NULL));
        CHECK_OK(bm_state_copy(alone[k], batch[k]));
        next[k] = g->prompts[k].decode_tokens[0];
    }
    for (int round = 0; round < 3; round++) {
        CHECK_OK(bm_step_batch(s, batch, next, (size_t)n, lb));
        for (int k = 0; k < n; k++) {
            CHECK_OK(bm_step(s, alone[k], next[k], la));
            double e = rel_error(lb + (size_t)k * V, la, V);
            CHECK_MSG(e <= 1e-6, "step_batch stream %d round %d rel error %.3g", k, round, e);
            next[k] = argmax(la, V);
        }
    }
    /* the same state twice is refused and nothing moves */
    if (n >= 2) {
        bm_state *dup[2] = {batch[0], batch[0]};
        uint64_t before = bm_state_n_tokens(batch[0]);
        CHECK_ERR(bm_step_batch(s, dup, next, 2, NULL), BM_ERR_INVALID_ARGUMENT);
        CHECK(bm_state_n_tokens(batch[0]) == before);
    }
    for (int k = 0; k < n; k++) {
        bm_state_free(batch[k]);
        bm_state_free(alone[k]);
    }
    free(lb);
    free(la);
    bm_session_free(s);
}

/* A copied state and a saved+loaded state continue exactly like the original. */
static void check_fork_and_reload(bm_model *m, const golden_set *g) {
    bm_session *s = NULL;
    bm_state *orig = NULL, *fork = NULL, *loaded = NULL;
    CHECK_OK(bm_session_new(m, NULL, &s));
    CHECK_OK(bm_state_new(m, &orig));
    CHECK_OK(bm_state_new(m, &fork));
    CHECK_OK(bm_state_new(m, &loaded));
    const golden_prompt *p = &g->prompts[g->n_prompts - 1];
    size_t V = (size_t)g->vocab;
    CHECK_OK(bm_prefill(s, orig, p->prompt, p->n_prompt, NULL));
    CHECK_OK(bm_state_copy(fork, orig));
    size_t need = 0, len = 0;
    CHECK_OK(bm_state_save(orig, NULL, 0, &need));
    unsigned char *buf = malloc(need);
    CHECK_ERR(bm_state_save(orig, buf, need - 1, &len), BM_ERR_BUFFER_TOO_SMALL);
    CHECK(len == need);
    CHECK_OK(bm_state_save(orig, buf, need, &len));
    CHECK(len == need);
    CHECK_OK(bm_state_load(loaded, buf, len));
    CHECK(bm_state_n_tokens(loaded) == p->n_prompt && bm_state_n_tokens(fork) == p->n_prompt);
    float *lo = malloc(V * 4), *lf = malloc(V * 4), *ll = malloc(V * 4);
    int same = 1;
    for (size_t i = 0; i < p->n_decode; i++) {
        CHECK_OK(bm_step(s, orig, p->decode_tokens[i], lo));
        CHECK_OK(bm_step(s, fork, p->decode_tokens[i], lf));
        CHECK_OK(bm_step(s, loaded, p->decode_tokens[i], ll));
        same &= memcmp(lo, lf, V * 4) == 0 && memcmp(lo, ll, V * 4) == 0;
    }
    CHECK_MSG(same, "forked or reloaded state diverged from the original");
    free(buf);
    free(lo);
    free(lf);
    free(ll);
    bm_state_free(orig);
    bm_state_free(fork);
    bm_state_free(loaded);
    bm_session_free(s);
}

int main(void) {
    for (size_t f = 0; f < sizeof fixtures / sizeof fixtures[0]; f++) {
        char dir[4096];
        snprintf(dir, sizeof dir, "%s", fixture_path("fixtures"));
        snprintf(dir + strlen(dir), sizeof dir - strlen(dir), "/%s", fixtures[f]);
        golden_set g;
        if (golden_load(dir, &g) != 0) {
            CHECK_MSG(0, "cannot read the golden set of %s", fixtures[f]);
            continue;
        }
        for (size_t w = 0; w < sizeof weight_files / sizeof weight_files[0]; w++) {
            for (int threads = 1; threads <= 2; threads++) {
                bm_model *m = load(dir, weight_files[w], threads);
                if (!m) continue;
                char label[256];
                snprintf(label, sizeof label, "%s/%s threads=%d", fixtures[f],
                         weight_files[w] ? weight_files[w] : "(dir)", threads);
                check_against_golden(m, &g, label);
                if (w == 0 && threads == 2) {
                    check_prefill_equals_steps(m, &g);
                    check_step_batch(m, &g);
                    check_fork_and_reload(m, &g);
                }
                bm_model_free(m);
            }
        }
        golden_free(&g);
    }
    return check_summary("test_golden");
}
