/* Tests of bm_sample and the generator in lib/rng.h: the draw-for-draw
 * contract (against a slow, literal reading of the header), each filter's
 * effect on small known distributions, empirical frequencies, and every
 * rejected argument. Fixed seeds make every statistical check repeatable. */
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "blackmamba.h"
#include "check.h"
#include "common.h"
#include "rng.h"

#define MAX_SMALL 64

/* ---- helpers ------------------------------------------------------------ */

static bm_sampler_params plain_params(float temperature) {
    bm_sampler_params p;
    bm_sampler_params_init(&p);
    p.temperature = temperature;
    p.top_k = 0;
    p.top_p = 1.0f;
    p.min_p = 0.0f;
    p.repeat_penalty = 1.0f;
    return p;
}

static int32_t sample_ok(const float *logits, size_t n, const bm_sampler_params *p, uint64_t *rng,
                         const int32_t *recent, size_t n_recent) {
    int32_t token = -1;
    CHECK_OK(bm_sample(logits, n, p, rng, recent, n_recent, &token));
    return token;
}

/* counts[i] = how often id i came out of `draws` calls from `seed`. */
static void histogram(const float *logits, size_t n, const bm_sampler_params *p, uint64_t seed, int draws,
                      long *counts) {
    memset(counts, 0, n * sizeof *counts);
    uint64_t rng = seed;
    for (int i = 0; i < draws; i++) {
        int32_t t = -1;
        if (bm_sample(logits, n, p, &rng, NULL, 0, &t) != BM_OK || t < 0 || (size_t)t >= n) {
            CHECK_MSG(0, "draw %d failed or gave %d (%s)", i, (int)t, bm_last_error());
            return;
        }
        counts[t]++;
    }
}

/* Pearson's statistic of counts against probabilities; ids with probability
 * 0 must never appear. */
static int frequencies_match(const long *counts, const double *prob, size_t n, int draws, const char *what) {
    double chi2 = 0.0;
    int df = -1;
    for (size_t i = 0; i < n; i++) {
        if (prob[i] == 0.0) {
            if (counts[i] != 0) {
                fprintf(stderr, "%s: id %zu has probability 0 but came %ld times\n", what, i, counts[i]);
                return 0;
            }
            continue;
        }
        double expected = prob[i] * draws;
        chi2 += (counts[i] - expected) * (counts[i] - expected) / expected;
        df++;
    }
    /* Far out in the tail (p well below 1e-6 for these df) yet tight enough
     * to catch a wrong distribution at 20000+ draws. */
    double bound = df + 8.0 * sqrt(2.0 * (df > 0 ? df : 1)) + 10.0;
    if (chi2 > bound) {
        fprintf(stderr, "%s: chi-square %.1f over %d df exceeds %.1f\n", what, chi2, df, bound);
        return 0;
    }
    return 1;
}

/* softmax(logits / T) restricted to ids with keep[i]. */
static void softmax_kept(const float *logits, const int *keep, size_t n, double temperature, double *prob) {
    double max = -INFINITY, total = 0.0;
    for (size_t i = 0; i < n; i++)
        if (keep[i] && logits[i] > max) max = logits[i];
    for (size_t i = 0; i < n; i++) {
        prob[i] = keep[i] ? exp((logits[i] - max) / temperature) : 0.0;
        total += prob[i];
    }
    for (size_t i = 0; i < n; i++) prob[i] /= total;
}

/* Logits whose softmax at T = 1 is exactly proportional to `weights`. */
static void logits_from_weights(const double *weights, size_t n, float *logits) {
    for (size_t i = 0; i < n; i++) logits[i] = (float)log(weights[i]);
}

static uint64_t test_random(uint64_t *s) { return bmi_rng_next_u64(s); }

static void random_logits(float *logits, size_t n, uint64_t seed, double scale) {
    uint64_t s = seed;
    for (size_t i = 0; i < n; i++) {
        /* Sum of uniforms: a rough bell, like real logits. */
        double v = 0.0;
        for (int j = 0; j < 4; j++) v += bmi_rng_to_unit(test_random(&s)) - 0.5;
        logits[i] = (float)(v * scale);
    }
}

/* ---- a literal reading of the header's steps, for exact comparison ------- */

typedef struct ref_item {
    float logit;
    double weight;
    int32_t id;
} ref_item;

static int ref_by_logit(const void *a, const void *b) {
    const ref_item *x = a, *y = b;
    if (x->logit != y->logit) return x->logit < y->logit ? 1 : -1;
    return x->id - y->id;
}
static int ref_by_weight(const void *a, const void *b) {
    const ref_item *x = a, *y = b;
    if (x->weight != y->weight) return x->weight < y->weight ? 1 : -1;
    return x->id - y->id;
}
static int ref_by_id(const void *a, const void *b) { return ((const ref_item *)a)->id - ((const ref_item *)b)->id; }

