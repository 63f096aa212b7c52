/* bm_model: find the files, read config and tensors, bind every tensor the
 * configuration needs (and nothing else), pick the backend. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

#include "model.h"

#define NAME_CAP 160

static int online_cpus(void) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : n > 256 ? 256 : (int)n;
}


bm_status bmi_model_own(bm_model *m, void *p) {
    if (m->n_owned == m->cap_owned) {
        size_t cap = m->cap_owned ? m->cap_owned * 2 : 64;
        void **owned = bmi_realloc(m->owned, cap * sizeof *owned);
        if (!owned) return BM_ERR_OUT_OF_MEMORY;
        m->owned = owned;
        m->cap_owned = cap;
    }
    m->owned[m->n_owned++] = p;
    return BM_OK;
}

/* ---- binding tensors ----------------------------------------------------- */

typedef struct binder {
    bm_model *m;
    unsigned char *used;      /* [table.count]: each tensor bound at most once */
    uint64_t fingerprint;
} binder;

static void fingerprint_tensor(binder *b, const bmi_tensor *t) {
    b->fingerprint = bmi_hash64(b->fingerprint, t->name, strlen(t->name));
    b->fingerprint = bmi_hash64(b->fingerprint, t->shape, sizeof(int64_t) * (size_t)t->ndim);
    /* Sample the bytes: hashing gigabytes at every load would cost seconds, and
     * a few spread samples already tell two different checkpoints apart. */
    const size_t chunk = 64, samples = 16;
    for (size_t i = 0; i < samples; i++) {
        size_t at = t->nbytes > chunk ? (t->nbytes - chunk) / (samples - 1) * i : 0;
        size_t n = t->nbytes - at < chunk ? t->nbytes - at : chunk;
        b->fingerprint = bmi_hash64(b->fingerprint, (const char *)t->data + at, n);
    }
}

static bm_status find_tensor(binder *b, const char *name, int optional, const bmi_tensor **out) {
    const bmi_tensor_table *tab = &b->m->table;
    *out = NULL;
    for (size_t i = 0; i < tab->count; i++) {
        if (strcmp(tab->items[i].name, name) != 0) continue;
        if (b->used[i]) return bmi_fail(BM_ERR_FORMAT, "tensor %s appears twice", name);
        b->used[i] = 1;
        *out = &tab->items[i];
        fingerprint_tensor(b, *out);
        return BM_OK;
    }
    if (optional) return BM_OK;
    return bmi_fail(BM_ERR_FORMAT, "missing tensor %s", name);
}

static bm_status check_shape(const bmi_tensor *t, int ndim, const int64_t *shape) {
    int ok = t->ndim == ndim;
    for (int i = 0; ok && i < ndim; i++) ok = t->shape[i] == shape[i];
    if (ok) return BM_OK;
    char got[96] = "", want[96] = "";
    size_t g = 0, w = 0;
    for (int i = 0; i < t->ndim && g < sizeof got - 24; i++)
        g += (size_t)snprintf(got + g, sizeof got - g, "%s%lld", i ? ", " : "", (long long)t->shape[i]);
    for (int i = 0; i < ndim && w < sizeof want - 24; i++)
        w += (size_t)snprintf(want + w, sizeof want - w, "%s%lld", i ? ", " : "", (long long)shape[i]);
    return bmi_fail(BM_ERR_FORMAT, "tensor %s has shape [%s], the config needs [%s]", t->name, got, want);
}

static int is_float_dtype(bmi_dtype d) { return d == BMI_F32 || d == BMI_BF16 || d == BMI_F16; }

static float element_to_f32(const bmi_tensor *t, int64_t offset) {
    const char *p = (const char *)t->data + (size_t)offset * bmi_dtype_size(t->dtype);
    switch (t->dtype) {
    case BMI_F32: { uint32_t u = bmi_rd32(p); float f; memcpy(&f, &u, 4); return f; }
    case BMI_BF16: return bmi_bf16_to_f32(bmi_rd16(p));
    default: return bmi_f16_to_f32(bmi_rd16(p));
    }
}

/* A small parameter as an f32 host copy of `count` elements (any layout of the
 * given shape: strided views are gathered). */
