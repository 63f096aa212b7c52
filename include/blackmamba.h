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
 * Threads: a bm_model and a bm_tokenizer (also the one bm_model_tokenizer
 * returns) are immutable after loading and may be used from any number of
 * threads at once. A bm_session, a bm_state and a bm_detokenizer are used by
 * one thread at a time (use one session per thread; a state may move between
 * threads and sessions of the same model, but is never touched by two calls
 * at once, and every state of a batch call counts as touched by it). Freeing
 * an object must not overlap any other use of it, and a model or tokenizer
 * is freed only after every session, state and detokenizer made from it.
 * bm_sample, bm_version, bm_status_string and the `_params_init` functions
 * are pure and thread-safe. The error message (bm_last_error) is per thread.
 * A cancel callback and a piece callback run on the thread that made the call.
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
typedef struct bm_sampler_params bm_sampler_params; /* defined under Sampling */

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

/* The tokenizer found beside the weights (tokenizer.json in the model
 * directory) when the model was loaded, or NULL if there was none. Owned by
 * the model: valid until bm_model_free, never freed by the caller. When a
 * model has a tokenizer, bm_generate never samples logit rows past its
 * vocabulary. Thread-safe. */
BM_API const bm_tokenizer *bm_model_tokenizer(const bm_model *m);

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
 * polled on the thread that made the call: before any work of every run call
 * (which then returns BM_ERR_CANCELLED with every state untouched) and
 * between the chunks of a long prefill. A prefill cancelled between chunks
 * returns BM_ERR_CANCELLED with each state consistently advanced: it has
 * consumed a prefix of its tokens (whole chunks), and bm_state_n_tokens says
 * how many. Nothing else is ever half done. */
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
 * state is unchanged, except that a prefill cancelled between chunks keeps
 * the chunks it finished (see bm_cancel_fn). */
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

/* Feed several streams their own prompts in one call: states[i] consumes
 * n_tokens[i] >= 1 tokens from tokens[i]. The prompts are packed (no padding
 * work); each state ends as a bm_prefill of its prompt alone would leave it,
 * to rounding (the same arithmetic, grouped into other matrix tiles, so the
 * last bits may differ). `logits` is NULL or receives n_streams * vocab_size floats: row i
 * is the logits after the last token of stream i. States must be distinct.
 * Errors as bm_prefill; validation failures change no state. */
BM_API bm_status bm_prefill_batch(bm_session *s, bm_state *const *states, const int32_t *const *tokens,
                                  const size_t *n_tokens, size_t n_streams, float *logits);
/* Advance n distinct streams by one token each (as bm_step_batch) and sample
 * the next token of each from its new logits with bm_sample semantics:
 * out_tokens[i] is drawn with generator state rngs[i] (advanced by one draw),
 * so a stream gives the same tokens whatever batch it runs in and on either
 * backend. The sampled tokens are not fed yet: pass them as `tokens` of the
 * next call. The logits never leave the device on the CUDA backend. The
 * repetition penalty needs each stream's recent tokens and is not applied
 * here: p->repeat_penalty must be 1 (else BM_ERR_INVALID_ARGUMENT); use
 * bm_step_batch and bm_sample for it. `p` may be NULL for greedy. */
BM_API bm_status bm_step_batch_sample(bm_session *s, bm_state *const *states, const int32_t *tokens, size_t n,
                                      const bm_sampler_params *p, uint64_t *rngs, int32_t *out_tokens);

/* ------------------------------------------------------------------------ */
/* Sampling                                                                 */
/* ------------------------------------------------------------------------ */

