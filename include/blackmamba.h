/*
 * blackmamba.h: the public API of libblackmamba, a C library that runs
 * BlackMamba language models (Mamba selective-state-space blocks alternating
 * with top-1 mixture-of-experts MLP blocks, arXiv 2402.01771).
 *
 * This header is the reference manual. If it is not declared here, it is not
 * API. Conventions that hold for every function unless its comment says
 * otherwise:
 *
 *  - Functions that can fail return a bm_status: BM_OK (0) on success, a
 *    negative code on failure. The numeric values never change between
 *    releases. On failure the calling thread's bm_last_error() holds a
 *    message saying what went wrong, output parameters are left untouched,
 *    and any state or object passed in is left exactly as it was.
 *  - The library never aborts, exits or prints. It allocates through malloc
 *    and, on the CUDA backend, cudaMalloc; allocation failures are reported
 *    as BM_ERR_OUT_OF_MEMORY.
 *  - Objects are opaque handles made by a `_new` or `_load` function and released
 *    by the matching `_free` function. Every `_free` function accepts NULL (a no-op).
 *    Whoever receives a handle owns it.
 *  - Parameter structs carry their own `size` (set by their `_init` function)
 *    and `reserved` fields that must stay zero, so they can grow without
 *    breaking callers: always call the `_init` function first, then change fields. A `size`
 *    the library does not know, or non-zero reserved fields, is rejected with
 *    BM_ERR_INVALID_ARGUMENT.
 *
 * Threads: a bm_model and a bm_tokenizer are immutable after loading and may
 * be used from any number of threads at once. A bm_session and a bm_state
 * are used by one thread at a time (use one session per thread; a state may
 * move between threads and sessions of the same model, but is never touched
 * by two calls at once). bm_sample is pure and thread-safe. The error message
 * is per thread.
 */
#ifndef BLACKMAMBA_H
#define BLACKMAMBA_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define BM_API
#elif defined(__GNUC__) && defined(BM_BUILDING_LIBRARY)
#define BM_API __attribute__((visibility("default")))
#else
#define BM_API
#endif

/* ------------------------------------------------------------------------ */
/* Version                                                                  */
/* ------------------------------------------------------------------------ */

#define BM_VERSION_MAJOR 0
#define BM_VERSION_MINOR 1
#define BM_VERSION_PATCH 0
#define BM_VERSION_NUMBER ((BM_VERSION_MAJOR << 16) | (BM_VERSION_MINOR << 8) | BM_VERSION_PATCH)

/* The version of the library actually loaded, (major << 16) | (minor << 8) |
 * patch. Compare its major with BM_VERSION_MAJOR to detect a mismatch between
 * header and library. Thread-safe; never fails. */
BM_API uint32_t bm_version(void);

/* ------------------------------------------------------------------------ */
/* Status codes and errors                                                  */
/* ------------------------------------------------------------------------ */

typedef int32_t bm_status;

#define BM_OK 0
#define BM_ERR_INVALID_ARGUMENT (-1) /* NULL where an object is needed, token id out of range, bad params */
#define BM_ERR_IO (-2)               /* a file could not be opened, read or mapped */
#define BM_ERR_FORMAT (-3)           /* a file or buffer is malformed or inconsistent */
#define BM_ERR_UNSUPPORTED (-4)      /* valid, but not something this build or backend can do */
#define BM_ERR_OUT_OF_MEMORY (-5)    /* host or device allocation failed */
#define BM_ERR_DEVICE (-6)           /* the GPU or its driver reported an error */
#define BM_ERR_CANCELLED (-7)        /* the caller's cancel callback asked to stop */
#define BM_ERR_MISMATCH (-8)         /* objects that belong to different models (or a state of another model) */
#define BM_ERR_BUFFER_TOO_SMALL (-9) /* the caller's buffer cannot hold the result; the size needed is reported */

/* A short, static, English name for a status ("ok", "invalid argument", ...).
 * Unknown values give "unknown status". Never NULL; thread-safe. */
