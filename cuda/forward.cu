/* The CUDA forward passes (SPEC.md "Forward pass"):
 *  - prefill: one stream, up to BMC_PREFILL_ROWS tokens per chunk, GEMMs
 *    through cuBLASLt, the chunked scan, MoE by grouping tokens per expert;
 *  - decode: up to BMC_MAX_STEP_ROWS streams advance one token in one CUDA
 *    graph replay (captured once per batch size): inputs copied from pinned
 *    memory inside the graph, GEMV kernels chained with programmatic
 *    dependent launch, no host synchronisation unless logits are wanted. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backend_internal.cuh"

extern "C" {
#include "rng.h"
}

static cuda_model *model_ctx(const bm_model *m) { return (cuda_model *)m->backend_ctx; }
static int act16(const cuda_model *cm) { return cm->wtype; }

/* ---- prefill scratch ---------------------------------------------------------- */

static bm_status reserve_prefill(cuda_session *cs, const bm_model *m, int rows) {
    prefill_scratch *ps = &cs->ps;
    if (rows <= ps->rows) return BM_OK;
    const bmi_config *c = &m->config;
    const size_t T = (size_t)rows, Tp = T + BMC_EXPERT_ROW_BUCKET, d = (size_t)c->d_model, di = (size_t)c->d_inner;
    const size_t F = (size_t)(c->ffn_hidden > 0 ? c->ffn_hidden : 1), g = c->swiglu ? 2 : 1;
    const size_t xd = (size_t)(c->dt_rank + 2 * c->d_state), V = (size_t)c->vocab_size;
    int E = 1;
    for (int i = 0; i < c->n_layers; i++)
        if (c->layers[i].n_experts > E) E = c->layers[i].n_experts;
    const size_t LR = BMC_LOGIT_ROWS;
    /* bytes of each buffer, in the order of the pointers below */
    size_t sizes[] = {
        T * 4,                                                   /* tokens */
        T * d * 4, T * d * 4, T * d * 4,                         /* res, h, normed_moe */
        T * 2 * di * 4, T * di * 4, T * xd * 4, T * di * 4,      /* xz, u, xdbl, delta */
        Tp * d * 4,                                              /* eout */
        bmc_scan_prefill_scratch_floats(rows, c->d_inner, c->d_state) * 4,
        T * 4, LR * V * 4,                                       /* gate, logits */
        T * d * 2, T * d * 2, T * di * 2, T * di * 2,            /* normed16, moe16, u16, y16 */
        Tp * d * 2, Tp * g * F * 2, Tp * F * 2, LR * d * 2,      /* gathered16, act16, m16, final16 */
        T * 4, T * 4, (size_t)(E + 1) * 4                        /* expert_of, order, expert_start */
    };
    const int n = (int)(sizeof sizes / sizeof sizes[0]);
    size_t total = 0;
    for (int i = 0; i < n; i++) total += (sizes[i] + 255) & ~(size_t)255;
    char *mem = NULL;
    cudaError_t e = cudaMalloc((void **)&mem, total);
    if (e != cudaSuccess) return bmc_fail_cuda(e, "cudaMalloc for prefill scratch");
    /* Zero once: padding rows of the expert GEMMs read it and must stay finite. */
    if ((e = cudaMemsetAsync(mem, 0, total, cs->stream)) != cudaSuccess) {
        cudaFree(mem);
        return bmc_fail_cuda(e, "clearing prefill scratch");
    }
    if (ps->mem) {
        cudaStreamSynchronize(cs->stream);
        cudaFree(ps->mem);
    }
    ps->mem = mem;
    ps->rows = rows;
    void *ptr[n];
    char *p = mem;
    for (int i = 0; i < n; i++) {
        ptr[i] = p;
        p += (sizes[i] + 255) & ~(size_t)255;
    }
    int i = 0;
    ps->tokens = (int32_t *)ptr[i++];
    ps->res = (float *)ptr[i++];
    ps->h = (float *)ptr[i++];
    ps->normed_moe = (float *)ptr[i++];
    ps->xz = (float *)ptr[i++];
    ps->u = (float *)ptr[i++];
    ps->xdbl = (float *)ptr[i++];
    ps->delta = (float *)ptr[i++];
    ps->eout = (float *)ptr[i++];
    ps->chunk = (float *)ptr[i++];
    ps->gate = (float *)ptr[i++];
    ps->logits = (float *)ptr[i++];
    ps->normed16 = ptr[i++];
    ps->moe16 = ptr[i++];
    ps->u16 = ptr[i++];
    ps->y16 = ptr[i++];
    ps->gathered16 = ptr[i++];
    ps->act16 = ptr[i++];
    ps->m16 = ptr[i++];
    ps->final16 = ptr[i++];
    ps->expert_of = (int *)ptr[i++];
    ps->order = (int *)ptr[i++];
    ps->expert_start = (int *)ptr[i++];
    return BM_OK;
}

/* ---- prefill ------------------------------------------------------------------- */

/* One stream's share of a prefill chunk: rows [r0, r0 + T) of the chunk are
 * its tokens (tokens[0..T)), in order, continuing its state. A chunk holds
 * one segment (bm_prefill) or several packed back to back (bm_prefill_batch);
 * a stream has at most one segment per chunk. */
typedef struct prefill_seg {
    float *state;
    const int32_t *tokens;
    int r0, T;
    float *logits; /* NULL, or where the logits after the segment's last token go */
    size_t stream; /* its index in the caller's arrays */
} prefill_seg;

