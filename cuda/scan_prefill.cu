/* Prefill: the selective scan over T tokens, parallel over channels and over
 * chunks of time. The recurrence s_t = exp(delta_t A) s_{t-1} + delta_t u_t B_t
 * is linear in s, so a chunk run from a zero state gives h_c, and the true
 * state entering chunk c+1 is exp(A * sum(delta in c)) S_c + h_c. Three
 * passes:
 *   1. every (chunk, channel) runs its chunk from zero: h_c and sum(delta);
 *   2. every (channel, state entry) walks the chunks: the state entering each
 *      chunk (stored over h_c), the final state, and the new conv state;
 *   3. every (chunk, channel) reruns its chunk from its true entry state and
 *      writes y = (C . s + D u) * SiLU(z).
 * One thread holds a channel's 16 state entries in registers; B and C of the
 * chunk's tokens are shared by the block. */
#include "device_util.cuh"
#include "kernels.cuh"

#define SCAN_THREADS 128
#define SCAN_MAX_CHUNK 256
#define SCAN_GROUP 8
#define NS BMC_D_STATE

#define LOG2E 1.4426950408889634f

/* 2^x on the special-function unit (what __expf does after its multiply). */
__device__ __forceinline__ float exp2f_fast(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

static int chunk_length(int T) {
    int target = (T + 31) / 32;               /* about 32 chunks: enough blocks to fill the GPU */
    int len = (target + 15) / 16 * 16;
    return len < 16 ? 16 : len > SCAN_MAX_CHUNK ? SCAN_MAX_CHUNK : len;
}

size_t bmc_scan_prefill_scratch_floats(int T, int di, int n_state) {
    /* enough for any prompt of at most T tokens: chunks are at least 16
     * tokens long, and never more than about 32 once prompts pass 512 */
    int chunks = (T + 15) / 16;
    if (chunks > 64) chunks = 64;
    return (size_t)chunks * (size_t)di * (size_t)(n_state + 1);
}

/* Loads rows [t0, t1) of one NS-wide slice of xdbl into tile[t][n]. */
__device__ __forceinline__ void load_tile(float (*tile)[NS], const float *xdbl, int ld, int col, int t0, int t1) {
    for (int i = threadIdx.x; i < (t1 - t0) * NS; i += SCAN_THREADS)
        tile[i / NS][i % NS] = xdbl[(size_t)(t0 + i / NS) * ld + col + i % NS];
}

__global__ void __launch_bounds__(SCAN_THREADS) scan_chunk_kernel(const bmc_scan_args a, int len, float *h_out,
                                                                    float *dsum_out) {
    __shared__ float Bt[SCAN_MAX_CHUNK][NS];
    const int ch = blockIdx.x * SCAN_THREADS + threadIdx.x, c = blockIdx.y;
    const int t0 = c * len, t1 = t0 + len < a.T ? t0 + len : a.T;
    load_tile(Bt, a.xdbl, a.ldxdbl, a.R, t0, t1);
    __syncthreads();
    if (ch >= a.di) return;
    float A[NS], s[NS];
#pragma unroll
    for (int n = 0; n < NS; n++) {
        A[n] = a.A[(size_t)ch * NS + n] * LOG2E; /* exp(d A) = 2^(d A log2 e): one multiply saved per entry */
        s[n] = 0.0f;
    }
    const float bias = a.dt_bias[ch];
    float dsum = 0.0f;
    /* Loads for a group of tokens are issued together, so the recurrence
     * waits for memory once per group instead of once per token. */
    for (int tg = t0; tg < t1; tg += SCAN_GROUP) {
        float dr[SCAN_GROUP], uu[SCAN_GROUP];
#pragma unroll
        for (int j = 0; j < SCAN_GROUP; j++) {
            const int t = tg + j < t1 ? tg + j : t1 - 1;
            dr[j] = a.delta_raw[(size_t)t * a.di + ch];
            uu[j] = a.u[(size_t)t * a.di + ch];
        }
#pragma unroll
        for (int j = 0; j < SCAN_GROUP; j++) {
            if (tg + j >= t1) break;
            const float delta = bmc_softplus(dr[j] + bias);
            const float du = delta * uu[j];
            dsum += delta;
#pragma unroll
            for (int n = 0; n < NS; n++) s[n] = exp2f_fast(delta * A[n]) * s[n] + du * Bt[tg + j - t0][n];
        }
    }
    float4 *h4 = reinterpret_cast<float4 *>(h_out + ((size_t)c * a.di + ch) * NS);
#pragma unroll
    for (int i = 0; i < NS / 4; i++) h4[i] = make_float4(s[4 * i], s[4 * i + 1], s[4 * i + 2], s[4 * i + 3]);
    dsum_out[(size_t)c * a.di + ch] = dsum;
}

__global__ void scan_carry_kernel(const bmc_scan_args a, int len, int chunks, float *h_io, const float *dsum) {
    const int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= a.di * NS) return;
    const int ch = idx / NS, n = idx % NS;
    const float A = a.A[idx];
    float *const state = a.ssm_state + bmc_ssm_index(a.di, ch, n);
    float S = *state;
    for (int c = 0; c < chunks; c++) {
        const size_t at = ((size_t)c * a.di + ch) * NS + n;
        const float h = h_io[at];
        h_io[at] = S; /* now the state entering chunk c */
        S = __expf(A * dsum[(size_t)c * a.di + ch]) * S + h;
    }
    *state = S;
    if (n == 0 && a.K > 1) {
        /* The new conv state: the last K-1 inputs, reaching into the old
         * state when the prompt is shorter than that. Read all before writing. */
        const int km1 = a.K - 1;
        float *hist = a.conv_state + (size_t)ch * km1;
        float next[BMC_MAX_CONV];
#pragma unroll
        for (int k = 0; k < BMC_MAX_CONV; k++) {
            if (k >= km1) break;
            const int t = a.T - km1 + k;
            next[k] = t >= 0 ? a.xz[(size_t)t * a.ldxz + ch] : hist[a.T + k];
        }
#pragma unroll
        for (int k = 0; k < BMC_MAX_CONV; k++) {
            if (k >= km1) break;
            hist[k] = next[k];
        }
    }
}

