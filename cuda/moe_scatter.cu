/* Prefill MoE: the expert outputs, in expert order, back to their tokens,
 * scaled by each token's routing gate (and added to the Mamba branch's
 * output in a parallel layer). The decode row path's fc2 slices take the
 * same way (row_outputs.cuh) where no norm follows to finish them. */
#include "device_util.cuh"
#include "kernels.cuh"
#include "row_outputs.cuh"

/* Columns a thread sums at once: their slices' loads overlap. */
#define SCATTER_COLS 4

__global__ void scatter_rows_kernel(const float *y, int parts, long long part_stride, const int *n_dev,
                                    const int *order, const float *gate, const float *bias, const int *expert_of, int d,
                                    int add, float *h) {
    bmc_grid_trigger();
    bmc_grid_wait(); /* PDL: the live count, the routing and the slices come from earlier kernels */
    const int i = blockIdx.x;
    if (n_dev && i >= *n_dev) return;
    const int t = order ? order[i] : i;
    const bmc_expert_row x = bmc_expert_row_at(y, i, t, gate, bias, expert_of, d);
    float *dst = h + (size_t)t * d;
    for (int k0 = threadIdx.x; k0 < d; k0 += SCATTER_COLS * blockDim.x) {
        float out[SCATTER_COLS];
        bmc_scattered(x, parts, part_stride, add, dst, k0, blockDim.x, d, out);
#pragma unroll
        for (int j = 0; j < SCATTER_COLS; j++)
            if (k0 + j * blockDim.x < d) dst[k0 + j * blockDim.x] = out[j];
    }
}

cudaError_t bmc_scatter_rows(const float *y, const int *order, const float *gate, const float *bias,
                             const int *expert_of, int rows, int d, int add, float *h, cudaStream_t stream) {
    if (rows <= 0) return cudaSuccess;
    return bmc_launch(scatter_rows_kernel, dim3(rows), dim3(256), 0, stream, 0, y, 1, 0LL, (const int *)NULL, order,
                      gate, bias, expert_of, d, add, h);
}

cudaError_t bmc_scatter_parts(const float *y, int parts, long long part_stride, const int *n_dev, const int *order,
                              const float *gate, const float *bias, const int *expert_of, int rows, int d, int add,
                              float *h, cudaStream_t stream, int pdl) {
    if (rows <= 0) return cudaSuccess;
    if (parts < 1) return cudaErrorInvalidValue;
    return bmc_launch(scatter_rows_kernel, dim3(rows), dim3(256), 0, stream, pdl, y, parts, part_stride, n_dev, order,
                      gate, bias, expert_of, d, add, h);
}
