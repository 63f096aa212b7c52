/* Decode row path: the MoE projections as one grouped GEMM over the batch
 * rows sorted by expert, the expert boundaries read from the device (no host
 * round trip, so the whole step stays one CUDA graph).
 *
 * Tiles: MG_TM rows of one expert x TN output features, K in steps of MG_TK,
 * MG_STAGES-deep cp.async pipeline (weights with .cg: they pass through L2,
 * not L1), tensor cores through WMMA (16-bit operands, f32 accumulation),
 * warps of 32 x 32. blockIdx.x enumerates the row tiles of all experts in
 * expert order (consecutive blocks share the same weight tile, which then
 * comes from L2), blockIdx.y the output tiles. The accumulators go through
 * shared memory to a fused epilogue: the gated activation of fc1 (a tile
 * holds output features f and N + f together) or the gate-scaled scatter of
 * fc2 back to the token rows.
 *
 * Every kernel here starts by waiting for the previous one (bmc_grid_wait:
 * a no-op unless the row path launches it with PDL, a->pdl): which expert
 * and rows a block takes is the routing's output, so nothing useful can
 * come before. */
#include <mma.h>
#include <stdlib.h>

#include "device_util.cuh"
#include "kernels.cuh"
#include "moe_epilogue.cuh"

#define MG_TK 64
#define MG_LDS (MG_TK + 8) /* padded row, in elements: 144 bytes, conflict-free 16-byte accesses */

using namespace nvcuda;

__device__ __forceinline__ void mg_cp_async16(void *smem, const void *gmem, bool valid) {
    const unsigned s = (unsigned)__cvta_generic_to_shared(smem);
    const int size = valid ? 16 : 0; /* 0: the 16 bytes are zero-filled */
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(size) : "memory");
}
__device__ __forceinline__ void mg_cp_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N> __device__ __forceinline__ void mg_cp_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

/* Tile shapes: TM rows (16 for a few rows per expert, 64 for many) by TN
 * output features (128, or 64 for fc2's few features), TN / 16 warps;
 * STAGES deep. */
#define MG_THREADS(TN) ((TN) / 16 * 32)
#define MG_STAGE_ELEMS(TM, TN) ((2 * (TM) + (TN)) * MG_LDS) /* A hi, A lo, W */
#define MG_SMEM(TM, TN, ST)                                                                                            \
    ((size_t)(ST) * MG_STAGE_ELEMS(TM, TN) * 2 > (size_t)(TM) * ((TN) + 4) * 4 ? (size_t)(ST) * MG_STAGE_ELEMS(TM, TN) * 2 \
                                                                             : (size_t)(TM) * ((TN) + 4) * 4)

