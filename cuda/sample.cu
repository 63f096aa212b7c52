/* bm_sample on the device, for one row of logits, so a generation loop
 * copies back one token instead of vocab_size floats. The steps and their
 * order are blackmamba.h's (Sampling); lib/sampler.c is the reference:
 *  - greedy: a block argmax (largest logit, lowest id among equals);
 *  - top-k: a radix select of the k largest order-preserving keys, ties at
 *    the cut broken by lower id, then the survivors sorted by id;
 *  - the rest (softmax weights in double, min-p, top-p, the draw) on at most
 *    BMC_SAMPLE_MAX_K candidates, with every sum taken by one thread in the
 *    order the contract names, so the result is the CPU's to the last bit
 *    (except where CUDA's double exp and the host's differ in the last ulp).
 * The penalised ids (recent) are sorted in shared memory and found by
 * binary search while scanning the logits. */
#include <float.h>

#include "device_util.cuh"
#include "kernels.cuh"

#define SAMPLE_THREADS 1024
#define MAXK BMC_SAMPLE_MAX_K
#define MAX_RECENT BMC_SAMPLE_MAX_RECENT

struct sample_smem {
    int recent[MAX_RECENT];
    int n_recent;
    int hist[256];
    unsigned prefix, mask;
    int remaining, n_gt, n_eq, overflow, n;
    int ids[MAXK];
    float logits[MAXK];
    double w[MAXK];
    int eq_ids[MAXK];
    int order[MAXK];
    int tmp_ids[MAXK];
    float tmp_logits[MAXK];
    double tmp_w[MAXK];
    float best_v[32];
    int best_id[32];
};

__device__ __forceinline__ bool is_recent(const sample_smem &s, int id) {
    int lo = 0, hi = s.n_recent - 1;
    while (lo <= hi) {
        int mid = (lo + hi) >> 1, v = s.recent[mid];
        if (v == id) return true;
        if (v < id) lo = mid + 1;
        else hi = mid - 1;
    }
    return false;
}

/* The logit after the repetition penalty; -0 folded into +0 so that the
 * integer keys tie exactly where the float comparisons of the CPU tie. */
__device__ __forceinline__ float value_of(const bmc_sample_args &a, const sample_smem &s, int id) {
    float l = a.logits[(size_t)blockIdx.x * (size_t)a.ld + id];
    if (s.n_recent > 0 && a.repeat_penalty != 1.0f && is_recent(s, id)) {
        if (l > 0.0f) l = l / a.repeat_penalty;
        else if (l < 0.0f) l = l * a.repeat_penalty;
    }
    return l + 0.0f;
}

__device__ __forceinline__ bool is_candidate(float l) { return l > -INFINITY; } /* false for NaN and -inf */

