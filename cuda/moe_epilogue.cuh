/* The epilogue of one output of the grouped expert GEMM (bmc_moe_gemm),
 * shared by its kernels (moe_gemm.cu, moe_gemm_sm90.cu): the gated
 * activation of fc1, the activation alone, fc2's gate-scaled scatter to the
 * token rows or its partial sums over a K slice. Header only. */
#ifndef BM_CUDA_MOE_EPILOGUE_CUH
#define BM_CUDA_MOE_EPILOGUE_CUH

#include "device_util.cuh"
#include "kernels.cuh"

/* Sorted row gr, output feature n (f for the gated pair), f32 product(s) v
 * (x and g), the expert's bias (or NULL), PARTIAL's K slice. */
template <typename T> __device__ __forceinline__ void mg_store16(const bmc_moe_gemm_args &a, int gr, int n, float v) {
    T *y16 = reinterpret_cast<T *>(a.y);
    const T hi = bmc_from_float<T>(v);
    y16[(size_t)gr * a.ldy + n] = hi;
    if (a.y_lo_rows > 0) y16[(size_t)(gr + a.y_lo_rows) * a.ldy + n] = bmc_from_float<T>(v - bmc_to_float<T>(hi));
}
__device__ __forceinline__ float mg_act(const bmc_moe_gemm_args &a, float x) {
    return a.act == 1 ? bmc_silu(x) : bmc_gelu(x);
}
template <typename T>
__device__ __forceinline__ void mg_finish_gated(const bmc_moe_gemm_args &a, const float *bias, int gr, int f, float x,
                                                float g) {
    if (bias) {
        x += bias[f];
        g += bias[a.N + f];
    }
    mg_store16<T>(a, gr, f, mg_act(a, x) * g);
}
template <typename T>
__device__ __forceinline__ void mg_finish(const bmc_moe_gemm_args &a, const float *bias, int slice, int gr, int n,
                                          float v) {
    if (a.mode == BMC_MOE_PARTIAL) {
        reinterpret_cast<float *>(a.y)[((size_t)slice * a.max_rows + gr) * a.N + n] = v;
    } else if (a.mode == BMC_MOE_ACT) {
        mg_store16<T>(a, gr, n, mg_act(a, v + (bias ? bias[n] : 0.0f)));
    } else { /* SCATTER */
        const int t = a.y_rows ? a.y_rows[gr] : gr;
        const float s = (a.gates ? a.gates[t] : 1.0f) * (v + (bias ? bias[n] : 0.0f));
        float *y = reinterpret_cast<float *>(a.y) + (size_t)t * a.ldy + n;
        *y = a.add ? *y + s : s;
    }
}

#endif
