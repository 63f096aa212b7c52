/* Token sampling: bm_sample and bm_sampler_params_init. The contract, down to
 * the order of the filters and the random draw, is the Sampling section of
 * blackmamba.h; the CUDA sampler reproduces it, so any change here is a
 * change of that contract.
 *
 * The shape of the work: one pass over the logits picks the candidates (a
 * bounded heap for top-k, so a small k never sorts the whole vocabulary),
 * then everything else runs on the few survivors. Penalised ids are handled
 * as breakpoints of that pass, so the caller's logits are never copied. */
#include "common.h"
#include "rng.h"

#include <math.h>
#include <stdlib.h>

/* Scratch that fits these counts lives on the stack, so the default
 * parameters (top_k 40, a short recent window) never allocate. */
#define STACK_CANDIDATES 128
#define STACK_RECENT 256
/* Above this many survivors, top-p first gathers the heaviest ones instead of
 * sorting everything. */
#define NUCLEUS_DIRECT_SORT 512

typedef struct candidate {
    double weight; /* exp((logit - max) / temperature); 1 for the largest */
    float logit;   /* after the repetition penalty */
    int32_t id;
} candidate;

/* The running choice of candidates. As a heap its root is the worst one kept,
 * so deciding whether a new logit gets in is one comparison. */
/* The largest of a block of logits (see block_max_portable). */
typedef float (*block_max_fn)(const float *x);

typedef struct selection {
    candidate *items;
    size_t count;
    size_t cap;
    int is_heap;            /* 0: keep every candidate, in id order */
    block_max_fn block_max; /* the fastest this processor runs */
} selection;

BM_API void bm_sampler_params_init(bm_sampler_params *p) {
    if (!p) return;
    memset(p, 0, sizeof *p);
    p->size = sizeof *p;
    p->temperature = 0.8f;
    p->top_k = 40;
    p->top_p = 0.95f;
    p->min_p = 0.05f;
    p->repeat_penalty = 1.1f;
    p->n_vocab_valid = 0;
}

/* ---- argument checks ---------------------------------------------------- */

static bm_status check_params(const bm_sampler_params *p, size_t n_vocab) {
    if (p->size != sizeof *p)
        return bmi_fail(BM_ERR_INVALID_ARGUMENT, "bm_sample: unknown params size %u (expected %zu)",
                        (unsigned)p->size, sizeof *p);
    for (size_t i = 0; i < sizeof p->reserved / sizeof p->reserved[0]; i++)
        if (p->reserved[i] != 0)
            return bmi_fail(BM_ERR_INVALID_ARGUMENT, "bm_sample: params reserved[%zu] is not zero", i);
    if (!(p->temperature >= 0.0f) || isinf(p->temperature))
        return bmi_fail(BM_ERR_INVALID_ARGUMENT, "bm_sample: temperature %g must be finite and >= 0",
                        (double)p->temperature);
    if (isnan(p->top_p)) return bmi_fail(BM_ERR_INVALID_ARGUMENT, "bm_sample: top_p is NaN");
    if (isnan(p->min_p) || p->min_p > 1.0f)
        return bmi_fail(BM_ERR_INVALID_ARGUMENT, "bm_sample: min_p %g must be a number <= 1", (double)p->min_p);
    if (!(p->repeat_penalty > 0.0f) || isinf(p->repeat_penalty))
        return bmi_fail(BM_ERR_INVALID_ARGUMENT, "bm_sample: repeat_penalty %g must be finite and > 0",
                        (double)p->repeat_penalty);
    if (p->n_vocab_valid < 0 || (size_t)p->n_vocab_valid > n_vocab)
        return bmi_fail(BM_ERR_INVALID_ARGUMENT, "bm_sample: n_vocab_valid %d outside [0, n_vocab = %zu]",
                        (int)p->n_vocab_valid, n_vocab);
    return BM_OK;
}

