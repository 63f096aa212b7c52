/* Decode row path: x_proj, xdbl = u Wx^T for all the streams of a step (u f32
 * [rows, K], Wx 16-bit [n_out, K], n_out = dt_rank + 2 d_state, about a
 * hundred), in one launch from the f32 u: no split-K reduce launch and no
 * fold of halves after it. Two kernels: one on the CUDA cores in f32 (either
 * weight type), one on the tensor cores (bf16 weights, sm_90).
 *
 * CUDA cores. Every block computes a tile of rows x columns over the whole
 * K, so no partial sum leaves its block: no reduction launch, no atomics,
 * each output summed in one fixed order (the same bits every run). The tile
 * shape is chosen per call from the rows: few rows take small tiles (64
 * rows: 2 x 16), many rows larger ones whose weights serve more rows (1024
 * rows: 4 x 32). A block's 8 warps are RW row groups x KW = 8 / RW groups
 * over K:
 *  - the KW warps of one row group share its rows and split K between them
 *    (interleaved 32-element pieces); their partial tiles meet in shared
 *    memory and are added in warp order;
 *  - the RW warps of one K group read the same weights at the same time, so
 *    the block's weight tile crosses from L2 once and the others hit L1.
 * Within a warp, lane (cl, kl) takes the columns cl + 8 i (i < CPL) and the
 * 8-element part kl of each 32-element piece: one load instruction reads 8
 * columns x 64 contiguous bytes of Wx, each lane's 16 bytes unpacked once
 * and used for all the warp's BMW rows, whose 8 inputs per row come as two
 * float4 loads (the same for the 8 lanes of one kl). The 4 K lanes of a
 * column are added by shuffles at the end.
 * The cost of the small tiles: every row block reads all of Wx again from
 * L2 (256 rows: ~70 MB of L2 traffic a launch, 15 us; 64 rows 8.9 us).
 *
 * Tensor cores. A block's tile covers BM rows (32 or 64) x all the outputs
 * (128 columns; more outputs take more column tiles), so Wx crosses from L2
 * once per row tile and u once. That leaves few tiles (256 rows: 4), so K
 * is split over a cluster of CS blocks (4, 8 or 16): rank r takes a
 * contiguous K range (whole 16-element steps, balanced), stages it in
 * shared memory with cp.async (Wx before the PDL wait: weights are
 * immutable; u after it) in pieces of 64 elements, as many as fit (a ring
 * beyond that), and multiplies on m16n8k16 with f32 accumulation. The f32
 * u goes in as two bf16 halves, hi = bf16(u) and lo = bf16(u - hi), both
 * against the same weights (|u - hi - lo| <= 2^-16 |u|), made from the f32
 * shared tile as the A fragments are built. The CS partial tiles then meet
 * over distributed shared memory: each block leaves its tile in its own
 * shared memory, and after a cluster barrier sums 1/CS of the tile's rows
 * over the CS blocks in rank order and stores them: no atomics, no scratch,
 * one fixed order (the same bits every run), and no second launch. Warps:
 * 2 row halves x 4 column quarters of 32, so each u fragment is split once
 * per 4 warps and each weight fragment loaded by 2. Padded rows (8
 * elements) put the fragment loads of a quarter-warp on distinct banks.
 *
 * Launched with PDL in the row path (pdl): a block starts its weights (L2
 * prefetch, or the tensor-core kernel's copies) before it waits for the conv
 * step, and reads u only after the wait. */
#include <cooperative_groups.h>

#include "device_util.cuh"
#include "kernels.cuh"

#define XP_THREADS 256
#define XP_WARPS (XP_THREADS / 32)
#define XP_PIECE 32 /* K elements per warp step: 4 lanes x 8 */

