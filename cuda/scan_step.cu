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
    const bool rows = a.delta_raw != nullptr; /* the row path: delta from a GEMM */
    /* Weights first: they do not depend on the kernels before this one. */
    float w[MAX_DT_PER_LANE];
    if (!rows) {
        const T *wdt = reinterpret_cast<const T *>(a.dt_proj) + (size_t)c * a.R;
#pragma unroll
        for (int i = 0; i < MAX_DT_PER_LANE; i++) {
            int r = n + i * BMC_D_STATE;
            w[i] = r < a.R ? bmc_to_float<T>(wdt[r]) : 0.0f;
        }
    }
    const float A = a.A[(size_t)c * BMC_D_STATE + n], Dc = a.D[c], bias = a.dt_bias[c];
    if (threadIdx.x == 0)
        bmc_prefetch_l2(a.prefetch, a.prefetch_bytes, blockIdx.y * gridDim.x + blockIdx.x, gridDim.x * gridDim.y);
    bmc_grid_wait();

    float *const sp = a.state_ptrs[b];
    if (!sp) { /* padding row of a batch bucket: no state, y = 0 */
        if (live && n == 0 && a.y16) {
            reinterpret_cast<T *>(a.y16)[(size_t)b * a.di + c] = bmc_from_float<T>(0.0f);
            if (a.y_lo_rows > 0)
                reinterpret_cast<T *>(a.y16)[(size_t)(b + a.y_lo_rows) * a.di + c] = bmc_from_float<T>(0.0f);
        }
        return;
    }
    const float *xd = a.xdbl + (size_t)b * a.ldxdbl;
    float dt = 0.0f;
    if (rows) {
        dt = a.delta_raw[(size_t)b * a.di + c];
    } else {
#pragma unroll
        for (int i = 0; i < MAX_DT_PER_LANE; i++) {
            int r = n + i * BMC_D_STATE;
            if (r < a.R) dt += w[i] * xd[r];
        }
#pragma unroll
        for (int o = BMC_D_STATE / 2; o > 0; o >>= 1) dt += __shfl_xor_sync(0xffffffffu, dt, o, BMC_D_STATE);
    }
    const float delta = bmc_softplus(dt + bias);
    const float u = a.xz[(size_t)b * 2 * a.di + c], z = a.xz[(size_t)b * 2 * a.di + a.di + c];
    const float Bn = xd[a.R + n], Cn = xd[a.R + BMC_D_STATE + n];
    float *state = sp + a.ssm_offset + (size_t)c * BMC_D_STATE + n;
    float s = live ? *state : 0.0f;
    s = expf(delta * A) * s + delta * u * Bn;
    if (live) *state = s;
    float y = s * Cn;
#pragma unroll
    for (int o = BMC_D_STATE / 2; o > 0; o >>= 1) y += __shfl_xor_sync(0xffffffffu, y, o, BMC_D_STATE);
    if (live && n == 0) {
        const float out = (y + Dc * u) * bmc_silu(z);
        if (a.y16) {
            const T hi = bmc_from_float<T>(out);
            reinterpret_cast<T *>(a.y16)[(size_t)b * a.di + c] = hi;
            if (a.y_lo_rows > 0)
                reinterpret_cast<T *>(a.y16)[(size_t)(b + a.y_lo_rows) * a.di + c] =
                    bmc_from_float<T>(out - bmc_to_float<T>(hi));
        } else {
            a.y[(size_t)b * a.di + c] = out;
        }
    }
}

/* The row path (delta from a GEMM, 16-bit y halves). A block takes 16
 * channels (16 lanes each, one per state entry) for SCAN_ROWS streams. The
 * per-stream scalars of a channel (softplus of delta, u, SiLU(z), the state
 * pointer) are computed once, lane j for stream j of a group of 16, and
 * passed around by shuffles; the state entries of 4 streams are loaded
 * before any is updated, to keep several reads in flight. */
