/* The CUDA backend's table (lib/backend.h): weights uploaded once per model,
 * states as device arrays in the canonical layout, sessions holding a
 * stream, a cuBLASLt handle, scratch and the decode graphs. The forward
 * passes are in forward.cu; the kernels each in their own file. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend_internal.cuh"

extern "C" {
#include "rng.h"
}

bm_status bmc_fail_cuda(cudaError_t e, const char *what) {
    cudaGetLastError(); /* clear it, if it is not sticky, so the next call starts clean */
    return bmi_fail(e == cudaErrorMemoryAllocation ? BM_ERR_OUT_OF_MEMORY : BM_ERR_DEVICE, "CUDA: %s: %s", what,
                    cudaGetErrorString(e));
}

static cuda_model *ctx_of(const bm_model *m) { return (cuda_model *)m->backend_ctx; }

extern "C" int bmi_cuda_available(int device) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError();
        return 0;
    }
    if (device < 0 || device >= n) return 0;
    int major = 0;
    if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess) {
        cudaGetLastError();
        return 0;
    }
    return major >= 8;
}

/* ---- weight upload -------------------------------------------------------- */

/* Two pinned buffers: the host fills (converts) one while the copy engine
 * drains the other. */
#define STAGE_BYTES (32u << 20)

typedef struct uploader {
    int dry;           /* first pass: only count bytes */
    size_t used;
    char *pool;
    char *pinned[2];
    cudaEvent_t drained[2];
    cudaStream_t stream;
    int cur;
    cudaError_t err;
} uploader;

static void *place(uploader *u, size_t bytes) {
    size_t at = (u->used + 255) & ~(size_t)255;
    u->used = at + bytes;
    return u->dry ? NULL : u->pool + at;
}

static float element(const void *src, int dtype, size_t i) {
    switch (dtype) {
    case BMI_F32: return ((const float *)src)[i];
    case BMI_BF16: return bmi_bf16_to_f32(((const uint16_t *)src)[i]);
    default: return bmi_f16_to_f32(((const uint16_t *)src)[i]);
    }
}

/* Copy `count` elements of `src` (host, dtype src_type) to `dst` (device)
 * as dst_type: BMI_F32, BMI_BF16 or BMI_F16. */
static void upload(uploader *u, void *dst, const void *src, int src_type, int dst_type, size_t count) {
    if (u->dry || u->err != cudaSuccess || count == 0) return;
    const size_t dsize = dst_type == BMI_F32 ? 4 : 2, per_stage = STAGE_BYTES / dsize;
    for (size_t first = 0; first < count; first += per_stage) {
        const size_t n = count - first < per_stage ? count - first : per_stage;
        char *buf = u->pinned[u->cur];
        if ((u->err = cudaEventSynchronize(u->drained[u->cur])) != cudaSuccess) return;
        if (src_type == dst_type) {
            memcpy(buf, (const char *)src + first * dsize, n * dsize);
        } else if (dst_type == BMI_F32) {
            for (size_t i = 0; i < n; i++) ((float *)buf)[i] = element(src, src_type, first + i);
        } else if (dst_type == BMI_BF16) {
            for (size_t i = 0; i < n; i++) ((uint16_t *)buf)[i] = bmi_f32_to_bf16(element(src, src_type, first + i));
        } else {
            for (size_t i = 0; i < n; i++) ((uint16_t *)buf)[i] = bmi_f32_to_f16(element(src, src_type, first + i));
        }
        if ((u->err = cudaMemcpyAsync((char *)dst + first * dsize, buf, n * dsize, cudaMemcpyHostToDevice,
                                      u->stream)) != cudaSuccess)
            return;
        if ((u->err = cudaEventRecord(u->drained[u->cur], u->stream)) != cudaSuccess) return;
        u->cur ^= 1;
    }
}

static const float *vec(uploader *u, const float *host, size_t n) {
    if (!host) return NULL;
    float *d = (float *)place(u, n * sizeof(float));
    upload(u, d, host, BMI_F32, BMI_F32, n);
    return d;
}

static int dst16(const cuda_model *cm) { return cm->wtype == BMC_F16 ? BMI_F16 : BMI_BF16; }

static const void *mat16(uploader *u, const cuda_model *cm, const bmi_matrix *w) {
    size_t n = (size_t)w->rows * (size_t)w->cols;
    void *d = place(u, n * 2);
    upload(u, d, w->data, w->dtype, dst16(cm), n);
    return d;
}

static const float *mat32(uploader *u, const bmi_matrix *w) {
    size_t n = (size_t)w->rows * (size_t)w->cols;
    float *d = (float *)place(u, n * 4);
    upload(u, d, w->data, w->dtype, BMI_F32, n);
    return d;
}

