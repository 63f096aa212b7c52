/* The CPU forward pass over a packed batch of token rows from one or more
 * streams (SPEC.md "Forward pass"). Rows [seq_start[s], seq_start[s+1])
 * belong to stream s, in time order, and advance that stream's state. A
 * prefill is one stream with many rows, a batched step many streams with one
 * row each; the math is the same. */
#include <math.h>

#include "cpu.h"
#include "kernels.h"

#define NORM_EPS 1e-5f

bm_status bmi_cpu_scratch_reserve(bmi_cpu_scratch *s, const bmi_config *c, int rows) {
    if (rows <= s->rows) return BM_OK;
    int max_e = 1;
    for (int i = 0; i < c->n_layers; i++)
        if (c->layers[i].n_experts > max_e) max_e = c->layers[i].n_experts;
    size_t d = (size_t)c->d_model, di = (size_t)c->d_inner, R = (size_t)c->dt_rank, N = (size_t)c->d_state;
    size_t F = (size_t)(c->ffn_hidden > 0 ? c->ffn_hidden : 1), g = c->swiglu ? 2 : 1, r = (size_t)rows;
    size_t floats = r * d * 6 + r * 2 * di + r * di * 3 + r * (R + 2 * N) + r * g * F + r * (size_t)max_e;
    int max_cols = (int)d;
    if ((int)di > max_cols) max_cols = (int)di;
    if ((int)F > max_cols) max_cols = (int)F;
    if ((int)R > max_cols) max_cols = (int)R;
    float *mem = bmi_aligned_alloc(64, floats * sizeof(float));
    float *xpack = bmi_aligned_alloc(64, bmi_cpu_pack_floats(rows, max_cols) * sizeof(float));
    int *ints = bmi_malloc((r * 2 + (size_t)max_e + 1) * sizeof(int));
    if (!mem || !ints || !xpack) {
        bmi_free(mem);
        bmi_free(ints);
        bmi_free(xpack);
        return bmi_fail(BM_ERR_OUT_OF_MEMORY, "out of memory for %d rows of scratch", rows);
    }
    bmi_free(s->mem);
    bmi_free(s->ints);
    bmi_free(s->xpack);
    s->mem = mem;
    s->ints = ints;
    s->xpack = xpack;
    s->rows = rows;
    float *p = mem;
#define TAKE(field, n) (s->field = p, p += (n))
    TAKE(residual, r * d);
    TAKE(hidden, r * d);
    TAKE(normed, r * d);
    TAKE(normed_moe, r * d);
    TAKE(mlp_out, r * d);
    TAKE(expert_out, r * d);
    TAKE(xz, r * 2 * di);
    TAKE(u, r * di);
    TAKE(delta, r * di);
    TAKE(y, r * di);
    TAKE(xdbl, r * (R + 2 * N));
    TAKE(act, r * g * F);
    TAKE(router, r * (size_t)max_e);
#undef TAKE
    s->expert_of = ints;
    s->order = ints + r;
    s->expert_start = ints + 2 * r;
    return BM_OK;
}

void bmi_cpu_scratch_free(bmi_cpu_scratch *s) {
    bmi_free(s->mem);
    bmi_free(s->ints);
    bmi_free(s->xpack);
    memset(s, 0, sizeof *s);
}

/* y = W x (+ bias) for T rows of x, on the session's path and pool. */
static void matmul(bmi_cpu_ctx *ctx, const bmi_matrix *W, const float *bias, const float *x, int ldx, int T, float *y,
                   int ldy) {
    bmi_cpu_matmul(ctx->path, ctx->pool, ctx->scratch.xpack, W, bias, x, ldx, T, y, ldy);
}

/* Channels per task of the per-channel steps: about four tasks per thread,
 * in multiples of 16 so vector loops see whole registers. */
static int channels_per_task(const bmi_cpu_ctx *ctx, int di) {
    int tasks = 4 * bmi_pool_size(ctx->pool);
    int per = (di + tasks - 1) / tasks;
    return (per + 15) / 16 * 16;
}

/* ---- Mamba block ----------------------------------------------------------- */

typedef struct mamba_job {
    const bmi_cpu_path *path;
    const bmi_config *c;
    const bmi_mamba_weights *w;
    const bmi_cpu_batch *b;
    int mamba_index;
    bmi_cpu_scratch *s;
    int channels_per_task;
} mamba_job;

/* Causal depthwise convolution + SiLU for a block of channels of every
 * stream; the last K-1 inputs become the new conv state. */
static void conv_task(void *arg, int task) {
    const mamba_job *j = arg;
    const bmi_config *c = j->c;
    int di = c->d_inner, c0 = task * j->channels_per_task;
    int c1 = c0 + j->channels_per_task < di ? c0 + j->channels_per_task : di;
    for (int sq = 0; sq < j->b->n_seq; sq++) {
        int t0 = j->b->seq_start[sq], t1 = j->b->seq_start[sq + 1];
        float *hist = j->b->states[sq] + bmi_state_conv_offset(c, j->mamba_index);
        j->path->conv(c0, c1, t1 - t0, c->d_conv, j->s->xz + (size_t)t0 * 2 * (size_t)di, 2 * (size_t)di, j->w->conv_w,
                      j->w->conv_b, hist, j->s->u + (size_t)t0 * (size_t)di, (size_t)di);
    }
}

