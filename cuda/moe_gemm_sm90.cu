/* The grouped expert GEMM of the decode row path (bmc_moe_gemm) on Hopper's
 * asynchronous tensor-core path: TMA, mbarriers and wgmma (sm_90a).
 *
 * Why: from tens of rows per expert the register-streaming kernels and the
 * WMMA tiles of moe_gemm.cu stream the experts at 1.1-2 TB/s (docs/PERF.md):
 * their copies wait on their math and every block drains its pipeline at
 * the end of its tile. Here one block per SM stays resident and walks a
 * list of units; a producer warp streams each unit's operands into a ring of
 * shared-memory stages with TMA copies and runs ahead across unit
 * boundaries, while two consumer warpgroups multiply with wgmma, whose
 * operands come straight from shared memory.
 *
 * A unit is 128 weight rows of one expert (gated fc1: 64 features' value
 * rows and their gate rows) times the expert's rows of the batch (a pass of
 * up to `np` of them; experts with more take more passes) over all of K or
 * one K slice (PARTIAL). The weights are wgmma's A operand (M = 64 per
 * warpgroup, K-major, 128-byte swizzle, as TMA lays them out); the batch
 * rows are B (N = the pass's rows rounded up to 16, 32, 64 or 128), in boxes
 * of 8 (or 32) rows so that little more than the unit's rows cross from L2,
 * their hi and lo halves (x_lo_rows) as two B tiles multiplied into the same
 * accumulators (TMA cannot gather: the rows come in the sorted order,
 * gathered by bmc_group_rows in the decode row path). Gated fc1
 * takes its weight rows through a 5-D tensor map (k, row in a group of 8,
 * value/gate, group, expert) so that each 16 rows of a warp's A are 8
 * features' value rows and then their gate rows: a thread holds a feature's
 * value and gate products in its own registers and the epilogue needs no
 * exchange.
 *
 * Units are dealt round robin over the blocks, consecutive units being
 * neighbouring weight tiles of the same expert and pass, so the blocks that
 * run together share the expert's activations in L2.
 *
 * Under PDL (a->pdl, the row path) a block initialises its barriers and
 * prefetches the two tensor maps while the previous kernel (the grouping
 * and gather, or fc1) drains, then waits before it reads the routing and
 * before the producer's first TMA copy. */
#include <cuda.h> /* CUtensorMap and its encoder's types; the encoder comes from the driver at run time */
#include <stdlib.h>

#include "device_util.cuh"
#include "kernels.cuh"
#include "moe_epilogue.cuh"

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#include "async_copy.cuh"
#endif

#define MW_BM 128                /* weight rows per unit: two warpgroups of 64 */
#define MW_BK 64                 /* k per TMA box: 128 bytes of a row, one swizzle span */
#define MW_THREADS (256 + 32)    /* two consumer warpgroups, one producer warp */
#define MW_A_BYTES (MW_BM * MW_BK * 2)
#define MW_MAX_STAGES 8
#define MW_MAX_NP 128            /* batch rows per pass at most */

/* A stage of 64 k: the A tile, then B hi and B lo (np rows of 128 bytes each). */
static __host__ __device__ __forceinline__ int mw_box_bytes(int np, bool split) {
    return MW_A_BYTES + (split ? 2 : 1) * np * MW_BK * 2;
}

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define MW_DEVICE 1

/* A wgmma shared-memory matrix descriptor: K-major, 128-byte swizzle, rows of
 * 128 bytes, 8-row groups 1024 bytes apart (the stride byte offset; the
 * leading one is unused with this swizzle). Moving 16 k along a row is 32
 * bytes on the start address: the hardware applies the swizzle to the
 * address it forms, as TMA did when it wrote. */
__device__ __forceinline__ uint64_t mw_desc(const void *p) {
    const uint64_t addr = smem_addr(p);
    return ((addr & 0x3FFFF) >> 4) | ((uint64_t)1 << 16) | ((uint64_t)(1024 >> 4) << 32) | ((uint64_t)1 << 62);
}

#define MW_D4(i) "+f"(d[i]), "+f"(d[(i) + 1]), "+f"(d[(i) + 2]), "+f"(d[(i) + 3])
#define MW_D8(i) MW_D4(i), MW_D4((i) + 4)
#define MW_OUT_16 MW_D8(0)
#define MW_OUT_32 MW_D8(0), MW_D8(8)
#define MW_OUT_64 MW_OUT_32, MW_D8(16), MW_D8(24)
#define MW_OUT_128 MW_OUT_64, MW_D8(32), MW_D8(40), MW_D8(48), MW_D8(56)
#define MW_OPS_16 "%0,%1,%2,%3,%4,%5,%6,%7"
#define MW_OPS_32 MW_OPS_16 ",%8,%9,%10,%11,%12,%13,%14,%15"
#define MW_OPS_64 MW_OPS_32 ",%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31"
#define MW_OPS_128                                                                                                    \
    MW_OPS_64 ",%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,%48,%49,%50,%51,%52,%53,%54,%55,%56," \
              "%57,%58,%59,%60,%61,%62,%63"