/* Lays out (dry) or uploads every weight the device needs. */
static void upload_model(uploader *u, const bm_model *m, cuda_model *cm) {
    const bmi_config *c = &m->config;
    const bmi_weights *w = &m->weights;
    const size_t d = (size_t)c->d_model, g = c->swiglu ? 2 : 1, F = (size_t)c->ffn_hidden;
    cm->embedding = mat16(u, cm, &w->embedding);
    cm->lm_head = w->lm_head.data == w->embedding.data ? cm->embedding : mat16(u, cm, &w->lm_head);
    cm->lm_head_bias = vec(u, w->lm_head_bias, (size_t)c->vocab_size);
    cm->final_w = vec(u, w->final_norm_w, d);
    cm->final_b = vec(u, w->final_norm_b, d);
    int mamba_index = 0;
    for (int i = 0; i < c->n_layers; i++) {
        const bmi_layer_config *lc = &c->layers[i];
        const bmi_layer_weights *lw = &w->layers[i];
        dev_layer *L = &cm->layers[i];
        L->has_mamba = lc->has_mamba;
        L->n_experts = lc->n_experts;
        L->norm = vec(u, lw->norm, d);
        L->norm_moe = vec(u, lw->norm_moe, d);
        if (lc->has_mamba) {
            const bmi_mamba_weights *mw = &lw->mamba;
            dev_mamba *D = &L->mamba;
            const size_t di = (size_t)c->d_inner, N = (size_t)c->d_state, K = (size_t)c->d_conv;
            L->mamba_index = mamba_index++;
            D->in_proj = mat16(u, cm, &mw->in_proj);
            D->x_proj = mat16(u, cm, &mw->x_proj);
            D->dt_proj = mat16(u, cm, &mw->dt_proj);
            D->dt_proj_f32 = mat32(u, &mw->dt_proj);
            D->out_proj = mat16(u, cm, &mw->out_proj);
            D->in_proj_bias = vec(u, mw->in_proj_bias, 2 * di);
            D->conv_w = vec(u, mw->conv_w, di * K);
            D->conv_b = vec(u, mw->conv_b, di);
            D->dt_bias = vec(u, mw->dt_bias, di);
            D->A = vec(u, mw->A, di * N);
            D->D = vec(u, mw->D, di);
            D->out_proj_bias = vec(u, mw->out_proj_bias, d);
        }
        const int E = lc->n_experts;
        if (E == 0) continue;
        if (E >= 2) {
            L->router_w = mat32(u, &lw->router);
            L->router_b = vec(u, lw->router_bias, (size_t)E);
        }
        L->fused_route = cm->fuse_routing && !lc->has_mamba && i > 0 && c->layers[i - 1].has_mamba &&
                         !c->layers[i - 1].n_experts && E <= BMC_MAX_FUSED_EXPERTS;
        if (L->fused_route && E >= 2) {
            float *dev = (float *)place(u, (size_t)E * d * 4);
            L->route_w_normed = dev;
            if (!u->dry && u->err == cudaSuccess) {
                float *host = (float *)bmi_malloc((size_t)E * d * 4);
                if (!host) {
                    u->err = cudaErrorMemoryAllocation;
                } else {
                    for (int e = 0; e < E; e++)
                        for (size_t k = 0; k < d; k++)
                            host[(size_t)e * d + k] = element(lw->router.data, lw->router.dtype, (size_t)e * d + k) *
                                                      lw->norm[k];
                    upload(u, dev, host, BMI_F32, BMI_F32, (size_t)E * d);
                    /* the copy engine reads `host` asynchronously: wait before freeing it */
                    if (u->err == cudaSuccess) u->err = cudaStreamSynchronize(u->stream);
                    bmi_free(host);
                }
            }
        }
        /* experts back to back, so a device-side index finds any of them */
        const size_t fc1_n = g * F * d, fc2_n = d * F;
        char *fc1 = (char *)place(u, (size_t)E * fc1_n * 2);
        char *fc2 = (char *)place(u, (size_t)E * fc2_n * 2);
        L->fc1 = fc1;
        L->fc2 = fc2;
        const int has_bias = lw->experts[0].fc1_bias != NULL;
        float *b1 = has_bias ? (float *)place(u, (size_t)E * g * F * 4) : NULL;
        float *b2 = has_bias ? (float *)place(u, (size_t)E * d * 4) : NULL;
        L->fc1_bias = b1;
        L->fc2_bias = b2;
        for (int e = 0; e < E; e++) {
            const bmi_mlp_weights *ew = &lw->experts[e];
            upload(u, u->dry ? NULL : fc1 + (size_t)e * fc1_n * 2, ew->fc1.data, ew->fc1.dtype, dst16(cm), fc1_n);
            upload(u, u->dry ? NULL : fc2 + (size_t)e * fc2_n * 2, ew->fc2.data, ew->fc2.dtype, dst16(cm), fc2_n);
            if (has_bias) {
                upload(u, u->dry ? NULL : b1 + (size_t)e * g * F, ew->fc1_bias, BMI_F32, BMI_F32, g * F);
                upload(u, u->dry ? NULL : b2 + (size_t)e * d, ew->fc2_bias, BMI_F32, BMI_F32, d);
            }
        }
    }
}

/* What this backend's kernels are written for; anything else is refused at
 * load rather than computed wrongly. */
static bm_status check_supported(const bmi_config *c) {
    if (c->d_state != BMC_D_STATE)
        return bmi_fail(BM_ERR_UNSUPPORTED, "CUDA backend: state_size %d (only %d is supported)", c->d_state,
                        BMC_D_STATE);
    if (c->d_conv < 1 || c->d_conv > BMC_MAX_CONV)
        return bmi_fail(BM_ERR_UNSUPPORTED, "CUDA backend: conv_dimension %d (1..%d supported)", c->d_conv,
                        BMC_MAX_CONV);
    if (c->d_model % 8 || c->d_inner % 8 || (c->ffn_hidden > 0 && c->ffn_hidden % 8))
        return bmi_fail(BM_ERR_UNSUPPORTED, "CUDA backend: hidden, inner and ffn sizes must be multiples of 8");
    if (c->d_model > 8192 || c->dt_rank > 256)
        return bmi_fail(BM_ERR_UNSUPPORTED, "CUDA backend: hidden size above 8192 or dt_rank above 256");
    for (int i = 0; i < c->n_layers; i++)
        if (c->layers[i].n_experts > 64)
            return bmi_fail(BM_ERR_UNSUPPORTED, "CUDA backend: more than 64 experts in layer %d", i);
    return BM_OK;
}

