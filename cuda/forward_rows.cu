/* The decode row path: one step of many streams (up to BMC_MAX_ROWS at once)
 * as GEMMs over the batch rows, so each weight matrix is read once per step
 * for all the streams instead of once per group of BMC_MAX_STEP_ROWS.
 *
 * Per Mamba layer: residual add + RMSNorm of all rows (16-bit out), in_proj
 * GEMM (cuBLASLt), the conv step per stream (conv_step.cu), x_proj on the
 * CUDA cores from the f32 u (x_proj_rows.cu), the scan step per stream
 * (scan_step.cu: dt_proj and the state update, 16-bit y), out_proj GEMM. Per MoE
 * layer: add + RMSNorm with the top-1 routing in the same kernel
 * (add_rmsnorm.cu), the grouping of the rows by expert and the gather of
 * their 16-bit halves in that order (moe_rows.cu), then fc1 and fc2 as
 * grouped GEMMs over the sorted rows (moe_gemm.cu), the gated activation
 * and the gate-scaled scatter fused in their epilogues: each expert's
 * weights are read once per tile of 64 of its rows, and only the experts the
 * step's tokens chose. Then the final LayerNorm and the LM head GEMM.
 *
 * The states are found through a device array of state pointers (the
 * streams' own allocations; no copies). The batch is padded to a bucket
 * size (bmc_row_buckets) with rows whose state pointer is NULL: the GEMMs
 * compute them, the conv and scan skip them, the routing leaves them out,
 * and no state is touched for them. One CUDA graph per bucket (and with or
 * without the LM head), captured at the bucket's second use (the first runs
 * eagerly: module loads and the GEMM heuristics stay out of the capture).
 *
 * Numerics: the GEMMs multiply 16-bit operands on the tensor cores, so each
 * f32 activation goes in as two halves, hi = bf16(x) and lo = bf16(x - hi)
 * (relative error 2^-17 instead of bf16's 2^-9), stacked as rows B..2B-1
 * of the GEMM input: the weights are read once, the FLOPs double, and the
 * step matches the GEMV path's f32 activations to ~1e-5. Plain bf16
 * activations (as the prefill uses) drift by ~1e-2 over a deep stack and
 * flip near-tied routing decisions, which changes a stream's output
 * entirely; the LM head alone takes single bf16 inputs (no routing
 * follows it). x_proj and dt_proj run in f32 on the CUDA cores. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <algorithm>

#include "backend_internal.cuh"

extern "C" {
#include "rng.h"
}

const int bmc_row_buckets[BMC_ROW_BUCKETS] = {4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024};

static cuda_model *model_ctx(const bm_model *m) { return (cuda_model *)m->backend_ctx; }

#define RTRY(call, what)                                                                                           \
    do {                                                                                                           \
        cudaError_t e_ = (call);                                                                                   \
        if (e_ != cudaSuccess) return bmc_fail_cuda(e_, what);                                                     \
    } while (0)

static void destroy_graphs(rows_scratch *rs) {
    for (int b = 0; b < BMC_ROW_BUCKETS; b++)
        for (int h = 0; h < 2; h++) {
            if (rs->graphs[b][h]) cudaGraphExecDestroy(rs->graphs[b][h]);
            rs->graphs[b][h] = NULL;
            rs->eager_runs[b][h] = 0;
        }
}

/* dt_proj runs inside the scan ("dt+scan"); its own column stays, at zero,
 * so the profile's columns stay comparable */
static const char *const kind_names[12] = {"embed", "norm", "in_proj", "conv", "x_proj", "dt_proj",
                                            "dt+scan", "out_proj", "route", "fc1", "fc2", "head"};

void bmc_rows_release(cuda_session *cs) {
    rows_scratch *rs = &cs->rs;
    for (int b = 0; b < BMC_ROW_BUCKETS && rs->profile; b++) {
        if (!rs->prof_steps[b]) continue;
        double total = 0;
        for (int k = 0; k < 12; k++) total += rs->prof_ms[b][k];
        fprintf(stderr, "row path profile, bucket %d, %d steps, ms/step:", bmc_row_buckets[b], rs->prof_steps[b]);
        for (int k = 0; k < 12; k++) fprintf(stderr, " %s %.3f", kind_names[k], rs->prof_ms[b][k] / rs->prof_steps[b]);
        fprintf(stderr, " | total %.3f\n", total / rs->prof_steps[b]);
    }
    for (int i = 0; i < rs->cap_ev; i++) cudaEventDestroy(rs->ev[i]);
    bmi_free(rs->ev);
    bmi_free(rs->ev_kind);
    destroy_graphs(rs);
    if (rs->mem) cudaFree(rs->mem);
    if (rs->pinned) cudaFreeHost(rs->pinned);
    memset(rs, 0, sizeof *rs);
}