BM_API const char *bm_status_string(bm_status s);

/* The message of the calling thread's most recent failed call, or "" if
 * none has failed yet. The pointer is owned by the library and valid until
 * this thread's next call into the library. Successful calls do not clear
 * it. Never NULL. */
BM_API const char *bm_last_error(void);

/* ------------------------------------------------------------------------ */
/* Models                                                                   */
/* ------------------------------------------------------------------------ */

typedef struct bm_model bm_model;
typedef struct bm_state bm_state;
typedef struct bm_session bm_session;
typedef struct bm_tokenizer bm_tokenizer;

typedef enum bm_backend {
    BM_BACKEND_AUTO = 0, /* CUDA when this build has it and a GPU is present, else CPU */
    BM_BACKEND_CPU = 1,
    BM_BACKEND_CUDA = 2
} bm_backend;

/* The MLP gate activation. The released inference code gates with exact
 * (erf) GELU although the paper says SwiGLU; see SPEC.md. */
typedef enum bm_activation {
    BM_ACTIVATION_GELU = 0, /* default: matches the released reference code */
    BM_ACTIVATION_SILU = 1
} bm_activation;

typedef struct bm_model_params {
    uint32_t size;            /* sizeof(bm_model_params), set by bm_model_params_init */
    bm_backend backend;       /* default BM_BACKEND_AUTO */
    int32_t device;           /* CUDA device ordinal; default 0 */
    int32_t n_threads;        /* CPU threads for sessions that do not set their own;
                                 0 (default) = the number of online processors */
    bm_activation activation; /* default BM_ACTIVATION_GELU */
    uint32_t reserved[8];     /* must be zero */
} bm_model_params;

/* Fill `p` with the defaults and set p->size. NULL is a no-op. */
BM_API void bm_model_params_init(bm_model_params *p);

/* Load a model.
 * `path` is either a model directory holding config.json and one of
 * model.safetensors or pytorch_model.bin (safetensors preferred when both are
 * present), or the path of such a weights file with config.json beside it.
 * The weights file is memory-mapped read-only; the CPU backend uses the
 * weights in place, the CUDA backend uploads them once to the device.
 * Nothing in the file is executed: pytorch_model.bin is read by a restricted
 * pickle interpreter that only rebuilds tensors.
 * `p` may be NULL for defaults. On success *out receives a model the caller
 * frees with bm_model_free. Errors: BM_ERR_INVALID_ARGUMENT (NULL path or
 * out, bad params), BM_ERR_IO, BM_ERR_FORMAT (malformed file, or config and
 * tensors disagree; the message names the key or tensor), BM_ERR_UNSUPPORTED
 * (e.g. BM_BACKEND_CUDA in a build without CUDA), BM_ERR_DEVICE,
 * BM_ERR_OUT_OF_MEMORY. Thread-safe. */
BM_API bm_status bm_model_load(const char *path, const bm_model_params *p, bm_model **out);

/* Free a model. Every state and session made from it must be freed first.
 * NULL is a no-op. */
BM_API void bm_model_free(bm_model *m);

typedef struct bm_model_info {
    uint32_t size;             /* caller sets sizeof(bm_model_info) before the call */
    int32_t vocab_size;        /* logit rows (embedding rows), e.g. 50304 */
    int32_t d_model;           /* hidden size d */
    int32_t n_layers;          /* all layers (Mamba and MLP/MoE) */
    int32_t n_mamba_layers;    /* layers that carry recurrent state */
    int32_t d_inner;           /* expansion_factor * d */
    int32_t d_state;           /* N, state entries per channel */
    int32_t d_conv;            /* K, convolution width */
    int32_t dt_rank;           /* R */
    int32_t ffn_hidden;        /* F */
    int32_t max_experts;       /* largest expert count of any layer (1 for dense, 0 if none) */
    bm_backend backend;        /* the backend actually in use (never AUTO) */
    bm_activation activation;
    int32_t weight_dtype;      /* 0 = f32, 1 = bf16, 2 = f16: the stored type of the large matrices */
    uint64_t n_params;         /* parameters in the file (tied embedding counted once) */
    uint64_t n_active_params;  /* parameters one token touches (one expert per MoE layer) */
    uint64_t state_bytes;      /* bytes of one stream's recurrent state (what bm_state_save writes, minus its header) */
    uint64_t weight_bytes;     /* bytes of weights as stored */
    const char *layer_kinds;   /* the layer grammar of config.json, comma separated ("r,8,r,8"); owned by the model */
    uint32_t reserved[8];
} bm_model_info;