static int32_t reference_sample(const float *logits, size_t n_vocab, const bm_sampler_params *p, uint64_t seed,
                                const int32_t *recent, size_t n_recent) {
    size_t n_valid = p->n_vocab_valid ? (size_t)p->n_vocab_valid : n_vocab;
    float *l = malloc(n_vocab * sizeof *l);
    char *done = calloc(n_vocab, 1);
    ref_item *c = malloc(n_valid * sizeof *c);
    memcpy(l, logits, n_vocab * sizeof *l);
    for (size_t i = 0; i < n_recent; i++) {
        int32_t id = recent[i];
        if (done[id]) continue;
        done[id] = 1;
        if (l[id] > 0) l[id] /= p->repeat_penalty;
        else if (l[id] < 0) l[id] *= p->repeat_penalty;
    }
    size_t n = 0;
    for (size_t i = 0; i < n_valid; i++)
        if (!isnan(l[i]) && l[i] != -INFINITY) c[n++] = (ref_item){l[i], 0.0, (int32_t)i};
    qsort(c, n, sizeof *c, ref_by_logit);
    int32_t result;
    if (p->temperature == 0.0f) {
        result = c[0].id;
    } else {
        if (p->top_k > 0 && (size_t)p->top_k < n) n = (size_t)p->top_k;
        qsort(c, n, sizeof *c, ref_by_id);
        float max = -INFINITY;
        for (size_t i = 0; i < n; i++)
            if (c[i].logit > max) max = c[i].logit;
        double total = 0.0;
        for (size_t i = 0; i < n; i++) {
            c[i].weight = c[i].logit == max ? 1.0 : exp(((double)c[i].logit - (double)max) / p->temperature);
            total += c[i].weight;
        }
        qsort(c, n, sizeof *c, ref_by_weight);
        size_t kept = n;
        if (p->top_p < 1.0f) {
            double sum = 0.0, target = (double)p->top_p * total;
            for (size_t i = 0; i < n; i++) {
                sum += c[i].weight;
                if (sum >= target) {
                    kept = i + 1;
                    break;
                }
            }
        }
        if (p->min_p > 0.0f) {
            size_t above = 0;
            while (above < kept && c[above].weight >= p->min_p) above++;
            kept = above;
        }
        qsort(c, kept, sizeof *c, ref_by_id);
        uint64_t s = seed;
        double u = bmi_rng_uniform(&s), kept_total = 0.0, sum = 0.0;
        for (size_t i = 0; i < kept; i++) kept_total += c[i].weight;
        result = -1;
        for (size_t i = 0; i < kept && result < 0; i++) {
            sum += c[i].weight;
            if (u * kept_total < sum) result = c[i].id;
        }
        for (size_t i = kept; result < 0 && i-- > 0;)
            if (c[i].weight > 0) result = c[i].id;
    }
    free(l);
    free(done);
    free(c);
    return result;
}

/* ---- the generator ------------------------------------------------------ */

static void test_rng_known_answers(void) {
    /* From the public splitmix64.c reference, seed 1234567. */
    static const uint64_t want[5] = {UINT64_C(6457827717110365317), UINT64_C(3203168211198807973),
                                     UINT64_C(9817491932198370423), UINT64_C(4593380528125082431),
                                     UINT64_C(16408922859458223821)};
    uint64_t s = 1234567;
    for (int i = 0; i < 5; i++) {
        CHECK(bmi_rng_u64_at(1234567, (uint64_t)i) == want[i]);
        CHECK(bmi_rng_next_u64(&s) == want[i]);
    }
    CHECK(s == 1234567 + 5 * BMI_RNG_GAMMA);

    s = 0;
    double lo = 1.0, hi = 0.0;
    for (int i = 0; i < 100000; i++) {
        uint64_t expect_bits = bmi_rng_u64_at(0, (uint64_t)i);
        double u = bmi_rng_uniform(&s);
        if (u != (double)(expect_bits >> 11) * 0x1.0p-53) {
            CHECK_MSG(0, "uniform %d is not the top 53 bits", i);
            break;
        }
        if (u < lo) lo = u;
        if (u > hi) hi = u;
    }
    CHECK(lo >= 0.0 && lo < 0.001 && hi < 1.0 && hi > 0.999);
    CHECK(bmi_rng_to_unit(UINT64_MAX) < 1.0);
    CHECK(bmi_rng_to_unit(0) == 0.0);
}

static void test_defaults(void) {
    bm_sampler_params p;
    memset(&p, 0xAB, sizeof p);
    bm_sampler_params_init(&p);
    CHECK(p.size == sizeof p);
    CHECK(p.temperature == 0.8f && p.top_k == 40 && p.top_p == 0.95f && p.min_p == 0.05f);
    CHECK(p.repeat_penalty == 1.1f && p.n_vocab_valid == 0);
    int zero = 1;
    for (size_t i = 0; i < sizeof p.reserved / sizeof p.reserved[0]; i++) zero &= p.reserved[i] == 0;
    CHECK(zero);
    bm_sampler_params_init(NULL); /* a no-op, must not crash */

    /* NULL params means the defaults. */
    float logits[1000];
    random_logits(logits, 1000, 7, 8.0);
    for (uint64_t seed = 0; seed < 50; seed++) {
        uint64_t a = seed, b = seed;
        int32_t x = -1, y = -2;
        CHECK_OK(bm_sample(logits, 1000, NULL, &a, NULL, 0, &x));
        CHECK_OK(bm_sample(logits, 1000, &p, &b, NULL, 0, &y));
        if (x != y || a != b) {
            CHECK_MSG(0, "NULL params differ from defaults at seed %llu", (unsigned long long)seed);
            break;
        }
    }
}

/* ---- determinism and the exact contract ---------------------------------- */