/* Buffers for `rows` rows; a larger bucket reallocates (and drops the graphs,
 * whose pointers then die). */
/* fc2's K slices for a step of `rows` (the experts of the widest MoE layer) */
static int fc2_split(const cuda_model *cm, const bmi_config *c, int rows) {
    return cm->max_experts >= 2 ? bmc_moe_mlp_split(rows, cm->max_experts, c->d_model, c->ffn_hidden, c->swiglu) : 1;
}

static bm_status reserve_rows(cuda_session *cs, const bm_model *m, int rows) {
    rows_scratch *rs = &cs->rs;
    const cuda_model *cm = model_ctx(m);
    if (!rs->pinned) {
        const size_t bytes = (size_t)BMC_MAX_ROWS * (4 + 4 + 8 + 8) + 256;
        RTRY(cudaMallocHost((void **)&rs->pinned, bytes), "cudaMallocHost for the row path");
        memset(rs->pinned, 0, bytes);
        rs->h_u = (double *)rs->pinned;
        rs->h_state_ptrs = (float **)(rs->h_u + BMC_MAX_ROWS);
        rs->h_tokens = (int32_t *)(rs->h_state_ptrs + BMC_MAX_ROWS);
        rs->h_sampled = rs->h_tokens + BMC_MAX_ROWS;
        rs->h_n = rs->h_sampled + BMC_MAX_ROWS;
    }
    if (!rs->ev && getenv("BM_CUDA_ROWS_PROFILE") && getenv("BM_CUDA_ROWS_PROFILE")[0] == '1') {
        const int cap = 16 + 12 * m->config.n_layers;
        rs->ev = (cudaEvent_t *)bmi_calloc((size_t)cap, sizeof *rs->ev);
        rs->ev_kind = (int *)bmi_calloc((size_t)cap, sizeof *rs->ev_kind);
        if (!rs->ev || !rs->ev_kind) return bmi_fail(BM_ERR_OUT_OF_MEMORY, "out of memory for profiling events");
        for (int i = 0; i < cap; i++) {
            RTRY(cudaEventCreate(&rs->ev[i]), "cudaEventCreate");
            rs->cap_ev = i + 1;
        }
        rs->profile = 1;
    }
    if (rows <= rs->cap) return BM_OK;
    const bmi_config *c = &m->config;
    const size_t B = (size_t)rows, d = (size_t)c->d_model, di = (size_t)c->d_inner;
    const size_t F = (size_t)(c->ffn_hidden > 0 ? c->ffn_hidden : 1), g = c->swiglu ? 2 : 1;
    const size_t xd = (size_t)(c->dt_rank + 2 * c->d_state), V = (size_t)c->vocab_size;
    const size_t starts = (size_t)c->n_layers * (size_t)(cm->max_experts + 1);
    (void)g;
    size_t part_rows = 0; /* fc2's K slices x rows, the most of any batch this scratch serves */
    for (int b = 0; b <= BMC_ROW_BUCKETS; b++) { /* the buckets this scratch serves (a step runs one) */
        const int r = b < BMC_ROW_BUCKETS ? bmc_row_buckets[b] : rows;
        if (r <= rows) part_rows = std::max(part_rows, (size_t)fc2_split(cm, c, r) * (size_t)r);
    }
    /* the GEMM inputs and outputs hold 2B rows: the hi and lo halves */
    size_t sizes[] = {
        B * 4, B * 4, B * 8, 16, B * 8,                         /* tokens, sampled, state_ptrs, n, u */
        B * d * 4, 2 * B * d * 4,                               /* res, h */
        2 * B * 2 * di * 4, B * xd * 4, B * 4, part_rows * d * 4, B * V * 4, /* xz, xdbl, gate, eout, logits */
        2 * B * d * 2, 2 * B * d * 2, 2 * B * di * 2,           /* normed16, moe16, y16 */
        2 * B * d * 2, 2 * B * F * 2, B * d * 2,                /* sorted16, m16, final16 */
        B * 4, B * 4, B * 4, starts * 4,                        /* expert_of, order, pos_of, expert_start */
        (size_t)cm->max_experts * 4                             /* moe_done */
    };
    const int n = (int)(sizeof sizes / sizeof sizes[0]);
    size_t total = 0;
    for (int i = 0; i < n; i++) total += (sizes[i] + 255) & ~(size_t)255;
    if (rs->mem) {
        RTRY(cudaStreamSynchronize(cs->stream), "waiting for the device");
        destroy_graphs(rs);
        cudaFree(rs->mem);
        rs->mem = NULL;
        rs->cap = 0;
    }
    char *mem = NULL;
    RTRY(cudaMalloc((void **)&mem, total), "cudaMalloc for the row path");
    cudaError_t e = cudaMemsetAsync(mem, 0, total, cs->stream); /* padding rows read token 0 and finite values */
    if (e != cudaSuccess) {
        cudaFree(mem);
        return bmc_fail_cuda(e, "clearing the row path's scratch");
    }
    void *ptr[n];
    char *p = mem;
    for (int i = 0; i < n; i++) {
        ptr[i] = p;
        p += (sizes[i] + 255) & ~(size_t)255;
    }
    int i = 0;
    rs->tokens = (int32_t *)ptr[i++];
    rs->sampled = (int32_t *)ptr[i++];
    rs->state_ptrs = (float **)ptr[i++];
    rs->n_dev = (int *)ptr[i++];
    rs->u = (double *)ptr[i++];
    rs->res = (float *)ptr[i++];
    rs->h = (float *)ptr[i++];
    rs->xz = (float *)ptr[i++];
    rs->xdbl = (float *)ptr[i++];
    rs->gate = (float *)ptr[i++];
    rs->eout = (float *)ptr[i++];
    rs->logits = (float *)ptr[i++];
    rs->normed16 = ptr[i++];
    rs->moe16 = ptr[i++];
    rs->y16 = ptr[i++];
    rs->sorted16 = ptr[i++];
    rs->m16 = ptr[i++];
    rs->final16 = ptr[i++];
    rs->expert_of = (int *)ptr[i++];
    rs->order = (int *)ptr[i++];
    rs->pos_of = (int *)ptr[i++];
    rs->expert_start = (int *)ptr[i++];
    rs->moe_done = (int *)ptr[i++];
    rs->mem = mem;
    rs->cap = rows;
    return BM_OK;
}

