/* The final LayerNorm of the rows whose logits are wanted: x = res + h (the
 * last block's output joins the residual here), then LayerNorm with bias,
 * written in the 16-bit type the LM head GEMM reads. Prefill and the row
 * path's head (pdl there: each block waits before it reads res and h). */
#include "device_util.cuh"
#include "kernels.cuh"

#define LN_THREADS 256
#define LN_MAX_PER_THREAD 32
/* The bound a launch compiles for where d allows: unrolled over fewer
 * columns, the kernel is a third the length (as add_rmsnorm.cu's norms). */
#define LN_PER_THREAD_SMALL 8

template <typename A, int PER>
__global__ void __launch_bounds__(LN_THREADS) add_layernorm_kernel(const float *res, const float *h, int r0, int d,
                                                                   const float *w, const float *b, float eps, A *out) {
    __shared__ float scratch[33];
    bmc_grid_trigger();
    bmc_grid_wait(); /* PDL: res and h come from the last layer */
    const int i = blockIdx.x;
    const float *rr = res + (size_t)(r0 + i) * d, *hh = h + (size_t)(r0 + i) * d;
    float v[PER];
    float sum = 0.0f;
#pragma unroll
    for (int j = 0; j < PER; j++) {
        int k = threadIdx.x + j * LN_THREADS;
        v[j] = k < d ? rr[k] + hh[k] : 0.0f;
        sum += v[j];
    }
    const float mean = bmc_block_sum(sum, scratch) / (float)d;
    float var = 0.0f;
#pragma unroll
    for (int j = 0; j < PER; j++) {
        int k = threadIdx.x + j * LN_THREADS;
        if (k < d) var += (v[j] - mean) * (v[j] - mean);
    }
    const float rstd = rsqrtf(bmc_block_sum(var, scratch) / (float)d + eps);
#pragma unroll
    for (int j = 0; j < PER; j++) {
        int k = threadIdx.x + j * LN_THREADS;
        if (k < d) out[(size_t)i * d + k] = bmc_from_float<A>((v[j] - mean) * rstd * w[k] + b[k]);
    }
}

template <typename A>
static cudaError_t launch(const float *res, const float *h, int r0, int rows, int d, const float *w, const float *b,
                         float eps, void *out, cudaStream_t stream, int pdl) {
    void (*kernel)(const float *, const float *, int, int, const float *, const float *, float, A *) =
        d <= LN_THREADS * LN_PER_THREAD_SMALL ? add_layernorm_kernel<A, LN_PER_THREAD_SMALL>
                                              : add_layernorm_kernel<A, LN_MAX_PER_THREAD>;
    return bmc_launch(kernel, dim3(rows), dim3(LN_THREADS), 0, stream, pdl, res, h, r0, d, w, b, eps, (A *)out);
}

cudaError_t bmc_add_layernorm(const float *res, const float *h, int r0, int rows, int d, const float *w,
                              const float *b, float eps, void *out, int act_type, cudaStream_t stream, int pdl) {
    if (rows <= 0) return cudaSuccess;
    if (d > LN_THREADS * LN_MAX_PER_THREAD) return cudaErrorInvalidValue;
    return act_type == BMC_F16 ? launch<__half>(res, h, r0, rows, d, w, b, eps, out, stream, pdl)
                               : launch<__nv_bfloat16>(res, h, r0, rows, d, w, b, eps, out, stream, pdl);
}