static void test_determinism(void) {
    enum { N = 1000, DRAWS = 300 };
    float logits[N];
    random_logits(logits, N, 11, 6.0);
    bm_sampler_params p;
    bm_sampler_params_init(&p);
    p.top_k = 0;
    p.min_p = 0.0f;
    p.top_p = 1.0f; /* wide distribution, so seeds visibly differ */
    int32_t a[DRAWS], b[DRAWS], c[DRAWS];
    uint64_t ra = 42, rb = 42, rc = 43;
    for (int i = 0; i < DRAWS; i++) {
        a[i] = sample_ok(logits, N, &p, &ra, NULL, 0);
        b[i] = sample_ok(logits, N, &p, &rb, NULL, 0);
        c[i] = sample_ok(logits, N, &p, &rc, NULL, 0);
    }
    CHECK(memcmp(a, b, sizeof a) == 0);
    CHECK(ra == rb && ra == 42 + DRAWS * BMI_RNG_GAMMA);
    int differ = 0;
    for (int i = 0; i < DRAWS; i++) differ += a[i] != c[i];
    CHECK_MSG(differ > DRAWS / 2, "seeds 42 and 43 agree on %d of %d draws", DRAWS - differ, DRAWS);
}

static void test_one_draw_per_call(void) {
    float logits[5] = {1, 2, 3, 2, 1};
    int32_t recent[2] = {2, 2};
    bm_sampler_params greedy = plain_params(0.0f), sampled, top1 = plain_params(1.0f);
    bm_sampler_params_init(&sampled);
    top1.top_k = 1;
    const bm_sampler_params *all[3] = {&greedy, &sampled, &top1};
    for (int i = 0; i < 3; i++) {
        uint64_t rng = UINT64_MAX - 3; /* wraps: arithmetic is mod 2^64 */
        sample_ok(logits, 5, all[i], &rng, recent, 2);
        CHECK(rng == UINT64_MAX - 3 + BMI_RNG_GAMMA);
    }
}

/* Many random shapes, parameters and seeds: the library must give exactly
 * the token of the literal reading. */
static void test_matches_reference(void) {
    uint64_t s = 2024;
    int mismatches = 0, cases = 0;
    for (int trial = 0; trial < 3000; trial++) {
        size_t n = 1 + test_random(&s) % 300;
        if (trial % 50 == 0) n = 2000; /* past the stack buffers and the top-p gather */
        float *logits = malloc(n * sizeof *logits);
        random_logits(logits, n, test_random(&s), 1.0 + (double)(test_random(&s) % 20));
        /* Ties, NaN and -inf along the way. */
        for (size_t i = 0; i + 1 < n; i += 1 + test_random(&s) % 17) logits[i + 1] = logits[i];
        if (n > 3 && trial % 3 == 0) logits[test_random(&s) % n] = NAN;
        if (n > 3 && trial % 5 == 0) logits[test_random(&s) % n] = -INFINITY;
        if (n > 3 && trial % 97 == 0) logits[test_random(&s) % n] = INFINITY;

        bm_sampler_params p;
        bm_sampler_params_init(&p);
        p.temperature = (trial % 7 == 0) ? 0.0f : (float)(0.05 + bmi_rng_to_unit(test_random(&s)) * 2.0);
        p.top_k = (int32_t)(test_random(&s) % 6 == 0 ? 0 : test_random(&s) % (n + 5));
        p.top_p = test_random(&s) % 3 == 0 ? 1.0f : (float)bmi_rng_to_unit(test_random(&s));
        p.min_p = test_random(&s) % 3 == 0 ? 0.0f : (float)(bmi_rng_to_unit(test_random(&s)) * 0.3);
        p.repeat_penalty = (float)(0.5 + bmi_rng_to_unit(test_random(&s)) * 1.5);
        p.n_vocab_valid = test_random(&s) % 4 == 0 ? (int32_t)(1 + test_random(&s) % n) : 0;
        int32_t recent[400];
        size_t n_recent = test_random(&s) % (trial % 10 == 0 ? 400 : 20);
        for (size_t i = 0; i < n_recent; i++) recent[i] = (int32_t)(test_random(&s) % n);

        size_t n_valid = p.n_vocab_valid ? (size_t)p.n_vocab_valid : n;
        int any = 0;
        for (size_t i = 0; i < n_valid; i++) any |= !isnan(logits[i]) && logits[i] != -INFINITY;
        for (int draw = 0; any && draw < 5; draw++) {
            uint64_t seed = test_random(&s), rng = seed;
            int32_t got = -1, want = reference_sample(logits, n, &p, seed, recent, n_recent);
            bm_status st = bm_sample(logits, n, &p, &rng, recent, n_recent, &got);
            cases++;
            if (st != BM_OK || got != want) {
                if (mismatches++ < 5)
                    fprintf(stderr, "trial %d n %zu T %g k %d p %g minp %g: got %d (st %d %s), want %d\n", trial, n,
                            (double)p.temperature, (int)p.top_k, (double)p.top_p, (double)p.min_p, (int)got,
                            (int)st, bm_last_error(), (int)want);
            }
        }
        free(logits);
    }
    CHECK_MSG(mismatches == 0, "%d of %d draws differ from the reference", mismatches, cases);
}