static bm_status check_recent(const int32_t *recent, size_t n_recent, size_t n_vocab) {
    if (n_recent == 0) return BM_OK;
    if (!recent) return bmi_fail(BM_ERR_INVALID_ARGUMENT, "bm_sample: recent is NULL but n_recent is %zu", n_recent);
    for (size_t i = 0; i < n_recent; i++)
        if (recent[i] < 0 || (size_t)recent[i] >= n_vocab)
            return bmi_fail(BM_ERR_INVALID_ARGUMENT, "bm_sample: recent[%zu] = %d outside [0, %zu)", i,
                            (int)recent[i], n_vocab);
    return BM_OK;
}

/* ---- repetition penalty ------------------------------------------------- */

static int compare_ids(const void *a, const void *b) {
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

/* Sort ids and drop repeats, so each id is penalised once and the candidate
 * pass can meet them in order. Returns the distinct count. */
static size_t sort_distinct(int32_t *ids, size_t n) {
    if (n == 0) return 0;
    qsort(ids, n, sizeof *ids, compare_ids);
    size_t kept = 1;
    for (size_t i = 1; i < n; i++)
        if (ids[i] != ids[kept - 1]) ids[kept++] = ids[i];
    return kept;
}

static float apply_penalty(float logit, float penalty) {
    if (logit > 0.0f) return logit / penalty;
    if (logit < 0.0f) return logit * penalty;
    return logit;
}

/* ---- choosing candidates ------------------------------------------------ */

/* Ties go to the lower id, so with equal logits the higher id ranks lower. */
static int ranks_below(const candidate *a, const candidate *b) {
    return a->logit < b->logit || (a->logit == b->logit && a->id > b->id);
}

static void swap_candidates(candidate *a, candidate *b) {
    candidate t = *a;
    *a = *b;
    *b = t;
}

static void heap_sift_up(candidate *h, size_t i) {
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!ranks_below(&h[i], &h[parent])) break;
        swap_candidates(&h[i], &h[parent]);
        i = parent;
    }
}

static void heap_sift_down(candidate *h, size_t n, size_t i) {
    for (;;) {
        size_t worst = i, left = 2 * i + 1, right = left + 1;
        if (left < n && ranks_below(&h[left], &h[worst])) worst = left;
        if (right < n && ranks_below(&h[right], &h[worst])) worst = right;
        if (worst == i) return;
        swap_candidates(&h[i], &h[worst]);
        i = worst;
    }
}

static void replace_worst(selection *sel, int32_t id, float logit) {
    sel->items[0] = (candidate){0.0, logit, id};
    heap_sift_down(sel->items, sel->count, 0);
}

/* Ids are offered in increasing order, so a newcomer that only equals the
 * worst kept logit loses the tie: strictly greater is the test. */
static void offer(selection *sel, int32_t id, float logit) {
    if (!(logit > -INFINITY)) return; /* NaN and -inf are never candidates */
    if (sel->count < sel->cap) {
        sel->items[sel->count] = (candidate){0.0, logit, id};
        if (sel->is_heap) heap_sift_up(sel->items, sel->count);
        sel->count++;
    } else if (logit > sel->items[0].logit) {
        replace_worst(sel, id, logit);
    }
}

#define SKIP_BLOCK 64

/* The largest of SKIP_BLOCK logits; NaN never wins. Eight independent lanes
 * the compiler turns into vector max instructions of the baseline ISA. */
static float block_max_portable(const float *x) {
    float lane[8] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY};
    for (int k = 0; k < SKIP_BLOCK; k += 8)
        for (int l = 0; l < 8; l++) lane[l] = x[k + l] > lane[l] ? x[k + l] : lane[l];
    float m = lane[0];
    for (int l = 1; l < 8; l++) m = lane[l] > m ? lane[l] : m;
    return m;
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define HAVE_BLOCK_MAX_AVX512 1
/* The same with AVX-512: max(x, acc) returns acc when x is NaN, so NaN never
 * enters the accumulator. */