struct bm_sampler_params {
    uint32_t size;         /* sizeof(bm_sampler_params), set by bm_sampler_params_init */
    float temperature;     /* 0 = greedy (argmax, lowest id on ties); finite, >= 0; default 0.8 */
    int32_t top_k;         /* keep the k most likely tokens (lower id first on ties); <= 0 = off; default 40 */
    float top_p;           /* keep the smallest set whose probability reaches p; >= 1 = off; default 0.95 */
    float min_p;           /* drop tokens below min_p * p(most likely); <= 0 = off; at most 1; default 0.05 */
    float repeat_penalty;  /* divide positive / multiply negative logits of recent tokens; 1 = off;
                              finite, > 0; default 1.1 */
    int32_t n_vocab_valid; /* only ids < this are sampled; 0 (default) = all of n_vocab */
    uint32_t reserved[8];  /* must be zero */
};

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
 * tokenizer of BlackMamba): model "BPE" with vocab and merges, an NFC (or no)
 * normalizer, the ByteLevel pre-tokenizer without prefix space, the ByteLevel
 * decoder, and added tokens (matched before anything else). Free with
 * bm_tokenizer_free. Errors: BM_ERR_INVALID_ARGUMENT, BM_ERR_IO,
 * BM_ERR_FORMAT, BM_ERR_UNSUPPORTED (a tokenizer.json of another kind, or
 * options this library does not implement, e.g. BPE dropout or added tokens
 * with lstrip/rstrip/single_word; the message names it),
 * BM_ERR_OUT_OF_MEMORY. Thread-safe. */
BM_API bm_status bm_tokenizer_load(const char *tokenizer_json_path, bm_tokenizer **out);
/* NULL is a no-op. Every bm_detokenizer made from `t` must be freed first. */
BM_API void bm_tokenizer_free(bm_tokenizer *t);

/* Encode `len` bytes of UTF-8 `text` into token ids, as the Hugging Face
 * tokenizers library does for the same tokenizer.json: added tokens are
 * matched first (leftmost, longest), the text between them is normalized
 * (NFC), split by the GPT-2 pattern and BPE-encoded. `text` may be NULL when
 * len is 0. With ids == NULL, *n_ids receives the count needed and BM_OK is
 * returned. With a buffer too small, *n_ids receives the count needed,
 * BM_ERR_BUFFER_TOO_SMALL is returned and ids holds the first `cap` ids.
 * Invalid UTF-8 (overlong forms, surrogates and code points above U+10FFFF
 * included) is BM_ERR_INVALID_ARGUMENT with a message giving the byte offset
 * of the first bad byte. No BOS is added. On other failures the contents of
 * ids are unspecified. Thread-safe. */
BM_API bm_status bm_tokenize(const bm_tokenizer *t, const char *text, size_t len, int32_t *ids, size_t cap,
                             size_t *n_ids);
/* Decode ids to UTF-8 bytes (not NUL-terminated). Added and special tokens
 * decode to their text ("<|endoftext|>" included: skip ids you do not want
 * shown, see bm_tokenizer_is_special). The output is always valid UTF-8:
 * bytes that do not form a character (ids cut in the middle of one, or a
 * sequence no text encodes to) become U+FFFD, one for each maximal invalid
 * subpart as the Unicode standard recommends, like Hugging Face's decode.
 * With buf == NULL, *len receives the bytes needed; too small a buffer is
 * BM_ERR_BUFFER_TOO_SMALL with *len the size needed and buf untouched. Ids
 * outside [0, bm_tokenizer_vocab_size) are BM_ERR_INVALID_ARGUMENT.
 * Thread-safe. */
BM_API bm_status bm_detokenize(const bm_tokenizer *t, const int32_t *ids, size_t n, char *buf, size_t cap,
                               size_t *len);

/* Number of token ids, added tokens included: one more than the largest id
 * (50277 for the BlackMamba tokenizer; the model pads its logit rows beyond
 * this). 0 for NULL. Thread-safe. */
BM_API int32_t bm_tokenizer_vocab_size(const bm_tokenizer *t);
/* The id of the end-of-text token "<|endoftext|>" (0 for BlackMamba), or -1
 * when the tokenizer has none or t is NULL. Thread-safe. */
BM_API int32_t bm_tokenizer_eos(const bm_tokenizer *t);
/* 1 if `id` is a special added token (such as <|endoftext|> or <|padding|>),
 * 0 otherwise (also for ids out of range and NULL). Thread-safe. */
