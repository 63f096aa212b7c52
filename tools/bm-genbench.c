/* bm-genbench: what bm_generate costs per token beyond the model step.
 * Runs the same greedy generation twice on a model: once through
 * bm_generate, once as a bare loop of bm_sample + bm_step (the same tokens,
 * the same model work), and reports the difference per token (detokenizing,
 * stop-string matching, the callback) next to the sampling time alone.
 *
 *   bm-genbench MODEL_DIR TOKENIZER_JSON [N_TOKENS]
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "blackmamba.h"

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int count_piece(const char *piece, size_t len, int32_t token, void *user) {
    (void)piece, (void)token;
    *(size_t *)user += len;
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: bm-genbench MODEL_DIR TOKENIZER_JSON [N_TOKENS]\n");
        return 2;
    }
    int n = argc > 3 ? atoi(argv[3]) : 2000;
    bm_model_params mp;
    bm_model_params_init(&mp);
    mp.n_threads = 1;
    bm_model *m = NULL;
    bm_tokenizer *tok = NULL;
    bm_session *s = NULL;
    bm_state *st = NULL;
    if (bm_model_load(argv[1], &mp, &m) || bm_tokenizer_load(argv[2], &tok) || bm_session_new(m, NULL, &s) ||
        bm_state_new(m, &st)) {
        fprintf(stderr, "bm-genbench: %s\n", bm_last_error());
        return 1;
    }
    bm_model_info info = {.size = sizeof info};
    bm_model_get_info(m, &info);
    size_t V = (size_t)info.vocab_size, bytes = 0;
    int32_t prompt[1] = {510};
    bm_generate_params gp;
    bm_generate_params_init(&gp);
    gp.sampler.temperature = 0;
    gp.max_tokens = n;
    gp.on_piece = count_piece;
    gp.user_data = &bytes;
    const char *stops[2] = {"\n\n\n\n", "The End"};
    gp.stop_strings = stops;
    gp.n_stop_strings = 2;
    double best_gen = 1e9, best_bare = 1e9, best_sample = 1e9;
    float *logits = malloc(V * sizeof(float));
    for (int rep = 0; rep < 5; rep++) {
        uint64_t rng = 1;
        bm_generate_result r = {.size = sizeof r};
        bm_state_reset(st);
        double t0 = now();
        if (bm_generate_ids(s, st, tok, prompt, 1, &gp, &rng, &r)) {
            fprintf(stderr, "bm-genbench: %s\n", bm_last_error());
            return 1;
        }
        double t1 = now();
        if (t1 - t0 < best_gen) best_gen = t1 - t0;
        int steps = r.n_generated;
        /* The bare loop: the same greedy generation by hand (bm_sample + bm_step, so the
         * same tokens and the same model work), without text, stop strings or callback. */
        bm_state_reset(st);
        uint64_t bare_rng = 1;
        t0 = now();
        bm_prefill(s, st, prompt, 1, logits);
        for (int i = 0; i < steps; i++) {
            int32_t tkn;
            bm_sample(logits, V, &gp.sampler, &bare_rng, NULL, 0, &tkn);
            bm_step(s, st, tkn, i == steps - 1 ? NULL : logits);
        }
        t1 = now();
        if (t1 - t0 < best_bare) best_bare = t1 - t0;
        /* sampling alone, the same parameters */
        t0 = now();
        for (int i = 0; i < steps; i++) {
            int32_t tkn;
            bm_sample(logits, V, &gp.sampler, &rng, NULL, 0, &tkn);
        }
        t1 = now();
        if (t1 - t0 < best_sample) best_sample = t1 - t0;
        if (rep == 0) printf("generated %d tokens (%zu bytes), stop reason %d\n", steps, bytes, r.stop);
        n = steps;
    }
    double per_gen = 1e6 * best_gen / n, per_bare = 1e6 * best_bare / n, per_sample = 1e6 * best_sample / n;
    printf("per token: bm_generate %.2f us, bare sample+step loop %.2f us; beyond the model step: "
           "%.2f us = greedy sampling over %zu logits %.2f us + text, stop strings and callback %.2f us\n",
           per_gen, per_bare, per_sample + per_gen - per_bare, V, per_sample, per_gen - per_bare);
    free(logits);
    bm_state_free(st);
    bm_session_free(s);
    bm_tokenizer_free(tok);
    bm_model_free(m);
    return 0;
}
