/* The decode row path leaves two GEMM outputs unfinished: out_proj's as the
 * partial products of its input's hi and lo halves, and an MoE layer's fc2
 * as split-K slices at the rows' sorted positions. Either a separate launch
 * finishes them in memory (fold_rows.cu, moe_scatter.cu) or the next norm
 * does while it reads them (add_rmsnorm.cu). Both go through these helpers,
 * so both compute the same f32 value with the same operations in the same
 * order: the fused and the separate path agree bit for bit. */
#ifndef BM_CUDA_ROW_OUTPUTS_CUH
#define BM_CUDA_ROW_OUTPUTS_CUH

#include <cuda_runtime.h>
#include <stddef.h>

/* The part of an expert's output for one token row t that does not depend
 * on the column. */
struct bmc_expert_row {
    const float *src;  /* slice 0 at the row's sorted position */
    const float *bias; /* the row's expert's bias, or NULL */
    float gate;
};

/* Token row t, at sorted position pos of slices of d-float rows. gate NULL:
 * 1; bias NULL: none; expert_of NULL: expert 0. */
__device__ __forceinline__ bmc_expert_row bmc_expert_row_at(const float *slices, int pos, int t, const float *gate,
                                                            const float *bias, const int *expert_of, int d) {
    bmc_expert_row x;
    x.src = slices + (size_t)pos * d;
    x.gate = gate ? gate[t] : 1.0f;
    x.bias = bias ? bias + (size_t)(expert_of ? expert_of[t] : 0) * d : nullptr;
    return x;
}

/* Both compute columns k0 + j * step (j < N) of one row; those at or past d
 * come out 0. All of a call's loads are issued before their values are
 * used (the helpers serve latency-bound kernels). */

/* out_proj's output: the hi half's product y[k], the lo half's y[lo_stride
 * + k], and the bias, summed in that order. A missing bias still adds
 * 0.0f, as the stored fold always did (it turns a -0 sum into +0). */
template <int N>
__device__ __forceinline__ void bmc_folded(const float *y, size_t lo_stride, const float *bias, int k0, int step, int d,
                                           float (&out)[N]) {
    float lo[N], b[N];
#pragma unroll
    for (int j = 0; j < N; j++) {
        const int k = k0 + j * step;
        out[j] = k < d ? y[k] : 0.0f;
        lo[j] = k < d ? y[lo_stride + k] : 0.0f;
        b[j] = bias && k < d ? bias[k] : 0.0f;
    }
#pragma unroll
    for (int j = 0; j < N; j++) out[j] = out[j] + lo[j] + b[j];
}

/* Row t once its expert output is scattered into h: gate * (the slices
 * summed in slice order + the bias), plus h_t[k] when add (a parallel
 * layer's Mamba branch). The product is rounded on its own (__fmul_rn): a
 * plain multiply could be contracted into an FMA with the add here or with
 * the residual add of a norm that inlines this, and then the fused and the
 * stored path would round differently. */
template <int N>
__device__ __forceinline__ void bmc_scattered(const bmc_expert_row &x, int slices, long long slice_stride, int add,
                                              const float *h_t, int k0, int step, int d, float (&out)[N]) {
    float sum[N], b[N], h[N];
#pragma unroll
    for (int j = 0; j < N; j++) {
        const int k = k0 + j * step;
        sum[j] = k < d ? x.src[k] : 0.0f;
        b[j] = x.bias && k < d ? x.bias[k] : 0.0f;
        h[j] = add && k < d ? h_t[k] : 0.0f;
    }
    for (int p = 1; p < slices; p++) {
        const float *slice = x.src + (size_t)p * slice_stride;
#pragma unroll
        for (int j = 0; j < N; j++) {
            const int k = k0 + j * step;
            if (k < d) sum[j] += slice[k];
        }
    }
#pragma unroll
    for (int j = 0; j < N; j++) {
        const float v = __fmul_rn(x.gate, sum[j] + b[j]);
        out[j] = add ? h[j] + v : v;
    }
}

#endif
