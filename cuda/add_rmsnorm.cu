/* Prefill: residual add fused with the RMSNorm(s) that read it. One block
 * per token row; the row stays in registers between the sum of squares and
 * the scaling. */
#include "device_util.cuh"
#include "kernels.cuh"

#define NORM_THREADS 256
#define NORM_MAX_PER_THREAD 32 /* d up to 8192 */

template <typename A>
__global__ void __launch_bounds__(NORM_THREADS) add_rmsnorm_kernel(bmc_norm_args a) {
    __shared__ float scratch[33];
    const int r = blockIdx.x, d = a.d;
    float *res = a.res + (size_t)r * d;
    const float *h = a.h + (size_t)r * d;
    float v[NORM_MAX_PER_THREAD];
    float ss = 0.0f;
#pragma unroll
    for (int i = 0; i < NORM_MAX_PER_THREAD; i++) {
        int k = threadIdx.x + i * NORM_THREADS;
        v[i] = 0.0f;
        if (k < d) {
            float x = a.add ? res[k] + h[k] : res[k];
            if (a.add) res[k] = x;
            v[i] = x;
            ss += x * x;
        }
    }
    ss = bmc_block_sum(ss, scratch);
    const float scale = rsqrtf(ss / (float)d + a.eps);
#pragma unroll
    for (int i = 0; i < NORM_MAX_PER_THREAD; i++) {
        int k = threadIdx.x + i * NORM_THREADS;
        if (k >= d) continue;
        size_t o = (size_t)r * d + k;
        const size_t lo = (size_t)a.lo_rows * d;
        if (a.w_a) {
            float y = v[i] * scale * a.w_a[k];
            if (a.out_a_f32) a.out_a_f32[o] = y;
            if (a.out_a_16) {
                const A hi = bmc_from_float<A>(y);
                ((A *)a.out_a_16)[o] = hi;
                if (lo) ((A *)a.out_a_16)[o + lo] = bmc_from_float<A>(y - bmc_to_float<A>(hi));
            }
        }
        if (a.w_b) {
            float y = v[i] * scale * a.w_b[k];
            if (a.out_b_f32) a.out_b_f32[o] = y;
            if (a.out_b_16) {
                const A hi = bmc_from_float<A>(y);
                ((A *)a.out_b_16)[o] = hi;
                if (lo) ((A *)a.out_b_16)[o + lo] = bmc_from_float<A>(y - bmc_to_float<A>(hi));
            }
        }
    }
}

cudaError_t bmc_add_rmsnorm(const bmc_norm_args *a, cudaStream_t stream) {
    if (a->rows <= 0) return cudaSuccess;
    if (a->d > NORM_THREADS * NORM_MAX_PER_THREAD) return cudaErrorInvalidValue;
    if (a->act_type == BMC_F16)
        add_rmsnorm_kernel<__half><<<a->rows, NORM_THREADS, 0, stream>>>(*a);
    else
        add_rmsnorm_kernel<__nv_bfloat16><<<a->rows, NORM_THREADS, 0, stream>>>(*a);
    return cudaGetLastError();
}
