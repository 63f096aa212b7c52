/* bm_generate: prompt in, streamed text out. The loop is sample -> feed ->
 * decode -> match stop strings -> emit; everything it needs is allocated
 * before the first token so the per-token work is the model step, the
 * sampler and a few byte copies. */
#include <time.h>

#include "model.h"

#define DEFAULT_MAX_TOKENS 256
#define DEFAULT_REPEAT_WINDOW 64
#define MAX_REPEAT_WINDOW 4096

BM_API void bm_generate_params_init(bm_generate_params *p) {
    if (!p) return;
    memset(p, 0, sizeof *p);
    p->size = sizeof *p;
    bm_sampler_params_init(&p->sampler);
    p->max_tokens = DEFAULT_MAX_TOKENS;
    p->repeat_window = DEFAULT_REPEAT_WINDOW;
}

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Text decoded but not yet handed to the callback: held while its tail could
 * still grow into a stop string. */
typedef struct pending_text {
    char *bytes;
    size_t len, cap;
} pending_text;

typedef struct generation {
    bm_session *session;
    bm_state *state;
    const bm_tokenizer *tok;
    const bm_generate_params *p;
    bm_sampler_params sampler;
    uint64_t *rng;
    float *logits;            /* [vocab] */
    int32_t *recent;          /* ring of the last repeat_window tokens */
    size_t n_recent, recent_at;
    bm_detokenizer *detok;
    char *piece;              /* one push's output */
    size_t piece_cap;
    pending_text pending;
    size_t longest_stop;
    bm_generate_result result;
} generation;

static void remember(generation *g, int32_t token) {
    size_t window = (size_t)g->p->repeat_window;
    if (window == 0) return;
    g->recent[g->recent_at] = token;
    g->recent_at = (g->recent_at + 1) % window;
    if (g->n_recent < window) g->n_recent++;
}

static bm_status pending_append(pending_text *t, const char *bytes, size_t n) {
    if (t->len + n > t->cap) {
        size_t cap = (t->len + n) * 2 + 64;
        char *b = bmi_realloc(t->bytes, cap);
        if (!b) return bmi_fail(BM_ERR_OUT_OF_MEMORY, "out of memory during generation");
        t->bytes = b;
        t->cap = cap;
    }
    memcpy(t->bytes + t->len, bytes, n);
    t->len += n;
    return BM_OK;
}

/* Hand the first n pending bytes to the callback; returns 1 if it asked to stop. */
static int emit(generation *g, size_t n, int32_t token) {
    int stop = 0;
    if (n > 0 && g->p->on_piece) stop = g->p->on_piece(g->pending.bytes, n, token, g->p->user_data) != 0;
    memmove(g->pending.bytes, g->pending.bytes + n, g->pending.len - n);
    g->pending.len -= n;
    return stop;
}

/* Where the earliest stop string starts in the pending text, or -1. */
static long find_stop(const generation *g) {
    long best = -1;
    for (size_t i = 0; i < g->p->n_stop_strings; i++) {
        const char *s = g->p->stop_strings[i];
        size_t n = strlen(s);
        if (n == 0 || n > g->pending.len) continue;
        const char *hit = memmem(g->pending.bytes, g->pending.len, s, n);
        if (hit && (best < 0 || hit - g->pending.bytes < best)) best = hit - g->pending.bytes;
    }
    return best;
}

/* Bytes at the end of the pending text that are a proper prefix of some stop
 * string, so must wait for more text. */
static size_t held_back(const generation *g) {
    size_t keep = 0;
    for (size_t i = 0; i < g->p->n_stop_strings; i++) {
        const char *s = g->p->stop_strings[i];
        size_t n = strlen(s);
        for (size_t k = n - 1 < g->pending.len ? n - 1 : g->pending.len; k > keep; k--)
            if (memcmp(g->pending.bytes + g->pending.len - k, s, k) == 0) {
                keep = k;
                break;
            }
    }
    return keep;
}

/* Decode one sampled token into the pending text and emit what is safe;
 * returns a stop reason or BM_STOP_NONE, or a negative status. */
static int on_token(generation *g, int32_t token) {
    if (!g->tok) return BM_STOP_NONE;
    size_t n = 0;
    bm_status st = bm_detokenizer_push(g->detok, token, g->piece, g->piece_cap, &n);
    if (st) return st;
    if ((st = pending_append(&g->pending, g->piece, n))) return st;
    long at = find_stop(g);
    if (at >= 0) {
        emit(g, (size_t)at, token);
        return BM_STOP_STRING;
    }
    return emit(g, g->pending.len - held_back(g), token) ? BM_STOP_CALLBACK : BM_STOP_NONE;
}