static void model_release(bm_model *m) {
    cuda_model *cm = ctx_of(m);
    if (!cm) return;
    cudaSetDevice(cm->device);
    if (cm->pool) cudaFree(cm->pool);
    if (cm->fused_layers) cudaFree(cm->fused_layers);
    bmi_free(cm->fused_mamba);
    bmi_free(cm->layers);
    bmi_free(cm);
    m->backend_ctx = NULL;
}

/* The persistent batch-1 decode kernel: its layer table on the device and
 * its tiling. A model or device it cannot run leaves fused_ok 0 (the kernel
 * chain runs instead); only a failing CUDA call is an error. */
static bm_status plan_fused_step(const bm_model *m, cuda_model *cm) {
    const bmi_config *c = &m->config;
    /* Opt-in: on the H100 it is still slower than the kernel chain (1.01 vs
     * 0.91 ms a 2.8B step; docs/PERF.md says where its time goes). */
    const char *env = getenv("BM_CUDA_FUSED_STEP");
    if (!(env && env[0] == '1')) return BM_OK;
    for (int i = 0; i < c->n_layers; i++)
        if (c->layers[i].has_mamba && c->layers[i].n_experts > 0) return BM_OK; /* parallel layers */
    bmc_fused_step_args *a = &cm->fused;
    memset(a, 0, sizeof *a);
    a->n_layers = c->n_layers;
    a->d = c->d_model;
    a->di = c->d_inner;
    a->R = c->dt_rank;
    a->K = c->d_conv;
    a->F = c->ffn_hidden > 0 ? c->ffn_hidden : 8;
    a->swiglu = c->swiglu;
    a->act = (int)c->activation;
    a->wtype = cm->wtype;
    a->eps = BMC_NORM_EPS;
    a->embedding = cm->embedding;
    env = getenv("BM_CUDA_FUSED_SLOTS"); /* measurement switches: ring slots, and 1 = skip the dot products */
    a->slots = env ? atoi(env) : 0;
    env = getenv("BM_CUDA_FUSED_DEBUG");
    a->debug_flags = env ? atoi(env) : 0;
    cudaError_t e = bmc_fused_step_plan(a, cm->device);
    if (e == cudaErrorNotSupported) {
        cudaGetLastError();
        return BM_OK;
    }
    if (e != cudaSuccess) return bmc_fail_cuda(e, "planning the fused decode step");
    bmc_fused_layer *host = (bmc_fused_layer *)bmi_calloc((size_t)c->n_layers, sizeof *host);
    if (!host) return bmi_fail(BM_ERR_OUT_OF_MEMORY, "out of memory for the fused step's layer table");
    for (int i = 0; i < c->n_layers; i++) {
        const dev_layer *L = &cm->layers[i];
        bmc_fused_layer *f = &host[i];
        f->mamba = L->has_mamba;
        f->n_experts = L->n_experts;
        f->norm = L->norm;
        if (L->has_mamba) {
            const dev_mamba *w = &L->mamba;
            f->in_proj = w->in_proj;
            f->x_proj = w->x_proj;
            f->dt_proj = w->dt_proj;
            f->out_proj = w->out_proj;
            f->in_proj_bias = w->in_proj_bias;
            f->conv_w = w->conv_w;
            f->conv_b = w->conv_b;
            f->dt_bias = w->dt_bias;
            f->A = w->A;
            f->D = w->D;
            f->out_proj_bias = w->out_proj_bias;
            f->conv_offset = (long long)bmi_state_conv_offset(c, L->mamba_index);
            f->ssm_offset = (long long)bmi_state_ssm_offset(c, L->mamba_index);
        } else {
            f->router_w = L->router_w;
            f->router_b = L->router_b;
            f->fc1 = L->fc1;
            f->fc2 = L->fc2;
            f->fc1_bias = L->fc1_bias;
            f->fc2_bias = L->fc2_bias;
        }
    }
    if (!(cm->fused_mamba = (int *)bmi_malloc((size_t)c->n_layers * sizeof(int)))) {
        bmi_free(host);
        return bmi_fail(BM_ERR_OUT_OF_MEMORY, "out of memory for the fused step's layer table");
    }
    for (int i = 0; i < c->n_layers; i++) cm->fused_mamba[i] = c->layers[i].has_mamba;
    a->trace_words = (int)bmc_fused_trace_words(a, cm->fused_mamba);
    const size_t bytes = (size_t)c->n_layers * sizeof *host;
    e = cudaMalloc((void **)&cm->fused_layers, bytes);
    if (e == cudaSuccess) e = cudaMemcpy(cm->fused_layers, host, bytes, cudaMemcpyHostToDevice);
    bmi_free(host);
    if (e != cudaSuccess) return bmc_fail_cuda(e, "uploading the fused step's layer table");
    a->layers = cm->fused_layers;
    cm->fused_ok = 1;
    return BM_OK;
}