__attribute__((target("avx512f"))) static float block_max_avx512(const float *x) {
    __m512 acc = _mm512_set1_ps(-INFINITY);
    for (int k = 0; k < SKIP_BLOCK; k += 16) acc = _mm512_max_ps(_mm512_loadu_ps(x + k), acc);
    return _mm512_reduce_max_ps(acc);
}
#endif

static block_max_fn choose_block_max(void) {
#ifdef HAVE_BLOCK_MAX_AVX512
    if (__builtin_cpu_supports("avx512f")) return block_max_avx512;
#endif
    return block_max_portable;
}

/* Offer the unpenalised ids [begin, end). Without a heap the cap is the whole
 * range, so the first loop takes every id and the second never runs. */
static void offer_run(selection *sel, const float *logits, int32_t begin, int32_t end) {
    int32_t i = begin;
    for (; i < end && sel->count < sel->cap; i++) offer(sel, i, logits[i]);
    if (i == end) return;
    /* Full: almost every logit fails this one comparison, which keeps small k
     * close to the speed of reading the logits. */
    float worst_kept = sel->items[0].logit;
    while (i < end) {
        /* Skip whole blocks that cannot beat the worst kept logit: the block
         * maximum is eight independent lanes the compiler turns into vector
         * max instructions (NaN never wins a lane, as in the loop below). */
        if (end - i >= SKIP_BLOCK && !(sel->block_max(logits + i) > worst_kept)) {
            i += SKIP_BLOCK;
            continue;
        }
        int32_t stop = end - i > SKIP_BLOCK ? i + SKIP_BLOCK : end;
        for (; i < stop; i++) {
            if (logits[i] > worst_kept) {
                replace_worst(sel, i, logits[i]);
                worst_kept = sel->items[0].logit;
            }
        }
    }
}

static void select_candidates(selection *sel, const float *logits, int32_t n_valid, const int32_t *penalised,
                              size_t n_penalised, float penalty) {
    int32_t next = 0;
    for (size_t j = 0; j < n_penalised && penalised[j] < n_valid; j++) {
        int32_t id = penalised[j];
        offer_run(sel, logits, next, id);
        offer(sel, id, apply_penalty(logits[id], penalty));
        next = id + 1;
    }
    offer_run(sel, logits, next, n_valid);
}

/* ---- probabilities and filters ------------------------------------------ */

static int compare_by_id(const void *a, const void *b) {
    int32_t x = ((const candidate *)a)->id, y = ((const candidate *)b)->id;
    return (x > y) - (x < y);
}

/* Decreasing weight, then increasing id: the order top-p walks. */
static int compare_by_weight(const void *a, const void *b) {
    const candidate *x = a, *y = b;
    if (x->weight != y->weight) return x->weight < y->weight ? 1 : -1;
    return (x->id > y->id) - (x->id < y->id);
}

/* Fill each weight with exp((logit - max) / temperature), summed in id order.
 * The largest logit gets exactly 1, which also covers a +inf maximum (where
 * the subtraction would give NaN) and makes min-p a plain threshold. */
static double compute_weights(candidate *c, size_t n, double temperature) {
    float max = c[0].logit;
    for (size_t i = 1; i < n; i++)
        if (c[i].logit > max) max = c[i].logit;
    double total = 0.0;
    for (size_t i = 0; i < n; i++) {
        c[i].weight = c[i].logit == max ? 1.0 : exp(((double)c[i].logit - (double)max) / temperature);
        total += c[i].weight;
    }
    return total;
}

/* Keep weights >= min_p (the largest weight is 1), preserving order. */
static size_t keep_min_p(candidate *c, size_t n, double min_p) {
    size_t kept = 0;
    for (size_t i = 0; i < n; i++)
        if (c[i].weight >= min_p) c[kept++] = c[i];
    return kept;
}

/* Weight classes for top-p: 8 per octave, heaviest first, over 64 octaves
 * below 1; class WEIGHT_CLASSES - 1 holds everything lighter, and 0. A
 * positive double's bits grow with its value, so the class is a shift. */