/* operands after the accumulators: A descriptor, B descriptor, scale-d */
#define MW_TAIL_16 "%8, %9, p, 1, 1, 0, 0;\n", "%10"
#define MW_TAIL_32 "%16, %17, p, 1, 1, 0, 0;\n", "%18"
#define MW_TAIL_64 "%32, %33, p, 1, 1, 0, 0;\n", "%34"
#define MW_TAIL_128 "%64, %65, p, 1, 1, 0, 0;\n", "%66"
#define MW_ASM2(N, TY, AB, SC)                                                                                        \
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, " SC ", 0;\nwgmma.mma_async.sync.aligned.m64n" #N "k16.f32." TY  \
                 " {" MW_OPS_##N "}, " AB "}\n"                                                                       \
                 : MW_OUT_##N                                                                                         \
                 : "l"(da), "l"(db), "r"(1))
#define MW_ASM1(N, TY, TAIL) MW_ASM2(N, TY, TAIL)
#define MW_ASM(N, TY) MW_ASM1(N, TY, MW_TAIL_##N)

/* d (64 x N, f32, the warpgroup's fragment) += A (64 x 16) B (16 x N). */
template <int N, typename T> __device__ __forceinline__ void mw_mma(float (&d)[N / 2], uint64_t da, uint64_t db);
#define MW_MMA_FOR(N)                                                                                                 \
    template <> __device__ __forceinline__ void mw_mma<N, __nv_bfloat16>(float (&d)[N / 2], uint64_t da, uint64_t db) { \
        MW_ASM(N, "bf16.bf16");                                                                                       \
    }                                                                                                                 \
    template <> __device__ __forceinline__ void mw_mma<N, __half>(float (&d)[N / 2], uint64_t da, uint64_t db) {      \
        MW_ASM(N, "f16.f16");                                                                                         \
    }
MW_MMA_FOR(16)
MW_MMA_FOR(32)
MW_MMA_FOR(64)
MW_MMA_FOR(128)

