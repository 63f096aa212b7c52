/* Decode row path (many streams): the causal depthwise conv of one new token
 * per stream, with the SiLU and the conv-state update, after the in_proj
 * GEMM. One thread per (stream, channel); each stream's conv history is
 * found through its state pointer (the states are the host's objects,
 * anywhere in device memory). The arithmetic is the order of the GEMV
 * epilogue (gemv.cu, BMC_EPI_CONV_SILU), so both paths agree in f32.
 * Launched with PDL (pdl): a thread loads its channel's weights and its
 * conv history, then waits for the previous kernel before it reads xz. */
#include "device_util.cuh"
#include "kernels.cuh"

#define CONV_STEP_THREADS 256

__global__ void __launch_bounds__(CONV_STEP_THREADS) conv_step_kernel(const bmc_conv_step_args a) {
    bmc_grid_trigger();
    const int b = blockIdx.y, c = blockIdx.x * CONV_STEP_THREADS + threadIdx.x;
    if (c >= a.di) return;
    /* the channel's weights before the wait (PDL): they do not depend on earlier kernels */
    const int km1 = a.K - 1;
    const float *w = a.conv_w + (size_t)c * a.K;
    float wk[BMC_MAX_CONV - 1];
#pragma unroll
    for (int k = 0; k < BMC_MAX_CONV - 1; k++) wk[k] = k < km1 ? w[k] : 0.0f;
    const float w_new = w[km1], cb = a.conv_b[c];
    /* and the conv history: only this layer's conv writes it, one step ago
     * (an earlier graph launch), and the state pointers were copied in
     * before the step's first kernel */
    float *const sp = a.state_ptrs[b];
    float *hist = sp ? sp + a.conv_offset + (size_t)c * km1 : nullptr;
    float h[BMC_MAX_CONV];
#pragma unroll
    for (int k = 0; k < BMC_MAX_CONV - 1; k++) h[k] = hist && k < km1 ? hist[k] : 0.0f;
    bmc_grid_wait();
    float *x = a.xz + (size_t)b * a.ldxz + c;
    if (!sp) { /* padding row: x_proj reads a zero input */
        *x = 0.0f;
        return;
    }
    float v = *x;
    if (a.lo_rows > 0) { /* the two partial products of in_proj, x and z */
        const size_t lo = (size_t)a.lo_rows * a.ldxz;
        v += x[lo];
        x[a.di] += x[lo + a.di];
    }
    float conv = cb + w_new * v;
#pragma unroll
    for (int k = 0; k < BMC_MAX_CONV - 1; k++)
        if (k < km1) conv += wk[k] * h[k];
#pragma unroll
    for (int k = 0; k + 1 < BMC_MAX_CONV - 1; k++)
        if (k + 1 < km1) hist[k] = h[k + 1];
    if (km1 > 0) hist[km1 - 1] = v;
    *x = bmc_silu(conv);
}

cudaError_t bmc_conv_step(const bmc_conv_step_args *a, cudaStream_t stream, int pdl) {
    if (a->nb <= 0) return cudaSuccess;
    if (a->K < 1 || a->K > BMC_MAX_CONV || a->nb > 65535) return cudaErrorInvalidValue;
    const dim3 grid((a->di + CONV_STEP_THREADS - 1) / CONV_STEP_THREADS, a->nb);
    return bmc_launch(conv_step_kernel, grid, dim3(CONV_STEP_THREADS), 0, stream, pdl, *a);
}