#define STRY(call)                                                                                                 \
    do {                                                                                                           \
        bm_status s_ = (call);                                                                                     \
        if (s_ != BM_OK) return s_;                                                                                \
    } while (0)

static void mark(rows_scratch *rs, cudaStream_t st, int kind) {
    if (!rs->profile || rs->n_ev >= rs->cap_ev) return;
    if (cudaEventRecord(rs->ev[rs->n_ev], st) == cudaSuccess) rs->ev_kind[rs->n_ev++] = kind;
}

/* Enqueue one step of B rows (a bucket) on the session's stream: inputs from
 * the pinned buffers, the layers, and with `head` the LM head. The GEMMs'
 * 16-bit inputs hold 2B rows: row b is bf16(x_b), row B + b the remainder
 * bf16(x_b - hi), so one GEMM reads the weights once for both halves and
 * the partial products are added (fold) by the next kernel. */
static bm_status enqueue_rows(cuda_session *cs, const bm_model *m, int B, int head, int capturing) {
    const bmi_config *c = &m->config;
    const cuda_model *cm = model_ctx(m);
    rows_scratch *rs = &cs->rs;
    cudaStream_t st = cs->stream;
    const int d = c->d_model, di = c->d_inner, R = c->dt_rank, N = c->d_state, xd = R + 2 * N;
    const int F = c->ffn_hidden, g = c->swiglu ? 2 : 1, wt = cm->wtype, V = c->vocab_size, B2 = 2 * B;
    /* Programmatic dependent launch for every kernel after the embedding
     * (each waits for its predecessor before it reads an activation or
     * writes: device_util.cuh); the cuBLASLt GEMMs are plain launches. Off
     * in the profiling mode: the events between the launches would order
     * them anyway, and each operation's time stays its own. */
    const int pdl = cm->pdl && !rs->profile;
    const unsigned skip = cm->debug_skip; /* measurement only: BM_CUDA_DEBUG_SKIP */
    rs->n_ev = 0;
    if (!capturing) mark(rs, st, 0);
    RTRY(cudaMemcpyAsync(rs->tokens, rs->h_tokens, (size_t)B * sizeof(int32_t), cudaMemcpyHostToDevice, st),
         "copying tokens");
    RTRY(cudaMemcpyAsync(rs->state_ptrs, rs->h_state_ptrs, (size_t)B * sizeof(float *), cudaMemcpyHostToDevice, st),
         "copying state pointers");
    RTRY(cudaMemcpyAsync(rs->n_dev, rs->h_n, sizeof(int), cudaMemcpyHostToDevice, st), "copying the row count");
    /* inside a capture a plain record only orders captured work: the host waits on this one */
    RTRY(capturing ? cudaEventRecordWithFlags(cs->inputs_consumed, st, cudaEventRecordExternal)
                   : cudaEventRecord(cs->inputs_consumed, st),
         "recording an event");
    RTRY(bmc_embed(rs->tokens, B, cm->embedding, wt, d, rs->h, rs->res, st, 0), "embedding");
#define MARK(kind)                                                                                                 \
    do {                                                                                                           \
        if (!capturing) mark(rs, st, kind);                                                                        \
    } while (0)
    MARK(0);
    /* How the last block left its output in rs->h (bmc_norm_args' h_form):
     * a serial layer's out_proj or fc2 slices are finished by the next norm
     * as it reads them, which saves the fold or scatter launch. The last
     * layer's are finished by their launch (the final LayerNorm reads plain
     * rows), and so is a parallel layer's out_proj: fc2 adds onto it.
     * The PARTS form reads rs->eout, pos_of, gate and expert_of of this
     * layer, which nothing rewrites before the next norm reads them (a
     * routing norm rewrites a row's expert and gate in the block that has
     * just read them, and the grouping that rewrites pos_of is the launch
     * after it). */
    int h_form = BMC_H_ROWS, h_parts = 0, h_parts_add = 0;
    const float *h_bias = NULL, *h_parts_bias = NULL;
    for (int i = 0; i < c->n_layers; i++) {
        const dev_layer *L = &cm->layers[i];
        const int parallel = L->has_mamba && L->n_experts > 0, norm_follows = i + 1 < c->n_layers;
        bmc_norm_args na;
        memset(&na, 0, sizeof na);
        na.res = rs->res;
        na.h = rs->h;
        na.add = 1;
        na.rows = B;
        na.d = d;
        na.eps = BMC_NORM_EPS;
        na.act_type = wt;
        na.lo_rows = B;
        na.n_dev = rs->n_dev;
        na.h_form = h_form;
        if (h_form == BMC_H_HALVES) {
            na.h_lo_rows = B;
            na.h_bias = h_bias;
        } else if (h_form == BMC_H_PARTS) {
            na.parts = rs->eout;
            na.n_parts = h_parts;
            na.part_stride = (long long)B * d;
            na.parts_pos = rs->pos_of;
            na.parts_gate = rs->gate;
            na.parts_expert = rs->expert_of;
            na.parts_bias = h_parts_bias;
            na.parts_add = h_parts_add;
        }
        if (L->has_mamba) {
            na.w_a = L->norm;
            na.out_a_16 = rs->normed16;
        }
        int *starts = NULL; /* a dense MLP (E 1) takes every row */
        if (L->n_experts > 0) {
            /* only the 16-bit halves: the expert GEMMs read those, the routing reads registers */
            na.w_b = parallel ? L->norm_moe : L->norm;
            na.out_b_16 = rs->moe16;
        }
        if (L->n_experts >= 2) {
            starts = rs->expert_start + (size_t)i * (size_t)(cm->max_experts + 1);
            na.route_w = L->router_w;
            na.route_b = L->router_b;
            na.n_experts = L->n_experts;
            na.expert_of = rs->expert_of;
            na.gate = rs->gate;
        }
        RTRY(bmc_add_rmsnorm(&na, st, pdl), "residual add, norm and routing");
        MARK(1); /* with the fold or scatter of the last block when the norm finished it */
        if (L->has_mamba) {
            const dev_mamba *w = &L->mamba;
            if (!(skip & BMC_SKIP_IN_PROJ)) {
                STRY(bmc_session_gemm(cs, st, B2, 2 * di, d, rs->normed16, d, wt, w->in_proj, d, rs->xz, 2 * di,
                                      BMC_GEMM_OUT_F32));
                RTRY(bmc_add_bias(rs->xz, B, 2 * di, 2 * di, w->in_proj_bias, st, pdl), "in_proj bias");
            }
            MARK(2);
            bmc_conv_step_args ca;
            memset(&ca, 0, sizeof ca);
            ca.nb = B;
            ca.di = di;
            ca.K = c->d_conv;
            ca.xz = rs->xz;
            ca.ldxz = 2 * di;
            ca.lo_rows = B;
            ca.state_ptrs = rs->state_ptrs;
            ca.conv_offset = (long long)bmi_state_conv_offset(c, L->mamba_index);
            ca.conv_w = w->conv_w;
            ca.conv_b = w->conv_b;
            if (!(skip & BMC_SKIP_CONV)) RTRY(bmc_conv_step(&ca, st, pdl), "conv step");
            MARK(3);
            if (!(skip & BMC_SKIP_X_PROJ))
                RTRY(bmc_x_proj_rows(rs->xz, 2 * di, B, di, w->x_proj, wt, xd, rs->xdbl, xd, 0, st, pdl), "x_proj");
            MARK(4);
            bmc_step_scan_args sa = bmc_layer_scan_args(c, L, B, rs->xz, rs->xdbl, rs->state_ptrs);
            sa.y16 = rs->y16;
            sa.act_type = wt;
            sa.y_lo_rows = B;
            if (!(skip & BMC_SKIP_SCAN)) RTRY(bmc_scan_step(&sa, wt, st, pdl), "scan step");
            MARK(6);
            if (!(skip & BMC_SKIP_OUT_PROJ))
                STRY(bmc_session_gemm(cs, st, B2, d, di, rs->y16, di, wt, w->out_proj, di, rs->h, d,
                                      BMC_GEMM_OUT_F32));
            h_form = !parallel && norm_follows ? BMC_H_HALVES : BMC_H_ROWS;
            h_bias = w->out_proj_bias;
            if (h_form == BMC_H_ROWS && !(skip & BMC_SKIP_OUT_PROJ))
                RTRY(bmc_fold_rows(rs->h, B, d, d, B, w->out_proj_bias, st, pdl), "out_proj halves");
            MARK(7);
        }
        if (L->n_experts > 0) {
            const int E = L->n_experts;
            if (E >= 2) {
                /* the rows grouped by expert (the norm chose the experts) and
                 * their two halves gathered into that order: fc1 reads sorted16
                 * as it is (no gather of its own on the wgmma path) */
                bmc_group_args ga;
                memset(&ga, 0, sizeof ga);
                ga.rows = B;
                ga.n_dev = rs->n_dev;
                ga.E = E;
                ga.expert_of = rs->expert_of;
                ga.order = rs->order;
                ga.pos_of = rs->pos_of;
                ga.expert_start = starts;
                ga.src = rs->moe16;
                ga.d = d;
                ga.planes = 2;
                ga.plane_rows = B;
                ga.dst = rs->sorted16;
                ga.zero = rs->moe_done; /* for a chained fc1 -> fc2 launch (bmc_moe_mlp) */
                ga.n_zero = E;
                if (!(skip & BMC_SKIP_ROUTER)) RTRY(bmc_group_rows(&ga, st, pdl), "grouping the rows by expert");
            }
            MARK(8); /* "route": the grouping and gather (the routing itself ran in the norm) */
            bmc_moe_gemm_args ma;
            memset(&ma, 0, sizeof ma);
            ma.mode = c->swiglu ? BMC_MOE_GATED : BMC_MOE_ACT;
            ma.N = F;
            ma.K = d;
            ma.E = E;
            ma.max_rows = B;
            ma.X = E >= 2 ? rs->sorted16 : rs->moe16; /* the rows in the sorted order */
            ma.ldx = d;
            ma.x_lo_rows = B;
            ma.y_lo_rows = B;
            ma.W = L->fc1;
            ma.expert_stride = (long long)g * F * d;
            ma.expert_start = starts;
            ma.bias = L->fc1_bias;
            ma.bias_stride = (long long)g * F;
            ma.act = (int)c->activation;
            ma.y = rs->m16;
            ma.ldy = F;
            ma.pdl = pdl;
            bmc_moe_gemm_args ma2;
            memset(&ma2, 0, sizeof ma2);
            /* fc2 has few output features and long rows: an MoE layer splits K
             * (more blocks streaming the experts) into partial sums that the
             * scatter adds in order; a dense MLP scatters directly */
            const int split = E >= 2 ? fc2_split(cm, c, B) : 1;
            ma2.mode = split > 1 ? BMC_MOE_PARTIAL : BMC_MOE_SCATTER;
            ma2.k_split = split;
            ma2.N = d;
            ma2.K = F;
            ma2.E = E;
            ma2.max_rows = B;
            ma2.X = rs->m16;
            ma2.ldx = F;
            ma2.x_lo_rows = B;
            ma2.W = L->fc2;
            ma2.expert_stride = (long long)d * F;
            ma2.expert_start = starts;
            ma2.bias = L->fc2_bias;
            ma2.bias_stride = d;
            ma2.y = split > 1 ? rs->eout : rs->h;
            ma2.ldy = d;
            ma2.y_rows = E >= 2 ? rs->order : NULL;
            ma2.gates = E >= 2 ? rs->gate : NULL;
            ma2.add = parallel;
            ma2.pdl = pdl;
            /* one launch where it can (the blocks that finish fc1 early start
             * fc2), except while profiling: each keeps its own time there */
            if (!(skip & (BMC_SKIP_FC1 | BMC_SKIP_FC2)) && !rs->profile && E >= 2) {
                RTRY(bmc_moe_mlp(&ma, &ma2, rs->moe_done, wt, st), "experts");
            } else {
                if (!(skip & BMC_SKIP_FC1)) RTRY(bmc_moe_gemm(&ma, wt, st), "expert fc1");
                MARK(9);
                if (!(skip & BMC_SKIP_FC2)) RTRY(bmc_moe_gemm(&ma2, wt, st), "expert fc2");
            }
            h_form = split > 1 && norm_follows ? BMC_H_PARTS : BMC_H_ROWS;
            h_parts = split;
            h_parts_bias = L->fc2_bias;
            h_parts_add = parallel;
            if (split > 1 && h_form == BMC_H_ROWS)
                RTRY(bmc_scatter_parts(rs->eout, split, (long long)B * d, rs->n_dev, rs->order, rs->gate, L->fc2_bias,
                                       rs->expert_of, B, d, parallel, rs->h, st, pdl),
                     "expert outputs to their rows");
            MARK(10);
        }
    }
    if (head && !(skip & BMC_SKIP_HEAD)) {
        RTRY(bmc_add_layernorm(rs->res, rs->h, 0, B, d, cm->final_w, cm->final_b, BMC_NORM_EPS, rs->final16, wt, st,
                               pdl),
             "final norm");
        STRY(bmc_session_gemm(cs, st, B, V, d, rs->final16, d, wt, cm->lm_head, d, rs->logits, V, BMC_GEMM_OUT_F32));
        RTRY(bmc_add_bias(rs->logits, B, V, V, cm->lm_head_bias, st, pdl), "LM head bias");
        MARK(11);
    }
#undef MARK
    return BM_OK;
}

