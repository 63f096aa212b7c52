/* bm_session and the run calls: every argument is checked here, so the
 * backends can trust what they receive. */
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

BM_API bm_status bm_step_batch(bm_session *s, bm_state *const *states, const int32_t *tokens, size_t n,
                               float *logits) {
    if (!s || !states || !tokens) return bmi_fail(BM_ERR_INVALID_ARGUMENT, "bm_step_batch: NULL argument");
    if (n == 0) return BM_OK;
    bm_status r = check_tokens(s->model, tokens, n, "bm_step_batch");
    if (r) return r;
    for (size_t i = 0; i < n; i++) {
        if (!states[i]) return bmi_fail(BM_ERR_INVALID_ARGUMENT, "bm_step_batch: states[%zu] is NULL", i);
        if (states[i]->model != s->model)
            return bmi_fail(BM_ERR_MISMATCH, "bm_step_batch: states[%zu] belongs to another model", i);
    }
    if ((r = bmi_check_distinct((const void *const *)states, n, "bm_step_batch"))) return r;
    if (s->cancel && s->cancel(s->cancel_data)) return bmi_fail(BM_ERR_CANCELLED, "bm_step_batch: cancelled");
    return s->model->backend->step_batch(s, states, tokens, n, logits);
}