typedef struct prefill_ctx {
    cuda_session *cs;
    const bm_model *m;
    cuda_model *cm;
    cudaStream_t st;
    int T;                    /* rows of the chunk */
    const prefill_seg *segs;
    int n_segs;
} prefill_ctx;

#define KTRY(call, what)                                                                                           \
    do {                                                                                                           \
        cudaError_t e_ = (call);                                                                                   \
        if (e_ != cudaSuccess) return bmc_fail_cuda(e_, what);                                                     \
    } while (0)

bm_status bmc_session_gemm(cuda_session *cs, cudaStream_t st, int m, int n_out, int k, const void *x, int ldx,
                           int x_type, const void *W, int ldw, void *y, int ldy, int y_kind) {
    bmc_gemm_args a = {m, n_out, k, x, ldx, x_type, W, ldw, y, ldy, y_kind};
    const char *what = "";
    int r = bmc_gemm(cs->lt, cs->gemm_cache, cs->workspace, BMC_WORKSPACE_BYTES, &a, st, &what);
    if (r) return bmi_fail(BM_ERR_DEVICE, "cuBLASLt: %s failed with status %d (m %d, n %d, k %d)", what, r, m, n_out, k);
    return BM_OK;
}

static bm_status gemm(prefill_ctx *p, int m, int n_out, int k, const void *x, int ldx, int x_type, const void *W,
                      int ldw, void *y, int ldy, int y_kind) {
    return bmc_session_gemm(p->cs, p->st, m, n_out, k, x, ldx, x_type, W, ldw, y, ldy, y_kind);
}

static bm_status prefill_mamba(prefill_ctx *p, const dev_layer *L) {
    const bmi_config *c = &p->m->config;
    const dev_mamba *w = &L->mamba;
    prefill_scratch *ps = &p->cs->ps;
    const int T = p->T, d = c->d_model, di = c->d_inner, R = c->dt_rank, N = c->d_state, xd = R + 2 * N;
    const int wt = p->cm->wtype;
    const size_t es = 2; /* bytes of a 16-bit element */
    bm_status st;
    if ((st = gemm(p, T, 2 * di, d, ps->normed16, d, wt, w->in_proj, d, ps->xz, 2 * di, BMC_GEMM_OUT_F32))) return st;
    KTRY(bmc_add_bias(ps->xz, T, 2 * di, 2 * di, w->in_proj_bias, p->st, 0), "in_proj bias");
    /* the conv and the scan run per stream, on its rows and its state */
    for (int i = 0; i < p->n_segs; i++) {
        const prefill_seg *g = &p->segs[i];
        float *conv = g->state + bmi_state_conv_offset(c, L->mamba_index);
        KTRY(bmc_conv_prefill(ps->xz + (size_t)g->r0 * 2 * di, 2 * di, g->T, di, c->d_conv, conv, w->conv_w, w->conv_b,
                              ps->u + (size_t)g->r0 * di, (char *)ps->u16 + (size_t)g->r0 * di * es, wt, p->st),
             "conv");
    }
    if ((st = gemm(p, T, xd, di, ps->u16, di, wt, w->x_proj, di, ps->xdbl, xd, BMC_GEMM_OUT_F32))) return st;
    if ((st = gemm(p, T, di, R, ps->xdbl, xd, BMC_GEMM_F32, w->dt_proj_f32, R, ps->delta, di, BMC_GEMM_OUT_F32)))
        return st;
    for (int i = 0; i < p->n_segs; i++) {
        const prefill_seg *g = &p->segs[i];
        const size_t r0 = (size_t)g->r0;
        bmc_scan_args s;
        memset(&s, 0, sizeof s);
        s.T = g->T;
        s.di = di;
        s.R = R;
        s.N = N;
        s.K = c->d_conv;
        s.delta_raw = ps->delta + r0 * di;
        s.dt_bias = w->dt_bias;
        s.u = ps->u + r0 * di;
        s.xdbl = ps->xdbl + r0 * xd;
        s.ldxdbl = xd;
        s.xz = ps->xz + r0 * 2 * di;
        s.ldxz = 2 * di;
        s.A = w->A;
        s.D = w->D;
        s.conv_state = g->state + bmi_state_conv_offset(c, L->mamba_index);
        s.ssm_state = g->state + bmi_state_ssm_offset(c, L->mamba_index);
        s.y16 = (char *)ps->y16 + r0 * di * es;
        s.act_type = wt;
        s.chunk_scratch = ps->chunk;
        KTRY(bmc_scan_prefill(&s, p->st), "scan");
    }
    if ((st = gemm(p, T, d, di, ps->y16, di, wt, w->out_proj, di, ps->h, d, BMC_GEMM_OUT_F32))) return st;
    KTRY(bmc_add_bias(ps->h, T, d, d, w->out_proj_bias, p->st, 0), "out_proj bias");
    return BM_OK;
}

/* The MLP/MoE branch on ps->normed_moe (f32) / ps->moe16; its output goes to
 * ps->h (added when `add`, for parallel layers). */
