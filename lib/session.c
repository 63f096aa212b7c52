/* bm_session and the run calls: every argument is checked here, so the
 * backends can trust what they receive. */
#include <stdio.h>

#include "model.h"

BM_API void bm_session_params_init(bm_session_params *p) {
    if (!p) return;
    memset(p, 0, sizeof *p);
    p->size = sizeof *p;
}

BM_API bm_status bm_session_new(const bm_model *m, const bm_session_params *params, bm_session **out) {
    bm_session_params defaults;
    bm_session_params_init(&defaults);
    const bm_session_params *p = params ? params : &defaults;
    if (!m || !out) return bmi_fail(BM_ERR_INVALID_ARGUMENT, "bm_session_new: NULL argument");
    if (p->size != sizeof *p)
        return bmi_fail(BM_ERR_INVALID_ARGUMENT, "bm_session_params.size is %u, this library knows %zu: call "
                                                 "bm_session_params_init first",
                        p->size, sizeof *p);
    for (size_t i = 0; i < sizeof p->reserved / sizeof p->reserved[0]; i++)
        if (p->reserved[i]) return bmi_fail(BM_ERR_INVALID_ARGUMENT, "bm_session_params.reserved must be zero");
    if (p->n_threads < 0 || p->n_threads > 1024)
        return bmi_fail(BM_ERR_INVALID_ARGUMENT, "n_threads %d is outside [0, 1024]", (int)p->n_threads);
    bm_session *s = bmi_calloc(1, sizeof *s);
    if (!s) return bmi_fail(BM_ERR_OUT_OF_MEMORY, "out of memory for a session");
    s->model = m;
    s->n_threads = p->n_threads ? p->n_threads : m->n_threads;
    s->cancel = p->cancel;
    s->cancel_data = p->cancel_data;
    bm_status st = m->backend->session_init ? m->backend->session_init(s) : BM_OK;
    if (st) {
        bmi_free(s);
        return st;
    }
    *out = s;
    return BM_OK;
}

BM_API void bm_session_free(bm_session *s) {
    if (!s) return;
    if (s->model->backend->session_release) s->model->backend->session_release(s);
    bmi_free(s->host_logits);
    bmi_free(s);
}

static bm_status check_tokens(const bm_model *m, const int32_t *tokens, size_t n, const char *fn) {
    for (size_t i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= m->config.vocab_size)
            return bmi_fail(BM_ERR_INVALID_ARGUMENT, "%s: token %d at position %zu is outside [0, %d)", fn,
                            (int)tokens[i], i, m->config.vocab_size);
    return BM_OK;
}

static bm_status check_run(bm_session *s, const bm_state *st, const int32_t *tokens, size_t n, const char *fn) {
    if (!s || !st || !tokens) return bmi_fail(BM_ERR_INVALID_ARGUMENT, "%s: NULL argument", fn);
    if (n == 0) return bmi_fail(BM_ERR_INVALID_ARGUMENT, "%s: no tokens", fn);
    if (st->model != s->model) return bmi_fail(BM_ERR_MISMATCH, "%s: the state belongs to another model", fn);
    return check_tokens(s->model, tokens, n, fn);
}

BM_API bm_status bm_prefill(bm_session *s, bm_state *st, const int32_t *tokens, size_t n, float *logits) {
    bm_status r = check_run(s, st, tokens, n, "bm_prefill");
    if (r) return r;
    if (s->cancel && s->cancel(s->cancel_data)) return bmi_fail(BM_ERR_CANCELLED, "bm_prefill: cancelled");
    return s->model->backend->prefill(s, st, tokens, n, logits, 0);
}

BM_API bm_status bm_prefill_all(bm_session *s, bm_state *st, const int32_t *tokens, size_t n, float *logits) {
    bm_status r = check_run(s, st, tokens, n, "bm_prefill_all");
    if (r) return r;
    if (!logits) return bmi_fail(BM_ERR_INVALID_ARGUMENT, "bm_prefill_all: logits must not be NULL");
    if (s->cancel && s->cancel(s->cancel_data)) return bmi_fail(BM_ERR_CANCELLED, "bm_prefill_all: cancelled");
    return s->model->backend->prefill(s, st, tokens, n, logits, 1);
}

BM_API bm_status bm_step(bm_session *s, bm_state *st, int32_t token, float *logits) {
    bm_status r = check_run(s, st, &token, 1, "bm_step");
    if (r) return r;
    if (s->cancel && s->cancel(s->cancel_data)) return bmi_fail(BM_ERR_CANCELLED, "bm_step: cancelled");
    return s->model->backend->step_batch(s, &st, &token, 1, logits);
}

static bm_status check_batch(bm_session *s, bm_state *const *states, const int32_t *tokens, size_t n,
                             const char *fn) {
    if (!s || !states || !tokens) return bmi_fail(BM_ERR_INVALID_ARGUMENT, "%s: NULL argument", fn);
    bm_status r = check_tokens(s->model, tokens, n, fn);
    if (r) return r;
    for (size_t i = 0; i < n; i++) {
        if (!states[i]) return bmi_fail(BM_ERR_INVALID_ARGUMENT, "%s: states[%zu] is NULL", fn, i);
        if (states[i]->model != s->model)
            return bmi_fail(BM_ERR_MISMATCH, "%s: states[%zu] belongs to another model", fn, i);
    }
    if ((r = bmi_check_distinct((const void *const *)states, n, fn))) return r;
    if (n && s->cancel && s->cancel(s->cancel_data)) return bmi_fail(BM_ERR_CANCELLED, "%s: cancelled", fn);
    return BM_OK;
}