template <typename T, int BMW, int CPL, int RW>
__global__ void __launch_bounds__(XP_THREADS, 3) x_proj_rows_kernel(const float *__restrict__ u, int ldu, int rows, int K,
                                                                  const T *__restrict__ W, int n_out,
                                                                  float *__restrict__ y, int ldy) {
    constexpr int KW = XP_WARPS / RW, BM = BMW * RW, BN = 8 * CPL;
    __shared__ float part[KW][BM][BN];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int kl = lane & 3, cl = lane >> 2, kg = warp % KW, rg = warp / KW;
    const int row0 = blockIdx.y * BM + rg * BMW;
    const int nr = min(BMW, rows - row0); /* the same for the whole warp; <= 0 past the last row */
    bmc_grid_trigger();
    const uint4 *wp[CPL];
    bool wok[CPL];
#pragma unroll
    for (int i = 0; i < CPL; i++) {
        const int j = blockIdx.x * BN + cl + 8 * i;
        wok[i] = j < n_out;
        wp[i] = reinterpret_cast<const uint4 *>(W + (size_t)(wok[i] ? j : 0) * K);
    }
    /* PDL: the block's weight rows start for L2 (the row blocks of a column
     * tile take a share each) while the conv step drains; u only after the wait */
    if (threadIdx.x == 0) {
        const int j0 = blockIdx.x * BN;
        bmc_prefetch_l2(W + (size_t)j0 * K, (size_t)min(BN, n_out - j0) * K * sizeof(T), blockIdx.y, gridDim.y);
    }
    /* The weights one step ahead: the first step's before the wait, each
     * next step's while this one's products run (up to 2 columns a lane:
     * with 4 the registers would spill, and the one step is loaded at use). */
    constexpr bool AHEAD = CPL <= 2;
    const int k_first = kg * XP_PIECE + kl * 8, k_step = KW * XP_PIECE;
    uint4 wv[CPL];
#pragma unroll
    for (int i = 0; i < CPL; i++)
        wv[i] = AHEAD && wok[i] && k_first < K ? __ldg(wp[i] + k_first / 8) : make_uint4(0, 0, 0, 0);
    bmc_grid_wait();
    float acc[BMW][CPL];
#pragma unroll
    for (int r = 0; r < BMW; r++)
#pragma unroll
        for (int i = 0; i < CPL; i++) acc[r][i] = 0.0f;

#pragma unroll 2
    for (int k = k_first; k < K; k += k_step) {
        float w[CPL][8];
#pragma unroll
        for (int i = 0; i < CPL; i++) {
            if constexpr (AHEAD) {
                bmc_unpack<T>::run(wv[i], w[i]);
                wv[i] = wok[i] && k + k_step < K ? __ldg(wp[i] + (k + k_step) / 8) : make_uint4(0, 0, 0, 0);
            } else {
                bmc_unpack<T>::run(wok[i] ? __ldg(wp[i] + k / 8) : make_uint4(0, 0, 0, 0), w[i]);
            }
        }
#pragma unroll
        for (int r = 0; r < BMW; r++) {
            if (r >= nr) break;
            const float4 *ur = reinterpret_cast<const float4 *>(u + (size_t)(row0 + r) * ldu + k);
            const float4 a = __ldg(ur), b = __ldg(ur + 1);
#pragma unroll
            for (int i = 0; i < CPL; i++) {
                float s = acc[r][i];
                s = fmaf(w[i][0], a.x, s);
                s = fmaf(w[i][1], a.y, s);
                s = fmaf(w[i][2], a.z, s);
                s = fmaf(w[i][3], a.w, s);
                s = fmaf(w[i][4], b.x, s);
                s = fmaf(w[i][5], b.y, s);
                s = fmaf(w[i][6], b.z, s);
                s = fmaf(w[i][7], b.w, s);
                acc[r][i] = s;
            }
        }
    }
#pragma unroll
    for (int r = 0; r < BMW; r++)
#pragma unroll
        for (int i = 0; i < CPL; i++) {
            float s = acc[r][i];
            s += __shfl_xor_sync(0xffffffffu, s, 1);
            s += __shfl_xor_sync(0xffffffffu, s, 2);
            if (kl == 0) part[kg][rg * BMW + r][cl + 8 * i] = s;
        }
    __syncthreads();
    for (int o = threadIdx.x; o < BM * BN; o += XP_THREADS) {
        const int rr = o / BN, cc = o % BN;
        const int row = blockIdx.y * BM + rr, col = blockIdx.x * BN + cc;
        if (row >= rows || col >= n_out) continue;
        float s = part[0][rr][cc];
#pragma unroll
        for (int g = 1; g < KW; g++) s += part[g][rr][cc];
        y[(size_t)row * ldy + col] = s;
    }
}

