/* The device sampler (cuda/sample.cu) against bm_sample: for the same
 * logits, parameters and generator state it must choose the same token and
 * advance the generator the same way. Fresh random logits each case, the
 * full vocabulary size, ties, NaN and -inf entries, repetition penalties and
 * every filter. Without a GPU there is nothing to run. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "blackmamba.h"
#include "bmcuda.h"
#include "check.h"

static uint64_t xorshift(uint64_t *x) {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    return *x;
}

static double unit(uint64_t *x) { return (double)(xorshift(x) >> 11) * 0x1.0p-53; }

/* kind 0: smooth random logits; 1: coarse values (many exact ties);
 * 2: random with some NaN and -inf; 3: one dominant logit. */
static void make_logits(float *l, size_t n, int kind, uint64_t *x) {
    for (size_t i = 0; i < n; i++) {
        double g = 0;
        for (int k = 0; k < 4; k++) g += unit(x);
        g = (g - 2.0) * 1.7320508 * 3.0;
        l[i] = (float)g;
        if (kind == 1) l[i] = (float)floor(g * 2.0) * 0.5f;
        if (kind == 2 && xorshift(x) % 17 == 0) l[i] = xorshift(x) % 2 ? NAN : -INFINITY;
    }
    if (kind == 3) l[xorshift(x) % n] = 40.0f;
}

int main(void) {
    if (!bmi_cuda_available(0)) {
        printf("no usable GPU: nothing to test\n");
        return check_summary("test_cuda_sample");
    }
    uint64_t x = (uint64_t)time(NULL) * 2654435761u | 1; /* fresh data every run */
    printf("seed %llu\n", (unsigned long long)x);
    const size_t sizes[] = {50304, 512, 7};
    int cases = 0, same = 0;
    for (int si = 0; si < 3; si++) {
        const size_t n = sizes[si];
        float *l = (float *)malloc(n * sizeof(float));
        for (int rep = 0; rep < 40; rep++) {
            bm_sampler_params p;
            bm_sampler_params_init(&p);
            int kind = rep % 4;
            make_logits(l, n, kind, &x);
            switch (rep % 8) {
            case 0: p.temperature = 0; break;                       /* greedy */
            case 1: break;                                          /* defaults */
            case 2: p.top_k = 1; break;
            case 3: p.top_k = 1000; p.top_p = 0.5f; p.min_p = 0; break;
            case 4: p.top_p = 1.0f; p.min_p = 0.2f; p.temperature = 1.3f; break;
            case 5: p.top_k = 64; p.top_p = 0.0f; break;            /* only the most likely */
            case 6: p.n_vocab_valid = (int32_t)(n > 3 ? n - 3 : n); p.temperature = 0.5f; break;
            case 7: p.top_k = 7; p.repeat_penalty = 1.0f; p.temperature = 2.0f; break;
            }
            if (n <= 1024 && rep % 3 == 0) p.top_k = 0; /* small vocabularies: everything is a candidate */
            int32_t recent[64];
            size_t n_recent = rep % 2 ? 0 : 1 + xorshift(&x) % 63;
            for (size_t i = 0; i < n_recent; i++) recent[i] = (int32_t)(xorshift(&x) % n);
            uint64_t seed = xorshift(&x);
            uint64_t rc = seed, rg = seed;
            int32_t tc = -5, tg = -6;
            bm_status sc = bm_sample(l, n, &p, &rc, recent, n_recent, &tc);
            bm_status sg = bmi_cuda_sample_logits(0, l, n, &p, &rg, recent, n_recent, &tg);
            cases++;
            if (sg == BM_ERR_UNSUPPORTED) continue; /* ties at the cut beyond the kernel's room: host's job */
            CHECK_MSG(sc == sg, "size %zu rep %d: status cpu %d gpu %d (%s)", n, rep, sc, sg, bm_last_error());
            CHECK_MSG(tc == tg, "size %zu rep %d kind %d: token cpu %d gpu %d", n, rep, kind, tc, tg);
            CHECK_MSG(rc == rg, "size %zu rep %d: generator advanced differently", n, rep);
            same += tc == tg;
        }
        free(l);
    }
    printf("device sampler: %d of %d cases chose bm_sample's token\n", same, cases);
    return check_summary("test_cuda_sample");
}