static bm_status model_init(bm_model *m, const bm_model_params *p) {
    const bmi_config *c = &m->config;
    if (!bmi_cuda_available(p->device))
        return bmi_fail(BM_ERR_DEVICE, "CUDA backend: no usable GPU %d (no driver, no device, or compute capability "
                                       "below 8.0)",
                        (int)p->device);
    bm_status st = check_supported(c);
    if (st) return st;
    cuda_model *cm = (cuda_model *)bmi_calloc(1, sizeof *cm);
    dev_layer *layers = (dev_layer *)bmi_calloc((size_t)c->n_layers, sizeof *layers);
    if (!cm || !layers) {
        bmi_free(cm);
        bmi_free(layers);
        return bmi_fail(BM_ERR_OUT_OF_MEMORY, "out of memory for the CUDA model");
    }
    cm->layers = layers;
    cm->device = p->device;
    m->backend_ctx = cm;
    /* One 16-bit type on the device: f16 when the checkpoint's matrices are
     * all f16, else bf16 (f32 checkpoints are converted). */
    cm->wtype = m->weights.embedding.dtype == BMI_F16 ? BMC_F16 : BMC_BF16;
    for (int i = 0; i < c->n_layers && cm->wtype == BMC_F16; i++)
        if (c->layers[i].has_mamba && m->weights.layers[i].mamba.in_proj.dtype != BMI_F16) cm->wtype = BMC_BF16;
    cudaDeviceProp prop;
    uploader u;
    memset(&u, 0, sizeof u);
    cudaError_t e = cudaSetDevice(cm->device);
    if (e == cudaSuccess) e = cudaGetDeviceProperties(&prop, cm->device);
    if (e != cudaSuccess) {
        st = bmc_fail_cuda(e, "cudaGetDeviceProperties");
        goto fail;
    }
    cm->sm_count = prop.multiProcessorCount;
    bmc_moe_sm90_probe(); /* before any capture: the expert GEMM's choice reads the cached answer */
    {
        const char *env = getenv("BM_CUDA_PDL");
        cm->pdl = prop.major >= 9 && !(env && env[0] == '0');
        /* Measurement switch: BM_CUDA_FUSED_ROUTE=1 routes inside out_proj. */
        env = getenv("BM_CUDA_FUSED_ROUTE");
        cm->fuse_routing = env && env[0] == '1'; /* measured slower on the H100 (docs/PERF.md): off by default */
        /* BM_CUDA_L2_PREFETCH=1: L2 prefetch of later kernels' weights in
         * decode; measured slower on the H100 (docs/PERF.md), so off. */
        env = getenv("BM_CUDA_L2_PREFETCH");
        cm->l2_prefetch = prop.major >= 9 && env && env[0] == '1';
        /* Batches from this many streams up take the row path (GEMMs over the
         * rows); below, the GEMV path. Measured crossover: docs/PERF.md. */
        env = getenv("BM_CUDA_ROWS_MIN");
        cm->rows_min = env && atoi(env) > 0 ? atoi(env) : BMC_ROWS_MIN_DEFAULT;
        cm->debug_skip = bmc_parse_debug_skip(getenv("BM_CUDA_DEBUG_SKIP"));
    }
    cm->max_experts = 1;
    for (int i = 0; i < c->n_layers; i++)
        if (c->layers[i].n_experts > cm->max_experts) cm->max_experts = c->layers[i].n_experts;
    u.dry = 1;
    upload_model(&u, m, cm);
    cm->pool_bytes = u.used;
    /* + 256: the fused decode step copies whole 16-byte pieces around rows */
    if ((e = cudaMalloc((void **)&cm->pool, cm->pool_bytes + 256)) != cudaSuccess) {
        st = bmc_fail_cuda(e, "cudaMalloc for the weights");
        goto fail;
    }
    u.dry = 0;
    u.used = 0;
    u.pool = cm->pool;
    e = cudaStreamCreateWithFlags(&u.stream, cudaStreamNonBlocking);
    for (int i = 0; i < 2 && e == cudaSuccess; i++) e = cudaMallocHost((void **)&u.pinned[i], STAGE_BYTES);
    for (int i = 0; i < 2 && e == cudaSuccess; i++) e = cudaEventCreateWithFlags(&u.drained[i], cudaEventDisableTiming);
    if (e == cudaSuccess) {
        upload_model(&u, m, cm);
        e = u.err;
    }
    if (e == cudaSuccess) e = cudaStreamSynchronize(u.stream);
    for (int i = 0; i < 2; i++) {
        if (u.pinned[i]) cudaFreeHost(u.pinned[i]);
        if (u.drained[i]) cudaEventDestroy(u.drained[i]);
    }
    if (u.stream) cudaStreamDestroy(u.stream);
    if (e != cudaSuccess) {
        st = bmc_fail_cuda(e, "uploading the weights");
        goto fail;
    }
    {
        /* Each layer flips the decode step's residual buffer once. */
        int cur = 0;
        for (int i = 0; i < c->n_layers; i++) cur ^= 1;
        cm->final_res = cur;
    }
    if ((st = plan_fused_step(m, cm))) goto fail;
    return BM_OK;
fail:
    model_release(m);
    return st;
}

size_t bmi_cuda_weight_bytes(const bm_model *m) {
    const cuda_model *cm = m && m->backend == &bmi_cuda_backend ? ctx_of(m) : NULL;
    return cm ? cm->pool_bytes : 0;
}

/* ---- states ----------------------------------------------------------------
 * State operations are rare (new, reset, fork, save, load), so they simply
 * drain the device first and finish before returning: a step still running
 * on some session's stream can never race them. */

static bm_status state_alloc(const bm_model *m, void **data) {
    BMC_TRY(cudaSetDevice(ctx_of(m)->device), "cudaSetDevice");
    void *p = NULL;
    size_t bytes = (m->state_floats ? m->state_floats : 1) * sizeof(float);
    BMC_TRY(cudaMalloc(&p, bytes), "cudaMalloc for a state");
    cudaError_t e = cudaMemset(p, 0, bytes);
    if (e == cudaSuccess) e = cudaDeviceSynchronize();
    if (e != cudaSuccess) {
        cudaFree(p);
        return bmc_fail_cuda(e, "clearing a new state");
    }
    *data = p;
    return BM_OK;
}

static void state_free(const bm_model *m, void *data) {
    cudaSetDevice(ctx_of(m)->device);
    cudaFree(data);
}

