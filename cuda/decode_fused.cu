/* One decode step of one stream through every layer in a single persistent
 * kernel (sm_90): an opt-in batch-1 path of the decode graph
 * (BM_CUDA_FUSED_STEP=1). On the H100 it is correct but still slower than
 * the kernel chain (docs/PERF.md: the barriers and the vector exchanges
 * around them cost more than the kernel boundaries they replace).
 *
 * Why: a chain of ~7 kernels per layer pair pays 2-4 us at every kernel
 * boundary (drain, launch, the prologue's dependent loads), and no kernel
 * can fetch weights before its predecessor ends; at batch 1 that doubled the
 * step time over its bandwidth floor (docs/PERF.md). Here one block per SM
 * stays resident for the whole step and the phases of a layer are separated
 * by grid-wide barriers, while the weights, which depend on nothing, are
 * streamed ahead of the computation:
 *
 *  - one producer warp per block walks the step's schedule of weight tiles
 *    (whole rows of a matrix, the tiles of a phase dealt round-robin over the
 *    blocks) and copies each into a ring of shared-memory slots with bulk
 *    asynchronous copies (TMA, cp.async.bulk, completion on an mbarrier). It
 *    runs ahead of the consumers across phase and layer boundaries and only
 *    stops when the ring is full or when the next tile belongs to an expert
 *    the router has not chosen yet;
 *  - eight consumer warps take the tiles in the same order and multiply them
 *    with the phase's input vector (read from L2 after the barrier, each
 *    thread's 16-byte pieces of it held in registers), each warp on its own;
 *    after a phase's last tile one pass of fused epilogues finishes its rows
 *    (conv + SiLU, the gated activation, the routing scale). The scan phase
 *    has its own tile code (dt_proj rows, one channel per 16 lanes).
 *
 * Phases of a Mamba layer: [add + RMSNorm, in_proj, conv] | x_proj | [dt_proj,
 * softplus, state update, D skip, SiLU(z) gate] | out_proj. Of an MLP/MoE
 * layer: [add + RMSNorm, router, top-1, fc1, activation] | [fc2, scale].
 * "|" is a grid barrier. The final LayerNorm and LM head stay separate
 * kernels (gemv.cu), as does sampling.
 *
 * Data written in one phase and read in a later one by other blocks goes
 * through L2 only (ld.global.cg / cp.async.cg), since L1 is not coherent
 * within a kernel. The barrier counter is zeroed by the graph before each
 * launch; the launch is cooperative, so all blocks are resident. */
#include <stdio.h>

#include "device_util.cuh"
#include "kernels.cuh"

#define FUSED_WARPS 8                     /* consumer warps */
#define FUSED_CONSUMERS (FUSED_WARPS * 32)
#define FUSED_THREADS (FUSED_CONSUMERS + 32) /* + the producer warp */
#define FUSED_SLOT_BYTES (24 * 1024)
#define FUSED_MAX_SLOTS 16
#define FUSED_TILE_ROWS 8                 /* rows of a tile, both copies together */
#define FUSED_MAX_TILES 16                /* tiles of one phase in one block */
#define FUSED_MAX_CHUNKS 4                /* 16-byte pieces of a row per consumer thread */
#define FUSED_SCAN_FLOATS 40              /* staged floats per scan channel, at least 16 state + 16 A + u, z, D, dt_bias */
#define FUSED_MAX_EXPERTS 64

/* Where everything lives in the dynamic shared memory; the host (plan) and
 * the device compute it with the same function. */
struct fused_layout {
    unsigned ring, bars, x, red, dtbc, conv, scan, normw, logits, layers, misc, total;
};

__host__ __device__ static inline unsigned fused_align(unsigned v, unsigned a) { return (v + a - 1) / a * a; }

__host__ __device__ static inline fused_layout fused_layout_of(const bmc_fused_step_args &a) {
    fused_layout l;
    const int kmax = a.d > a.di ? (a.d > a.F ? a.d : a.F) : (a.di > a.F ? a.di : a.F);
    unsigned at = 0;
    l.ring = at;
    at += (unsigned)a.slots * FUSED_SLOT_BYTES;
    l.bars = at;
    at += (unsigned)(2 * a.slots + 1) * 8;
    l.x = at = fused_align(at, 16);
    at += (unsigned)kmax * 4;
    l.red = at = fused_align(at, 16);
    at += FUSED_MAX_TILES * FUSED_WARPS * FUSED_TILE_ROWS * 4;
    l.dtbc = at = fused_align(at, 16);
    at += (unsigned)(a.R + 2 * BMC_D_STATE) * 4;
    l.conv = at = fused_align(at, 16);
    at += (unsigned)a.max_conv_rows * (2 * a.K) * 4;
    l.scan = at = fused_align(at, 16);
    at += (unsigned)a.max_scan_ch * FUSED_SCAN_FLOATS * 4;
    l.normw = at = fused_align(at, 16);
    at += (unsigned)a.d * 4;
    l.logits = at = fused_align(at, 16);
    at += FUSED_MAX_EXPERTS * 4;
    l.layers = at = fused_align(at, 16);
    at += (unsigned)a.n_layers * (unsigned)sizeof(bmc_fused_layer);
    l.misc = at;
    at += 64;
    l.total = fused_align(at, 128);
    return l;
}

/* A phase's tiles: n tiles of `tr` rows; tile t belongs to block (base + t) % G,
 * so the blocks that got one more tile in a phase get one fewer later. */
struct fused_tiling {
    int n, tr, base;
};
__device__ __forceinline__ int fused_first_tile(const fused_tiling &t, int b, int G) {
    int f = (b - t.base) % G;
    return f < 0 ? f + G : f;
}

/* The tiles of one step's phases in schedule order, as both roles see them. */
enum { PH_IN, PH_X, PH_SCAN, PH_OUT, PH_ROUTER, PH_FC1, PH_FC2 };

struct fused_phase {
    int kind;
    fused_tiling t;
    const char *src;   /* first row of the matrix (expert already applied) */
    int rows;          /* rows (PH_FC1 with swiglu: row pairs) */
    int row_bytes;
    long long second;  /* PH_FC1 with swiglu: byte distance to the gate half, else 0 */
    int broadcast;     /* every block takes every tile (the router) */
};

/* ---- PTX wrappers (sm_90) ---------------------------------------------------- */

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#include "async_copy.cuh"

