/* Embedding gather: the first hidden vector of each row, and an empty
 * residual stream (SPEC.md: the first layer's residual is its input alone;
 * starting from zero lets every layer use the same add). */
#include "device_util.cuh"
#include "kernels.cuh"

template <typename T>
__global__ void embed_kernel(const int32_t *tokens, const T *E, int d, float *h, float *res_zero) {
    bmc_grid_trigger();
    bmc_grid_wait();
    const int r = blockIdx.x;
    const T *row = E + (size_t)tokens[r] * (size_t)d;
    for (int k = threadIdx.x; k < d; k += blockDim.x) {
        h[(size_t)r * d + k] = bmc_to_float<T>(row[k]);
        if (res_zero) res_zero[(size_t)r * d + k] = 0.0f;
    }
}

template <typename T>
static cudaError_t launch(const int32_t *tokens, int rows, const void *E, int d, float *h, float *res_zero,
                          cudaStream_t stream, int pdl) {
    return bmc_launch(embed_kernel<T>, dim3(rows), dim3(256), 0, stream, pdl, tokens, (const T *)E, d, h, res_zero);
}

cudaError_t bmc_embed(const int32_t *tokens, int rows, const void *E, int wtype, int d, float *h, float *res_zero,
                      cudaStream_t stream, int pdl) {
    if (rows <= 0) return cudaSuccess;
    return wtype == BMC_F16 ? launch<__half>(tokens, rows, E, d, h, res_zero, stream, pdl)
                            : launch<__nv_bfloat16>(tokens, rows, E, d, h, res_zero, stream, pdl);
}
