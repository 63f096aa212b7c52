/* The one internal interface every backend fills (lib/cpu/, cuda/). The host
 * side (model.c, state.c, session.c) validates every argument before it calls
 * a backend, so backends may assume: tokens are in range, states belong to
 * the session's model, pointers are not NULL where required, n >= 1.
 * A backend reports an operation it cannot do with BM_ERR_UNSUPPORTED (a NULL
 * entry means the same); it never aborts. */
#ifndef BM_BACKEND_H
#define BM_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "blackmamba.h"

typedef struct bmi_backend {
    const char *name;
    bm_backend kind;

    /* Prepare the model for this backend (upload weights, ...); may set
     * m->backend_ctx. On failure everything made is released. */
    bm_status (*model_init)(bm_model *m, const bm_model_params *p);
    void (*model_release)(bm_model *m);

    /* States: `data` of a bm_state. alloc returns a zero state. */
    bm_status (*state_alloc)(const bm_model *m, void **data);
    void (*state_free)(const bm_model *m, void *data);
    bm_status (*state_zero)(const bm_model *m, void *data);
    bm_status (*state_copy)(const bm_model *m, void *dst, const void *src);
    /* Copy to / from the canonical host layout (model.h), m->state_floats floats. */
    bm_status (*state_download)(const bm_model *m, const void *data, float *host);
    bm_status (*state_upload)(const bm_model *m, void *data, const float *host);

    bm_status (*session_init)(bm_session *s);
    void (*session_release)(bm_session *s);

    /* Run `n` tokens of one stream. `logits`: NULL; vocab floats for the last
     * position (all_positions 0); or n * vocab floats (all_positions 1).
     * On error the state must be unchanged. */
    bm_status (*prefill)(bm_session *s, bm_state *st, const int32_t *tokens, size_t n, float *logits,
                         int all_positions);
    /* One token for each of n distinct states; logits NULL or n * vocab. */
    bm_status (*step_batch)(bm_session *s, bm_state *const *states, const int32_t *tokens, size_t n,
                            float *logits);
    /* Optional (NULL: the host prefills the streams one by one). Several
     * streams' prompts packed in one pass; logits NULL or n * vocab (the last
     * position of each). May stop between chunks for cancellation, leaving
     * each state advanced by whole chunks and n_tokens updated. */
    bm_status (*prefill_batch)(bm_session *s, bm_state *const *states, const int32_t *const *tokens,
                               const size_t *n_tokens, size_t n, float *logits);
    /* Optional (NULL: the host runs step_batch to host logits, then
     * bm_sample). Steps and samples without the logits leaving the backend;
     * p is validated, repeat_penalty is 1. */
    bm_status (*step_batch_sample)(bm_session *s, bm_state *const *states, const int32_t *tokens, size_t n,
                                   const bm_sampler_params *p, uint64_t *rngs, int32_t *out_tokens);
} bmi_backend;

extern const bmi_backend bmi_cpu_backend;
#ifdef BM_WITH_CUDA
extern const bmi_backend bmi_cuda_backend;
#endif

#endif