static bm_status state_zero(const bm_model *m, void *data) {
    BMC_TRY(cudaSetDevice(ctx_of(m)->device), "cudaSetDevice");
    BMC_TRY(cudaDeviceSynchronize(), "waiting for the device");
    BMC_TRY(cudaMemset(data, 0, m->state_floats * sizeof(float)), "cudaMemset of a state");
    BMC_TRY(cudaDeviceSynchronize(), "clearing a state");
    return BM_OK;
}

static bm_status state_copy(const bm_model *m, void *dst, const void *src) {
    BMC_TRY(cudaSetDevice(ctx_of(m)->device), "cudaSetDevice");
    BMC_TRY(cudaDeviceSynchronize(), "waiting for the device");
    BMC_TRY(cudaMemcpy(dst, src, m->state_floats * sizeof(float), cudaMemcpyDeviceToDevice), "copying a state");
    BMC_TRY(cudaDeviceSynchronize(), "copying a state");
    return BM_OK;
}

/* Host states are canonical; on the device each layer's ssm state is in
 * the scan kernels' plane layout (bmc_ssm_index), so both directions move
 * the bytes as they are and then put each layer's ssm part in place through
 * a buffer of one layer. */
static bm_status ssm_scratch(const bm_model *m, float **buf) {
    *buf = (float *)malloc((size_t)m->config.d_inner * BMC_D_STATE * sizeof(float));
    return *buf ? BM_OK : bmi_fail(BM_ERR_OUT_OF_MEMORY, "no host memory to convert a state's layout");
}

static bm_status state_download(const bm_model *m, const void *data, float *host) {
    const bmi_config *c = &m->config;
    float *layer;
    bm_status st = ssm_scratch(m, &layer);
    if (st != BM_OK) return st;
    cudaError_t e = cudaSetDevice(ctx_of(m)->device);
    if (e == cudaSuccess) e = cudaDeviceSynchronize();
    if (e == cudaSuccess) e = cudaMemcpy(host, data, m->state_floats * sizeof(float), cudaMemcpyDeviceToHost);
    if (e == cudaSuccess)
        for (int mi = 0; mi < m->n_mamba_layers; mi++) {
            float *ssm = host + bmi_state_ssm_offset(c, mi);
            memcpy(layer, ssm, (size_t)c->d_inner * BMC_D_STATE * sizeof(float));
            bmc_ssm_layout(ssm, layer, c->d_inner, 0);
        }
    free(layer);
    return e == cudaSuccess ? BM_OK : bmc_fail_cuda(e, "downloading a state");
}

/* A device error part-way leaves the state part old, part new (as a failed
 * single copy could); it is reported. */
static bm_status state_upload(const bm_model *m, void *data, const float *host) {
    const bmi_config *c = &m->config;
    float *layer;
    bm_status st = ssm_scratch(m, &layer);
    if (st != BM_OK) return st;
    cudaError_t e = cudaSetDevice(ctx_of(m)->device);
    if (e == cudaSuccess) e = cudaDeviceSynchronize();
    if (e == cudaSuccess) e = cudaMemcpy(data, host, m->state_floats * sizeof(float), cudaMemcpyHostToDevice);
    for (int mi = 0; e == cudaSuccess && mi < m->n_mamba_layers; mi++) {
        const size_t at = bmi_state_ssm_offset(c, mi);
        bmc_ssm_layout(layer, host + at, c->d_inner, 1);
        e = cudaMemcpy((float *)data + at, layer, (size_t)c->d_inner * BMC_D_STATE * sizeof(float),
                       cudaMemcpyHostToDevice);
    }
    if (e == cudaSuccess) e = cudaDeviceSynchronize();
    free(layer);
    return e == cudaSuccess ? BM_OK : bmc_fail_cuda(e, "uploading a state");
}

/* ---- sessions -------------------------------------------------------------- */

static void session_release(bm_session *s) {
    cuda_session *cs = (cuda_session *)s->backend_ctx;
    if (!cs) return;
    cudaSetDevice(ctx_of(s->model)->device);
    if (cs->stream) cudaStreamSynchronize(cs->stream);
    for (int i = 0; i <= BMC_MAX_STEP_ROWS; i++)
        for (int j = 0; j < 2; j++)
            if (cs->graphs[i][j]) cudaGraphExecDestroy(cs->graphs[i][j]);
    bmc_rows_release(cs);
    if (cs->fused_trace) {
        const cuda_model *cm = ctx_of(s->model);
        const size_t n = (size_t)cm->fused.grid * (size_t)cm->fused.trace_words;
        unsigned long long *host = (unsigned long long *)bmi_malloc(n * 8);
        if (host && cudaMemcpy(host, cs->fused_trace, n * 8, cudaMemcpyDeviceToHost) == cudaSuccess)
            bmc_fused_trace_print(&cm->fused, cm->fused_mamba, host, stderr);
        bmi_free(host);
        cudaFree(cs->fused_trace);
    }
    if (cs->inputs_consumed) cudaEventDestroy(cs->inputs_consumed);
    if (cs->ps.mem) cudaFree(cs->ps.mem);
    if (cs->step_mem) cudaFree(cs->step_mem);
    if (cs->workspace) cudaFree(cs->workspace);
    if (cs->pinned) cudaFreeHost(cs->pinned);
    if (cs->gemm_cache) bmc_gemm_cache_free(cs->gemm_cache);
    if (cs->lt) cublasLtDestroy(cs->lt);
    if (cs->stream) cudaStreamDestroy(cs->stream);
    bmi_free(cs);
    s->backend_ctx = NULL;
}

