/* Bias add after a cuBLASLt GEMM (only checkpoints with add_bias_linear). */
#include "kernels.cuh"

__global__ void add_bias_kernel(float *y, int rows, int n, int ldy, const float *bias) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)rows * n) return;
    int t = (int)(i / n), j = (int)(i % n);
    y[(size_t)t * ldy + j] += bias[j];
}

cudaError_t bmc_add_bias(float *y, int rows, int n, int ldy, const float *bias, cudaStream_t stream) {
    size_t total = (size_t)rows * n;
    if (!bias || total == 0) return cudaSuccess;
    add_bias_kernel<<<(unsigned)((total + 255) / 256), 256, 0, stream>>>(y, rows, n, ldy, bias);
    return cudaGetLastError();
}