#define SCAN_ROWS 16
#define SCAN_GROUP 4
template <typename T>
__global__ void __launch_bounds__(STEP_THREADS) scan_rows_kernel(const bmc_step_scan_args a) {
    const int n = threadIdx.x & (BMC_D_STATE - 1);
    const int c = blockIdx.x * CHANNELS_PER_BLOCK + threadIdx.x / BMC_D_STATE;
    if (c >= a.di) return; /* whole warps: di is a multiple of 8, a warp holds 2 channels */
    const float A = a.A[(size_t)c * BMC_D_STATE + n], Dc = a.D[c], bias = a.dt_bias[c];
    T *y16 = reinterpret_cast<T *>(a.y16);
    const int b0 = blockIdx.y * SCAN_ROWS, b_end = min(a.nb, b0 + SCAN_ROWS);
    /* lane n: stream b0 + n's scalars for this channel */
    const int bn = b0 + n;
    float *sp_n = bn < b_end ? a.state_ptrs[bn] : nullptr;
    float delta_n = 0.0f, u_n = 0.0f, gz_n = 0.0f;
    if (sp_n) {
        delta_n = bmc_softplus(a.delta_raw[(size_t)bn * a.di + c] + bias);
        u_n = a.xz[(size_t)bn * 2 * a.di + c];
        gz_n = bmc_silu(a.xz[(size_t)bn * 2 * a.di + a.di + c]);
    }
    float y_n = 0.0f;
    const int rows = b_end - b0;
    for (int j0 = 0; j0 < rows; j0 += SCAN_GROUP) {
        float *sp[SCAN_GROUP];
        float s[SCAN_GROUP], Bn[SCAN_GROUP], Cn[SCAN_GROUP];
#pragma unroll
        for (int k = 0; k < SCAN_GROUP; k++) {
            const int j = j0 + k;
            sp[k] = (float *)__shfl_sync(0xffffffffu, (unsigned long long)sp_n, j & 15, BMC_D_STATE);
            if (j >= rows) sp[k] = nullptr;
            if (sp[k]) {
                const float *xd = a.xdbl + (size_t)(b0 + j) * a.ldxdbl;
                s[k] = sp[k][a.ssm_offset + (size_t)c * BMC_D_STATE + n];
                Bn[k] = xd[a.R + n];
                Cn[k] = xd[a.R + BMC_D_STATE + n];
            }
        }
#pragma unroll
        for (int k = 0; k < SCAN_GROUP; k++) {
            const int j = j0 + k;
            const float delta = __shfl_sync(0xffffffffu, delta_n, j & 15, BMC_D_STATE);
            const float u = __shfl_sync(0xffffffffu, u_n, j & 15, BMC_D_STATE);
            if (!sp[k]) continue; /* the same for the whole warp: both channels see the same streams */
            const float st = expf(delta * A) * s[k] + delta * u * Bn[k];
            sp[k][a.ssm_offset + (size_t)c * BMC_D_STATE + n] = st;
            float y = st * Cn[k];
#pragma unroll
            for (int o = BMC_D_STATE / 2; o > 0; o >>= 1) y += __shfl_xor_sync(0xffffffffu, y, o, BMC_D_STATE);
            if (n == j) y_n = y;
        }
    }
    if (bn < b_end) { /* lane n writes stream bn's output; padding rows (no state) get y = 0 */
        const float out = sp_n ? (y_n + Dc * u_n) * gz_n : 0.0f;
        const T hi = bmc_from_float<T>(out);
        y16[(size_t)bn * a.di + c] = hi;
        if (a.y_lo_rows > 0) y16[(size_t)(bn + a.y_lo_rows) * a.di + c] = bmc_from_float<T>(out - bmc_to_float<T>(hi));
    }
}

cudaError_t bmc_scan_step(const bmc_step_scan_args *a, int wtype, cudaStream_t stream, int pdl) {
    if (a->delta_raw && a->y16 && a->act_type == wtype && a->N == BMC_D_STATE) {
        const dim3 grid((a->di + CHANNELS_PER_BLOCK - 1) / CHANNELS_PER_BLOCK, (a->nb + SCAN_ROWS - 1) / SCAN_ROWS);
        if (wtype == BMC_F16) scan_rows_kernel<__half><<<grid, STEP_THREADS, 0, stream>>>(*a);
        else scan_rows_kernel<__nv_bfloat16><<<grid, STEP_THREADS, 0, stream>>>(*a);
        return cudaGetLastError();
    }
    if (a->nb <= 0) return cudaSuccess;
    if (a->N != BMC_D_STATE || a->R > MAX_DT_PER_LANE * BMC_D_STATE) return cudaErrorInvalidValue;
    cudaLaunchAttribute attr;
    attr.id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr.val.programmaticStreamSerializationAllowed = 1;
    cudaLaunchConfig_t cfg = {};
    if (a->nb > 65535 || (a->y16 && a->act_type != wtype)) return cudaErrorInvalidValue;
    cfg.gridDim = dim3((a->di + CHANNELS_PER_BLOCK - 1) / CHANNELS_PER_BLOCK, a->nb);
    cfg.blockDim = dim3(STEP_THREADS);
    cfg.stream = stream;
    cfg.attrs = &attr;
    cfg.numAttrs = pdl ? 1 : 0;
    if (wtype == BMC_F16) return cudaLaunchKernelEx(&cfg, scan_step_kernel<__half>, *a);
    return cudaLaunchKernelEx(&cfg, scan_step_kernel<__nv_bfloat16>, *a);
}