/* The real vocabulary size on every path, including the top-p gather. */
static void test_full_vocab_matches_reference(void) {
    enum { N = 50304 };
    float *logits = malloc(N * sizeof *logits);
    random_logits(logits, N, 99, 12.0);
    int32_t recent[64];
    for (int i = 0; i < 64; i++) recent[i] = (int32_t)((i * 7919) % N);
    bm_sampler_params configs[5];
    for (int i = 0; i < 5; i++) bm_sampler_params_init(&configs[i]);
    configs[1].top_k = 0;              /* top-p and min-p on the full vocabulary */
    configs[2].top_k = 0;
    configs[2].min_p = 0.0f;           /* top-p alone: gathers */
    configs[2].temperature = 1.5f;
    configs[3] = plain_params(1.0f);   /* no filters: every id */
    configs[4] = plain_params(0.0f);   /* greedy */
    configs[4].repeat_penalty = 1.3f;
    int mismatches = 0;
    for (int c = 0; c < 5; c++)
        for (uint64_t seed = 1; seed <= 20; seed++) {
            uint64_t rng = seed * 1000003;
            int32_t got = -1, want = reference_sample(logits, N, &configs[c], rng, recent, 64);
            CHECK_OK(bm_sample(logits, N, &configs[c], &rng, recent, 64, &got));
            if (got != want && mismatches++ < 5)
                fprintf(stderr, "config %d seed %llu: got %d want %d\n", c, (unsigned long long)seed, (int)got,
                        (int)want);
        }
    CHECK_MSG(mismatches == 0, "%d full-vocabulary draws differ from the reference", mismatches);
    free(logits);
}

/* ---- greedy ------------------------------------------------------------- */

static void test_greedy(void) {
    bm_sampler_params p = plain_params(0.0f);
    uint64_t rng = 5;
    float a[6] = {0.5f, 3.0f, -1.0f, 2.9f, 3.0f, 0.0f};
    CHECK(sample_ok(a, 6, &p, &rng, NULL, 0) == 1); /* tie 1 and 4: lowest id */
    CHECK(rng == 5 + BMI_RNG_GAMMA);

    float b[5] = {NAN, 1.0f, NAN, 2.0f, NAN};
    CHECK(sample_ok(b, 5, &p, &rng, NULL, 0) == 3);
    float c[4] = {-INFINITY, NAN, -INFINITY, -1e30f};
    CHECK(sample_ok(c, 4, &p, &rng, NULL, 0) == 3);
    float d[4] = {1.0f, INFINITY, 2.0f, INFINITY};
    CHECK(sample_ok(d, 4, &p, &rng, NULL, 0) == 1);
    float e[3] = {-5.0f, -5.0f, -5.0f};
    CHECK(sample_ok(e, 3, &p, &rng, NULL, 0) == 0);

    /* Greedy ignores the other filters and the seed. */
    bm_sampler_params q;
    bm_sampler_params_init(&q);
    q.temperature = 0.0f;
    q.repeat_penalty = 1.0f;
    for (uint64_t seed = 0; seed < 100; seed++) {
        uint64_t r = seed * 77;
        if (sample_ok(a, 6, &q, &r, NULL, 0) != 1) {
            CHECK_MSG(0, "greedy depends on the seed (%llu)", (unsigned long long)seed);
            break;
        }
    }

    /* Large, with the maximum in the middle and at the end. */
    enum { N = 50304 };
    float *big = malloc(N * sizeof *big);
    random_logits(big, N, 3, 5.0);
    big[31337] = 100.0f;
    CHECK(sample_ok(big, N, &p, &rng, NULL, 0) == 31337);
    big[N - 1] = 100.5f;
    CHECK(sample_ok(big, N, &p, &rng, NULL, 0) == N - 1);
    free(big);
}

/* ---- filters ------------------------------------------------------------ */

static void test_top_k(void) {
    enum { N = 8, DRAWS = 20000 };
    float logits[N];
    random_logits(logits, N, 17, 3.0);
    logits[5] = 2.0f;
    logits[2] = 1.6f; /* the top two: 5, then 2 */
    for (int i = 0; i < N; i++)
        if (i != 5 && i != 2 && logits[i] > 1.0f) logits[i] = 1.0f;

    /* top_k 1 is greedy at any temperature. */
    bm_sampler_params p = plain_params(1.5f);
    p.top_k = 1;
    int all_greedy = 1;
    for (uint64_t seed = 0; seed < 500; seed++) {
        uint64_t r = seed;
        all_greedy &= sample_ok(logits, N, &p, &r, NULL, 0) == 5;
    }
    CHECK(all_greedy);

    /* top_k 2: only 5 and 2, in the ratio exp(2.0 - 1.6). */
    p.top_k = 2;
    p.temperature = 1.0f;
    long counts[N];
    double prob[N];
    int keep[N] = {0};
    keep[5] = keep[2] = 1;
    histogram(logits, N, &p, 1, DRAWS, counts);
    softmax_kept(logits, keep, N, 1.0, prob);
    CHECK(counts[5] + counts[2] == DRAWS);
    CHECK(frequencies_match(counts, prob, N, DRAWS, "top_k 2"));

    /* Ties at the cut go to the lower id. */
    float tied[5] = {1.0f, 3.0f, 1.0f, 1.0f, 0.0f};
    int ok = 1;
    for (uint64_t seed = 0; seed < 300; seed++) {
        uint64_t r = seed;
        int32_t t = sample_ok(tied, 5, &p, &r, NULL, 0);
        ok &= t == 1 || t == 0;
    }
    CHECK(ok);

    /* top_k at or above the vocabulary is off. */
    p.top_k = N;
    long all_counts[N];
    histogram(logits, N, &p, 2, DRAWS, all_counts);
    for (int i = 0; i < N; i++) keep[i] = 1;
    softmax_kept(logits, keep, N, 1.0, prob);
    CHECK(frequencies_match(all_counts, prob, N, DRAWS, "top_k = n"));
}

static const double halving[5] = {0.5, 0.25, 0.125, 0.0625, 0.0625};