/* ---- tensor cores ------------------------------------------------------------ */
#define XPM_BN 128                                        /* output columns of a tile */
#define XPM_KC 64                                         /* K of a shared-memory stage */
#define XPM_LD (XPM_KC + 8)                               /* a staged row, padded */
#define XPM_PLD (XPM_BN + 8)                              /* a row of the partial tile, padded */
#define XPM_WBYTES (XPM_BN * XPM_LD * 2)                  /* a stage's weights */
#define XPM_STAGE(BM) (XPM_WBYTES + (BM) * XPM_LD * 4)   /* a stage: weights, then u */
#define XPM_MAX_STAGES 8                                  /* what xpm_wait can wait for */

__device__ __forceinline__ void xpm_cp16(void *smem, const void *gmem, bool valid) { /* !valid: 16 zero bytes */
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"((unsigned)__cvta_generic_to_shared(smem)),
                 "l"(gmem), "r"(valid ? 16 : 0)
                 : "memory");
}
__device__ __forceinline__ void xpm_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
/* Wait until at most `pending` of the thread's newest copy groups are in
 * flight (the instruction takes a constant; more than N waits for N). */
template <int N = XPM_MAX_STAGES - 1> __device__ __forceinline__ void xpm_wait(int pending) {
    if (pending >= N) asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
    else if constexpr (N > 0) xpm_wait<N - 1>(pending);
}
/* Two f32 (consecutive k) as their bf16 halves, each pair packed as an MMA operand word. */
__device__ __forceinline__ void xpm_split(float2 v, uint32_t &hi, uint32_t &lo) {
    const __nv_bfloat162 h = __float22bfloat162_rn(v);
    const float2 hf = __bfloat1622float2(h);
    const __nv_bfloat162 l = __float22bfloat162_rn(make_float2(v.x - hf.x, v.y - hf.y)); /* u - hi is exact */
    hi = *reinterpret_cast<const uint32_t *>(&h);
    lo = *reinterpret_cast<const uint32_t *>(&l);
}
__device__ __forceinline__ void xpm_mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

/* Grid (CS, row tiles, column tiles), clusters of CS along x; `stages`: the
 * stages the dynamic shared memory holds (the host's choice, at least one). */
