/* The CPU backend's table: states are host float arrays in the canonical
 * layout; weights are used in place from the mapping. */
#include "cpu.h"

static bm_status cpu_state_alloc(const bm_model *m, void **data) {
    float *s = bmi_calloc(m->state_floats ? m->state_floats : 1, sizeof(float));
    if (!s) return bmi_fail(BM_ERR_OUT_OF_MEMORY, "out of memory for a state of %zu bytes", m->state_floats * 4);
    *data = s;
    return BM_OK;
}

static void cpu_state_free(const bm_model *m, void *data) {
    (void)m;
    bmi_free(data);
}

static bm_status cpu_state_zero(const bm_model *m, void *data) {
    memset(data, 0, m->state_floats * sizeof(float));
    return BM_OK;
}

static bm_status cpu_state_copy(const bm_model *m, void *dst, const void *src) {
    memcpy(dst, src, m->state_floats * sizeof(float));
    return BM_OK;
}

static bm_status cpu_state_download(const bm_model *m, const void *data, float *host) {
    return cpu_state_copy(m, host, data);
}

static bm_status cpu_state_upload(const bm_model *m, void *data, const float *host) {
    return cpu_state_copy(m, data, host);
}

static bm_status cpu_session_init(bm_session *s) {
    bmi_cpu_ctx *ctx = bmi_calloc(1, sizeof *ctx);
    if (!ctx) return bmi_fail(BM_ERR_OUT_OF_MEMORY, "out of memory for a session");
    ctx->path = bmi_cpu_path_select();
    bm_status st = bmi_pool_new(s->n_threads, &ctx->pool);
    if (st) {
        bmi_free(ctx);
        return st;
    }
    s->backend_ctx = ctx;
    return BM_OK;
}

static void cpu_session_release(bm_session *s) {
    bmi_cpu_ctx *ctx = s->backend_ctx;
    if (!ctx) return;
    bmi_pool_free(ctx->pool);
    bmi_cpu_scratch_free(&ctx->scratch);
    bmi_free(ctx);
    s->backend_ctx = NULL;
}

/* Scratch is sized once for the largest call; growing it can fail, and that
 * must happen before any state is touched. */
static bm_status reserve(bm_session *s, int rows) {
    bmi_cpu_ctx *ctx = s->backend_ctx;
    return bmi_cpu_scratch_reserve(&ctx->scratch, &s->model->config, rows);
}

static bm_status cpu_prefill(bm_session *s, bm_state *st, const int32_t *tokens, size_t n, float *logits,
                             int all_positions) {
    bmi_cpu_ctx *ctx = s->backend_ctx;
    const bm_model *m = s->model;
    size_t V = (size_t)m->config.vocab_size;
    int chunk = n < BMI_CPU_MAX_SEQ_ROWS ? (int)n : BMI_CPU_MAX_SEQ_ROWS;
    bm_status r = reserve(s, chunk);
    if (r) return r;
    int rows[BMI_CPU_MAX_SEQ_ROWS];
    for (int i = 0; i < chunk; i++) rows[i] = i;
    float *state = st->data;
    for (size_t done = 0; done < n;) {
        if (done > 0 && s->cancel && s->cancel(s->cancel_data))
            return bmi_fail(BM_ERR_CANCELLED, "prefill cancelled after %zu of %zu tokens", done, n);
        int len = n - done < (size_t)chunk ? (int)(n - done) : chunk;
        int seq_start[2] = {0, len};
        bmi_cpu_batch b = {1, seq_start, &state};
        int last = done + (size_t)len == n;
        if (all_positions && logits)
            bmi_cpu_forward(ctx, m, &b, tokens + done, rows, len, logits + done * V);
        else if (last && logits)
            bmi_cpu_forward(ctx, m, &b, tokens + done, &rows[len - 1], 1, logits);
        else
            bmi_cpu_forward(ctx, m, &b, tokens + done, NULL, 0, NULL);
        done += (size_t)len;
        st->n_tokens += (uint64_t)len;
    }
    return BM_OK;
}

