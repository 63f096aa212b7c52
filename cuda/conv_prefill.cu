/* Prefill: the causal depthwise convolution + SiLU over T tokens of one
 * stream. One thread per channel walks a run of tokens with the K-wide
 * window in registers; the history before the prompt comes from the conv
 * state. Writes u in f32 (for the scan) and 16-bit (for the x_proj GEMM). */
#include "device_util.cuh"
#include "kernels.cuh"

#define CONV_THREADS 128
#define CONV_TOKENS_PER_THREAD 16

/* K is a template parameter: with a run-time width the window arrays went
 * to local memory. */
template <typename A, int K>
__global__ void __launch_bounds__(CONV_THREADS)
    conv_prefill_kernel(const float *xz, int ldxz, int T, int di, const float *conv_state, const float *w,
                        const float *b, float *u, A *u16) {
    const int ch = blockIdx.x * CONV_THREADS + threadIdx.x;
    if (ch >= di) return;
    const int t0 = blockIdx.y * CONV_TOKENS_PER_THREAD;
    const int t1 = t0 + CONV_TOKENS_PER_THREAD < T ? t0 + CONV_TOKENS_PER_THREAD : T;
    float wk[K], win[K];
#pragma unroll
    for (int k = 0; k < K; k++) {
        wk[k] = w[(size_t)ch * K + k];
        win[k] = 0.0f;
        if (k < K - 1) { /* x at time t0 - (K-1) + k */
            int tt = t0 - (K - 1) + k;
            win[k] = tt >= 0 ? xz[(size_t)tt * ldxz + ch] : conv_state[(size_t)ch * (K - 1) + (K - 1) + tt];
        }
    }
    const float bias = b[ch];
    /* all of the run's inputs in flight at once */
    float xs[CONV_TOKENS_PER_THREAD];
#pragma unroll
    for (int j = 0; j < CONV_TOKENS_PER_THREAD; j++) xs[j] = t0 + j < t1 ? xz[(size_t)(t0 + j) * ldxz + ch] : 0.0f;
#pragma unroll
    for (int j = 0; j < CONV_TOKENS_PER_THREAD; j++) {
        const int t = t0 + j;
        if (t >= t1) break;
        const float x = xs[j];
        float acc = bias + wk[K - 1] * x;
#pragma unroll
        for (int k = 0; k < K - 1; k++) acc += wk[k] * win[k];
#pragma unroll
        for (int k = 0; k + 2 < K; k++) win[k] = win[k + 1];
        if (K >= 2) win[K - 2 >= 0 ? K - 2 : 0] = x;
        const float v = bmc_silu(acc);
        u[(size_t)t * di + ch] = v;
        u16[(size_t)t * di + ch] = bmc_from_float<A>(v);
    }
}

cudaError_t bmc_conv_prefill(const float *xz, int ldxz, int T, int di, int K, const float *conv_state, const float *w,
                             const float *b, float *u, void *u16, int act_type, cudaStream_t stream) {
    if (T <= 0) return cudaSuccess;
    if (K < 1 || K > BMC_MAX_CONV) return cudaErrorInvalidValue;
    dim3 grid((di + CONV_THREADS - 1) / CONV_THREADS, (T + CONV_TOKENS_PER_THREAD - 1) / CONV_TOKENS_PER_THREAD);
#define CONV_CASE(KK)                                                                                              \
    case KK:                                                                                                       \
        if (act_type == BMC_F16)                                                                                   \
            conv_prefill_kernel<__half, KK>                                                                        \
                <<<grid, CONV_THREADS, 0, stream>>>(xz, ldxz, T, di, conv_state, w, b, u, (__half *)u16);          \
        else                                                                                                       \
            conv_prefill_kernel<__nv_bfloat16, KK>                                                                 \
                <<<grid, CONV_THREADS, 0, stream>>>(xz, ldxz, T, di, conv_state, w, b, u, (__nv_bfloat16 *)u16);   \
        break;
    switch (K) {
        CONV_CASE(1)
        CONV_CASE(2)
        CONV_CASE(3)
        CONV_CASE(4)
        CONV_CASE(5)
        CONV_CASE(6)
        CONV_CASE(7)
        CONV_CASE(8)
    default: return cudaErrorInvalidValue;
    }
#undef CONV_CASE
    return cudaGetLastError();
}