__device__ __forceinline__ unsigned long long global_ns() {
    unsigned long long t;
    asm volatile("mov.u64 %0, %globaltimer;" : "=l"(t));
    return t;
}
/* mbar_wait, adding the ns it took to acc when tracing */
__device__ __forceinline__ void mbar_wait_timed(uint64_t *b, unsigned parity, bool timed, unsigned long long &acc) {
    if (!timed) {
        mbar_wait(b, parity);
        return;
    }
    const unsigned long long t0 = global_ns();
    mbar_wait(b, parity);
    acc += global_ns() - t0;
}
__device__ __forceinline__ void cp_async16(void *dst, const void *src) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(smem_addr(dst)), "l"(src) : "memory");
}
__device__ __forceinline__ void cp_async4(void *dst, const void *src) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4;" ::"r"(smem_addr(dst)), "l"(src) : "memory");
}
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_all;" ::: "memory"); }
__device__ __forceinline__ void consumers_sync() { asm volatile("bar.sync 1, %0;" ::"n"(FUSED_CONSUMERS) : "memory"); }
__device__ __forceinline__ unsigned ld_acquire(const unsigned *p) {
    unsigned v;
    asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
    return v;
}

/* ---- the schedule --------------------------------------------------------------- */

/* A phase of `rows` rows in tiles of `tr`, starting the round robin at
 * *base (advanced past it unless broadcast). */
__device__ __forceinline__ fused_phase make_phase(int kind, int rows, int tr, const void *src, int row_bytes,
                                                  long long second, int broadcast, int &base, int G) {
    fused_phase p;
    p.kind = kind;
    p.rows = rows;
    p.t.tr = tr;
    p.t.n = (rows + tr - 1) / tr;
    p.t.base = base;
    p.src = (const char *)src;
    p.row_bytes = row_bytes;
    p.second = second;
    p.broadcast = broadcast;
    if (!broadcast) base = (base + p.t.n) % G;
    return p;
}

/* How many phases layer L has, and the kind of its phase `i`. */
__device__ __forceinline__ int phase_count(const bmc_fused_layer &L) { return L.mamba ? 4 : L.n_experts >= 2 ? 3 : 2; }
__device__ __forceinline__ int phase_kind(const bmc_fused_layer &L, int i) {
    return L.mamba ? PH_IN + i : (L.n_experts >= 2 ? PH_ROUTER + i : PH_FC1 + i);
}

/* Phase `kind` of layer L (fc1/fc2 of `expert`), advancing base. One
 * function for both roles and every kind, built at run time: the step's code
 * must stay small, since each layer runs all of it and instruction-cache
 * misses go to L2. */
__device__ __forceinline__ fused_phase phase_of(const bmc_fused_step_args &a, const bmc_fused_layer &L, int kind,
                                             int expert, int &base) {
    const int G = a.grid, g = a.swiglu ? 2 : 1;
    switch (kind) {
    case PH_IN: return make_phase(PH_IN, 2 * a.di, a.tr_in, L.in_proj, 2 * a.d, 0, 0, base, G);
    case PH_X: return make_phase(PH_X, a.R + 2 * BMC_D_STATE, a.tr_x, L.x_proj, 2 * a.di, 0, 0, base, G);
    case PH_SCAN: return make_phase(PH_SCAN, a.di, a.tc_scan, L.dt_proj, 2 * a.R, 0, 0, base, G);
    case PH_OUT: return make_phase(PH_OUT, a.d, a.tr_out, L.out_proj, 2 * a.di, 0, 0, base, G);
    case PH_ROUTER: return make_phase(PH_ROUTER, L.n_experts, a.tr_router, L.router_w, 4 * a.d, 0, 1, base, G);
    case PH_FC1:
        return make_phase(PH_FC1, a.F, a.tr_fc1, (const char *)L.fc1 + (size_t)expert * g * a.F * a.d * 2, 2 * a.d,
                          a.swiglu ? (long long)a.F * a.d * 2 : 0, 0, base, G);
    default:
        return make_phase(PH_FC2, a.d, a.tr_fc2, (const char *)L.fc2 + (size_t)expert * a.d * a.F * 2, 2 * a.F, 0, 0,
                          base, G);
    }
}

/* Byte layout of tile t of a phase inside its slot: one copy, or two (the
 * two halves of a SwiGLU fc1) one after the other. Scalars, not arrays:
 * an array indexed at run time would live in local memory. */
struct tile_copy {
    const char *src0, *src1;  /* 16-byte aligned starts */
    unsigned bytes0, bytes1;  /* 16-byte rounded sizes; bytes1 = 0: one copy */
    unsigned dst1;            /* slot offset of the second copy (the first is at 0) */
    unsigned off0, off1;      /* slot offsets of the first requested byte of each */
    int rows;
};
__device__ __forceinline__ tile_copy tile_of(const fused_phase &p, int t) {
    tile_copy c;
    const int r0 = t * p.t.tr;
    c.rows = min(p.t.tr, p.rows - r0);
    const unsigned span = (unsigned)c.rows * (unsigned)p.row_bytes;
    const char *s0 = p.src + (long long)r0 * p.row_bytes;
    const unsigned mis0 = (unsigned)((uintptr_t)s0 & 15);
    c.src0 = s0 - mis0;
    c.off0 = mis0;
    c.bytes0 = fused_align(mis0 + span, 16);
    c.dst1 = c.bytes0;
    if (p.second) {
        const char *s1 = s0 + p.second;
        const unsigned mis1 = (unsigned)((uintptr_t)s1 & 15);
        c.src1 = s1 - mis1;
        c.off1 = c.dst1 + mis1;
        c.bytes1 = fused_align(mis1 + span, 16);
    } else {
        c.src1 = nullptr;
        c.off1 = 0;
        c.bytes1 = 0;
    }
    return c;
}

/* ---- producer -------------------------------------------------------------------- */

struct producer {
    const bmc_fused_step_args &a;
    char *ring;
    uint64_t *full, *empty;
    int b, G;
    unsigned k; /* tiles issued */
    bool timed;
    unsigned long long wait_slot;