template <typename T, int TM, int TN, int STAGES>
__global__ void __launch_bounds__(MG_THREADS(TN)) moe_gemm_kernel(const bmc_moe_gemm_args a) {
    constexpr int THREADS = MG_THREADS(TN), WARPS = TN / 16;
    constexpr int WARPS_M = TM >= 32 ? 2 : 1, WARPS_N = WARPS / WARPS_M;
    constexpr int FM = TM / (16 * WARPS_M), FN = TN / (16 * WARPS_N), LDC = TN + 4;
    extern __shared__ float4 mg_smem[];
    T *smem = reinterpret_cast<T *>(mg_smem);
    bmc_grid_trigger();
    bmc_grid_wait(); /* PDL: the routing (expert_start) and X come from earlier kernels */

    /* which expert and rows this block has */
    const int tile = blockIdx.x;
    int e = -1, r0 = 0, r1 = 0;
    if (!a.expert_start) { /* a dense MLP: every row, one "expert" */
        e = 0;
        r0 = tile * TM;
        r1 = min(r0 + TM, a.max_rows);
        if (r0 >= a.max_rows) return;
    } else {
        int seen = 0;
        for (int x = 0; x < a.E; x++) {
            const int s = a.expert_start[x], c = a.expert_start[x + 1] - s, tiles = (c + TM - 1) / TM;
            if (tile < seen + tiles) {
                e = x;
                r0 = s + (tile - seen) * TM;
                r1 = min(r0 + TM, s + c);
                break;
            }
            seen += tiles;
        }
        if (e < 0) return; /* more tiles in the grid than this step's routing needs */
    }
    const bool gated = a.mode == BMC_MOE_GATED, split = a.x_lo_rows > 0;
    const int out0 = blockIdx.y * (gated ? TN / 2 : TN); /* first output feature of the tile */
    const int K = a.K, tid = threadIdx.x;

    const T *X = reinterpret_cast<const T *>(a.X);
    const T *W = reinterpret_cast<const T *>(a.W) + (size_t)e * (size_t)a.expert_stride;
    auto stage_a = [&](int s) { return smem + (size_t)s * MG_STAGE_ELEMS(TM, TN); };
    auto stage_lo = [&](int s) { return stage_a(s) + TM * MG_LDS; };
    auto stage_b = [&](int s) { return stage_a(s) + 2 * TM * MG_LDS; };
    auto load = [&](int s, int kt) {
        const int k0 = kt * MG_TK;
        T *As = stage_a(s), *Ls = stage_lo(s), *Bs = stage_b(s);
        constexpr int CH = MG_TK / 8; /* 16-byte chunks per row */
        for (int i = tid; i < TM * CH; i += THREADS) {
            const int row = i / CH, k = k0 + (i % CH) * 8, xr = r0 + row;
            const bool ok = xr < r1 && k < K;
            mg_cp_async16(As + row * MG_LDS + (i % CH) * 8, ok ? X + (size_t)xr * a.ldx + k : X, ok);
            if (split)
                mg_cp_async16(Ls + row * MG_LDS + (i % CH) * 8,
                              ok ? X + (size_t)(xr + a.x_lo_rows) * a.ldx + k : X, ok);
        }
        for (int i = tid; i < TN * CH; i += THREADS) {
            const int j = i / CH, k = k0 + (i % CH) * 8;
            int wrow;
            bool ok;
            if (gated) {
                const int f = out0 + (j < TN / 2 ? j : j - TN / 2);
                ok = f < a.N;
                wrow = j < TN / 2 ? f : a.N + f;
            } else {
                wrow = out0 + j;
                ok = wrow < a.N;
            }
            ok = ok && k < K;
            mg_cp_async16(Bs + j * MG_LDS + (i % CH) * 8, ok ? W + (size_t)wrow * K + k : W, ok);
        }
    };

    const int warp = tid >> 5, wm = warp / WARPS_N, wn = warp % WARPS_N;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[FM][FN];
#pragma unroll
    for (int i = 0; i < FM; i++)
#pragma unroll
        for (int j = 0; j < FN; j++) wmma::fill_fragment(acc[i][j], 0.0f);

    /* this block's slice of K (PARTIAL: blockIdx.z of k_split), in whole k-tiles */
    const int nk_all = (K + MG_TK - 1) / MG_TK, slices = a.mode == BMC_MOE_PARTIAL ? max(a.k_split, 1) : 1;
    const int per = (nk_all + slices - 1) / slices, kt0 = (int)blockIdx.z * per;
    const int nk = max(0, min(nk_all - kt0, per));
#pragma unroll
    for (int s = 0; s < STAGES - 1; s++) {
        if (s < nk) load(s, kt0 + s);
        mg_cp_commit();
    }
    for (int kt = 0; kt < nk; kt++) {
        mg_cp_wait<STAGES - 2>();
        __syncthreads(); /* stage kt is in; everyone is done with the stage refilled next */
        const int next = kt + STAGES - 1;
        if (next < nk) load(next % STAGES, kt0 + next);
        mg_cp_commit();
        const T *As = stage_a(kt % STAGES), *Ls = stage_lo(kt % STAGES), *Bs = stage_b(kt % STAGES);
#pragma unroll
        for (int kk = 0; kk < MG_TK / 16; kk++) {
            wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> fb[FN];
#pragma unroll
            for (int j = 0; j < FN; j++)
                wmma::load_matrix_sync(fb[j], Bs + (wn * FN * 16 + j * 16) * MG_LDS + kk * 16, MG_LDS);
            wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> fa;
#pragma unroll
            for (int i = 0; i < FM; i++) {
                wmma::load_matrix_sync(fa, As + (wm * FM * 16 + i * 16) * MG_LDS + kk * 16, MG_LDS);
#pragma unroll
                for (int j = 0; j < FN; j++) wmma::mma_sync(acc[i][j], fa, fb[j], acc[i][j]);
                if (split) { /* the low half of the f32 activations */
                    wmma::load_matrix_sync(fa, Ls + (wm * FM * 16 + i * 16) * MG_LDS + kk * 16, MG_LDS);
#pragma unroll
                    for (int j = 0; j < FN; j++) wmma::mma_sync(acc[i][j], fa, fb[j], acc[i][j]);
                }
            }
        }
    }
    mg_cp_wait<0>();
    __syncthreads(); /* the pipeline's memory becomes the output tile */
    float *Cs = reinterpret_cast<float *>(mg_smem);
#pragma unroll
    for (int i = 0; i < FM; i++)
#pragma unroll
        for (int j = 0; j < FN; j++)
            wmma::store_matrix_sync(Cs + (wm * FM * 16 + i * 16) * LDC + wn * FN * 16 + j * 16, acc[i][j], LDC,
                                    wmma::mem_row_major);
    __syncthreads();

    const float *bias = a.bias ? a.bias + (size_t)e * (size_t)a.bias_stride : nullptr;
    if (gated) {
        constexpr int H = TN / 2;
        for (int i = tid; i < TM * H; i += THREADS) {
            const int r = i / H, f = i % H, gr = r0 + r, of = out0 + f;
            if (gr >= r1 || of >= a.N) continue;
            mg_finish_gated<T>(a, bias, gr, of, Cs[r * LDC + f], Cs[r * LDC + H + f]);
        }
    } else {
        for (int i = tid; i < TM * TN; i += THREADS) {
            const int r = i / TN, n = i % TN, gr = r0 + r, on = out0 + n;
            if (gr >= r1 || on >= a.N) continue;
            mg_finish<T>(a, bias, (int)blockIdx.z, gr, on, Cs[r * LDC + n]);
        }
    }
}