__device__ __forceinline__ void mw_fence() { asm volatile("wgmma.fence.sync.aligned;" ::: "memory"); }
__device__ __forceinline__ void mw_commit() { asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory"); }
__device__ __forceinline__ void mw_wait_all() { asm volatile("wgmma.wait_group.sync.aligned 0;" ::: "memory"); }
__device__ __forceinline__ void mw_wait_one() { asm volatile("wgmma.wait_group.sync.aligned 1;" ::: "memory"); }

/* TMA tile copies (3-D plain weights, 5-D gated fc1), completion on bar. */
/* The weights with an L2 policy (evict first: read once, they should not
 * push the batch rows, which every unit of an expert reads, out of L2). */
__device__ __forceinline__ void mw_tma3(void *dst, const CUtensorMap *map, int c0, int c1, int c2, uint64_t *bar,
                                        uint64_t policy) {
    asm volatile("cp.async.bulk.tensor.3d.shared::cluster.global.tile.mbarrier::complete_tx::bytes.L2::cache_hint [%0], "
                 "[%1, {%2, %3, %4}], [%5], %6;" ::"r"(smem_addr(dst)),
                 "l"(map), "r"(c0), "r"(c1), "r"(c2), "r"(smem_addr(bar)), "l"(policy)
                 : "memory");
}
__device__ __forceinline__ void mw_tma2(void *dst, const CUtensorMap *map, int c0, int c1, uint64_t *bar) {
    asm volatile("cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], "
                 "[%4];" ::"r"(smem_addr(dst)),
                 "l"(map), "r"(c0), "r"(c1), "r"(smem_addr(bar))
                 : "memory");
}
__device__ __forceinline__ void mw_tma2_hint(void *dst, const CUtensorMap *map, int c0, int c1, uint64_t *bar,
                                             uint64_t policy) {
    asm volatile("cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes.L2::cache_hint [%0], "
                 "[%1, {%2, %3}], [%4], %5;" ::"r"(smem_addr(dst)),
                 "l"(map), "r"(c0), "r"(c1), "r"(smem_addr(bar)), "l"(policy)
                 : "memory");
}
__device__ __forceinline__ void mw_tma5(void *dst, const CUtensorMap *map, int c0, int c1, int c2, int c3, int c4,
                                        uint64_t *bar, uint64_t policy) {
    asm volatile("cp.async.bulk.tensor.5d.shared::cluster.global.tile.mbarrier::complete_tx::bytes.L2::cache_hint [%0], "
                 "[%1, {%2, %3, %4, %5, %6}], [%7], %8;" ::"r"(smem_addr(dst)),
                 "l"(map), "r"(c0), "r"(c1), "r"(c2), "r"(c3), "r"(c4), "r"(smem_addr(bar)), "l"(policy)
                 : "memory");
}
__device__ __forceinline__ uint64_t mw_policy(bool evict_first) {
    uint64_t p;
    if (evict_first) asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;" : "=l"(p));
    else asm volatile("createpolicy.fractional.L2::evict_normal.b64 %0, 1.0;" : "=l"(p));
    return p;
}
#endif

/* The work of one launch, the same for the producer and the consumers. */
struct mw_plan {
    int E, mtiles, slices, nkb, per_slice, np;
    int box_rows; /* batch rows per TMA box (8 or 32) */
    int debug; /* measurement (BM_CUDA_MOE_SM90_DEBUG, junk output): 1 no products, 2 no batch rows copied, 3 neither;
                  4: weights without the evict-first hint (not junk); 8: each weight tile read as one
                  contiguous 16 KB box, as a tile-by-tile layout would store it (junk) */
};
struct mw_unit {
    int e, mt, slice, r0, rows, kb0, kb1;
};
/* One GEMM of a launch. A launch runs one, or two chained (fc1, then fc2
 * of the same routing: bmc_moe_chain_sm90), whose units follow each other
 * in one list. */
struct mw_gemm {
    bmc_moe_gemm_args a;
    mw_plan p;
};

#ifdef MW_DEVICE
/* Unit u of the launch: s_unit0[e] is expert e's first unit. */
__device__ __forceinline__ mw_unit mw_unit_of(const bmc_moe_gemm_args &a, const mw_plan &p, const int *s_unit0, int u) {
    mw_unit w;
    int e = 0;
    while (e + 1 < p.E && s_unit0[e + 1] <= u) e++;
    const int local = u - s_unit0[e], rest = local / p.mtiles;
    const int start = a.expert_start ? a.expert_start[e] : 0;
    const int rows = a.expert_start ? a.expert_start[e + 1] - start : a.max_rows;
    const int pass = rest / p.slices;
    w.e = e;
    w.mt = local % p.mtiles;
    w.slice = rest % p.slices;
    w.r0 = start + pass * p.np;
    w.rows = min(p.np, rows - pass * p.np);
    w.kb0 = w.slice * p.per_slice;
    w.kb1 = min(p.nkb, w.kb0 + p.per_slice);
    return w;
}

/* A chained launch's count of finished fc1 work, read with acquire
 * semantics (the outputs it counts are visible after it). */
__device__ __forceinline__ int mw_load_acquire(const int *p) {
    int v;
    asm volatile("ld.acquire.gpu.global.b32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
    return v;
}

/* The producer warp: for every stage (64 k) of every unit of this block, the
 * unit's A tile and its batch rows' hi and lo tiles, by TMA (one lane). In
 * a chained launch, before an fc2 unit of expert e: the wait until every
 * consumer warp of every fc1 unit of e has counted itself in done[e] (fc2's
 * batch rows are those units' outputs). */
__device__ void mw_produce(const mw_gemm &g0, const CUtensorMap *wmap0, const CUtensorMap *xmap0, const mw_gemm &g1,
                           const CUtensorMap *wmap1, const CUtensorMap *xmap1, const int *done,
                           const int (*s_unit0)[65], unsigned char *smem, uint64_t *full, uint64_t *empty,
                           int stages) {
    if ((threadIdx.x & 31) != 0) return;
    const int total0 = s_unit0[0][g0.p.E], total = total0 + (g1.p.E ? s_unit0[1][g1.p.E] : 0);
    const int box = mw_box_bytes(g0.p.np, g0.a.x_lo_rows > 0); /* the same for both (host) */
    const uint64_t policy = mw_policy(!(g0.p.debug & 4));
    int it = 0;
    for (int v = blockIdx.x; v < total; v += gridDim.x) {
        const int j = v >= total0, u = j ? v - total0 : v;
        const mw_gemm &g = j ? g1 : g0;
        const bmc_moe_gemm_args &a = g.a;
        const mw_plan &p = g.p;
        const CUtensorMap *wmap = j ? wmap1 : wmap0, *xmap = j ? xmap1 : xmap0;
        const bool gated = a.mode == BMC_MOE_GATED, split = a.x_lo_rows > 0;
        const mw_unit w = mw_unit_of(a, p, s_unit0[j], u);
        if (j && done) {
            const int want = (MW_THREADS - 32) / 32 * (s_unit0[0][w.e + 1] - s_unit0[0][w.e]);
            while (mw_load_acquire(done + w.e) < want) __nanosleep(64);
            asm volatile("fence.proxy.async.global;" ::: "memory"); /* TMA (async proxy) reads after the acquire */
        }
        /* the pass's rows in boxes of box_rows: little more than the unit uses crosses from L2 */
        const int groups = (p.debug & 2) ? 0 : (w.rows + p.box_rows - 1) / p.box_rows;
        const unsigned bytes = MW_A_BYTES + (split ? 2 : 1) * groups * p.box_rows * 128;
        for (int kb = w.kb0; kb < w.kb1; kb++, it++) {
            const int s = it % stages;
            if (it >= stages) mbar_wait(&empty[s], ((it / stages) & 1) ^ 1);
            mbar_expect_tx(&full[s], bytes);
            unsigned char *st = smem + (size_t)s * box;
            const int k = kb * MW_BK;
            if (p.debug & 8) mw_tma2_hint(st, wmap, 0, ((w.e * p.mtiles + w.mt) * p.nkb + kb) * MW_BM, &full[s], policy);
            else if (gated) mw_tma5(st, wmap, k, 0, 0, w.mt * (MW_BM / 16), w.e, &full[s], policy);
            else mw_tma3(st, wmap, k, w.mt * MW_BM, w.e, &full[s], policy);
            for (int q = 0; q < groups; q++) {
                const int r = q * p.box_rows;
                mw_tma2(st + MW_A_BYTES + r * 128, xmap, k, w.r0 + r, &full[s]);
                if (split) mw_tma2(st + MW_A_BYTES + (p.np + r) * 128, xmap, k, w.r0 + a.x_lo_rows + r, &full[s]);
            }
        }
    }
}

/* One consumer warpgroup's unit at wgmma width N: the products over the
 * unit's k-steps, then the epilogue. it: the block's stage counter. */
template <typename T, int N>
__device__ __forceinline__ void mw_consume(const bmc_moe_gemm_args &a, const mw_plan &p, const mw_unit &w,
                                           unsigned char *smem, uint64_t *full, uint64_t *empty, int stages, int &it) {
    const bool gated = a.mode == BMC_MOE_GATED, split = a.x_lo_rows > 0;
    const int box = mw_box_bytes(p.np, split);
    const int wg = threadIdx.x >> 7, warp = (threadIdx.x >> 5) & 3, lane = threadIdx.x & 31;
    float d[N / 2];
#pragma unroll
    for (int i = 0; i < N / 2; i++) d[i] = 0.0f;
    /* one group of MMAs stays in flight: a stage is released once the next stage's MMAs are issued */
    int prev = -1;
    for (int kb = w.kb0; kb < w.kb1; kb++, it++) {
        const int s = it % stages;
        mbar_wait(&full[s], (it / stages) & 1);
        mw_fence();
        const unsigned char *st = smem + (size_t)s * box;
        const unsigned char *A = st + wg * (MW_A_BYTES / 2), *Bh = st + MW_A_BYTES, *Bl = Bh + p.np * 128;
#pragma unroll
        for (int kk = 0; kk < ((p.debug & 1) ? 0 : MW_BK / 16); kk++) {
            mw_mma<N, T>(d, mw_desc(A + kk * 32), mw_desc(Bh + kk * 32));
            if (split) mw_mma<N, T>(d, mw_desc(A + kk * 32), mw_desc(Bl + kk * 32));
        }
        mw_commit();
        mw_wait_one();
        if (prev >= 0) {
            __syncwarp();
            if (lane == 0) mbar_arrive(&empty[prev]);
        }
        prev = s;
    }
    mw_wait_all();
    if (prev >= 0) {
        __syncwarp();
        if (lane == 0) mbar_arrive(&empty[prev]);
    }
    /* d[4j + q]: A row 16 warp + g, batch row 8j + 2c + q of the pass; d[4j + 2 + q]: A row 16 warp + g + 8 */
    const int g = lane >> 2, c = lane & 3;
    const float *bias = a.bias ? a.bias + (size_t)w.e * (size_t)a.bias_stride : nullptr;
#pragma unroll
    for (int j = 0; j < N / 8; j++)
#pragma unroll
        for (int q = 0; q < 2; q++) {
            const int col = 8 * j + 2 * c + q;
            if (col >= w.rows) continue;
            const int gr = w.r0 + col;
            if (gated) { /* group 4 wg + warp of the unit's 8: rows g value, g + 8 gate of one feature */
                const int f = w.mt * (MW_BM / 2) + 8 * (4 * wg + warp) + g;
                if (f < a.N) mg_finish_gated<T>(a, bias, gr, f, d[4 * j + q], d[4 * j + 2 + q]);
            } else {
                const int n = w.mt * MW_BM + 64 * wg + 16 * warp + g;
                if (n < a.N) mg_finish<T>(a, bias, w.slice, gr, n, d[4 * j + q]);
                if (n + 8 < a.N) mg_finish<T>(a, bias, w.slice, gr, n + 8, d[4 * j + 2 + q]);
            }
        }
}
#endif

/* g1.p.E 0: g0 alone. Otherwise g0 is fc1 and g1 fc2 of the same routing,
 * done[E] zero at the start (bmc_moe_chain_sm90). */
template <typename T>
__global__ void __launch_bounds__(MW_THREADS, 1)
    moe_wgmma_kernel(const __grid_constant__ mw_gemm g0, const __grid_constant__ CUtensorMap wmap0,
                     const __grid_constant__ CUtensorMap xmap0, const __grid_constant__ mw_gemm g1,
                     const __grid_constant__ CUtensorMap wmap1, const __grid_constant__ CUtensorMap xmap1, int *done,
                     int stages) {
#ifdef MW_DEVICE
    extern __shared__ unsigned char mw_smem_raw[];
    unsigned char *smem = reinterpret_cast<unsigned char *>(((uintptr_t)mw_smem_raw + 1023) & ~(uintptr_t)1023);
    __shared__ uint64_t full[MW_MAX_STAGES], empty[MW_MAX_STAGES];
    __shared__ int s_unit0[2][65]; /* per GEMM: first unit of each expert; [E]: all its units */
    /* PDL: the barriers and the tensor maps (kernel parameters) are set up
     * while the previous kernel drains; the routing, the batch rows (the
     * gather's output, read by TMA) and every store come after the wait */
    bmc_grid_trigger();
    if (threadIdx.x == 0) {
        for (int i = 0; i < stages; i++) {
            mbar_init(&full[i], 1); /* the producer's expect_tx, then the bytes */
            mbar_init(&empty[i], 8);                    /* every consumer warp */
        }
        mbar_init_fence();
    } else if (threadIdx.x == 256) {
        asm volatile("prefetch.tensormap [%0];" ::"l"(reinterpret_cast<uint64_t>(&wmap0)) : "memory");
        asm volatile("prefetch.tensormap [%0];" ::"l"(reinterpret_cast<uint64_t>(&xmap0)) : "memory");
        if (g1.p.E) {
            asm volatile("prefetch.tensormap [%0];" ::"l"(reinterpret_cast<uint64_t>(&wmap1)) : "memory");
            asm volatile("prefetch.tensormap [%0];" ::"l"(reinterpret_cast<uint64_t>(&xmap1)) : "memory");
        }
    }
    bmc_grid_wait();
    if (threadIdx.x < 2) {
        const mw_gemm &g = threadIdx.x ? g1 : g0;
        int run = 0;
        for (int e = 0; e < g.p.E; e++) {
            s_unit0[threadIdx.x][e] = run;
            const int rows = g.a.expert_start ? g.a.expert_start[e + 1] - g.a.expert_start[e] : g.a.max_rows;
            run += (rows + g.p.np - 1) / g.p.np * g.p.slices * g.p.mtiles;
        }
        s_unit0[threadIdx.x][g.p.E] = run;
    }
    __syncthreads();
    if (threadIdx.x >= 256) {
        mw_produce(g0, &wmap0, &xmap0, g1, &wmap1, &xmap1, done, s_unit0, smem, full, empty, stages);
        return;
    }
    const int total0 = s_unit0[0][g0.p.E], total = total0 + (g1.p.E ? s_unit0[1][g1.p.E] : 0);
    int it = 0;
    for (int v = blockIdx.x; v < total; v += gridDim.x) {
        const int j = v >= total0;
        const mw_gemm &g = j ? g1 : g0;
        const mw_unit w = mw_unit_of(g.a, g.p, s_unit0[j], j ? v - total0 : v);
        if (w.rows <= 16) mw_consume<T, 16>(g.a, g.p, w, smem, full, empty, stages, it);
        else if (w.rows <= 32) mw_consume<T, 32>(g.a, g.p, w, smem, full, empty, stages, it);
        else if (w.rows <= 64) mw_consume<T, 64>(g.a, g.p, w, smem, full, empty, stages, it);
        else mw_consume<T, 128>(g.a, g.p, w, smem, full, empty, stages, it);
        if (!j && g1.p.E && done) { /* the warp's outputs of this fc1 unit, counted for fc2's producer */
            asm volatile("fence.proxy.async.global;" ::: "memory"); /* they will be read by TMA */
            __syncwarp();
            if ((threadIdx.x & 31) == 0) {
                __threadfence();
                atomicAdd(done + w.e, 1);
            }
        }
    }
#endif
}

/* Writes 1 where the sm_90a code above is what runs (an H100 with a build
 * that has sm_90a code: an sm_90 or PTX build runs the empty kernel). */
__global__ void moe_wgmma_probe(int *ok) {
#ifdef MW_DEVICE
    *ok = 1;
#else
    *ok = 0;
#endif
}

/* ---- host -------------------------------------------------------------------- */

typedef CUresult (*mw_encode_fn)(CUtensorMap *, CUtensorMapDataType, cuuint32_t, void *, const cuuint64_t *,
                                 const cuuint64_t *, const cuuint32_t *, const cuuint32_t *, CUtensorMapInterleave,
                                 CUtensorMapSwizzle, CUtensorMapL2promotion, CUtensorMapFloatOOBfill);

static mw_encode_fn mw_encoder(void) {
    static mw_encode_fn fn = [] {
        void *f = nullptr;
        cudaDriverEntryPointQueryResult q;
        if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000, cudaEnableDefault, &q) != cudaSuccess ||
            q != cudaDriverEntryPointSuccess)
            f = nullptr;
        return (mw_encode_fn)f;
    }();
    return fn;
}

