/* Random-weight checkpoints: see ckpt_random.h. */
#include "ckpt_random.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <sys/stat.h>

typedef enum init_kind {
    INIT_NORMAL,  /* mean + std * z */
    INIT_A_LOG,   /* log(1 + state index) + std * z: A = -(1..N) per channel */
    INIT_DT_BIAS, /* softplus^-1(dt), dt log-uniform in [1e-3, 1e-1] */
} init_kind;

struct bmi_random_init {
    init_kind kind;
    float mean, std;
    int64_t period; /* A_log: d_state */
    uint64_t key;   /* from (seed, name): element values never depend on order */
};

/* ---- configurations ----------------------------------------------------- */

static void set_alternating(bmi_random_config *c, int n_layers, uint8_t experts) {
    c->n_layers = n_layers;
    c->list_layers = 1;
    for (int i = 0; i < n_layers; i++) {
        c->layers[i].mamba = (i % 2) == 0;
        c->layers[i].mlp = (i % 2) ? experts : 0;
    }
}

bm_status bmi_random_config_preset(bmi_random_config *c, const char *name) {
    if (!c || !name) return bmi_fail(BM_ERR_INVALID_ARGUMENT, "no configuration or name");
    memset(c, 0, sizeof *c);
    c->d_state = 16;
    c->d_conv = 4;
    c->expand = 2;
    c->vocab = 50304;
    c->swiglu = 1;
    c->dtype = BMI_BF16;
    c->seed = 1;
    if (strcmp(name, "tiny") == 0) {
        c->d_model = 64;
        c->ffn_hidden = 96;
        c->vocab = 512;
        set_alternating(c, 4, 4);
    } else if (strcmp(name, "1.5B") == 0) {
        c->d_model = 1152;
        c->ffn_hidden = 3072;
        set_alternating(c, 30, 8);
    } else if (strcmp(name, "2.8B") == 0) {
        c->d_model = 1472;
        c->ffn_hidden = 3872;
        set_alternating(c, 36, 8);
    } else {
        return bmi_fail(BM_ERR_INVALID_ARGUMENT, "unknown dimensions \"%s\" (tiny, 1.5B, 2.8B)", name);
    }
    return BM_OK;
}

/* One code of the SPEC grammar: r, N (2..9), 1, rN, r1. */
static int parse_layer_code(const char *s, size_t len, bmi_random_layer *out) {
    out->mamba = 0;
    out->mlp = 0;
    if (len > 0 && s[0] == 'r') {
        out->mamba = 1;
        s++;
        len--;
        if (len == 0) return 1;
    }
    if (len != 1 || s[0] < '1' || s[0] > '9') return 0;
    out->mlp = (uint8_t)(s[0] - '0');
    return 1;
}

bm_status bmi_random_parse_layers(bmi_random_config *c, const char *codes) {
    if (!c || !codes) return bmi_fail(BM_ERR_INVALID_ARGUMENT, "no configuration or layer list");
    bmi_random_layer parsed[BMI_RANDOM_MAX_LAYERS];
    int n = 0;
    const char *p = codes;
    while (*p == ' ') p++;
    if (*p == '\0') {
        c->list_layers = 0;
        for (int i = 0; i < c->n_layers && i < BMI_RANDOM_MAX_LAYERS; i++)
            c->layers[i] = (bmi_random_layer){1, 0};
        return BM_OK;
    }
    for (;;) {
        while (*p == ' ') p++;
        const char *start = p;
        while (*p && *p != ',' && *p != ' ') p++;
        size_t len = (size_t)(p - start);
        while (*p == ' ') p++;
        if (n == BMI_RANDOM_MAX_LAYERS)
            return bmi_fail(BM_ERR_INVALID_ARGUMENT, "more than %d layers", BMI_RANDOM_MAX_LAYERS);
        if (!parse_layer_code(start, len, &parsed[n]))
            return bmi_fail(BM_ERR_INVALID_ARGUMENT,
                            "layer %d: \"%.*s\" is not a layer code (r, 2..9, 1, rN, r1)", n,
                            (int)len, start);
        n++;
        if (*p == '\0') break;
        if (*p != ',') return bmi_fail(BM_ERR_INVALID_ARGUMENT, "layer list: expected ',' after layer %d", n - 1);
        p++;
    }
    memcpy(c->layers, parsed, (size_t)n * sizeof *parsed);
    c->n_layers = n;
    c->list_layers = 1;
    return BM_OK;
}