static bm_status prefill_moe(prefill_ctx *p, const dev_layer *L, int add) {
    const bmi_config *c = &p->m->config;
    prefill_scratch *ps = &p->cs->ps;
    const int T = p->T, d = c->d_model, F = c->ffn_hidden, g = c->swiglu ? 2 : 1, E = L->n_experts;
    const int wt = p->cm->wtype;
    const size_t es = 2; /* bytes of a 16-bit element */
    bm_status st;
    if (E == 1) {
        if ((st = gemm(p, T, g * F, d, ps->moe16, d, wt, L->fc1, d, ps->act16, g * F, BMC_GEMM_OUT_16))) return st;
        KTRY(bmc_gated_act(ps->act16, T, F, c->swiglu, c->activation, L->fc1_bias, NULL, NULL, ps->m16, wt, p->st),
             "gated activation");
        if ((st = gemm(p, T, d, F, ps->m16, F, wt, L->fc2, F, ps->eout, d, BMC_GEMM_OUT_F32))) return st;
        KTRY(bmc_scatter_rows(ps->eout, NULL, NULL, L->fc2_bias, NULL, T, d, add, ps->h, p->st), "scatter");
        return BM_OK;
    }
    int *starts = p->cs->h_starts;
    KTRY(bmc_route_prefill(ps->normed_moe, T, d, L->router_w, L->router_b, E, ps->expert_of, ps->gate, ps->order,
                           ps->expert_start, starts, p->st),
         "routing");
    KTRY(bmc_gather_rows(ps->moe16, ps->order, T, d, ps->gathered16, p->st), "gather");
    /* The GEMM sizes come from the routing: the one host round trip of a
     * prefill MoE layer (decode has none). */
    KTRY(cudaStreamSynchronize(p->st), "routing");
    const size_t fc1_n = (size_t)g * F * d, fc2_n = (size_t)d * F;
    for (int e = 0; e < E; e++) {
        const int r0 = starts[e], rows = starts[e + 1] - starts[e];
        if (rows == 0) continue;
        const int padded = (rows + BMC_EXPERT_ROW_BUCKET - 1) / BMC_EXPERT_ROW_BUCKET * BMC_EXPERT_ROW_BUCKET;
        if ((st = gemm(p, padded, g * F, d, (const char *)ps->gathered16 + (size_t)r0 * d * es, d, wt,
                       (const char *)L->fc1 + (size_t)e * fc1_n * es, d, (char *)ps->act16 + (size_t)r0 * g * F * es,
                       g * F, BMC_GEMM_OUT_16)))
            return st;
    }
    KTRY(bmc_gated_act(ps->act16, T, F, c->swiglu, c->activation, L->fc1_bias, ps->order, ps->expert_of, ps->m16, wt,
                       p->st),
         "gated activation");
    for (int e = 0; e < E; e++) {
        const int r0 = starts[e], rows = starts[e + 1] - starts[e];
        if (rows == 0) continue;
        const int padded = (rows + BMC_EXPERT_ROW_BUCKET - 1) / BMC_EXPERT_ROW_BUCKET * BMC_EXPERT_ROW_BUCKET;
        if ((st = gemm(p, padded, d, F, (const char *)ps->m16 + (size_t)r0 * F * es, F, wt,
                       (const char *)L->fc2 + (size_t)e * fc2_n * es, F, ps->eout + (size_t)r0 * d, d,
                       BMC_GEMM_OUT_F32)))
            return st;
    }
    KTRY(bmc_scatter_rows(ps->eout, ps->order, ps->gate, L->fc2_bias, ps->expert_of, T, d, add, ps->h, p->st),
         "scatter");
    return BM_OK;
}

/* The final LayerNorm and LM head for rows [r0, r0 + rows) of the chunk,
 * copied to host `out`. */
static bm_status prefill_logits(prefill_ctx *p, int r0, int rows, float *out) {
    const bmi_config *c = &p->m->config;
    prefill_scratch *ps = &p->cs->ps;
    const int d = c->d_model, V = c->vocab_size;
    for (int done = 0; done < rows; done += BMC_LOGIT_ROWS) {
        const int n = rows - done < BMC_LOGIT_ROWS ? rows - done : BMC_LOGIT_ROWS;
        KTRY(bmc_add_layernorm(ps->res, ps->h, r0 + done, n, d, p->cm->final_w, p->cm->final_b, BMC_NORM_EPS,
                               ps->final16, act16(p->cm), p->st, 0),
             "final norm");
        bm_status st = gemm(p, n, V, d, ps->final16, d, p->cm->wtype, p->cm->lm_head, d, ps->logits, V, BMC_GEMM_OUT_F32);
        if (st) return st;
        KTRY(bmc_add_bias(ps->logits, n, V, V, p->cm->lm_head_bias, p->st, 0), "LM head bias");
        KTRY(cudaMemcpyAsync(out + (size_t)done * V, ps->logits, (size_t)n * V * sizeof(float), cudaMemcpyDeviceToHost,
                             p->st),
             "copying logits");
    }
    return BM_OK;
}

/* One chunk: the segments' tokens packed into T rows. all_positions (one
 * segment only): logits of every row to `logits`; otherwise each segment's
 * own logits pointer gets its last row's logits. */