static void test_top_p(void) {
    enum { N = 5, DRAWS = 20000 };
    float logits[N];
    logits_from_weights(halving, N, logits);
    bm_sampler_params p = plain_params(1.0f);
    long counts[N];
    double prob[N];

    struct {
        float top_p;
        int kept;
    } cases[] = {{0.4f, 1}, {0.7f, 2}, {0.8f, 3}, {0.9f, 4}, {0.99f, 5}, {0.0f, 1}, {-3.0f, 1}};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        p.top_p = cases[c].top_p;
        histogram(logits, N, &p, 100 + c, DRAWS, counts);
        int keep[N];
        for (int i = 0; i < N; i++) keep[i] = i < cases[c].kept;
        softmax_kept(logits, keep, N, 1.0, prob);
        char what[64];
        snprintf(what, sizeof what, "top_p %g", (double)cases[c].top_p);
        CHECK_MSG(frequencies_match(counts, prob, N, DRAWS, what), "%s", what);
        for (int i = 0; i < cases[c].kept; i++) CHECK_MSG(counts[i] > 0, "%s never drew id %d", what, i);
    }

    /* The nucleus is taken by probability, not by id. */
    float shuffled[N] = {logits[4], logits[2], logits[0], logits[3], logits[1]};
    p.top_p = 0.7f; /* ids 2 (0.5) and 4 (0.25) */
    histogram(shuffled, N, &p, 7, DRAWS, counts);
    CHECK(counts[2] + counts[4] == DRAWS && counts[2] > counts[4]);
}

static void test_min_p(void) {
    enum { N = 5, DRAWS = 20000 };
    float logits[N];
    logits_from_weights(halving, N, logits);
    bm_sampler_params p = plain_params(1.0f);
    long counts[N];
    double prob[N];
    struct {
        float min_p;
        int kept;
    } cases[] = {{0.3f, 2}, {0.2f, 3}, {0.1f, 5}, {1.0f, 1}, {-1.0f, 5}};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        p.min_p = cases[c].min_p;
        histogram(logits, N, &p, 200 + c, DRAWS, counts);
        int keep[N];
        for (int i = 0; i < N; i++) keep[i] = i < cases[c].kept;
        softmax_kept(logits, keep, N, 1.0, prob);
        char what[64];
        snprintf(what, sizeof what, "min_p %g", (double)cases[c].min_p);
        CHECK_MSG(frequencies_match(counts, prob, N, DRAWS, what), "%s", what);
    }

    /* Relative to the most likely token after temperature: at T = 0.5 the
     * ratios square (1, 0.25, 0.0625, ...), so min_p 0.2 keeps ids 0 and 1. */
    p.temperature = 0.5f;
    p.min_p = 0.2f;
    histogram(logits, N, &p, 9, DRAWS, counts);
    CHECK(counts[0] + counts[1] == DRAWS && counts[1] > 0);

    /* top-p and min-p together: the shorter of the two prefixes. */
    p.temperature = 1.0f;
    p.min_p = 0.2f; /* keeps 3 */
    p.top_p = 0.7f; /* keeps 2 */
    histogram(logits, N, &p, 10, DRAWS, counts);
    CHECK(counts[0] + counts[1] == DRAWS);
    p.min_p = 0.3f; /* keeps 2 */
    p.top_p = 0.9f; /* keeps 4 */
    histogram(logits, N, &p, 11, DRAWS, counts);
    CHECK(counts[0] + counts[1] == DRAWS);
}

static void test_repeat_penalty(void) {
    bm_sampler_params p = plain_params(0.0f);
    p.repeat_penalty = 1.1f;
    uint64_t rng = 1;

    float pos[3] = {2.0f, 1.9f, -1.0f}; /* 2.0 / 1.1 = 1.82 < 1.9 */
    int32_t zero = 0;
    CHECK(sample_ok(pos, 3, &p, &rng, NULL, 0) == 0);
    CHECK(sample_ok(pos, 3, &p, &rng, &zero, 1) == 1);

    float neg[2] = {-1.0f, -1.05f}; /* -1.0 * 1.1 = -1.1 < -1.05 */
    CHECK(sample_ok(neg, 2, &p, &rng, &zero, 1) == 1);

    /* Once per distinct id: three times would be 2 / 1.331 = 1.50 < 1.7. */
    float once[2] = {2.0f, 1.7f};
    int32_t thrice[3] = {0, 0, 0};
    CHECK(sample_ok(once, 2, &p, &rng, thrice, 3) == 0);

    /* A zero logit stays zero; a penalty below 1 rewards. */
    float zeros[2] = {0.0f, -0.01f};
    int32_t both[2] = {1, 0};
    CHECK(sample_ok(zeros, 2, &p, &rng, both, 2) == 0);
    p.repeat_penalty = 0.5f;
    float reward[2] = {1.0f, 1.5f};
    CHECK(sample_ok(reward, 2, &p, &rng, &zero, 1) == 0);

    /* The logits themselves are not touched. */
    CHECK(pos[0] == 2.0f && neg[0] == -1.0f && once[0] == 2.0f && reward[0] == 1.0f);

    /* With 1.0 the ids are still checked but change nothing; ids past
     * n_vocab_valid are allowed (they are simply never sampled). */
    p.repeat_penalty = 1.0f;
    CHECK(sample_ok(pos, 3, &p, &rng, &zero, 1) == 0);
    p.n_vocab_valid = 2;
    int32_t tail = 2;
    CHECK(sample_ok(pos, 3, &p, &rng, &tail, 1) == 0);

    /* A recent window beyond the stack buffer, penalising the leader. */
    p = plain_params(0.0f);
    p.repeat_penalty = 2.0f;
    enum { N = 1000 };
    float many[N];
    for (int i = 0; i < N; i++) many[i] = (float)i / N;
    int32_t window[700];
    for (int i = 0; i < 700; i++) window[i] = N - 1 - (i % 350); /* ids 650..999, each twice */
    CHECK(sample_ok(many, N, &p, &rng, window, 700) == 649);
}