__device__ __forceinline__ unsigned key_of(float l) {
    unsigned u = __float_as_uint(l);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

/* Sort s.order[0..n) (indices) with `before(i, j)`: bitonic over the next
 * power of two, padding at the end. */
template <typename Before>
__device__ void sort_indices(sample_smem &s, int n, Before before) {
    int size = 1;
    while (size < n) size <<= 1;
    for (int i = threadIdx.x; i < size; i += SAMPLE_THREADS)
        if (i >= n) s.order[i] = -1;
    __syncthreads();
    for (int k = 2; k <= size; k <<= 1) {
        for (int j = k >> 1; j > 0; j >>= 1) {
            for (int i = threadIdx.x; i < size; i += SAMPLE_THREADS) {
                int partner = i ^ j;
                if (partner <= i) continue;
                int x = s.order[i], y = s.order[partner];
                /* padding (-1) sorts last */
                bool x_first = x >= 0 && (y < 0 || before(x, y));
                bool ascending = (i & k) == 0;
                if (ascending ? !x_first : x_first) {
                    s.order[i] = y;
                    s.order[partner] = x;
                }
            }
            __syncthreads();
        }
    }
}

/* Reorder the first n candidates by s.order. */
__device__ void apply_order(sample_smem &s, int n) {
    for (int i = threadIdx.x; i < n; i += SAMPLE_THREADS) {
        int j = s.order[i];
        s.tmp_ids[i] = s.ids[j];
        s.tmp_logits[i] = s.logits[j];
        s.tmp_w[i] = s.w[j];
    }
    __syncthreads();
    for (int i = threadIdx.x; i < n; i += SAMPLE_THREADS) {
        s.ids[i] = s.tmp_ids[i];
        s.logits[i] = s.tmp_logits[i];
        s.w[i] = s.tmp_w[i];
    }
    __syncthreads();
}

__global__ void __launch_bounds__(SAMPLE_THREADS) sample_kernel(const bmc_sample_args a) {
    __shared__ sample_smem s;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int V = a.n_valid;

    /* penalised ids, sorted */
    if (tid == 0) s.n_recent = a.n_recent < MAX_RECENT ? a.n_recent : MAX_RECENT;
    __syncthreads();
    for (int i = tid; i < s.n_recent; i += SAMPLE_THREADS) s.ids[i] = a.recent[i];
    __syncthreads();
    if (s.n_recent > 0) {
        for (int i = tid; i < s.n_recent; i += SAMPLE_THREADS) s.order[i] = i;
        sort_indices(s, s.n_recent, [&](int x, int y) { return s.ids[x] < s.ids[y]; });
        for (int i = tid; i < s.n_recent; i += SAMPLE_THREADS) s.recent[i] = s.ids[s.order[i]];
        __syncthreads();
    }

    if (a.temperature == 0.0f) {
        float best = -INFINITY;
        int best_id = -1;
        for (int id = tid; id < V; id += SAMPLE_THREADS) {
            float l = value_of(a, s, id);
            if (is_candidate(l) && (best_id < 0 || l > best)) { /* ids rise within a thread: keep the first */
                best = l;
                best_id = id;
            }
        }
        for (int o = 16; o > 0; o >>= 1) {
            float ov = __shfl_xor_sync(0xffffffffu, best, o);
            int oi = __shfl_xor_sync(0xffffffffu, best_id, o);
            if (oi >= 0 && (best_id < 0 || ov > best || (ov == best && oi < best_id))) {
                best = ov;
                best_id = oi;
            }
        }
        if (lane == 0) {
            s.best_v[warp] = best;
            s.best_id[warp] = best_id;
        }
        __syncthreads();
        if (tid == 0) {
            float bv = -INFINITY;
            int bi = -1;
            for (int w = 0; w < SAMPLE_THREADS / 32; w++) {
                int oi = s.best_id[w];
                float ov = s.best_v[w];
                if (oi >= 0 && (bi < 0 || ov > bv || (ov == bv && oi < bi))) {
                    bv = ov;
                    bi = oi;
                }
            }
            a.tokens[blockIdx.x] = bi;
        }
        return;
    }

    /* ---- top-k: radix select of the k-th largest key ---- */
    const int k = a.top_k > 0 && a.top_k < V ? a.top_k : V;
    if (tid == 0) {
        s.prefix = 0;
        s.mask = 0;
        s.remaining = k;
        s.n_gt = 0;
        s.n_eq = 0;
        s.overflow = 0;
    }
    __syncthreads();
    if (k > MAXK) {
        if (tid == 0) a.tokens[blockIdx.x] = -2;
        return;
    }
    int n_valid_total = 0;
    for (int shift = 24; shift >= 0; shift -= 8) {
        for (int i = tid; i < 256; i += SAMPLE_THREADS) s.hist[i] = 0;
        __syncthreads();
        const unsigned prefix = s.prefix, mask = s.mask;
        for (int id = tid; id < V; id += SAMPLE_THREADS) {
            float l = value_of(a, s, id);
            if (!is_candidate(l)) continue;
            unsigned key = key_of(l);
            if ((key & mask) == prefix) atomicAdd(&s.hist[(key >> shift) & 0xff], 1);
        }
        __syncthreads();
        if (tid == 0) {
            int total = 0;
            for (int d = 0; d < 256; d++) total += s.hist[d];
            if (shift == 24) s.n = total; /* every candidate */
            int need = s.remaining < total ? s.remaining : total, above = 0, digit = 0;
            for (int d = 255; d >= 0; d--) {
                if (above + s.hist[d] >= need) {
                    digit = d;
                    break;
                }
                above += s.hist[d];
            }
            s.remaining = need - above;
            s.prefix |= (unsigned)digit << shift;
            s.mask |= 0xffu << shift;
        }
        __syncthreads();
    }
    n_valid_total = s.n;
    if (n_valid_total == 0) {
        if (tid == 0) a.tokens[blockIdx.x] = -1;
        return;
    }
    /* Collect: every key above the cut, and the keys at the cut (lowest ids win). */
    const unsigned cut = s.prefix;
    for (int id = tid; id < V; id += SAMPLE_THREADS) {
        float l = value_of(a, s, id);
        if (!is_candidate(l)) continue;
        unsigned key = key_of(l);
        if (key > cut) {
            int at = atomicAdd(&s.n_gt, 1);
            if (at < MAXK) {
                s.ids[at] = id;
                s.logits[at] = l;
            }
        } else if (key == cut) {
            int at = atomicAdd(&s.n_eq, 1);
            if (at < MAXK) s.eq_ids[at] = id;
            else s.overflow = 1;
        }
    }
    __syncthreads();
    if (s.overflow) {
        if (tid == 0) a.tokens[blockIdx.x] = -2;
        return;
    }
    const int n_gt = s.n_gt, n_eq = s.n_eq, take_eq = s.remaining < n_eq ? s.remaining : n_eq;
    for (int i = tid; i < n_eq; i += SAMPLE_THREADS) s.order[i] = i;
    sort_indices(s, n_eq, [&](int x, int y) { return s.eq_ids[x] < s.eq_ids[y]; });
    for (int i = tid; i < take_eq; i += SAMPLE_THREADS) {
        int id = s.eq_ids[s.order[i]];
        s.ids[n_gt + i] = id;
        s.logits[n_gt + i] = value_of(a, s, id);
    }
    __syncthreads();
    int n = n_gt + take_eq;
    /* id order: the order every sum of the contract is taken in */
    for (int i = tid; i < n; i += SAMPLE_THREADS) s.order[i] = i;
    sort_indices(s, n, [&](int x, int y) { return s.ids[x] < s.ids[y]; });
    apply_order(s, n);

    /* ---- weights, min-p, top-p, draw ---- */
    __shared__ float max_logit;
    __shared__ double total;
    if (tid == 0) {
        float m = s.logits[0];
        for (int i = 1; i < n; i++)
            if (s.logits[i] > m) m = s.logits[i];
        max_logit = m;
    }
    __syncthreads();
    for (int i = tid; i < n; i += SAMPLE_THREADS)
        s.w[i] = s.logits[i] == max_logit ? 1.0
                                          : exp(((double)s.logits[i] - (double)max_logit) / (double)a.temperature);
    __syncthreads();
    if (tid == 0) {
        double t = 0.0;
        for (int i = 0; i < n; i++) t += s.w[i];
        total = t;
        if (a.min_p > 0.0f) {
            int kept = 0;
            for (int i = 0; i < n; i++)
                if (s.w[i] >= (double)a.min_p) {
                    s.ids[kept] = s.ids[i];
                    s.logits[kept] = s.logits[i];
                    s.w[kept] = s.w[i];
                    kept++;
                }
            s.n = kept;
        } else {
            s.n = n;
        }
    }
    __syncthreads();
    n = s.n;
    if (a.top_p < 1.0f) {
        const double target = (double)a.top_p * total;
        for (int i = tid; i < n; i += SAMPLE_THREADS) s.order[i] = i;
        sort_indices(s, n, [&](int x, int y) {
            return s.w[x] != s.w[y] ? s.w[x] > s.w[y] : s.ids[x] < s.ids[y];
        });
        apply_order(s, n);
        if (tid == 0) {
            double sum = 0.0;
            int kept = 0;
            for (int i = 0; i < n; i++) {
                sum += s.w[i];
                if (sum >= target) {
                    kept = i + 1;
                    break;
                }
            }
            s.n = kept ? kept : n;
        }
        __syncthreads();
        n = s.n;
        for (int i = tid; i < n; i += SAMPLE_THREADS) s.order[i] = i;
        sort_indices(s, n, [&](int x, int y) { return s.ids[x] < s.ids[y]; });
        apply_order(s, n);
    }
    if (tid == 0) {
        double t = 0.0;
        for (int i = 0; i < n; i++) t += s.w[i];
        const double target = (a.u_dev ? a.u_dev[blockIdx.x] : a.u[blockIdx.x]) * t;
        double sum = 0.0;
        int last_positive = 0, chosen = -1;
        for (int i = 0; i < n; i++) {
            sum += s.w[i];
            if (target < sum) {
                chosen = s.ids[i];
                break;
            }
            if (s.w[i] > 0.0) last_positive = i;
        }
        a.tokens[blockIdx.x] = chosen >= 0 ? chosen : s.ids[last_positive];
    }
}

cudaError_t bmc_sample(const bmc_sample_args *a, cudaStream_t stream) {
    if (a->n_recent > MAX_RECENT || a->rows < 1 || (!a->u_dev && a->rows > BMC_MAX_STEP_ROWS) || a->rows > 65535)
        return cudaErrorInvalidValue;
    sample_kernel<<<a->rows, SAMPLE_THREADS, 0, stream>>>(*a);
    return cudaGetLastError();
}