static int bucket_of(int n) {
    for (int b = 0; b < BMC_ROW_BUCKETS; b++)
        if (bmc_row_buckets[b] >= n) return b;
    return BMC_ROW_BUCKETS - 1;
}

/* Launch one step of n <= BMC_MAX_ROWS streams; no synchronisation. */
static bm_status launch_rows(cuda_session *cs, const bm_model *m, bm_state *const *states, const int32_t *tokens,
                             int n, int head) {
    rows_scratch *rs = &cs->rs;
    const int bi = bucket_of(n), B = bmc_row_buckets[bi];
    bm_status r = reserve_rows(cs, m, B);
    if (r) return r;
    /* The previous step must have copied its inputs out of the pinned buffers. */
    RTRY(cudaEventSynchronize(cs->inputs_consumed), "waiting for the previous step");
    for (int i = 0; i < B; i++) {
        rs->h_tokens[i] = i < n ? tokens[i] : 0;
        rs->h_state_ptrs[i] = i < n ? (float *)states[i]->data : NULL;
    }
    *rs->h_n = n;
    rs->last_rows = n;
    if (rs->profile) {
        if ((r = enqueue_rows(cs, m, B, head, 0))) return r;
        RTRY(cudaStreamSynchronize(cs->stream), "profiled step");
        for (int i = 1; i < rs->n_ev; i++) {
            float ms = 0;
            if (cudaEventElapsedTime(&ms, rs->ev[i - 1], rs->ev[i]) == cudaSuccess) rs->prof_ms[bi][rs->ev_kind[i]] += ms;
        }
        rs->prof_steps[bi]++;
        return BM_OK;
    }
    cudaGraphExec_t *slot = &rs->graphs[bi][head];
    if (!*slot && rs->eager_runs[bi][head] == 0) {
        rs->eager_runs[bi][head] = 1;
        return enqueue_rows(cs, m, B, head, 0);
    }
    if (!*slot) {
        cudaGraph_t graph = NULL;
        RTRY(cudaStreamBeginCapture(cs->stream, cudaStreamCaptureModeThreadLocal), "cudaStreamBeginCapture");
        bm_status er = enqueue_rows(cs, m, B, head, 1);
        cudaError_t e = cudaStreamEndCapture(cs->stream, &graph);
        if (er) {
            if (graph) cudaGraphDestroy(graph);
            return er;
        }
        if (e != cudaSuccess) {
            if (graph) cudaGraphDestroy(graph);
            return bmc_fail_cuda(e, "capturing the row-path step");
        }
        e = cudaGraphInstantiate(slot, graph, 0);
        cudaGraphDestroy(graph);
        if (e != cudaSuccess) {
            *slot = NULL;
            return bmc_fail_cuda(e, "instantiating the row-path graph");
        }
    }
    RTRY(cudaGraphLaunch(*slot, cs->stream), "cudaGraphLaunch");
    return BM_OK;
}

