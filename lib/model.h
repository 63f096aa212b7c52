/* The model as the library holds it: configuration, weights, and the objects
 * of the public API (bm_model, bm_state, bm_session). Shared by the host code
 * and every backend. */
#ifndef BM_MODEL_H
#define BM_MODEL_H

#include "backend.h"
#include "common.h"
#include "tensor.h"

#define BMI_MAX_LAYERS 1024
#define BMI_MAX_EXPERTS 64

/* ---- configuration (config.json) ---------------------------------------- */

typedef struct bmi_layer_config {
    int has_mamba;   /* "r", "rN", "r1" */
    int n_experts;   /* 0: no MLP; 1: dense MLP ("1", "r1"); N >= 2: MoE with N experts */
} bmi_layer_config;

typedef struct bmi_config {
    int n_layers;
    int d_model;        /* d */
    int d_state;        /* N */
    int d_conv;         /* K */
    int expand;         /* expansion_factor */
    int d_inner;        /* di = expand * d */
    int dt_rank;        /* R = ceil(d / 16) */
    int ffn_hidden;     /* F */
    int vocab_size;     /* V: rows of the embedding and of the logits */
    int add_bias_linear;
    int swiglu;         /* fc1 has 2F rows, gated */
    bm_activation activation;
    int max_seq;        /* informational */
    bmi_layer_config *layers; /* [n_layers] */
    char *layer_kinds;  /* "r,8,r,8" as in the file */
} bmi_config;

/* Parse config.json text (JSON is valid YAML; read with libyaml). Fills `out`
 * (free with bmi_config_free). BM_ERR_FORMAT names the key on any problem. */
bm_status bmi_config_parse(const char *text, size_t len, bmi_config *out);
bm_status bmi_config_read(const char *path, bmi_config *out);
void bmi_config_free(bmi_config *c);
/* Fill the derived fields (d_inner, dt_rank) and check every dimension is in
 * a sane range. */
bm_status bmi_config_validate(bmi_config *c);

/* ---- weights ------------------------------------------------------------- */

/* A row-major [rows, cols] matrix in its stored type, used in place. */
typedef struct bmi_matrix {
    const void *data;
    bmi_dtype dtype;   /* BMI_F32, BMI_BF16 or BMI_F16 */
    int rows, cols;
} bmi_matrix;

typedef struct bmi_mamba_weights {
    bmi_matrix in_proj;       /* [2*di, d] */
    const float *in_proj_bias;/* [2*di] or NULL */
    const float *conv_w;      /* [di, K] */
    const float *conv_b;      /* [di] */
    bmi_matrix x_proj;        /* [R + 2N, di] */
    bmi_matrix dt_proj;       /* [di, R] */
    const float *dt_bias;     /* [di] */
    const float *A;           /* [di, N]: -exp(A_log), precomputed */
    const float *D;           /* [di] */
    bmi_matrix out_proj;      /* [d, di] */
    const float *out_proj_bias; /* [d] or NULL */
} bmi_mamba_weights;

typedef struct bmi_mlp_weights {
    bmi_matrix fc1;           /* [g*F, d], g = 2 with swiglu */
    const float *fc1_bias;    /* [g*F] or NULL */
    bmi_matrix fc2;           /* [d, F] */
    const float *fc2_bias;    /* [d] or NULL */
} bmi_mlp_weights;

typedef struct bmi_layer_weights {
    const float *norm;        /* [d] RMSNorm before the block (or the Mamba branch) */
    const float *norm_moe;    /* [d] RMSNorm of the parallel MLP branch, or NULL */
    bmi_mamba_weights mamba;  /* valid when config.layers[i].has_mamba */
    bmi_matrix router;        /* [E, d] when n_experts >= 2 */
    const float *router_bias; /* [E] */
    bmi_mlp_weights *experts; /* [n_experts] (one for a dense MLP) */
} bmi_layer_weights;

typedef struct bmi_weights {
    bmi_matrix embedding;     /* [V, d] */
    bmi_matrix lm_head;       /* [V, d]: the embedding (tied) unless output_layer.weight exists */
    const float *lm_head_bias;/* [V] or NULL */
    const float *final_norm_w;/* [d] LayerNorm */
    const float *final_norm_b;/* [d] */
    bmi_layer_weights *layers;/* [n_layers] */
} bmi_weights;

/* ---- public objects ------------------------------------------------------ */

struct bm_model {
    bmi_config config;
    bmi_weights weights;
    bmi_tensor_table table;   /* keeps the file mapped while weights point into it */
    void **owned;             /* host buffers made at load (f32 copies of small vectors, ...) */
    size_t n_owned, cap_owned;
    const bmi_backend *backend;
    void *backend_ctx;        /* the backend's model data (device weights, ...) */
    bm_tokenizer *tokenizer;  /* tokenizer.json found beside the weights, or NULL */
    int32_t n_threads;
    uint64_t fingerprint;     /* of configuration and weights: saved states carry it */
    uint64_t n_params, n_active_params, weight_bytes;
    int weight_dtype;
    size_t state_floats;      /* floats in one stream's state, canonical layout */
    int n_mamba_layers;
};

/* One stream. The backend owns `data`; its canonical host layout (used by
 * save/load and for hand-over between backends) is, for each Mamba layer in
 * order: conv [di, K-1] (oldest first), then ssm [di, N]. */
struct bm_state {
    const bm_model *model;
    uint64_t n_tokens;
    void *data;
};

struct bm_session {
    const bm_model *model;
    int32_t n_threads;
    bm_cancel_fn cancel;
    void *cancel_data;
    void *backend_ctx;        /* scratch, thread pool, stream, graphs */
    float *host_logits;       /* [host_logits_rows, vocab] for host-side sampling */
    size_t host_logits_rows;
};

/* Make a model from a parsed configuration and a tensor table (both moved
 * into the model, also on failure, which frees them): binds and checks every
 * tensor, then initialises the backend `p` asks for. Used by bm_model_load
 * and by tools that build random-weight models in memory. `p` is checked by
 * the caller. */
bm_status bmi_model_create(bmi_config *config, bmi_tensor_table *table, const bm_model_params *p, bm_model **out);
bm_status bmi_model_bind_weights(bm_model *m);
/* Register a host buffer the model frees on destruction. */
bm_status bmi_model_own(bm_model *m, void *p);

/* Canonical state offsets: conv state of Mamba layer index `mi` (0-based
 * among Mamba layers) and its ssm state, in floats from the start. */
static inline size_t bmi_state_conv_offset(const bmi_config *c, int mi) {
    return (size_t)mi * (size_t)c->d_inner * (size_t)(c->d_conv - 1 + c->d_state);
}
static inline size_t bmi_state_ssm_offset(const bmi_config *c, int mi) {
    return bmi_state_conv_offset(c, mi) + (size_t)c->d_inner * (size_t)(c->d_conv - 1);
}

#endif