template <int BM>
__global__ void __launch_bounds__(XP_THREADS, 1) x_proj_mma_kernel(const float *__restrict__ u, int ldu, int rows, int K,
                                                                 const __nv_bfloat16 *__restrict__ W, int n_out,
                                                                 float *__restrict__ y, int ldy, int stages) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    namespace cg = cooperative_groups;
    constexpr int MT = BM / 32; /* m16 tiles of a warp */
    static_assert(BM * XPM_PLD * 4 <= XPM_STAGE(BM), "the partial tile fits in one stage");
    extern __shared__ __align__(16) unsigned char xpm_smem[];
    const cg::cluster_group cluster = cg::this_cluster();
    const int cs = (int)cluster.num_blocks(), rank = (int)cluster.block_rank();
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
    const int wr = (warp >> 2) * (BM / 2), wc = (warp & 3) * 32; /* the warp's rows and columns in the tile */
    const int row0 = blockIdx.y * BM, col0 = blockIdx.z * XPM_BN;
    const int units = (K + 15) / 16;
    const int k0 = 16 * (rank * units / cs), k1 = min(K, 16 * ((rank + 1) * units / cs));
    const int nch = k1 > k0 ? (k1 - k0 + XPM_KC - 1) / XPM_KC : 0, ns = min(nch, stages);
    bmc_grid_trigger();
    auto wtile = [&](int s) { return reinterpret_cast<__nv_bfloat16 *>(xpm_smem + (size_t)s * XPM_STAGE(BM)); };
    auto utile = [&](int s) { return reinterpret_cast<float *>(xpm_smem + (size_t)s * XPM_STAGE(BM) + XPM_WBYTES); };
    auto load_w = [&](int c, int s) { /* 128 rows x 8 pieces of 16 bytes */
#pragma unroll
        for (int i = 0; i < XPM_BN * XPM_KC / 8 / XP_THREADS; i++) {
            const int p = threadIdx.x + i * XP_THREADS, n = p / (XPM_KC / 8), kk = p % (XPM_KC / 8) * 8;
            const int k = k0 + c * XPM_KC + kk;
            const bool ok = col0 + n < n_out && k < k1;
            xpm_cp16(wtile(s) + n * XPM_LD + kk, ok ? W + (size_t)(col0 + n) * K + k : W, ok);
        }
    };
    auto load_u = [&](int c, int s) { /* BM rows x 16 pieces of 16 bytes */
#pragma unroll
        for (int i = 0; i < BM * XPM_KC / 4 / XP_THREADS; i++) {
            const int p = threadIdx.x + i * XP_THREADS, r = p / (XPM_KC / 4), kk = p % (XPM_KC / 4) * 4;
            const int k = k0 + c * XPM_KC + kk;
            const bool ok = row0 + r < rows && k < k1;
            xpm_cp16(utile(s) + r * XPM_LD + kk, ok ? u + (size_t)(row0 + r) * ldu + k : u, ok);
        }
    };
    for (int c = 0; c < ns; c++) load_w(c, c);
    bmc_grid_wait();
    for (int c = 0; c < ns; c++) { /* group c: stage c's u (the first also holds every stage's weights) */
        load_u(c, c);
        xpm_commit();
    }

    float acc[MT][4][4] = {};
    for (int c = 0, s = 0; c < nch; c++, s = s + 1 == ns ? 0 : s + 1) {
        xpm_wait(min(nch - 1 - c, ns - 1)); /* groups are committed in chunk order */
        __syncthreads();
        const __nv_bfloat16 *ws = wtile(s);
        const float *us = utile(s);
        const int steps = (min(XPM_KC, k1 - k0 - c * XPM_KC) + 15) / 16;
        for (int q = 0; q < steps; q++) {
            /* A (m16 x k16, row): words (row g, k 2t), (g + 8, 2t), (g, 2t + 8), (g + 8, 2t + 8);
             * B (k16 x n8, col): words (k 2t, column g), (k 2t + 8, g); two elements a word, k ascending */
            uint32_t hi[MT][4], lo[MT][4], b[4][2];
#pragma unroll
            for (int i = 0; i < MT; i++) {
                const float *a = us + (wr + i * 16 + g) * XPM_LD + q * 16 + 2 * t;
                xpm_split(*reinterpret_cast<const float2 *>(a), hi[i][0], lo[i][0]);
                xpm_split(*reinterpret_cast<const float2 *>(a + 8 * XPM_LD), hi[i][1], lo[i][1]);
                xpm_split(*reinterpret_cast<const float2 *>(a + 8), hi[i][2], lo[i][2]);
                xpm_split(*reinterpret_cast<const float2 *>(a + 8 * XPM_LD + 8), hi[i][3], lo[i][3]);
            }
#pragma unroll
            for (int j = 0; j < 4; j++) {
                const __nv_bfloat16 *w = ws + (wc + j * 8 + g) * XPM_LD + q * 16 + 2 * t;
                b[j][0] = *reinterpret_cast<const uint32_t *>(w);
                b[j][1] = *reinterpret_cast<const uint32_t *>(w + 8);
            }
            /* hi before lo on every accumulator; the hi products of all tiles first,
             * so consecutive MMAs do not wait on each other */
#pragma unroll
            for (int i = 0; i < MT; i++)
#pragma unroll
                for (int j = 0; j < 4; j++) xpm_mma(acc[i][j], hi[i], b[j][0], b[j][1]);
#pragma unroll
            for (int i = 0; i < MT; i++)
#pragma unroll
                for (int j = 0; j < 4; j++) xpm_mma(acc[i][j], lo[i], b[j][0], b[j][1]);
        }
        if (c + ns < nch) { /* a ring: the stage refilled once every warp is done with it */
            __syncthreads();
            load_w(c + ns, s);
            load_u(c + ns, s);
            xpm_commit();
        }
    }

    /* The partial tile over the stages (C: rows g and g + 8, columns 2t and 2t + 1). */
    __syncthreads();
    float *part = reinterpret_cast<float *>(xpm_smem);