BM_API int bm_tokenizer_is_special(const bm_tokenizer *t, int32_t id);
/* The id of a token given as tokenizer.json spells it: the vocabulary's
 * byte-level form for BPE tokens (" the" is the UTF-8 of U+0120 followed by
 * "the") or the content of an added token ("<|endoftext|>"). `token` is
 * `len` bytes of UTF-8, not necessarily NUL-terminated. Returns -1 when
 * there is no such token or an argument is NULL. Thread-safe. */
BM_API int32_t bm_tokenizer_token_to_id(const bm_tokenizer *t, const char *token, size_t len);
/* The bytes token `id` decodes to, which may be part of a UTF-8 character.
 * *piece points into the tokenizer (valid until bm_tokenizer_free, not
 * NUL-terminated) and *len receives its length. Errors:
 * BM_ERR_INVALID_ARGUMENT (NULL, id out of range). Thread-safe. */
BM_API bm_status bm_tokenizer_id_to_piece(const bm_tokenizer *t, int32_t id, const char **piece, size_t *len);
/* The most bytes any one id decodes to. 0 for NULL. Thread-safe. */
BM_API size_t bm_tokenizer_max_token_bytes(const bm_tokenizer *t);

/* Streaming decoding: a bm_detokenizer turns ids into text one at a time
 * (as a model generates them) and emits only whole UTF-8 characters, holding
 * back the bytes of a character that a later token completes. Feeding ids
 * with bm_detokenizer_push and ending with bm_detokenizer_flush writes,
 * concatenated, exactly what bm_detokenize writes for the same ids.
 * A detokenizer is used by one thread at a time; it reads its tokenizer,
 * which must outlive it and may be shared by any number of detokenizers. */
typedef struct bm_detokenizer bm_detokenizer;

/* Make a detokenizer for `t`, holding nothing. On success *out receives a
 * detokenizer the caller frees with bm_detokenizer_free. Errors:
 * BM_ERR_INVALID_ARGUMENT (NULL), BM_ERR_OUT_OF_MEMORY. */
BM_API bm_status bm_detokenizer_new(const bm_tokenizer *t, bm_detokenizer **out);
/* NULL is a no-op. */
BM_API void bm_detokenizer_free(bm_detokenizer *d);
/* Feed one id. `buf` receives the bytes (not NUL-terminated) of every
 * character completed and not yet emitted, *len their count, which may be 0
 * while a character is incomplete. Bytes that can no longer become a valid
 * character are emitted at once as U+FFFD. With buf == NULL, *len receives
 * the bytes this push would write and the detokenizer does not change; with
 * too small a buffer, BM_ERR_BUFFER_TOO_SMALL with *len the size needed and
 * the detokenizer unchanged (push the same id again with a larger buffer). A
 * buffer of 3 * (bm_tokenizer_max_token_bytes(t) + 3) bytes is always
 * enough. Errors: BM_ERR_INVALID_ARGUMENT (NULL d or len, id out of range;
 * the detokenizer is unchanged), BM_ERR_BUFFER_TOO_SMALL. */
BM_API bm_status bm_detokenizer_push(bm_detokenizer *d, int32_t id, char *buf, size_t cap, size_t *len);
/* End the stream: emit what is held. Held bytes are the start of a character
 * that never completed, so they are written as one U+FFFD (3 bytes); *len is
 * 0 or 3. The detokenizer is then empty, as after bm_detokenizer_reset. With
 * buf == NULL, *len receives the size and nothing changes; too small a buffer
 * is BM_ERR_BUFFER_TOO_SMALL with nothing changed. */
BM_API bm_status bm_detokenizer_flush(bm_detokenizer *d, char *buf, size_t cap, size_t *len);
/* Drop any held bytes and start a new stream. NULL is a no-op. */
BM_API void bm_detokenizer_reset(bm_detokenizer *d);