int64_t bmi_random_dt_rank(const bmi_random_config *c) { return (c->d_model + 15) / 16; }

static bm_status check_dim(const char *what, int64_t v) {
    /* The cap keeps every product of two dimensions far from int64 overflow
     * while allowing far more than any real model uses. */
    if (v < 1 || v > ((int64_t)1 << 24))
        return bmi_fail(BM_ERR_INVALID_ARGUMENT, "%s must be in 1..%d, not %lld", what, 1 << 24, (long long)v);
    return BM_OK;
}

bm_status bmi_random_config_check(const bmi_random_config *c) {
    if (!c) return bmi_fail(BM_ERR_INVALID_ARGUMENT, "no configuration");
    bm_status st = check_dim("d_model", c->d_model);
    if (st == BM_OK) st = check_dim("d_state", c->d_state);
    if (st == BM_OK) st = check_dim("d_conv", c->d_conv);
    if (st == BM_OK) st = check_dim("expansion factor", c->expand);
    if (st == BM_OK) st = check_dim("ffn_hidden_size", c->ffn_hidden);
    if (st == BM_OK) st = check_dim("vocab_size", c->vocab);
    if (st == BM_OK) st = check_dim("d_inner", c->d_model * c->expand);
    if (st != BM_OK) return st;
    if (c->n_layers < 1 || c->n_layers > BMI_RANDOM_MAX_LAYERS)
        return bmi_fail(BM_ERR_INVALID_ARGUMENT, "num_layers must be in 1..%d", BMI_RANDOM_MAX_LAYERS);
    for (int i = 0; i < c->n_layers; i++) {
        const bmi_random_layer *l = &c->layers[i];
        if (l->mlp > 9 || (!l->mamba && l->mlp == 0))
            return bmi_fail(BM_ERR_INVALID_ARGUMENT, "layer %d has no block", i);
        if (!c->list_layers && (!l->mamba || l->mlp))
            return bmi_fail(BM_ERR_INVALID_ARGUMENT, "an empty layer list means every layer is \"r\"");
    }
    if (c->dtype != BMI_F32 && c->dtype != BMI_BF16 && c->dtype != BMI_F16)
        return bmi_fail(BM_ERR_INVALID_ARGUMENT, "weights must be f32, bf16 or f16, not %s",
                        bmi_dtype_name(c->dtype));
    return BM_OK;
}

/* ---- the tensor list ---------------------------------------------------- */

typedef struct spec_builder {
    bmi_random_model *m;
    size_t cap;
    const bmi_random_config *c;
    bm_status st;
} spec_builder;

static void add_tensor(spec_builder *b, bmi_random_init init, int ndim, const int64_t *shape,
                       const char *fmt, ...) BMI_PRINTF(5, 6);