static bm_status session_init(bm_session *s) {
    const bm_model *m = s->model;
    const bmi_config *c = &m->config;
    cuda_model *cm = ctx_of(m);
    cuda_session *cs = (cuda_session *)bmi_calloc(1, sizeof *cs);
    if (!cs) return bmi_fail(BM_ERR_OUT_OF_MEMORY, "out of memory for a session");
    s->backend_ctx = cs;
    bm_status st = BM_OK;
    cudaError_t e = cudaSetDevice(cm->device);
    if (e == cudaSuccess) e = cudaStreamCreateWithFlags(&cs->stream, cudaStreamNonBlocking);
    if (e == cudaSuccess) e = cudaEventCreateWithFlags(&cs->inputs_consumed, cudaEventDisableTiming);
    if (e == cudaSuccess) e = cudaMalloc(&cs->workspace, BMC_WORKSPACE_BYTES);
    if (e != cudaSuccess) {
        st = bmc_fail_cuda(e, "creating a session");
        goto fail;
    }
    if (cublasLtCreate(&cs->lt) != CUBLAS_STATUS_SUCCESS) {
        st = bmi_fail(BM_ERR_DEVICE, "CUDA: cublasLtCreate failed");
        goto fail;
    }
    if (!(cs->gemm_cache = bmc_gemm_cache_new())) {
        st = bmi_fail(BM_ERR_OUT_OF_MEMORY, "out of memory for a session");
        goto fail;
    }
    {
        /* Decode scratch: fixed size, so a captured graph's pointers stay valid. */
        const size_t B = BMC_MAX_STEP_ROWS, d = (size_t)c->d_model, di = (size_t)c->d_inner;
        const size_t F = (size_t)(c->ffn_hidden > 0 ? c->ffn_hidden : 1), V = (size_t)c->vocab_size;
        const size_t xd = (size_t)(c->dt_rank + 2 * c->d_state);
        const size_t partials = (size_t)bmc_gemv_max_blocks(c->d_model) * B * (1 + BMC_MAX_FUSED_EXPERTS);
        size_t floats[] = {B * d, B * d, B * d, B * d, B * 2 * di, B * xd, B * di, B * F, B * V, B, B, partials, 64, 64};
        float **dst[] = {&cs->res[0], &cs->res[1], &cs->h, &cs->normed, &cs->xz, &cs->xdbl, &cs->yg, &cs->m,
                         &cs->logits, &cs->gates, &cs->scales, &cs->route_partials, (float **)&cs->route_counter,
                         (float **)&cs->grid_barrier};
        const int n_f = (int)(sizeof floats / sizeof floats[0]);
        size_t total = 0;
        for (int i = 0; i < n_f; i++) total += (floats[i] * 4 + 255) & ~(size_t)255;
        const size_t ints = 3 * B * B + 3 * 1024 + 2 * B;
        total += ints * 8 + 1024;
        if ((e = cudaMalloc((void **)&cs->step_mem, total)) != cudaSuccess ||
            (e = cudaMemset(cs->step_mem, 0, total)) != cudaSuccess) {
            st = bmc_fail_cuda(e, "cudaMalloc for decode scratch");
            goto fail;
        }
        char *p = cs->step_mem;
        for (int i = 0; i < n_f; i++) {
            *dst[i] = (float *)p;
            p += (floats[i] * 4 + 255) & ~(size_t)255;
        }
        cs->slot_expert = (int *)p;
        cs->slot_count = cs->slot_expert + B;
        cs->slot_rows = cs->slot_count + B;
        cs->d_tokens = (int32_t *)(cs->slot_rows + B * B);
        cs->d_sampled = cs->d_tokens + B;
        cs->d_recent = cs->d_sampled + 8;
        cs->d_state_ptrs = (float **)(((uintptr_t)(cs->d_recent + 1024) + 15) & ~(uintptr_t)15);
    }
    if (cm->fused_ok && getenv("BM_CUDA_FUSED_TRACE") && getenv("BM_CUDA_FUSED_TRACE")[0] == '1' &&
        cudaMalloc((void **)&cs->fused_trace, (size_t)cm->fused.grid * cm->fused.trace_words * 8) != cudaSuccess)
        cs->fused_trace = NULL;
    {
        const size_t bytes = 4096 + BMC_PREFILL_ROWS * 4 + 1024 * 4;
        if ((e = cudaMallocHost((void **)&cs->pinned, bytes)) != cudaSuccess) {
            st = bmc_fail_cuda(e, "cudaMallocHost");
            goto fail;
        }
        memset(cs->pinned, 0, bytes);
        cs->h_state_ptrs = (float **)cs->pinned;                      /* 8 pointers */
        cs->h_tokens = (int32_t *)(cs->pinned + 128);
        cs->h_sampled = (int32_t *)(cs->pinned + 256);
        cs->h_starts = (int *)(cs->pinned + 512);                     /* up to 65 ints */
        cs->h_prefill_tokens = (int32_t *)(cs->pinned + 4096);
        cs->h_recent = cs->h_prefill_tokens + BMC_PREFILL_ROWS;
    }
    (void)cm;
    return BM_OK;
fail:
    session_release(s);
    return st;
}

static bm_status prefill(bm_session *s, bm_state *st, const int32_t *tokens, size_t n, float *logits,
                         int all_positions) {
    return bmc_forward_prefill(s, st, tokens, n, logits, all_positions);
}

static bm_status prefill_batch(bm_session *s, bm_state *const *states, const int32_t *const *tokens,
                               const size_t *n_tokens, size_t n, float *logits) {
    return bmc_forward_prefill_batch(s, states, tokens, n_tokens, n, logits);
}

static bm_status step_batch(bm_session *s, bm_state *const *states, const int32_t *tokens, size_t n, float *logits) {
    return bmc_forward_step_batch(s, states, tokens, n, logits);
}

