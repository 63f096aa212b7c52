/* The decode step of a Mamba layer after in_proj and x_proj: dt_proj,
 * softplus, the state update, the C readout, the D skip and the SiLU(z)
 * gate, fused so that each fp32 state entry is read once and written once.
 * Two kernels: the GEMV path's (a few streams: sixteen lanes serve one
 * channel, one lane per state entry, and the dt_proj dot product is split
 * across the same lanes) and the row path's (many streams: one thread per
 * stream and channel, below). Both take the PDL attribute (pdl). */
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
    float w[MAX_DT_PER_LANE];
    const T *wdt = reinterpret_cast<const T *>(a.dt_proj) + (size_t)c * a.R;
#pragma unroll
    for (int i = 0; i < MAX_DT_PER_LANE; i++) {
        int r = n + i * BMC_D_STATE;
        w[i] = r < a.R ? bmc_to_float<T>(wdt[r]) : 0.0f;
    }
    const float A = a.A[(size_t)c * BMC_D_STATE + n], Dc = a.D[c], bias = a.dt_bias[c];
    if (threadIdx.x == 0)
        bmc_prefetch_l2(a.prefetch, a.prefetch_bytes, blockIdx.y * gridDim.x + blockIdx.x, gridDim.x * gridDim.y);
    /* The state entry too: only this layer's scan writes it, one step ago
     * (an earlier graph launch), and the state pointers were copied in
     * before the step's first kernel. */
    float *const sp = a.state_ptrs[b];
    float *const state = sp ? sp + a.ssm_offset + bmc_ssm_index(a.di, c, n) : nullptr;
    float s = sp && live ? *state : 0.0f;
    bmc_grid_wait();

    if (!sp) return;
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
    s = expf(delta * A) * s + delta * u * Bn;
    if (live) *state = s;
    float y = s * Cn;
#pragma unroll
    for (int o = BMC_D_STATE / 2; o > 0; o >>= 1) y += __shfl_xor_sync(0xffffffffu, y, o, BMC_D_STATE);
    if (live && n == 0) a.y[(size_t)b * a.di + c] = (y + Dc * u) * bmc_silu(z);
}

/* The row path: one thread per (stream, channel). A block takes 32
 * channels (one per lane) of SR_STREAMS streams (SR_SPT per warp); each
 * thread holds its channel's 16 state entries of each of its streams as four
 * float4, one from each plane of the device layout (bmc_ssm_index), so each
 * of a warp's state loads and stores is 512 contiguous bytes and the C
 * readout needs no shuffles. The block first puts
 * its channels' dt_proj rows in shared memory (as f32, one row per channel
 * at an odd stride, so the 32 lanes reading one column hit 32 banks): weights
 * only, so under PDL this overlaps the end of x_proj. Then the state loads
 * are issued (they wait on the pointer, then on DRAM), and while they are in
 * flight its streams' dt, B and C (zero-padded to a multiple of 4) come into
 * shared memory. Each thread then forms dt for its streams from there: one
 * weight read serves all SR_SPT streams, and a stream's values are a
 * broadcast float4. Two streams per thread also share the channel's
 * constants (A is read from shared memory at its use, in planes like the
 * state: 16 fewer registers, 3 blocks of 256 threads per SM).
 *
 * Alignment of the float4 state accesses: every state is its own cudaMalloc
 * (backend.cu, state_alloc: 256-byte aligned); the layer's ssm state starts
 * bmi_state_ssm_offset = mi * di * (K - 1 + N) + di * (K - 1) floats in,
 * a multiple of 4 because di % 8 == 0 (check_supported refuses other
 * models), and bmc_scan_step checks ssm_offset % 4; plane q of channel c
 * is (q di + c) 4 floats further. A (in the weight pool, 256-byte aligned
 * placements) likewise. */
#define SR_WARPS 8
#define SR_THREADS (SR_WARPS * 32)
#define SR_SPT 2
#define SR_STREAMS (SR_WARPS * SR_SPT)
#define SR_CHANNELS 32
#define SR_W_VECS (SR_CHANNELS * MAX_DT_PER_LANE * BMC_D_STATE / 8 / SR_THREADS) /* 16-byte dt_proj vectors per thread */

/* Shared memory: A [4][SR_CHANNELS] float4 (plane q: entries 4q..4q+3 of
 * each channel, the state's plane layout, so a warp's read of one plane is
 * contiguous), w_dt [SR_CHANNELS][Rp + 1], then rows [SR_STREAMS][Rp + 2N]
 * (dt zero-padded to Rp, B, C), all 16-byte aligned. */
#define SR_A_FLOATS (SR_CHANNELS * BMC_D_STATE)
__host__ __device__ static inline int sr_r_padded(int R) { return (R + 3) & ~3; }
__host__ __device__ static inline int sr_w_floats(int R) { return (SR_CHANNELS * (sr_r_padded(R) + 1) + 3) & ~3; }
static size_t sr_smem_bytes(int R) {
    return (size_t)(SR_A_FLOATS + sr_w_floats(R) + SR_STREAMS * (sr_r_padded(R) + 2 * BMC_D_STATE)) * sizeof(float);
}