static void add_tensor(spec_builder *b, bmi_random_init init, int ndim, const int64_t *shape,
                       const char *fmt, ...) {
    if (b->st != BM_OK) return;
    bmi_random_model *m = b->m;
    if (m->count == b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 64;
        bmi_tensor *t = bmi_realloc(m->tensors, cap * sizeof *t);
        if (t) m->tensors = t;
        bmi_random_init *in = t ? bmi_realloc(m->init, cap * sizeof *in) : NULL;
        if (in) m->init = in;
        if (!t || !in) {
            b->st = bmi_fail(BM_ERR_OUT_OF_MEMORY, "out of memory for the tensor list");
            return;
        }
        b->cap = cap;
    }
    char name[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);

    bmi_tensor *t = &m->tensors[m->count];
    memset(t, 0, sizeof *t);
    t->name = bmi_strdup(name);
    if (!t->name) {
        b->st = bmi_fail(BM_ERR_OUT_OF_MEMORY, "out of memory for a tensor name");
        return;
    }
    t->dtype = b->c->dtype;
    t->ndim = ndim;
    int64_t numel = 1;
    for (int d = ndim - 1; d >= 0; d--) {
        t->shape[d] = shape[d];
        t->stride[d] = numel;
        numel *= shape[d];
    }
    t->nbytes = (size_t)numel * bmi_dtype_size(t->dtype);
    init.key = bmi_hash64(b->c->seed, name, strlen(name));
    m->init[m->count] = init;
    m->n_params += (uint64_t)numel;
    m->count++;
}

static bmi_random_init normal(float mean, float std) {
    return (bmi_random_init){.kind = INIT_NORMAL, .mean = mean, .std = std};
}

/* Weights of a linear layer whose input has unit scale: output unit scale. */
static bmi_random_init fan_in(int64_t n) { return normal(0.0f, (float)(1.0 / sqrt((double)n))); }

#define SHAPE(...) (const int64_t[]){__VA_ARGS__}

/* Linear biases only exist with add_bias_linear; small but non-zero. */
static void add_linear(spec_builder *b, const char *prefix, int64_t out, int64_t in) {
    add_tensor(b, fan_in(in), 2, SHAPE(out, in), "%s.weight", prefix);
    if (b->c->add_bias_linear) add_tensor(b, normal(0.0f, 0.02f), 1, SHAPE(out), "%s.bias", prefix);
}

static void add_mamba(spec_builder *b, const char *p) {
    const bmi_random_config *c = b->c;
    int64_t d = c->d_model, di = c->d_model * c->expand, n = c->d_state, k = c->d_conv;
    int64_t r = bmi_random_dt_rank(c);
    char name[200];
    /* Direct parameters first, then submodules: torch's state_dict order. */
    add_tensor(b, (bmi_random_init){.kind = INIT_A_LOG, .std = 0.05f, .period = n}, 2, SHAPE(di, n),
               "%sA_log", p);
    add_tensor(b, normal(1.0f, 0.1f), 1, SHAPE(di), "%sD", p);
    snprintf(name, sizeof name, "%sin_proj", p);
    add_linear(b, name, 2 * di, d);
    add_tensor(b, fan_in(k), 3, SHAPE(di, 1, k), "%sconv1d.weight", p);
    add_tensor(b, normal(0.0f, 0.1f), 1, SHAPE(di), "%sconv1d.bias", p);
    add_tensor(b, fan_in(di), 2, SHAPE(r + 2 * n, di), "%sx_proj.weight", p);
    /* Half the fan-in scale: the reference draws dt_proj from
     * U(-R^-0.5, R^-0.5), std 0.58 R^-0.5; the bias then sets dt. */
    add_tensor(b, normal(0.0f, (float)(0.5 / sqrt((double)r))), 2, SHAPE(di, r), "%sdt_proj.weight", p);
    add_tensor(b, (bmi_random_init){.kind = INIT_DT_BIAS}, 1, SHAPE(di), "%sdt_proj.bias", p);
    snprintf(name, sizeof name, "%sout_proj", p);
    add_linear(b, name, d, di);
}

static void add_mlp(spec_builder *b, const char *p) {
    const bmi_random_config *c = b->c;
    int64_t gate = c->swiglu ? 2 : 1;
    char name[200];
    snprintf(name, sizeof name, "%slinear_fc1", p);
    add_linear(b, name, c->ffn_hidden * gate, c->d_model);
    snprintf(name, sizeof name, "%slinear_fc2", p);
    add_linear(b, name, c->d_model, c->ffn_hidden);
}