static bm_status bind_vector(binder *b, const char *name, int ndim, const int64_t *shape, int optional,
                             const float **out) {
    const bmi_tensor *t;
    bm_status st = find_tensor(b, name, optional, &t);
    if (st || !t) return *out = NULL, st;
    if ((st = check_shape(t, ndim, shape))) return st;
    if (!is_float_dtype(t->dtype))
        return bmi_fail(BM_ERR_FORMAT, "tensor %s has dtype %s, expected a float type", name, bmi_dtype_name(t->dtype));
    int64_t n = bmi_tensor_numel(t);
    float *v = bmi_malloc((size_t)n * sizeof *v);
    if (!v || bmi_model_own(b->m, v)) {
        bmi_free(v);
        return bmi_fail(BM_ERR_OUT_OF_MEMORY, "out of memory binding %s", name);
    }
    for (int64_t i = 0; i < n; i++) { /* walk the index in row-major order */
        int64_t rem = i, off = 0;
        for (int d = t->ndim - 1; d >= 0; d--) {
            off += (rem % t->shape[d]) * t->stride[d];
            rem /= t->shape[d];
        }
        v[i] = element_to_f32(t, off);
    }
    *out = v;
    return BM_OK;
}

/* A large matrix [rows, cols]: used in place when contiguous and aligned,
 * else copied once into a contiguous buffer of the same type. */
static bm_status bind_matrix(binder *b, const char *name, int64_t rows, int64_t cols, int optional,
                             bmi_matrix *out) {
    const bmi_tensor *t;
    memset(out, 0, sizeof *out);
    bm_status st = find_tensor(b, name, optional, &t);
    if (st || !t) return st;
    int64_t shape[2] = {rows, cols};
    if ((st = check_shape(t, 2, shape))) return st;
    if (!is_float_dtype(t->dtype))
        return bmi_fail(BM_ERR_FORMAT, "tensor %s has dtype %s, expected f32, bf16 or f16", name,
                        bmi_dtype_name(t->dtype));
    size_t es = bmi_dtype_size(t->dtype);
    out->dtype = t->dtype;
    out->rows = (int)rows;
    out->cols = (int)cols;
    if (bmi_tensor_is_contiguous(t) && ((uintptr_t)t->data % es) == 0) {
        out->data = t->data;
        return BM_OK;
    }
    char *copy = bmi_aligned_alloc(64, (size_t)rows * (size_t)cols * es);
    if (!copy || bmi_model_own(b->m, copy)) {
        bmi_free(copy);
        return bmi_fail(BM_ERR_OUT_OF_MEMORY, "out of memory copying %s", name);
    }
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < cols; c++)
            memcpy(copy + ((size_t)r * (size_t)cols + (size_t)c) * es,
                   (const char *)t->data + (size_t)(r * t->stride[0] + c * t->stride[1]) * es, es);
    out->data = copy;
    return BM_OK;
}

static bm_status bind_mlp(binder *b, const char *prefix, bmi_mlp_weights *w) {
    const bmi_config *c = &b->m->config;
    char name[NAME_CAP];
    int64_t g = c->swiglu ? 2 : 1, fc1_rows = g * c->ffn_hidden, d = c->d_model;
    bm_status st;
    snprintf(name, sizeof name, "%s.linear_fc1.weight", prefix);
    if ((st = bind_matrix(b, name, fc1_rows, d, 0, &w->fc1))) return st;
    snprintf(name, sizeof name, "%s.linear_fc2.weight", prefix);
    if ((st = bind_matrix(b, name, d, c->ffn_hidden, 0, &w->fc2))) return st;
    if (!c->add_bias_linear) return BM_OK;
    snprintf(name, sizeof name, "%s.linear_fc1.bias", prefix);
    if ((st = bind_vector(b, name, 1, &fc1_rows, 0, &w->fc1_bias))) return st;
    snprintf(name, sizeof name, "%s.linear_fc2.bias", prefix);
    return bind_vector(b, name, 1, &d, 0, &w->fc2_bias);
}

