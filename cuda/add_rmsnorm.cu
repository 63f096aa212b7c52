/* Residual add fused with the RMSNorm(s) that read it. One block per token
 * row; the row stays in registers between the sum of squares and the
 * scaling.
 *
 * In the decode row path the added block output may still be unfinished
 * (bmc_norm_args' h_form): out_proj's two partial products, or fc2's split-K
 * slices at the rows' sorted positions. The block finishes its row as it
 * reads it, which saves a launch and a write and reread of every row; the
 * result is the f32 row the separate launch would have stored.
 *
 * With routing (the decode row path's MoE norm) the block also takes its
 * row's router logits from those registers, its top-1 expert and gate: a
 * separate routing launch would reload the normalised rows and the router.
 * The grouping of the rows by expert needs every row's expert; it is the
 * next launch's (bmc_group_rows, moe_rows.cu), so no block here waits on
 * the others. */
#include "device_util.cuh"
#include "kernels.cuh"
#include "row_outputs.cuh"

#define NORM_THREADS 256
#define NORM_WARPS (NORM_THREADS / 32)
#define NORM_MAX_PER_THREAD 32 /* d up to 8192 */
/* Each launch takes the smallest of these bounds on a thread's columns that
 * holds its d (the released widths fit in the first). The loops over a
 * thread's columns are unrolled (its values live in registers), so the
 * bound sets the code's length: a kernel compiled for 32 columns with
 * routing is ~120 KB of instructions, more than the SM's instruction cache,
 * and a block that runs it once from a cold cache waits on instruction
 * fetches for most of its time (docs/PERF.md). */
#define NORM_PER_THREAD_SMALL 8
/* Columns per thread whose loads are in flight together when h comes in an
 * unfinished form (d up to 2048 in one go) */
#define NORM_LOAD_CHUNK 8
#define NORM_MAX_EXPERTS 64
/* Logits accumulated in registers together: bounds the registers the routing
 * adds; more experts take more passes over the row, not more barriers. */
#define NORM_EXPERT_CHUNK 8
/* How a launch routes: not at all, with the router's rows held in registers
 * (at most NORM_EXPERT_CHUNK experts, the small column bound), or with them
 * read at use. Each is its own instantiation: the held form has no loop
 * over further experts, so its code stays short. */
enum { ROUTE_NONE, ROUTE_HELD, ROUTE_READ };

/* ROUTE and H (h's form) are compiled only into their own instantiations,
 * so the plain norm (prefill) keeps its code and register budget. */