template <typename T, int TM, int TN, int STAGES>
static cudaError_t mg_launch(const bmc_moe_gemm_args *a, cudaStream_t stream) {
    const size_t smem = MG_SMEM(TM, TN, STAGES);
    cudaError_t e =
        cudaFuncSetAttribute(moe_gemm_kernel<T, TM, TN, STAGES>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
    if (e != cudaSuccess) return e;
    const int per_tile = a->mode == BMC_MOE_GATED ? TN / 2 : TN;
    const dim3 grid((unsigned)((a->max_rows + TM - 1) / TM + (a->expert_start ? a->E : 0)),
                    (unsigned)((a->N + per_tile - 1) / per_tile),
                    (unsigned)(a->mode == BMC_MOE_PARTIAL ? (a->k_split > 0 ? a->k_split : 1) : 1));
    return bmc_launch(moe_gemm_kernel<T, TM, TN, STAGES>, grid, dim3(MG_THREADS(TN)), smem, stream, a->pdl, *a);
}

/* Tile choice by the rows an expert gets on average: 16-row tiles up to 16
 * (less padding work; weights streamed once), 32 up to 32, else 64. fc2
 * (scatter) has few output features (d): narrower tiles give more blocks.
 * a->variant (harness measurements) forces one of the shapes below. */
/* The shared memory a block may opt into on the current device (227 KB on
 * sm_90, 163 KB on sm_80, 99 KB on sm_86 and sm_89). */
static int mg_smem_optin(void) {
    int dev = 0, v = 0;
    if (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetAttribute(&v, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) !=
                                                  cudaSuccess)
        return 48 * 1024;
    return v;
}

/* The tile with STAGES stages where it fits the device, else with 2. */
template <typename T, int TM, int TN, int STAGES>
static cudaError_t mg_fit(const bmc_moe_gemm_args *a, cudaStream_t stream) {
    if (MG_SMEM(TM, TN, STAGES) + 1024 <= (size_t)mg_smem_optin()) return mg_launch<T, TM, TN, STAGES>(a, stream);
    return mg_launch<T, TM, TN, 2>(a, stream);
}

/* ---- the weight-streaming variant, for few rows per expert -----------------
 *
 * With a handful of rows per expert the grouped GEMM is a matter of reading
 * the experts' weights once at the memory rate; the tiles above stage them
 * through shared memory in lock-step blocks of 128 weight rows. Here each
 * warp streams its own 16 weight rows through a private ring in shared
 * memory (cp.async, MS_STAGES k-steps deep, __syncwarp only) and multiplies
 * them on the tensor cores with the weights as the A operand (m16n8k16,
 * "swap AB"): the rows of the batch are the 8-wide N side, so a group of 4
 * rows with their hi and lo halves fills one n-tile and nothing is padded to
 * 16. The activations come through L1: the warps of a block work on
 * neighbouring units of the same expert and share them.
 *
 * The k order inside an MMA is free as long as A and B agree: thread (g, c)
 * takes the 8 consecutive k at 8c of each 32-wide part of a k-step for its
 * weight rows g and g + 8 and for its activation column g, and feeds words
 * 0-1 to the first m16n8k16 and words 2-3 to the second. Both operands are
 * then one 16-byte load per thread with no shuffles.
 *
 * Work: a unit is 16 weight rows (gated fc1: 8 features' value rows and
 * their 8 gate rows, so one thread holds a feature's value and gate) over
 * the whole K, or over one K slice (PARTIAL). The units of the experts that
 * have rows are numbered and split evenly among the blocks by count, each
 * block's range contiguous (and so its memory), and a block's warps take
 * the units of its range in turn. Columns beyond 8 x MS_MAX_NT (16 rows'
 * halves) are taken in further passes over the unit.
 *
 * Measured (dev/moe_gemm, 2.8B experts, H100): at 16 to 64 rows it matches
 * the best tile (fc1 82-87 us, 182 MB) rather than beating it; its weight
 * stream alone (variant 11) runs at 2.3 TB/s. It is used for up to 2 rows
 * per expert, where the decode row path measured it faster (docs/PERF.md). */
#define MS_THREADS 256
#define MS_STAGES 4 /* k-steps in a warp's ring, all but one in flight */
#define MS_KS 64     /* k per step: 128-byte pieces of each row (256-byte pieces measured no faster) */
#define MS_SMEM(STAGES, KS) (MS_THREADS / 32 * (STAGES) * 32 * (KS)) /* a slot: 16 rows x KS x 2 bytes */
#define MS_MAX_NT 4 /* n-tiles per pass: 32 columns */

/* d += A (16 x 16, four 32-bit words of the thread's fragment) B (16 x 8, two words), f32 accumulation. */
template <typename T> struct ms_mma;
#define MS_MMA_FOR(TYPE, TY)                                                                                           \
    template <> struct ms_mma<TYPE> {                                                                                  \
        static __device__ __forceinline__ void run(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, \
                                                   uint32_t b0, uint32_t b1) {                                         \
            asm volatile("mma.sync.aligned.m16n8k16.row.col.f32." TY ".f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "    \
                         "{%0,%1,%2,%3};\n"                                                                            \
                         : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])                                              \
                         : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));                                      \
        }                                                                                                              \
    };
MS_MMA_FOR(__nv_bfloat16, "bf16.bf16")
MS_MMA_FOR(__half, "f16.f16")

