/* Decode row path: x_proj, xdbl = u Wx^T for all the streams of a step (u f32
 * [rows, K], Wx 16-bit [n_out, K], n_out = dt_rank + 2 d_state, about a
 * hundred), on the CUDA cores in f32. The matrix is small (0.7 MB at the
 * 2.8B width) and the input already f32, so this replaces a tensor-core GEMM
 * over the input's two 16-bit halves, its split-K reduce and the fold of
 * the halves: one launch, f32 products of the f32 inputs.
 *
 * Work split. Every block computes a tile of rows x columns over the whole
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
 *
 * Launched with PDL in the row path (pdl): a block asks L2 for its weight
 * rows, then waits for the conv step before it reads u. */
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

/* The tile shapes, smallest first: rows per warp (BMW), columns per lane
 * (CPL; the block's columns are 8 CPL), row groups (RW). xp_dispatch
 * instantiates the same list. */
struct xp_shape {
    int bmw, cpl, rw;
};
static const xp_shape xp_shapes[] = {{1, 1, 1}, {2, 2, 1}, {4, 2, 1}, {4, 4, 1}, {4, 4, 2}, {4, 4, 4}, {4, 4, 8}};
#define XP_SHAPES ((int)(sizeof xp_shapes / sizeof xp_shapes[0]))
static_assert(XP_SHAPES == BMC_X_PROJ_VARIANTS, "kernels.cuh names the number of tile shapes");

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

cudaError_t bmc_x_proj_rows(const float *u, int ldu, int rows, int K, const void *W, int wtype, int n_out, float *y,
                            int ldy, int variant, cudaStream_t stream, int pdl) {
    if (rows <= 0 || n_out <= 0) return cudaSuccess;
    if (K <= 0 || K % 8 || ldu % 4 || ((uintptr_t)u & 15) || ((uintptr_t)W & 15) || variant < 0 ||
        variant > XP_SHAPES)
        return cudaErrorInvalidValue;
    const int shape = variant ? variant - 1 : xp_choose(rows);
    const int bm = xp_shapes[shape].bmw * xp_shapes[shape].rw;
    if ((rows + bm - 1) / bm > 65535) return cudaErrorInvalidValue;
    if (wtype == BMC_F16) return xp_dispatch<__half>(shape, u, ldu, rows, K, W, n_out, y, ldy, stream, pdl);
    return xp_dispatch<__nv_bfloat16>(shape, u, ldu, rows, K, W, n_out, y, ldy, stream, pdl);
}
