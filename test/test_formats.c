/* Tests of the checkpoint readers (lib/safetensors.c, lib/torch.c): the two
 * fixture formats must give the same tensors, and hostile inputs (truncated,
 * bit-flipped, hand-built archives and pickles) must fail cleanly with a
 * message, never crash, never leak, and never produce a view outside the
 * bytes. Run under ASan/UBSan to make "never" mean something. */
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "tensor.h"
#include "zip.h"

typedef bm_status (*parse_fn)(const void *, size_t, bmi_tensor_table *);

/* ---- helpers -------------------------------------------------------------- */

static uint8_t *dup_bytes(const void *p, size_t n) {
    uint8_t *d = malloc(n ? n : 1);
    if (!d) abort();
    if (n) memcpy(d, p, n);
    return d;
}

static uint8_t *read_whole(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *p = malloc(n > 0 ? (size_t)n : 1);
    if (!p || fread(p, 1, (size_t)n, f) != (size_t)n) abort();
    fclose(f);
    *len = (size_t)n;
    return p;
}

static void fixture_path(char *out, size_t cap, const char *fixture, const char *file) {
    snprintf(out, cap, "%s/fixtures/%s/%s", check_shared_dir(), fixture, file);
}

static int table_is_empty(const bmi_tensor_table *t) {
    return t->count == 0 && t->items == NULL && t->map.addr == NULL;
}

/* 1 when the view lies inside buf[0, len) and nbytes matches what its shape
 * and strides reach. */
static int view_ok(const bmi_tensor *t, const uint8_t *buf, size_t len) {
    size_t es = bmi_dtype_size(t->dtype);
    if (!es || !t->name || t->ndim < 0 || t->ndim > BMI_MAX_DIMS) return 0;
    const uint8_t *d = t->data;
    if (d < buf || d > buf + len || t->nbytes > (size_t)(buf + len - d)) return 0;
    int empty = 0;
    for (int i = 0; i < t->ndim; i++) {
        if (t->shape[i] < 0 || t->stride[i] < 0) return 0;
        if (t->shape[i] == 0) empty = 1;
    }
    if (empty) return t->nbytes == 0;
    uint64_t reach = 0;
    for (int i = 0; i < t->ndim; i++) {
        uint64_t s = (uint64_t)t->shape[i] - 1, st = (uint64_t)t->stride[i];
        if (st && s > UINT64_MAX / st) return 0;
        if (s * st > UINT64_MAX - reach) return 0;
        reach += s * st;
    }
    return reach < UINT64_MAX / es && t->nbytes == (reach + 1) * es;
}

static int table_ok(const bmi_tensor_table *t, const uint8_t *buf, size_t len) {
    for (size_t i = 0; i < t->count; i++)
        if (!view_ok(&t->items[i], buf, len)) return 0;
    return 1;
}

/* Parse buf (which the caller allocated at exactly len bytes, so ASan sees
 * overreads) and say whether the parser behaved: success with views in
 * bounds (unless must_fail), or a negative status with a message and an
 * empty table. */
static int parse_behaves(parse_fn fn, const uint8_t *buf, size_t len, int must_fail) {
    bmi_tensor_table t;
    memset(&t, 0xab, sizeof t); /* garbage in: the parser must not trust it */
    bmi_clear_error();
    bm_status st = fn(buf, len, &t);
    int ok;
    if (st == BM_OK) ok = !must_fail && table_ok(&t, buf, len);
    else ok = st < 0 && bm_last_error()[0] != '\0' && table_is_empty(&t);
    if (st == BM_OK) bmi_table_free(&t);
    return ok;
}

static int parse_copy_behaves(parse_fn fn, const uint8_t *buf, size_t len, int must_fail) {
    uint8_t *copy = dup_bytes(buf, len);
    int ok = parse_behaves(fn, copy, len, must_fail);
    free(copy);
    return ok;
}

/* Expect fn(buf) to fail with `want` (or succeed when want == BM_OK). buf
 * must be exactly len bytes (so ASan sees overreads). With `keep`, a
 * successful table is handed to the caller (its views point into buf). */
static bm_status parse_expect(parse_fn fn, const uint8_t *buf, size_t len, bm_status want,
                              const char *label, bmi_tensor_table *keep) {
    bmi_tensor_table t;
    bmi_clear_error();
    bm_status st = fn(buf, len, &t);
    if (want == BM_OK) {
        CHECK_MSG(st == BM_OK && table_ok(&t, buf, len), "%s: got %d (%s)", label, (int)st,
                  bm_last_error());
    } else {
        CHECK_MSG(st == want && bm_last_error()[0] && table_is_empty(&t), "%s: got %d, wanted %d (%s)",
                  label, (int)st, (int)want, bm_last_error());
    }
    if (keep && st == BM_OK) *keep = t;
    else if (st == BM_OK) bmi_table_free(&t);
    return st;
}

/* Row-major copy of a view's elements (follows strides). */
static uint8_t *gather(const bmi_tensor *t, size_t *out_len) {
    size_t es = bmi_dtype_size(t->dtype);
    int64_t numel = bmi_tensor_numel(t);
    uint8_t *dst = malloc(numel * es + 1);
    if (!dst) abort();
    int64_t idx[BMI_MAX_DIMS] = {0};
    for (int64_t n = 0; n < numel; n++) {
        int64_t off = 0;
        for (int i = 0; i < t->ndim; i++) off += idx[i] * t->stride[i];
        memcpy(dst + n * es, (const uint8_t *)t->data + off * es, es);
        for (int i = t->ndim - 1; i >= 0; i--) {
            if (++idx[i] < t->shape[i]) break;
            idx[i] = 0;
        }
    }
    *out_len = (size_t)numel * es;
    return dst;
}

static float f32_at(const bmi_tensor *t, int64_t flat) {
    /* flat index in row-major order, through the strides */
    int64_t off = 0;
    for (int i = t->ndim - 1; i >= 0; i--) {
        off += (flat % t->shape[i]) * t->stride[i];
        flat /= t->shape[i];
    }
    float f;
    memcpy(&f, (const uint8_t *)t->data + off * 4, 4);
    return f;
}

/* ---- a tiny ZIP writer (stored entries, optional ZIP64) --------------------- */

typedef struct buf {
    uint8_t *p;
    size_t n, cap;
} buf;

static void b_put(buf *b, const void *d, size_t n) {
    if (b->n + n > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n) cap *= 2;
        b->p = realloc(b->p, cap);
        if (!b->p) abort();
        b->cap = cap;
    }
    if (n) memcpy(b->p + b->n, d, n);
    b->n += n;
}
static void b_u8(buf *b, uint8_t v) { b_put(b, &v, 1); }
static void b_u16(buf *b, uint16_t v) { b_u8(b, (uint8_t)v), b_u8(b, (uint8_t)(v >> 8)); }
static void b_u32(buf *b, uint32_t v) { b_u16(b, (uint16_t)v), b_u16(b, (uint16_t)(v >> 16)); }
static void b_u64(buf *b, uint64_t v) { b_u32(b, (uint32_t)v), b_u32(b, (uint32_t)(v >> 32)); }
static void b_str(buf *b, const char *s) { b_put(b, s, strlen(s)); }

static uint32_t crc32_of(const uint8_t *p, size_t n) {
    uint32_t c = 0xffffffffu;
    for (size_t i = 0; i < n; i++) {
        c ^= p[i];
        for (int k = 0; k < 8; k++) c = (c >> 1) ^ (0xedb88320u & (0u - (c & 1)));
    }
    return ~c;
}

typedef struct zfile {
    const char *name;
    const void *data;
    size_t len;
    uint16_t method;
} zfile;

/* Entries get a torch-style "FB" padding extra field in the local header
 * only (so data starts 64-byte aligned and the local header's extra length
 * differs from the central one's). With zip64 every size and offset goes
 * through ZIP64 extra fields and end records. */