template <typename T>
__global__ void __launch_bounds__(SR_THREADS, 3) scan_rows_kernel(const bmc_step_scan_args a) {
    bmc_grid_trigger();
    extern __shared__ float4 sr_smem[];
    const int R = a.R, Rp = sr_r_padded(R), ldw = Rp + 1, ldx = Rp + 2 * BMC_D_STATE;
    float4 *const A_planes = sr_smem;
    float *const w_dt = reinterpret_cast<float *>(sr_smem) + SR_A_FLOATS;
    float *const rows_x = w_dt + sr_w_floats(R);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int c0 = blockIdx.x * SR_CHANNELS, c = c0 + lane, b_first = blockIdx.y * SR_STREAMS + warp * SR_SPT;
    const bool live = c < a.di;
    const int cr = live ? c : c0; /* a channel whose constants exist */

    const float Dc = a.D[cr], bias = a.dt_bias[cr];

    /* The block's dt_proj rows into shared memory, in one round trip to L2:
     * they lie back to back (n_ch R elements, n_ch % 8 == 0), so they come
     * as 16-byte vectors, all loaded before any is converted and stored.
     * Weights only, so under PDL this runs while x_proj drains. */
    const int n_ch = min(SR_CHANNELS, a.di - c0), n_vec = n_ch * R / 8;
    if (threadIdx.x < SR_CHANNELS * 4) { /* A in planes: read from L1 at use, its 64-byte rows cost 4x the wavefronts */
        const int ch = threadIdx.x >> 2, q = threadIdx.x & 3;
        A_planes[q * SR_CHANNELS + ch] =
            ch < n_ch ? __ldg(reinterpret_cast<const float4 *>(a.A + (size_t)(c0 + ch) * BMC_D_STATE) + q)
                      : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    }
    const uint4 *wv = reinterpret_cast<const uint4 *>(reinterpret_cast<const T *>(a.dt_proj) + (size_t)c0 * R);
    uint4 raw[SR_W_VECS];
#pragma unroll
    for (int i = 0; i < SR_W_VECS; i++) {
        const int v = threadIdx.x + i * SR_THREADS;
        raw[i] = v < n_vec ? __ldg(wv + v) : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int i = 0; i < SR_W_VECS; i++) {
        const int v = threadIdx.x + i * SR_THREADS;
        if (v >= n_vec) break;
        float f[8];
        bmc_unpack<T>::run(raw[i], f);
        int ch = v * 8 / R, r = v * 8 - ch * R;
#pragma unroll
        for (int t = 0; t < 8; t++) {
            w_dt[ch * ldw + r] = f[t];
            if (++r == R) {
                r = 0;
                ch++;
            }
        }
    }
    if (Rp != R || n_ch < SR_CHANNELS) /* the dot products run over Rp columns of all 32 rows */
        for (int i = threadIdx.x; i < SR_CHANNELS * Rp; i += SR_THREADS) {
            const int ch = i / Rp, r = i - ch * Rp;
            if (ch >= n_ch || r >= R) w_dt[ch * ldw + r] = 0.0f;
        }
    /* The ssm state before the wait too: no kernel of the step before this
     * one writes it (only this layer's scan does, one step ago: an earlier
     * graph launch, complete), and the state pointers were copied in before
     * the step's first kernel. So the state's DRAM reads overlap x_proj. */
    float *sp[SR_SPT];
    float4 s[SR_SPT][4];
#pragma unroll
    for (int j = 0; j < SR_SPT; j++) {
        const int b = b_first + j;
        sp[j] = b < a.nb ? a.state_ptrs[b] : nullptr;
#pragma unroll
        for (int q = 0; q < 4; q++) s[j][q] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        if (sp[j] && live) {
            /* streamed: the next read of this state is a step away, after every other layer's traffic */
            const float4 *st = reinterpret_cast<const float4 *>(sp[j] + a.ssm_offset + bmc_ssm_index(a.di, c, 0));
#pragma unroll
            for (int q = 0; q < 4; q++) s[j][q] = __ldcs(st + (size_t)q * a.di);
        }
    }
    bmc_grid_wait(); /* xz and xdbl come from earlier kernels */

    float u[SR_SPT], z[SR_SPT];
#pragma unroll
    for (int j = 0; j < SR_SPT; j++) {
        const int b = b_first + j;
        u[j] = z[j] = 0.0f;
        if (sp[j] && live) {
            u[j] = a.xz[(size_t)b * 2 * a.di + c];
            z[j] = a.xz[(size_t)b * 2 * a.di + a.di + c];
        }
    }
    /* the streams' dt, B and C by cp.async (4 bytes each: an xdbl row need
     * not be 16-byte aligned), zeros for the padding */
    for (int i = warp; i < SR_STREAMS; i += SR_WARPS) {
        const int b = blockIdx.y * SR_STREAMS + i;
        const float *xd = a.xdbl + (size_t)min(b, a.nb - 1) * a.ldxdbl;
        for (int col = lane; col < ldx; col += 32) {
            const bool valid = b < a.nb && (col < R || col >= Rp);
            bmc_cp_async4(rows_x + i * ldx + col, xd + (!valid ? 0 : col < R ? col : R + col - Rp), valid);
        }
    }
    bmc_cp_async_wait_all();
    __syncthreads();

    const float *wc = w_dt + lane * ldw;
    const float *xr = rows_x + warp * SR_SPT * ldx;
    float dt[SR_SPT];
#pragma unroll
    for (int j = 0; j < SR_SPT; j++) dt[j] = 0.0f;
#pragma unroll 4
    for (int r = 0; r < Rp; r += 4) {
        const float w0 = wc[r], w1 = wc[r + 1], w2 = wc[r + 2], w3 = wc[r + 3];
#pragma unroll
        for (int j = 0; j < SR_SPT; j++) {
            const float4 x = *reinterpret_cast<const float4 *>(xr + j * ldx + r);
            dt[j] = fmaf(w0, x.x, dt[j]);
            dt[j] = fmaf(w1, x.y, dt[j]);
            dt[j] = fmaf(w2, x.z, dt[j]);
            dt[j] = fmaf(w3, x.w, dt[j]);
        }
    }

    T *y16 = reinterpret_cast<T *>(a.y16);
#pragma unroll
    for (int j = 0; j < SR_SPT; j++) {
        const int b = b_first + j;
        if (b >= a.nb || !live) continue;
        float out = 0.0f; /* padding rows (no state): y = 0 */
        if (sp[j]) {
            const float delta = bmc_softplus(dt[j] + bias), du = delta * u[j];
            const float4 *Bq = reinterpret_cast<const float4 *>(xr + j * ldx + Rp), *Cq = Bq + BMC_D_STATE / 4;
            float y = 0.0f;
#pragma unroll
            for (int q = 0; q < 4; q++) {
                const float4 Bv = Bq[q], Cv = Cq[q], Av = A_planes[q * SR_CHANNELS + lane];
                float4 &e = s[j][q];
                e.x = expf(delta * Av.x) * e.x + du * Bv.x;
                e.y = expf(delta * Av.y) * e.y + du * Bv.y;
                e.z = expf(delta * Av.z) * e.z + du * Bv.z;
                e.w = expf(delta * Av.w) * e.w + du * Bv.w;
                y = fmaf(e.x, Cv.x, y);
                y = fmaf(e.y, Cv.y, y);
                y = fmaf(e.z, Cv.z, y);
                y = fmaf(e.w, Cv.w, y);
            }
            float4 *st = reinterpret_cast<float4 *>(sp[j] + a.ssm_offset + bmc_ssm_index(a.di, c, 0));
#pragma unroll
            for (int q = 0; q < 4; q++) __stcs(st + (size_t)q * a.di, s[j][q]);
            out = (y + Dc * u[j]) * bmc_silu(z[j]);
        }
        const T hi = bmc_from_float<T>(out);
        y16[(size_t)b * a.di + c] = hi;
        if (a.y_lo_rows > 0) y16[(size_t)(b + a.y_lo_rows) * a.di + c] = bmc_from_float<T>(out - bmc_to_float<T>(hi));
    }
}