#pragma unroll
    for (int i = 0; i < MT; i++)
#pragma unroll
        for (int j = 0; j < 4; j++) {
            float *p = part + (wr + i * 16 + g) * XPM_PLD + wc + j * 8 + 2 * t;
            *reinterpret_cast<float2 *>(p) = make_float2(acc[i][j][0], acc[i][j][1]);
            *reinterpret_cast<float2 *>(p + 8 * XPM_PLD) = make_float2(acc[i][j][2], acc[i][j][3]);
        }
    cluster.sync(); /* release / acquire: every block's partial tile is visible to the cluster */
    const int rpb = BM / cs; /* rows this block sums */
    for (int i = threadIdx.x; i < rpb * (XPM_BN / 4); i += XP_THREADS) {
        const int r = rank * rpb + i / (XPM_BN / 4), cc = i % (XPM_BN / 4) * 4, off = r * XPM_PLD + cc;
        float4 sum = *reinterpret_cast<const float4 *>(cluster.map_shared_rank(part, 0) + off);
#pragma unroll 4
        for (int q = 1; q < cs; q++) {
            const float4 v = *reinterpret_cast<const float4 *>(cluster.map_shared_rank(part, q) + off);
            sum.x += v.x;
            sum.y += v.y;
            sum.z += v.z;
            sum.w += v.w;
        }
        const float o[4] = {sum.x, sum.y, sum.z, sum.w};
        if (row0 + r < rows)
#pragma unroll
            for (int e = 0; e < 4; e++)
                if (col0 + cc + e < n_out) y[(size_t)(row0 + r) * ldy + col0 + cc + e] = o[e];
    }
    cluster.sync(); /* no block's shared memory goes while a peer may still read it */
#endif
}

/* The tile shapes, smallest first: rows per warp (BMW), columns per lane
 * (CPL; the block's columns are 8 CPL), row groups (RW). xp_dispatch
 * instantiates the same list. */
struct xp_shape {
    int bmw, cpl, rw;
};
static const xp_shape xp_shapes[] = {{1, 1, 1}, {2, 2, 1}, {4, 2, 1}, {4, 4, 1}, {4, 4, 2}, {4, 4, 4}, {4, 4, 8}};
#define XP_SHAPES ((int)(sizeof xp_shapes / sizeof xp_shapes[0]))

/* The tensor-core shapes (variants XP_SHAPES + 1 ...): rows a tile (BM) and
 * blocks a cluster (CS). */
struct xp_mma_shape {
    int bm, cs;
};
static const xp_mma_shape xp_mma_shapes[] = {{32, 8}, {32, 16}, {64, 8}, {64, 16}, {64, 4}};
#define XP_MMA_SHAPES ((int)(sizeof xp_mma_shapes / sizeof xp_mma_shapes[0]))
static_assert(XP_SHAPES + XP_MMA_SHAPES == BMC_X_PROJ_VARIANTS, "kernels.cuh names the number of variants");

/* The shape by rows, from the harness's timings on the H100 (dev/x_proj_rows,
 * 2.8B widths, per launch): 64 rows 8.9 us with {2, 2, 1} (a cost model of
 * waves over the SMs had picked 12.4 us), 256 rows 15.1 us with {4, 2, 1}
 * (it had picked 25.8), 1024 rows 44.9 us with {4, 4, 1} (52.8). */