BM_API bm_status bm_step_batch(bm_session *s, bm_state *const *states, const int32_t *tokens, size_t n,
                               float *logits) {
    bm_status r = check_batch(s, states, tokens, n, "bm_step_batch");
    if (r || n == 0) return r;
    return s->model->backend->step_batch(s, states, tokens, n, logits);
}

BM_API bm_status bm_prefill_batch(bm_session *s, bm_state *const *states, const int32_t *const *tokens,
                                  const size_t *n_tokens, size_t n, float *logits) {
    if (!s || !states || !tokens || !n_tokens) return bmi_fail(BM_ERR_INVALID_ARGUMENT, "bm_prefill_batch: NULL argument");
    if (n == 0) return BM_OK;
    bm_status r;
    for (size_t i = 0; i < n; i++) {
        char fn[64];
        snprintf(fn, sizeof fn, "bm_prefill_batch (stream %zu)", i);
        if ((r = check_run(s, states[i], tokens[i], n_tokens[i], fn))) return r;
    }
    if ((r = bmi_check_distinct((const void *const *)states, n, "bm_prefill_batch"))) return r;
    if (s->cancel && s->cancel(s->cancel_data)) return bmi_fail(BM_ERR_CANCELLED, "bm_prefill_batch: cancelled");
    const bmi_backend *b = s->model->backend;
    if (b->prefill_batch) return b->prefill_batch(s, states, tokens, n_tokens, n, logits);
    size_t V = (size_t)s->model->config.vocab_size;
    for (size_t i = 0; i < n; i++) {
        if (i > 0 && s->cancel && s->cancel(s->cancel_data))
            return bmi_fail(BM_ERR_CANCELLED, "bm_prefill_batch: cancelled after %zu of %zu streams", i, n);
        if ((r = b->prefill(s, states[i], tokens[i], n_tokens[i], logits ? logits + i * V : NULL, 0))) return r;
    }
    return BM_OK;
}

static bm_status reserve_host_logits(bm_session *s, size_t rows) {
    if (rows <= s->host_logits_rows) return BM_OK;
    float *l = bmi_malloc(rows * (size_t)s->model->config.vocab_size * sizeof(float));
    if (!l) return bmi_fail(BM_ERR_OUT_OF_MEMORY, "out of memory for %zu rows of logits", rows);
    bmi_free(s->host_logits);
    s->host_logits = l;
    s->host_logits_rows = rows;
    return BM_OK;
}

BM_API bm_status bm_step_batch_sample(bm_session *s, bm_state *const *states, const int32_t *tokens, size_t n,
                                      const bm_sampler_params *params, uint64_t *rngs, int32_t *out_tokens) {
    bm_sampler_params greedy;
    bm_sampler_params_init(&greedy);
    greedy.temperature = 0;
    greedy.repeat_penalty = 1;
    const bm_sampler_params *p = params ? params : &greedy;
    if (!s || !states || !tokens || !rngs || !out_tokens)
        return bmi_fail(BM_ERR_INVALID_ARGUMENT, "bm_step_batch_sample: NULL argument");
    if (p->size != sizeof *p)
        return bmi_fail(BM_ERR_INVALID_ARGUMENT, "bm_sampler_params.size is %u, this library knows %zu", p->size,
                        sizeof *p);
    if (p->repeat_penalty != 1.0f)
        return bmi_fail(BM_ERR_INVALID_ARGUMENT, "bm_step_batch_sample: repeat_penalty must be 1 (it needs each "
                                                 "stream's recent tokens: use bm_step_batch and bm_sample)");
    /* Check the sampler parameters before any state moves: a dry run on one logit. */
    size_t V = (size_t)s->model->config.vocab_size;
    if (p->n_vocab_valid < 0 || (size_t)p->n_vocab_valid > V)
        return bmi_fail(BM_ERR_INVALID_ARGUMENT, "n_vocab_valid %d is outside [0, %zu]", (int)p->n_vocab_valid, V);
    bm_sampler_params probe_params = *p;
    probe_params.n_vocab_valid = 0;
    float probe = 0;
    uint64_t probe_rng = 0;
    int32_t probe_token;
    bm_status r = bm_sample(&probe, 1, &probe_params, &probe_rng, NULL, 0, &probe_token);
    if (r) return r;
    if ((r = check_batch(s, states, tokens, n, "bm_step_batch_sample")) || n == 0) return r;
    const bmi_backend *b = s->model->backend;
    if (b->step_batch_sample) return b->step_batch_sample(s, states, tokens, n, p, rngs, out_tokens);
    if ((r = reserve_host_logits(s, n))) return r;
    if ((r = b->step_batch(s, states, tokens, n, s->host_logits))) return r;
    for (size_t i = 0; i < n; i++)
        if ((r = bm_sample(s->host_logits + i * V, V, p, &rngs[i], NULL, 0, &out_tokens[i]))) return r;
    return BM_OK;
}