/* Describe a model. The caller sets out->size = sizeof(bm_model_info).
 * Returns BM_ERR_INVALID_ARGUMENT for NULL arguments or an unknown size. */
BM_API bm_status bm_model_get_info(const bm_model *m, bm_model_info *out);

/* ------------------------------------------------------------------------ */
/* States: one stream's recurrent memory                                    */
/* ------------------------------------------------------------------------ */

/* Make a zero state (no tokens seen) for model `m`, living where m's backend
 * computes (device memory on CUDA). Free with bm_state_free before the
 * model. Errors: BM_ERR_INVALID_ARGUMENT, BM_ERR_OUT_OF_MEMORY, BM_ERR_DEVICE. */
BM_API bm_status bm_state_new(const bm_model *m, bm_state **out);
/* NULL is a no-op. */
BM_API void bm_state_free(bm_state *s);
/* Return the state to zero tokens seen. */
BM_API bm_status bm_state_reset(bm_state *s);
/* Make `dst` an exact copy of `src` (fork a stream). Both must come from the
 * same model: otherwise BM_ERR_MISMATCH. dst == src is a no-op. */
BM_API bm_status bm_state_copy(bm_state *dst, const bm_state *src);
/* Number of tokens the state has consumed since it was new or reset. 0 for NULL. */
BM_API uint64_t bm_state_n_tokens(const bm_state *s);

/* Serialise a state into `buf` (layout: docs/STATE_FORMAT.md). The bytes are
 * the same on every backend and host, and load on either backend of the
 * same model. With buf == NULL, *len receives the size needed and BM_OK is
 * returned; with a buffer smaller than that, *len receives the size and
 * BM_ERR_BUFFER_TOO_SMALL is returned. On success *len is the bytes written. */
BM_API bm_status bm_state_save(const bm_state *s, void *buf, size_t cap, size_t *len);
/* Restore a state from bytes made by bm_state_save. The bytes are checked:
 * BM_ERR_FORMAT if they are truncated or corrupt (checksum, magic, version),
 * BM_ERR_MISMATCH if they were saved from a model of another configuration or
 * other weights. On failure `s` is unchanged. */
BM_API bm_status bm_state_load(bm_state *s, const void *buf, size_t len);

/* ------------------------------------------------------------------------ */
/* Sessions and running the model                                           */
/* ------------------------------------------------------------------------ */

/* A cancel callback: return non-zero to ask the running call to stop. It is
 * polled between chunks of a long prefill and between steps, on the thread
 * that made the call. */
typedef int (*bm_cancel_fn)(void *user_data);

typedef struct bm_session_params {
    uint32_t size;            /* sizeof(bm_session_params), set by bm_session_params_init */
    int32_t n_threads;        /* CPU threads; 0 (default) = the model's n_threads */
    bm_cancel_fn cancel;      /* NULL (default): never cancelled */
    void *cancel_data;        /* passed to cancel */
    uint32_t reserved[8];     /* must be zero */
} bm_session_params;

/* Fill `p` with the defaults and set p->size. NULL is a no-op. */
BM_API void bm_session_params_init(bm_session_params *p);

/* Make an execution context for `m`: scratch buffers, worker threads, the
 * device stream and cached graphs. `p` may be NULL for defaults. One thread
 * at a time may use a session; make one per thread. Free it before the model. */
