/* Decode row path: the GEMMs there multiply an f32 activation as two 16-bit
 * halves (hi = bf16(x), lo = bf16(x - hi)) stacked as separate rows, so the
 * weights are read once and the products keep f32-grade inputs. This adds
 * the lo rows' partial products onto the hi rows, with the bias if any. */
#include "device_util.cuh"
#include "kernels.cuh"
#include "row_outputs.cuh"

/* Columns a thread folds at once: their loads overlap. */
#define FOLD_COLS 4

__global__ void fold_rows_kernel(float *y, int rows, int n, int ldy, int lo_rows, const float *bias) {
    bmc_grid_trigger();
    bmc_grid_wait(); /* PDL: y is the GEMM's output */
    float *row = y + (size_t)blockIdx.y * ldy;
    const int step = gridDim.x * blockDim.x;
    for (int k0 = blockIdx.x * blockDim.x + threadIdx.x; k0 < n; k0 += FOLD_COLS * step) {
        float out[FOLD_COLS];
        bmc_folded(row, (size_t)lo_rows * ldy, bias, k0, step, n, out);
#pragma unroll
        for (int j = 0; j < FOLD_COLS; j++)
            if (k0 + j * step < n) row[k0 + j * step] = out[j];
    }
}

cudaError_t bmc_fold_rows(float *y, int rows, int n, int ldy, int lo_rows, const float *bias, cudaStream_t stream,
                          int pdl) {
    if (rows <= 0 || n <= 0) return cudaSuccess;
    if (rows > 65535) return cudaErrorInvalidValue;
    const dim3 grid((unsigned)((n + 255) / 256 < 8 ? (n + 255) / 256 : 8), (unsigned)rows);
    return bmc_launch(fold_rows_kernel, grid, dim3(256), 0, stream, pdl, y, rows, n, ldy, lo_rows, bias);
}