static bm_status prefill_chunk(prefill_ctx *p, float *logits, int all_positions) {
    const bmi_config *c = &p->m->config;
    cuda_session *cs = p->cs;
    prefill_scratch *ps = &cs->ps;
    const int T = p->T, d = c->d_model;
    /* The pinned token buffer may still feed the previous chunk's copy. */
    KTRY(cudaStreamSynchronize(p->st), "waiting for the previous chunk");
    for (int i = 0; i < p->n_segs; i++)
        memcpy(cs->h_prefill_tokens + p->segs[i].r0, p->segs[i].tokens, (size_t)p->segs[i].T * sizeof(int32_t));
    KTRY(cudaMemcpyAsync(ps->tokens, cs->h_prefill_tokens, (size_t)T * sizeof(int32_t), cudaMemcpyHostToDevice, p->st),
         "copying tokens");
    KTRY(bmc_embed(ps->tokens, T, p->cm->embedding, p->cm->wtype, d, ps->h, ps->res, p->st, 0), "embedding");
    for (int i = 0; i < c->n_layers; i++) {
        const dev_layer *L = &p->cm->layers[i];
        const int parallel = L->has_mamba && L->n_experts > 0;
        bmc_norm_args na;
        memset(&na, 0, sizeof na);
        na.res = ps->res;
        na.h = ps->h;
        na.add = 1;
        na.rows = T;
        na.d = d;
        na.eps = BMC_NORM_EPS;
        na.act_type = act16(p->cm);
        if (L->has_mamba) {
            na.w_a = L->norm;
            na.out_a_16 = ps->normed16;
        }
        if (L->n_experts > 0) {
            na.w_b = parallel ? L->norm_moe : L->norm;
            na.out_b_f32 = ps->normed_moe;
            na.out_b_16 = ps->moe16;
        }
        KTRY(bmc_add_rmsnorm(&na, p->st, 0), "residual add and norm");
        bm_status st;
        if (L->has_mamba && (st = prefill_mamba(p, L))) return st;
        if (L->n_experts > 0 && (st = prefill_moe(p, L, parallel))) return st;
    }
    if (logits && all_positions) return prefill_logits(p, 0, T, logits);
    for (int i = 0; i < p->n_segs; i++)
        if (p->segs[i].logits) {
            bm_status st = prefill_logits(p, p->segs[i].r0 + p->segs[i].T - 1, 1, p->segs[i].logits);
            if (st) return st;
        }
    return BM_OK;
}

bm_status bmc_forward_prefill(bm_session *s, bm_state *st, const int32_t *tokens, size_t n, float *logits,
                              int all_positions) {
    cuda_session *cs = (cuda_session *)s->backend_ctx;
    const bm_model *m = s->model;
    cuda_model *cm = model_ctx(m);
    const size_t V = (size_t)m->config.vocab_size;
    BMC_TRY(cudaSetDevice(cm->device), "cudaSetDevice");
    const int chunk = n < BMC_PREFILL_ROWS ? (int)n : BMC_PREFILL_ROWS;
    bm_status r = reserve_prefill(cs, m, chunk);
    if (r) return r;
    prefill_seg seg;
    prefill_ctx p = {cs, m, cm, cs->stream, 0, &seg, 1};
    for (size_t done = 0; done < n;) {
        if (done > 0 && s->cancel && s->cancel(s->cancel_data)) {
            cudaStreamSynchronize(cs->stream);
            return bmi_fail(BM_ERR_CANCELLED, "prefill cancelled after %zu of %zu tokens", done, n);
        }
        p.T = n - done < (size_t)chunk ? (int)(n - done) : chunk;
        const int last = done + (size_t)p.T == n;
        seg.state = (float *)st->data;
        seg.tokens = tokens + done;
        seg.r0 = 0;
        seg.T = p.T;
        seg.logits = !all_positions && last ? logits : NULL;
        seg.stream = 0;
        if ((r = prefill_chunk(&p, all_positions && logits ? logits + done * V : NULL, all_positions && logits))) {
            cudaStreamSynchronize(cs->stream);
            return r;
        }
        done += (size_t)p.T;
        st->n_tokens += (uint64_t)p.T;
    }
    BMC_TRY(cudaStreamSynchronize(cs->stream), "prefill");
    return BM_OK;
}

/* Several streams' prompts packed into chunks of up to BMC_PREFILL_ROWS rows
 * (no padding): the GEMMs, norms and MoE run over all rows of a chunk at
 * once; the conv and the scan per stream. A prompt longer than the room left
 * in a chunk continues at the start of the next one, so each stream's tokens
 * go through in order and its state ends as a lone prefill leaves it (the
 * same kernels; only the GEMM tiles group other rows). Cancellation is
 * checked between chunks: each state is then advanced by the whole segments
 * that ran, and its n_tokens says how far. */
bm_status bmc_forward_prefill_batch(bm_session *s, bm_state *const *states, const int32_t *const *tokens,
                                    const size_t *n_tokens, size_t n, float *logits) {
    cuda_session *cs = (cuda_session *)s->backend_ctx;
    const bm_model *m = s->model;
    cuda_model *cm = model_ctx(m);
    const size_t V = (size_t)m->config.vocab_size;
    BMC_TRY(cudaSetDevice(cm->device), "cudaSetDevice");
    size_t total = 0;
    for (size_t i = 0; i < n; i++) total += n_tokens[i];
    const int cap = total < BMC_PREFILL_ROWS ? (int)total : BMC_PREFILL_ROWS;
    bm_status r = reserve_prefill(cs, m, cap);
    if (r) return r;
    const size_t max_segs = n < (size_t)cap ? n : (size_t)cap;
    prefill_seg *segs = (prefill_seg *)bmi_malloc(max_segs * sizeof *segs);
    if (!segs) return bmi_fail(BM_ERR_OUT_OF_MEMORY, "out of memory for %zu prefill segments", max_segs);
    prefill_ctx p = {cs, m, cm, cs->stream, 0, segs, 0};
    size_t stream = 0, offset = 0, done = 0;
    while (stream < n) {
        if (done > 0 && s->cancel && s->cancel(s->cancel_data)) {
            cudaStreamSynchronize(cs->stream);
            bmi_free(segs);
            return bmi_fail(BM_ERR_CANCELLED, "bm_prefill_batch cancelled after %zu of %zu tokens", done, total);
        }
        int rows = 0, k = 0;
        while (stream < n && rows < cap) {
            const size_t left = n_tokens[stream] - offset;
            const int take = left < (size_t)(cap - rows) ? (int)left : cap - rows;
            prefill_seg *g = &segs[k++];
            g->state = (float *)states[stream]->data;
            g->tokens = tokens[stream] + offset;
            g->r0 = rows;
            g->T = take;
            g->logits = logits && offset + (size_t)take == n_tokens[stream] ? logits + stream * V : NULL;
            g->stream = stream;
            rows += take;
            offset += (size_t)take;
            if (offset == n_tokens[stream]) {
                stream++;
                offset = 0;
            }
        }
        p.T = rows;
        p.n_segs = k;
        if ((r = prefill_chunk(&p, NULL, 0))) {
            cudaStreamSynchronize(cs->stream);
            bmi_free(segs);
            return r;
        }
        for (int i = 0; i < k; i++) states[segs[i].stream]->n_tokens += (uint64_t)segs[i].T;
        done += (size_t)rows;
    }
    bmi_free(segs);
    BMC_TRY(cudaStreamSynchronize(cs->stream), "prefill");
    return BM_OK;
}