    __device__ __forceinline__ void issue(const fused_phase &p) {
        const int first = p.broadcast ? 0 : fused_first_tile(p.t, b, G), step = p.broadcast ? 1 : G;
        for (int t = first; t < p.t.n; t += step, k++) {
            const unsigned slot = k % a.slots, use = k / a.slots;
            if (use > 0) mbar_wait_timed(&empty[slot], (use - 1) & 1, timed, wait_slot);
            const tile_copy c = tile_of(p, t);
            char *dst = ring + slot * FUSED_SLOT_BYTES;
            mbar_expect_tx(&full[slot], c.bytes0 + c.bytes1);
            bulk_copy(dst, c.src0, c.bytes0, &full[slot]);
            if (c.bytes1) bulk_copy(dst + c.dst1, c.src1, c.bytes1, &full[slot]);
        }
    }
};

__device__ static void produce(const bmc_fused_step_args &a, const bmc_fused_layer *layers, char *smem,
                               const fused_layout &l) {
    uint64_t *full = reinterpret_cast<uint64_t *>(smem + l.bars), *empty = full + a.slots, *routed = empty + a.slots;
    const volatile int *s_expert = reinterpret_cast<const volatile int *>(smem + l.misc);
    unsigned long long wait_route = 0;
    producer pr = {a, smem + l.ring, full, empty, (int)blockIdx.x, a.grid, 0u, a.trace != nullptr, 0ull};
    unsigned moe = 0; /* routed MoE layers seen */
    int base = 0;
    for (int li = 0; li < a.n_layers; li++) {
        const bmc_fused_layer &L = layers[li];
        int expert = 0;
        for (int i = 0, n = phase_count(L); i < n; i++) {
            const int kind = phase_kind(L, i);
            if (kind == PH_FC1 && L.n_experts >= 2) {
                /* the router's tiles went out already; the experts' wait for its choice */
                mbar_wait_timed(routed, moe & 1, pr.timed, wait_route);
                moe++;
                expert = *s_expert;
            }
            const fused_phase p = phase_of(a, L, kind, expert, base);
            if (!(a.debug_flags & 2) || kind == PH_SCAN) pr.issue(p);
        }
    }
    if (a.trace) {
        unsigned long long *tr = a.trace + (size_t)blockIdx.x * a.trace_words;
        tr[a.trace_words - 3] = pr.wait_slot;
        tr[a.trace_words - 2] = wait_route;
    }
}

/* ---- consumers ------------------------------------------------------------------- */

struct consumer {
    const bmc_fused_step_args &a;
    char *smem;
    fused_layout l;
    uint64_t *full, *empty, *routed;
    float *x, *red, *dtbc, *conv, *scan, *normw, *logits;
    int *s_expert;
    float *s_gate;
    int tid, warp, lane, b, G;
    unsigned k;        /* tiles taken */
    unsigned barriers; /* grid barriers passed */
    unsigned long long tile_wait; /* tracing: ns waited for tiles */
    long long cyc[4];             /* tracing, threads 0 and 224: clock cycles waiting, in dot products, in the sync, in epilogues */
    bool clocked;

    __device__ consumer(const bmc_fused_step_args &args, char *sm, const fused_layout &lay)
        : a(args), smem(sm), l(lay), k(0), barriers(0), tile_wait(0), cyc{0, 0, 0, 0} {
        full = reinterpret_cast<uint64_t *>(smem + l.bars);
        empty = full + a.slots;
        routed = empty + a.slots;
        x = reinterpret_cast<float *>(smem + l.x);
        red = reinterpret_cast<float *>(smem + l.red);
        dtbc = reinterpret_cast<float *>(smem + l.dtbc);
        conv = reinterpret_cast<float *>(smem + l.conv);
        scan = reinterpret_cast<float *>(smem + l.scan);
        normw = reinterpret_cast<float *>(smem + l.normw);
        logits = reinterpret_cast<float *>(smem + l.logits);
        s_expert = reinterpret_cast<int *>(smem + l.misc);
        s_gate = reinterpret_cast<float *>(smem + l.misc + 4);
        tid = threadIdx.x;
        warp = tid >> 5;
        lane = tid & 31;
        b = blockIdx.x;
        G = a.grid;
        clocked = a.trace != nullptr && (tid == 0 || tid == FUSED_CONSUMERS - 32);
    }

    __device__ __forceinline__ void grid_sync() {
        consumers_sync();
        if (tid == 0) {
            unsigned long long *tr = a.trace ? a.trace + (size_t)b * a.trace_words + 2 * barriers : nullptr;
            if (tr) tr[0] = global_ns();
            const unsigned target = (++barriers) * (unsigned)G;
            __threadfence(); /* with the bar.sync before: every consumer's writes go before the arrival */
            asm volatile("red.relaxed.gpu.global.add.u32 [%0], 1;" ::"l"(a.barrier) : "memory");
            while (ld_acquire(a.barrier) < target) {
            }
            if (tr) tr[1] = global_ns();
        }
        consumers_sync();
    }

    /* x[0..n) = src[0..n), f32 activations another block wrote */
    __device__ __forceinline__ void load_x(const float *src, int n) {
        for (int i = tid * 4; i < n; i += FUSED_CONSUMERS * 4)
            *reinterpret_cast<float4 *>(x + i) = __ldcg(reinterpret_cast<const float4 *>(src + i));
        consumers_sync();
    }

    /* The residual add and RMSNorm of a layer's input into x; block 0 keeps
     * the sum in res_out. The first layer's input is the token's embedding. */
    template <typename T>
    /* (normw was staged a phase ahead by stage_next) */
    __device__ __forceinline__ void add_norm(int first, const float *res_in, float *res_out) {
        const int d = a.d;
        float ss = 0.0f;
        if (first) {
            const int tok = *a.token;
            const T *e = reinterpret_cast<const T *>(a.embedding) + (size_t)tok * d;
            for (int i = tid; i < d; i += FUSED_CONSUMERS) {
                const float v = bmc_to_float<T>(e[i]);
                x[i] = v;
                ss += v * v;
            }
        } else {
            for (int i = tid * 4; i < d; i += FUSED_CONSUMERS * 4) {
                const float4 r = __ldcg(reinterpret_cast<const float4 *>(res_in + i));
                const float4 h = __ldcg(reinterpret_cast<const float4 *>(a.h + i));
                const float4 v = make_float4(r.x + h.x, r.y + h.y, r.z + h.z, r.w + h.w);
                *reinterpret_cast<float4 *>(x + i) = v;
                ss += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
            }
        }
        ss = bmc_warp_sum(ss);
        float *part = red; /* free: every phase ends with a sync after its epilogues */
        if (lane == 0) part[warp] = ss;
        cp_async_wait_all();
        consumers_sync();
        float total = 0.0f;
#pragma unroll
        for (int w = 0; w < FUSED_WARPS; w++) total += part[w];
        const float scale = rsqrtf(total / (float)d + a.eps);
        for (int i = tid; i < d; i += FUSED_CONSUMERS) {
            const float v = x[i];
            if (b == 0) res_out[i] = v;
            x[i] = v * scale * normw[i];
        }
        consumers_sync();
    }