__device__ __forceinline__ uint4 ms_load_x(const void *p) { /* activations: read-only here, kept in L1 */
    uint4 v;
    asm volatile("ld.global.nc.v4.u32 {%0, %1, %2, %3}, [%4];" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
    return v;
}

/* One pass of a unit: its 16 weight rows (row r of the A tile is row r of
 * wrow0 for r < 8, row r - 8 of wrow8 for the rest, each K long; only the
 * first nv0 and nv8 of the two groups exist) times NT x 8
 * activation columns (xoff: where this thread's column of each n-tile starts
 * in X) over the k-steps [ks0, ks1) of KS; k beyond K is zero. acc[j]: the
 * thread's four products of n-tile j.
 *
 * The warp copies each k-step of its 16 rows into its ring with cp.async,
 * KS/8 lanes per row so that one instruction reads whole 128-byte (KS 64)
 * or 256-byte (KS 128) pieces of a row: DRAM serves long pieces of few rows
 * better than short pieces of many. Odd rows sit 64 bytes rotated in the
 * ring (chunk ^ 4), so the fragment reads (rows 2p and 2p + 1 in one phase)
 * hit distinct banks. */
template <typename T, int NT, int STAGES, int KS, bool WEIGHTS_ONLY>
__device__ __forceinline__ void ms_pass(float (&acc)[MS_MAX_NT][4], const T *wrow0, int nv0, const T *wrow8, int nv8,
                                        const T *X, const int (&xoff)[MS_MAX_NT], int K, int ks0, int ks1,
                                        uint4 *ring) {
    constexpr int CPR = KS / 8;          /* 16-byte chunks per row per k-step */
    constexpr int RPI = 32 / CPR;        /* rows per copy instruction */
    constexpr int SLOT = 16 * CPR;       /* uint4 per slot */
    const uint4 zero = make_uint4(0, 0, 0, 0);
    const int lane = threadIdx.x & 31, g = lane >> 2, c = lane & 3;
    auto issue = [&](int slot, int ks) {
#pragma unroll
        for (int i = 0; i < 16 / RPI; i++) {
            const int r = i * RPI + lane / CPR, j = lane % CPR, k = ks * KS + j * 8;
            const bool ok = ks < ks1 && k < K;
            const T *src = r < 8    ? wrow0 + (size_t)min(r, nv0 - 1) * K
                           : nv8 > 0 ? wrow8 + (size_t)min(r - 8, nv8 - 1) * K
                                     : wrow0;
            mg_cp_async16(ring + slot * SLOT + r * CPR + (j ^ ((r & 1) * 4)), ok ? src + k : src, ok);
        }
    };
#pragma unroll
    for (int s = 0; s < STAGES - 1; s++) {
        issue(s, ks0 + s);
        mg_cp_commit();
    }
    for (int ks = ks0, slot = 0; ks < ks1; ks++) {
        uint4 xv[KS / 32][NT]; /* issued first: their latency overlaps the wait for the weights */
#pragma unroll
        for (int q = 0; q < KS / 32; q++) {
            const int k = ks * KS + q * 32 + c * 8;
#pragma unroll
            for (int j = 0; j < NT; j++) xv[q][j] = k < K && !WEIGHTS_ONLY ? ms_load_x(X + xoff[j] + k) : zero;
        }
        mg_cp_wait<STAGES - 2>(); /* this lane's copies of the k-step are in */
        __syncwarp();              /* and the other lanes': the slots are shared within the warp */
        uint4 a[KS / 32], b[KS / 32];
#pragma unroll
        for (int q = 0; q < KS / 32; q++) {
            const int ch = q * 4 + c; /* rows g and g + 8 have the parity of g */
            a[q] = ring[slot * SLOT + g * CPR + (ch ^ ((g & 1) * 4))];
            b[q] = ring[slot * SLOT + (g + 8) * CPR + (ch ^ ((g & 1) * 4))];
        }
        __syncwarp(); /* every lane has read the slot refilled next (the previous one) before it is overwritten */
        issue(slot == 0 ? STAGES - 1 : slot - 1, ks + STAGES - 1);
        mg_cp_commit();
        slot = slot == STAGES - 1 ? 0 : slot + 1;
        if (WEIGHTS_ONLY) { /* measurement: the weight stream alone */
#pragma unroll
            for (int q = 0; q < KS / 32; q++)
                acc[0][0] += __uint_as_float(a[q].x ^ a[q].y ^ a[q].z ^ a[q].w ^ b[q].x ^ b[q].y ^ b[q].z ^ b[q].w) * 1e-30f;
        } else
#pragma unroll
        for (int q = 0; q < KS / 32; q++)
#pragma unroll
            for (int j = 0; j < NT; j++) {
                ms_mma<T>::run(acc[j], a[q].x, b[q].x, a[q].y, b[q].y, xv[q][j].x, xv[q][j].y);
                ms_mma<T>::run(acc[j], a[q].z, b[q].z, a[q].w, b[q].w, xv[q][j].z, xv[q][j].w);
            }
    }
    mg_cp_wait<0>(); /* nothing of this pass left in flight into the ring */
    __syncwarp();
}

/* The units of the streaming kernels and their epilogue, shared by the ring
 * (moe_stream_kernel) and the direct (moe_direct_kernel) weight streams:
 * enumerates this block's units, this warp's share of them, and for each
 * unit its columns in passes of up to MAX_NT n-tiles; pass(acc, nt, wrow0,
 * nv0, wrow8, nv8, xoff, ks0, ks1) leaves one pass's products in acc (as
 * ms_pass does), over the k-steps of KS in [ks0, ks1). */
template <typename T, int MAX_NT, int KS, typename Pass>
__device__ __forceinline__ void ms_units(const bmc_moe_gemm_args &a, Pass &&pass) {
    __shared__ int s_unit0[65]; /* first unit of each expert; s_unit0[E]: all units */
    const int E = a.expert_start ? a.E : 1, mode = a.mode;
    const bool gated = mode == BMC_MOE_GATED, split = a.x_lo_rows > 0;
    const int feats = gated ? 8 : 16; /* output features per unit */
    const int fus = (a.N + feats - 1) / feats;
    const int nkb = (a.K + KS - 1) / KS; /* k-steps */
    const int slices = mode == BMC_MOE_PARTIAL ? max(a.k_split, 1) : 1, per_slice = (nkb + slices - 1) / slices;
    if (threadIdx.x == 0) {
        int run = 0;
        for (int e = 0; e < E; e++) {
            s_unit0[e] = run;
            const int rows = a.expert_start ? a.expert_start[e + 1] - a.expert_start[e] : a.max_rows;
            if (rows > 0) run += fus * slices;
        }
        s_unit0[E] = run;
    }
    __syncthreads();
    const long long total = s_unit0[E];
    const int u_begin = (int)(total * blockIdx.x / gridDim.x), u_end = (int)(total * (blockIdx.x + 1) / gridDim.x);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, c = lane & 3;
    const int cols_per_row = split ? 2 : 1;
    for (int u = u_begin + warp; u < u_end; u += MS_THREADS / 32) {
        int e = 0;
        while (e + 1 < E && s_unit0[e + 1] <= u) e++;
        /* slice-major within an expert: neighbouring warps share one slice of the activations */
        const int local = u - s_unit0[e], slice = local / fus, fu = local % fus;
        const int r0 = a.expert_start ? a.expert_start[e] : 0;
        const int rows = a.expert_start ? a.expert_start[e + 1] - r0 : a.max_rows;
        const int kb0 = slice * per_slice, kb1 = min(nkb, kb0 + per_slice);
        const T *W = reinterpret_cast<const T *>(a.W) + (size_t)e * (size_t)a.expert_stride;
        /* the unit's two groups of 8 weight rows and how many of each exist
         * (the rest read a valid row; their outputs are dropped) */
        const T *wrow0, *wrow8;
        int nv0, nv8;
        if (gated) {
            wrow0 = W + (size_t)fu * 8 * a.K;
            wrow8 = W + (size_t)(a.N + fu * 8) * a.K;
            nv0 = nv8 = min(8, a.N - fu * 8);
        } else {
            wrow0 = W + (size_t)fu * 16 * a.K;
            wrow8 = wrow0 + (size_t)8 * a.K;
            nv0 = min(8, a.N - fu * 16);
            nv8 = min(8, a.N - fu * 16 - 8);
        }
        const int cols = rows * cols_per_row;
        for (int c0 = 0; c0 < cols; c0 += MAX_NT * 8) {
            const int nt = min(MAX_NT, (cols - c0 + 7) / 8);
            int xoff[MAX_NT];
#pragma unroll
            for (int j = 0; j < MAX_NT; j++) { /* column c0 + 8j + g: row (of this expert) and half */
                const int col = min(c0 + j * 8 + g, cols - 1), r = col / cols_per_row, half = col % cols_per_row;
                const int xr = r0 + r + (half ? a.x_lo_rows : 0);
                xoff[j] = xr * a.ldx; /* X holds fewer than 2^31 elements (ms_fits) */
            }
            float acc[MAX_NT][4];
#pragma unroll
            for (int j = 0; j < MAX_NT; j++) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.0f;
            pass(acc, nt, wrow0, nv0, wrow8, nv8, xoff, kb0, kb1);
            /* acc[j][0..1]: weight row g at columns c0 + 8j + 2c, +1; [2..3]: row g + 8 */
#pragma unroll
            for (int j = 0; j < MAX_NT; j++) {
                if (j >= nt) break;
#pragma unroll
                for (int q = 0; q < 2; q++) {
                    /* with halves, the column pair is one row's hi and lo: sum it; else two rows */
                    if (split && q == 1) break;
                    const int col = c0 + j * 8 + 2 * c + q;
                    if (col >= cols) break;
                    const int r = col / cols_per_row, gr = r0 + r;
                    const float v0 = split ? acc[j][0] + acc[j][1] : acc[j][q];
                    const float v8 = split ? acc[j][2] + acc[j][3] : acc[j][2 + q];
                    const float *bias = a.bias ? a.bias + (size_t)e * (size_t)a.bias_stride : nullptr;
                    if (gated) {
                        if (fu * 8 + g < a.N) mg_finish_gated<T>(a, bias, gr, fu * 8 + g, v0, v8);
                    } else {
                        const int n = fu * 16 + g;
                        if (n < a.N) mg_finish<T>(a, bias, slice, gr, n, v0);
                        if (n + 8 < a.N) mg_finish<T>(a, bias, slice, gr, n + 8, v8);
                    }
                }
            }
        }
    }
}

template <typename T, int STAGES, int KS, bool WEIGHTS_ONLY>
__global__ void __launch_bounds__(MS_THREADS, 2) moe_stream_kernel(const bmc_moe_gemm_args a) {
    extern __shared__ uint4 ms_ring[]; /* per warp: STAGES slots of 16 rows x KS */
    bmc_grid_trigger();
    bmc_grid_wait(); /* PDL: the routing and X come from earlier kernels */
    const T *X = reinterpret_cast<const T *>(a.X);
    uint4 *ring = ms_ring + (size_t)(threadIdx.x >> 5) * STAGES * 16 * (KS / 8); /* this warp's slots */
    const int K = a.K;
    ms_units<T, MS_MAX_NT, KS>(a, [&](float (&acc)[MS_MAX_NT][4], int nt, const T *wrow0, int nv0, const T *wrow8,
                                      int nv8, const int (&xoff)[MS_MAX_NT], int kb0, int kb1) {
        if (nt == 1) ms_pass<T, 1, STAGES, KS, WEIGHTS_ONLY>(acc, wrow0, nv0, wrow8, nv8, X, xoff, K, kb0, kb1, ring);
        else if (nt == 2) ms_pass<T, 2, STAGES, KS, WEIGHTS_ONLY>(acc, wrow0, nv0, wrow8, nv8, X, xoff, K, kb0, kb1, ring);
        else ms_pass<T, 4, STAGES, KS, WEIGHTS_ONLY>(acc, wrow0, nv0, wrow8, nv8, X, xoff, K, kb0, kb1, ring);
    });
}

/* ---- the direct weight stream -----------------------------------------------
 *
 * The same units, MMAs and epilogue as moe_stream_kernel, but the weights go
 * from global memory straight into registers (bmc_load_stream: no shared
 * memory, no cp.async), as the batch-1 GEMV streams them. A k-step of MD_KS
 * is 16 rows x 256 bytes per warp (8 loads of 16 bytes per lane); two
 * register sets hold two k-steps, each refilled as soon as the MMAs have
 * read it, so while a warp waits for one k-step the next is in flight too:
 * 8 KB per warp, 128 KB per SM at two blocks of 8 warps (128 registers).
 *
 * The MMA ties a lane's weight rows to its group g (rows g and g + 8), so
 * loaded as the fragments want them a warp instruction would read 64 bytes
 * of each of 8 rows. Instead instruction j = 4h + 2 j1 + j0 reads 256
 * contiguous bytes of each of two rows: lane L takes A row 8h + 4 (L >> 4) +
 * (j & 3), chunk L & 15 (8 k each). Two butterfly exchanges then trade lane
 * bit 3 with register bit j1 and lane bit 2 with j0, after which lane (g, c)
 * holds in register 4h + m row 8h + g, chunk 4m + c: the 8 k at 32m + 8c of
 * the step, the order in which ms_pass feeds the MMAs and loads the
 * activations, so the MMA code is ms_pass's. The exchanges cost 32 shuffles
 * and 96 selects per k-step and warp, against 4 KB of weights. 512-byte
 * pieces (one row per instruction) would take a third exchange and 16
 * registers more per k-step, which the 128 of two blocks per SM cannot hold.
 *
 * The activations are loaded per 32-k part just before its MMAs (L1 hits
 * mostly: the warps of a block share an expert's), which keeps their
 * registers to NT uint4; a pass is at most MD_MAX_NT n-tiles for the same
 * reason. It runs up to BM_CUDA_MOE_DIRECT_MAX rows per expert (default 2). */
#define MD_KS 128 /* k per step: 256-byte pieces of each row */
#define MD_MAX_NT 2 /* n-tiles per pass: 16 columns, the two halves of 8 rows (64 streams over 8 experts) */

/* Swaps lane bit MASK with the register bit that tells r0 (0) from r1 (1):
 * a lane keeps the register whose bit equals its own and trades the other
 * with the lane across MASK. */
template <int MASK> __device__ __forceinline__ void md_swap32(uint32_t &r0, uint32_t &r1, bool up) {
    const uint32_t v = __shfl_xor_sync(0xffffffffu, up ? r0 : r1, MASK);
    r0 = up ? v : r0;
    r1 = up ? r1 : v;
}
template <int MASK> __device__ __forceinline__ void md_swap(uint4 &r0, uint4 &r1) {
    const bool up = (threadIdx.x & MASK) != 0;
    md_swap32<MASK>(r0.x, r1.x, up);
    md_swap32<MASK>(r0.y, r1.y, up);
    md_swap32<MASK>(r0.z, r1.z, up);
    md_swap32<MASK>(r0.w, r1.w, up);
}

/* One pass of a unit, as ms_pass (same arguments, less the ring), over the
 * k-steps [ks0, ks1) of MD_KS. */
template <typename T, int NT, bool WEIGHTS_ONLY>
__device__ __forceinline__ void md_pass(float (&acc)[MD_MAX_NT][4], const T *wrow0, int nv0, const T *wrow8, int nv8,
                                        const T *X, const int (&xoff)[MD_MAX_NT], int K, int ks0, int ks1) {
    const uint4 zero = make_uint4(0, 0, 0, 0);
    const int lane = threadIdx.x & 31, c = lane & 3;
    /* this lane's chunk of the first row it reads in each group; instruction j
     * reads j & 3 rows further (rows beyond nv0 / nv8 are not read: zero, and
     * their outputs are dropped) */
    const int rb = 4 * (lane >> 4);
    const T *src0 = wrow0 + (size_t)rb * K + (lane & 15) * 8, *src8 = wrow8 + (size_t)rb * K + (lane & 15) * 8;
    auto load = [&](uint4 (&w)[8], int ks) { /* k beyond K or the pass reads nothing: zero */
        const int k = ks * MD_KS;
        const bool ok = ks < ks1 && k + (lane & 15) * 8 < K;
#pragma unroll
        for (int j = 0; j < 8; j++) {
            const bool row_ok = (j & 3) + rb < (j < 4 ? nv0 : nv8);
            w[j] = ok && row_ok ? bmc_load_stream(reinterpret_cast<const uint4 *>((j < 4 ? src0 : src8) + (j & 3) * K + k))
                                : zero;
        }
    };
    auto step = [&](uint4 (&w)[8], int ks) {
        if (WEIGHTS_ONLY) { /* measurement: the loads alone, no exchange and no products */
#pragma unroll
            for (int j = 0; j < 8; j++) acc[0][0] += __uint_as_float(w[j].x ^ w[j].y ^ w[j].z ^ w[j].w) * 1e-30f;
        } else {
            md_swap<8>(w[0], w[2]); /* lane bit 3 <-> register bit 1 */
            md_swap<8>(w[1], w[3]);
            md_swap<8>(w[4], w[6]);
            md_swap<8>(w[5], w[7]);
            md_swap<4>(w[0], w[1]); /* lane bit 2 <-> register bit 0 */
            md_swap<4>(w[2], w[3]);
            md_swap<4>(w[4], w[5]);
            md_swap<4>(w[6], w[7]);
#pragma unroll
            for (int m = 0; m < MD_KS / 32; m++) {
                /* the activations of this part of the step: mostly L1 hits, and the next
                 * k-step's weights stay in flight while they come */
                const int k = ks * MD_KS + m * 32 + c * 8;
                uint4 xv[NT];
#pragma unroll
                for (int j = 0; j < NT; j++) xv[j] = k < K ? ms_load_x(X + xoff[j] + k) : zero;
#pragma unroll
                for (int j = 0; j < NT; j++) {
                    ms_mma<T>::run(acc[j], w[m].x, w[4 + m].x, w[m].y, w[4 + m].y, xv[j].x, xv[j].y);
                    ms_mma<T>::run(acc[j], w[m].z, w[4 + m].z, w[m].w, w[4 + m].w, xv[j].z, xv[j].w);
                }
            }
        }
    };
    /* two register sets, each refilled (two k-steps ahead) as soon as its MMAs have read it */
    uint4 w0[8], w1[8];
    load(w0, ks0);
    load(w1, ks0 + 1);
    for (int ks = ks0; ks < ks1; ks += 2) {
        step(w0, ks);
        load(w0, ks + 2);
        if (ks + 1 < ks1) {
            step(w1, ks + 1);
            load(w1, ks + 3);
        }
    }
}

template <typename T, bool WEIGHTS_ONLY>
__global__ void __launch_bounds__(MS_THREADS, 2) moe_direct_kernel(const bmc_moe_gemm_args a) {
    bmc_grid_trigger();
    bmc_grid_wait(); /* PDL: the routing and X come from earlier kernels */
    const T *X = reinterpret_cast<const T *>(a.X);
    const int K = a.K;
    ms_units<T, MD_MAX_NT, MD_KS>(a, [&](float (&acc)[MD_MAX_NT][4], int nt, const T *wrow0, int nv0, const T *wrow8,
                                         int nv8, const int (&xoff)[MD_MAX_NT], int kb0, int kb1) {
        static_assert(MD_MAX_NT == 2, "a pass of 1 or 2 n-tiles");
        if (nt == 1) md_pass<T, 1, WEIGHTS_ONLY>(acc, wrow0, nv0, wrow8, nv8, X, xoff, K, kb0, kb1);
        else md_pass<T, 2, WEIGHTS_ONLY>(acc, wrow0, nv0, wrow8, nv8, X, xoff, K, kb0, kb1);
    });
}

/* The streaming variants apply where their loads stay aligned. */
static bool ms_fits(const bmc_moe_gemm_args *a) {
    /* (K % 8 and E <= 64 are bmc_moe_gemm's own conditions) */
    return a->ldx % 8 == 0 && a->expert_stride % 8 == 0 && ((uintptr_t)a->X & 15) == 0 && ((uintptr_t)a->W & 15) == 0 &&
           (long long)(2 * a->max_rows + a->x_lo_rows) * a->ldx < 2147483647LL;
}

/* Up to how many rows per expert (on average) the ring streaming kernel
 * runs, after the direct one: BM_CUDA_MOE_STREAM_MAX, else 0 (never; the
 * direct kernel replaced it where it won, at 16 streams: docs/PERF.md). */
static int ms_max_rows_per_expert(void) {
    const char *v = getenv("BM_CUDA_MOE_STREAM_MAX");
    return v && *v ? atoi(v) : 0;
}

/* Up to how many rows per expert (on average) the direct kernel runs, ahead
 * of the ring streaming kernel and the tiles: BM_CUDA_MOE_DIRECT_MAX, else 2.
 * Measured in the decode row path on the H100 (2.8B): at 16 streams (2 per
 * expert) 3.57 ms/step against 3.66 for the ring kernel; at 64 streams
 * 5.57 against 4.37 for the tiles (more than 8 rows take extra passes over
 * the weights). */
static int md_max_rows_per_expert(void) {
    const char *v = getenv("BM_CUDA_MOE_DIRECT_MAX");
    return v && *v ? atoi(v) : 2;
}

/* A streaming kernel on as many blocks as fit on the SMs at once, with smem
 * bytes of dynamic shared memory and that carveout (percent of the SM's
 * memory as shared memory; the rest is L1 for the activations). */
template <typename Kernel>
static cudaError_t ms_start(Kernel kernel, int smem, int carveout, const bmc_moe_gemm_args *a, cudaStream_t stream) {
    int dev = 0, sms = 0, per_sm = 0;
    cudaError_t e = cudaGetDevice(&dev);
    if (e == cudaSuccess) e = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
    if (e == cudaSuccess) e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    if (e == cudaSuccess) e = cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout, carveout);
    if (e == cudaSuccess) e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, MS_THREADS, smem);
    if (e != cudaSuccess) return e;
    return bmc_launch(kernel, dim3(sms * max(per_sm, 1)), dim3(MS_THREADS), smem, stream, a->pdl, *a);
}

