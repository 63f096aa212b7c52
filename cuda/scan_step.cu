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

/* The row path (delta from a GEMM, 16-bit y halves): each block takes
 * SCAN_ROWS streams in turn for its 16 channels, so a step of many streams is
 * a few thousand blocks rather than one per (stream, 16 channels); each
 * group of rows loads all its inputs before computing, to keep several
 * state reads in flight. */
#define SCAN_ROWS 8
#define SCAN_GROUP 4
template <typename T>
__global__ void __launch_bounds__(STEP_THREADS) scan_rows_kernel(const bmc_step_scan_args a) {
    const int n = threadIdx.x & (BMC_D_STATE - 1);
    const int ch = blockIdx.x * CHANNELS_PER_BLOCK + threadIdx.x / BMC_D_STATE;
    if (ch >= a.di) return; /* a whole 16-lane group: the shuffles stay within live lanes */
    const int c = ch;
    const float A = a.A[(size_t)c * BMC_D_STATE + n], Dc = a.D[c], bias = a.dt_bias[c];
    T *y16 = reinterpret_cast<T *>(a.y16);
    const int b_end = min(a.nb, (int)(blockIdx.y + 1) * SCAN_ROWS);
    for (int b0 = blockIdx.y * SCAN_ROWS; b0 < b_end; b0 += SCAN_GROUP) {
        float *sp[SCAN_GROUP];
        float s[SCAN_GROUP], dt[SCAN_GROUP], u[SCAN_GROUP], z[SCAN_GROUP], Bn[SCAN_GROUP], Cn[SCAN_GROUP];
#pragma unroll
        for (int j = 0; j < SCAN_GROUP; j++) {
            const int b = b0 + j;
            sp[j] = b < b_end ? a.state_ptrs[b] : nullptr;
            if (sp[j]) {
                const float *xd = a.xdbl + (size_t)b * a.ldxdbl;
                s[j] = sp[j][a.ssm_offset + (size_t)c * BMC_D_STATE + n];
                dt[j] = a.delta_raw[(size_t)b * a.di + c];
                u[j] = a.xz[(size_t)b * 2 * a.di + c];
                z[j] = a.xz[(size_t)b * 2 * a.di + a.di + c];
                Bn[j] = xd[a.R + n];
                Cn[j] = xd[a.R + BMC_D_STATE + n];
            }
        }
#pragma unroll
        for (int j = 0; j < SCAN_GROUP; j++) {
            const int b = b0 + j;
            if (b >= b_end) break;
            if (!sp[j]) { /* padding row of a batch bucket: no state, y = 0 */
                if (n == 0) {
                    y16[(size_t)b * a.di + c] = bmc_from_float<T>(0.0f);
                    if (a.y_lo_rows > 0) y16[(size_t)(b + a.y_lo_rows) * a.di + c] = bmc_from_float<T>(0.0f);
                }
                continue;
            }
            const float delta = bmc_softplus(dt[j] + bias);
            const float st = expf(delta * A) * s[j] + delta * u[j] * Bn[j];
            sp[j][a.ssm_offset + (size_t)c * BMC_D_STATE + n] = st;
            float y = st * Cn[j];
#pragma unroll
            for (int o = BMC_D_STATE / 2; o > 0; o >>= 1) y += __shfl_xor_sync(0xffffffffu, y, o, BMC_D_STATE);
            if (n == 0) {
                const float out = (y + Dc * u[j]) * bmc_silu(z[j]);
                const T hi = bmc_from_float<T>(out);
                y16[(size_t)b * a.di + c] = hi;
                if (a.y_lo_rows > 0)
                    y16[(size_t)(b + a.y_lo_rows) * a.di + c] = bmc_from_float<T>(out - bmc_to_float<T>(hi));
            }
        }
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