static int xp_choose(int rows) { return rows <= 128 ? 1 : rows <= 512 ? 2 : 3; }

template <typename T, int BMW, int CPL, int RW>
static cudaError_t xp_launch(const float *u, int ldu, int rows, int K, const void *W, int n_out, float *y, int ldy,
                             cudaStream_t stream, int pdl) {
    const dim3 grid((unsigned)((n_out + 8 * CPL - 1) / (8 * CPL)), (unsigned)((rows + BMW * RW - 1) / (BMW * RW)));
    return bmc_launch(x_proj_rows_kernel<T, BMW, CPL, RW>, grid, dim3(XP_THREADS), 0, stream, pdl, u, ldu, rows, K,
                      reinterpret_cast<const T *>(W), n_out, y, ldy);
}

template <typename T>
static cudaError_t xp_dispatch(int shape, const float *u, int ldu, int rows, int K, const void *W, int n_out, float *y,
                               int ldy, cudaStream_t stream, int pdl) {
    switch (shape) {
    case 0: return xp_launch<T, 1, 1, 1>(u, ldu, rows, K, W, n_out, y, ldy, stream, pdl);
    case 1: return xp_launch<T, 2, 2, 1>(u, ldu, rows, K, W, n_out, y, ldy, stream, pdl);
    case 2: return xp_launch<T, 4, 2, 1>(u, ldu, rows, K, W, n_out, y, ldy, stream, pdl);
    case 3: return xp_launch<T, 4, 4, 1>(u, ldu, rows, K, W, n_out, y, ldy, stream, pdl);
    case 4: return xp_launch<T, 4, 4, 2>(u, ldu, rows, K, W, n_out, y, ldy, stream, pdl);
    case 5: return xp_launch<T, 4, 4, 4>(u, ldu, rows, K, W, n_out, y, ldy, stream, pdl);
    default: return xp_launch<T, 4, 4, 8>(u, ldu, rows, K, W, n_out, y, ldy, stream, pdl);
    }
}

/* The current device's compute capability (10 major + minor) and opt-in
 * shared memory per block, asked once per device and cached: attribute
 * queries only, so a first call inside a stream capture is safe. 0 when the
 * device cannot be asked. */
#define XP_MAX_DEVICES 64
static int xp_info[XP_MAX_DEVICES]; /* smem << 8 | cc; 0 until asked */
static int xp_device(int *smem) {
    int dev = 0, major = 0, minor = 0, optin = 0;
    *smem = 0;
    if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= XP_MAX_DEVICES) return 0;
    int info = __atomic_load_n(&xp_info[dev], __ATOMIC_ACQUIRE);
    if (!info) {
        if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess ||
            cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev) != cudaSuccess ||
            cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) != cudaSuccess)
            return 0;
        info = optin << 8 | (10 * major + minor);
        __atomic_store_n(&xp_info[dev], info, __ATOMIC_RELEASE);
    }
    *smem = info >> 8;
    return info & 255;
}

/* As many 64-element stages of the longest rank's K range as fit (all of
 * it at the released widths from CS 8 up: its loads all start at once). */
template <int BM>
static cudaError_t xp_mma_launch(int cs, int smem_max, const float *u, int ldu, int rows, int K, const void *W,
                                 int n_out, float *y, int ldy, cudaStream_t stream, int pdl) {
    const int per = ((K + 15) / 16 + cs - 1) / cs * 16;
    const int stages = min(min((per + XPM_KC - 1) / XPM_KC, XPM_MAX_STAGES), smem_max / XPM_STAGE(BM));
    if (stages < 1) return cudaErrorNotSupported;
    const size_t smem = (size_t)stages * XPM_STAGE(BM);
    void (*kernel)(const float *, int, int, int, const __nv_bfloat16 *, int, float *, int, int) =
        x_proj_mma_kernel<BM>;
    cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
    if (e == cudaSuccess && cs > 8) e = cudaFuncSetAttribute(kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1);
    if (e != cudaSuccess) return e;
    const dim3 grid((unsigned)cs, (unsigned)((rows + BM - 1) / BM), (unsigned)((n_out + XPM_BN - 1) / XPM_BN));
    return bmc_launch_cluster(kernel, grid, dim3(XP_THREADS), smem, stream, pdl, (unsigned)cs, u, ldu, rows, K,
                              reinterpret_cast<const __nv_bfloat16 *>(W), n_out, y, ldy, stages);
}