/* ---- decode ---------------------------------------------------------------------- */

static cudaError_t enqueue_step(cuda_session *cs, const bm_model *m, int nb, int head) {
    const bmi_config *c = &m->config;
    const cuda_model *cm = model_ctx(m);
    cudaStream_t st = cs->stream;
    const int pdl = cm->pdl, d = c->d_model, di = c->d_inner, R = c->dt_rank, N = c->d_state, xd = R + 2 * N;
    const int F = c->ffn_hidden, g = c->swiglu ? 2 : 1, wt = cm->wtype, sms = cm->sm_count;
    cudaError_t e;
    if ((e = cudaMemcpyAsync(cs->d_tokens, cs->h_tokens, (size_t)nb * sizeof(int32_t), cudaMemcpyHostToDevice, st)))
        return e;
    if ((e = cudaMemcpyAsync(cs->d_state_ptrs, cs->h_state_ptrs, (size_t)nb * sizeof(float *), cudaMemcpyHostToDevice,
                             st)))
        return e;
    /* An external record: inside a capture a plain cudaEventRecord only
     * orders captured work and leaves the event unusable from the host. */
    if ((e = cudaEventRecordWithFlags(cs->inputs_consumed, st, cudaEventRecordExternal))) return e;
    int cur = 0;
    const unsigned skip = cm->debug_skip;
    if (nb == 1 && cm->fused_ok) {
        bmc_fused_step_args a = cm->fused;
        a.token = cs->d_tokens;
        a.state_ptrs = cs->d_state_ptrs;
        a.res0 = cs->res[0];
        a.res1 = cs->res[1];
        a.h = cs->h;
        a.xz = cs->xz;
        a.xdbl = cs->xdbl;
        a.yg = cs->yg;
        a.m = cs->m;
        a.barrier = cs->grid_barrier;
        a.trace = cs->fused_trace;
        if ((e = bmc_fused_step(&a, st))) return e;
        cur = cm->final_res;
        goto head;
    }
    if ((e = bmc_embed(cs->d_tokens, nb, cm->embedding, wt, d, cs->h, cs->res[0], st, 0))) return e;
    for (int i = 0; i < c->n_layers; i++) {
        const dev_layer *L = &cm->layers[i];
        if (L->has_mamba) {
            const dev_mamba *w = &L->mamba;
            bmc_gemv_args a;
            memset(&a, 0, sizeof a);
            a.W = w->in_proj;
            a.rows = 2 * di;
            a.K = d;
            a.nb = nb;
            a.prologue = BMC_PRO_ADD_RMSNORM;
            a.res_in = cs->res[cur];
            a.h_in = cs->h;
            a.res_out = cs->res[cur ^ 1];
            a.norm_w = L->norm;
            a.eps = BMC_NORM_EPS;
            a.epilogue = BMC_EPI_CONV_SILU;
            a.y = cs->xz;
            a.ldy = 2 * di;
            a.bias = w->in_proj_bias;
            a.state_ptrs = cs->d_state_ptrs;
            a.conv_offset = (long long)bmi_state_conv_offset(c, L->mamba_index);
            a.conv_w = w->conv_w;
            a.conv_b = w->conv_b;
            a.d_conv = c->d_conv;
            a.di = di;
            if (cm->l2_prefetch) { /* x_proj, the scan and routing are short: let DRAM fetch out_proj meanwhile */
                a.prefetch[0] = w->out_proj;
                a.prefetch_bytes[0] = (size_t)d * di * 2;
                a.prefetch[1] = w->x_proj;
                a.prefetch_bytes[1] = (size_t)xd * di * 2;
            }
            if (!(skip & BMC_SKIP_IN_PROJ) && (e = bmc_gemv(&a, wt, 0, sms, st, pdl))) return e;
            cur ^= 1;

            memset(&a, 0, sizeof a);
            a.W = w->x_proj;
            a.rows = xd;
            a.K = di;
            a.nb = nb;
            a.prologue = BMC_PRO_LOAD;
            a.x = cs->xz;
            a.ldx = 2 * di;
            a.epilogue = BMC_EPI_STORE;
            a.y = cs->xdbl;
            a.ldy = xd;
            if (cm->l2_prefetch) {
                a.prefetch[0] = w->dt_proj;
                a.prefetch_bytes[0] = (size_t)di * R * 2;
            }
            if (!(skip & BMC_SKIP_X_PROJ) && (e = bmc_gemv(&a, wt, 0, sms, st, pdl))) return e;

            bmc_step_scan_args sa = bmc_layer_scan_args(c, L, nb, cs->xz, cs->xdbl, cs->d_state_ptrs);
            sa.y = cs->yg;
            if (!(skip & BMC_SKIP_SCAN) && (e = bmc_scan_step(&sa, wt, st, pdl))) return e;

            memset(&a, 0, sizeof a);
            a.W = w->out_proj;
            a.rows = d;
            a.K = di;
            a.nb = nb;
            a.prologue = BMC_PRO_LOAD;
            a.x = cs->yg;
            a.ldx = di;
            a.epilogue = BMC_EPI_STORE;
            a.y = cs->h;
            a.ldy = d;
            a.bias = w->out_proj_bias;
            const dev_layer *next = i + 1 < c->n_layers ? &cm->layers[i + 1] : NULL;
            if (next && next->fused_route) {
                a.epilogue = BMC_EPI_STORE_ROUTE;
                a.res_in = cs->res[cur];
                a.res_out = cs->res[cur ^ 1];
                a.eps = BMC_NORM_EPS;
                a.route_w = next->route_w_normed;
                a.route_b = next->router_b;
                a.n_experts = next->n_experts;
                a.route_partials = cs->route_partials;
                a.route_counter = cs->route_counter;
                a.scales_out = cs->scales;
                a.gates_out = cs->gates;
                a.slot_expert_out = cs->slot_expert;
                a.slot_count_out = cs->slot_count;
                a.slot_rows_out = cs->slot_rows;
            }
            if (!(skip & BMC_SKIP_OUT_PROJ) && (e = bmc_gemv(&a, wt, 0, sms, st, pdl))) return e;
        }
        if (L->n_experts > 0) {
            const int parallel = L->has_mamba;
            if (L->fused_route) goto routed; /* the previous out_proj did the add, the norm's scale and the routing */
            {
            bmc_router_step_args ra;
            memset(&ra, 0, sizeof ra);
            ra.nb = nb;
            ra.d = d;
            ra.n_experts = L->n_experts;
            ra.add = !parallel;
            ra.res_in = cs->res[cur];
            ra.h_in = cs->h;
            ra.res_out = cs->res[cur ^ 1];
            ra.norm_w = parallel ? L->norm_moe : L->norm;
            ra.eps = BMC_NORM_EPS;
            ra.normed = cs->normed;
            ra.router_w = L->router_w;
            ra.router_b = L->router_b;
            ra.gates = cs->gates;
            ra.slot_expert = cs->slot_expert;
            ra.slot_count = cs->slot_count;
            ra.slot_rows = cs->slot_rows;
            if (cm->l2_prefetch) {
                ra.prefetch_expert_base = L->fc1;
                ra.prefetch_expert_stride = ra.prefetch_expert_bytes = (size_t)g * F * d * 2;
            }
            if (!(skip & BMC_SKIP_ROUTER) && (e = bmc_router_step(&ra, st, pdl))) return e;
            }
        routed:
            if (!parallel) cur ^= 1;
            const int slots = nb < L->n_experts ? nb : L->n_experts;

            bmc_gemv_args a;
            memset(&a, 0, sizeof a);
            a.W = L->fc1;
            a.expert_stride = (long long)g * F * d;
            a.rows = g * F;
            a.K = d;
            a.nb = nb;
            a.slot_expert = cs->slot_expert;
            a.slot_count = cs->slot_count;
            a.slot_rows = cs->slot_rows;
            a.n_slots = slots;
            a.prologue = BMC_PRO_LOAD;
            a.x = cs->normed;
            a.ldx = d;
            if (L->fused_route) { /* normalise the residual here with the scale the routing found */
                a.prologue = BMC_PRO_SCALED;
                a.x = cs->res[cur];
                a.scales = cs->scales;
                a.norm_w = L->norm;
            }
            a.epilogue = c->swiglu ? BMC_EPI_GATED : BMC_EPI_ACT;
            a.act = (int)c->activation;
            a.y = cs->m;
            a.ldy = F;
            a.bias = L->fc1_bias;
            if (cm->l2_prefetch) {
                a.prefetch_expert_base = L->fc2;
                a.prefetch_expert_stride = a.prefetch_expert_bytes = (size_t)d * F * 2;
            }
            if (!(skip & BMC_SKIP_FC1) && (e = bmc_gemv(&a, wt, 0, sms, st, pdl))) return e;

            memset(&a, 0, sizeof a);
            a.W = L->fc2;
            a.expert_stride = (long long)d * F;
            a.rows = d;
            a.K = F;
            a.nb = nb;
            a.slot_expert = cs->slot_expert;
            a.slot_count = cs->slot_count;
            a.slot_rows = cs->slot_rows;
            a.n_slots = slots;
            a.prologue = BMC_PRO_LOAD;
            a.x = cs->m;
            a.ldx = F;
            a.epilogue = parallel ? BMC_EPI_SCALE_ADD : BMC_EPI_SCALE_STORE;
            a.gates = cs->gates;
            a.y = cs->h;
            a.ldy = d;
            a.bias = L->fc2_bias;
            if (cm->l2_prefetch) { /* the next layer's first projection, or the start of the LM head */
                const dev_layer *next = i + 1 < c->n_layers ? &cm->layers[i + 1] : NULL;
                if (next && next->has_mamba) {
                    a.prefetch[0] = next->mamba.in_proj;
                    a.prefetch_bytes[0] = (size_t)2 * di * d * 2;
                } else if (!next && head) {
                    a.prefetch[0] = cm->lm_head;
                    a.prefetch_bytes[0] = (size_t)c->vocab_size * d * 2;
                    if (a.prefetch_bytes[0] > ((size_t)24 << 20)) a.prefetch_bytes[0] = (size_t)24 << 20;
                }
            }
            if (!(skip & BMC_SKIP_FC2) && (e = bmc_gemv(&a, wt, 0, sms, st, pdl))) return e;
        }
    }
head:
    if (head) {
        bmc_gemv_args a;
        memset(&a, 0, sizeof a);
        a.W = cm->lm_head;
        a.rows = c->vocab_size;
        a.K = d;
        a.nb = nb;
        a.prologue = BMC_PRO_ADD_LAYERNORM;
        a.res_in = cs->res[cur];
        a.h_in = cs->h;
        a.norm_w = cm->final_w;
        a.norm_b = cm->final_b;
        a.eps = BMC_NORM_EPS;
        a.epilogue = BMC_EPI_STORE;
        a.y = cs->logits;
        a.ldy = c->vocab_size;
        a.bias = cm->lm_head_bias;
        if (!(skip & BMC_SKIP_HEAD) && (e = bmc_gemv(&a, wt, 0, sms, st, pdl))) return e;
    }
    return cudaSuccess;
}