/* At the end: whatever is held is not a stop string after all. */
static int flush_text(generation *g, int32_t token) {
    if (!g->tok) return BM_STOP_NONE;
    size_t n = 0;
    bm_status st = bm_detokenizer_flush(g->detok, g->piece, g->piece_cap, &n);
    if (st) return st;
    if ((st = pending_append(&g->pending, g->piece, n))) return st;
    long at = find_stop(g);
    if (at >= 0) {
        emit(g, (size_t)at, token);
        return BM_STOP_STRING;
    }
    return emit(g, g->pending.len, token) ? BM_STOP_CALLBACK : BM_STOP_NONE;
}

static bm_status check_params(const bm_generate_params *p, const bm_tokenizer *tok, int vocab) {
    if (p->size != sizeof *p)
        return bmi_fail(BM_ERR_INVALID_ARGUMENT, "bm_generate_params.size is %u, this library knows %zu", p->size,
                        sizeof *p);
    for (size_t i = 0; i < sizeof p->reserved / sizeof p->reserved[0]; i++)
        if (p->reserved[i]) return bmi_fail(BM_ERR_INVALID_ARGUMENT, "bm_generate_params.reserved must be zero");
    if (p->max_tokens < 0) return bmi_fail(BM_ERR_INVALID_ARGUMENT, "max_tokens %d is negative", (int)p->max_tokens);
    if (p->repeat_window < 0 || p->repeat_window > MAX_REPEAT_WINDOW)
        return bmi_fail(BM_ERR_INVALID_ARGUMENT, "repeat_window %d is outside [0, %d]", (int)p->repeat_window,
                        MAX_REPEAT_WINDOW);
    if (p->n_stop_strings && !p->stop_strings)
        return bmi_fail(BM_ERR_INVALID_ARGUMENT, "stop_strings is NULL but n_stop_strings is %zu", p->n_stop_strings);
    for (size_t i = 0; i < p->n_stop_strings; i++)
        if (!p->stop_strings[i]) return bmi_fail(BM_ERR_INVALID_ARGUMENT, "stop_strings[%zu] is NULL", i);
    if (p->n_stop_strings && !tok)
        return bmi_fail(BM_ERR_INVALID_ARGUMENT, "stop strings need a tokenizer to turn tokens into text");
    /* The sampler's own checks, on one logit, before the prompt touches the state. */
    if (p->sampler.size == sizeof p->sampler && (p->sampler.n_vocab_valid < 0 || p->sampler.n_vocab_valid > vocab))
        return bmi_fail(BM_ERR_INVALID_ARGUMENT, "n_vocab_valid %d is outside [0, %d]", (int)p->sampler.n_vocab_valid,
                        vocab);
    bm_sampler_params probe = p->sampler;
    probe.n_vocab_valid = 0;
    float logit = 0;
    uint64_t rng = 0;
    int32_t token;
    return bm_sample(&logit, 1, &probe, &rng, NULL, 0, &token);
}

static void generation_free(generation *g) {
    bmi_free(g->logits);
    bmi_free(g->recent);
    bmi_free(g->piece);
    bmi_free(g->pending.bytes);
    bm_detokenizer_free(g->detok);
}

static bm_status generation_init(generation *g) {
    const bm_model *m = g->session->model;
    int V = m->config.vocab_size;
    g->sampler = g->p->sampler;
    if (g->tok) {
        int32_t valid = bm_tokenizer_vocab_size(g->tok);
        if (valid > 0 && valid < V && (g->sampler.n_vocab_valid == 0 || g->sampler.n_vocab_valid > valid))
            g->sampler.n_vocab_valid = valid;
    }
    g->logits = bmi_malloc((size_t)V * sizeof(float));
    g->recent = bmi_malloc(((size_t)g->p->repeat_window + 1) * sizeof(int32_t));
    if (!g->logits || !g->recent) return bmi_fail(BM_ERR_OUT_OF_MEMORY, "out of memory for generation");
    if (g->tok) {
        bm_status st = bm_detokenizer_new(g->tok, &g->detok);
        if (st) return st;
        g->piece_cap = 3 * (bm_tokenizer_max_token_bytes(g->tok) + 3);
        g->piece = bmi_malloc(g->piece_cap);
        if (!g->piece) return bmi_fail(BM_ERR_OUT_OF_MEMORY, "out of memory for generation");
        g->pending.cap = 256;
        g->pending.bytes = bmi_malloc(g->pending.cap);
        if (!g->pending.bytes) return bmi_fail(BM_ERR_OUT_OF_MEMORY, "out of memory for generation");
    }
    return BM_OK;
}