static uint8_t *make_zip(const zfile *files, size_t n, int zip64, size_t *out_len) {
    buf b = {0};
    uint64_t *offsets = calloc(n + 1, sizeof *offsets);
    for (size_t i = 0; i < n; i++) {
        const zfile *f = &files[i];
        offsets[i] = b.n;
        size_t name_len = strlen(f->name);
        size_t base = b.n + 30 + name_len + (zip64 ? 20 : 0) + 4;
        size_t pad = (64 - base % 64) % 64;
        b_u32(&b, 0x04034b50u);
        b_u16(&b, zip64 ? 45 : 20);
        b_u16(&b, 0);
        b_u16(&b, f->method);
        b_u16(&b, 0), b_u16(&b, 0);
        b_u32(&b, crc32_of(f->data, f->len));
        b_u32(&b, zip64 ? 0xffffffffu : (uint32_t)f->len);
        b_u32(&b, zip64 ? 0xffffffffu : (uint32_t)f->len);
        b_u16(&b, (uint16_t)name_len);
        b_u16(&b, (uint16_t)((zip64 ? 20 : 0) + 4 + pad));
        b_str(&b, f->name);
        if (zip64) {
            b_u16(&b, 1), b_u16(&b, 16);
            b_u64(&b, f->len), b_u64(&b, f->len);
        }
        b_u16(&b, 0x4246), b_u16(&b, (uint16_t)pad);
        for (size_t k = 0; k < pad; k++) b_u8(&b, 'Z');
        b_put(&b, f->data, f->len);
    }
    uint64_t cd_start = b.n;
    for (size_t i = 0; i < n; i++) {
        const zfile *f = &files[i];
        b_u32(&b, 0x02014b50u);
        b_u16(&b, zip64 ? 45 : 20), b_u16(&b, zip64 ? 45 : 20);
        b_u16(&b, 0);
        b_u16(&b, f->method);
        b_u16(&b, 0), b_u16(&b, 0);
        b_u32(&b, crc32_of(f->data, f->len));
        b_u32(&b, zip64 ? 0xffffffffu : (uint32_t)f->len);
        b_u32(&b, zip64 ? 0xffffffffu : (uint32_t)f->len);
        b_u16(&b, (uint16_t)strlen(f->name));
        b_u16(&b, zip64 ? 28 : 0);
        b_u16(&b, 0), b_u16(&b, 0), b_u16(&b, 0);
        b_u32(&b, 0);
        b_u32(&b, zip64 ? 0xffffffffu : (uint32_t)offsets[i]);
        b_str(&b, f->name);
        if (zip64) {
            b_u16(&b, 1), b_u16(&b, 24);
            b_u64(&b, f->len), b_u64(&b, f->len), b_u64(&b, offsets[i]);
        }
    }
    uint64_t cd_size = b.n - cd_start;
    if (zip64) {
        uint64_t eocd64 = b.n;
        b_u32(&b, 0x06064b50u);
        b_u64(&b, 44);
        b_u16(&b, 45), b_u16(&b, 45);
        b_u32(&b, 0), b_u32(&b, 0);
        b_u64(&b, n), b_u64(&b, n), b_u64(&b, cd_size), b_u64(&b, cd_start);
        b_u32(&b, 0x07064b50u);
        b_u32(&b, 0);
        b_u64(&b, eocd64);
        b_u32(&b, 1);
    }
    b_u32(&b, 0x06054b50u);
    b_u16(&b, 0), b_u16(&b, 0);
    b_u16(&b, zip64 ? 0xffff : (uint16_t)n), b_u16(&b, zip64 ? 0xffff : (uint16_t)n);
    b_u32(&b, zip64 ? 0xffffffffu : (uint32_t)cd_size);
    b_u32(&b, zip64 ? 0xffffffffu : (uint32_t)cd_start);
    b_u16(&b, 0);
    free(offsets);
    *out_len = b.n;
    return realloc(b.p, b.n); /* exactly the archive, so ASan sees overreads */
}

/* ---- a tiny pickle writer ---------------------------------------------------- */

static void pk_op(buf *b, uint8_t op) { b_u8(b, op); }
static void pk_str(buf *b, const char *s) {
    b_u8(b, 'X');
    b_u32(b, (uint32_t)strlen(s));
    b_str(b, s);
}
static void pk_int(buf *b, int64_t v) {
    if (v >= 0 && v < 256) {
        b_u8(b, 'K'), b_u8(b, (uint8_t)v);
    } else if (v >= INT32_MIN && v <= INT32_MAX) {
        b_u8(b, 'J'), b_u32(b, (uint32_t)(int32_t)v);
    } else {
        b_u8(b, 0x8a), b_u8(b, 8), b_u64(b, (uint64_t)v);
    }
}
static void pk_global(buf *b, const char *module, const char *name) {
    b_u8(b, 'c');
    b_str(b, module), b_u8(b, '\n');
    b_str(b, name), b_u8(b, '\n');
}
static void pk_dims(buf *b, int n, const int64_t *d) {
    pk_op(b, '(');
    for (int i = 0; i < n; i++) pk_int(b, d[i]);
    pk_op(b, 't');
}
static void pk_storage(buf *b, const char *type, const char *key, int64_t numel) {
    pk_op(b, '(');
    pk_str(b, "storage");
    pk_global(b, "torch", type);
    pk_str(b, key);
    pk_str(b, "cpu");
    pk_int(b, numel);
    pk_op(b, 't');
    pk_op(b, 'Q');
}
/* _rebuild_tensor_v2(storage, offset, shape, stride, False, OrderedDict()) */
static void pk_tensor(buf *b, const char *type, const char *key, int64_t numel, int64_t offset,
                      int ndim, const int64_t *shape, const int64_t *stride) {
    pk_global(b, "torch._utils", "_rebuild_tensor_v2");
    pk_op(b, '(');
    pk_storage(b, type, key, numel);
    pk_int(b, offset);
    pk_dims(b, ndim, shape);
    pk_dims(b, ndim, stride);
    pk_op(b, 0x89);
    pk_global(b, "collections", "OrderedDict");
    pk_op(b, ')');
    pk_op(b, 'R');
    pk_op(b, 't');
    pk_op(b, 'R');
}
/* {"model": {  ...items...  }} : begin leaves the MARK open for items. */
static void pk_begin_model(buf *b) {
    pk_op(b, 0x80), pk_op(b, 2);
    pk_op(b, '}');
    pk_str(b, "model");
    pk_op(b, '}');
    pk_op(b, '(');
}
static void pk_end_model(buf *b) {
    pk_op(b, 'u'); /* SETITEMS into the model dict */
    pk_op(b, 's'); /* SETITEM "model" into the top dict */
    pk_op(b, '.');
}

/* An F32 storage holding 0, 1, 2, ... */
static float ramp[64];

/* A torch.save-like archive: archive/data.pkl plus the given storages
 * (named archive/data/<key>) and the torch 2.x side entries. */
typedef struct storage_file {
    const char *key;
    const void *data;
    size_t len;
} storage_file;

static uint8_t *torch_archive(const buf *pickle, const storage_file *s, size_t n, int zip64,
                              const char *byteorder, size_t *len) {
    zfile files[16];
    char names[16][64];
    size_t k = 0;
    files[k++] = (zfile){"archive/data.pkl", pickle->p, pickle->n, 0};
    if (byteorder) files[k++] = (zfile){"archive/byteorder", byteorder, strlen(byteorder), 0};
    for (size_t i = 0; i < n && k < 14; i++) {
        snprintf(names[k], sizeof names[k], "archive/data/%s", s[i].key);
        files[k] = (zfile){names[k], s[i].data, s[i].len, 0};
        k++;
    }
    files[k++] = (zfile){"archive/version", "3\n", 2, 0};
    files[k++] = (zfile){"archive/.data/serialization_id", "1234567890", 10, 0};
    return make_zip(files, k, zip64, len);
}

/* One F32 storage "0" = ramp[0..24) with one contiguous [2, 3] tensor "w". */
static void pk_one_tensor(buf *b) {
    int64_t shape[] = {2, 3}, stride[] = {3, 1};
    pk_str(b, "w");
    pk_tensor(b, "FloatStorage", "0", 24, 0, 2, shape, stride);
}

static const storage_file ramp_storage = {"0", ramp, 24 * sizeof(float)};

/* ---- fixtures: both formats agree ----------------------------------------- */

static void test_fixture_pair(const char *fixture, bmi_dtype want) {
    char st_path[1024], pt_path[1024];
    fixture_path(st_path, sizeof st_path, fixture, "model.safetensors");
    fixture_path(pt_path, sizeof pt_path, fixture, "pytorch_model.bin");
    bmi_tensor_table st, pt;
    CHECK_OK(bmi_read_safetensors(st_path, &st));
    CHECK_OK(bmi_read_torch(pt_path, &pt));
    CHECK(st.map.addr != NULL && pt.map.addr != NULL);
    CHECK_MSG(st.count > 0 && st.count == pt.count, "%s: %zu vs %zu tensors", fixture, st.count, pt.count);
    CHECK(table_ok(&st, st.map.addr, st.map.len));
    CHECK(table_ok(&pt, pt.map.addr, pt.map.len));
    size_t mismatched = 0;
    for (size_t i = 0; i < st.count; i++) {
        const bmi_tensor *a = &st.items[i];
        const bmi_tensor *b = bmi_table_find(&pt, a->name);
        if (!b || a->dtype != want || b->dtype != want || a->ndim != b->ndim ||
            memcmp(a->shape, b->shape, sizeof(int64_t) * (size_t)a->ndim) != 0 ||
            !bmi_tensor_is_contiguous(a)) {
            fprintf(stderr, "%s: tensor %s differs in name, dtype or shape\n", fixture, a->name);
            mismatched++;
            continue;
        }
        size_t na, nb;
        uint8_t *ga = gather(a, &na), *gb = gather(b, &nb);
        if (na != nb || memcmp(ga, gb, na) != 0 || na != a->nbytes) {
            fprintf(stderr, "%s: tensor %s has different bytes\n", fixture, a->name);
            mismatched++;
        }
        free(ga);
        free(gb);
    }
    CHECK_MSG(mismatched == 0, "%s: %zu tensors differ between formats", fixture, mismatched);
    /* Same order too: both files list tensors in state-dict order. */
    size_t same_order = 0;
    for (size_t i = 0; i < st.count && i < pt.count; i++)
        same_order += strcmp(st.items[i].name, pt.items[i].name) == 0;
    CHECK(same_order == st.count);
    bmi_table_free(&st);
    bmi_table_free(&pt);
    CHECK(table_is_empty(&st) && table_is_empty(&pt));
}