    /* This thread's share of x for a phase: 16-byte pieces tid, tid + 256, ...
     * of the row (pieces of W elements), as floats in registers, so a tile's
     * rows read only their weights from shared memory. */
    template <typename W>
    __device__ __forceinline__ void x_pieces(int K, float (&xr)[FUSED_MAX_CHUNKS][16 / sizeof(W)]) {
        constexpr int EPC = 16 / sizeof(W);
#pragma unroll
        for (int i = 0; i < FUSED_MAX_CHUNKS; i++) {
            const int c = tid + i * FUSED_CONSUMERS;
#pragma unroll
            for (int q = 0; q < EPC; q += 4) {
                float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
                if (c * EPC < K) v = *reinterpret_cast<const float4 *>(x + c * EPC + q);
                xr[i][q] = v.x;
                xr[i][q + 1] = v.y;
                xr[i][q + 2] = v.z;
                xr[i][q + 3] = v.w;
            }
        }
    }

    /* A tile's dot products: each thread multiplies its pieces of every row,
     * then the warp sums the (up to) 8 rows in 9 shuffles, ending with the
     * sum of row (lane >> 2) in lanes 4r..4r+3; lane 4r stores it as this
     * warp's part of row r. */
    template <typename W>
    __device__ __forceinline__ void tile_dots(const char *slot, const tile_copy &c, int row_bytes, int K,
                                              const float (&xr)[FUSED_MAX_CHUNKS][16 / sizeof(W)], float *parts) {
        constexpr int EPC = 16 / sizeof(W);
        const int nr = c.bytes1 ? 2 * c.rows : c.rows;
        float acc[FUSED_TILE_ROWS];
#pragma unroll
        for (int r = 0; r < FUSED_TILE_ROWS; r++) acc[r] = 0.0f;
        /* row addresses; rows past the tile's read row 0 again (their sums are
         * never used), so all eight loads go out together instead of one
         * shared-memory round trip per row */
        unsigned row_off[FUSED_TILE_ROWS];
#pragma unroll
        for (int r = 0; r < FUSED_TILE_ROWS; r++) {
            const int rr = r < nr ? r : 0;
            row_off[r] = rr < c.rows ? c.off0 + (unsigned)rr * row_bytes : c.off1 + (unsigned)(rr - c.rows) * row_bytes;
        }
#pragma unroll
        for (int i = 0; i < FUSED_MAX_CHUNKS; i++) {
            const int piece = tid + i * FUSED_CONSUMERS;
            if (piece * EPC >= K) break;
            uint4 v[FUSED_TILE_ROWS];
#pragma unroll
            for (int r = 0; r < FUSED_TILE_ROWS; r++)
                v[r] = *reinterpret_cast<const uint4 *>(slot + row_off[r] + (size_t)piece * 16);
#pragma unroll
            for (int r = 0; r < FUSED_TILE_ROWS; r++) {
                if constexpr (sizeof(W) == 2) {
                    float f[8];
                    bmc_unpack<W>::run(v[r], f);
                    acc[r] += f[0] * xr[i][0] + f[1] * xr[i][1] + f[2] * xr[i][2] + f[3] * xr[i][3] +
                              f[4] * xr[i][4] + f[5] * xr[i][5] + f[6] * xr[i][6] + f[7] * xr[i][7];
                } else {
                    acc[r] += __uint_as_float(v[r].x) * xr[i][0] + __uint_as_float(v[r].y) * xr[i][1] +
                              __uint_as_float(v[r].z) * xr[i][2] + __uint_as_float(v[r].w) * xr[i][3];
                }
            }
        }
        /* reduce-scatter over the warp: halve the rows a lane keeps at each step */
        const unsigned full_mask = 0xffffffffu;
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const bool hi = lane & 16;
            const float send = hi ? acc[i] : acc[i + 4], keep = hi ? acc[i + 4] : acc[i];
            acc[i] = keep + __shfl_xor_sync(full_mask, send, 16);
        }
#pragma unroll
        for (int i = 0; i < 2; i++) {
            const bool hi = lane & 8;
            const float send = hi ? acc[i] : acc[i + 2], keep = hi ? acc[i + 2] : acc[i];
            acc[i] = keep + __shfl_xor_sync(full_mask, send, 8);
        }
        {
            const bool hi = lane & 4;
            const float send = hi ? acc[0] : acc[1], keep = hi ? acc[1] : acc[0];
            acc[0] = keep + __shfl_xor_sync(full_mask, send, 4);
        }
        acc[0] += __shfl_xor_sync(full_mask, acc[0], 2);
        acc[0] += __shfl_xor_sync(full_mask, acc[0], 1);
        if ((lane & 3) == 0) {
            const int row = ((lane >> 4) & 1) * 4 + ((lane >> 3) & 1) * 2 + ((lane >> 2) & 1);
            parts[warp * FUSED_TILE_ROWS + row] = acc[0];
        }
    }

    __device__ __forceinline__ const char *wait_tile(unsigned &slot) {
        slot = k % a.slots;
        mbar_wait_timed(&full[slot], (k / a.slots) & 1, a.trace != nullptr && tid == 0, tile_wait);
        k++;
        return smem + l.ring + slot * FUSED_SLOT_BYTES;
    }
    __device__ __forceinline__ void release(unsigned slot) { /* every consumer thread calls it */
        if (lane == 0) mbar_arrive(&empty[slot]);
    }

    /* The per-layer values the epilogues need. */
    struct epi_ctx {
        float *state;
        const bmc_fused_layer *L;
        int expert;
        float gate;
    };

    /* Row r's epilogue in phase `kind`: v0 its dot product with x (v1: the
     * gate half's, fc1 with SwiGLU); j, rr: which staged conv row. */
    __device__ __forceinline__ void epilogue(int kind, int tr, const epi_ctx &e, int r, int j, int rr, float v0,
                                             float v1) {
        const bmc_fused_layer &L = *e.L;
        switch (kind) {
        case PH_IN: {
            if (L.in_proj_bias) v0 += L.in_proj_bias[r];
            if (r >= a.di) {
                a.xz[r] = v0;
                break;
            }
            const int K = a.K, km1 = K - 1;
            const float *cs = conv + (size_t)(j * tr + rr) * 2 * K;
            float acc = cs[km1 + K] + cs[km1 + km1] * v0;
            for (int q = 0; q < km1; q++) acc += cs[km1 + q] * cs[q];
            float *hist = e.state + L.conv_offset + (size_t)r * km1;
            for (int q = 0; q + 1 < km1; q++) hist[q] = cs[q + 1];
            if (km1 > 0) hist[km1 - 1] = v0;
            a.xz[r] = bmc_silu(acc);
            break;
        }
        case PH_X: a.xdbl[r] = v0; break;
        case PH_OUT: a.h[r] = L.out_proj_bias ? v0 + L.out_proj_bias[r] : v0; break;
        case PH_ROUTER: logits[r] = v0 + L.router_b[r]; break;
        case PH_FC1: {
            const float *b1 = L.fc1_bias ? L.fc1_bias + (size_t)e.expert * (a.swiglu ? 2 : 1) * a.F : nullptr;
            if (b1) v0 += b1[r];
            const float av = a.act == 1 ? bmc_silu(v0) : bmc_gelu(v0);
            if (a.swiglu) {
                if (b1) v1 += b1[a.F + r];
                a.m[r] = av * v1;
            } else {
                a.m[r] = av;
            }
            break;
        }
        default: { /* PH_FC2 */
            const float *b2 = L.fc2_bias ? L.fc2_bias + (size_t)e.expert * a.d : nullptr;
            a.h[r] = e.gate * (b2 ? v0 + b2[r] : v0);
            break;
        }
        }
    }

    /* Every tile of a matrix phase: the dot products with x tile by tile,
     * each warp on its own (a slot is free when all warps have arrived on its
     * empty barrier); then one pass of epilogues over all this block's rows,
     * so their latency is paid once per phase, not once per tile. */
    template <typename W>
    __device__ __forceinline__ void matvec_phase(const fused_phase &p, int K, const epi_ctx &e) {
        float xr[FUSED_MAX_CHUNKS][16 / sizeof(W)];
        x_pieces<W>(K, xr);
        const int first = p.broadcast ? 0 : fused_first_tile(p.t, b, G), step = p.broadcast ? 1 : G;
        int n_mine = 0;
        for (int t = first; t < p.t.n; t += step, n_mine++) {
            if (a.debug_flags & 2) { /* measurement: no weights at all */
                if (lane < FUSED_TILE_ROWS) red[(n_mine * FUSED_WARPS + warp) * FUSED_TILE_ROWS + lane] = 0.0f;
                continue;
            }
            unsigned slot;
            long long t0 = clocked ? clock64() : 0;
            const char *s = wait_tile(slot);
            long long t1 = clocked ? clock64() : 0;
            const tile_copy c = tile_of(p, t);
            if (!(a.debug_flags & 1)) tile_dots<W>(s, c, p.row_bytes, K, xr, red + n_mine * FUSED_WARPS * FUSED_TILE_ROWS);
            else if (lane < FUSED_TILE_ROWS) red[(n_mine * FUSED_WARPS + warp) * FUSED_TILE_ROWS + lane] = 0.0f;
            __syncwarp();
            if (lane == 0) mbar_arrive(&empty[slot]);
            if (clocked) {
                cyc[0] += t1 - t0;
                cyc[1] += clock64() - t1;
            }
        }
        long long t2 = clocked ? clock64() : 0;
        consumers_sync();
        long long t3 = clocked ? clock64() : 0;
        const int tr = p.t.tr, two = p.second != 0;
        for (int idx = tid; idx < n_mine * tr; idx += FUSED_CONSUMERS) {
            const int j = idx / tr, rr = idx - j * tr, t = first + j * step;
            const int rows = min(tr, p.rows - t * tr);
            if (rr >= rows) continue;
            const float *pt = red + j * FUSED_WARPS * FUSED_TILE_ROWS;
            float v0 = 0.0f, v1 = 0.0f;
#pragma unroll
            for (int w = 0; w < FUSED_WARPS; w++) {
                v0 += pt[w * FUSED_TILE_ROWS + rr];
                if (two) v1 += pt[w * FUSED_TILE_ROWS + rows + rr];
            }
            epilogue(p.kind, tr, e, t * tr + rr, j, rr, v0, v1);
        }
        if (clocked) {
            const long long t4 = clock64();
            cyc[2] += t3 - t2;
            cyc[3] += t4 - t3;
        }
    }

    /* ---- Mamba ---- */

    /* Stage the conv weights and history of this block's in_proj rows that are
     * x channels: [K-1 history | K weights | bias] per row. */
    __device__ __forceinline__ void stage_conv(const fused_phase &p, const bmc_fused_layer &L, float *state) {
        const int K = a.K, km1 = K - 1, per = 2 * K;
        const int first = fused_first_tile(p.t, b, G);
        for (int t = first, j = 0; t < p.t.n; t += G, j++) {
            const int r0 = t * p.t.tr;
            if (r0 >= a.di) break;
            const int rows = min(p.t.tr, a.di - r0);
            for (int i = tid; i < rows * per; i += FUSED_CONSUMERS) {
                const int rr = i / per, q = i % per, c = r0 + rr;
                float *dst = conv + (size_t)(j * p.t.tr + rr) * per + q;
                const float *src = q < km1 ? state + L.conv_offset + (size_t)c * km1 + q
                                   : q < km1 + K ? L.conv_w + (size_t)c * K + (q - km1)
                                                 : L.conv_b + c;
                cp_async4(dst, src);
            }
        }
    }

    /* The static inputs of layer L's first phase, a phase ahead: its norm
     * weight and, for a Mamba layer, the conv staging of its in_proj rows.
     * They come from DRAM (the weights stream evicts them from L2), so
     * fetching them after the barrier would put a DRAM round trip on the
     * step's critical path. */
    __device__ __forceinline__ void stage_next(const bmc_fused_layer &L, int base, float *state) {
        for (int i = tid * 4; i < a.d; i += FUSED_CONSUMERS * 4) cp_async16(normw + i, L.norm + i);
        if (L.mamba) stage_conv(phase_of(a, L, PH_IN, 0, base), L, state);
        asm volatile("cp.async.commit_group;" ::: "memory");
    }

    /* Stage, for this block's scan channels (tile j of tc channels at
     * scan + j * tc * FUSED_SCAN_FLOATS): [tc][16 state | 16 A], then u[tc],
     * z[tc], D[tc], dt_bias[tc]; all 16-byte pieces (tc and the first
     * channel are multiples of 4). u and z come from L2 (cp.async.cg). */
    __device__ __forceinline__ void stage_scan(const fused_phase &p, const bmc_fused_layer &L, float *state) {
        const int first = fused_first_tile(p.t, b, G), N = BMC_D_STATE, tc = p.t.tr;
        for (int t = first, j = 0; t < p.t.n; t += G, j++) {
            const int c0 = t * tc, n = min(tc, a.di - c0);
            float *base = scan + (size_t)j * tc * FUSED_SCAN_FLOATS;
            for (int i = tid; i < n * 8; i += FUSED_CONSUMERS) {
                const int cc = i >> 3, q = i & 7, c = c0 + cc;
                const float *src =
                    q < 4 ? state + L.ssm_offset + bmc_ssm_index(a.di, c, q * 4) : L.A + (size_t)c * N + (q - 4) * 4;
                cp_async16(base + (size_t)cc * 2 * N + q * 4, src);
            }
            const int quads = n / 4;
            for (int i = tid; i < quads * 4; i += FUSED_CONSUMERS) {
                const int v = i / quads, q = i - v * quads, c = c0 + q * 4;
                const float *src = v == 0 ? a.xz + c : v == 1 ? a.xz + a.di + c : v == 2 ? L.D + c : L.dt_bias + c;
                cp_async16(base + (size_t)tc * 2 * N + (size_t)v * tc + q * 4, src);
            }
        }
        asm volatile("cp.async.commit_group;" ::: "memory");
    }

    /* dt_proj, softplus, the state update and the gated output, two
     * channels per warp (16 lanes each, one per state entry). */
    template <typename T>
    __device__ __forceinline__ void scan_phase(const fused_phase &p, float *state, const bmc_fused_layer &L) {
        const int first = fused_first_tile(p.t, b, G), N = BMC_D_STATE, R = a.R, tc = p.t.tr;
        const int half = lane >> 4, n = lane & 15;
        for (int t = first, j = 0; t < p.t.n; t += G, j++) {
            unsigned slot;
            const char *s = wait_tile(slot);
            const tile_copy c = tile_of(p, t);
            const T *w = reinterpret_cast<const T *>(s + c.off0);
            const int c0 = t * tc;
            const float *base = scan + (size_t)j * tc * FUSED_SCAN_FLOATS;
            for (int cc0 = warp * 2; cc0 < c.rows; cc0 += 2 * FUSED_WARPS) {
                const int cc = cc0 + half;
                const bool live = cc < c.rows;
                const int ccl = live ? cc : cc0;
                float dt = 0.0f;
                for (int r = n; r < R; r += 16) dt += bmc_to_float<T>(w[(size_t)ccl * R + r]) * dtbc[r];
#pragma unroll
                for (int o = 8; o > 0; o >>= 1) dt += __shfl_xor_sync(0xffffffffu, dt, o);
                const float *U = base + (size_t)tc * 2 * N;
                const float u = U[ccl], z = U[tc + ccl], Dc = U[2 * tc + ccl];
                const float delta = bmc_softplus(dt + U[3 * tc + ccl]);
                const float *st = base + (size_t)ccl * 2 * N;
                float sv = st[n];
                sv = expf(delta * st[N + n]) * sv + delta * u * dtbc[R + n];
                if (live) state[L.ssm_offset + bmc_ssm_index(a.di, c0 + cc, n)] = sv;
                float y = sv * dtbc[R + N + n];
#pragma unroll
                for (int o = 8; o > 0; o >>= 1) y += __shfl_xor_sync(0xffffffffu, y, o);
                if (live && n == 0) a.yg[c0 + cc] = (y + Dc * u) * bmc_silu(z);
            }
            __syncwarp();
            release(slot);
        }
    }

    /* ---- the step ---- */

    template <typename T>
    __device__ __forceinline__ void run(const bmc_fused_layer *layers) {
        epi_ctx e;
        e.state = a.state_ptrs[0];
        int cur = 0, base = 0;
        stage_next(layers[0], 0, e.state);
        for (int li = 0; li < a.n_layers; li++) {
            const bmc_fused_layer &L = layers[li];
            e.L = &L;
            e.expert = 0;
            e.gate = 1.0f;
            for (int i = 0, n = phase_count(L); i < n; i++) {
                const int kind = phase_kind(L, i);
                const fused_phase p = phase_of(a, L, kind, e.expert, base);
                /* what the phase needs before its tiles */
                if (i + 1 == n && li + 1 < a.n_layers) stage_next(layers[li + 1], base, e.state);
                if (i == 0) { /* the layer's input: residual add and RMSNorm */
                    float *const res_in = cur ? a.res1 : a.res0, *const res_out = cur ? a.res0 : a.res1;
                    cur ^= 1;
                    add_norm<T>(li == 0, res_in, res_out);
                } else if (kind == PH_X) {
                    int peek = base;
                    stage_scan(phase_of(a, L, PH_SCAN, 0, peek), L, e.state);
                    load_x(a.xz, a.di);
                } else if (kind == PH_SCAN) {
                    for (int q = tid; q < a.R + 2 * BMC_D_STATE; q += FUSED_CONSUMERS) dtbc[q] = __ldcg(a.xdbl + q);
                    cp_async_wait_all();
                    consumers_sync();
                } else if (kind == PH_OUT) {
                    load_x(a.yg, a.di);
                } else if (kind == PH_FC2) {
                    load_x(a.m, a.F);
                }
                /* the tiles */
                if (kind == PH_SCAN) scan_phase<T>(p, e.state, L);
                else if (kind == PH_ROUTER) matvec_phase<float>(p, a.d, e);
                else matvec_phase<T>(p, kind == PH_X || kind == PH_OUT ? a.di : kind == PH_FC2 ? a.F : a.d, e);
                /* after them */
                if (kind == PH_ROUTER) {
                    consumers_sync();
                    if (tid == 0) {
                        int best = 0;
                        for (int q = 1; q < L.n_experts; q++)
                            if (logits[q] > logits[best]) best = q; /* sigmoid is monotonic; lowest index on ties */
                        *s_expert = best;
                        *s_gate = bmc_sigmoid(logits[best]);
                        mbar_arrive(routed);
                    }
                    consumers_sync();
                    e.expert = *s_expert;
                    e.gate = *s_gate;
                } else {
                    grid_sync();
                }
            }
        }
        if (a.trace && tid == 0) {
            unsigned long long *tr = a.trace + (size_t)b * a.trace_words;
            tr[a.trace_words - 4] = tile_wait;
            tr[a.trace_words - 1] = k;
        }
        if (clocked) {
            unsigned long long *tr = a.trace + (size_t)b * a.trace_words + a.trace_words - 12 + (tid ? 4 : 0);
            for (int i = 0; i < 4; i++) tr[i] = (unsigned long long)cyc[i];
        }
    }
};
#endif

