/* See shim.h. */
#define _GNU_SOURCE
#include <dlfcn.h>

#include "shim.h"
#include "_cgo_export.h"

int bmgo_has(const char *name) { return dlsym(RTLD_DEFAULT, name) != NULL; }

/* The address of library function `name`, looked up once (NULL if absent). */
#define RESOLVE(type, name)                                                     \
    static type cached_##name;                                                  \
    type fn = __atomic_load_n(&cached_##name, __ATOMIC_ACQUIRE);                \
    if (!fn) {                                                                  \
        fn = (type)dlsym(RTLD_DEFAULT, #name);                                  \
        if (fn) __atomic_store_n(&cached_##name, fn, __ATOMIC_RELEASE);         \
    }

static int cancel_trampoline(void *user_data) { return bmgoCancel((uintptr_t)user_data); }

static int piece_trampoline(const char *piece, size_t len, int32_t token, void *user_data) {
    return bmgoPiece((char *)piece, len, token, (uintptr_t)user_data);
}

bm_status bmgo_session_new(const bm_model *m, int32_t n_threads, uintptr_t cancel_handle, bm_session **out) {
    bm_session_params p;
    bm_session_params_init(&p);
    p.n_threads = n_threads;
    if (cancel_handle) {
        p.cancel = cancel_trampoline;
        p.cancel_data = (void *)cancel_handle;
    }
    return bm_session_new(m, &p, out);
}

const bm_tokenizer *bmgo_model_tokenizer(const bm_model *m, int *missing) {
    typedef const bm_tokenizer *(*fn_t)(const bm_model *);
    RESOLVE(fn_t, bm_model_tokenizer)
    *missing = fn == NULL;
    return fn ? fn(m) : NULL;
}

#define STATUS_WRAPPER(name, params, args)                                      \
    bm_status bmgo_##name params {                                              \
        typedef bm_status(*fn_t) params;                                        \
        RESOLVE(fn_t, bm_##name)                                                \
        return fn ? fn args : BMGO_MISSING;                                     \
    }

STATUS_WRAPPER(prefill_batch,
               (bm_session * s, bm_state *const *states, const int32_t *const *tokens, const size_t *n_tokens,
                size_t n_streams, float *logits),
               (s, states, tokens, n_tokens, n_streams, logits))
STATUS_WRAPPER(step_batch_sample,
               (bm_session * s, bm_state *const *states, const int32_t *tokens, size_t n, const bm_sampler_params *p,
                uint64_t *rngs, int32_t *out_tokens),
               (s, states, tokens, n, p, rngs, out_tokens))
STATUS_WRAPPER(tokenizer_load, (const char *path, bm_tokenizer **out), (path, out))
STATUS_WRAPPER(tokenize, (const bm_tokenizer *t, const char *text, size_t len, int32_t *ids, size_t cap, size_t *n_ids),
               (t, text, len, ids, cap, n_ids))
STATUS_WRAPPER(detokenize, (const bm_tokenizer *t, const int32_t *ids, size_t n, char *buf, size_t cap, size_t *len),
               (t, ids, n, buf, cap, len))
STATUS_WRAPPER(tokenizer_id_to_piece, (const bm_tokenizer *t, int32_t id, const char **piece, size_t *len),
               (t, id, piece, len))
STATUS_WRAPPER(detokenizer_new, (const bm_tokenizer *t, bm_detokenizer **out), (t, out))
STATUS_WRAPPER(detokenizer_push, (bm_detokenizer * d, int32_t id, char *buf, size_t cap, size_t *len),
               (d, id, buf, cap, len))
STATUS_WRAPPER(detokenizer_flush, (bm_detokenizer * d, char *buf, size_t cap, size_t *len), (d, buf, cap, len))

#define VALUE_WRAPPER(ret, name, params, args, missing)                         \
    ret bmgo_##name params {                                                    \
        typedef ret(*fn_t) params;                                              \
        RESOLVE(fn_t, bm_##name)                                                \
        return fn ? fn args : (missing);                                        \
    }

VALUE_WRAPPER(int32_t, tokenizer_vocab_size, (const bm_tokenizer *t), (t), 0)
VALUE_WRAPPER(int32_t, tokenizer_eos, (const bm_tokenizer *t), (t), -1)
VALUE_WRAPPER(int, tokenizer_is_special, (const bm_tokenizer *t, int32_t id), (t, id), 0)
VALUE_WRAPPER(int32_t, tokenizer_token_to_id, (const bm_tokenizer *t, const char *token, size_t len), (t, token, len),
              -1)
VALUE_WRAPPER(size_t, tokenizer_max_token_bytes, (const bm_tokenizer *t), (t), 0)

#define VOID_WRAPPER(name, params, args)                                        \
    void bmgo_##name params {                                                   \
        typedef void (*fn_t) params;                                            \
        RESOLVE(fn_t, bm_##name)                                                \
        if (fn) fn args;                                                        \
    }

VOID_WRAPPER(tokenizer_free, (bm_tokenizer * t), (t))
VOID_WRAPPER(detokenizer_free, (bm_detokenizer * d), (d))
VOID_WRAPPER(detokenizer_reset, (bm_detokenizer * d), (d))

bm_status bmgo_generate_params_init(bm_generate_params *p) {
    typedef void (*fn_t)(bm_generate_params *);
    RESOLVE(fn_t, bm_generate_params_init)
    if (!fn) return BMGO_MISSING;
    fn(p);
    return BM_OK;
}

bm_status bmgo_generate(bm_session *s, bm_state *st, const bm_tokenizer *tok, const char *prompt, size_t len,
                        bm_generate_params *p, uint64_t *rng, bm_generate_result *out, uintptr_t piece_handle) {
    typedef bm_status (*fn_t)(bm_session *, bm_state *, const bm_tokenizer *, const char *, size_t,
                              const bm_generate_params *, uint64_t *, bm_generate_result *);
    RESOLVE(fn_t, bm_generate)
    if (!fn) return BMGO_MISSING;
    p->on_piece = piece_handle ? piece_trampoline : NULL;
    p->user_data = (void *)piece_handle;
    return fn(s, st, tok, prompt, len, p, rng, out);
}

bm_status bmgo_generate_ids(bm_session *s, bm_state *st, const bm_tokenizer *tok, const int32_t *prompt, size_t n,
                            bm_generate_params *p, uint64_t *rng, bm_generate_result *out, uintptr_t piece_handle) {
    typedef bm_status (*fn_t)(bm_session *, bm_state *, const bm_tokenizer *, const int32_t *, size_t,
                              const bm_generate_params *, uint64_t *, bm_generate_result *);
    RESOLVE(fn_t, bm_generate_ids)
    if (!fn) return BMGO_MISSING;
    p->on_piece = piece_handle ? piece_trampoline : NULL;
    p->user_data = (void *)piece_handle;
    return fn(s, st, tok, prompt, n, p, rng, out);
}