static void add_moe(spec_builder *b, const char *p, int experts) {
    int64_t d = b->c->d_model;
    /* Router logits of unit scale: routing decisions with clear margins, so
     * a bf16 rounding rarely flips the chosen expert. */
    add_tensor(b, fan_in(d), 2, SHAPE(experts, d), "%srouter.weight", p);
    add_tensor(b, normal(0.0f, 0.1f), 1, SHAPE(experts), "%srouter.bias", p);
    for (int e = 0; e < experts; e++) {
        char prefix[200];
        snprintf(prefix, sizeof prefix, "%slocal_experts.%d.", p, e);
        add_mlp(b, prefix);
    }
}

static void add_layer(spec_builder *b, int i) {
    const bmi_random_layer *l = &b->c->layers[i];
    int64_t d = b->c->d_model;
    char prefix[64];
    if (l->mamba) {
        snprintf(prefix, sizeof prefix, "decoder.layers.%d.mixer.", i);
        add_mamba(b, prefix);
    }
    if (l->mlp) {
        /* A parallel layer keeps its MLP/MoE under "moe." beside the mixer. */
        snprintf(prefix, sizeof prefix, "decoder.layers.%d.%s.", i, l->mamba ? "moe" : "mixer");
        if (l->mlp == 1)
            add_mlp(b, prefix);
        else
            add_moe(b, prefix, l->mlp);
    }
    add_tensor(b, normal(1.0f, 0.05f), 1, SHAPE(d), "decoder.layers.%d.norm.weight", i);
    if (l->mamba && l->mlp)
        add_tensor(b, normal(1.0f, 0.05f), 1, SHAPE(d), "decoder.layers.%d.norm_moe.weight", i);
}

bm_status bmi_random_model_spec(const bmi_random_config *c, bmi_random_model *out) {
    if (!out) return bmi_fail(BM_ERR_INVALID_ARGUMENT, "no output");
    bm_status st = bmi_random_config_check(c);
    if (st != BM_OK) return st;
    bmi_random_model m = {0};
    spec_builder b = {.m = &m, .c = c, .st = BM_OK};
    int64_t d = c->d_model;
    for (int i = 0; i < c->n_layers; i++) add_layer(&b, i);
    add_tensor(&b, normal(1.0f, 0.05f), 1, SHAPE(d), "decoder.final_layernorm.weight");
    add_tensor(&b, normal(0.0f, 0.05f), 1, SHAPE(d), "decoder.final_layernorm.bias");
    /* Tied input/output matrix: with a unit-variance LayerNorm output this
     * gives logits of about unit spread. */
    add_tensor(&b, fan_in(d), 2, SHAPE(c->vocab, d), "embedding.word_embeddings.weight");
    if (c->add_bias_linear) add_tensor(&b, normal(0.0f, 0.1f), 1, SHAPE(c->vocab), "output_layer.bias");
    if (b.st != BM_OK) {
        bmi_random_model_free(&m);
        return b.st;
    }
    *out = m;
    return BM_OK;
}

void bmi_random_model_free(bmi_random_model *m) {
    if (!m) return;
    for (size_t i = 0; i < m->count; i++) bmi_free(m->tensors[i].name);
    bmi_free(m->tensors);
    bmi_free(m->init);
    memset(m, 0, sizeof *m);
}

/* ---- values ------------------------------------------------------------- */

/* splitmix64's output function over a counter: element e of a tensor gets
 * mix(key + (e + 1) * golden), i.e. the e-th splitmix64 output seeded with
 * the tensor key, computable in any order. */