template <typename T>
__global__ void __launch_bounds__(FUSED_THREADS, 1) fused_step_kernel(const bmc_fused_step_args args) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    extern __shared__ __align__(128) char smem[];
    /* The arguments and the layer table live in shared memory: taking the
     * address of a kernel parameter copies it to local memory, and local
     * memory misses the small L1 this kernel leaves (most of it is the ring). */
    __shared__ bmc_fused_step_args a;
    for (int i = threadIdx.x; i < (int)(sizeof a / 4); i += FUSED_THREADS)
        reinterpret_cast<unsigned *>(&a)[i] = reinterpret_cast<const unsigned *>(&args)[i];
    const fused_layout l = fused_layout_of(args);
    bmc_fused_layer *layers = reinterpret_cast<bmc_fused_layer *>(smem + l.layers);
    for (int i = threadIdx.x; i < (int)(args.n_layers * sizeof(bmc_fused_layer) / 8); i += FUSED_THREADS)
        reinterpret_cast<unsigned long long *>(layers)[i] = reinterpret_cast<const unsigned long long *>(args.layers)[i];
    uint64_t *bars = reinterpret_cast<uint64_t *>(smem + l.bars);
    if (threadIdx.x == 0) {
        for (int i = 0; i < args.slots; i++) {
            mbar_init(&bars[i], 1);              /* full: the producer's arrive + the copies' bytes */
            mbar_init(&bars[args.slots + i], FUSED_WARPS); /* empty: every consumer warp */
        }
        mbar_init(&bars[2 * args.slots], 1); /* routed: consumer thread 0 */
        mbar_init_fence();
    }
    __syncthreads();
    if (threadIdx.x >= FUSED_CONSUMERS) {
        if (threadIdx.x == FUSED_CONSUMERS) produce(a, layers, smem, l);
        return;
    }
    consumer c(a, smem, l);
    c.run<T>(layers);