#define CLASSES_PER_OCTAVE_BITS 3
#define WEIGHT_CLASSES (64 << CLASSES_PER_OCTAVE_BITS)

static size_t weight_class(double w) {
    uint64_t bits;
    memcpy(&bits, &w, sizeof bits);
    /* 1.0 is 0x3FF0...; each step down in the top bits is one class. */
    uint64_t top = bits >> (52 - CLASSES_PER_OCTAVE_BITS);
    uint64_t one = UINT64_C(0x3FF0000000000000) >> (52 - CLASSES_PER_OCTAVE_BITS);
    uint64_t below_one = one - top; /* weights are <= 1, so no wrap */
    return below_one < WEIGHT_CLASSES - 1 ? (size_t)below_one : WEIGHT_CLASSES - 1;
}

/* Move to the front every candidate of the heaviest weight classes that
 * together already weigh `target`; returns how many. They are a prefix of
 * the top-p order that holds the nucleus plus a little of its last class,
 * so only they need sorting. */
static size_t gather_heaviest(candidate *c, size_t n, double target) {
    double mass[WEIGHT_CLASSES] = {0};
    for (size_t i = 0; i < n; i++) mass[weight_class(c[i].weight)] += c[i].weight;
    size_t last = 0;
    double sum = mass[0];
    while (sum < target && last < WEIGHT_CLASSES - 1) sum += mass[++last];
    size_t front = 0;
    for (size_t i = 0; i < n; i++)
        if (weight_class(c[i].weight) <= last) swap_candidates(&c[front++], &c[i]);
    return front;
}

/* Sort the first n by weight and return the shortest prefix whose running
 * sum reaches target, or 0 if none does. */
static size_t nucleus_length(candidate *c, size_t n, double target) {
    qsort(c, n, sizeof *c, compare_by_weight);
    double sum = 0.0;
    for (size_t i = 0; i < n; i++) {
        sum += c[i].weight;
        if (sum >= target) return i + 1;
    }
    return 0;
}

/* Keep the top-p nucleus (at least one token); leaves the kept ones in id
 * order again. */
static size_t keep_top_p(candidate *c, size_t n, double target) {
    size_t gathered = n > NUCLEUS_DIRECT_SORT ? gather_heaviest(c, n, target) : n;
    size_t kept = nucleus_length(c, gathered, target);
    /* The gathered mass was summed in another order; if rounding kept the
     * sorted sum just short, decide on everything, as a full sort would. */
    if (kept == 0 && gathered < n) kept = nucleus_length(c, n, target);
    if (kept == 0) kept = n;
    qsort(c, kept, sizeof *c, compare_by_id);
    return kept;
}

/* Walk the kept candidates in id order: the first whose running weight
 * exceeds u * total. With u < 1 and both sums taken alike, u * total stays
 * below the final running sum; the fallback to the last candidate with any
 * weight only guards that reasoning. */
static int32_t draw(const candidate *c, size_t n, double u) {
    double total = 0.0;
    for (size_t i = 0; i < n; i++) total += c[i].weight;
    double target = u * total, sum = 0.0;
    size_t last_positive = 0;
    for (size_t i = 0; i < n; i++) {
        sum += c[i].weight;
        if (target < sum) return c[i].id;
        if (c[i].weight > 0.0) last_positive = i;
    }
    return c[last_positive].id;
}

static int32_t sample_from(candidate *c, size_t n, const bm_sampler_params *p, double u) {
    double total = compute_weights(c, n, (double)p->temperature);
    if (p->min_p > 0.0f) n = keep_min_p(c, n, (double)p->min_p);
    if (p->top_p < 1.0f) n = keep_top_p(c, n, (double)p->top_p * total);
    return draw(c, n, u);
}

/* ---- entry point -------------------------------------------------------- */