extern "C" bm_status bmi_cuda_step_sample(bm_session *s, bm_state *st, int32_t token, const bm_sampler_params *p,
                                          uint64_t *rng, const int32_t *recent, size_t n_recent, int32_t *next) {
    if (!s || !st || !rng || !next) return bmi_fail(BM_ERR_INVALID_ARGUMENT, "bmi_cuda_step_sample: NULL argument");
    if (s->model->backend != &bmi_cuda_backend)
        return bmi_fail(BM_ERR_UNSUPPORTED, "bmi_cuda_step_sample: the model does not run on the CUDA backend");
    if (st->model != s->model) return bmi_fail(BM_ERR_MISMATCH, "bmi_cuda_step_sample: the state belongs to another model");
    if (token < 0 || token >= s->model->config.vocab_size)
        return bmi_fail(BM_ERR_INVALID_ARGUMENT, "bmi_cuda_step_sample: token %d out of range", (int)token);
    bm_state *states[1] = {st};
    return bmc_forward_step_batch_sample(s, states, &token, 1, p, rng, recent, n_recent, next);
}

static bm_status step_batch_sample(bm_session *s, bm_state *const *states, const int32_t *tokens, size_t n,
                                   const bm_sampler_params *p, uint64_t *rngs, int32_t *out_tokens) {
    return bmc_forward_step_batch_sample(s, states, tokens, n, p, rngs, NULL, 0, out_tokens);
}

const bmi_backend bmi_cuda_backend = {
    /* .name = */ "cuda",
    /* .kind = */ BM_BACKEND_CUDA,
    /* .model_init = */ model_init,
    /* .model_release = */ model_release,
    /* .state_alloc = */ state_alloc,
    /* .state_free = */ state_free,
    /* .state_zero = */ state_zero,
    /* .state_copy = */ state_copy,
    /* .state_download = */ state_download,
    /* .state_upload = */ state_upload,
    /* .session_init = */ session_init,
    /* .session_release = */ session_release,
    /* .prefill = */ prefill,
    /* .step_batch = */ step_batch,
    /* .prefill_batch = */ prefill_batch,
    /* .step_batch_sample = */ step_batch_sample,
};

/* ---- measurements for bm-bench ------------------------------------------------ */

extern "C" bm_status bmi_cuda_device_info(int device, char *name, size_t cap, size_t *free_bytes, size_t *total_bytes) {
    if (!bmi_cuda_available(device)) return bmi_fail(BM_ERR_DEVICE, "no usable GPU %d", device);
    cudaDeviceProp prop;
    BMC_TRY(cudaSetDevice(device), "cudaSetDevice");
    BMC_TRY(cudaGetDeviceProperties(&prop, device), "cudaGetDeviceProperties");
    if (name && cap) {
        strncpy(name, prop.name, cap - 1);
        name[cap - 1] = '\0';
    }
    size_t f = 0, t = 0;
    BMC_TRY(cudaMemGetInfo(&f, &t), "cudaMemGetInfo");
    if (free_bytes) *free_bytes = f;
    if (total_bytes) *total_bytes = t;
    return BM_OK;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static __global__ void fill_random_kernel(uint32_t *p, size_t n, uint32_t seed) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        uint32_t x = (uint32_t)i * 2654435761u ^ seed;
        x ^= x >> 15;
        x *= 2246822519u;
        x ^= x >> 13;
        /* bf16 pairs in [-1, 1): keep sign and a small exponent */
        p[i] = (x & 0x807f807fu) | 0x3f003f00u;
    }
}

extern "C" bm_status bmi_cuda_measure_copy(int device, size_t bytes, int reps, double *bytes_per_second) {
    if (reps < 1 || reps > 1000) reps = 20;
    BMC_TRY(cudaSetDevice(device), "cudaSetDevice");
    void *a = NULL, *b = NULL;
    cudaEvent_t t0 = NULL, t1 = NULL;
    double times[1000];
    cudaError_t e = cudaMalloc(&a, bytes);
    if (e == cudaSuccess) e = cudaMalloc(&b, bytes);
    if (e == cudaSuccess) fill_random_kernel<<<1024, 256>>>((uint32_t *)a, bytes / 4, 7), e = cudaGetLastError();
    if (e == cudaSuccess) e = cudaEventCreate(&t0);
    if (e == cudaSuccess) e = cudaEventCreate(&t1);
    for (int i = -3; i < reps && e == cudaSuccess; i++) {
        e = cudaEventRecord(t0);
        if (e == cudaSuccess) e = cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice);
        if (e == cudaSuccess) e = cudaEventRecord(t1);
        if (e == cudaSuccess) e = cudaEventSynchronize(t1);
        float ms = 0;
        if (e == cudaSuccess) e = cudaEventElapsedTime(&ms, t0, t1);
        if (i >= 0) times[i] = ms;
    }
    if (a) cudaFree(a);
    if (b) cudaFree(b);
    if (t0) cudaEventDestroy(t0);
    if (t1) cudaEventDestroy(t1);
    if (e != cudaSuccess) return bmc_fail_cuda(e, "measuring copy bandwidth");
    qsort(times, (size_t)reps, sizeof times[0], cmp_double);
    *bytes_per_second = 2.0 * (double)bytes / (times[reps / 2] * 1e-3);
    return BM_OK;
}