/* ------------------------------------------------------------------------ */
/* Generation                                                               */
/* ------------------------------------------------------------------------ */

typedef enum bm_stop_reason {
    BM_STOP_NONE = 0,        /* not stopped (only seen in a result of a failed call) */
    BM_STOP_EOS = 1,         /* the end-of-text token was sampled */
    BM_STOP_STRING = 2,      /* one of the caller's stop strings appeared */
    BM_STOP_MAX_TOKENS = 3,  /* max_tokens were generated */
    BM_STOP_CALLBACK = 4     /* the piece callback returned non-zero */
} bm_stop_reason;

/* Receives each new piece of generated text: `len` bytes of complete UTF-8
 * characters (not NUL-terminated; valid only during the call) and the id of
 * the token that completed it. Return 0 to go on, non-zero to stop. */
typedef int (*bm_piece_fn)(const char *piece, size_t len, int32_t token, void *user_data);

typedef struct bm_generate_params {
    uint32_t size;                   /* sizeof(bm_generate_params), set by bm_generate_params_init */
    bm_sampler_params sampler;       /* initialised by bm_generate_params_init */
    int32_t max_tokens;              /* most tokens to generate; default 256 */
    int32_t repeat_window;           /* recent tokens (prompt and output) the repetition penalty sees; default 64 */
    const char *const *stop_strings; /* NUL-terminated strings; generation stops before emitting any of them */
    size_t n_stop_strings;
    bm_piece_fn on_piece;            /* may be NULL */
    void *user_data;
    uint32_t reserved[8];            /* must be zero */
} bm_generate_params;

typedef struct bm_generate_result {
    uint32_t size;             /* caller sets sizeof(bm_generate_result) */
    bm_stop_reason stop;
    int32_t n_prompt_tokens;   /* tokens the prompt encoded to */
    int32_t n_generated;       /* tokens sampled (the stopping one included) */
    double prompt_seconds;     /* wall time of the prompt's prefill */
    double generate_seconds;   /* wall time from the first sample to the end */
    uint32_t reserved[8];
} bm_generate_result;

/* Fill `p` with the defaults and set p->size. NULL is a no-op. */
BM_API void bm_generate_params_init(bm_generate_params *p);

/* Feed `prompt` (len bytes of UTF-8, encoded with `tok`) to state `st`, then
 * sample tokens one at a time, stream them to p->on_piece as text, and feed
 * each to the state, until the end-of-text token, a stop string, max_tokens
 * or the callback says stop. Every sampled token is fed to the state (the
 * stopping one too), so the state has seen the prompt and everything
 * generated, and the next call continues the conversation with its own
 * prompt. Text of a stop string is never passed to the callback; text that
 * could still become a stop string is held back until it cannot. Logit rows
 * at or past bm_tokenizer_vocab_size(tok) are never sampled. `rng` is the
 * caller's generator state (see bm_sample), advanced once per token. The
 * prompt must encode to at least one token. `out` may be NULL; if not, its
 * size must be set. Errors: those of bm_tokenize, bm_prefill and bm_sample;
 * BM_ERR_CANCELLED from the session's cancel callback. A stop by the piece
 * callback is not an error (BM_STOP_CALLBACK). On an error after the prompt
 * was fed, the state has seen the prompt and the tokens reported in
 * out->n_generated. One thread at a time per session and state. */
BM_API bm_status bm_generate(bm_session *s, bm_state *st, const bm_tokenizer *tok, const char *prompt, size_t len,
                             const bm_generate_params *p, uint64_t *rng, bm_generate_result *out);
/* As bm_generate with the prompt given as token ids (n >= 1). */
BM_API bm_status bm_generate_ids(bm_session *s, bm_state *st, const bm_tokenizer *tok, const int32_t *prompt,
                                 size_t n, const bm_generate_params *p, uint64_t *rng, bm_generate_result *out);

#ifdef __cplusplus
}
#endif

#endif /* BLACKMAMBA_H */