/* Values read with Python's struct module from the safetensors file. */
static void test_f32_values(void) {
    static const struct {
        const char *name;
        int64_t flat;
        float want;
    } spots[] = {
        {"decoder.layers.0.mixer.A_log", 0, 0x1.04f6bep-1f},
        {"decoder.layers.0.mixer.A_log", 1, 0x1.149ecp-1f},
        {"decoder.layers.0.mixer.A_log", 17, 0x1.67f978p-1f},
        {"decoder.layers.0.mixer.A_log", 2047, 0x1.6de392p+1f},
        {"decoder.final_layernorm.weight", 0, 0x1.19785cp+0f},
        {"decoder.final_layernorm.weight", 63, 0x1.16e8d8p+0f},
        {"embedding.word_embeddings.weight", 0, -0x1.058742p-2f},
        {"embedding.word_embeddings.weight", 299 * 64 + 63, 0x1.62f22ap-1f},
        {"decoder.layers.1.mixer.local_experts.3.linear_fc2.weight", 5, -0x1.1e2f18p-4f},
    };
    char st_path[1024], pt_path[1024];
    fixture_path(st_path, sizeof st_path, "tiny-f32", "model.safetensors");
    fixture_path(pt_path, sizeof pt_path, "tiny-f32", "pytorch_model.bin");
    bmi_tensor_table tables[2];
    CHECK_OK(bmi_read_safetensors(st_path, &tables[0]));
    CHECK_OK(bmi_read_torch(pt_path, &tables[1]));
    for (int f = 0; f < 2; f++) {
        const bmi_tensor *emb = bmi_table_find(&tables[f], "embedding.word_embeddings.weight");
        CHECK(emb && emb->ndim == 2 && emb->shape[0] == 300 && emb->shape[1] == 64 &&
              emb->stride[0] == 64 && emb->stride[1] == 1 && emb->nbytes == 300 * 64 * 4);
        for (size_t i = 0; i < sizeof spots / sizeof spots[0]; i++) {
            const bmi_tensor *t = bmi_table_find(&tables[f], spots[i].name);
            CHECK_MSG(t && t->dtype == BMI_F32 && f32_at(t, spots[i].flat) == spots[i].want,
                      "%s[%lld] in format %d", spots[i].name, (long long)spots[i].flat, f);
        }
    }
    bmi_table_free(&tables[0]);
    bmi_table_free(&tables[1]);

    /* bf16 spot check: decoder.final_layernorm.bias starts 0xbd2d 0xbc07 0x3c35. */
    fixture_path(st_path, sizeof st_path, "tiny-bf16", "model.safetensors");
    fixture_path(pt_path, sizeof pt_path, "tiny-bf16", "pytorch_model.bin");
    CHECK_OK(bmi_read_safetensors(st_path, &tables[0]));
    CHECK_OK(bmi_read_torch(pt_path, &tables[1]));
    for (int f = 0; f < 2; f++) {
        const bmi_tensor *t = bmi_table_find(&tables[f], "decoder.final_layernorm.bias");
        CHECK(t && t->dtype == BMI_BF16 && t->ndim == 1 && t->shape[0] == 96 && t->nbytes == 192 &&
              bmi_rd16(t->data) == 0xbd2d && bmi_rd16((const uint8_t *)t->data + 4) == 0x3c35);
    }
    bmi_table_free(&tables[0]);
    bmi_table_free(&tables[1]);

    /* golden.safetensors holds I32 prompts next to F32 logits. */
    fixture_path(st_path, sizeof st_path, "tiny-f32", "golden.safetensors");
    CHECK_OK(bmi_read_safetensors(st_path, &tables[0]));
    const bmi_tensor *prompt = bmi_table_find(&tables[0], "p0.prompt");
    CHECK(prompt && prompt->dtype == BMI_I32 && prompt->ndim == 1);
    bmi_table_free(&tables[0]);
}

static void test_file_errors(void) {
    bmi_tensor_table t;
    char path[1024];
    fixture_path(path, sizeof path, "tiny-f32", "no-such-file.bin");
    CHECK_ERR(bmi_read_torch(path, &t), BM_ERR_IO);
    CHECK(table_is_empty(&t));
    CHECK_ERR(bmi_read_safetensors(path, &t), BM_ERR_IO);
    fixture_path(path, sizeof path, "tiny-f32", "");
    CHECK_ERR(bmi_read_safetensors(path, &t), BM_ERR_IO); /* a directory */
    /* Each format handed to the other reader. */
    fixture_path(path, sizeof path, "tiny-f32", "model.safetensors");
    CHECK_ERR(bmi_read_torch(path, &t), BM_ERR_FORMAT);
    CHECK(table_is_empty(&t));
    fixture_path(path, sizeof path, "tiny-f32", "pytorch_model.bin");
    CHECK_ERR(bmi_read_safetensors(path, &t), BM_ERR_FORMAT);
    CHECK(strstr(bm_last_error(), "pytorch_model.bin") != NULL); /* the path is named */
    CHECK_ERR(bmi_parse_torch(NULL, 10, &t), BM_ERR_INVALID_ARGUMENT);
    CHECK_ERR(bmi_parse_safetensors("12345678", 8, NULL), BM_ERR_INVALID_ARGUMENT);
    CHECK_ERR(bmi_parse_torch("", 0, &t), BM_ERR_FORMAT);
    CHECK_ERR(bmi_parse_safetensors("", 0, &t), BM_ERR_FORMAT);
}

/* ---- safetensors: hand-made headers ---------------------------------------- */

static uint8_t *make_st(const char *json, size_t data_len, size_t *len) {
    size_t h = strlen(json);
    *len = 8 + h + data_len;
    uint8_t *p = calloc(*len ? *len : 1, 1);
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)((uint64_t)h >> (8 * i));
    memcpy(p + 8, json, h);
    return p;
}

static void st_case(const char *json, size_t data_len, bm_status want) {
    size_t len;
    uint8_t *p = make_st(json, data_len, &len);
    parse_expect(bmi_parse_safetensors, p, len, want, json, NULL);
    free(p);
}

