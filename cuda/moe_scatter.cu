/* Prefill MoE: the expert outputs, in expert order, back to their tokens,
 * scaled by each token's routing gate (and added to the Mamba branch's
 * output in a parallel layer). */
#include "kernels.cuh"

__global__ void scatter_rows_kernel(const float *y, int parts, long long part_stride, const int *n_dev,
                                    const int *order, const float *gate, const float *bias, const int *expert_of, int d,
                                    int add, float *h) {
    const int i = blockIdx.x;
    if (n_dev && i >= *n_dev) return;
    const int t = order ? order[i] : i;
    const float g = gate ? gate[t] : 1.0f;
    const float *b = bias ? bias + (size_t)(expert_of ? expert_of[t] : 0) * d : nullptr;
    const float *src = y + (size_t)i * d;
    float *dst = h + (size_t)t * d;
    for (int k = threadIdx.x; k < d; k += blockDim.x) {
        float sum = src[k];
        for (int p = 1; p < parts; p++) sum += src[(size_t)p * part_stride + k]; /* split-K partials, in order */
        float v = g * (sum + (b ? b[k] : 0.0f));
        dst[k] = add ? dst[k] + v : v;
    }
}

cudaError_t bmc_scatter_rows(const float *y, const int *order, const float *gate, const float *bias,
                             const int *expert_of, int rows, int d, int add, float *h, cudaStream_t stream) {
    if (rows <= 0) return cudaSuccess;
    scatter_rows_kernel<<<rows, 256, 0, stream>>>(y, 1, 0, NULL, order, gate, bias, expert_of, d, add, h);
    return cudaGetLastError();
}

cudaError_t bmc_scatter_parts(const float *y, int parts, long long part_stride, const int *n_dev, const int *order,
                              const float *gate, const float *bias, const int *expert_of, int rows, int d, int add,
                              float *h, cudaStream_t stream) {
    if (rows <= 0) return cudaSuccess;
    if (parts < 1) return cudaErrorInvalidValue;
    scatter_rows_kernel<<<rows, 256, 0, stream>>>(y, parts, part_stride, n_dev, order, gate, bias, expert_of, d, add, h);
    return cudaGetLastError();
}
