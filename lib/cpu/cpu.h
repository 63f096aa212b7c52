/* The CPU backend's session context and forward pass. */
#ifndef BM_CPU_H
#define BM_CPU_H

#include "kernels.h"
#include "model.h"
#include "pool.h"

/* Rows of one stream per forward call: a longer prompt runs in chunks (512
 * measured no faster than 256 for a 512-token 2.8B prefill). */
#ifndef BMI_CPU_MAX_SEQ_ROWS
#define BMI_CPU_MAX_SEQ_ROWS 256
#endif
/* Rows (tokens of all streams) per forward call. */
#define BMI_CPU_MAX_ROWS 256

/* Activations for up to `rows` packed token rows. */
typedef struct bmi_cpu_scratch {
    int rows;
    float *mem;
    int *ints;
    float *xpack;      /* packed rows of a matrix product's input (kernels.h) */
    float *residual;   /* [rows, d] the fp32 residual stream */
    float *hidden;     /* [rows, d] the last block's output */
    float *normed;     /* [rows, d] RMSNorm(residual); later the final LayerNorm */
    float *normed_moe; /* [rows, d] RMSNorm(residual; norm_moe) of parallel layers */
    float *mlp_out;    /* [rows, d] rows gathered for one expert */
    float *expert_out; /* [rows, d] one expert's output rows */
    float *xz;         /* [rows, 2*di] in_proj output: x then z */
    float *u;          /* [rows, di] SiLU(conv(x)) */
    float *delta;      /* [rows, di] dt_proj output, before softplus */
    float *y;          /* [rows, di] scan output gated by SiLU(z) */
    float *xdbl;       /* [rows, R + 2N] x_proj output: dt, B, C */
    float *act;        /* [rows, g*F] fc1 output; the gate writes its F outputs over the first F */
    float *router;     /* [rows, E] router logits */
    int *expert_of;    /* [rows] chosen expert */
    int *order;        /* [rows] rows sorted by expert */
    int *expert_start; /* [E + 1] first sorted row of each expert */
} bmi_cpu_scratch;

typedef struct bmi_cpu_ctx {
    const bmi_cpu_path *path; /* the kernels this session runs (kernels.h) */
    bmi_pool *pool;
    bmi_cpu_scratch scratch;
} bmi_cpu_ctx;

/* A packed batch: rows seq_start[s] .. seq_start[s+1]-1 advance states[s]
 * (canonical layout). */
typedef struct bmi_cpu_batch {
    int n_seq;
    const int *seq_start; /* [n_seq + 1] */
    float *const *states; /* [n_seq] */
} bmi_cpu_batch;

bm_status bmi_cpu_scratch_reserve(bmi_cpu_scratch *s, const bmi_config *c, int rows);
void bmi_cpu_scratch_free(bmi_cpu_scratch *s);

/* Run the batch through every layer, then the final norm and LM head for the
 * rows listed in logit_rows, writing n_logit_rows * vocab floats. */
void bmi_cpu_forward(bmi_cpu_ctx *ctx, const bm_model *m, const bmi_cpu_batch *b, const int32_t *tokens,
                     const int *logit_rows, int n_logit_rows, float *logits);

#endif