/* prefix is "decoder.layers.i.mixer" (MLP-only layers) or "...moe" (parallel). */
static bm_status bind_mlp_block(binder *b, const char *prefix, int n_experts, bmi_layer_weights *lw) {
    const bmi_config *c = &b->m->config;
    char name[NAME_CAP];
    bm_status st;
    lw->experts = bmi_calloc((size_t)n_experts, sizeof *lw->experts);
    if (!lw->experts || bmi_model_own(b->m, lw->experts)) {
        bmi_free(lw->experts);
        lw->experts = NULL;
        return bmi_fail(BM_ERR_OUT_OF_MEMORY, "out of memory binding %s", prefix);
    }
    if (n_experts == 1) return bind_mlp(b, prefix, &lw->experts[0]);
    int64_t e = n_experts;
    snprintf(name, sizeof name, "%s.router.weight", prefix);
    if ((st = bind_matrix(b, name, e, c->d_model, 0, &lw->router))) return st;
    snprintf(name, sizeof name, "%s.router.bias", prefix);
    if ((st = bind_vector(b, name, 1, &e, 0, &lw->router_bias))) return st;
    for (int i = 0; i < n_experts; i++) {
        snprintf(name, sizeof name, "%s.local_experts.%d", prefix, i);
        if ((st = bind_mlp(b, name, &lw->experts[i]))) return st;
    }
    return BM_OK;
}

static bm_status bind_mamba(binder *b, const char *prefix, bmi_mamba_weights *w) {
    const bmi_config *c = &b->m->config;
    char name[NAME_CAP];
    int64_t d = c->d_model, di = c->d_inner, N = c->d_state, K = c->d_conv, R = c->dt_rank;
    bm_status st;
#define NAMED(suffix) (snprintf(name, sizeof name, "%s.%s", prefix, suffix), name)
    if ((st = bind_matrix(b, NAMED("in_proj.weight"), 2 * di, d, 0, &w->in_proj))) return st;
    if ((st = bind_vector(b, NAMED("conv1d.weight"), 3, (int64_t[]){di, 1, K}, 0, &w->conv_w))) return st;
    if ((st = bind_vector(b, NAMED("conv1d.bias"), 1, &di, 0, &w->conv_b))) return st;
    if ((st = bind_matrix(b, NAMED("x_proj.weight"), R + 2 * N, di, 0, &w->x_proj))) return st;
    if ((st = bind_matrix(b, NAMED("dt_proj.weight"), di, R, 0, &w->dt_proj))) return st;
    if ((st = bind_vector(b, NAMED("dt_proj.bias"), 1, &di, 0, &w->dt_bias))) return st;
    if ((st = bind_vector(b, NAMED("A_log"), 2, (int64_t[]){di, N}, 0, &w->A))) return st;
    if ((st = bind_vector(b, NAMED("D"), 1, &di, 0, &w->D))) return st;
    if ((st = bind_matrix(b, NAMED("out_proj.weight"), d, di, 0, &w->out_proj))) return st;
    if (c->add_bias_linear) {
        int64_t two_di = 2 * di;
        if ((st = bind_vector(b, NAMED("in_proj.bias"), 1, &two_di, 0, &w->in_proj_bias))) return st;
        if ((st = bind_vector(b, NAMED("out_proj.bias"), 1, &d, 0, &w->out_proj_bias))) return st;
    }
#undef NAMED
    float *A = (float *)w->A; /* our own copy: turn A_log into A once */
    for (int64_t i = 0; i < di * N; i++) A[i] = -expf(A[i]);
    return BM_OK;
}

static bm_status bind_layer(binder *b, int i) {
    const bmi_config *c = &b->m->config;
    const bmi_layer_config *lc = &c->layers[i];
    bmi_layer_weights *lw = &b->m->weights.layers[i];
    char prefix[NAME_CAP], name[NAME_CAP];
    int64_t d = c->d_model;
    bm_status st;
    snprintf(name, sizeof name, "decoder.layers.%d.norm.weight", i);
    if ((st = bind_vector(b, name, 1, &d, 0, &lw->norm))) return st;
    if (lc->has_mamba) {
        snprintf(prefix, sizeof prefix, "decoder.layers.%d.mixer", i);
        if ((st = bind_mamba(b, prefix, &lw->mamba))) return st;
    }
    if (lc->n_experts == 0) return BM_OK;
    if (lc->has_mamba) { /* parallel MLP branch with its own norm */
        snprintf(name, sizeof name, "decoder.layers.%d.norm_moe.weight", i);
        if ((st = bind_vector(b, name, 1, &d, 0, &lw->norm_moe))) return st;
        snprintf(prefix, sizeof prefix, "decoder.layers.%d.moe", i);
    } else {
        snprintf(prefix, sizeof prefix, "decoder.layers.%d.mixer", i);
    }
    return bind_mlp_block(b, prefix, lc->n_experts, lw);
}