template <typename T, int STAGES, int KS, bool WEIGHTS_ONLY>
static cudaError_t ms_launch(const bmc_moe_gemm_args *a, cudaStream_t stream) {
    /* shared memory for the rings of two blocks */
    return ms_start(moe_stream_kernel<T, STAGES, KS, WEIGHTS_ONLY>, MS_SMEM(STAGES, KS), 60, a, stream);
}

template <typename T, bool WEIGHTS_ONLY> static cudaError_t md_launch(const bmc_moe_gemm_args *a, cudaStream_t stream) {
    /* no ring: all but the least shared memory is L1 */
    return ms_fits(a) ? ms_start(moe_direct_kernel<T, WEIGHTS_ONLY>, 0, 0, a, stream) : cudaErrorInvalidValue;
}

template <typename T> static cudaError_t mg_dispatch(const bmc_moe_gemm_args *a, cudaStream_t stream) {
    switch (a->variant) {
    case 1: return mg_launch<T, 16, 128, 4>(a, stream);
    case 2: return mg_launch<T, 16, 64, 4>(a, stream);
    case 3: return mg_launch<T, 16, 32, 4>(a, stream);
    case 4: return mg_launch<T, 32, 128, 4>(a, stream);
    case 5: return mg_launch<T, 32, 64, 4>(a, stream);
    case 6: return mg_launch<T, 64, 128, 3>(a, stream);
    case 7: return mg_launch<T, 64, 64, 3>(a, stream);
    case 8: return mg_launch<T, 16, 64, 6>(a, stream);
    case 9: return mg_launch<T, 64, 128, 2>(a, stream); /* the fallback of devices with less shared memory */
    case 10: return ms_fits(a) ? ms_launch<T, MS_STAGES, MS_KS, false>(a, stream) : cudaErrorInvalidValue;
    /* a measurement: the streaming kernel's weight traffic alone, no products (the output is junk) */
    case 11: return ms_fits(a) ? ms_launch<T, MS_STAGES, MS_KS, true>(a, stream) : cudaErrorInvalidValue;
    case 12: return md_launch<T, false>(a, stream); /* the direct weight stream */
    case 13: return md_launch<T, true>(a, stream);  /* its weight loads alone (junk output) */
    default: break;
    }
    const int per_expert = a->max_rows / (a->expert_start ? a->E : 1), direct_max = md_max_rows_per_expert();
    if (direct_max > 0 && per_expert <= direct_max && ms_fits(a)) return md_launch<T, false>(a, stream);
    if (per_expert <= ms_max_rows_per_expert() && ms_fits(a)) return ms_launch<T, MS_STAGES, MS_KS, false>(a, stream);
    if (a->mode == BMC_MOE_PARTIAL) { /* fc2 split over K: wide tiles, the slices give the blocks */
        if (per_expert <= 16) return mg_fit<T, 16, 128, 4>(a, stream);
        if (per_expert <= 32) return mg_fit<T, 32, 128, 4>(a, stream);
        return mg_fit<T, 64, 128, 3>(a, stream);
    }
    if (a->mode == BMC_MOE_SCATTER) {
        if (per_expert <= 16) return mg_fit<T, 16, 64, 4>(a, stream);
        if (per_expert <= 32) return mg_fit<T, 32, 64, 4>(a, stream);
        return mg_fit<T, 64, 64, 3>(a, stream);
    }
    if (per_expert <= 16) return mg_fit<T, 16, 128, 4>(a, stream);
    if (per_expert <= 32) return mg_fit<T, 32, 128, 4>(a, stream);
    return mg_fit<T, 64, 128, 3>(a, stream);
}