/* The selective scan for a block of channels: delta = softplus(dt_proj +
 * bias), s = exp(delta A) s + delta u B, y = s . C + D u, gated by SiLU(z). */
static void scan_task(void *arg, int task) {
    const mamba_job *j = arg;
    const bmi_config *c = j->c;
    const bmi_mamba_weights *w = j->w;
    bmi_cpu_scratch *s = j->s;
    int di = c->d_inner, N = c->d_state, R = c->dt_rank, c0 = task * j->channels_per_task;
    int c1 = c0 + j->channels_per_task < di ? c0 + j->channels_per_task : di;
    size_t ld_dbl = (size_t)(R + 2 * N);
    for (int sq = 0; sq < j->b->n_seq; sq++) {
        int t0 = j->b->seq_start[sq], t1 = j->b->seq_start[sq + 1];
        float *ssm = j->b->states[sq] + bmi_state_ssm_offset(c, j->mamba_index);
        for (int t = t0; t < t1; t++)
            j->path->softplus_bias(s->delta + (size_t)t * (size_t)di + (size_t)c0, w->dt_bias + c0, c1 - c0);
        size_t first = (size_t)t0 * (size_t)di;
        j->path->scan(c0, c1, t1 - t0, N, s->delta + first, s->u + first, (size_t)di,
                      s->xdbl + (size_t)t0 * ld_dbl + (size_t)R, ld_dbl, w->A, w->D, ssm, s->y + first);
        for (int t = t0; t < t1; t++) {
            size_t row = (size_t)t * (size_t)di + (size_t)c0;
            j->path->mul_silu(s->y + row, s->xz + (size_t)t * 2 * (size_t)di + (size_t)di + (size_t)c0, c1 - c0);
        }
    }
}

static void mamba_block(bmi_cpu_ctx *ctx, const bmi_config *c, const bmi_mamba_weights *w, int mamba_index,
                        const bmi_cpu_batch *b, const float *in, float *out) {
    bmi_cpu_scratch *s = &ctx->scratch;
    int T = b->seq_start[b->n_seq], di = c->d_inner, R = c->dt_rank, N = c->d_state;
    matmul(ctx, &w->in_proj, w->in_proj_bias, in, c->d_model, T, s->xz, 2 * di);
    int per_task = channels_per_task(ctx, di), tasks = (di + per_task - 1) / per_task;
    mamba_job j = {ctx->path, c, w, b, mamba_index, s, per_task};
    /* a few rows of convolution cost less than handing them to the pool */
    bmi_pool_run(T * di >= 8192 ? ctx->pool : NULL, tasks, conv_task, &j);
    matmul(ctx, &w->x_proj, NULL, s->u, di, T, s->xdbl, R + 2 * N);
    matmul(ctx, &w->dt_proj, NULL, s->xdbl, R + 2 * N, T, s->delta, di);
    bmi_pool_run(ctx->pool, tasks, scan_task, &j);
    matmul(ctx, &w->out_proj, w->out_proj_bias, s->y, di, T, out, c->d_model);
}

/* ---- MLP / MoE block ------------------------------------------------------- */

typedef struct gate_job {
    const bmi_cpu_path *path;
    float *act;
    int F, swiglu;
    bm_activation activation;
} gate_job;

/* One row's gate in place: its first F values become the MLP's hidden row. */
static void gate_task(void *arg, int task) {
    const gate_job *j = arg;
    j->path->glu(j->act + (size_t)task * (size_t)(j->swiglu ? 2 : 1) * (size_t)j->F, j->F, j->swiglu, j->activation);
}

/* One MLP over `rows` packed rows of x into out. */
static void mlp(bmi_cpu_ctx *ctx, const bmi_config *c, const bmi_mlp_weights *w, const float *x, int rows,
                float *out) {
    bmi_cpu_scratch *s = &ctx->scratch;
    int g = c->swiglu ? 2 : 1;
    matmul(ctx, &w->fc1, w->fc1_bias, x, c->d_model, rows, s->act, g * c->ffn_hidden);
    gate_job gj = {ctx->path, s->act, c->ffn_hidden, c->swiglu, c->activation};
    bmi_pool_run(ctx->pool, rows, gate_task, &gj);
    matmul(ctx, &w->fc2, w->fc2_bias, s->act, g * c->ffn_hidden, rows, out, c->d_model);
}

/* Top-1 routing: tokens grouped by expert so each expert's weights are read
 * once for all the rows routed to it. */