#endif
}

cudaError_t bmc_fused_step_plan(bmc_fused_step_args *a, int device) {
    int major = 0, sms = 0, optin = 0, coop = 0;
    cudaError_t e;
    if ((e = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device))) return e;
    if ((e = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device))) return e;
    if ((e = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device))) return e;
    if ((e = cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, device))) return e;
    if (major < 9 || !coop) return cudaErrorNotSupported;
    const int d = a->d, di = a->di, F = a->F, R = a->R, xd = R + 2 * BMC_D_STATE;
    const int g = a->swiglu ? 2 : 1;
    /* a consumer thread holds at most FUSED_MAX_CHUNKS 16-byte pieces of x */
    const int kmax = FUSED_MAX_CHUNKS * FUSED_CONSUMERS * 8;
    if (d % 8 || di % 8 || F % 8 || d > kmax / 2 || di > kmax || F > kmax || a->K < 1 || a->K > BMC_MAX_CONV ||
        R > 256)
        return cudaErrorNotSupported;
    const int G = sms;
    a->grid = G;
    /* rows per tile: as many as fill a slot, but no more than spread the
     * phase over every block */
    auto rows_for = [&](int rows, int row_bytes, int copies) {
        int fit = (FUSED_SLOT_BYTES - 16 * copies) / (row_bytes * copies);
        int spread = (rows + G - 1) / G;
        int tr = fit < spread ? fit : spread;
        if (tr * copies > FUSED_TILE_ROWS) tr = FUSED_TILE_ROWS / copies;
        return tr;
    };
    a->tr_in = rows_for(2 * di, 2 * d, 1);
    a->tr_x = rows_for(xd, 2 * di, 1);
    a->tr_out = rows_for(d, 2 * di, 1);
    /* every block reads every router row: fill the slots */
    a->tr_router = (FUSED_SLOT_BYTES - 16) / (4 * d);
    if (a->tr_router > FUSED_TILE_ROWS) a->tr_router = FUSED_TILE_ROWS;
    a->tr_fc1 = rows_for(F, 2 * d, g);
    a->tr_fc2 = rows_for(d, 2 * F, 1);
    /* scan tiles: channels in multiples of 4, so staged vectors are 16-byte aligned */
    int tc = ((di + G - 1) / G + 3) & ~3;
    while (tc > 4 && tc * 2 * R + 16 > FUSED_SLOT_BYTES) tc -= 4;
    a->tc_scan = tc;
    auto tiles_per_block = [&](int rows, int tr) { return ((rows + tr - 1) / tr + G - 1) / G; };
    if (tiles_per_block(2 * di, a->tr_in) > FUSED_MAX_TILES || tiles_per_block(xd, a->tr_x) > FUSED_MAX_TILES ||
        tiles_per_block(d, a->tr_out) > FUSED_MAX_TILES || tiles_per_block(F, a->tr_fc1) > FUSED_MAX_TILES ||
        tiles_per_block(d, a->tr_fc2) > FUSED_MAX_TILES || (FUSED_MAX_EXPERTS + a->tr_router - 1) / a->tr_router > FUSED_MAX_TILES)
        return cudaErrorNotSupported;
    if (a->tr_in < 1 || a->tr_x < 1 || a->tr_out < 1 || a->tr_router < 1 || a->tr_fc1 < 1 || a->tr_fc2 < 1 ||
        tc * 2 * R + 16 > FUSED_SLOT_BYTES)
        return cudaErrorNotSupported;
    /* staging: this block's share of in_proj's x rows and of the scan's channels */
    const int in_tiles = (2 * di + a->tr_in - 1) / a->tr_in;
    a->max_conv_rows = ((in_tiles + G - 1) / G) * a->tr_in;
    const int scan_tiles = (di + tc - 1) / tc;
    a->max_scan_ch = ((scan_tiles + G - 1) / G) * tc;
    const int max_slots = a->slots > 0 ? a->slots : FUSED_MAX_SLOTS; /* a->slots > 0 on entry: at most that many */
    a->slots = 1;
    const unsigned fixed = fused_layout_of(*a).total - FUSED_SLOT_BYTES;
    int slots = ((int)optin - (int)fixed) / FUSED_SLOT_BYTES;
    if (slots > max_slots) slots = max_slots;
    if (slots < 2) return cudaErrorNotSupported;
    a->slots = slots;
    a->smem_bytes = (int)fused_layout_of(*a).total;
    void (*kern)(const bmc_fused_step_args) =
        a->wtype == BMC_F16 ? fused_step_kernel<__half> : fused_step_kernel<__nv_bfloat16>;
    if ((e = cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, a->smem_bytes))) return e;
    int per_sm = 0;
    if ((e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kern, FUSED_THREADS, a->smem_bytes))) return e;
    if (per_sm < 1) return cudaErrorNotSupported;
    return cudaSuccess;
}