template <typename A, int ROUTE, int H, int PER>
__global__ void __launch_bounds__(NORM_THREADS) add_rmsnorm_kernel(bmc_norm_args a) {
    __shared__ float scratch[33];
    const int r = blockIdx.x, d = a.d;
    /* PDL (the decode row path): the router weights start for L2 while the
     * previous kernel drains; everything else (the live count, res, h and
     * its pieces, the routing arrays, every store) after the wait */
    bmc_grid_trigger();
    /* At the small bound, the weights this thread multiplies by (the norms',
     * and with ROUTE_HELD the router's rows) into registers while the
     * previous kernel drains: after the wait only the row's own loads are
     * on the critical path. */
    static_assert(ROUTE != ROUTE_HELD || PER <= NORM_PER_THREAD_SMALL, "held router rows: the small bound only");
    constexpr bool HELD = PER <= NORM_PER_THREAD_SMALL, ROUTER_HELD = ROUTE == ROUTE_HELD; /* at 32 columns they would spill */
    constexpr int NH = HELD ? PER : 1;
    float wa[NH], wb[NH], wr[ROUTER_HELD ? NORM_EXPERT_CHUNK : 1][NH];
#pragma unroll
    for (int i = 0; i < NH; i++) {
        const int k = threadIdx.x + i * NORM_THREADS;
        wa[i] = HELD && a.w_a && k < d ? __ldg(a.w_a + k) : 0.0f;
        wb[i] = HELD && a.w_b && k < d ? __ldg(a.w_b + k) : 0.0f;
        if constexpr (ROUTER_HELD)
#pragma unroll
            for (int j = 0; j < NORM_EXPERT_CHUNK; j++)
                wr[j][i] = j < a.n_experts && k < d ? __ldg(a.route_w + (size_t)j * d + k) : 0.0f;
    }
    if constexpr (ROUTE == ROUTE_READ) /* the router's rows start for L2 */
        if (threadIdx.x == 0) bmc_prefetch_l2(a.route_w, (size_t)a.n_experts * d * sizeof(float), r, gridDim.x);
    bmc_grid_wait();
    float *res = a.res + (size_t)r * d;
    const float *h = a.h + (size_t)r * d;
    const bool live = !a.n_dev || r < *a.n_dev;
    float v[PER];
    float ss = 0.0f;
    if constexpr (H == BMC_H_ROWS) {
#pragma unroll
        for (int i = 0; i < PER; i++) {
            int k = threadIdx.x + i * NORM_THREADS;
            v[i] = 0.0f;
            if (k < d) {
                float x = a.add ? res[k] + h[k] : res[k];
                if (a.add) res[k] = x;
                v[i] = x;
                ss += x * x;
            }
        }
    } else {
        /* Per chunk of columns every load (h's pieces and res) is issued
         * before any value is used, and res is stored after the last chunk:
         * the compiler must assume a store to res may change what h's
         * pointers read, so stores in between would serialise the loads
         * column by column. The chunk bounds the registers of the loads in
         * flight; the row path's widths need one. Each column's operations,
         * in their order, are those of the launch the form replaces
         * (row_outputs.cuh), then res + h as above. */
        bmc_expert_row expert{};
        if constexpr (H == BMC_H_PARTS) /* a padding row's expert, gate and position are undefined */
            if (live)
                expert = bmc_expert_row_at(a.parts, a.parts_pos[r], r, a.parts_gate, a.parts_bias, a.parts_expert, d);
#pragma unroll
        for (int i = 0; i < PER; i++) v[i] = 0.0f;
#pragma unroll
        for (int c = 0; c < PER; c += NORM_LOAD_CHUNK) {
            const int k0 = threadIdx.x + c * NORM_THREADS;
            if (k0 >= d) break;
            float res_in[NORM_LOAD_CHUNK], hv[NORM_LOAD_CHUNK];
#pragma unroll
            for (int j = 0; j < NORM_LOAD_CHUNK; j++) {
                const int k = k0 + j * NORM_THREADS;
                res_in[j] = k < d ? res[k] : 0.0f;
                if (H == BMC_H_PARTS && !live) hv[j] = k < d ? h[k] : 0.0f; /* the scatter leaves padding rows be */
            }
            if constexpr (H == BMC_H_HALVES)
                bmc_folded(h, (size_t)a.h_lo_rows * d, a.h_bias, k0, NORM_THREADS, d, hv);
            else if (live)
                bmc_scattered(expert, a.n_parts, a.part_stride, a.parts_add, h, k0, NORM_THREADS, d, hv);
#pragma unroll
            for (int j = 0; j < NORM_LOAD_CHUNK; j++) v[c + j] = res_in[j] + hv[j];
        }
#pragma unroll
        for (int i = 0; i < PER; i++) {
            const int k = threadIdx.x + i * NORM_THREADS;
            if (k < d) {
                res[k] = v[i];
                ss += v[i] * v[i];
            }
        }
    }
    ss = bmc_block_sum(ss, scratch);
    const float scale = rsqrtf(ss / (float)d + a.eps);
#pragma unroll
    for (int i = 0; i < PER; i++) {
        int k = threadIdx.x + i * NORM_THREADS;
        if (k >= d) continue;
        size_t o = (size_t)r * d + k;
        const size_t lo = (size_t)a.lo_rows * d;
        if (a.w_a) {
            float y = v[i] * scale * (HELD ? wa[i % NH] : a.w_a[k]);
            if (a.out_a_f32) a.out_a_f32[o] = y;
            if (a.out_a_16) {
                const A hi = bmc_from_float<A>(y);
                ((A *)a.out_a_16)[o] = hi;
                if (lo) ((A *)a.out_a_16)[o + lo] = bmc_from_float<A>(y - bmc_to_float<A>(hi));
            }
        }
        if (a.w_b) {
            float y = v[i] * scale * (HELD ? wb[i % NH] : a.w_b[k]);
            if (a.out_b_f32) a.out_b_f32[o] = y;
            if (a.out_b_16) {
                const A hi = bmc_from_float<A>(y);
                ((A *)a.out_b_16)[o] = hi;
                if (lo) ((A *)a.out_b_16)[o + lo] = bmc_from_float<A>(y - bmc_to_float<A>(hi));
            }
            if constexpr (ROUTE != ROUTE_NONE) v[i] = y; /* the logits see exactly the f32 row the expert GEMMs get */
        }
    }
    if constexpr (ROUTE != ROUTE_NONE) {
        if (!live) return; /* padding rows are not routed (the whole block: the barrier below stays whole) */
        /* part: each warp's share of every logit, summed over the warps in a
         * fixed order, so a row's routing is the same on every run */
        __shared__ float part[NORM_WARPS][NORM_MAX_EXPERTS], logit[NORM_MAX_EXPERTS];
        const int E = a.n_experts, lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
        /* experts e0.. e0 + NORM_EXPERT_CHUNK - 1, router weight (j, i) from weight */
        auto chunk = [&](int e0, auto weight) {
            float acc[NORM_EXPERT_CHUNK];
#pragma unroll
            for (int j = 0; j < NORM_EXPERT_CHUNK; j++) acc[j] = 0.0f;
#pragma unroll
            for (int i = 0; i < PER; i++) {
                if (threadIdx.x + i * NORM_THREADS >= d) continue;
#pragma unroll
                for (int j = 0; j < NORM_EXPERT_CHUNK; j++)
                    if (e0 + j < E) acc[j] += v[i] * weight(j, i);
            }
#pragma unroll
            for (int j = 0; j < NORM_EXPERT_CHUNK; j++) {
                const float s = bmc_warp_sum(acc[j]);
                if (lane == 0 && e0 + j < E) part[warp][e0 + j] = s;
            }
        };
        if constexpr (ROUTER_HELD) {
            chunk(0, [&](int j, int i) { return wr[j][i]; });
        } else {
#pragma unroll 1
            for (int e0 = 0; e0 < E; e0 += NORM_EXPERT_CHUNK)
                chunk(e0, [&](int j, int i) {
                    return __ldg(a.route_w + (size_t)(e0 + j) * d + threadIdx.x + i * NORM_THREADS);
                });
        }
        __syncthreads();
        if (warp != 0) return;
        for (int e = lane; e < E; e += 32) {
            float s = 0.0f;
            for (int w = 0; w < NORM_WARPS; w++) s += part[w][e];
            logit[e] = s + (a.route_b ? a.route_b[e] : 0.0f);
        }
        __syncwarp();
        if (lane == 0) {
            int best = 0;
            float best_logit = logit[0];
            for (int e = 1; e < E; e++)
                if (logit[e] > best_logit) { /* lowest index on ties, as the CPU */
                    best_logit = logit[e];
                    best = e;
                }
            a.expert_of[r] = best;
            a.gate[r] = bmc_sigmoid(best_logit);
        }
    }
}