bm_status bmc_rows_step_batch(bm_session *s, bm_state *const *states, const int32_t *tokens, size_t n, float *logits) {
    cuda_session *cs = (cuda_session *)s->backend_ctx;
    const bm_model *m = s->model;
    const size_t V = (size_t)m->config.vocab_size;
    RTRY(cudaSetDevice(model_ctx(m)->device), "cudaSetDevice");
    for (size_t done = 0; done < n; done += BMC_MAX_ROWS) {
        const int nb = n - done < BMC_MAX_ROWS ? (int)(n - done) : BMC_MAX_ROWS;
        bm_status r = launch_rows(cs, m, states + done, tokens + done, nb, logits != NULL);
        if (r) {
            cudaStreamSynchronize(cs->stream);
            return r;
        }
        if (logits)
            RTRY(cudaMemcpyAsync(logits + done * V, cs->rs.logits, (size_t)nb * V * sizeof(float),
                                 cudaMemcpyDeviceToHost, cs->stream),
                 "copying logits");
        /* the next group rewrites the logits buffer and the pinned inputs only after this one is queued */
    }
    if (logits) RTRY(cudaStreamSynchronize(cs->stream), "decode step");
    else RTRY(cudaGetLastError(), "decode step");
    for (size_t i = 0; i < n; i++) states[i]->n_tokens++;
    return BM_OK;
}

