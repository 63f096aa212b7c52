/* The final LayerNorm of the rows whose logits are wanted: x = res + h (the
 * last block's output joins the residual here), then LayerNorm with bias,
 * written in the 16-bit type the LM head GEMM reads. Prefill and the row
 * path's head (pdl there: each block waits before it reads res and h). */
#include "device_util.cuh"
#include "kernels.cuh"

#define LN_THREADS 256
#define LN_MAX_PER_THREAD 32

template <typename A>
__global__ void __launch_bounds__(LN_THREADS) add_layernorm_kernel(const float *res, const float *h, int r0, int d,
                                                                   const float *w, const float *b, float eps, A *out) {
    __shared__ float scratch[33];
    bmc_grid_trigger();
    bmc_grid_wait(); /* PDL: res and h come from the last layer */
    const int i = blockIdx.x;
    const float *rr = res + (size_t)(r0 + i) * d, *hh = h + (size_t)(r0 + i) * d;
    float v[LN_MAX_PER_THREAD];
    float sum = 0.0f;
#pragma unroll
    for (int j = 0; j < LN_MAX_PER_THREAD; j++) {
        int k = threadIdx.x + j * LN_THREADS;
        v[j] = k < d ? rr[k] + hh[k] : 0.0f;
        sum += v[j];
    }
    const float mean = bmc_block_sum(sum, scratch) / (float)d;
    float var = 0.0f;
#pragma unroll
    for (int j = 0; j < LN_MAX_PER_THREAD; j++) {
        int k = threadIdx.x + j * LN_THREADS;
        if (k < d) var += (v[j] - mean) * (v[j] - mean);
    }
    const float rstd = rsqrtf(bmc_block_sum(var, scratch) / (float)d + eps);
#pragma unroll
    for (int j = 0; j < LN_MAX_PER_THREAD; j++) {
        int k = threadIdx.x + j * LN_THREADS;
        if (k < d) out[(size_t)i * d + k] = bmc_from_float<A>((v[j] - mean) * rstd * w[k] + b[k]);
    }
}

cudaError_t bmc_add_layernorm(const float *res, const float *h, int r0, int rows, int d, const float *w,
                              const float *b, float eps, void *out, int act_type, cudaStream_t stream, int pdl) {
    if (rows <= 0) return cudaSuccess;
    if (d > LN_THREADS * LN_MAX_PER_THREAD) return cudaErrorInvalidValue;
    if (act_type == BMC_F16)
        return bmc_launch(add_layernorm_kernel<__half>, dim3(rows), dim3(LN_THREADS), 0, stream, pdl, res, h, r0, d, w,
                          b, eps, (__half *)out);
    return bmc_launch(add_layernorm_kernel<__nv_bfloat16>, dim3(rows), dim3(LN_THREADS), 0, stream, pdl, res, h, r0, d,
                      w, b, eps, (__nv_bfloat16 *)out);
}