static void moe_block(bmi_cpu_ctx *ctx, const bmi_config *c, const bmi_layer_weights *lw, int n_experts, int T,
                      const float *in, float *out) {
    bmi_cpu_scratch *s = &ctx->scratch;
    int d = c->d_model;
    if (n_experts == 1) {
        mlp(ctx, c, &lw->experts[0], in, T, out);
        return;
    }
    matmul(ctx, &lw->router, lw->router_bias, in, d, T, s->router, n_experts);
    for (int e = 0; e <= n_experts; e++) s->expert_start[e] = 0;
    for (int t = 0; t < T; t++) {
        const float *p = s->router + (size_t)t * (size_t)n_experts;
        int best = 0;
        for (int e = 1; e < n_experts; e++)
            if (p[e] > p[best]) best = e; /* sigmoid is monotonic: argmax of logits, lowest index on ties */
        s->expert_of[t] = best;
        s->expert_start[best + 1]++;
    }
    for (int e = 0; e < n_experts; e++) s->expert_start[e + 1] += s->expert_start[e];
    int fill[BMI_MAX_EXPERTS];
    for (int e = 0; e < n_experts; e++) fill[e] = s->expert_start[e];
    for (int t = 0; t < T; t++) s->order[fill[s->expert_of[t]]++] = t;
    float *gathered = s->mlp_out, *result = s->expert_out;
    for (int e = 0; e < n_experts; e++) {
        int r0 = s->expert_start[e], r1 = s->expert_start[e + 1];
        if (r0 == r1) continue;
        for (int r = r0; r < r1; r++)
            memcpy(gathered + (size_t)(r - r0) * (size_t)d, in + (size_t)s->order[r] * (size_t)d,
                   (size_t)d * sizeof(float));
        mlp(ctx, c, &lw->experts[e], gathered, r1 - r0, result);
        for (int r = r0; r < r1; r++) {
            int t = s->order[r];
            float gate = bmi_cpu_sigmoid(s->router[(size_t)t * (size_t)n_experts + (size_t)e]);
            const float *src = result + (size_t)(r - r0) * (size_t)d;
            float *dst = out + (size_t)t * (size_t)d;
            for (int i = 0; i < d; i++) dst[i] = gate * src[i];
        }
    }
}

/* ---- whole model -------------------------------------------------------------- */

static void embed(const bmi_matrix *E, const int32_t *tokens, int T, float *out) {
    for (int t = 0; t < T; t++) bmi_cpu_row_to_f32(E, tokens[t], out + (size_t)t * (size_t)E->cols);
}

void bmi_cpu_forward(bmi_cpu_ctx *ctx, const bm_model *m, const bmi_cpu_batch *b, const int32_t *tokens,
                     const int *logit_rows, int n_logit_rows, float *logits) {
    const bmi_config *c = &m->config;
    const bmi_weights *w = &m->weights;
    bmi_cpu_scratch *s = &ctx->scratch;
    int T = b->seq_start[b->n_seq], d = c->d_model, mamba_index = 0, have_residual = 0;
    embed(&w->embedding, tokens, T, s->hidden);
    for (int li = 0; li < c->n_layers; li++) {
        const bmi_layer_config *lc = &c->layers[li];
        const bmi_layer_weights *lw = &w->layers[li];
        for (int t = 0; t < T; t++) {
            float *r = s->residual + (size_t)t * (size_t)d, *x = s->hidden + (size_t)t * (size_t)d;
            for (int i = 0; i < d; i++) r[i] = have_residual ? r[i] + x[i] : x[i];
            bmi_cpu_rmsnorm(r, lw->norm, d, NORM_EPS, s->normed + (size_t)t * (size_t)d);
            if (lc->has_mamba && lc->n_experts)
                bmi_cpu_rmsnorm(r, lw->norm_moe, d, NORM_EPS, s->normed_moe + (size_t)t * (size_t)d);
        }
        have_residual = 1;
        if (lc->has_mamba) {
            mamba_block(ctx, c, &lw->mamba, mamba_index++, b, s->normed, s->hidden);
            if (lc->n_experts) {
                moe_block(ctx, c, lw, lc->n_experts, T, s->normed_moe, s->normed); /* normed is free now */
                for (size_t i = 0; i < (size_t)T * (size_t)d; i++) s->hidden[i] += s->normed[i];
            }
        } else {
            moe_block(ctx, c, lw, lc->n_experts, T, s->normed, s->hidden);
        }
    }
    for (int k = 0; k < n_logit_rows; k++) {
        int t = logit_rows[k];
        float *r = s->residual + (size_t)t * (size_t)d, *x = s->hidden + (size_t)t * (size_t)d;
        for (int i = 0; i < d; i++) x[i] += r[i];
        bmi_cpu_layernorm(x, w->final_norm_w, w->final_norm_b, d, NORM_EPS, s->normed + (size_t)k * (size_t)d);
    }
    if (n_logit_rows)
        matmul(ctx, &w->lm_head, w->lm_head_bias, s->normed, d, n_logit_rows, logits, c->vocab_size);
}