bm_status bmc_rows_step_batch_sample(bm_session *s, bm_state *const *states, const int32_t *tokens, size_t n,
                                     const bm_sampler_params *p, uint64_t *rngs, const int32_t *recent,
                                     size_t n_recent, int32_t *out_tokens) {
    cuda_session *cs = (cuda_session *)s->backend_ctx;
    rows_scratch *rs = &cs->rs;
    const bm_model *m = s->model;
    const int V = m->config.vocab_size;
    const int n_valid = p->n_vocab_valid > 0 ? p->n_vocab_valid : V;
    const int device_ok = n_recent <= BMC_SAMPLE_MAX_RECENT &&
                          (p->temperature == 0.0f || (p->top_k > 0 && p->top_k <= BMC_SAMPLE_MAX_K) ||
                           n_valid <= BMC_SAMPLE_MAX_K);
    RTRY(cudaSetDevice(model_ctx(m)->device), "cudaSetDevice");
    if (device_ok && n_recent) {
        memcpy(cs->h_recent, recent, n_recent * sizeof(int32_t));
        RTRY(cudaMemcpyAsync(cs->d_recent, cs->h_recent, n_recent * sizeof(int32_t), cudaMemcpyHostToDevice,
                             cs->stream),
             "copying recent ids");
    }
    bm_status r = BM_OK;
    float *host = NULL;
    uint64_t *next_rng = (uint64_t *)bmi_malloc((n < BMC_MAX_ROWS ? n : BMC_MAX_ROWS) * sizeof(uint64_t));
    if (!next_rng) return bmi_fail(BM_ERR_OUT_OF_MEMORY, "out of memory for %zu generators", n);
    for (size_t done = 0; done < n && r == BM_OK; done += BMC_MAX_ROWS) {
        const int nb = n - done < BMC_MAX_ROWS ? (int)(n - done) : BMC_MAX_ROWS;
        if ((r = launch_rows(cs, m, states + done, tokens + done, nb, 1))) break;
        for (int i = 0; i < nb; i++) states[done + i]->n_tokens++;
        for (int i = 0; i < nb; i++) rs->h_sampled[i] = -2;
        if (device_ok) {
            for (int i = 0; i < nb; i++) {
                next_rng[i] = rngs[done + i];
                rs->h_u[i] = bmi_rng_uniform(&next_rng[i]);
            }
            bmc_sample_args a;
            memset(&a, 0, sizeof a);
            a.logits = rs->logits;
            a.ld = V;
            a.rows = nb;
            a.n_valid = n_valid;
            a.temperature = p->temperature;
            a.top_p = p->top_p;
            a.min_p = p->min_p;
            a.repeat_penalty = p->repeat_penalty;
            a.top_k = p->top_k;
            a.recent = cs->d_recent;
            a.n_recent = (int)n_recent;
            a.u_dev = rs->u;
            a.tokens = rs->sampled;
            cudaError_t e = cudaMemcpyAsync(rs->u, rs->h_u, (size_t)nb * sizeof(double), cudaMemcpyHostToDevice,
                                            cs->stream);
            if (e == cudaSuccess) e = bmc_sample(&a, cs->stream);
            if (e == cudaSuccess)
                e = cudaMemcpyAsync(rs->h_sampled, rs->sampled, (size_t)nb * sizeof(int32_t), cudaMemcpyDeviceToHost,
                                    cs->stream);
            if (e != cudaSuccess) {
                r = bmc_fail_cuda(e, "sampling");
                break;
            }
        }
        cudaError_t e = cudaStreamSynchronize(cs->stream);
        if (e != cudaSuccess) {
            r = bmc_fail_cuda(e, "decode step");
            break;
        }
        for (int i = 0; i < nb && r == BM_OK; i++) {
            const int32_t t = rs->h_sampled[i];
            if (t == -1) {
                r = bmi_fail(BM_ERR_INVALID_ARGUMENT, "bm_sample: no candidate: all logits are NaN or -inf");
                break;
            }
            if (t >= 0) {
                rngs[done + i] = next_rng[i];
                out_tokens[done + i] = t;
                continue;
            }
            /* Not something the device sampler covers: the host does this row. */
            if (!host && !(host = (float *)bmi_malloc((size_t)V * sizeof(float)))) {
                r = bmi_fail(BM_ERR_OUT_OF_MEMORY, "out of memory for logits");
                break;
            }
            if ((e = cudaMemcpy(host, rs->logits + (size_t)i * V, (size_t)V * sizeof(float), cudaMemcpyDeviceToHost)) !=
                cudaSuccess) {
                r = bmc_fail_cuda(e, "copying logits");
                break;
            }
            r = bm_sample(host, (size_t)V, p, &rngs[done + i], recent, n_recent, &out_tokens[done + i]);
        }
    }
    bmi_free(host);
    bmi_free(next_rng);
    return r;
}