static void count_params(bm_model *m) {
    const bmi_config *c = &m->config;
    uint64_t total = 0, bytes = 0, inactive = 0;
    for (size_t i = 0; i < m->table.count; i++) {
        total += (uint64_t)bmi_tensor_numel(&m->table.items[i]);
        bytes += (uint64_t)bmi_tensor_numel(&m->table.items[i]) * bmi_dtype_size(m->table.items[i].dtype);
    }
    for (int i = 0; i < c->n_layers; i++) {
        int e = c->layers[i].n_experts;
        if (e < 2) continue;
        uint64_t per_expert = (uint64_t)(c->swiglu ? 2 : 1) * c->ffn_hidden * c->d_model +
                              (uint64_t)c->d_model * c->ffn_hidden;
        if (c->add_bias_linear) per_expert += (uint64_t)(c->swiglu ? 2 : 1) * c->ffn_hidden + c->d_model;
        inactive += per_expert * (uint64_t)(e - 1);
    }
    m->n_params = total;
    m->n_active_params = total - inactive;
    m->weight_bytes = bytes;
}

bm_status bmi_model_bind_weights(bm_model *m) {
    const bmi_config *c = &m->config;
    bmi_weights *w = &m->weights;
    binder b = {m, NULL, 0};
    bm_status st;
    b.fingerprint = bmi_hash64(0, c->layer_kinds, strlen(c->layer_kinds));
    int dims[] = {c->n_layers, c->d_model, c->d_state, c->d_conv, c->d_inner, c->dt_rank, c->ffn_hidden,
                  c->vocab_size, c->add_bias_linear, c->swiglu, (int)c->activation};
    b.fingerprint = bmi_hash64(b.fingerprint, dims, sizeof dims);
    b.used = bmi_calloc(m->table.count ? m->table.count : 1, 1);
    w->layers = bmi_calloc((size_t)c->n_layers, sizeof *w->layers);
    if (!b.used || !w->layers || bmi_model_own(m, w->layers)) {
        bmi_free(b.used);
        bmi_free(w->layers);
        w->layers = NULL;
        return bmi_fail(BM_ERR_OUT_OF_MEMORY, "out of memory binding weights");
    }
    int64_t V = c->vocab_size, d = c->d_model;
    const char *emb_name = bmi_table_find(&m->table, "embedding.word_embeddings.weight")
                               ? "embedding.word_embeddings.weight"
                               : "embedding.weight";
    if ((st = bind_matrix(&b, emb_name, V, d, 0, &w->embedding))) goto done;
    if ((st = bind_matrix(&b, "output_layer.weight", V, d, 1, &w->lm_head))) goto done;
    if (!w->lm_head.data) w->lm_head = w->embedding;
    if ((st = bind_vector(&b, "output_layer.bias", 1, &V, !c->add_bias_linear, &w->lm_head_bias))) goto done;
    if ((st = bind_vector(&b, "decoder.final_layernorm.weight", 1, &d, 0, &w->final_norm_w))) goto done;
    if ((st = bind_vector(&b, "decoder.final_layernorm.bias", 1, &d, 0, &w->final_norm_b))) goto done;
    for (int i = 0; i < c->n_layers; i++)
        if ((st = bind_layer(&b, i))) goto done;
    for (size_t i = 0; i < m->table.count; i++) {
        if (!b.used[i]) {
            st = bmi_fail(BM_ERR_FORMAT, "tensor %s is not used by the configuration in config.json",
                          m->table.items[i].name);
            goto done;
        }
    }
    m->fingerprint = b.fingerprint;
    m->weight_dtype = (int)w->embedding.dtype;
    count_params(m);
done:
    bmi_free(b.used);
    return st;
}

/* ---- files ----------------------------------------------------------------- */

