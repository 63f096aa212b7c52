/* Prefill MoE: gather the normalised rows in expert order so each expert's
 * GEMM reads one contiguous block of rows. */
#include "kernels.cuh"

__global__ void gather_rows_kernel(const uint16_t *src, const int *order, int d, uint16_t *dst) {
    const int i = blockIdx.x;
    const uint16_t *s = src + (size_t)order[i] * d;
    uint16_t *o = dst + (size_t)i * d;
    if (d % 8 == 0) {
        for (int k = threadIdx.x; k < d / 8; k += blockDim.x)
            reinterpret_cast<uint4 *>(o)[k] = reinterpret_cast<const uint4 *>(s)[k];
    } else {
        for (int k = threadIdx.x; k < d; k += blockDim.x) o[k] = s[k];
    }
}

cudaError_t bmc_gather_rows(const void *src, const int *order, int rows, int d, void *dst, cudaStream_t stream) {
    if (rows <= 0) return cudaSuccess;
    gather_rows_kernel<<<rows, 128, 0, stream>>>((const uint16_t *)src, order, d, (uint16_t *)dst);
    return cudaGetLastError();
}