static void test_n_vocab_valid(void) {
    enum { N = 10, DRAWS = 5000 };
    float logits[N] = {0.1f, 0.3f, 0.2f, 0.0f, 0.4f, 0.1f, 5.0f, 9.0f, 9.0f, 7.0f};
    bm_sampler_params p = plain_params(0.0f);
    p.n_vocab_valid = 6;
    uint64_t rng = 3;
    CHECK(sample_ok(logits, N, &p, &rng, NULL, 0) == 4);
    p.n_vocab_valid = N;
    CHECK(sample_ok(logits, N, &p, &rng, NULL, 0) == 7);

    p = plain_params(2.0f);
    p.n_vocab_valid = 6;
    long counts[N];
    histogram(logits, N, &p, 4, DRAWS, counts);
    long tail = 0;
    for (int i = 6; i < N; i++) tail += counts[i];
    CHECK(tail == 0);
    for (int i = 0; i < 6; i++) CHECK(counts[i] > 0);
}

static void test_temperature(void) {
    enum { N = 6, DRAWS = 40000 };
    float logits[N] = {1.0f, 0.5f, 0.0f, -0.5f, 2.0f, 1.5f};
    int keep[N] = {1, 1, 1, 1, 1, 1};
    long counts[N];
    double prob[N];
    const float temps[4] = {0.25f, 0.7f, 1.0f, 3.0f};
    double top_share[4];
    for (int t = 0; t < 4; t++) {
        bm_sampler_params p = plain_params(temps[t]);
        histogram(logits, N, &p, 300 + (uint64_t)t, DRAWS, counts);
        softmax_kept(logits, keep, N, temps[t], prob);
        char what[64];
        snprintf(what, sizeof what, "temperature %g", (double)temps[t]);
        CHECK_MSG(frequencies_match(counts, prob, N, DRAWS, what), "%s", what);
        top_share[t] = (double)counts[4] / DRAWS;
    }
    CHECK(top_share[0] > top_share[1] && top_share[1] > top_share[2] && top_share[2] > top_share[3]);
    CHECK(top_share[3] < 0.3 && top_share[0] > 0.8);

    /* Tiny temperatures approach greedy without dividing into NaN. */
    bm_sampler_params cold = plain_params(1e-30f);
    histogram(logits, N, &cold, 5, 1000, counts);
    CHECK(counts[4] == 1000);

    /* Among equal maxima sampling is fair, unlike greedy. */
    float twins[3] = {3.0f, -1.0f, 3.0f};
    bm_sampler_params warm = plain_params(0.01f);
    histogram(twins, 3, &warm, 6, 20000, counts);
    double half[3] = {0.5, 0.0, 0.5};
    CHECK(frequencies_match(counts, half, 3, 20000, "tied maxima"));

    /* +inf logits share everything. */
    float inf[4] = {1.0f, INFINITY, 2.0f, INFINITY};
    warm.temperature = 1.0f;
    histogram(inf, 4, &warm, 8, 20000, counts);
    double inf_half[4] = {0.0, 0.5, 0.0, 0.5};
    CHECK(frequencies_match(counts, inf_half, 4, 20000, "+inf maxima"));

    /* NaN and -inf are never drawn. */
    float holes[5] = {NAN, 0.0f, -INFINITY, 0.0f, NAN};
    histogram(holes, 5, &warm, 9, 20000, counts);
    double holes_prob[5] = {0, 0.5, 0, 0.5, 0};
    CHECK(frequencies_match(counts, holes_prob, 5, 20000, "NaN and -inf"));
}

/* The full default pipeline on a large distribution against softmax of the
 * survivors computed here. */
static void test_default_frequencies(void) {
    enum { N = 300, DRAWS = 40000 };
    float logits[N];
    random_logits(logits, N, 77, 10.0);
    bm_sampler_params p;
    bm_sampler_params_init(&p);
    p.repeat_penalty = 1.0f;
    p.top_p = 1.0f;
    p.min_p = 0.0f;
    p.top_k = 10;
    p.temperature = 1.3f;

    ref_item c[N];
    for (int i = 0; i < N; i++) c[i] = (ref_item){logits[i], 0.0, i};
    qsort(c, N, sizeof *c, ref_by_logit);
    int keep[N] = {0};
    for (int i = 0; i < 10; i++) keep[c[i].id] = 1;
    long counts[N];
    double prob[N];
    histogram(logits, N, &p, 12345, DRAWS, counts);
    softmax_kept(logits, keep, N, 1.3, prob);
    CHECK(frequencies_match(counts, prob, N, DRAWS, "top_k 10 at T 1.3"));
}

/* ---- the edges of the draw ---------------------------------------------- */

/* Inverse of bmi_rng_mix, so a test can pick the seed whose next draw has
 * given bits. */
