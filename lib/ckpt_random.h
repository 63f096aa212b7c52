/* Random-weight BlackMamba checkpoints at any dimensions, in the published
 * layout (SPEC.md: tensor names, shapes, order, config.json). They let the
 * README run end to end without downloading 3-6 GB, and let tests and
 * benchmarks try configurations no fixture covers (parallel "rN" layers,
 * dense "1" layers, biases, f16, released sizes).
 *
 * Values are deterministic in (seed, tensor name, element index) and chosen
 * so a forward pass stays well scaled at any depth: every block sees an
 * RMS-normalised input, so weights get std ~ 1/sqrt(fan_in), the Mamba
 * parameters follow the reference initialisation (A = -(1..N), dt in
 * [1e-3, 1e-1]), and every parameter, biases and norms included, is moved
 * away from its trivial value so a weight that is ignored shows up.
 * Elements are generated independently of each other, so a tensor can be
 * produced a chunk at a time (see bmi_tensor_source) and written straight to
 * disk. Internal API. */
#ifndef BM_CKPT_RANDOM_H
#define BM_CKPT_RANDOM_H

#include "ckpt_write.h"

#define BMI_RANDOM_MAX_LAYERS 1024

/* One entry of "mamba_moe_layers": "r" {1,0}, "N" {0,N}, "1" {0,1},
 * "rN" {1,N}, "r1" {1,1}. */
typedef struct bmi_random_layer {
    uint8_t mamba; /* has a Mamba mixer */
    uint8_t mlp;   /* 0: none, 1: dense MLP, 2..9: MoE with that many experts */
} bmi_random_layer;

typedef struct bmi_random_config {
    int64_t d_model, d_state, d_conv, expand, ffn_hidden, vocab;
    int n_layers;
    /* 0: write "mamba_moe_layers": [], which SPEC reads as every layer "r";
     * layers[] must then all be {1,0}. */
    int list_layers;
    bmi_random_layer layers[BMI_RANDOM_MAX_LAYERS];
    int add_bias_linear, swiglu;
    bmi_dtype dtype; /* BMI_F32, BMI_BF16 or BMI_F16 */
    uint64_t seed;
} bmi_random_config;

/* Fills *c with a named configuration: "tiny" (d 64, r,4,r,4, ffn 96,
 * vocab 512), "1.5B" or "2.8B" (the released dimensions). dtype bf16,
 * seed 1. BM_ERR_INVALID_ARGUMENT for an unknown name. */
bm_status bmi_random_config_preset(bmi_random_config *c, const char *name);

/* Replaces the layer list with comma-separated codes ("r,8,r,8"; spaces are
 * ignored). An empty string keeps n_layers and makes every layer "r" with an
 * empty list in config.json. */
bm_status bmi_random_parse_layers(bmi_random_config *c, const char *codes);

/* BM_OK when the configuration can be generated; otherwise
 * BM_ERR_INVALID_ARGUMENT naming the bad field. */
bm_status bmi_random_config_check(const bmi_random_config *c);

/* dt_rank R = ceil(d_model / 16), as the released code derives it. */
int64_t bmi_random_dt_rank(const bmi_random_config *c);

/* How one tensor's values are drawn (private to ckpt_random.c). */
typedef struct bmi_random_init bmi_random_init;

/* The tensor list of a configuration: names, dtypes and shapes in SPEC
 * order (data NULL), plus how to generate each one. */
typedef struct bmi_random_model {
    bmi_tensor *tensors;
    size_t count;
    bmi_random_init *init;
    uint64_t n_params;
} bmi_random_model;

bm_status bmi_random_model_spec(const bmi_random_config *c, bmi_random_model *out);
void bmi_random_model_free(bmi_random_model *m); /* NULL-safe; zeroes *m */

/* A bmi_tensor_fill_fn over a bmi_random_model (ctx). */
bm_status bmi_random_fill(void *ctx, size_t index, uint64_t first, uint64_t count, void *dst);
/* {bmi_random_fill, m}, ready for the *_from writers. */
bmi_tensor_source bmi_random_source(const bmi_random_model *m);

/* config.json text in the published key order and spacing, with a final
 * newline. *json is allocated with bmi_malloc; free with bmi_free. */
bm_status bmi_random_config_json(const bmi_random_config *c, char **json);

#define BMI_FORMAT_TORCH 1u       /* pytorch_model.bin */
#define BMI_FORMAT_SAFETENSORS 2u /* model.safetensors */

/* Writes dir/config.json and the weight files `formats` asks for, creating
 * dir if it does not exist (its parent must). */
bm_status bmi_write_random_model(const char *dir, const bmi_random_config *c, unsigned formats);

#endif
