/* C helpers of the Go package: callback trampolines, and functions of the
 * library resolved at run time (dlsym), so that the package builds and runs
 * against a libblackmamba that does not export them yet; a missing function
 * makes its wrapper return BMGO_MISSING. */
#ifndef BMGO_SHIM_H
#define BMGO_SHIM_H

#include <stdint.h>
#include <stdlib.h>

#include <blackmamba.h>

#define BMGO_MISSING (-1000)

int bmgo_has(const char *name);

bm_status bmgo_session_new(const bm_model *m, int32_t n_threads, uintptr_t cancel_handle, bm_session **out);

const bm_tokenizer *bmgo_model_tokenizer(const bm_model *m, int *missing);

bm_status bmgo_prefill_batch(bm_session *s, bm_state *const *states, const int32_t *const *tokens,
                             const size_t *n_tokens, size_t n_streams, float *logits);
bm_status bmgo_step_batch_sample(bm_session *s, bm_state *const *states, const int32_t *tokens, size_t n,
                                 const bm_sampler_params *p, uint64_t *rngs, int32_t *out_tokens);

bm_status bmgo_tokenizer_load(const char *path, bm_tokenizer **out);
void bmgo_tokenizer_free(bm_tokenizer *t);
bm_status bmgo_tokenize(const bm_tokenizer *t, const char *text, size_t len, int32_t *ids, size_t cap,
                        size_t *n_ids);
bm_status bmgo_detokenize(const bm_tokenizer *t, const int32_t *ids, size_t n, char *buf, size_t cap,
                          size_t *len);
int32_t bmgo_tokenizer_vocab_size(const bm_tokenizer *t);
int32_t bmgo_tokenizer_eos(const bm_tokenizer *t);
int bmgo_tokenizer_is_special(const bm_tokenizer *t, int32_t id);
int32_t bmgo_tokenizer_token_to_id(const bm_tokenizer *t, const char *token, size_t len);
bm_status bmgo_tokenizer_id_to_piece(const bm_tokenizer *t, int32_t id, const char **piece, size_t *len);
size_t bmgo_tokenizer_max_token_bytes(const bm_tokenizer *t);
bm_status bmgo_detokenizer_new(const bm_tokenizer *t, bm_detokenizer **out);
void bmgo_detokenizer_free(bm_detokenizer *d);
bm_status bmgo_detokenizer_push(bm_detokenizer *d, int32_t id, char *buf, size_t cap, size_t *len);
bm_status bmgo_detokenizer_flush(bm_detokenizer *d, char *buf, size_t cap, size_t *len);
void bmgo_detokenizer_reset(bm_detokenizer *d);

/* bm_generate_params_init; returns BMGO_MISSING (p untouched) if absent. */
bm_status bmgo_generate_params_init(bm_generate_params *p);
/* bm_generate / bm_generate_ids with on_piece set to the Go callback of
 * `piece_handle` (0: no callback). */
bm_status bmgo_generate(bm_session *s, bm_state *st, const bm_tokenizer *tok, const char *prompt, size_t len,
                        bm_generate_params *p, uint64_t *rng, bm_generate_result *out, uintptr_t piece_handle);
bm_status bmgo_generate_ids(bm_session *s, bm_state *st, const bm_tokenizer *tok, const int32_t *prompt, size_t n,
                            bm_generate_params *p, uint64_t *rng, bm_generate_result *out, uintptr_t piece_handle);

#endif