static uint64_t unshift(uint64_t y, int k) {
    uint64_t x = y;
    for (int i = 0; i < 64 / k + 1; i++) x = y ^ (x >> k);
    return x;
}
static uint64_t odd_inverse(uint64_t c) {
    uint64_t inv = c; /* Newton: each step doubles the correct low bits */
    for (int i = 0; i < 6; i++) inv *= 2 - c * inv;
    return inv;
}
static uint64_t seed_drawing(uint64_t bits) {
    uint64_t z = unshift(bits, 31);
    z *= odd_inverse(UINT64_C(0x94D049BB133111EB));
    z = unshift(z, 27);
    z *= odd_inverse(UINT64_C(0xBF58476D1CE4E5B9));
    z = unshift(z, 30);
    return z - BMI_RNG_GAMMA;
}

static void test_draw_edges(void) {
    uint64_t lowest = seed_drawing(0), highest = seed_drawing(UINT64_MAX), r;
    r = lowest;
    CHECK(bmi_rng_uniform(&r) == 0.0);
    r = highest;
    CHECK(bmi_rng_uniform(&r) == 1.0 - 0x1.0p-53);
    r = 12345;
    CHECK(bmi_rng_next_u64(&(uint64_t){seed_drawing(bmi_rng_u64_at(r, 0))}) == bmi_rng_u64_at(r, 0));

    /* u = 0 must not pick a candidate of weight 0 (exp underflow) ... */
    bm_sampler_params p = plain_params(1.0f);
    float zero_first[3] = {-1000.0f, 0.0f, 0.0f};
    r = lowest;
    CHECK(sample_ok(zero_first, 3, &p, &r, NULL, 0) == 1);
    /* ... and neither may the largest u. */
    float zero_last[3] = {0.0f, 0.0f, -1000.0f};
    r = highest;
    CHECK(sample_ok(zero_last, 3, &p, &r, NULL, 0) == 1);
    r = highest;
    CHECK(sample_ok(zero_first, 3, &p, &r, NULL, 0) == 2);

    /* Equal logits make exact weights: with top_p 0.5 of four, the running
     * sum reaches 2 of 4 at the second token, so the nucleus is ids 0 and 1
     * (ties in id order) and u just below 1 lands on id 1. */
    float flat[4] = {0.5f, 0.5f, 0.5f, 0.5f};
    p.top_p = 0.5f;
    r = highest;
    CHECK(sample_ok(flat, 4, &p, &r, NULL, 0) == 1);
    long counts[4];
    histogram(flat, 4, &p, 21, 4000, counts);
    CHECK(counts[0] + counts[1] == 4000 && counts[0] > 1500 && counts[1] > 1500);
    /* min_p 1 keeps every token equal to the most likely one. */
    p.top_p = 1.0f;
    p.min_p = 1.0f;
    histogram(flat, 4, &p, 22, 4000, counts);
    CHECK(counts[0] > 700 && counts[1] > 700 && counts[2] > 700 && counts[3] > 700);
}

/* ---- rejected arguments ------------------------------------------------- */

