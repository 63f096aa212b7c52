/* Bias add after a cuBLASLt GEMM (only checkpoints with add_bias_linear). */
#include "device_util.cuh"
#include "kernels.cuh"

__global__ void add_bias_kernel(float *y, int rows, int n, int ldy, const float *bias) {
    bmc_grid_trigger();
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)rows * n) return;
    int t = (int)(i / n), j = (int)(i % n);
    const float b = bias[j]; /* a weight: before the wait (PDL); y is the GEMM's output */
    bmc_grid_wait();
    y[(size_t)t * ldy + j] += b;
}

cudaError_t bmc_add_bias(float *y, int rows, int n, int ldy, const float *bias, cudaStream_t stream, int pdl) {
    size_t total = (size_t)rows * n;
    if (!bias || total == 0) return cudaSuccess;
    return bmc_launch(add_bias_kernel, dim3((unsigned)((total + 255) / 256)), dim3(256), 0, stream, pdl, y, rows, n,
                      ldy, bias);
}
