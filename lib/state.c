/* bm_state: one stream's recurrent state; save/load in the byte layout of
 * docs/STATE_FORMAT.md. */
#include "model.h"

#define STATE_MAGIC "BMSTATE"
#define STATE_VERSION 1u
#define STATE_HEADER_BYTES 64u

BM_API bm_status bm_state_new(const bm_model *m, bm_state **out) {
    if (!m || !out) return bmi_fail(BM_ERR_INVALID_ARGUMENT, "bm_state_new: NULL argument");
    bm_state *s = bmi_calloc(1, sizeof *s);
    if (!s) return bmi_fail(BM_ERR_OUT_OF_MEMORY, "out of memory for a state");
    s->model = m;
    bm_status st = m->backend->state_alloc(m, &s->data);
    if (st) {
        bmi_free(s);
        return st;
    }
    *out = s;
    return BM_OK;
}

BM_API void bm_state_free(bm_state *s) {
    if (!s) return;
    s->model->backend->state_free(s->model, s->data);
    bmi_free(s);
}

BM_API bm_status bm_state_reset(bm_state *s) {
    if (!s) return bmi_fail(BM_ERR_INVALID_ARGUMENT, "bm_state_reset: NULL state");
    bm_status st = s->model->backend->state_zero(s->model, s->data);
    if (st == BM_OK) s->n_tokens = 0;
    return st;
}

BM_API bm_status bm_state_copy(bm_state *dst, const bm_state *src) {
    if (!dst || !src) return bmi_fail(BM_ERR_INVALID_ARGUMENT, "bm_state_copy: NULL state");
    if (dst->model != src->model)
        return bmi_fail(BM_ERR_MISMATCH, "bm_state_copy: the states belong to different models");
    if (dst == src) return BM_OK;
    bm_status st = src->model->backend->state_copy(src->model, dst->data, src->data);
    if (st == BM_OK) dst->n_tokens = src->n_tokens;
    return st;
}

BM_API uint64_t bm_state_n_tokens(const bm_state *s) { return s ? s->n_tokens : 0; }

static void put32(unsigned char *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i));
}
static void put64(unsigned char *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i));
}

static size_t saved_size(const bm_model *m) { return STATE_HEADER_BYTES + m->state_floats * 4; }

/* Checksum of the header (minus the checksum field) and the payload. */
static uint64_t state_checksum(const unsigned char *buf, size_t len) {
    uint64_t h = bmi_hash64(0, buf, 56);
    return bmi_hash64(h, buf + STATE_HEADER_BYTES, len - STATE_HEADER_BYTES);
}

BM_API bm_status bm_state_save(const bm_state *s, void *buf, size_t cap, size_t *len) {
    if (!s || !len) return bmi_fail(BM_ERR_INVALID_ARGUMENT, "bm_state_save: NULL argument");
    const bm_model *m = s->model;
    const bmi_config *c = &m->config;
    size_t need = saved_size(m);
    if (!buf) return *len = need, BM_OK;
    if (cap < need) {
        *len = need;
        return bmi_fail(BM_ERR_BUFFER_TOO_SMALL, "bm_state_save needs %zu bytes, the buffer has %zu", need, cap);
    }
    unsigned char *out = buf;
    float *host = (float *)(out + STATE_HEADER_BYTES);
    /* The payload lands in place; written as little-endian floats. */
    bm_status st = m->backend->state_download(m, s->data, host);
    if (st) return st;
    for (size_t i = 0; i < m->state_floats; i++) {
        uint32_t u;
        memcpy(&u, &host[i], 4);
        put32((unsigned char *)&host[i], u);
    }
    memset(out, 0, STATE_HEADER_BYTES);
    memcpy(out, STATE_MAGIC, 8);
    put32(out + 8, STATE_VERSION);
    put32(out + 12, STATE_HEADER_BYTES);
    put64(out + 16, m->fingerprint);
    put64(out + 24, s->n_tokens);
    put32(out + 32, (uint32_t)m->n_mamba_layers);
    put32(out + 36, (uint32_t)c->d_inner);
    put32(out + 40, (uint32_t)(c->d_conv - 1));
    put32(out + 44, (uint32_t)c->d_state);
    put64(out + 48, (uint64_t)m->state_floats * 4);
    put64(out + 56, state_checksum(out, need));
    *len = need;
    return BM_OK;
}

BM_API bm_status bm_state_load(bm_state *s, const void *buf, size_t len) {
    if (!s || !buf) return bmi_fail(BM_ERR_INVALID_ARGUMENT, "bm_state_load: NULL argument");
    const bm_model *m = s->model;
    const bmi_config *c = &m->config;
    const unsigned char *in = buf;
    if (len < STATE_HEADER_BYTES || memcmp(in, STATE_MAGIC, 8) != 0)
        return bmi_fail(BM_ERR_FORMAT, "bm_state_load: not a saved libblackmamba state");
    if (bmi_rd32(in + 8) != STATE_VERSION || bmi_rd32(in + 12) != STATE_HEADER_BYTES)
        return bmi_fail(BM_ERR_FORMAT, "bm_state_load: state format version %u is not supported", bmi_rd32(in + 8));
    uint64_t payload = bmi_rd64(in + 48);
    if (payload != len - STATE_HEADER_BYTES)
        return bmi_fail(BM_ERR_FORMAT, "bm_state_load: %zu bytes given, the header says %llu", len,
                        (unsigned long long)(payload + STATE_HEADER_BYTES));
    if (bmi_rd64(in + 56) != state_checksum(in, len))
        return bmi_fail(BM_ERR_FORMAT, "bm_state_load: checksum mismatch: the saved state is corrupt");
    if (bmi_rd64(in + 16) != m->fingerprint || bmi_rd32(in + 32) != (uint32_t)m->n_mamba_layers ||
        bmi_rd32(in + 36) != (uint32_t)c->d_inner || bmi_rd32(in + 40) != (uint32_t)(c->d_conv - 1) ||
        bmi_rd32(in + 44) != (uint32_t)c->d_state || payload != (uint64_t)m->state_floats * 4)
        return bmi_fail(BM_ERR_MISMATCH, "bm_state_load: the state was saved from another model");
    float *host = bmi_malloc(m->state_floats * sizeof *host);
    if (!host) return bmi_fail(BM_ERR_OUT_OF_MEMORY, "out of memory loading a state");
    for (size_t i = 0; i < m->state_floats; i++) {
        uint32_t u = bmi_rd32(in + STATE_HEADER_BYTES + 4 * i);
        memcpy(&host[i], &u, 4);
    }
    bm_status st = m->backend->state_upload(m, s->data, host);
    bmi_free(host);
    if (st == BM_OK) s->n_tokens = bmi_rd64(in + 24);
    return st;
}