/* Scratch that is either on the caller's stack or from bmi_malloc. */
static void *scratch(void *stack_buf, size_t stack_count, size_t count, size_t elem_size) {
    if (count <= stack_count) return stack_buf;
    size_t bytes;
    if (!bmi_mul_size(count, elem_size, &bytes)) return NULL;
    return bmi_malloc(bytes);
}

/* Everything after the checks, with scratch for `cap` candidates and the
 * distinct penalised ids already sorted. */
static bm_status sample_checked(const float *logits, int32_t n_valid, const bm_sampler_params *p, uint64_t *rng,
                                const int32_t *penalised, size_t n_penalised, candidate *items, size_t cap,
                                int32_t *token) {
    int greedy = p->temperature == 0.0f;
    selection sel = {items, 0, cap, cap < (size_t)n_valid, choose_block_max()};
    select_candidates(&sel, logits, n_valid, penalised, n_penalised, p->repeat_penalty);
    if (sel.count == 0)
        return bmi_fail(BM_ERR_INVALID_ARGUMENT, "bm_sample: no candidate: logits of ids 0..%d are all NaN or -inf",
                        (int)n_valid - 1);

    /* The draw happens on every path, greedy included, so that callers'
     * streams stay in step whatever parameters they use. */
    uint64_t next_rng = *rng;
    double u = bmi_rng_uniform(&next_rng);
    if (greedy) {
        *token = items[0].id;
    } else {
        /* The heap leaves them in heap order; restore id order so that every
         * sum below is taken in the one order the contract names. */
        if (sel.is_heap) qsort(items, sel.count, sizeof *items, compare_by_id);
        *token = sample_from(items, sel.count, p, u);
    }
    *rng = next_rng;
    return BM_OK;
}

BM_API bm_status bm_sample(const float *logits, size_t n_vocab, const bm_sampler_params *p, uint64_t *rng,
                           const int32_t *recent, size_t n_recent, int32_t *token) {
    if (!logits || !rng || !token)
        return bmi_fail(BM_ERR_INVALID_ARGUMENT, "bm_sample: NULL %s", !logits ? "logits" : !rng ? "rng" : "token");
    if (n_vocab == 0 || n_vocab > INT32_MAX)
        return bmi_fail(BM_ERR_INVALID_ARGUMENT, "bm_sample: n_vocab %zu outside [1, INT32_MAX]", n_vocab);
    bm_sampler_params defaults;
    if (!p) {
        bm_sampler_params_init(&defaults);
        p = &defaults;
    }
    bm_status st = check_params(p, n_vocab);
    if (st == BM_OK) st = check_recent(recent, n_recent, n_vocab);
    if (st != BM_OK) return st;

    int32_t n_valid = p->n_vocab_valid > 0 ? p->n_vocab_valid : (int32_t)n_vocab;
    /* Greedy is top-1; top-k off (or k >= n_valid) keeps every id. */
    size_t cap = (size_t)n_valid;
    if (p->temperature == 0.0f) cap = 1;
    else if (p->top_k > 0 && p->top_k < n_valid) cap = (size_t)p->top_k;
    size_t n_penalised = p->repeat_penalty != 1.0f ? n_recent : 0;

    candidate stack_candidates[STACK_CANDIDATES];
    int32_t stack_recent[STACK_RECENT];
    candidate *items = scratch(stack_candidates, STACK_CANDIDATES, cap, sizeof *items);
    int32_t *penalised = scratch(stack_recent, STACK_RECENT, n_penalised, sizeof *penalised);
    if (!items || !penalised) {
        st = bmi_fail(BM_ERR_OUT_OF_MEMORY, "bm_sample: no memory for %zu candidates and %zu recent ids", cap,
                      n_penalised);
    } else {
        if (n_penalised) memcpy(penalised, recent, n_penalised * sizeof *penalised);
        n_penalised = sort_distinct(penalised, n_penalised);
        st = sample_checked(logits, n_valid, p, rng, penalised, n_penalised, items, cap, token);
    }
    if (items != stack_candidates) bmi_free(items);
    if (penalised != stack_recent) bmi_free(penalised);
    return st;
}