template <typename T> struct mw_dtype;
template <> struct mw_dtype<__nv_bfloat16> { static const CUtensorMapDataType value = CU_TENSOR_MAP_DATA_TYPE_BFLOAT16; };
template <> struct mw_dtype<__half> { static const CUtensorMapDataType value = CU_TENSOR_MAP_DATA_TYPE_FLOAT16; };

#define MW_MAX_DEVICES 64
/* 0 unknown, 1 the sm_90a kernel runs here, -1 it does not; atomics: models
 * may be loaded from several threads */
static int mw_ready[MW_MAX_DEVICES];

int bmc_moe_sm90_probe(void) {
    int dev = 0, major = 0, minor = 0;
    if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= MW_MAX_DEVICES) return 0;
    const int known = __atomic_load_n(&mw_ready[dev], __ATOMIC_ACQUIRE);
    if (known) return known > 0;
    int ok = 0;
    if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) == cudaSuccess &&
        cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev) == cudaSuccess && major == 9 &&
        minor == 0 && mw_encoder()) {
        int *flag = nullptr;
        if (cudaMalloc(&flag, sizeof(int)) == cudaSuccess) {
            int host = 0;
            moe_wgmma_probe<<<1, 1>>>(flag);
            if (cudaGetLastError() == cudaSuccess && cudaMemcpy(&host, flag, sizeof host, cudaMemcpyDeviceToHost) ==
                                                         cudaSuccess)
                ok = host == 1;
            cudaFree(flag);
        }
    }
    cudaGetLastError(); /* a failed probe leaves no error behind */
    __atomic_store_n(&mw_ready[dev], ok ? 1 : -1, __ATOMIC_RELEASE);
    return ok;
}