/* The kernel's own choice: the tensor cores for bf16 weights on sm_90 from
 * 16 rows, the CUDA cores otherwise. (BM, CS) by rows, from the harness's
 * timings on the H100 (dev/x_proj_rows, 2.8B widths, per launch, against
 * the best CUDA-core shape): up to 64 rows (32, 16), 9.2 us (9.1); up to 512
 * (32, 8), 10.9 us at 256 (15.4); above (64, 4), 21.4 us at 1024 (44.5).
 * 16-block clusters are not portable: on devices other than 9.0, (32, 8). */
static int xp_resolve(int variant, int rows, int wtype, int cc) {
    if (variant) return variant;
    if (wtype == BMC_F16 || cc < 90 || rows < 16) return 1 + xp_choose(rows);
    if (rows > 512) return XP_SHAPES + 5;                      /* (64, 4) */
    return XP_SHAPES + (rows <= 64 && cc == 90 ? 2 : 1);       /* (32, 16) or (32, 8) */
}

int bmc_x_proj_rows_variant(int variant, int rows, int wtype, int *bm, int *cs) {
    int smem_max = 0;
    const int v = xp_resolve(variant, rows, wtype, xp_device(&smem_max));
    const bool mma = v > XP_SHAPES && v <= BMC_X_PROJ_VARIANTS;
    *bm = mma ? xp_mma_shapes[v - XP_SHAPES - 1].bm : 0;
    *cs = mma ? xp_mma_shapes[v - XP_SHAPES - 1].cs : 0;
    return v;
}

cudaError_t bmc_x_proj_rows(const float *u, int ldu, int rows, int K, const void *W, int wtype, int n_out, float *y,
                            int ldy, int variant, cudaStream_t stream, int pdl) {
    if (rows <= 0 || n_out <= 0) return cudaSuccess;
    if (K <= 0 || K % 8 || ldu % 4 || ((uintptr_t)u & 15) || ((uintptr_t)W & 15) || variant < 0 ||
        variant > BMC_X_PROJ_VARIANTS)
        return cudaErrorInvalidValue;
    int smem_max = 0;
    const int cc = xp_device(&smem_max);
    const int v = xp_resolve(variant, rows, wtype, cc);
    if (v > XP_SHAPES) {
        if (wtype == BMC_F16 || cc < 90) return cudaErrorNotSupported;
        const xp_mma_shape s = xp_mma_shapes[v - XP_SHAPES - 1];
        if ((rows + s.bm - 1) / s.bm > 65535) return cudaErrorInvalidValue;
        return s.bm == 32 ? xp_mma_launch<32>(s.cs, smem_max, u, ldu, rows, K, W, n_out, y, ldy, stream, pdl)
                          : xp_mma_launch<64>(s.cs, smem_max, u, ldu, rows, K, W, n_out, y, ldy, stream, pdl);
    }
    const int shape = v - 1;
    const int bm = xp_shapes[shape].bmw * xp_shapes[shape].rw;
    if ((rows + bm - 1) / bm > 65535) return cudaErrorInvalidValue;
    if (wtype == BMC_F16) return xp_dispatch<__half>(shape, u, ldu, rows, K, W, n_out, y, ldy, stream, pdl);
    return xp_dispatch<__nv_bfloat16>(shape, u, ldu, rows, K, W, n_out, y, ldy, stream, pdl);
}
