/* Prefill MoE: the expert MLP's gate between fc1 and fc2: GELU (exact erf)
 * or SiLU of the first half times the second half (swiglu), in 16-bit like
 * the GEMMs around it, with fc1's bias when the checkpoint has one. */
#include "device_util.cuh"
#include "kernels.cuh"

template <typename A>
__global__ void gated_act_kernel(const A *a, int rows, int F, int swiglu, int act, const float *bias, const int *order,
                                 const int *expert_of, A *m) {
    const size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (size_t)rows * F) return;
    const int i = (int)(idx / F), f = (int)(idx % F);
    const int g = swiglu ? 2 : 1;
    const A *row = a + (size_t)i * g * F;
    float x = bmc_to_float<A>(row[f]);
    float gate_in = swiglu ? bmc_to_float<A>(row[F + f]) : 1.0f;
    if (bias) {
        const int e = order ? expert_of[order[i]] : 0;
        const float *b = bias + (size_t)e * g * F;
        x += b[f];
        if (swiglu) gate_in += b[F + f];
    }
    const float h = act == 1 ? bmc_silu(x) : bmc_gelu(x);
    m[idx] = bmc_from_float<A>(swiglu ? h * gate_in : h);
}

cudaError_t bmc_gated_act(const void *a, int rows, int F, int swiglu, int act, const float *bias, const int *order,
                          const int *expert_of, void *m, int act_type, cudaStream_t stream) {
    const size_t total = (size_t)rows * F;
    if (total == 0) return cudaSuccess;
    const unsigned blocks = (unsigned)((total + 255) / 256);
    if (act_type == BMC_F16)
        gated_act_kernel<__half><<<blocks, 256, 0, stream>>>((const __half *)a, rows, F, swiglu, act, bias, order,
                                                             expert_of, (__half *)m);
    else
        gated_act_kernel<__nv_bfloat16><<<blocks, 256, 0, stream>>>((const __nv_bfloat16 *)a, rows, F, swiglu, act,
                                                                    bias, order, expert_of, (__nv_bfloat16 *)m);
    return cudaGetLastError();
}