static inline uint64_t element_bits(uint64_t key, uint64_t e) {
    uint64_t z = key + (e + 1) * 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Approximately standard normal: the sum of four 16-bit uniforms (Irwin-Hall),
 * rescaled to unit variance. Cheaper than Box-Muller by far (no log, sqrt or
 * cos per element, which matters at billions of elements) and bounded by
 * +-3.46, which keeps random weights free of extreme outliers. */
static inline float standard_normal(uint64_t bits) {
    uint32_t sum = (uint32_t)(bits & 0xffff) + (uint32_t)((bits >> 16) & 0xffff) +
                   (uint32_t)((bits >> 32) & 0xffff) + (uint32_t)(bits >> 48);
    const float sqrt3 = 1.7320508f;
    return ((float)sum + 2.0f) * (1.0f / 65536.0f) * sqrt3 - 2.0f * sqrt3;
}

static float dt_bias_value(uint64_t bits) {
    const double dt_min = 1e-3, dt_max = 1e-1;
    double u = (double)(bits >> 11) * (1.0 / 9007199254740992.0);
    double dt = exp(log(dt_min) + u * (log(dt_max) - log(dt_min)));
    return (float)(dt + log(-expm1(-dt))); /* softplus(this) == dt */
}

static inline float element_value(const bmi_random_init *in, uint64_t e) {
    uint64_t bits = element_bits(in->key, e);
    switch (in->kind) {
    case INIT_A_LOG:
        return logf((float)(1 + (int64_t)(e % (uint64_t)in->period))) + in->std * standard_normal(bits);
    case INIT_DT_BIAS:
        return dt_bias_value(bits);
    case INIT_NORMAL:
    default:
        return in->mean + in->std * standard_normal(bits);
    }
}

bm_status bmi_random_fill(void *ctx, size_t index, uint64_t first, uint64_t count, void *dst) {
    const bmi_random_model *m = (const bmi_random_model *)ctx;
    if (!m || index >= m->count || !dst) return bmi_fail(BM_ERR_INVALID_ARGUMENT, "bad random fill request");
    const bmi_random_init *in = &m->init[index];
    switch (m->tensors[index].dtype) {
    case BMI_F32: {
        float *out = (float *)dst;
        for (uint64_t i = 0; i < count; i++) out[i] = element_value(in, first + i);
        break;
    }
    case BMI_BF16: {
        uint16_t *out = (uint16_t *)dst;
        for (uint64_t i = 0; i < count; i++) out[i] = bmi_f32_to_bf16(element_value(in, first + i));
        break;
    }
    case BMI_F16: {
        uint16_t *out = (uint16_t *)dst;
        for (uint64_t i = 0; i < count; i++) out[i] = bmi_f32_to_f16(element_value(in, first + i));
        break;
    }
    default:
        return bmi_fail(BM_ERR_UNSUPPORTED, "random values for %s", bmi_dtype_name(m->tensors[index].dtype));
    }
    return BM_OK;
}

bmi_tensor_source bmi_random_source(const bmi_random_model *m) {
    return (bmi_tensor_source){.fill = bmi_random_fill, .ctx = (void *)m};
}

/* ---- config.json and the model directory -------------------------------- */

static void layer_code_text(const bmi_random_layer *l, char out[4]) {
    int n = 0;
    if (l->mamba) out[n++] = 'r';
    if (l->mlp) out[n++] = (char)('0' + l->mlp);
    out[n] = '\0';
}

bm_status bmi_random_config_json(const bmi_random_config *c, char **json) {
    if (!json) return bmi_fail(BM_ERR_INVALID_ARGUMENT, "no output");
    bm_status st = bmi_random_config_check(c);
    if (st != BM_OK) return st;
    size_t cap = 512 + (size_t)c->n_layers * 6;
    char *s = bmi_malloc(cap);
    if (!s) return bmi_fail(BM_ERR_OUT_OF_MEMORY, "out of memory for config.json");
    size_t len = (size_t)snprintf(s, cap,
                                  "{\"num_layers\": %d, \"hidden_size\": %lld, \"state_size\": %lld, "
                                  "\"conv_dimension\": %lld, \"vocab_size\": %lld, \"expansion_factor\": %lld, "
                                  "\"mamba_moe_layers\": [",
                                  c->n_layers, (long long)c->d_model, (long long)c->d_state,
                                  (long long)c->d_conv, (long long)c->vocab, (long long)c->expand);
    for (int i = 0; c->list_layers && i < c->n_layers; i++) {
        char code[4];
        layer_code_text(&c->layers[i], code);
        len += (size_t)snprintf(s + len, cap - len, "%s\"%s\"", i ? ", " : "", code);
    }
    snprintf(s + len, cap - len,
             "], \"ffn_hidden_size\": %lld, \"bias\": false, \"add_bias_linear\": %s, \"swiglu\": %s, "
             "\"max_sequence_length\": 2048}\n",
             (long long)c->ffn_hidden, c->add_bias_linear ? "true" : "false", c->swiglu ? "true" : "false");
    *json = s;
    return BM_OK;
}

static bm_status write_text_file(const char *path, const char *text) {
    FILE *f = fopen(path, "wb");
    if (!f) return bmi_fail(BM_ERR_IO, "cannot create %s: %s", path, strerror(errno));
    size_t n = strlen(text);
    int ok = fwrite(text, 1, n, f) == n;
    int e = errno;
    if (fclose(f) != 0 && ok) ok = 0, e = errno;
    if (!ok) return bmi_fail(BM_ERR_IO, "cannot write %s: %s", path, strerror(e));
    return BM_OK;
}

static char *join_path(const char *dir, const char *file) {
    size_t a = strlen(dir), b = strlen(file);
    char *p = bmi_malloc(a + b + 2);
    if (!p) return NULL;
    memcpy(p, dir, a);
    p[a] = '/';
    memcpy(p + a + 1, file, b + 1);
    return p;
}

static bm_status ensure_directory(const char *dir) {
    if (mkdir(dir, 0777) == 0 || errno == EEXIST) {
        struct stat st;
        if (stat(dir, &st) == 0 && S_ISDIR(st.st_mode)) return BM_OK;
        return bmi_fail(BM_ERR_IO, "%s exists and is not a directory", dir);
    }
    return bmi_fail(BM_ERR_IO, "cannot create directory %s: %s", dir, strerror(errno));
}

static bm_status write_weights(const char *dir, const char *file, const bmi_random_model *m, unsigned format) {
    char *path = join_path(dir, file);
    if (!path) return bmi_fail(BM_ERR_OUT_OF_MEMORY, "out of memory");
    bm_status st = format == BMI_FORMAT_TORCH
                       ? bmi_write_torch_from(path, m->tensors, m->count, bmi_random_source(m))
                       : bmi_write_safetensors_from(path, m->tensors, m->count, NULL, bmi_random_source(m));
    bmi_free(path);
    return st;
}

bm_status bmi_write_random_model(const char *dir, const bmi_random_config *c, unsigned formats) {
    if (!dir) return bmi_fail(BM_ERR_INVALID_ARGUMENT, "no output directory");
    if ((formats & (BMI_FORMAT_TORCH | BMI_FORMAT_SAFETENSORS)) == 0 ||
        (formats & ~(BMI_FORMAT_TORCH | BMI_FORMAT_SAFETENSORS)) != 0)
        return bmi_fail(BM_ERR_INVALID_ARGUMENT, "no known weight format asked for");
    char *json = NULL, *config_path = NULL;
    bmi_random_model m = {0};
    bm_status st = bmi_random_config_json(c, &json);
    if (st == BM_OK) st = bmi_random_model_spec(c, &m);
    if (st == BM_OK) st = ensure_directory(dir);
    if (st == BM_OK) {
        config_path = join_path(dir, "config.json");
        st = config_path ? write_text_file(config_path, json) : bmi_fail(BM_ERR_OUT_OF_MEMORY, "out of memory");
    }
    if (st == BM_OK && (formats & BMI_FORMAT_TORCH)) st = write_weights(dir, "pytorch_model.bin", &m, BMI_FORMAT_TORCH);
    if (st == BM_OK && (formats & BMI_FORMAT_SAFETENSORS))
        st = write_weights(dir, "model.safetensors", &m, BMI_FORMAT_SAFETENSORS);
    bmi_free(config_path);
    bmi_free(json);
    bmi_random_model_free(&m);
    return st;
}