/* ---- for bm-bench ------------------------------------------------------------ */

extern "C" bm_status bmi_cuda_last_step_experts(bm_session *s, int *pairs, int *rows) {
    if (!s || !pairs || s->model->backend != &bmi_cuda_backend)
        return bmi_fail(BM_ERR_INVALID_ARGUMENT, "bmi_cuda_last_step_experts: not a CUDA session");
    cuda_session *cs = (cuda_session *)s->backend_ctx;
    const cuda_model *cm = model_ctx(s->model);
    const bmi_config *c = &s->model->config;
    *pairs = -1;
    if (rows) *rows = cs->rs.last_rows;
    if (!cs->rs.last_rows) return BM_OK; /* the GEMV path keeps no routing */
    const size_t per = (size_t)(cm->max_experts + 1), count = (size_t)c->n_layers * per;
    int *h = (int *)bmi_malloc(count * sizeof(int));
    if (!h) return bmi_fail(BM_ERR_OUT_OF_MEMORY, "out of memory");
    RTRY(cudaStreamSynchronize(cs->stream), "waiting for the step");
    cudaError_t e = cudaMemcpy(h, cs->rs.expert_start, count * sizeof(int), cudaMemcpyDeviceToHost);
    if (e != cudaSuccess) {
        bmi_free(h);
        return bmc_fail_cuda(e, "reading the routing");
    }
    int total = 0;
    for (int i = 0; i < c->n_layers; i++) {
        const int E = c->layers[i].n_experts;
        if (E < 2) continue;
        for (int x = 0; x < E; x++) total += h[i * per + x + 1] > h[i * per + x];
    }
    bmi_free(h);
    *pairs = total;
    return BM_OK;
}