static bm_status run(generation *g, const int32_t *prompt, size_t n) {
    for (size_t i = 0; i < n; i++) remember(g, prompt[i]);
    double t0 = now_seconds();
    bm_status st = bm_prefill(g->session, g->state, prompt, n, g->logits);
    if (st) return st;
    double t1 = now_seconds();
    g->result.prompt_seconds = t1 - t0;
    int32_t eos = g->tok ? bm_tokenizer_eos(g->tok) : -1, token = -1;
    int stop = BM_STOP_NONE;
    while (stop == BM_STOP_NONE) {
        if (g->result.n_generated >= g->p->max_tokens) {
            stop = flush_text(g, token);
            if (stop == BM_STOP_NONE) stop = BM_STOP_MAX_TOKENS;
            break;
        }
        /* The ring holds the window in rotated order; the penalty ignores order. */
        st = bm_sample(g->logits, (size_t)g->session->model->config.vocab_size, &g->sampler, g->rng, g->recent,
                       g->n_recent, &token);
        if (st) return st;
        g->result.n_generated++;
        remember(g, token);
        /* Feed it before anything can stop us, so the state has seen every token sampled. */
        int more = g->result.n_generated < g->p->max_tokens && token != eos;
        if ((st = bm_step(g->session, g->state, token, more ? g->logits : NULL))) return st;
        if (token == eos) {
            stop = flush_text(g, token);
            if (stop == BM_STOP_NONE) stop = BM_STOP_EOS;
            break;
        }
        stop = on_token(g, token);
        if (stop < 0) return stop;
    }
    if (stop < 0) return stop;
    g->result.stop = (bm_stop_reason)stop;
    g->result.generate_seconds = now_seconds() - t1;
    return BM_OK;
}

BM_API bm_status bm_generate_ids(bm_session *s, bm_state *st, const bm_tokenizer *tok, const int32_t *prompt, size_t n,
                                 const bm_generate_params *params, uint64_t *rng, bm_generate_result *out) {
    bm_generate_params defaults;
    bm_generate_params_init(&defaults);
    const bm_generate_params *p = params ? params : &defaults;
    if (!s || !st || !prompt || !rng) return bmi_fail(BM_ERR_INVALID_ARGUMENT, "bm_generate: NULL argument");
    if (n == 0) return bmi_fail(BM_ERR_INVALID_ARGUMENT, "bm_generate: the prompt has no tokens");
    if (out && out->size != sizeof *out)
        return bmi_fail(BM_ERR_INVALID_ARGUMENT, "bm_generate_result.size is %u, this library knows %zu", out->size,
                        sizeof *out);
    if (!tok) tok = bm_model_tokenizer(s->model);
    bm_status r = check_params(p, tok, s->model->config.vocab_size);
    if (r) return r;
    generation g;
    memset(&g, 0, sizeof g);
    g.session = s;
    g.state = st;
    g.tok = tok;
    g.p = p;
    g.rng = rng;
    g.result.size = sizeof g.result;
    g.result.n_prompt_tokens = (int32_t)n;
    r = generation_init(&g);
    if (r == BM_OK) r = run(&g, prompt, n);
    generation_free(&g);
    if (out) *out = g.result;
    return r;
}

BM_API bm_status bm_generate(bm_session *s, bm_state *st, const bm_tokenizer *tok, const char *prompt, size_t len,
                             const bm_generate_params *p, uint64_t *rng, bm_generate_result *out) {
    if (!s || (!prompt && len)) return bmi_fail(BM_ERR_INVALID_ARGUMENT, "bm_generate: NULL argument");
    if (!tok) tok = bm_model_tokenizer(s->model);
    if (!tok) return bmi_fail(BM_ERR_INVALID_ARGUMENT, "bm_generate: a text prompt needs a tokenizer");
    size_t n = 0;
    bm_status r = bm_tokenize(tok, prompt, len, NULL, 0, &n);
    if (r) return r;
    int32_t *ids = bmi_malloc((n ? n : 1) * sizeof *ids);
    if (!ids) return bmi_fail(BM_ERR_OUT_OF_MEMORY, "out of memory encoding the prompt");
    r = bm_tokenize(tok, prompt, len, ids, n, &n);
    if (r == BM_OK) r = bm_generate_ids(s, st, tok, ids, n, p, rng, out);
    bmi_free(ids);
    return r;
}
