/* Decode row path: the GEMMs there multiply an f32 activation as two 16-bit
 * halves (hi = bf16(x), lo = bf16(x - hi)) stacked as separate rows, so the
 * weights are read once and the products keep f32-grade inputs. This adds
 * the lo rows' partial products onto the hi rows, with the bias if any. */
#include "kernels.cuh"

__global__ void fold_rows_kernel(float *y, int rows, int n, int ldy, int lo_rows, const float *bias) {
    const int r = blockIdx.y;
    for (int j = blockIdx.x * blockDim.x + threadIdx.x; j < n; j += gridDim.x * blockDim.x) {
        float *p = y + (size_t)r * ldy + j;
        *p = *p + p[(size_t)lo_rows * ldy] + (bias ? bias[j] : 0.0f);
    }
}

cudaError_t bmc_fold_rows(float *y, int rows, int n, int ldy, int lo_rows, const float *bias, cudaStream_t stream) {
    if (rows <= 0 || n <= 0) return cudaSuccess;
    if (rows > 65535) return cudaErrorInvalidValue;
    const dim3 grid((unsigned)((n + 255) / 256 < 8 ? (n + 255) / 256 : 8), (unsigned)rows);
    fold_rows_kernel<<<grid, 256, 0, stream>>>(y, rows, n, ldy, lo_rows, bias);
    return cudaGetLastError();
}
