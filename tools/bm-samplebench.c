/* bm-samplebench: microseconds per bm_sample call on a vocabulary-sized row
 * of logits (50304 by default), for the default parameters, greedy, and the
 * configurations that take the slower paths (no top-k, no filters at all).
 *
 * usage: bm-samplebench [n_vocab [calls]] */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "blackmamba.h"
#include "rng.h"

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* A bell of logits with a few clear leaders, roughly like a language model's. */
static void fill_logits(float *logits, size_t n, uint64_t seed) {
    uint64_t s = seed;
    for (size_t i = 0; i < n; i++) {
        double v = 0.0;
        for (int j = 0; j < 4; j++) v += bmi_rng_uniform(&s) - 0.5;
        logits[i] = (float)(v * 6.0);
    }
    for (int j = 0; j < 8; j++) logits[bmi_rng_next_u64(&s) % n] = 12.0f - (float)j;
}

/* Returns microseconds per call, or a negative number if a call failed. */
static double time_calls(const float *logits, size_t n, const bm_sampler_params *p, const int32_t *recent,
                         size_t n_recent, int calls, long *checksum) {
    uint64_t rng = 12345;
    int32_t token = 0;
    for (int i = 0; i < calls / 10 + 1; i++) /* warm caches and the allocator */
        if (bm_sample(logits, n, p, &rng, recent, n_recent, &token) != BM_OK) return -1.0;
    double start = now_seconds();
    for (int i = 0; i < calls; i++) {
        if (bm_sample(logits, n, p, &rng, recent, n_recent, &token) != BM_OK) return -1.0;
        *checksum += token; /* keeps the calls from being optimised away */
    }
    return (now_seconds() - start) * 1e6 / calls;
}

int main(int argc, char **argv) {
    size_t n = argc > 1 ? (size_t)strtoul(argv[1], NULL, 10) : 50304;
    int calls = argc > 2 ? atoi(argv[2]) : 2000;
    if (n == 0 || calls <= 0) {
        fprintf(stderr, "usage: %s [n_vocab [calls]]\n", argv[0]);
        return 2;
    }
    float *logits = malloc(n * sizeof *logits);
    float *rising = malloc(n * sizeof *rising);
    if (!logits || !rising) {
        fprintf(stderr, "out of memory\n");
        return 1;
    }
    fill_logits(logits, n, 1);
    for (size_t i = 0; i < n; i++) rising[i] = (float)i / (float)n; /* every id displaces the top-k floor */
    int32_t recent[64];
    for (int i = 0; i < 64; i++) recent[i] = (int32_t)(((size_t)i * 7919u) % n);

    bm_sampler_params defaults, greedy, top_p_only, unfiltered;
    bm_sampler_params_init(&defaults);
    greedy = defaults;
    greedy.temperature = 0.0f;
    top_p_only = defaults;
    top_p_only.top_k = 0;
    top_p_only.min_p = 0.0f;
    unfiltered = top_p_only;
    unfiltered.top_p = 1.0f;

    struct {
        const char *name;
        const float *logits;
        const bm_sampler_params *p;
        size_t n_recent;
    } cases[] = {
        {"defaults (T 0.8, top_k 40, top_p 0.95, min_p 0.05, penalty 1.1, 64 recent)", logits, &defaults, 64},
        {"defaults, no recent ids", logits, &defaults, 0},
        {"greedy (temperature 0), 64 recent", logits, &greedy, 64},
        {"greedy, no recent ids", logits, &greedy, 0},
        {"top_k 0, top_p 0.95 only", logits, &top_p_only, 64},
        {"no filters (softmax over every id)", logits, &unfiltered, 64},
        {"defaults on rising logits (top-k worst case)", rising, &defaults, 0},
    };
    long checksum = 0;
    printf("bm_sample, n_vocab %zu, %d calls each\n", n, calls);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        double us = time_calls(cases[i].logits, n, cases[i].p, recent, cases[i].n_recent, calls, &checksum);
        if (us < 0) {
            fprintf(stderr, "%s: bm_sample failed: %s\n", cases[i].name, bm_last_error());
            return 1;
        }
        printf("%9.2f us/call  %s\n", us, cases[i].name);
    }
    printf("(checksum %ld)\n", checksum);
    free(logits);
    free(rising);
    return 0;
}
