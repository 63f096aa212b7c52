/* MoE: gather the normalised rows in expert order so each expert's GEMM
 * reads one contiguous block of rows (prefill; the decode row path's wgmma
 * expert GEMM, whose TMA copies cannot gather: there it is launched with
 * the GEMM's pdl and waits before it reads the order or the rows). */
#include "device_util.cuh"
#include "kernels.cuh"

__global__ void gather_rows_kernel(const uint16_t *src, const int *order, int d, int plane_rows, uint16_t *dst) {
    bmc_grid_trigger();
    bmc_grid_wait(); /* PDL: src and order come from the norm before */
    const int i = blockIdx.x;
    const size_t plane = (size_t)blockIdx.y * plane_rows;
    const uint16_t *s = src + (plane + order[i]) * d;
    uint16_t *o = dst + (plane + i) * d;
    if (d % 8 == 0) {
        for (int k = threadIdx.x; k < d / 8; k += blockDim.x)
            reinterpret_cast<uint4 *>(o)[k] = reinterpret_cast<const uint4 *>(s)[k];
    } else {
        for (int k = threadIdx.x; k < d; k += blockDim.x) o[k] = s[k];
    }
}

cudaError_t bmc_gather_rows(const void *src, const int *order, int rows, int d, void *dst, cudaStream_t stream) {
    return bmc_gather_rows_planes(src, order, rows, d, 1, 0, dst, stream, 0);
}

cudaError_t bmc_gather_rows_planes(const void *src, const int *order, int rows, int d, int planes, int plane_rows,
                                   void *dst, cudaStream_t stream, int pdl) {
    if (rows <= 0 || planes <= 0) return cudaSuccess;
    return bmc_launch(gather_rows_kernel, dim3((unsigned)rows, (unsigned)planes), dim3(128), 0, stream, pdl,
                      (const uint16_t *)src, order, d, plane_rows, (uint16_t *)dst);
}