BM_API bm_status bm_session_new(const bm_model *m, const bm_session_params *p, bm_session **out);
/* NULL is a no-op. */
BM_API void bm_session_free(bm_session *s);

/* Feed `n` tokens (n >= 1) to state `st`, computing the whole prompt per layer.
 * If `logits` is not NULL it receives vocab_size floats: the logits after the
 * last token. Equivalent (to rounding) to n calls of bm_step.
 * Errors: BM_ERR_INVALID_ARGUMENT (NULL, n == 0, a token outside
 * [0, vocab_size)), BM_ERR_MISMATCH (state of another model),
 * BM_ERR_CANCELLED, BM_ERR_OUT_OF_MEMORY, BM_ERR_DEVICE. On any error the
 * state is unchanged. */
BM_API bm_status bm_prefill(bm_session *s, bm_state *st, const int32_t *tokens, size_t n, float *logits);
/* As bm_prefill, but `logits` (required) receives n * vocab_size floats: the
 * logits after every position, row i after tokens[0..i]. */
BM_API bm_status bm_prefill_all(bm_session *s, bm_state *st, const int32_t *tokens, size_t n, float *logits);
/* Feed one token. `logits` may be NULL (only the state advances) or receive
 * vocab_size floats. Errors as bm_prefill. */
BM_API bm_status bm_step(bm_session *s, bm_state *st, int32_t token, float *logits);
/* Advance n independent streams by one token each: states[i] consumes
 * tokens[i]. The states may be anywhere; the same state may not appear twice
 * (BM_ERR_INVALID_ARGUMENT). `logits` is NULL or receives n * vocab_size
 * floats, row i for stream i. Results equal n calls of bm_step. On error no
 * state changes. */
BM_API bm_status bm_step_batch(bm_session *s, bm_state *const *states, const int32_t *tokens, size_t n,
                               float *logits);

/* ------------------------------------------------------------------------ */
/* Sampling                                                                 */
/* ------------------------------------------------------------------------ */

typedef struct bm_sampler_params {
    uint32_t size;         /* sizeof(bm_sampler_params), set by bm_sampler_params_init */
    float temperature;     /* 0 = greedy (argmax, lowest id on ties); finite, >= 0; default 0.8 */
    int32_t top_k;         /* keep the k most likely tokens (lower id first on ties); <= 0 = off; default 40 */
    float top_p;           /* keep the smallest set whose probability reaches p; >= 1 = off; default 0.95 */
    float min_p;           /* drop tokens below min_p * p(most likely); <= 0 = off; at most 1; default 0.05 */
    float repeat_penalty;  /* divide positive / multiply negative logits of recent tokens; 1 = off;
                              finite, > 0; default 1.1 */
    int32_t n_vocab_valid; /* only ids < this are sampled; 0 (default) = all of n_vocab */
    uint32_t reserved[8];  /* must be zero */
} bm_sampler_params;

/* Fill `p` with the defaults and set p->size. NULL is a no-op. */
BM_API void bm_sampler_params_init(bm_sampler_params *p);