int bmc_moe_sm90_ready(void) {
    int dev = 0;
    if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= MW_MAX_DEVICES) return 0;
    return __atomic_load_n(&mw_ready[dev], __ATOMIC_ACQUIRE) > 0;
}

/* Batch rows per pass for max_rows rows over E experts: room for the
 * fullest expert of an evenly random routing (mean + half again + 8), in
 * wgmma's widths. */
static int mw_pass_rows(const bmc_moe_gemm_args *a) {
    const int E = a->expert_start ? a->E : 1, mean = (a->max_rows + E - 1) / E, want = mean + mean / 2 + 8;
    return want <= 32 ? 32 : want <= 64 ? 64 : MW_MAX_NP;
}

static CUresult mw_encode(CUtensorMap *map, CUtensorMapDataType dt, int rank, const void *base, const cuuint64_t *dims,
                          const cuuint64_t *strides, const cuuint32_t *box) {
    const cuuint32_t unit[5] = {1, 1, 1, 1, 1};
    return mw_encoder()(map, dt, (cuuint32_t)rank, const_cast<void *>(base), dims, strides, box, unit,
                        CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                        CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
}

/* One launch of g0 (and with g1.p.E set, g1 chained after it): the ring's
 * stages as many as fit, one block per SM. */
template <typename T>
static cudaError_t mw_start(mw_gemm g0, const CUtensorMap &wmap0, const CUtensorMap &xmap0, mw_gemm g1,
                            const CUtensorMap &wmap1, const CUtensorMap &xmap1, int *done, cudaStream_t stream) {
    const bool split = g0.a.x_lo_rows > 0;
    for (mw_gemm *g : {&g0, &g1}) {
        if (!g->p.E) continue; /* no second GEMM */
        g->p.nkb = (g->a.K + MW_BK - 1) / MW_BK;
        g->p.per_slice = (g->p.nkb + g->p.slices - 1) / g->p.slices;
    }
    int dev = 0, sms = 0, optin = 0;
    cudaError_t e = cudaGetDevice(&dev);
    if (e == cudaSuccess) e = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
    if (e == cudaSuccess) e = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
    if (e != cudaSuccess) return e;
    const int static_bytes = 2 * MW_MAX_STAGES * 8 + 2 * 65 * 4;
    const int stage_bytes = mw_box_bytes(g0.p.np, split), room = optin - static_bytes - 1024;
    const int stages = min(MW_MAX_STAGES, room / stage_bytes);
    if (stages < 2) return cudaErrorNotSupported;
    const int smem = stages * stage_bytes + 1024; /* + the alignment of the ring to 1024 bytes */
    e = cudaFuncSetAttribute(moe_wgmma_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    if (e != cudaSuccess) return e;
    return bmc_launch(moe_wgmma_kernel<T>, dim3(sms), dim3(MW_THREADS), smem, stream, g0.a.pdl, g0, wmap0, xmap0, g1,
                      wmap1, xmap1, done, stages);
}

/* g's plan and tensor maps for its arguments; cudaErrorNotSupported where
 * this path cannot take them. */
template <typename T> static cudaError_t mw_prepare(const bmc_moe_gemm_args *a, mw_gemm *g, CUtensorMap *wmap,
                                                    CUtensorMap *xmap) {
    const bool gated = a->mode == BMC_MOE_GATED, split = a->x_lo_rows > 0;
    const int E = a->expert_start ? a->E : 1;
    if (!bmc_moe_sm90_ready() || a->K % 8 || (gated && a->N % 8) || ((uintptr_t)a->W & 15) || a->expert_stride % 8 ||
        a->ldx % 8 || ((uintptr_t)a->X & 15))
        return cudaErrorNotSupported;
    const CUtensorMapDataType dt = mw_dtype<T>::value;
    const cuuint64_t row = (cuuint64_t)a->K * 2, expert = (cuuint64_t)a->expert_stride * 2;
    CUresult r;
    if (gated) { /* (k, row of 8, value/gate, group of 8 features, expert) */
        const cuuint64_t dims[5] = {(cuuint64_t)a->K, 8, 2, (cuuint64_t)a->N / 8, (cuuint64_t)E};
        const cuuint64_t strides[4] = {row, (cuuint64_t)a->N * row, 8 * row, expert};
        const cuuint32_t box[5] = {MW_BK, 8, 2, MW_BM / 16, 1};
        r = mw_encode(wmap, dt, 5, a->W, dims, strides, box);
    } else { /* (k, row, expert) */
        const cuuint64_t dims[3] = {(cuuint64_t)a->K, (cuuint64_t)a->N, (cuuint64_t)E};
        const cuuint64_t strides[2] = {row, expert};
        const cuuint32_t box[3] = {MW_BK, MW_BM, 1};
        r = mw_encode(wmap, dt, 3, a->W, dims, strides, box);
    }
    static const int debug = [] {
        const char *v = getenv("BM_CUDA_MOE_SM90_DEBUG");
        return v ? atoi(v) : 0;
    }();
    if (debug & 8) { /* the same bytes as rows of 64 k, so a box of 128 of them is contiguous */
        const cuuint64_t dims[2] = {MW_BK, (cuuint64_t)E * (cuuint64_t)a->expert_stride / MW_BK};
        const cuuint64_t strides[1] = {MW_BK * 2};
        const cuuint32_t box[2] = {MW_BK, MW_BM};
        r = mw_encode(wmap, dt, 2, a->W, dims, strides, box);
    }
    memset(g, 0, sizeof *g);
    g->a = *a;
    mw_plan &p = g->p;
    p.E = E;
    p.mtiles = gated ? (a->N + MW_BM / 2 - 1) / (MW_BM / 2) : (a->N + MW_BM - 1) / MW_BM;
    p.slices = a->mode == BMC_MOE_PARTIAL ? (a->k_split > 0 ? a->k_split : 1) : 1;
    p.np = mw_pass_rows(a);
    /* boxes of 8 rows waste the least L2 traffic; at 128-row passes their number
     * per stage slowed the producer (1024 streams), so 32 there */
    p.box_rows = p.np > 64 ? 32 : 8;
    p.debug = debug;
    if (r == CUDA_SUCCESS) { /* the batch rows, hi then lo */
        const cuuint64_t dims[2] = {(cuuint64_t)a->K, (cuuint64_t)(split ? a->x_lo_rows * 2 : a->max_rows)};
        const cuuint64_t strides[1] = {(cuuint64_t)a->ldx * 2};
        const cuuint32_t box[2] = {MW_BK, (cuuint32_t)p.box_rows};
        r = mw_encode(xmap, dt, 2, a->X, dims, strides, box);
    }
    return r == CUDA_SUCCESS ? cudaSuccess : cudaErrorNotSupported;
}

template <typename T> static cudaError_t mw_launch(const bmc_moe_gemm_args *a, cudaStream_t stream) {
    mw_gemm g0, none;
    CUtensorMap wmap, xmap;
    const cudaError_t e = mw_prepare<T>(a, &g0, &wmap, &xmap);
    if (e != cudaSuccess) return e;
    memset(&none, 0, sizeof none);
    return mw_start<T>(g0, wmap, xmap, none, wmap, xmap, nullptr, stream);
}

template <typename T>
static cudaError_t mw_chain(const bmc_moe_gemm_args *fc1, const bmc_moe_gemm_args *fc2, int *done,
                            cudaStream_t stream) {
    mw_gemm g0, g1;
    CUtensorMap wmap0, xmap0, wmap1, xmap1;
    cudaError_t e = mw_prepare<T>(fc1, &g0, &wmap0, &xmap0);
    if (e == cudaSuccess) e = mw_prepare<T>(fc2, &g1, &wmap1, &xmap1);
    if (e != cudaSuccess) return e;
    if (g0.p.np != g1.p.np) return cudaErrorNotSupported; /* one ring of one stage size */
    return mw_start<T>(g0, wmap0, xmap0, g1, wmap1, xmap1, done, stream);
}

cudaError_t bmc_moe_gemm_sm90(const bmc_moe_gemm_args *a, int wtype, cudaStream_t stream) {
    return wtype == BMC_F16 ? mw_launch<__half>(a, stream) : mw_launch<__nv_bfloat16>(a, stream);
}

cudaError_t bmc_moe_chain_sm90(const bmc_moe_gemm_args *fc1, const bmc_moe_gemm_args *fc2, int *done, int wtype,
                               cudaStream_t stream) {
    if (!done || fc1->mode == BMC_MOE_PARTIAL || fc1->mode == BMC_MOE_SCATTER || !fc1->expert_start ||
        fc1->expert_start != fc2->expert_start || fc1->E != fc2->E || fc1->E < 2 || fc1->max_rows != fc2->max_rows ||
        fc2->X != fc1->y || fc2->ldx != fc1->ldy || fc2->K != fc1->N || fc2->x_lo_rows != fc1->y_lo_rows)
        return cudaErrorNotSupported;
    if (fc1->max_rows <= 0 || fc1->N <= 0 || fc2->N <= 0) return cudaSuccess;
    return wtype == BMC_F16 ? mw_chain<__half>(fc1, fc2, done, stream) : mw_chain<__nv_bfloat16>(fc1, fc2, done, stream);
}

/* The blocks' weight bytes under the round robin, for fc2 in `split` K
 * slices chained after fc1, if every expert gets rows / E rows; the most any
 * block reads. */
static double mw_chain_max_block_bytes(int rows, int E, int d, int F, bool gated, int split, int sms) {
    const int np = [&] {
        bmc_moe_gemm_args a;
        memset(&a, 0, sizeof a);
        a.max_rows = rows;
        a.E = E;
        a.expert_start = reinterpret_cast<const int *>(&a); /* only "there is a routing" */
        return mw_pass_rows(&a);
    }();
    const int passes = ((rows + E - 1) / E + np - 1) / np;
    const int feats1 = gated ? MW_BM / 2 : MW_BM, mt1 = (F + feats1 - 1) / feats1, mt2 = (d + MW_BM - 1) / MW_BM;
    const int nkb = (F + MW_BK - 1) / MW_BK, per = (nkb + split - 1) / split;
    double most = 0;
    for (int b = 0; b < sms; b++) {
        double bytes = 0;
        for (long long u = b; u < (long long)E * passes * (mt1 + mt2 * split); u += sms) {
            const long long per_expert1 = (long long)passes * mt1, all1 = E * per_expert1;
            if (u < all1) { /* fc1: a unit's feature rows (value and gate) over all of d */
                const int m = (int)(u % mt1);
                bytes += (double)(gated ? 2 : 1) * std::min(feats1, F - m * feats1) * d * 2;
            } else { /* fc2: a unit's output rows over its K slice */
                const long long v = (u - all1) % ((long long)passes * split * mt2);
                const int m = (int)(v % mt2), slice = (int)(v / mt2 % split);
                const int k0 = slice * per * MW_BK, k1 = std::min(F, (slice + 1) * per * MW_BK);
                bytes += (double)std::min(MW_BM, d - m * MW_BM) * std::max(0, k1 - k0) * 2;
            }
        }
        most = std::max(most, bytes);
    }
    return most;
}

int bmc_moe_chain_split(int rows, int E, int d, int F, int gated, int sms) {
    int best = 1;
    double best_cost = 0;
    for (int s = 1; s <= 8; s++) {
        /* each slice more costs its units' pipeline starts and the next norm
         * another partial row: 2% a slice, fitted to the H100's 2.8B step */
        const double cost = mw_chain_max_block_bytes(rows, E, d, F, gated != 0, s, sms) * (1 + 0.02 * s);
        if (s == 1 || cost < best_cost) best = s, best_cost = cost;
    }
    return best;
}