template <typename Y>
__global__ void __launch_bounds__(SCAN_THREADS) scan_output_kernel(const bmc_scan_args a, int len, const float *s_in) {
    __shared__ float Bt[SCAN_MAX_CHUNK][NS];
    __shared__ float Ct[SCAN_MAX_CHUNK][NS];
    const int ch = blockIdx.x * SCAN_THREADS + threadIdx.x, c = blockIdx.y;
    const int t0 = c * len, t1 = t0 + len < a.T ? t0 + len : a.T;
    load_tile(Bt, a.xdbl, a.ldxdbl, a.R, t0, t1);
    load_tile(Ct, a.xdbl, a.ldxdbl, a.R + NS, t0, t1);
    __syncthreads();
    if (ch >= a.di) return;
    float A[NS], s[NS];
    const float4 *s4 = reinterpret_cast<const float4 *>(s_in + ((size_t)c * a.di + ch) * NS);
#pragma unroll
    for (int i = 0; i < NS / 4; i++) {
        float4 v = s4[i];
        s[4 * i] = v.x;
        s[4 * i + 1] = v.y;
        s[4 * i + 2] = v.z;
        s[4 * i + 3] = v.w;
    }
#pragma unroll
    for (int n = 0; n < NS; n++) A[n] = a.A[(size_t)ch * NS + n] * LOG2E;
    const float bias = a.dt_bias[ch], Dc = a.D[ch];
    Y *y16 = reinterpret_cast<Y *>(a.y16);
    for (int tg = t0; tg < t1; tg += SCAN_GROUP) {
        float dr[SCAN_GROUP], uu[SCAN_GROUP], zz[SCAN_GROUP];
#pragma unroll
        for (int j = 0; j < SCAN_GROUP; j++) {
            const int t = tg + j < t1 ? tg + j : t1 - 1;
            dr[j] = a.delta_raw[(size_t)t * a.di + ch];
            uu[j] = a.u[(size_t)t * a.di + ch];
            zz[j] = a.xz[(size_t)t * a.ldxz + a.di + ch];
        }
#pragma unroll
        for (int j = 0; j < SCAN_GROUP; j++) {
            const int t = tg + j;
            if (t >= t1) break;
            const float delta = bmc_softplus(dr[j] + bias);
            const float du = delta * uu[j];
            float y = 0.0f;
#pragma unroll
            for (int n = 0; n < NS; n++) {
                s[n] = exp2f_fast(delta * A[n]) * s[n] + du * Bt[t - t0][n];
                y += s[n] * Ct[t - t0][n];
            }
            y16[(size_t)t * a.di + ch] = bmc_from_float<Y>((y + Dc * uu[j]) * bmc_silu(zz[j]));
        }
    }
}

cudaError_t bmc_scan_prefill(const bmc_scan_args *a, cudaStream_t stream) {
    if (a->T <= 0) return cudaSuccess;
    if (a->N != NS || a->K > BMC_MAX_CONV) return cudaErrorInvalidValue;
    const int len = chunk_length(a->T), chunks = (a->T + len - 1) / len;
    float *h = a->chunk_scratch, *dsum = a->chunk_scratch + (size_t)chunks * a->di * NS;
    dim3 grid((a->di + SCAN_THREADS - 1) / SCAN_THREADS, chunks);
    scan_chunk_kernel<<<grid, SCAN_THREADS, 0, stream>>>(*a, len, h, dsum);
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) return e;
    scan_carry_kernel<<<(a->di * NS + 255) / 256, 256, 0, stream>>>(*a, len, chunks, h, dsum);
    if ((e = cudaGetLastError()) != cudaSuccess) return e;
    if (a->act_type == BMC_F16)
        scan_output_kernel<__half><<<grid, SCAN_THREADS, 0, stream>>>(*a, len, h);
    else
        scan_output_kernel<__nv_bfloat16><<<grid, SCAN_THREADS, 0, stream>>>(*a, len, h);
    return cudaGetLastError();
}