/* The automatic choice takes the TMA + wgmma kernel (where it runs) above
 * the direct stream's rows per expert, unless BM_CUDA_MOE_SM90=0. */
static bool sm90_wanted(const bmc_moe_gemm_args *a) {
    static const int enabled = [] {
        const char *v = getenv("BM_CUDA_MOE_SM90");
        return v && *v ? atoi(v) : 1;
    }();
    const int per_expert = a->max_rows / (a->expert_start ? a->E : 1);
    return enabled && bmc_moe_sm90_ready() && per_expert > md_max_rows_per_expert();
}

cudaError_t bmc_moe_gemm(const bmc_moe_gemm_args *a, int wtype, cudaStream_t stream) {
    if (a->max_rows <= 0 || a->N <= 0) return cudaSuccess;
    if (a->K % 8 || a->E < 1 || a->E > 64 || a->variant < 0 || a->variant > 14) return cudaErrorInvalidValue;
    if (a->variant == 14) return bmc_moe_gemm_sm90(a, wtype, stream);
    if (a->variant == 0 && sm90_wanted(a)) {
        const cudaError_t e = bmc_moe_gemm_sm90(a, wtype, stream);
        if (e != cudaErrorNotSupported) return e;
        cudaGetLastError(); /* not for these shapes: the kernels below take them */
    }
    return wtype == BMC_F16 ? mg_dispatch<__half>(a, stream) : mg_dispatch<__nv_bfloat16>(a, stream);
}