static bm_status cpu_step_batch(bm_session *s, bm_state *const *states, const int32_t *tokens, size_t n,
                                float *logits) {
    bmi_cpu_ctx *ctx = s->backend_ctx;
    const bm_model *m = s->model;
    size_t V = (size_t)m->config.vocab_size;
    int chunk = n < BMI_CPU_MAX_ROWS ? (int)n : BMI_CPU_MAX_ROWS;
    bm_status r = reserve(s, chunk);
    if (r) return r;
    int seq_start[BMI_CPU_MAX_ROWS + 1], rows[BMI_CPU_MAX_ROWS];
    float *data[BMI_CPU_MAX_ROWS];
    for (int i = 0; i <= chunk; i++) seq_start[i] = i;
    for (int i = 0; i < chunk; i++) rows[i] = i;
    for (size_t done = 0; done < n; done += (size_t)chunk) {
        int len = n - done < (size_t)chunk ? (int)(n - done) : chunk;
        for (int i = 0; i < len; i++) data[i] = states[done + (size_t)i]->data;
        bmi_cpu_batch b = {len, seq_start, data};
        bmi_cpu_forward(ctx, m, &b, tokens + done, rows, logits ? len : 0, logits ? logits + done * V : NULL);
        for (int i = 0; i < len; i++) states[done + (size_t)i]->n_tokens++;
    }
    return BM_OK;
}


/* Prompts of several streams packed into forwards of up to BMI_CPU_MAX_ROWS
 * rows. Streams go in order, so the streams that finish in one forward are
 * consecutive, and their logit rows land consecutively in `logits`. */
static bm_status cpu_prefill_batch(bm_session *s, bm_state *const *states, const int32_t *const *tokens,
                                   const size_t *n_tokens, size_t n, float *logits) {
    bmi_cpu_ctx *ctx = s->backend_ctx;
    const bm_model *m = s->model;
    size_t V = (size_t)m->config.vocab_size, total = 0;
    for (size_t i = 0; i < n; i++) total += n_tokens[i];
    bm_status r = reserve(s, total < BMI_CPU_MAX_ROWS ? (int)total : BMI_CPU_MAX_ROWS);
    if (r) return r;
    int32_t packed[BMI_CPU_MAX_ROWS];
    int seq_start[BMI_CPU_MAX_ROWS + 1], logit_rows[BMI_CPU_MAX_ROWS];
    float *data[BMI_CPU_MAX_ROWS];
    size_t stream = 0, offset = 0; /* the first token not yet fed */
    for (int first = 1; stream < n; first = 0) {
        if (!first && s->cancel && s->cancel(s->cancel_data))
            return bmi_fail(BM_ERR_CANCELLED, "batched prefill cancelled at stream %zu", stream);
        int rows = 0, n_seq = 0, n_logits = 0;
        size_t first_finishing = n, i = stream, at = offset;
        while (i < n && rows < BMI_CPU_MAX_ROWS) {
            size_t left = n_tokens[i] - at, room = (size_t)(BMI_CPU_MAX_ROWS - rows);
            size_t take = left < BMI_CPU_MAX_SEQ_ROWS ? left : BMI_CPU_MAX_SEQ_ROWS;
            if (take > room) take = room;
            memcpy(packed + rows, tokens[i] + at, take * sizeof(int32_t));
            seq_start[n_seq] = rows;
            data[n_seq++] = states[i]->data;
            rows += (int)take;
            if (at + take == n_tokens[i]) {
                if (first_finishing == n) first_finishing = i;
                logit_rows[n_logits++] = rows - 1;
                i++, at = 0;
            } else {
                at += take;
            }
        }
        seq_start[n_seq] = rows;
        bmi_cpu_batch b = {n_seq, seq_start, data};
        bmi_cpu_forward(ctx, m, &b, packed, logit_rows, logits ? n_logits : 0,
                        logits && n_logits ? logits + first_finishing * V : NULL);
        /* count what each state consumed */
        for (size_t k = stream, pos = offset; k <= i && k < n; k++, pos = 0) {
            size_t end = k < i ? n_tokens[k] : at;
            states[k]->n_tokens += end - pos;
        }
        stream = i;
        offset = at;
    }
    return BM_OK;
}

const bmi_backend bmi_cpu_backend = {
    .name = "cpu",
    .kind = BM_BACKEND_CPU,
    .model_init = NULL,
    .model_release = NULL,
    .state_alloc = cpu_state_alloc,
    .state_free = cpu_state_free,
    .state_zero = cpu_state_zero,
    .state_copy = cpu_state_copy,
    .state_download = cpu_state_download,
    .state_upload = cpu_state_upload,
    .session_init = cpu_session_init,
    .session_release = cpu_session_release,
    .prefill = cpu_prefill,
    .step_batch = cpu_step_batch,
    .prefill_batch = cpu_prefill_batch,
    .step_batch_sample = NULL, /* the host samples from host logits */
};