static int is_dir(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

static int is_file(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

/* Resolve `path` into the config.json and weights paths. */
static bm_status locate_files(const char *path, char *config, char *weights, size_t cap, int *is_torch) {
    if (is_dir(path)) {
        snprintf(config, cap, "%s/config.json", path);
        snprintf(weights, cap, "%s/model.safetensors", path);
        *is_torch = 0;
        if (!is_file(weights)) {
            snprintf(weights, cap, "%s/pytorch_model.bin", path);
            *is_torch = 1;
            if (!is_file(weights))
                return bmi_fail(BM_ERR_IO, "%s holds neither model.safetensors nor pytorch_model.bin", path);
        }
    } else if (is_file(path)) {
        if ((size_t)snprintf(weights, cap, "%s", path) >= cap) return bmi_fail(BM_ERR_INVALID_ARGUMENT, "path too long");
        const char *slash = strrchr(path, '/');
        int dir_len = slash ? (int)(slash - path) : 1;
        snprintf(config, cap, "%.*s/config.json", dir_len, slash ? path : ".");
        /* safetensors starts with a little-endian header length, torch files with "PK"
         * (or a pickle for legacy files): tell by the name, as users name them. */
        *is_torch = !ends_with(path, ".safetensors");
    } else {
        return bmi_fail(BM_ERR_IO, "cannot open model %s: %s", path, strerror(errno ? errno : ENOENT));
    }
    if (strlen(config) >= cap - 1 || strlen(weights) >= cap - 1)
        return bmi_fail(BM_ERR_INVALID_ARGUMENT, "model path is too long");
    return BM_OK;
}

/* ---- public API ------------------------------------------------------------ */

BM_API void bm_model_params_init(bm_model_params *p) {
    if (!p) return;
    memset(p, 0, sizeof *p);
    p->size = sizeof *p;
    p->backend = BM_BACKEND_AUTO;
    p->activation = BM_ACTIVATION_GELU;
}

static int reserved_zero(const uint32_t *r, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (r[i]) return 0;
    return 1;
}

static bm_status check_model_params(const bm_model_params *p) {
    if (p->size != sizeof *p)
        return bmi_fail(BM_ERR_INVALID_ARGUMENT, "bm_model_params.size is %u, this library knows %zu: call "
                                                 "bm_model_params_init first",
                        p->size, sizeof *p);
    if (!reserved_zero(p->reserved, sizeof p->reserved / sizeof p->reserved[0]))
        return bmi_fail(BM_ERR_INVALID_ARGUMENT, "bm_model_params.reserved must be zero");
    if (p->backend != BM_BACKEND_AUTO && p->backend != BM_BACKEND_CPU && p->backend != BM_BACKEND_CUDA)
        return bmi_fail(BM_ERR_INVALID_ARGUMENT, "unknown backend %d", (int)p->backend);
    if (p->activation != BM_ACTIVATION_GELU && p->activation != BM_ACTIVATION_SILU)
        return bmi_fail(BM_ERR_INVALID_ARGUMENT, "unknown activation %d", (int)p->activation);
    if (p->n_threads < 0 || p->n_threads > 1024)
        return bmi_fail(BM_ERR_INVALID_ARGUMENT, "n_threads %d is outside [0, 1024]", (int)p->n_threads);
    if (p->device < 0) return bmi_fail(BM_ERR_INVALID_ARGUMENT, "device %d is negative", (int)p->device);
    return BM_OK;
}

int bmi_cuda_available(int device);

static bm_status choose_backend(const bm_model_params *p, const bmi_backend **out) {
#ifdef BM_WITH_CUDA
    if (p->backend == BM_BACKEND_CUDA || (p->backend == BM_BACKEND_AUTO && bmi_cuda_available(p->device))) {
        *out = &bmi_cuda_backend;
        return BM_OK;
    }
#else
    if (p->backend == BM_BACKEND_CUDA)
        return bmi_fail(BM_ERR_UNSUPPORTED, "this build of libblackmamba has no CUDA backend");
#endif
    *out = &bmi_cpu_backend;
    return BM_OK;
}

void bm_model_free(bm_model *m) {
    if (!m) return;
    if (m->backend && m->backend->model_release) m->backend->model_release(m);
    for (size_t i = 0; i < m->n_owned; i++) bmi_free(m->owned[i]);
    bmi_free(m->owned);
    bm_tokenizer_free(m->tokenizer);
    bmi_table_free(&m->table);
    bmi_config_free(&m->config);
    bmi_free(m);
}


bm_status bmi_model_create(bmi_config *config, bmi_tensor_table *table, const bm_model_params *p, bm_model **out) {
    bm_model *m = bmi_calloc(1, sizeof *m);
    if (!m) return bmi_fail(BM_ERR_OUT_OF_MEMORY, "out of memory for a model");
    m->config = *config;
    m->table = *table;
    memset(config, 0, sizeof *config);
    memset(table, 0, sizeof *table);
    m->config.activation = p->activation;
    bm_status st = bmi_model_bind_weights(m);
    if (st) goto fail;
    for (int i = 0; i < m->config.n_layers; i++) m->n_mamba_layers += m->config.layers[i].has_mamba;
    m->state_floats = (size_t)m->n_mamba_layers * (size_t)m->config.d_inner *
                      (size_t)(m->config.d_conv - 1 + m->config.d_state);
    m->n_threads = p->n_threads ? p->n_threads : online_cpus();
    if ((st = choose_backend(p, &m->backend))) goto fail;
    if (m->backend->model_init && (st = m->backend->model_init(m, p))) {
        m->backend = NULL; /* nothing to release: init cleans up after itself */
        goto fail;
    }
    *out = m;
    return BM_OK;
fail:
    bm_model_free(m);
    return st;
}

BM_API bm_status bm_model_load(const char *path, const bm_model_params *params, bm_model **out) {
    bm_model_params defaults;
    bm_model_params_init(&defaults);
    const bm_model_params *p = params ? params : &defaults;
    if (!path || !out) return bmi_fail(BM_ERR_INVALID_ARGUMENT, "bm_model_load: path and out must not be NULL");
    bm_status st = check_model_params(p);
    if (st) return st;
    char config_path[4096], weights_path[4096];
    int is_torch = 0;
    if ((st = locate_files(path, config_path, weights_path, sizeof config_path, &is_torch))) return st;
    bmi_config config;
    bmi_tensor_table table = {0};
    if ((st = bmi_config_read(config_path, &config))) return st;
    /* The readers name the file in their messages; binding errors get it here. */
    st = is_torch ? bmi_read_torch(weights_path, &table) : bmi_read_safetensors(weights_path, &table);
    if (st == BM_OK && (st = bmi_model_create(&config, &table, p, out)) != BM_OK)
        bmi_error_context("%s", weights_path);
    if (st) {
        bmi_table_free(&table);
        bmi_config_free(&config);
        return st;
    }
    /* A tokenizer.json beside config.json belongs to the model. */
    char tokenizer_path[4096];
    snprintf(tokenizer_path, sizeof tokenizer_path, "%.*s/tokenizer.json", (int)(strlen(config_path) - 12), config_path);
    if (is_file(tokenizer_path) && (st = bm_tokenizer_load(tokenizer_path, &(*out)->tokenizer))) {
        bm_model_free(*out);
        *out = NULL;
        return st;
    }
    return BM_OK;
}

BM_API const bm_tokenizer *bm_model_tokenizer(const bm_model *m) { return m ? m->tokenizer : NULL; }


BM_API bm_status bm_model_get_info(const bm_model *m, bm_model_info *out) {
    if (!m || !out) return bmi_fail(BM_ERR_INVALID_ARGUMENT, "bm_model_get_info: NULL argument");
    if (out->size != sizeof *out)
        return bmi_fail(BM_ERR_INVALID_ARGUMENT, "bm_model_info.size is %u, this library knows %zu", out->size,
                        sizeof *out);
    const bmi_config *c = &m->config;
    bm_model_info info;
    memset(&info, 0, sizeof info);
    info.size = sizeof info;
    info.vocab_size = c->vocab_size;
    info.d_model = c->d_model;
    info.n_layers = c->n_layers;
    info.n_mamba_layers = m->n_mamba_layers;
    info.d_inner = c->d_inner;
    info.d_state = c->d_state;
    info.d_conv = c->d_conv;
    info.dt_rank = c->dt_rank;
    info.ffn_hidden = c->ffn_hidden;
    for (int i = 0; i < c->n_layers; i++)
        if (c->layers[i].n_experts > info.max_experts) info.max_experts = c->layers[i].n_experts;
    info.backend = m->backend->kind;
    info.activation = c->activation;
    info.weight_dtype = m->weight_dtype;
    info.n_params = m->n_params;
    info.n_active_params = m->n_active_params;
    info.state_bytes = (uint64_t)m->state_floats * sizeof(float);
    info.weight_bytes = m->weight_bytes;
    info.layer_kinds = c->layer_kinds;
    *out = info;
    return BM_OK;
}