static bm_status step_graph(cuda_session *cs, const bm_model *m, int nb, int head, cudaGraphExec_t *out) {
    cudaGraphExec_t *slot = &cs->graphs[nb][head];
    if (*slot) {
        *out = *slot;
        return BM_OK;
    }
    cudaGraph_t graph = NULL;
    BMC_TRY(cudaStreamBeginCapture(cs->stream, cudaStreamCaptureModeThreadLocal), "cudaStreamBeginCapture");
    cudaError_t e = enqueue_step(cs, m, nb, head);
    cudaError_t e2 = cudaStreamEndCapture(cs->stream, &graph);
    if (e == cudaSuccess) e = e2;
    if (e != cudaSuccess) {
        if (graph) cudaGraphDestroy(graph);
        return bmc_fail_cuda(e, "capturing the decode step");
    }
    e = cudaGraphInstantiate(slot, graph, 0);
    cudaGraphDestroy(graph);
    if (e != cudaSuccess) {
        *slot = NULL;
        return bmc_fail_cuda(e, "instantiating the decode graph");
    }
    *out = *slot;
    return BM_OK;
}

/* Launch one step for up to BMC_MAX_STEP_ROWS streams; no synchronisation. */
static bm_status launch_step(cuda_session *cs, const bm_model *m, bm_state *const *states, const int32_t *tokens,
                             int nb, int head) {
    cudaGraphExec_t graph;
    bm_status r = step_graph(cs, m, nb, head, &graph);
    if (r) return r;
    /* The previous replay must have copied its inputs out of the pinned
     * buffer before it is rewritten. */
    BMC_TRY(cudaEventSynchronize(cs->inputs_consumed), "waiting for the previous step");
    for (int i = 0; i < nb; i++) {
        cs->h_tokens[i] = tokens[i];
        cs->h_state_ptrs[i] = (float *)states[i]->data;
    }
    BMC_TRY(cudaGraphLaunch(graph, cs->stream), "cudaGraphLaunch");
    return BM_OK;
}

