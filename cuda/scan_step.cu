/* The decode step of a Mamba layer after in_proj and x_proj: dt_proj,
 * softplus, the state update, the C readout, the D skip and the SiLU(z)
 * gate, fused so that each fp32 state entry is read once and written once.
 * Sixteen lanes serve one channel, one lane per state entry; the dt_proj
 * dot product is split across the same lanes. */
#include "device_util.cuh"
#include "kernels.cuh"

#define STEP_THREADS 256
#define CHANNELS_PER_BLOCK (STEP_THREADS / BMC_D_STATE)
#define MAX_DT_PER_LANE 16 /* dt_rank up to 256 */

template <typename T>
__global__ void __launch_bounds__(STEP_THREADS) scan_step_kernel(const bmc_step_scan_args a) {
    bmc_grid_trigger();
    const int n = threadIdx.x & (BMC_D_STATE - 1);
    const int ch = blockIdx.x * CHANNELS_PER_BLOCK + threadIdx.x / BMC_D_STATE;
    const int b = blockIdx.y;
    const bool live = ch < a.di;
    const int c = live ? ch : 0;
    /* Weights first: they do not depend on the kernels before this one. */
    const T *wdt = reinterpret_cast<const T *>(a.dt_proj) + (size_t)c * a.R;
    float w[MAX_DT_PER_LANE];
#pragma unroll
    for (int i = 0; i < MAX_DT_PER_LANE; i++) {
        int r = n + i * BMC_D_STATE;
        w[i] = r < a.R ? bmc_to_float<T>(wdt[r]) : 0.0f;
    }
    const float A = a.A[(size_t)c * BMC_D_STATE + n], Dc = a.D[c], bias = a.dt_bias[c];
    if (threadIdx.x == 0)
        bmc_prefetch_l2(a.prefetch, a.prefetch_bytes, blockIdx.y * gridDim.x + blockIdx.x, gridDim.x * gridDim.y);
    bmc_grid_wait();

    const float *xd = a.xdbl + (size_t)b * a.ldxdbl;
    float dt = 0.0f;
#pragma unroll
    for (int i = 0; i < MAX_DT_PER_LANE; i++) {
        int r = n + i * BMC_D_STATE;
        if (r < a.R) dt += w[i] * xd[r];
    }
#pragma unroll
    for (int o = BMC_D_STATE / 2; o > 0; o >>= 1) dt += __shfl_xor_sync(0xffffffffu, dt, o, BMC_D_STATE);
    const float delta = bmc_softplus(dt + bias);
    const float u = a.xz[(size_t)b * 2 * a.di + c], z = a.xz[(size_t)b * 2 * a.di + a.di + c];
    const float Bn = xd[a.R + n], Cn = xd[a.R + BMC_D_STATE + n];
    float *state = a.state_ptrs[b] + a.ssm_offset + (size_t)c * BMC_D_STATE + n;
    float s = live ? *state : 0.0f;
    s = expf(delta * A) * s + delta * u * Bn;
    if (live) *state = s;
    float y = s * Cn;
#pragma unroll
    for (int o = BMC_D_STATE / 2; o > 0; o >>= 1) y += __shfl_xor_sync(0xffffffffu, y, o, BMC_D_STATE);
    if (live && n == 0) a.y[(size_t)b * a.di + c] = (y + Dc * u) * bmc_silu(z);
}

cudaError_t bmc_scan_step(const bmc_step_scan_args *a, int wtype, cudaStream_t stream, int pdl) {
    if (a->nb <= 0) return cudaSuccess;
    if (a->N != BMC_D_STATE || a->R > MAX_DT_PER_LANE * BMC_D_STATE) return cudaErrorInvalidValue;
    cudaLaunchAttribute attr;
    attr.id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr.val.programmaticStreamSerializationAllowed = 1;
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = dim3((a->di + CHANNELS_PER_BLOCK - 1) / CHANNELS_PER_BLOCK, a->nb);
    cfg.blockDim = dim3(STEP_THREADS);
    cfg.stream = stream;
    cfg.attrs = &attr;
    cfg.numAttrs = pdl ? 1 : 0;
    if (wtype == BMC_F16) return cudaLaunchKernelEx(&cfg, scan_step_kernel<__half>, *a);
    return cudaLaunchKernelEx(&cfg, scan_step_kernel<__nv_bfloat16>, *a);
}