template <typename T> static cudaError_t scan_rows_launch(const bmc_step_scan_args *a, cudaStream_t stream, int pdl) {
    const size_t smem = sr_smem_bytes(a->R);
    if (smem > 48 * 1024) { /* dt_rank above ~200 */
        const cudaError_t e =
            cudaFuncSetAttribute(scan_rows_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
        if (e != cudaSuccess) return e;
    }
    const dim3 grid((a->di + SR_CHANNELS - 1) / SR_CHANNELS, (a->nb + SR_STREAMS - 1) / SR_STREAMS);
    return bmc_launch(scan_rows_kernel<T>, grid, dim3(SR_THREADS), smem, stream, pdl, *a);
}

cudaError_t bmc_scan_step(const bmc_step_scan_args *a, int wtype, cudaStream_t stream, int pdl) {
    if (a->nb <= 0) return cudaSuccess;
    if (a->N != BMC_D_STATE || a->R > MAX_DT_PER_LANE * BMC_D_STATE) return cudaErrorInvalidValue;
    if (a->y16) {
        if (a->y || a->act_type != wtype || a->di % 8 || a->ssm_offset % 4 ||
            (a->nb + SR_STREAMS - 1) / SR_STREAMS > 65535)
            return cudaErrorInvalidValue;
        if (wtype == BMC_F16) return scan_rows_launch<__half>(a, stream, pdl);
        return scan_rows_launch<__nv_bfloat16>(a, stream, pdl);
    }
    if (!a->y || a->nb > 65535) return cudaErrorInvalidValue;
    const dim3 grid((a->di + CHANNELS_PER_BLOCK - 1) / CHANNELS_PER_BLOCK, a->nb);
    if (wtype == BMC_F16) return bmc_launch(scan_step_kernel<__half>, grid, dim3(STEP_THREADS), 0, stream, pdl, *a);
    return bmc_launch(scan_step_kernel<__nv_bfloat16>, grid, dim3(STEP_THREADS), 0, stream, pdl, *a);
}