/* Choose the next token from `logits` (n_vocab floats, not modified) and
 * store it in *token.
 *
 * Steps, in this order:
 *  1. Repetition penalty: every distinct id in recent[0..n_recent) (recent may
 *     be NULL when n_recent is 0; repeats count once) has its logit l replaced
 *     by l / repeat_penalty if l > 0, l * repeat_penalty if l < 0.
 *  2. Candidates: ids below n_vocab_valid (or n_vocab) whose logit is not NaN
 *     and not -inf. NaN logits are never chosen.
 *  3. temperature == 0 (greedy): the candidate with the largest logit, the
 *     lowest id among equals; the filters below are skipped.
 *  4. top-k: the k largest logits (lower id first among equals).
 *  5. Softmax (in double) of logit / temperature over those candidates.
 *  6. top-p: in order of decreasing probability (lower id first among
 *     equals), the shortest prefix whose cumulative probability reaches top_p;
 *     at least one token, so top_p <= 0 keeps only the most likely.
 *  7. min-p: drop tokens whose probability is below min_p times the largest
 *     (probabilities of step 5; top-p and min-p each keep a prefix of the same
 *     order, so their order does not change the result).
 *  8. One draw u in [0, 1) (see below); walking the kept tokens in increasing
 *     id order, the first whose running sum of weights exceeds u times the
 *     kept total is chosen.
 *
 * `rng` is the caller's 64-bit generator state; any value, 0 included, is a
 * valid seed. Every successful call makes exactly one draw, also when greedy,
 * so a sequence of calls stays in step whatever the parameters. One draw is
 * SplitMix64:
 *     *rng += 0x9E3779B97F4A7C15;
 *     z = *rng;  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9;
 *                z = (z ^ (z >> 27)) * 0x94D049BB133111EB;  z ^= z >> 31;
 *     u = (double)(z >> 11) * 0x1.0p-53;
 * (all arithmetic mod 2^64). The same logits, parameters and seed give the
 * same token on any backend, host and thread.
 *
 * `p` may be NULL for the defaults. Errors (nothing is written, *rng is not
 * advanced): BM_ERR_INVALID_ARGUMENT for NULL logits, rng or token; n_vocab 0
 * or above INT32_MAX; recent NULL with n_recent > 0, or an id in recent
 * outside [0, n_vocab); an unknown p->size or non-zero reserved field;
 * temperature NaN, negative or infinite; top_p NaN; min_p NaN or above 1;
 * repeat_penalty NaN, infinite or <= 0; n_vocab_valid negative or above
 * n_vocab; no candidate at all (every logit NaN or -inf). BM_ERR_OUT_OF_MEMORY
 * if scratch memory (needed for large top_k or many recent ids) cannot be
 * had. Never prints; no shared mutable state, so it is thread-safe. */
BM_API bm_status bm_sample(const float *logits, size_t n_vocab, const bm_sampler_params *p, uint64_t *rng,
                           const int32_t *recent, size_t n_recent, int32_t *token);

/* ------------------------------------------------------------------------ */
/* Tokenizer                                                                */
/* ------------------------------------------------------------------------ */

/* Load a Hugging Face tokenizer.json of the byte-level BPE kind (the GPT-NeoX
 * tokenizer of BlackMamba). Free with bm_tokenizer_free. Errors:
 * BM_ERR_INVALID_ARGUMENT, BM_ERR_IO, BM_ERR_FORMAT, BM_ERR_UNSUPPORTED (a
 * tokenizer.json of another kind), BM_ERR_OUT_OF_MEMORY. Thread-safe. */
BM_API bm_status bm_tokenizer_load(const char *tokenizer_json_path, bm_tokenizer **out);
/* NULL is a no-op. */
BM_API void bm_tokenizer_free(bm_tokenizer *t);

/* Encode `len` bytes of UTF-8 `text` into token ids. With ids == NULL,
 * *n_ids receives the count needed. With a buffer too small, *n_ids receives
 * the count needed and BM_ERR_BUFFER_TOO_SMALL is returned. Invalid UTF-8 is
 * BM_ERR_INVALID_ARGUMENT. No BOS is added. Thread-safe. */
BM_API bm_status bm_tokenize(const bm_tokenizer *t, const char *text, size_t len, int32_t *ids, size_t cap,
                             size_t *n_ids);
/* Decode ids to UTF-8 bytes (not NUL-terminated). With buf == NULL, *len
 * receives the bytes needed; too small a buffer is BM_ERR_BUFFER_TOO_SMALL
 * with *len the size needed. Ids outside the vocabulary are
 * BM_ERR_INVALID_ARGUMENT. Thread-safe. */
BM_API bm_status bm_detokenize(const bm_tokenizer *t, const int32_t *ids, size_t n, char *buf, size_t cap,
                               size_t *len);

#ifdef __cplusplus
}
#endif

#endif /* BLACKMAMBA_H */