cudaError_t bmc_fused_step(const bmc_fused_step_args *a, cudaStream_t stream) {
    cudaError_t e = cudaMemsetAsync(a->barrier, 0, sizeof(unsigned), stream);
    if (e != cudaSuccess) return e;
    cudaLaunchAttribute attr;
    attr.id = cudaLaunchAttributeCooperative;
    attr.val.cooperative = 1;
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = dim3(a->grid);
    cfg.blockDim = dim3(FUSED_THREADS);
    cfg.dynamicSmemBytes = a->smem_bytes;
    cfg.stream = stream;
    cfg.attrs = &attr;
    cfg.numAttrs = 1;
    if (a->wtype == BMC_F16) return cudaLaunchKernelEx(&cfg, fused_step_kernel<__half>, *a);
    return cudaLaunchKernelEx(&cfg, fused_step_kernel<__nv_bfloat16>, *a);
}

size_t bmc_fused_trace_words(const bmc_fused_step_args *a, const int *layer_mamba) {
    size_t n = 0;
    for (int i = 0; i < a->n_layers; i++) n += layer_mamba[i] ? 4 : 2;
    return 2 * n + 12;
}

void bmc_fused_trace_print(const bmc_fused_step_args *a, const int *layer_mamba, const unsigned long long *tr, void *fp) {
    FILE *f = (FILE *)fp;
    const int G = a->grid, W = a->trace_words;
    static const char *const names[6] = {"norm+in_proj+conv", "x_proj", "scan", "out_proj", "norm+router+fc1", "fc2"};
    double work_mean[6] = {0}, work_max[6] = {0}, wait_mean[6] = {0}, release[6] = {0};
    int count[6] = {0};
    int bi = 0;
    for (int li = 0; li < a->n_layers; li++) {
        const int n = layer_mamba[li] ? 4 : 2;
        for (int q = 0; q < n; q++, bi++) {
            const int kind = layer_mamba[li] ? q : 4 + q;
            double sum_work = 0, max_work = 0, sum_wait = 0;
            unsigned long long last_arrive = 0, first_leave = ~0ull;
            for (int b = 0; b < G; b++) {
                const unsigned long long *t = tr + (size_t)b * W;
                const unsigned long long start = bi ? t[2 * (bi - 1) + 1] : t[0];
                const double work = bi ? (double)(t[2 * bi] - start) : 0.0;
                sum_work += work;
                if (work > max_work) max_work = work;
                sum_wait += (double)(t[2 * bi + 1] - t[2 * bi]);
                if (t[2 * bi] > last_arrive) last_arrive = t[2 * bi];
                if (t[2 * bi + 1] < first_leave) first_leave = t[2 * bi + 1];
            }
            if (bi == 0) continue; /* no start time for the first phase */
            work_mean[kind] += sum_work / G / 1e3;
            work_max[kind] += max_work / 1e3;
            wait_mean[kind] += sum_wait / G / 1e3;
            release[kind] += (double)(first_leave - last_arrive) / 1e3;
            count[kind]++;
        }
    }
    fprintf(f, "fused step trace (us per phase, mean over layers): phase | work mean | work max | barrier wait mean | "
               "last arrival to first release\n");
    for (int k = 0; k < 6; k++)
        if (count[k])
            fprintf(f, "  %-18s | %6.2f | %6.2f | %6.2f | %5.2f\n", names[k], work_mean[k] / count[k],
                    work_max[k] / count[k], wait_mean[k] / count[k], release[k] / count[k]);
    double tw = 0, sw = 0, rw = 0, tiles = 0;
    for (int b = 0; b < G; b++) {
        const unsigned long long *t = tr + (size_t)b * W;
        tw += (double)t[W - 4];
        sw += (double)t[W - 3];
        rw += (double)t[W - 2];
        tiles += (double)t[W - 1];
    }
    double cy[8] = {0};
    for (int b = 0; b < G; b++)
        for (int i = 0; i < 8; i++) cy[i] += (double)tr[(size_t)b * W + W - 12 + i];
    fprintf(f, "  kcycles per block in matrix tiles, warp 0 / warp 7: waiting for the tile %.1f / %.1f, dot products "
               "%.1f / %.1f, sync %.1f / %.1f, epilogues %.1f / %.1f\n",
            cy[0] / G / 1e3, cy[4] / G / 1e3, cy[1] / G / 1e3, cy[5] / G / 1e3, cy[2] / G / 1e3, cy[6] / G / 1e3,
            cy[3] / G / 1e3, cy[7] / G / 1e3);
    const unsigned long long *t0 = tr;
    fprintf(f, "  step (block 0, first arrival to last release) %.1f us; per block: consumers waited for tiles %.1f us, "
               "producer waited for a slot %.1f us, for the router %.1f us; %.1f tiles\n",
            (double)(t0[2 * (bi - 1) + 1] - t0[0]) / 1e3, tw / G / 1e3, sw / G / 1e3, rw / G / 1e3, tiles / G);
}