static void test_safetensors_handmade(void) {
    /* valid */
    size_t len;
    uint8_t *p = make_st("{\"__metadata__\":{\"format\":\"pt\"},"
                         "\"a\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]},"
                         "\"b\":{\"dtype\":\"BF16\",\"shape\":[],\"data_offsets\":[25,27]},"
                         "\"c\":{\"dtype\":\"F16\",\"shape\":[0,4],\"data_offsets\":[27,27]}}   ",
                         27, &len);
    bmi_tensor_table t;
    CHECK_OK(bmi_parse_safetensors(p, len, &t));
    CHECK(t.count == 3 && t.map.addr == NULL);
    if (t.count == 3) {
        const uint8_t *section = p + len - 27;
        CHECK(strcmp(t.items[0].name, "a") == 0 && t.items[0].dtype == BMI_F32 && t.items[0].ndim == 2 &&
              t.items[0].shape[0] == 2 && t.items[0].shape[1] == 3 && t.items[0].stride[0] == 3 &&
              t.items[0].stride[1] == 1 && t.items[0].data == section && t.items[0].nbytes == 24);
        /* unaligned data is recorded as is, not rejected */
        CHECK(t.items[1].ndim == 0 && t.items[1].data == section + 25 && t.items[1].nbytes == 2);
        CHECK(t.items[2].nbytes == 0 && t.items[2].shape[0] == 0 && t.items[2].dtype == BMI_F16);
    }
    bmi_table_free(&t);
    free(p);
    st_case("{}", 0, BM_OK);
    st_case("{\"i\":{\"dtype\":\"I64\",\"shape\":[2],\"data_offsets\":[0,16]},"
            "\"u\":{\"dtype\":\"U8\",\"shape\":[3],\"data_offsets\":[16,19]}}", 19, BM_OK);

    const bm_status F = BM_ERR_FORMAT;
    st_case("{\"a\":{\"dtype\":\"F64\",\"shape\":[1],\"data_offsets\":[0,8]}}", 8, BM_ERR_UNSUPPORTED);
    st_case("{\"a\":{\"dtype\":\"BOOL\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1, BM_ERR_UNSUPPORTED);
    st_case("{\"a\":{\"dtype\":\"XYZ\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, F);
    st_case("{\"a\":{\"dtype\":5,\"shape\":[1],\"data_offsets\":[0,4]}}", 4, F);
    st_case("{\"a\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4, F);
    st_case("{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", 4, F);
    st_case("{\"a\":{\"dtype\":\"F32\",\"shape\":[1]}}", 4, F);
    st_case("{\"a\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", 4, F);
    st_case("{\"a\":{\"dtype\":\"F32\",\"shape\":[2.5],\"data_offsets\":[0,4]}}", 4, F);
    st_case("{\"a\":{\"dtype\":\"F32\",\"shape\":[\"1\"],\"data_offsets\":[0,4]}}", 4, F);
    st_case("{\"a\":{\"dtype\":\"F32\",\"shape\":3,\"data_offsets\":[0,4]}}", 4, F);
    st_case("{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}", 4, F);
    st_case("{\"a\":{\"dtype\":\"F32\",\"shape\":[4611686018427387904,4],\"data_offsets\":[0,0]}}", 0, F);
    st_case("{\"a\":{\"dtype\":\"F32\",\"shape\":[4611686018427387904],\"data_offsets\":[0,0]}}", 0, F);
    st_case("{\"a\":{\"dtype\":\"F32\",\"shape\":[9223372036854775807,9223372036854775807,0],"
            "\"data_offsets\":[0,0]}}", 0, F);
    st_case("{\"a\":{\"dtype\":\"I64\",\"shape\":[2223372036854775807,8],\"data_offsets\":[0,8]}}", 8, F);
    st_case("{\"a\":{\"dtype\":\"F32\",\"shape\":[0,4611686018427387904,4],\"data_offsets\":[0,0]}}", 0, F);
    st_case("{\"a\":{\"dtype\":\"F32\",\"shape\":[0,1048576,1048576],\"data_offsets\":[0,0]}}", 0, BM_OK);
    st_case("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,0]}}", 4, F);
    st_case("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,1000]}}", 4, F);
    st_case("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[-4,0]}}", 4, F);
    st_case("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4]}}", 8, F);
    st_case("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0]}}", 4, F);
    st_case("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4,8]}}", 8, F);
    st_case("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":\"0,4\"}}", 4, F);
    st_case("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,18446744073709551615]}}", 4, F);
    st_case("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[9223372036854775800,"
            "9223372036854775804]}}", 4, F);
    st_case("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
            "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8, F);
    st_case("[1,2]", 0, F);
    st_case("{\"a\":[1]}", 0, F);
    st_case("{\"__metadata__\":[1]}", 0, F);
    st_case("{\"a\":{\"dtype\":\"F32\",", 0, F);
    st_case("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}} trailing", 4, F);
    st_case("{\"a\\u0000b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, F);
    st_case("{\"a\":{\"dtype\":\"\\u0000\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, F);

    /* header length fields */
    uint8_t raw[32] = {0};
    memcpy(raw + 8, "{}", 2);
    raw[0] = 2;
    CHECK(parse_copy_behaves(bmi_parse_safetensors, raw, 10, 0));
    raw[0] = 3; /* longer than the file */
    parse_expect(bmi_parse_safetensors, raw, 10, F, "header length past the end", NULL);
    memset(raw, 0xff, 8); /* 2^64 - 1 */
    parse_expect(bmi_parse_safetensors, raw, 32, F, "header length 2^64-1", NULL);
    memset(raw, 0, 8);
    parse_expect(bmi_parse_safetensors, raw, 32, F, "header length 0", NULL);
    parse_expect(bmi_parse_safetensors, raw, 7, F, "7-byte file", NULL);
    raw[0] = 2, raw[8] = '{', raw[9] = 0; /* a NUL inside the JSON */
    parse_expect(bmi_parse_safetensors, raw, 10, F, "NUL in header", NULL);
}

/* ---- safetensors: the fixture, truncated and bit-flipped ------------------- */

static void test_safetensors_hostile(void) {
    char path[1024];
    size_t len;
    fixture_path(path, sizeof path, "tiny-f32", "model.safetensors");
    uint8_t *file = read_whole(path, &len);
    CHECK(file != NULL);
    if (!file) return;
    size_t bad = 0, cases = 0;
    for (size_t cut = 0; cut < 512 && cut < len; cut++, cases++)
        bad += !parse_copy_behaves(bmi_parse_safetensors, file, cut, 1);
    for (size_t i = 0; i < 200; i++, cases++)
        bad += !parse_copy_behaves(bmi_parse_safetensors, file, (len - 1) * i / 199, 1);
    CHECK_MSG(bad == 0, "%zu of %zu truncated safetensors files misbehaved", bad, cases);

    /* Flip bytes of the length and the JSON header in place (the buffer is
     * exactly the file, so ASan sees overreads). */
    size_t header_end = 8 + (size_t)bmi_rd64(file);
    static const uint8_t replacements[] = {'"', '[', '{', '9', '-', ',', 0};
    bad = cases = 0;
    for (size_t i = 0; i < header_end; i++) {
        uint8_t saved = file[i];
        uint8_t tries[4] = {(uint8_t)(saved ^ 0x01), (uint8_t)(saved ^ 0x80),
                            replacements[i % sizeof replacements],
                            replacements[(i / 7) % sizeof replacements]};
        for (int k = 0; k < 4; k++, cases++) {
            file[i] = tries[k];
            bad += !parse_behaves(bmi_parse_safetensors, file, len, 0);
        }
        file[i] = saved;
    }
    CHECK_MSG(bad == 0, "%zu of %zu bit-flipped safetensors headers misbehaved", bad, cases);
    CHECK(parse_behaves(bmi_parse_safetensors, file, len, 0));
    free(file);
}

/* ---- torch: hand-built archives -------------------------------------------- */

static bm_status torch_expect(const buf *pickle, const storage_file *s, size_t n, bm_status want,
                              const char *label) {
    size_t len;
    uint8_t *zip = torch_archive(pickle, s, n, 0, "little", &len);
    bm_status st = parse_expect(bmi_parse_torch, zip, len, want, label, NULL);
    free(zip);
    return st;
}

static void test_torch_views(void) {
    /* Several tensors share storage "0" (24 floats 0..23) through offsets
     * and non-contiguous strides; "h" is a half storage, "b" bfloat16. */
    buf b = {0};
    pk_begin_model(&b);
    int64_t s_t[] = {3, 4}, st_t[] = {1, 3};
    pk_str(&b, "t.transposed");
    pk_tensor(&b, "FloatStorage", "0", 24, 2, 2, s_t, st_t);
    int64_t s_r[] = {2, 6}, st_r[] = {6, 1};
    pk_str(&b, "t.rows");
    pk_tensor(&b, "FloatStorage", "0", 24, 12, 2, s_r, st_r);
    int64_t s_e[] = {4, 3}, st_e[] = {0, 1};
    pk_str(&b, "t.expanded");
    pk_tensor(&b, "FloatStorage", "0", 24, 5, 2, s_e, st_e);
    int64_t s_z[] = {0, 5}, st_z[] = {5, 1};
    pk_str(&b, "t.empty");
    pk_tensor(&b, "FloatStorage", "0", 24, 24, 2, s_z, st_z);
    pk_str(&b, "t.scalar");
    pk_tensor(&b, "FloatStorage", "0", 24, 23, 0, NULL, NULL);
    int64_t s_h[] = {4}, st_h[] = {2};
    pk_str(&b, "t.half");
    pk_tensor(&b, "HalfStorage", "h", 8, 1, 1, s_h, st_h);
    pk_str(&b, "t.bf16");
    pk_tensor(&b, "BFloat16Storage", "b", 8, 0, 1, s_h, st_h);
    pk_end_model(&b);
    uint16_t halves[8];
    for (int i = 0; i < 8; i++) halves[i] = bmi_f32_to_f16((float)i);
    uint16_t bf[8];
    for (int i = 0; i < 8; i++) bf[i] = bmi_f32_to_bf16((float)i);
    storage_file s[] = {ramp_storage, {"h", halves, sizeof halves}, {"b", bf, sizeof bf}};

    for (int zip64 = 0; zip64 < 2; zip64++) {
        size_t len;
        uint8_t *zip = torch_archive(&b, s, 3, zip64, "little", &len);
        bmi_tensor_table t;
        CHECK_OK(bmi_parse_torch(zip, len, &t));
        CHECK(t.count == 7 && table_ok(&t, zip, len));
        const bmi_tensor *tr = bmi_table_find(&t, "t.transposed"), *rows = bmi_table_find(&t, "t.rows");
        const bmi_tensor *ex = bmi_table_find(&t, "t.expanded"), *em = bmi_table_find(&t, "t.empty");
        const bmi_tensor *sc = bmi_table_find(&t, "t.scalar"), *h = bmi_table_find(&t, "t.half");
        const bmi_tensor *bt = bmi_table_find(&t, "t.bf16");
        CHECK(tr && rows && ex && em && sc && h && bt);
        if (tr && rows && ex && em && sc && h && bt) {
            const uint8_t *base = (const uint8_t *)rows->data - 12 * 4; /* storage "0" */
            CHECK(((uintptr_t)base - (uintptr_t)zip) % 64 == 0); /* data found via the local header */
            CHECK(tr->data == base + 2 * 4 && tr->nbytes == (2 + 2 * 1 + 3 * 3 - 2 + 1) * 4 &&
                  !bmi_tensor_is_contiguous(tr) && tr->stride[0] == 1 && tr->stride[1] == 3);
            int good = 1;
            for (int i = 0; i < 3; i++)
                for (int j = 0; j < 4; j++) good &= f32_at(tr, i * 4 + j) == (float)(2 + i + 3 * j);
            for (int i = 0; i < 12; i++) good &= f32_at(rows, i) == (float)(12 + i);
            for (int i = 0; i < 12; i++) good &= f32_at(ex, i) == (float)(5 + i % 3);
            CHECK(good);
            CHECK(rows->nbytes == 48 && bmi_tensor_is_contiguous(rows));
            CHECK(ex->nbytes == 3 * 4);
            CHECK(em->nbytes == 0 && em->data == base + 24 * 4);
            CHECK(sc->ndim == 0 && sc->nbytes == 4 && f32_at(sc, 0) == 23.0f);
            CHECK(h->dtype == BMI_F16 && h->nbytes == (1 + 3 * 2) * 2 &&
                  bmi_f16_to_f32(bmi_rd16((const uint8_t *)h->data + 6 * 2)) == 7.0f);
            CHECK(bt->dtype == BMI_BF16 && bmi_bf16_to_f32(bmi_rd16((const uint8_t *)bt->data + 4)) == 2.0f);
        }
        bmi_table_free(&t);
        free(zip);
    }
    free(b.p);
}

/* One bad tensor among good ones: must fail with `want`. */
static void bad_tensor_case(const char *label, const char *type, int64_t numel, int64_t offset,
                            int ndim, const int64_t *shape, const int64_t *stride, bm_status want) {
    buf b = {0};
    pk_begin_model(&b);
    pk_one_tensor(&b);
    pk_str(&b, "bad");
    pk_tensor(&b, type, "0", numel, offset, ndim, shape, stride);
    pk_end_model(&b);
    torch_expect(&b, &ramp_storage, 1, want, label);
    free(b.p);
}

static void test_torch_bad_tensors(void) {
    const bm_status F = BM_ERR_FORMAT;
    int64_t s23[] = {2, 3}, c23[] = {3, 1};
    bad_tensor_case("in bounds control", "FloatStorage", 24, 18, 2, s23, c23, BM_OK);
    bad_tensor_case("past the end", "FloatStorage", 24, 20, 2, s23, c23, F);
    bad_tensor_case("offset past the end", "FloatStorage", 24, 25, 0, NULL, NULL, F);
    int64_t big[] = {(int64_t)1 << 40, (int64_t)1 << 40}, bigs[] = {(int64_t)1 << 40, 1};
    bad_tensor_case("overflowing reach", "FloatStorage", 24, 0, 2, big, bigs, F);
    int64_t huge[] = {INT64_MAX}, one[] = {1};
    bad_tensor_case("int64 max shape", "FloatStorage", 24, 0, 1, huge, one, F);
    int64_t s1[] = {2}, hs[] = {INT64_MAX};
    bad_tensor_case("int64 max stride", "FloatStorage", 24, 0, 1, s1, hs, F);
    bad_tensor_case("huge offset", "FloatStorage", 24, INT64_MAX, 1, s1, one, F);
    int64_t wide[] = {(int64_t)1 << 40, (int64_t)1 << 40}, zeros[] = {0, 0};
    bad_tensor_case("huge expanded shape", "FloatStorage", 24, 0, 2, wide, zeros, F);
    int64_t wide_empty[] = {0, (int64_t)1 << 40, (int64_t)1 << 40}, z3[] = {0, 0, 0};
    bad_tensor_case("huge empty shape", "FloatStorage", 24, 0, 3, wide_empty, z3, F);
    int64_t modest[] = {1 << 20, 1 << 20}, modest_empty[] = {0, 1 << 20, 1 << 20};
    bad_tensor_case("large expanded shape", "FloatStorage", 24, 0, 2, modest, zeros, BM_OK);
    bad_tensor_case("large empty shape", "FloatStorage", 24, 0, 3, modest_empty, z3, BM_OK);
    bad_tensor_case("numel != entry size", "FloatStorage", 25, 0, 2, s23, c23, F);
    bad_tensor_case("numel * elsize overflows", "FloatStorage", INT64_MAX / 2, 0, 2, s23, c23, F);
    bad_tensor_case("double storage", "DoubleStorage", 12, 0, 2, s23, c23, BM_ERR_UNSUPPORTED);
    bad_tensor_case("bool storage", "BoolStorage", 96, 0, 2, s23, c23, BM_ERR_UNSUPPORTED);
    bad_tensor_case("not a storage type", "FloatTensor", 24, 0, 2, s23, c23, F);
    int64_t neg[] = {-2, 3};
    bad_tensor_case("negative shape", "FloatStorage", 24, 0, 2, neg, c23, F);
    int64_t nstr[] = {3, -1};
    bad_tensor_case("negative stride", "FloatStorage", 24, 10, 2, s23, nstr, F);
    bad_tensor_case("negative offset", "FloatStorage", 24, -1, 2, s23, c23, F);
    int64_t nine[9] = {1, 1, 1, 1, 1, 1, 1, 1, 1};
    bad_tensor_case("9 dims", "FloatStorage", 24, 0, 9, nine, nine, F);

    /* size and stride of different lengths */
    buf b = {0};
    pk_begin_model(&b);
    pk_str(&b, "w");
    pk_global(&b, "torch._utils", "_rebuild_tensor_v2");
    pk_op(&b, '(');
    pk_storage(&b, "FloatStorage", "0", 24);
    pk_int(&b, 0);
    pk_dims(&b, 2, s23);
    pk_dims(&b, 1, c23);
    pk_op(&b, 0x89), pk_op(&b, 'N');
    pk_op(&b, 't'), pk_op(&b, 'R');
    pk_end_model(&b);
    torch_expect(&b, &ramp_storage, 1, F, "size/stride lengths differ");
    free(b.p);

    /* missing storage entry */
    b = (buf){0};
    pk_begin_model(&b);
    pk_str(&b, "w");
    pk_tensor(&b, "FloatStorage", "7", 24, 0, 2, s23, c23);
    pk_end_model(&b);
    torch_expect(&b, &ramp_storage, 1, F, "missing storage");
    CHECK(strstr(bm_last_error(), "'7'") != NULL);
    free(b.p);

    /* the same name twice */
    b = (buf){0};
    pk_begin_model(&b);
    pk_one_tensor(&b);
    pk_one_tensor(&b);
    pk_end_model(&b);
    torch_expect(&b, &ramp_storage, 1, F, "duplicate names");
    free(b.p);

    /* a persistent id that is not a storage tuple */
    b = (buf){0};
    pk_begin_model(&b);
    pk_str(&b, "w");
    pk_global(&b, "torch._utils", "_rebuild_tensor_v2");
    pk_op(&b, '(');
    pk_str(&b, "not a pid"), pk_op(&b, 'Q');
    pk_int(&b, 0), pk_dims(&b, 2, s23), pk_dims(&b, 2, c23), pk_op(&b, 0x89), pk_op(&b, 'N');
    pk_op(&b, 't'), pk_op(&b, 'R');
    pk_end_model(&b);
    torch_expect(&b, &ramp_storage, 1, F, "bad persistent id");
    free(b.p);
}

/* An os.system call in the pickle: never run; an error under "model". */
static void test_torch_not_whitelisted(void) {
    buf b = {0};
    pk_begin_model(&b);
    pk_one_tensor(&b);
    pk_str(&b, "evil");
    pk_global(&b, "os", "system");
    pk_op(&b, '(');
    pk_str(&b, "echo this must never run > /tmp/bm_pwned");
    pk_op(&b, 't');
    pk_op(&b, 'R');
    pk_end_model(&b);
    torch_expect(&b, &ramp_storage, 1, BM_ERR_FORMAT, "os.system under model");
    CHECK(strstr(bm_last_error(), "os.system") != NULL && strstr(bm_last_error(), "evil") != NULL);
    free(b.p);
    FILE *f = fopen("/tmp/bm_pwned", "r");
    CHECK(f == NULL);
    if (f) fclose(f);

    /* the same through STACK_GLOBAL and NEWOBJ */
    b = (buf){0};
    pk_begin_model(&b);
    pk_one_tensor(&b);
    pk_str(&b, "evil");
    pk_str(&b, "subprocess"), pk_str(&b, "Popen"), pk_op(&b, 0x93);
    pk_str(&b, "ls"), pk_op(&b, 0x85), pk_op(&b, 0x81);
    pk_end_model(&b);
    torch_expect(&b, &ramp_storage, 1, BM_ERR_FORMAT, "NEWOBJ under model");
    free(b.p);

    /* a torch tensor kind we do not read (quantized): valid, unsupported */
    b = (buf){0};
    pk_begin_model(&b);
    pk_one_tensor(&b);
    pk_str(&b, "q");
    pk_global(&b, "torch._utils", "_rebuild_qtensor");
    pk_op(&b, '('), pk_storage(&b, "QInt8Storage", "0", 96), pk_int(&b, 0), pk_op(&b, 't');
    pk_op(&b, 'R');
    pk_end_model(&b);
    torch_expect(&b, &ramp_storage, 1, BM_ERR_UNSUPPORTED, "quantized tensor");
    CHECK(strstr(bm_last_error(), "_rebuild_qtensor") != NULL);
    free(b.p);

    /* "model" is not a dict */
    b = (buf){0};
    pk_op(&b, 0x80), pk_op(&b, 2), pk_op(&b, '}');
    pk_str(&b, "model"), pk_op(&b, ']'), pk_op(&b, 's'), pk_op(&b, '.');
    torch_expect(&b, NULL, 0, BM_ERR_FORMAT, "model is a list");
    free(b.p);
    /* the top level is not a dict */
    b = (buf){0};
    pk_op(&b, 0x80), pk_op(&b, 2), pk_op(&b, ']'), pk_op(&b, '.');
    torch_expect(&b, NULL, 0, BM_ERR_FORMAT, "top level is a list");
    free(b.p);
    /* no "model" and a top level that is not a state dict */
    b = (buf){0};
    pk_op(&b, 0x80), pk_op(&b, 2), pk_op(&b, '}');
    pk_str(&b, "iteration"), pk_int(&b, 5), pk_op(&b, 's'), pk_op(&b, '.');
    torch_expect(&b, NULL, 0, BM_ERR_FORMAT, "no model, not a state dict");
    free(b.p);
    /* a non-string key */
    b = (buf){0};
    pk_begin_model(&b);
    pk_int(&b, 3);
    pk_tensor(&b, "FloatStorage", "0", 24, 0, 0, NULL, NULL);
    pk_end_model(&b);
    torch_expect(&b, &ramp_storage, 1, BM_ERR_FORMAT, "integer key");
    free(b.p);
}

/* Megatron-style junk next to "model": must be skipped without harm. */
static void pk_junk(buf *b) {
    /* argparse.Namespace via NEWOBJ + BUILD with a state dict */
    pk_str(b, "args");
    pk_global(b, "argparse", "Namespace");
    pk_op(b, ')'), pk_op(b, 0x81);
    pk_op(b, '}'), pk_op(b, '(');
    pk_str(b, "lr"), pk_op(b, 'G'), b_put(b, "\x3f\x50\x62\x4d\xd2\xf1\xa9\xfc", 8);
    pk_str(b, "dtype"), pk_global(b, "torch", "bfloat16");
    pk_str(b, "act"), pk_global(b, "torch.nn.functional", "gelu");
    pk_str(b, "none"), pk_op(b, 'N');
    pk_str(b, "flags"), pk_op(b, '('), pk_op(b, 0x88), pk_op(b, 0x89), pk_op(b, 'l');
    pk_op(b, 'u'), pk_op(b, 'b');
    /* rng_state: nested tuples/lists, a big int, bytes, numpy-ish REDUCEs,
     * a ByteStorage tensor and a DoubleStorage tensor (unsupported dtype,
     * but not under "model"), a set and a frozenset */
    pk_str(b, "rng_state");
    pk_op(b, '(');
    pk_op(b, 0x8a), pk_op(b, 9), b_put(b, "\x01\x02\x03\x04\x05\x06\x07\x08\x09", 9);
    pk_op(b, 'C'), pk_op(b, 3), b_put(b, "abc", 3);
    pk_op(b, 'B'), b_u32(b, 2), b_put(b, "xy", 2);
    pk_op(b, 0x8e), b_u64(b, 1), b_put(b, "z", 1);
    pk_op(b, 0x96), b_u64(b, 0), pk_op(b, 0x98);
    pk_global(b, "numpy.core.multiarray", "_reconstruct");
    pk_global(b, "numpy", "ndarray"), pk_int(b, 0), pk_op(b, 0x85), pk_op(b, 'C'), pk_op(b, 1),
        b_put(b, "b", 1), pk_op(b, 0x87), pk_op(b, 'R');
    pk_op(b, '('), pk_int(b, 1), pk_op(b, '('), pk_int(b, 624), pk_op(b, 't'), pk_op(b, 'N'),
        pk_op(b, 0x89), pk_op(b, 'C'), pk_op(b, 4), b_put(b, "\0\0\0\0", 4), pk_op(b, 't'), pk_op(b, 'b');
    int64_t sh[] = {16}, one[] = {1};
    pk_tensor(b, "ByteStorage", "r", 16, 0, 1, sh, one);
    pk_tensor(b, "DoubleStorage", "d", 2, 0, 1, sh, one); /* also out of bounds: not checked here */
    pk_op(b, 0x8f), pk_op(b, '('), pk_int(b, 1), pk_int(b, 2), pk_op(b, 0x90);
    pk_op(b, '('), pk_str(b, "f"), pk_op(b, 0x91);
    pk_op(b, 't');
    /* a list that contains itself, reached again through the memo */
    pk_str(b, "cycle");
    pk_op(b, ']'), pk_op(b, 'q'), pk_op(b, 200), pk_op(b, 'h'), pk_op(b, 200), pk_op(b, 'a');
    pk_op(b, 'h'), pk_op(b, 200), pk_op(b, 'a');
    /* assorted callables with odd arguments */
    pk_str(b, "odd");
    pk_op(b, '(');
    pk_global(b, "torch._utils", "_rebuild_tensor_v2"), pk_op(b, ')'), pk_op(b, 'R');
    pk_global(b, "torch._utils", "_rebuild_tensor_v2"), pk_int(b, 3), pk_op(b, 'R');
    pk_global(b, "collections", "OrderedDict"), pk_op(b, ']'), pk_op(b, 0x85), pk_op(b, 'R');
    pk_op(b, '}'), pk_op(b, ')'), pk_op(b, 'R'); /* calling a dict */
    pk_op(b, '('), pk_str(b, "storage"), pk_op(b, 't'), pk_op(b, 'Q');
    pk_op(b, 'P'), b_str(b, "text pid\n");
    pk_op(b, 0x82), pk_op(b, 7);
    pk_op(b, '('), pk_global(b, "builtins", "object"), pk_op(b, 'o');
    pk_op(b, '('), pk_op(b, 'i'), b_str(b, "os\nsystem\n");
    pk_global(b, "copyreg", "_reconstructor"), pk_op(b, ')'), pk_op(b, 'R'), pk_op(b, '('),
        pk_int(b, 1), pk_op(b, 'e'), pk_op(b, '}'), pk_op(b, 'b');
    pk_op(b, '('), pk_op(b, '('), pk_op(b, '1'), pk_op(b, '0'); /* POP_MARK, POP of an empty frame */
    pk_op(b, 'N'), pk_op(b, '2'), pk_op(b, '0');
    pk_op(b, 'l');
    /* deep nesting */
    pk_str(b, "deep");
    for (int i = 0; i < 300; i++) pk_op(b, ']');
    for (int i = 0; i < 299; i++) pk_op(b, 'a');
    /* keep the junk out of the way of the memo keys the caller uses */
}

static void test_torch_junk(void) {
    static uint8_t bytes16[16];
    static double doubles[2];
    storage_file s[] = {ramp_storage, {"r", bytes16, 16}, {"d", doubles, 16}};
    buf b = {0};
    pk_op(&b, 0x80), pk_op(&b, 2);
    pk_op(&b, '}');
    pk_op(&b, '(');
    pk_junk(&b);
    pk_str(&b, "iteration"), pk_int(&b, 1000);
    pk_str(&b, "model");
    pk_global(&b, "collections", "OrderedDict"), pk_op(&b, ')'), pk_op(&b, 'R');
    pk_op(&b, '(');
    pk_one_tensor(&b);
    pk_str(&b, "decoder.layers.0.mlp._extra_state"), pk_op(&b, 'N');
    pk_op(&b, 'u');
    /* OrderedDict state: {'_metadata': {...}} through BUILD */
    pk_op(&b, '}'), pk_str(&b, "_metadata"), pk_op(&b, '}'), pk_op(&b, 's'), pk_op(&b, 'b');
    pk_str(&b, "checkpoint_version"), pk_op(&b, 'G'), b_put(&b, "\x40\x08\0\0\0\0\0\0", 8);
    pk_op(&b, 'u');
    pk_op(&b, '.');
    pk_op(&b, 'J'); /* trailing bytes after STOP are ignored */
    size_t len;
    uint8_t *zip = torch_archive(&b, s, 3, 0, "little", &len);
    bmi_tensor_table t;
    if (parse_expect(bmi_parse_torch, zip, len, BM_OK, "junk beside model", &t) == BM_OK) {
        CHECK(t.count == 1 && strcmp(t.items[0].name, "w") == 0 && t.items[0].shape[1] == 3);
        bmi_table_free(&t);
    }
    /* Allocation-failure sweep over the junk: every site must recover. */
    size_t bad = 0;
    uint64_t n;
    for (n = 1;; n++) {
        bmi_alloc_fail_at(n);
        bm_status st = bmi_parse_torch(zip, len, &t);
        uint64_t made = bmi_alloc_fail_at(0);
        if (st == BM_OK) {
            bad += t.count != 1;
            bmi_table_free(&t);
            if (made < n) break;
        } else {
            bad += st != BM_ERR_OUT_OF_MEMORY || !table_is_empty(&t);
        }
    }
    CHECK_MSG(bad == 0 && n > 5, "junk allocation sweep: %zu bad of %llu", bad, (unsigned long long)n);
    free(zip);

    /* Variations on the same archive: junk with no "model" is not a state dict. */
    free(b.p);
    b = (buf){0};
    pk_op(&b, 0x80), pk_op(&b, 2), pk_op(&b, '}'), pk_op(&b, '(');
    pk_junk(&b);
    pk_op(&b, 'u'), pk_op(&b, '.');
    torch_expect(&b, s, 3, BM_ERR_FORMAT, "junk only");
    free(b.p);
}

/* Top-level state dict (torch.save(model.state_dict())), protocol 4
 * opcodes, torch 2.x side entries, parameter and subclass wrappers. */
static void test_torch_variants(void) {
    int64_t s23[] = {2, 3}, c23[] = {3, 1};
    buf b = {0};
    pk_op(&b, 0x80), pk_op(&b, 4);
    pk_op(&b, 0x95), b_u64(&b, 0); /* FRAME (length unchecked beyond the end) */
    pk_op(&b, '}'), pk_op(&b, 0x94);
    pk_op(&b, '(');
    pk_op(&b, 0x8c), pk_op(&b, 1), b_put(&b, "w", 1), pk_op(&b, 0x94);
    pk_tensor(&b, "FloatStorage", "0", 24, 0, 2, s23, c23);
    /* _rebuild_parameter(tensor, True, OrderedDict()) with STACK_GLOBAL */
    pk_op(&b, 0x8d), b_u64(&b, 1), b_put(&b, "p", 1);
    pk_op(&b, 0x8c), pk_op(&b, 12), b_put(&b, "torch._utils", 12), pk_op(&b, 0x94);
    pk_op(&b, 0x8c), pk_op(&b, 18), b_put(&b, "_rebuild_parameter", 18), pk_op(&b, 0x94);
    pk_op(&b, 0x93), pk_op(&b, 0x94);
    pk_tensor(&b, "FloatStorage", "0", 24, 6, 2, s23, c23);
    pk_op(&b, 0x88), pk_global(&b, "collections", "OrderedDict"), pk_op(&b, ')'), pk_op(&b, 'R');
    pk_op(&b, 0x87), pk_op(&b, 'R');
    /* _rebuild_from_type_v2(_rebuild_tensor_v2, Tensor, args, {}) */
    pk_str(&b, "sub");
    pk_global(&b, "torch._tensor", "_rebuild_from_type_v2");
    pk_op(&b, '(');
    pk_global(&b, "torch._utils", "_rebuild_tensor_v2");
    pk_global(&b, "torch", "Tensor");
    pk_op(&b, '(');
    pk_storage(&b, "FloatStorage", "0", 24);
    pk_int(&b, 12), pk_dims(&b, 2, s23), pk_dims(&b, 2, c23), pk_op(&b, 0x89), pk_op(&b, 'N');
    pk_op(&b, '}'); /* metadata: the seventh argument */
    pk_op(&b, 't');
    pk_op(&b, '}');
    pk_op(&b, 't'), pk_op(&b, 'R');
    /* memo through text PUT/GET and LONG_BINPUT/LONG_BINGET */
    pk_str(&b, "again");
    pk_op(&b, 'g'), b_str(&b, "1\n"); /* the name "w"... then drop it */
    pk_op(&b, '0');
    pk_tensor(&b, "FloatStorage", "0", 24, 18, 2, s23, c23);
    pk_op(&b, 'p'), b_str(&b, "77\n");
    pk_op(&b, 'r'), b_u32(&b, 78);
    pk_op(&b, 'j'), b_u32(&b, 77), pk_op(&b, '0');
    pk_op(&b, 'u');
    pk_op(&b, '.');
    size_t len;
    bmi_tensor_table t;
    uint8_t *zip = torch_archive(&b, &ramp_storage, 1, 1, NULL, &len);
    if (parse_expect(bmi_parse_torch, zip, len, BM_OK, "protocol 4 top-level state dict", &t) == BM_OK) {
        const bmi_tensor *w = bmi_table_find(&t, "w"), *p = bmi_table_find(&t, "p");
        const bmi_tensor *sub = bmi_table_find(&t, "sub"), *again = bmi_table_find(&t, "again");
        CHECK(t.count == 4 && w && p && sub && again);
        if (w && p && sub && again)
            CHECK(f32_at(p, 0) == 6.0f && f32_at(sub, 5) == 17.0f && f32_at(again, 0) == 18.0f);
        bmi_table_free(&t);
    }
    free(zip);
    free(b.p);

    /* any archive prefix works; byteorder is honoured */
    b = (buf){0};
    pk_begin_model(&b);
    pk_one_tensor(&b);
    pk_end_model(&b);
    zfile files[] = {{"my_model/data.pkl", b.p, b.n, 0}, {"my_model/data/0", ramp, 96, 0}};
    zip = make_zip(files, 2, 0, &len);
    parse_expect(bmi_parse_torch, zip, len, BM_OK, "prefix my_model/", NULL);
    free(zip);
    zip = torch_archive(&b, &ramp_storage, 1, 0, "big", &len);
    parse_expect(bmi_parse_torch, zip, len, BM_ERR_UNSUPPORTED, "big endian", NULL);
    CHECK(strstr(bm_last_error(), "big-endian") != NULL);
    free(zip);
    zip = torch_archive(&b, &ramp_storage, 1, 0, "middle", &len);
    parse_expect(bmi_parse_torch, zip, len, BM_ERR_FORMAT, "byteorder middle", NULL);
    free(zip);

    /* compressed entries are refused */
    zfile deflated[] = {{"archive/data.pkl", b.p, b.n, 8}, {"archive/data/0", ramp, 96, 0}};
    zip = make_zip(deflated, 2, 0, &len);
    parse_expect(bmi_parse_torch, zip, len, BM_ERR_UNSUPPORTED, "deflated data.pkl", NULL);
    CHECK(strstr(bm_last_error(), "compressed") != NULL);
    free(zip);
    zfile deflated_data[] = {{"archive/data.pkl", b.p, b.n, 0}, {"archive/data/0", ramp, 96, 8}};
    zip = make_zip(deflated_data, 2, 0, &len);
    parse_expect(bmi_parse_torch, zip, len, BM_ERR_UNSUPPORTED, "deflated storage", NULL);
    free(zip);

    /* no data.pkl, two data.pkl, a nested one, duplicate entry names */
    zfile none[] = {{"archive/data/0", ramp, 96, 0}};
    zip = make_zip(none, 1, 0, &len);
    parse_expect(bmi_parse_torch, zip, len, BM_ERR_FORMAT, "no data.pkl", NULL);
    free(zip);
    zfile two[] = {{"a/data.pkl", b.p, b.n, 0}, {"b/data.pkl", b.p, b.n, 0}, {"a/data/0", ramp, 96, 0}};
    zip = make_zip(two, 3, 0, &len);
    parse_expect(bmi_parse_torch, zip, len, BM_ERR_FORMAT, "two data.pkl", NULL);
    free(zip);
    zfile nested[] = {{"a/b/data.pkl", b.p, b.n, 0}};
    zip = make_zip(nested, 1, 0, &len);
    parse_expect(bmi_parse_torch, zip, len, BM_ERR_FORMAT, "nested data.pkl", NULL);
    free(zip);
    zfile dup[] = {{"a/data.pkl", b.p, b.n, 0}, {"a/data/0", ramp, 96, 0}, {"a/data/0", ramp, 96, 0}};
    zip = make_zip(dup, 3, 0, &len);
    parse_expect(bmi_parse_torch, zip, len, BM_ERR_FORMAT, "duplicate entries", NULL);
    free(zip);
    free(b.p);

    /* the legacy format */
    static const uint8_t legacy[] = {0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9,
                                     0x20, 0x6a, 0xa8, 0x50, 0x19, 0x2e};
    parse_expect(bmi_parse_torch, legacy, sizeof legacy, BM_ERR_UNSUPPORTED, "legacy format", NULL);
    CHECK(strstr(bm_last_error(), "torch.save") != NULL && strstr(bm_last_error(), "safetensors") != NULL);
    parse_expect(bmi_parse_torch, (const uint8_t *)"hello, world, this is not a zip file", 36,
                 BM_ERR_FORMAT, "not a zip", NULL);
}

/* Pickles that are broken in themselves. */
static void pickle_case(const buf *b, const char *label) {
    torch_expect(b, &ramp_storage, 1, BM_ERR_FORMAT, label);
}

static void test_pickle_machine(void) {
    struct {
        const char *label;
        const char *bytes;
        size_t n;
    } cases[] = {
        {"empty", "", 0},
        {"no STOP", "\x80\x02}", 3},
        {"STOP on empty stack", "\x80\x02.", 3},
        {"protocol 6", "\x80\x06}.", 4},
        {"memo never set", "\x80\x02h\x05.", 5},
        {"PUT on empty stack", "\x80\x02q\x00}.", 6},
        {"huge LONG_BINPUT", "\x80\x02}r\xff\xff\xff\xff.", 9},
        {"REDUCE underflow", "\x80\x02R.", 4},
        {"SETITEM on a list", "\x80\x02]K\x01K\x02s.", 9},
        {"APPEND on a dict", "\x80\x02}N" "a.", 6},
        {"odd SETITEMS", "\x80\x02}(N" "u.", 7},
        {"odd DICT", "\x80\x02(Nd.", 6},
        {"TUPLE without MARK", "\x80\x02t.", 4},
        {"POP below a MARK", "\x80\x02}(00.", 7},
        {"APPENDS with nothing below", "\x80\x02(e.", 5},
        {"BINUNICODE past the end", "\x80\x02X\xff\xff\xff\x7f" "abc.", 11},
        {"BINUNICODE8 2^64-1", "\x80\x02\x8d\xff\xff\xff\xff\xff\xff\xff\xff.", 12},
        {"negative BINSTRING", "\x80\x02T\xff\xff\xff\xff.", 8},
        {"negative LONG4", "\x80\x02\x8b\xff\xff\xff\xff.", 8},
        {"frame past the end", "\x80\x04\x95\xff\x00\x00\x00\x00\x00\x00\x00}.", 13},
        {"text INT opcode", "\x80\x02I1\n.", 6},
        {"NEXT_BUFFER", "\x80\x05\x97.", 4},
        {"unknown opcode 0xff", "\x80\x02\xff.", 4},
        {"GLOBAL without newline", "\x80\x02" "cos", 5},
        {"STACK_GLOBAL of ints", "\x80\x04K\x01K\x02\x93.", 8},
        {"GET with letters", "\x80\x02}g1x\n.", 8},
        {"ADDITEMS to a list", "\x80\x04](K\x01\x90.", 8},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        buf b = {0};
        b_put(&b, cases[i].bytes, cases[i].n);
        pickle_case(&b, cases[i].label);
        free(b.p);
    }
    /* bombs: nesting, stack, value count */
    buf b = {0};
    pk_op(&b, 0x80), pk_op(&b, 2);
    for (int i = 0; i < 70000; i++) pk_op(&b, '(');
    pickle_case(&b, "70000 MARKs");
    free(b.p);
    b = (buf){0};
    pk_op(&b, 0x80), pk_op(&b, 2);
    for (int i = 0; i < (1 << 20) + 10; i++) pk_op(&b, 'N');
    pk_op(&b, '.');
    pickle_case(&b, "a million Nones on the stack");
    free(b.p);
    b = (buf){0};
    pk_op(&b, 0x80), pk_op(&b, 2);
    for (int i = 0; i < (1 << 21) + 10; i++) pk_op(&b, ']'), pk_op(&b, '0');
    pk_op(&b, '}'), pk_op(&b, '.');
    pickle_case(&b, "two million lists");
    CHECK(strstr(bm_last_error(), "more than") != NULL);
    free(b.p);
}

/* ---- torch: the fixture, truncated and bit-flipped ------------------------- */

static void test_torch_hostile(void) {
    char path[1024];
    size_t len;
    fixture_path(path, sizeof path, "tiny-f32", "pytorch_model.bin");
    uint8_t *file = read_whole(path, &len);
    CHECK(file != NULL);
    if (!file) return;
    size_t bad = 0, cases = 0;
    for (size_t cut = 0; cut < 512 && cut < len; cut++, cases++)
        bad += !parse_copy_behaves(bmi_parse_torch, file, cut, 1);
    for (size_t i = 0; i < 200; i++, cases++)
        bad += !parse_copy_behaves(bmi_parse_torch, file, (len - 1) * i / 199, 1);
    CHECK_MSG(bad == 0, "%zu of %zu truncated torch files misbehaved", bad, cases);

    /* Where data.pkl and the central directory lie. */
    bmi_zip zip;
    const uint8_t *pkl = NULL;
    size_t pkl_len = 0;
    CHECK_OK(bmi_zip_open(file, len, &zip));
    const bmi_zip_entry *e = bmi_zip_find(&zip, "pytorch_model/data.pkl", 22);
    CHECK(e != NULL);
    if (e) CHECK_OK(bmi_zip_entry_data(&zip, e, &pkl, &pkl_len));
    size_t pkl_at = pkl ? (size_t)(pkl - file) : 0;
    size_t cd_at = bmi_rd32(file + len - 22 + 16);

    /* Every truncation of the pickle, in an archive of its own. */
    bad = cases = 0;
    for (size_t cut = 0; cut < pkl_len; cut++, cases++) {
        zfile f[] = {{"archive/data.pkl", pkl, cut, 0}};
        size_t zlen;
        uint8_t *z = make_zip(f, 1, 0, &zlen);
        bad += !parse_behaves(bmi_parse_torch, z, zlen, 1);
        free(z);
    }
    CHECK_MSG(bad == 0 && cases > 1000, "%zu of %zu truncated pickles misbehaved", bad, cases);

    /* Flip each pickle byte in place, three ways. */
    bad = cases = 0;
    uint32_t rng = 12345;
    for (size_t i = pkl_at; i < pkl_at + pkl_len; i++) {
        uint8_t saved = file[i];
        rng = rng * 1103515245u + 12345u;
        uint8_t tries[3] = {(uint8_t)(saved ^ 0x01), (uint8_t)(saved ^ 0xff), (uint8_t)(rng >> 16)};
        for (int k = 0; k < 3; k++, cases++) {
            file[i] = tries[k];
            bad += !parse_behaves(bmi_parse_torch, file, len, 0);
        }
        file[i] = saved;
    }
    CHECK_MSG(bad == 0, "%zu of %zu bit-flipped pickles misbehaved", bad, cases);

    /* Flip bytes of every local header and of the central directory. */
    bad = cases = 0;
    for (size_t k = 0; k < zip.count; k++) {
        size_t at = (size_t)zip.entries[k].local_offset;
        size_t end = at + 30 + bmi_rd16(file + at + 26) + bmi_rd16(file + at + 28);
        for (size_t i = at; i < end; i++, cases++) {
            uint8_t saved = file[i];
            file[i] ^= (uint8_t)(i % 2 ? 0xff : 0x10);
            bad += !parse_behaves(bmi_parse_torch, file, len, 0);
            file[i] = saved;
        }
    }
    for (size_t i = cd_at; i < len; i++, cases++) {
        uint8_t saved = file[i];
        for (int k = 0; k < 2; k++) {
            file[i] = (uint8_t)(saved ^ (k ? 0x80 : 0x01));
            bad += !parse_behaves(bmi_parse_torch, file, len, 0);
        }
        file[i] = saved;
    }
    CHECK_MSG(bad == 0, "%zu of %zu bit-flipped ZIP headers misbehaved", bad, cases);
    CHECK(parse_behaves(bmi_parse_torch, file, len, 0));
    bmi_zip_close(&zip);
    free(file);
}

/* ---- allocation failures ---------------------------------------------------- */

static void alloc_sweep(const char *fixture, const char *file, parse_fn fn) {
    char path[1024];
    size_t len;
    fixture_path(path, sizeof path, fixture, file);
    uint8_t *bytes = read_whole(path, &len);
    CHECK(bytes != NULL);
    if (!bytes) return;
    size_t bad = 0, count = 0;
    uint64_t n;
    for (n = 1; n < 100000; n++) {
        bmi_tensor_table t;
        bmi_alloc_fail_at(n);
        bmi_clear_error();
        bm_status st = fn(bytes, len, &t);
        uint64_t made = bmi_alloc_fail_at(0);
        if (st == BM_OK) {
            count = t.count;
            bmi_table_free(&t);
            if (made < n) break; /* nothing failed: every site has been hit */
        } else if (st != BM_ERR_OUT_OF_MEMORY || !table_is_empty(&t) || !bm_last_error()[0]) {
            fprintf(stderr, "%s/%s: failing allocation %llu gave %d (%s)\n", fixture, file,
                    (unsigned long long)n, (int)st, bm_last_error());
            bad++;
        }
    }
    CHECK_MSG(bad == 0 && count > 0 && n > 3, "%s/%s: %zu bad of %llu allocation failures", fixture,
              file, bad, (unsigned long long)n);
    free(bytes);
}

/* jansson allocates through the library's hooks in this test, so the sweep
 * also fails allocations inside the JSON parser. */
static void *json_alloc(size_t n) { return bmi_malloc(n); }
static void json_release(void *p) { bmi_free(p); }

int main(void) {
    json_set_alloc_funcs(json_alloc, json_release);
    for (int i = 0; i < 64; i++) ramp[i] = (float)i;
    test_fixture_pair("tiny-f32", BMI_F32);
    test_fixture_pair("tiny-bf16", BMI_BF16);
    test_f32_values();
    test_file_errors();
    test_safetensors_handmade();
    test_safetensors_hostile();
    test_torch_views();
    test_torch_bad_tensors();
    test_torch_not_whitelisted();
    test_torch_junk();
    test_torch_variants();
    test_pickle_machine();
    test_torch_hostile();
    alloc_sweep("tiny-f32", "model.safetensors", bmi_parse_safetensors);
    alloc_sweep("tiny-bf16", "model.safetensors", bmi_parse_safetensors);
    alloc_sweep("tiny-f32", "pytorch_model.bin", bmi_parse_torch);
    alloc_sweep("tiny-bf16", "pytorch_model.bin", bmi_parse_torch);
    return check_summary("test_formats");
}