#define EXPECT_INVALID(call)                                                                      \
    do {                                                                                          \
        bmi_clear_error();                                                                        \
        token = 12345;                                                                            \
        rng = 777;                                                                                \
        CHECK_ERR(call, BM_ERR_INVALID_ARGUMENT);                                                 \
        CHECK_MSG(token == 12345 && rng == 777, "%s touched its outputs", #call);                 \
    } while (0)

static void test_invalid_arguments(void) {
    float logits[4] = {0.0f, 1.0f, 2.0f, 3.0f};
    int32_t token;
    uint64_t rng;
    bm_sampler_params p;
    bm_sampler_params_init(&p);

    EXPECT_INVALID(bm_sample(NULL, 4, &p, &rng, NULL, 0, &token));
    EXPECT_INVALID(bm_sample(logits, 4, &p, NULL, NULL, 0, &token));
    bmi_clear_error();
    CHECK_ERR(bm_sample(logits, 4, &p, &rng, NULL, 0, NULL), BM_ERR_INVALID_ARGUMENT);
    EXPECT_INVALID(bm_sample(logits, 0, &p, &rng, NULL, 0, &token));
    if (SIZE_MAX > INT32_MAX) EXPECT_INVALID(bm_sample(logits, (size_t)INT32_MAX + 1, &p, &rng, NULL, 0, &token));

    int32_t bad_low = -1, bad_high = 4, good[2] = {1, 3};
    EXPECT_INVALID(bm_sample(logits, 4, &p, &rng, NULL, 2, &token));
    EXPECT_INVALID(bm_sample(logits, 4, &p, &rng, &bad_low, 1, &token));
    EXPECT_INVALID(bm_sample(logits, 4, &p, &rng, &bad_high, 1, &token));
    bm_sampler_params off = p;
    off.repeat_penalty = 1.0f; /* still checked when the penalty is off */
    EXPECT_INVALID(bm_sample(logits, 4, &off, &rng, &bad_high, 1, &token));

    bm_sampler_params q;
#define WITH(stmt)                                                                                \
    do {                                                                                          \
        q = p;                                                                                    \
        stmt;                                                                                     \
        EXPECT_INVALID(bm_sample(logits, 4, &q, &rng, good, 2, &token));                          \
    } while (0)
    WITH(q.size = 0);
    WITH(q.size = sizeof q + 4);
    WITH(q.size = sizeof q - 4);
    WITH(q.reserved[0] = 1);
    WITH(q.reserved[7] = 0x80000000u);
    WITH(q.temperature = NAN);
    WITH(q.temperature = -0.1f);
    WITH(q.temperature = -INFINITY);
    WITH(q.temperature = INFINITY);
    WITH(q.top_p = NAN);
    WITH(q.min_p = NAN);
    WITH(q.min_p = 1.0001f);
    WITH(q.min_p = INFINITY);
    WITH(q.repeat_penalty = 0.0f);
    WITH(q.repeat_penalty = -1.1f);
    WITH(q.repeat_penalty = NAN);
    WITH(q.repeat_penalty = INFINITY);
    WITH(q.n_vocab_valid = -1);
    WITH(q.n_vocab_valid = 5);
    WITH(q.n_vocab_valid = INT32_MIN);
    /* Also checked when greedy would not use them. */
    WITH((q.temperature = 0.0f, q.min_p = NAN));
    WITH((q.temperature = 0.0f, q.top_p = NAN));
#undef WITH

    /* Nothing to choose from. */
    float holes[4] = {NAN, -INFINITY, NAN, -INFINITY};
    EXPECT_INVALID(bm_sample(holes, 4, &p, &rng, NULL, 0, &token));
    bm_sampler_params g = plain_params(0.0f);
    EXPECT_INVALID(bm_sample(holes, 4, &g, &rng, NULL, 0, &token));
    float tail_only[4] = {NAN, NAN, 1.0f, 2.0f};
    g.n_vocab_valid = 2;
    EXPECT_INVALID(bm_sample(tail_only, 4, &g, &rng, NULL, 0, &token));
    /* A penalty cannot make -inf a candidate. */
    float minus_inf[1] = {-INFINITY};
    int32_t zero = 0;
    g = plain_params(0.0f);
    g.repeat_penalty = 0.5f;
    EXPECT_INVALID(bm_sample(minus_inf, 1, &g, &rng, &zero, 1, &token));

    /* Edge values that are valid. */
    bm_sampler_params e = p;
    e.min_p = 1.0f;
    e.top_p = -INFINITY;
    e.top_k = -5;
    e.n_vocab_valid = 4;
    rng = 0;
    CHECK(sample_ok(logits, 4, &e, &rng, NULL, 0) == 3);
    e.n_vocab_valid = 0;
    CHECK(sample_ok(logits, 1, &e, &rng, NULL, 0) == 0); /* one id is enough */
}

#undef EXPECT_INVALID

static void test_out_of_memory(void) {
    enum { N = 1000 };
    float logits[N];
    random_logits(logits, N, 5, 4.0);
    bm_sampler_params p = plain_params(1.0f); /* every id: more than the stack holds */
    uint64_t rng = 9;
    int32_t token = -7;
    bmi_alloc_fail_at(1);
    bmi_clear_error();
    CHECK_ERR(bm_sample(logits, N, &p, &rng, NULL, 0, &token), BM_ERR_OUT_OF_MEMORY);
    CHECK(token == -7 && rng == 9);

    int32_t window[500];
    for (int i = 0; i < 500; i++) window[i] = i;
    p = plain_params(0.0f);
    p.repeat_penalty = 1.2f;
    bmi_alloc_fail_at(1);
    CHECK_ERR(bm_sample(logits, N, &p, &rng, window, 500, &token), BM_ERR_OUT_OF_MEMORY);
    CHECK(token == -7 && rng == 9);
    bmi_alloc_fail_at(0);

    /* The defaults never allocate. */
    bm_sampler_params_init(&p);
    bmi_alloc_fail_at(0);
    sample_ok(logits, N, &p, &rng, window, 64);
    CHECK(bmi_alloc_fail_at(0) == 0);
}

/* ---- threads -------------------------------------------------------------- */

enum { THREAD_N = 5000, THREAD_DRAWS = 400 };
static float thread_logits[THREAD_N];

typedef struct thread_job {
    uint64_t seed;
    int top_k;
    int32_t tokens[THREAD_DRAWS];
} thread_job;

static void run_job(thread_job *job) {
    bm_sampler_params p;
    bm_sampler_params_init(&p);
    p.top_k = job->top_k;
    uint64_t rng = job->seed;
    int32_t recent[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    for (int i = 0; i < THREAD_DRAWS; i++)
        if (bm_sample(thread_logits, THREAD_N, &p, &rng, recent, 8, &job->tokens[i]) != BM_OK) job->tokens[i] = -1;
}

static void *thread_main(void *arg) {
    run_job(arg);
    return NULL;
}

static void test_threads(void) {
    enum { T = 4 };
    random_logits(thread_logits, THREAD_N, 31, 9.0);
    thread_job parallel[T], serial[T];
    pthread_t threads[T];
    for (int i = 0; i < T; i++) {
        parallel[i].seed = serial[i].seed = 1000 + (uint64_t)i;
        parallel[i].top_k = serial[i].top_k = i % 2 ? 0 : 40; /* heap and keep-all, heap and stack */
    }
    for (int i = 0; i < T; i++) CHECK(pthread_create(&threads[i], NULL, thread_main, &parallel[i]) == 0);
    for (int i = 0; i < T; i++) pthread_join(threads[i], NULL);
    for (int i = 0; i < T; i++) run_job(&serial[i]);
    for (int i = 0; i < T; i++) CHECK(memcmp(parallel[i].tokens, serial[i].tokens, sizeof serial[i].tokens) == 0);
}

int main(void) {
    test_rng_known_answers();
    test_defaults();
    test_determinism();
    test_one_draw_per_call();
    test_matches_reference();
    test_full_vocab_matches_reference();
    test_greedy();
    test_top_k();
    test_top_p();
    test_min_p();
    test_repeat_penalty();
    test_n_vocab_valid();
    test_temperature();
    test_default_frequencies();
    test_draw_edges();
    test_invalid_arguments();
    test_out_of_memory();
    test_threads();
    return check_summary("test_sampler");
}