bm_status bmc_forward_step_batch(bm_session *s, bm_state *const *states, const int32_t *tokens, size_t n,
                                 float *logits) {
    cuda_session *cs = (cuda_session *)s->backend_ctx;
    const bm_model *m = s->model;
    const size_t V = (size_t)m->config.vocab_size;
    if (n >= (size_t)model_ctx(m)->rows_min) return bmc_rows_step_batch(s, states, tokens, n, logits);
    cs->rs.last_rows = 0;
    BMC_TRY(cudaSetDevice(model_ctx(m)->device), "cudaSetDevice");
    for (size_t done = 0; done < n; done += BMC_MAX_STEP_ROWS) {
        const int nb = n - done < BMC_MAX_STEP_ROWS ? (int)(n - done) : BMC_MAX_STEP_ROWS;
        bm_status r = launch_step(cs, m, states + done, tokens + done, nb, logits != NULL);
        if (r) return r;
        if (logits)
            BMC_TRY(cudaMemcpyAsync(logits + done * V, cs->logits, (size_t)nb * V * sizeof(float),
                                    cudaMemcpyDeviceToHost, cs->stream),
                    "copying logits");
    }
    if (logits) BMC_TRY(cudaStreamSynchronize(cs->stream), "decode step");
    else BMC_TRY(cudaGetLastError(), "decode step");
    for (size_t i = 0; i < n; i++) states[i]->n_tokens++;
    return BM_OK;
}

/* bm_sample's argument rules (blackmamba.h), for the device path, which
 * does not pass through bm_sample. */
bm_status bmc_check_sampler(const bm_sampler_params *p, int V, const int32_t *recent, size_t n_recent) {
    if (p->size != sizeof *p) return bmi_fail(BM_ERR_INVALID_ARGUMENT, "bm_sample: unknown params size %u", p->size);
    for (size_t i = 0; i < sizeof p->reserved / sizeof p->reserved[0]; i++)
        if (p->reserved[i]) return bmi_fail(BM_ERR_INVALID_ARGUMENT, "bm_sample: params reserved[%zu] is not zero", i);
    if (!(p->temperature >= 0.0f) || p->temperature == INFINITY)
        return bmi_fail(BM_ERR_INVALID_ARGUMENT, "bm_sample: temperature must be finite and >= 0");
    if (p->top_p != p->top_p) return bmi_fail(BM_ERR_INVALID_ARGUMENT, "bm_sample: top_p is NaN");
    if (p->min_p != p->min_p || p->min_p > 1.0f)
        return bmi_fail(BM_ERR_INVALID_ARGUMENT, "bm_sample: min_p must be a number <= 1");
    if (!(p->repeat_penalty > 0.0f) || p->repeat_penalty == INFINITY)
        return bmi_fail(BM_ERR_INVALID_ARGUMENT, "bm_sample: repeat_penalty must be finite and > 0");
    if (p->n_vocab_valid < 0 || p->n_vocab_valid > V)
        return bmi_fail(BM_ERR_INVALID_ARGUMENT, "bm_sample: n_vocab_valid outside [0, n_vocab]");
    if (n_recent && !recent) return bmi_fail(BM_ERR_INVALID_ARGUMENT, "bm_sample: recent is NULL");
    for (size_t i = 0; i < n_recent; i++)
        if (recent[i] < 0 || recent[i] >= V)
            return bmi_fail(BM_ERR_INVALID_ARGUMENT, "bm_sample: recent[%zu] = %d outside [0, %d)", i, (int)recent[i], V);
    return BM_OK;
}