/* BM_CUDA_MOE_CHAIN=0: fc1 and fc2 in two launches (measurement) */
static bool moe_chain_enabled(void) {
    static const int chain = [] {
        const char *v = getenv("BM_CUDA_MOE_CHAIN");
        return v && *v ? atoi(v) : 1;
    }();
    return chain != 0;
}

cudaError_t bmc_moe_mlp(const bmc_moe_gemm_args *fc1, const bmc_moe_gemm_args *fc2, int *done, int wtype,
                        cudaStream_t stream) {
    if (moe_chain_enabled() && done && fc1->variant == 0 && fc2->variant == 0 && sm90_wanted(fc1) && sm90_wanted(fc2)) {
        const cudaError_t e = bmc_moe_chain_sm90(fc1, fc2, done, wtype, stream);
        if (e != cudaErrorNotSupported) return e;
        cudaGetLastError(); /* these two do not chain: one launch each */
    }
    const cudaError_t e = bmc_moe_gemm(fc1, wtype, stream);
    return e != cudaSuccess ? e : bmc_moe_gemm(fc2, wtype, stream);
}

int bmc_moe_mlp_split(int rows, int E, int d, int F, int gated) {
    static const int forced = [] { /* measurement switch: BM_CUDA_FC2_SPLIT=n */
        const char *v = getenv("BM_CUDA_FC2_SPLIT");
        return v && atoi(v) >= 1 && atoi(v) <= 8 ? atoi(v) : 0;
    }();
    if (forced) return forced;
    bmc_moe_gemm_args a; /* fc1's shape, for the kernel choice */
    memset(&a, 0, sizeof a);
    a.max_rows = rows;
    a.E = E;
    a.expert_start = &a.E; /* only "there is a routing" */
    int dev = 0, sms = 0;
    if (moe_chain_enabled() && E >= 2 && sm90_wanted(&a) && cudaGetDevice(&dev) == cudaSuccess &&
        cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) == cudaSuccess && sms > 0)
        return bmc_moe_chain_split(rows, E, d, F, gated, sms);
    return bmc_moe_fc2_split(rows);
}

int bmc_moe_fc2_split(int rows) {
    /* few rows (the streaming kernel): its units, 16 output rows x a K slice,
     * must outnumber the SMs' warps several times over for the work to even out */
    return rows <= 16 ? 8 : rows <= 256 ? 4 : 2;
}