extern "C" bm_status bmi_cuda_measure_gemm(int device, int m, int n, int k, int reps, double *flops_per_second) {
    if (reps < 1 || reps > 1000) reps = 20;
    BMC_TRY(cudaSetDevice(device), "cudaSetDevice");
    void *x = NULL, *w = NULL, *y = NULL, *ws = NULL;
    cublasLtHandle_t lt = NULL;
    bmc_gemm_cache *cache = bmc_gemm_cache_new();
    cudaEvent_t t0 = NULL, t1 = NULL;
    double times[1000];
    const char *what = "";
    bm_status st = BM_OK;
    cudaError_t e = cache ? cudaSuccess : cudaErrorMemoryAllocation;
    if (e == cudaSuccess) e = cudaMalloc(&x, (size_t)m * k * 2);
    if (e == cudaSuccess) e = cudaMalloc(&w, (size_t)n * k * 2);
    if (e == cudaSuccess) e = cudaMalloc(&y, (size_t)m * n * 2);
    if (e == cudaSuccess) e = cudaMalloc(&ws, BMC_WORKSPACE_BYTES);
    if (e == cudaSuccess) fill_random_kernel<<<1024, 256>>>((uint32_t *)x, (size_t)m * k / 2, 1), e = cudaGetLastError();
    if (e == cudaSuccess) fill_random_kernel<<<1024, 256>>>((uint32_t *)w, (size_t)n * k / 2, 2), e = cudaGetLastError();
    if (e == cudaSuccess) e = cudaEventCreate(&t0);
    if (e == cudaSuccess) e = cudaEventCreate(&t1);
    if (e == cudaSuccess && cublasLtCreate(&lt) != CUBLAS_STATUS_SUCCESS) st = bmi_fail(BM_ERR_DEVICE, "cublasLtCreate");
    if (e != cudaSuccess) st = bmc_fail_cuda(e, "setting up the GEMM measurement");
    bmc_gemm_args g = {m, n, k, x, k, BMC_BF16, w, k, y, n, BMC_GEMM_OUT_16};
    for (int i = -3; i < reps && st == BM_OK; i++) {
        cudaEventRecord(t0);
        int r = bmc_gemm(lt, cache, ws, BMC_WORKSPACE_BYTES, &g, 0, &what);
        if (r) {
            st = bmi_fail(BM_ERR_DEVICE, "cuBLASLt: %s failed with status %d", what, r);
            break;
        }
        cudaEventRecord(t1);
        if ((e = cudaEventSynchronize(t1)) != cudaSuccess) {
            st = bmc_fail_cuda(e, "GEMM measurement");
            break;
        }
        float ms = 0;
        cudaEventElapsedTime(&ms, t0, t1);
        if (i >= 0) times[i] = ms;
    }
    if (x) cudaFree(x);
    if (w) cudaFree(w);
    if (y) cudaFree(y);
    if (ws) cudaFree(ws);
    if (t0) cudaEventDestroy(t0);
    if (t1) cudaEventDestroy(t1);
    bmc_gemm_cache_free(cache);
    if (lt) cublasLtDestroy(lt);
    if (st) return st;
    qsort(times, (size_t)reps, sizeof times[0], cmp_double);
    *flops_per_second = 2.0 * m * (double)n * k / (times[reps / 2] * 1e-3);
    return BM_OK;
}

extern "C" bm_status bmi_cuda_sample_logits(int device, const float *logits, size_t n, const bm_sampler_params *p,
                                            uint64_t *rng, const int32_t *recent, size_t n_recent, int32_t *token) {
    bm_sampler_params defaults;
    if (!p) {
        bm_sampler_params_init(&defaults);
        p = &defaults;
    }
    if (!logits || !rng || !token || n == 0 || n_recent > 1024)
        return bmi_fail(BM_ERR_INVALID_ARGUMENT, "bmi_cuda_sample_logits: bad arguments");
    BMC_TRY(cudaSetDevice(device), "cudaSetDevice");
    float *d_logits = NULL;
    int32_t *d_recent = NULL, *d_token = NULL;
    int32_t out = -3;
    cudaError_t e = cudaMalloc((void **)&d_logits, n * 4);
    if (e == cudaSuccess) e = cudaMalloc((void **)&d_recent, (n_recent + 1) * 4);
    if (e == cudaSuccess) e = cudaMalloc((void **)&d_token, 4);
    if (e == cudaSuccess) e = cudaMemcpy(d_logits, logits, n * 4, cudaMemcpyHostToDevice);
    if (e == cudaSuccess && n_recent) e = cudaMemcpy(d_recent, recent, n_recent * 4, cudaMemcpyHostToDevice);
    uint64_t next_rng = *rng;
    const double u = bmi_rng_uniform(&next_rng);
    if (e == cudaSuccess) {
        bmc_sample_args a;
        memset(&a, 0, sizeof a);
        a.logits = d_logits;
        a.ld = (long long)n;
        a.rows = 1;
        a.n_valid = p->n_vocab_valid > 0 ? p->n_vocab_valid : (int)n;
        a.temperature = p->temperature;
        a.top_p = p->top_p;
        a.min_p = p->min_p;
        a.repeat_penalty = p->repeat_penalty;
        a.top_k = p->top_k;
        a.recent = d_recent;
        a.n_recent = (int)n_recent;
        a.u[0] = u;
        a.tokens = d_token;
        e = bmc_sample(&a, 0);
    }
    if (e == cudaSuccess) e = cudaMemcpy(&out, d_token, 4, cudaMemcpyDeviceToHost);
    cudaFree(d_logits);
    cudaFree(d_recent);
    cudaFree(d_token);
    if (e != cudaSuccess) return bmc_fail_cuda(e, "device sampling");
    if (out == -1) return bmi_fail(BM_ERR_INVALID_ARGUMENT, "bm_sample: no candidate: all logits are NaN or -inf");
    if (out == -2) return bmi_fail(BM_ERR_UNSUPPORTED, "device sampling: too many candidates for the device sampler");
    *rng = next_rng;
    *token = out;
    return BM_OK;
}