/* Step up to n streams and sample each one's next token on the device; rows
 * the device sampler cannot do (and every row when the parameters are out
 * of its reach) are sampled on the host from copied logits. */
bm_status bmc_forward_step_batch_sample(bm_session *s, bm_state *const *states, const int32_t *tokens, size_t n,
                                        const bm_sampler_params *p, uint64_t *rngs, const int32_t *recent,
                                        size_t n_recent, int32_t *out_tokens) {
    cuda_session *cs = (cuda_session *)s->backend_ctx;
    const bm_model *m = s->model;
    const int V = m->config.vocab_size;
    bm_sampler_params defaults;
    if (!p) {
        bm_sampler_params_init(&defaults);
        defaults.temperature = 0.0f;
        defaults.repeat_penalty = 1.0f;
        p = &defaults;
    }
    bm_status r = bmc_check_sampler(p, V, recent, n_recent);
    if (r) return r;
    if (n >= (size_t)model_ctx(m)->rows_min)
        return bmc_rows_step_batch_sample(s, states, tokens, n, p, rngs, recent, n_recent, out_tokens);
    cs->rs.last_rows = 0;
    const int n_valid = p->n_vocab_valid > 0 ? p->n_vocab_valid : V;
    const int device_ok = n_recent <= BMC_SAMPLE_MAX_RECENT &&
                          (p->temperature == 0.0f || (p->top_k > 0 && p->top_k <= BMC_SAMPLE_MAX_K) ||
                           n_valid <= BMC_SAMPLE_MAX_K);
    BMC_TRY(cudaSetDevice(model_ctx(m)->device), "cudaSetDevice");
    if (device_ok && n_recent) {
        memcpy(cs->h_recent, recent, n_recent * sizeof(int32_t));
        BMC_TRY(cudaMemcpyAsync(cs->d_recent, cs->h_recent, n_recent * sizeof(int32_t), cudaMemcpyHostToDevice,
                                cs->stream),
                "copying recent ids");
    }
    float *host = NULL;
    for (size_t done = 0; done < n; done += BMC_MAX_STEP_ROWS) {
        const int nb = n - done < BMC_MAX_STEP_ROWS ? (int)(n - done) : BMC_MAX_STEP_ROWS;
        if ((r = launch_step(cs, m, states + done, tokens + done, nb, 1))) goto out;
        for (int i = 0; i < nb; i++) states[done + i]->n_tokens++;
        uint64_t next_rng[BMC_MAX_STEP_ROWS];
        for (int i = 0; i < nb; i++) cs->h_sampled[i] = -2;
        if (device_ok) {
            bmc_sample_args a;
            memset(&a, 0, sizeof a);
            a.logits = cs->logits;
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
            for (int i = 0; i < nb; i++) {
                next_rng[i] = rngs[done + i];
                a.u[i] = bmi_rng_uniform(&next_rng[i]);
            }
            a.tokens = cs->d_sampled;
            cudaError_t e = bmc_sample(&a, cs->stream);
            if (e == cudaSuccess)
                e = cudaMemcpyAsync(cs->h_sampled, cs->d_sampled, (size_t)nb * sizeof(int32_t), cudaMemcpyDeviceToHost,
                                    cs->stream);
            if (e != cudaSuccess) {
                r = bmc_fail_cuda(e, "sampling");
                goto out;
            }
        }
        {
            cudaError_t e = cudaStreamSynchronize(cs->stream);
            if (e != cudaSuccess) {
                r = bmc_fail_cuda(e, "decode step");
                goto out;
            }
        }
        for (int i = 0; i < nb; i++) {
            const int32_t t = cs->h_sampled[i];
            if (t == -1) {
                r = bmi_fail(BM_ERR_INVALID_ARGUMENT, "bm_sample: no candidate: all logits are NaN or -inf");
                goto out;
            }
            if (t >= 0) {
                rngs[done + i] = next_rng[i];
                out_tokens[done + i] = t;
                continue;
            }
            /* Not something the device sampler covers: the host does this row. */
            if (!host && !(host = (float *)bmi_malloc((size_t)V * sizeof(float)))) {
                r = bmi_fail(BM_ERR_OUT_OF_MEMORY, "out of memory for logits");
                goto out;
            }
            cudaError_t e = cudaMemcpy(host, cs->logits + (size_t)i * V, (size_t)V * sizeof(float),
                                       cudaMemcpyDeviceToHost);
            if (e != cudaSuccess) {
                r = bmc_fail_cuda(e, "copying logits");
                goto out;
            }
            if ((r = bm_sample(host, (size_t)V, p, &rngs[done + i], recent, n_recent, &out_tokens[done + i])))
                goto out;
        }
    }
out:
    bmi_free(host);
    return r;
}