template <typename A, int ROUTE, int PER>
static cudaError_t launch_form(const bmc_norm_args *a, cudaStream_t stream, int pdl) {
    void (*kernel)(bmc_norm_args) = a->h_form == BMC_H_HALVES  ? add_rmsnorm_kernel<A, ROUTE, BMC_H_HALVES, PER>
                                    : a->h_form == BMC_H_PARTS ? add_rmsnorm_kernel<A, ROUTE, BMC_H_PARTS, PER>
                                                               : add_rmsnorm_kernel<A, ROUTE, BMC_H_ROWS, PER>;
    return bmc_launch(kernel, dim3(a->rows), dim3(NORM_THREADS), 0, stream, pdl, *a);
}

template <typename A, int PER> static cudaError_t launch_per(const bmc_norm_args *a, cudaStream_t stream, int pdl) {
    if (!a->route_w) return launch_form<A, ROUTE_NONE, PER>(a, stream, pdl);
    if constexpr (PER <= NORM_PER_THREAD_SMALL)
        if (a->n_experts <= NORM_EXPERT_CHUNK) return launch_form<A, ROUTE_HELD, PER>(a, stream, pdl);
    return launch_form<A, ROUTE_READ, PER>(a, stream, pdl);
}

template <typename A> static cudaError_t launch(const bmc_norm_args *a, cudaStream_t stream, int pdl) {
    return a->d <= NORM_THREADS * NORM_PER_THREAD_SMALL ? launch_per<A, NORM_PER_THREAD_SMALL>(a, stream, pdl)
                                                        : launch_per<A, NORM_MAX_PER_THREAD>(a, stream, pdl);
}

cudaError_t bmc_add_rmsnorm(const bmc_norm_args *a, cudaStream_t stream, int pdl) {
    if (a->rows <= 0) return cudaSuccess;
    if (a->d > NORM_THREADS * NORM_MAX_PER_THREAD) return cudaErrorInvalidValue;
    if (a->route_w && (!a->w_b || a->n_experts < 2 || a->n_experts > NORM_MAX_EXPERTS || !a->expert_of || !a->gate))
        return cudaErrorInvalidValue;
    if (a->h_form != BMC_H_ROWS && !a->add) return cudaErrorInvalidValue;
    if (a->h_form == BMC_H_HALVES && a->h_lo_rows <= 0) return cudaErrorInvalidValue;
    if (a->h_form == BMC_H_PARTS && (!a->parts || a->n_parts < 1 || !a->parts_pos)) return cudaErrorInvalidValue;
    if (a->h_form != BMC_H_ROWS && a->h_form != BMC_H_HALVES && a->h_form != BMC_H_PARTS) return cudaErrorInvalidValue;
    return a->act_type == BMC_F16 ? launch<__half>(a, stream, pdl) : launch<__nv_bfloat16>(a, stream, pdl);
}
