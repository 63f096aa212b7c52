/* Checkpoint writers: see ckpt_write.h. The torch layout copies what torch 2.x
 * writes through miniz, byte for byte where it matters to readers (entry
 * order, names, 64-byte data alignment through "FB" extra fields, data
 * descriptors, when ZIP64 fields appear), so that files made here load in
 * torch and in every reader that loads torch's own files. */
#include "ckpt_write.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

/* Tensor bytes go to the file in pieces of this size, so memory use does not
 * grow with the checkpoint. */
#define CHUNK_BYTES ((size_t)4 << 20)

/* ---- CRC-32 ------------------------------------------------------------- */

/* Slicing by 8 bytes: a multi-gigabyte checkpoint is checksummed at several
 * GB/s instead of the byte-at-a-time ~0.5 GB/s. */
static uint32_t crc_tables[8][256];
static pthread_once_t crc_once = PTHREAD_ONCE_INIT;

static void crc_build_tables(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        crc_tables[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; i++)
        for (int t = 1; t < 8; t++)
            crc_tables[t][i] = (crc_tables[t - 1][i] >> 8) ^ crc_tables[0][crc_tables[t - 1][i] & 0xff];
}

uint32_t bmi_crc32(uint32_t crc, const void *data, size_t n) {
    pthread_once(&crc_once, crc_build_tables);
    const uint8_t *p = (const uint8_t *)data;
    crc = ~crc;
    while (n >= 8) {
        uint32_t a = crc ^ bmi_rd32(p), b = bmi_rd32(p + 4);
        crc = crc_tables[7][a & 0xff] ^ crc_tables[6][(a >> 8) & 0xff] ^
              crc_tables[5][(a >> 16) & 0xff] ^ crc_tables[4][a >> 24] ^
              crc_tables[3][b & 0xff] ^ crc_tables[2][(b >> 8) & 0xff] ^
              crc_tables[1][(b >> 16) & 0xff] ^ crc_tables[0][b >> 24];
        p += 8;
        n -= 8;
    }
    while (n--) crc = (crc >> 8) ^ crc_tables[0][(crc ^ *p++) & 0xff];
    return ~crc;
}

/* ---- growable byte buffer (headers, pickle, central directory) ---------- */

typedef struct byte_buf {
    uint8_t *p;
    size_t len, cap;
    int failed; /* an append ran out of memory; checked once at the end */
} byte_buf;

static void buf_append(byte_buf *b, const void *data, size_t n) {
    if (b->failed) return;
    if (n > SIZE_MAX - b->len) {
        b->failed = 1;
        return;
    }
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n) cap = cap > SIZE_MAX / 2 ? b->len + n : cap * 2;
        uint8_t *p = bmi_realloc(b->p, cap);
        if (!p) {
            b->failed = 1;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    if (n) memcpy(b->p + b->len, data, n);
    b->len += n;
}

static void buf_byte(byte_buf *b, uint8_t v) { buf_append(b, &v, 1); }
static void buf_str(byte_buf *b, const char *s) { buf_append(b, s, strlen(s)); }

static void buf_le16(byte_buf *b, uint16_t v) {
    uint8_t x[2] = {(uint8_t)v, (uint8_t)(v >> 8)};
    buf_append(b, x, 2);
}

static void buf_le32(byte_buf *b, uint32_t v) {
    uint8_t x[4] = {(uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24)};
    buf_append(b, x, 4);
}

static void buf_le64(byte_buf *b, uint64_t v) {
    buf_le32(b, (uint32_t)v);
    buf_le32(b, (uint32_t)(v >> 32));
}

static void buf_u64_decimal(byte_buf *b, uint64_t v) {
    char s[24];
    snprintf(s, sizeof s, "%llu", (unsigned long long)v);
    buf_str(b, s);
}

static void buf_free(byte_buf *b) {
    bmi_free(b->p);
    memset(b, 0, sizeof *b);
}

/* ---- checking what we are asked to write -------------------------------- */

static int utf8_is_valid(const char *s) {
    const uint8_t *p = (const uint8_t *)s;
    while (*p) {
        uint32_t c = *p;
        int extra = c < 0x80 ? 0 : (c & 0xe0) == 0xc0 ? 1 : (c & 0xf0) == 0xe0 ? 2
                                  : (c & 0xf8) == 0xf0 ? 3 : -1;
        if (extra < 0) return 0;
        uint32_t cp = extra == 0 ? c : c & (0x3fu >> extra);
        for (int i = 1; i <= extra; i++) {
            if ((p[i] & 0xc0) != 0x80) return 0;
            cp = (cp << 6) | (p[i] & 0x3f);
        }
        static const uint32_t min_for_len[4] = {0, 0x80, 0x800, 0x10000};
        if (cp < min_for_len[extra] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return 0;
        p += extra + 1;
    }
    return 1;
}

/* Number of bytes the tensor occupies once written contiguously. */
static bm_status tensor_byte_size(const bmi_tensor *t, uint64_t *bytes) {
    uint64_t numel = 1;
    for (int d = 0; d < t->ndim; d++) {
        if (t->shape[d] < 0) return bmi_fail(BM_ERR_INVALID_ARGUMENT, "%s: negative dimension", t->name);
        if (t->shape[d] != 0 && numel > UINT64_MAX / 16 / (uint64_t)t->shape[d])
            return bmi_fail(BM_ERR_INVALID_ARGUMENT, "%s: too many elements", t->name);
        numel *= (uint64_t)t->shape[d];
    }
    *bytes = numel * bmi_dtype_size(t->dtype);
    return BM_OK;
}

/* A strided view from memory must lie inside the bytes it says it spans,
 * since we read every element of it. */
static bm_status check_memory_view(const bmi_tensor *t, uint64_t bytes) {
    if (bytes == 0) return BM_OK;
    if (!t->data) return bmi_fail(BM_ERR_INVALID_ARGUMENT, "%s: no data", t->name);
    uint64_t last = 0;
    for (int d = 0; d < t->ndim; d++) {
        if (t->stride[d] < 0)
            return bmi_fail(BM_ERR_INVALID_ARGUMENT, "%s: negative stride", t->name);
        last += (uint64_t)(t->shape[d] - 1) * (uint64_t)t->stride[d];
    }
    if ((last + 1) * bmi_dtype_size(t->dtype) > t->nbytes)
        return bmi_fail(BM_ERR_INVALID_ARGUMENT, "%s: view spans past its %zu bytes", t->name, t->nbytes);
    return BM_OK;
}

static int compare_name_ptrs(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static bm_status check_unique_names(const bmi_tensor *tensors, size_t n) {
    if (n < 2) return BM_OK;
    const char **names = bmi_malloc(n * sizeof *names);
    if (!names) return bmi_fail(BM_ERR_OUT_OF_MEMORY, "out of memory checking tensor names");
    for (size_t i = 0; i < n; i++) names[i] = tensors[i].name;
    qsort(names, n, sizeof *names, compare_name_ptrs);
    bm_status st = BM_OK;
    for (size_t i = 1; i < n && st == BM_OK; i++)
        if (strcmp(names[i - 1], names[i]) == 0)
            st = bmi_fail(BM_ERR_INVALID_ARGUMENT, "tensor name %s appears twice", names[i]);
    bmi_free(names);
    return st;
}

static bm_status check_tensors(const bmi_tensor *tensors, size_t n, bmi_tensor_source src) {
    if (n && !tensors) return bmi_fail(BM_ERR_INVALID_ARGUMENT, "no tensor list");
    for (size_t i = 0; i < n; i++) {
        const bmi_tensor *t = &tensors[i];
        if (!t->name || !t->name[0]) return bmi_fail(BM_ERR_INVALID_ARGUMENT, "tensor %zu has no name", i);
        if (!utf8_is_valid(t->name))
            return bmi_fail(BM_ERR_INVALID_ARGUMENT, "tensor %zu: name is not valid UTF-8", i);
        if ((unsigned)t->dtype >= BMI_DTYPE_COUNT)
            return bmi_fail(BM_ERR_INVALID_ARGUMENT, "%s: unknown dtype %d", t->name, (int)t->dtype);
        if (t->ndim < 0 || t->ndim > BMI_MAX_DIMS)
            return bmi_fail(BM_ERR_INVALID_ARGUMENT, "%s: %d dimensions", t->name, t->ndim);
        uint64_t bytes;
        bm_status st = tensor_byte_size(t, &bytes);
        if (st == BM_OK && !src.fill) st = check_memory_view(t, bytes);
        if (st != BM_OK) return st;
    }
    return check_unique_names(tensors, n);
}

/* ---- output file -------------------------------------------------------- */

typedef struct out_file {
    FILE *f;
    const char *path;
    uint64_t pos; /* bytes written so far = offset of the next byte */
} out_file;

static bm_status out_open(out_file *o, const char *path) {
    o->path = path;
    o->pos = 0;
    o->f = fopen(path, "wb");
    if (!o->f) return bmi_fail(BM_ERR_IO, "cannot create %s: %s", path, strerror(errno));
    return BM_OK;
}

static bm_status out_write(out_file *o, const void *data, size_t n) {
    if (n && fwrite(data, 1, n, o->f) != n)
        return bmi_fail(BM_ERR_IO, "cannot write %s: %s", o->path, strerror(errno));
    o->pos += n;
    return BM_OK;
}

/* Closes the file; on failure (st != BM_OK, or the close fails) the partial
 * file is removed so nobody mistakes it for a checkpoint. */
static bm_status out_finish(out_file *o, bm_status st) {
    if (!o->f) return st;
    if (fclose(o->f) != 0 && st == BM_OK)
        st = bmi_fail(BM_ERR_IO, "cannot write %s: %s", o->path, strerror(errno));
    o->f = NULL;
    if (st != BM_OK) unlink(o->path);
    return st;
}

/* ---- tensor bytes, a chunk at a time ------------------------------------ */

/* Copies elements [first, first + count) of a strided view into dst, in
 * row-major order. */
static void gather_elements(const bmi_tensor *t, uint64_t first, uint64_t count, uint8_t *dst) {
    size_t esize = bmi_dtype_size(t->dtype);
    int64_t index[BMI_MAX_DIMS];
    uint64_t rest = first;
    for (int d = t->ndim - 1; d >= 0; d--) {
        index[d] = (int64_t)(rest % (uint64_t)t->shape[d]);
        rest /= (uint64_t)t->shape[d];
    }
    const uint8_t *base = (const uint8_t *)t->data;
    for (uint64_t e = 0; e < count; e++) {
        int64_t offset = 0;
        for (int d = 0; d < t->ndim; d++) offset += index[d] * t->stride[d];
        memcpy(dst + e * esize, base + (size_t)offset * esize, esize);
        for (int d = t->ndim - 1; d >= 0; d--) {
            if (++index[d] < t->shape[d]) break;
            index[d] = 0;
        }
    }
}

typedef struct tensor_stream {
    const bmi_tensor *tensors;
    bmi_tensor_source src;
    uint8_t *chunk; /* CHUNK_BYTES */
} tensor_stream;

/* Writes tensor i contiguously; *crc is continued over its bytes when not
 * NULL. */
static bm_status stream_tensor(out_file *o, const tensor_stream *ts, size_t i, uint32_t *crc) {
    const bmi_tensor *t = &ts->tensors[i];
    size_t esize = bmi_dtype_size(t->dtype);
    uint64_t bytes;
    bm_status st = tensor_byte_size(t, &bytes);
    uint64_t numel = bytes / esize, per_chunk = CHUNK_BYTES / esize;
    int direct = !ts->src.fill && bmi_tensor_is_contiguous(t);
    for (uint64_t first = 0; st == BM_OK && first < numel; first += per_chunk) {
        uint64_t count = numel - first < per_chunk ? numel - first : per_chunk;
        const uint8_t *piece = ts->chunk;
        if (direct) {
            piece = (const uint8_t *)t->data + first * esize;
        } else if (ts->src.fill) {
            st = ts->src.fill(ts->src.ctx, i, first, count, ts->chunk);
            if (st != BM_OK) {
                bmi_error_context("%s", t->name);
                break;
            }
        } else {
            gather_elements(t, first, count, ts->chunk);
        }
        if (crc) *crc = bmi_crc32(*crc, piece, (size_t)(count * esize));
        st = out_write(o, piece, (size_t)(count * esize));
    }
    return st;
}

static bm_status stream_init(tensor_stream *ts, const bmi_tensor *tensors, bmi_tensor_source src) {
    ts->tensors = tensors;
    ts->src = src;
    ts->chunk = bmi_aligned_alloc(64, CHUNK_BYTES);
    if (!ts->chunk) return bmi_fail(BM_ERR_OUT_OF_MEMORY, "out of memory for a write buffer");
    return BM_OK;
}

/* ---- safetensors -------------------------------------------------------- */

static const char *safetensors_dtype(bmi_dtype t) {
    static const char *names[BMI_DTYPE_COUNT] = {"F32", "BF16", "F16", "I32", "I64", "U8"};
    return names[t];
}

static void json_string(byte_buf *b, const char *s) {
    buf_byte(b, '"');
    for (const uint8_t *p = (const uint8_t *)s; *p; p++) {
        if (*p == '"' || *p == '\\') {
            buf_byte(b, '\\');
            buf_byte(b, *p);
        } else if (*p < 0x20) {
            char esc[8];
            snprintf(esc, sizeof esc, "\\u%04x", *p);
            buf_str(b, esc);
        } else {
            buf_byte(b, *p);
        }
    }
    buf_byte(b, '"');
}

static bm_status safetensors_metadata(byte_buf *b, const char *const *metadata) {
    static const char *const torch_default[] = {"format", "pt", NULL};
    if (!metadata) metadata = torch_default;
    buf_str(b, "\"__metadata__\":{");
    for (size_t k = 0; metadata[k]; k += 2) {
        if (!metadata[k + 1])
            return bmi_fail(BM_ERR_INVALID_ARGUMENT, "metadata key %s has no value", metadata[k]);
        if (!utf8_is_valid(metadata[k]) || !utf8_is_valid(metadata[k + 1]))
            return bmi_fail(BM_ERR_INVALID_ARGUMENT, "metadata is not valid UTF-8");
        if (k) buf_byte(b, ',');
        json_string(b, metadata[k]);
        buf_byte(b, ':');
        json_string(b, metadata[k + 1]);
    }
    buf_byte(b, '}');
    return BM_OK;
}

static bm_status safetensors_header(byte_buf *b, const bmi_tensor *tensors, size_t n,
                                    const char *const *metadata) {
    buf_byte(b, '{');
    bm_status st = safetensors_metadata(b, metadata);
    uint64_t offset = 0;
    for (size_t i = 0; i < n && st == BM_OK; i++) {
        const bmi_tensor *t = &tensors[i];
        uint64_t bytes;
        st = tensor_byte_size(t, &bytes);
        buf_byte(b, ',');
        json_string(b, t->name);
        buf_str(b, ":{\"dtype\":\"");
        buf_str(b, safetensors_dtype(t->dtype));
        buf_str(b, "\",\"shape\":[");
        for (int d = 0; d < t->ndim; d++) {
            if (d) buf_byte(b, ',');
            buf_u64_decimal(b, (uint64_t)t->shape[d]);
        }
        buf_str(b, "],\"data_offsets\":[");
        buf_u64_decimal(b, offset);
        buf_byte(b, ',');
        offset += bytes;
        buf_u64_decimal(b, offset);
        buf_str(b, "]}");
    }
    buf_byte(b, '}');
    /* Pad with spaces so the data starts 8-byte aligned, as the reference
     * writer does; readers map tensors in place. */
    while ((b->len & 7) != 0 && !b->failed) buf_byte(b, ' ');
    if (st == BM_OK && b->failed) st = bmi_fail(BM_ERR_OUT_OF_MEMORY, "out of memory for the safetensors header");
    return st;
}

bm_status bmi_write_safetensors_from(const char *path, const bmi_tensor *tensors, size_t n,
                                     const char *const *metadata, bmi_tensor_source src) {
    if (!path) return bmi_fail(BM_ERR_INVALID_ARGUMENT, "no output path");
    bm_status st = check_tensors(tensors, n, src);
    if (st != BM_OK) return st;
    byte_buf header = {0};
    tensor_stream ts = {0};
    st = safetensors_header(&header, tensors, n, metadata);
    if (st == BM_OK) st = stream_init(&ts, tensors, src);
    out_file o = {0};
    if (st == BM_OK) st = out_open(&o, path);
    if (st == BM_OK) {
        uint8_t len[8];
        for (int k = 0; k < 8; k++) len[k] = (uint8_t)((uint64_t)header.len >> (8 * k));
        st = out_write(&o, len, 8);
        if (st == BM_OK) st = out_write(&o, header.p, header.len);
        for (size_t i = 0; i < n && st == BM_OK; i++) st = stream_tensor(&o, &ts, i, NULL);
        st = out_finish(&o, st);
    }
    bmi_free(ts.chunk);
    buf_free(&header);
    return st;
}

bm_status bmi_write_safetensors(const char *path, const bmi_tensor *tensors, size_t n,
                                const char *const *metadata) {
    bmi_tensor_source src = {0};
    return bmi_write_safetensors_from(path, tensors, n, metadata, src);
}

/* ---- pickle (protocol 2), as Python's pickler writes a state dict -------- */

/* Python memoizes every string, tuple, global and reduced object it writes
 * and refers back to repeated ones (the 'storage' and 'cpu' strings, the
 * classes); we do the same so data.pkl matches torch's opcode for opcode. */
typedef struct pickler {
    byte_buf out;
    uint32_t next_memo;
    int64_t memo_rebuild, memo_storage_str, memo_cpu_str, memo_ordered_dict;
    int64_t memo_storage_class[BMI_DTYPE_COUNT];
} pickler;

static void pk_memo_put(pickler *p) {
    uint32_t idx = p->next_memo++;
    if (idx < 256) {
        buf_byte(&p->out, 'q'); /* BINPUT */
        buf_byte(&p->out, (uint8_t)idx);
    } else {
        buf_byte(&p->out, 'r'); /* LONG_BINPUT */
        buf_le32(&p->out, idx);
    }
}

static void pk_memo_get(pickler *p, int64_t idx) {
    if (idx < 256) {
        buf_byte(&p->out, 'h'); /* BINGET */
        buf_byte(&p->out, (uint8_t)idx);
    } else {
        buf_byte(&p->out, 'j'); /* LONG_BINGET */
        buf_le32(&p->out, (uint32_t)idx);
    }
}

/* Writes the object once and memoizes it, or refers to the earlier copy. */
static void pk_string(pickler *p, const char *s) {
    buf_byte(&p->out, 'X'); /* BINUNICODE */
    buf_le32(&p->out, (uint32_t)strlen(s));
    buf_str(&p->out, s);
    pk_memo_put(p);
}

static void pk_string_memoized(pickler *p, const char *s, int64_t *memo) {
    if (*memo >= 0) {
        pk_memo_get(p, *memo);
        return;
    }
    *memo = p->next_memo;
    pk_string(p, s);
}

static void pk_global_memoized(pickler *p, const char *module, const char *name, int64_t *memo) {
    if (*memo >= 0) {
        pk_memo_get(p, *memo);
        return;
    }
    *memo = p->next_memo;
    buf_byte(&p->out, 'c'); /* GLOBAL */
    buf_str(&p->out, module);
    buf_byte(&p->out, '\n');
    buf_str(&p->out, name);
    buf_byte(&p->out, '\n');
    pk_memo_put(p);
}

/* Non-negative integers, in the smallest opcode Python would pick. */
static void pk_int(pickler *p, uint64_t v) {
    if (v < 256) {
        buf_byte(&p->out, 'K'); /* BININT1 */
        buf_byte(&p->out, (uint8_t)v);
    } else if (v < 65536) {
        buf_byte(&p->out, 'M'); /* BININT2 */
        buf_le16(&p->out, (uint16_t)v);
    } else if (v <= INT32_MAX) {
        buf_byte(&p->out, 'J'); /* BININT */
        buf_le32(&p->out, (uint32_t)v);
    } else {
        /* LONG1: little-endian two's complement, with a zero top byte when
         * the highest bit is set so it does not read as negative. */
        uint8_t bytes[9];
        uint8_t n = 0;
        for (uint64_t x = v; x; x >>= 8) bytes[n++] = (uint8_t)x;
        if (bytes[n - 1] & 0x80) bytes[n++] = 0;
        buf_byte(&p->out, 0x8a);
        buf_byte(&p->out, n);
        buf_append(&p->out, bytes, n);
    }
}

static void pk_int_tuple(pickler *p, const int64_t *v, int n) {
    if (n == 0) {
        buf_byte(&p->out, ')'); /* EMPTY_TUPLE: Python does not memoize it */
        return;
    }
    if (n > 3) buf_byte(&p->out, '('); /* MARK */
    for (int i = 0; i < n; i++) pk_int(p, (uint64_t)v[i]);
    static const uint8_t small_tuple[4] = {0, 0x85, 0x86, 0x87}; /* TUPLE1..3 */
    buf_byte(&p->out, n > 3 ? 't' : small_tuple[n]);
    pk_memo_put(p);
}

static const char *torch_storage_class(bmi_dtype t) {
    static const char *names[BMI_DTYPE_COUNT] = {"FloatStorage", "BFloat16Storage", "HalfStorage",
                                                 "IntStorage",   "LongStorage",     "ByteStorage"};
    return names[t];
}

/* _rebuild_tensor_v2(persistent storage, 0, size, stride, False, OrderedDict()) */
static void pk_tensor(pickler *p, const bmi_tensor *t, size_t key) {
    uint64_t numel = 1;
    int64_t stride[BMI_MAX_DIMS];
    for (int d = t->ndim - 1; d >= 0; d--) {
        stride[d] = (int64_t)numel;
        numel *= (uint64_t)t->shape[d];
    }
    char key_text[24];
    snprintf(key_text, sizeof key_text, "%zu", key);

    pk_global_memoized(p, "torch._utils", "_rebuild_tensor_v2", &p->memo_rebuild);
    buf_byte(&p->out, '('); /* arguments */
    buf_byte(&p->out, '('); /* persistent id */
    pk_string_memoized(p, "storage", &p->memo_storage_str);
    pk_global_memoized(p, "torch", torch_storage_class(t->dtype), &p->memo_storage_class[t->dtype]);
    pk_string(p, key_text);
    pk_string_memoized(p, "cpu", &p->memo_cpu_str);
    pk_int(p, numel);
    buf_byte(&p->out, 't');
    pk_memo_put(p);
    buf_byte(&p->out, 'Q'); /* BINPERSID */
    pk_int(p, 0);           /* storage offset */
    pk_int_tuple(p, t->shape, t->ndim);
    pk_int_tuple(p, stride, t->ndim);
    buf_byte(&p->out, 0x89); /* NEWFALSE: requires_grad */
    pk_global_memoized(p, "collections", "OrderedDict", &p->memo_ordered_dict);
    buf_byte(&p->out, ')');
    buf_byte(&p->out, 'R'); /* REDUCE: an empty OrderedDict of backward hooks */
    pk_memo_put(p);
    buf_byte(&p->out, 't');
    pk_memo_put(p);
    buf_byte(&p->out, 'R');
    pk_memo_put(p);
}

/* {"model": {name: tensor, ...}} with tensor i in storage key i. */
static bm_status build_pickle(byte_buf *out, const bmi_tensor *tensors, size_t n) {
    enum { PYTHON_SETITEMS_BATCH = 1000 };
    pickler p = {.memo_rebuild = -1, .memo_storage_str = -1, .memo_cpu_str = -1, .memo_ordered_dict = -1};
    for (int d = 0; d < BMI_DTYPE_COUNT; d++) p.memo_storage_class[d] = -1;
    buf_append(&p.out, "\x80\x02", 2); /* PROTO 2 */
    buf_byte(&p.out, '}');
    pk_memo_put(&p);
    pk_string(&p, "model");
    buf_byte(&p.out, '}');
    pk_memo_put(&p);
    for (size_t start = 0; start < n; start += PYTHON_SETITEMS_BATCH) {
        size_t count = n - start < PYTHON_SETITEMS_BATCH ? n - start : PYTHON_SETITEMS_BATCH;
        if (count > 1) buf_byte(&p.out, '(');
        for (size_t i = start; i < start + count; i++) {
            pk_string(&p, tensors[i].name);
            pk_tensor(&p, &tensors[i], i);
        }
        buf_byte(&p.out, count > 1 ? 'u' : 's'); /* SETITEMS / SETITEM */
    }
    buf_byte(&p.out, 's'); /* "model" -> state dict */
    buf_byte(&p.out, '.'); /* STOP */
    if (p.out.failed) {
        buf_free(&p.out);
        return bmi_fail(BM_ERR_OUT_OF_MEMORY, "out of memory for data.pkl");
    }
    *out = p.out;
    return BM_OK;
}

/* ---- ZIP, the way miniz writes it for torch ----------------------------- */

#define ZIP_U32_LIMIT 0xFFFFFFFFu
#define ZIP_FLAGS 0x0808 /* sizes in a data descriptor; UTF-8 names */
#define ZIP_DATA_ALIGNMENT 64

typedef struct zip_entry {
    char *name;
    uint64_t header_offset, data_offset, size;
    uint32_t crc;
} zip_entry;

typedef struct zip_writer {
    out_file out;
    zip_entry *entries;
    size_t count, cap;
    const char *prefix; /* "<stem>/" */
    zip_entry *open;    /* entry whose data is being written */
} zip_writer;

static int entry_needs_zip64(uint64_t size, uint64_t offset) {
    return size >= ZIP_U32_LIMIT || offset >= ZIP_U32_LIMIT;
}

/* The ZIP64 extended-information field: each 64-bit value only when its
 * 32-bit slot overflows, in the order APPNOTE gives. */
static void zip64_extra(byte_buf *b, uint64_t size, uint64_t offset) {
    if (!entry_needs_zip64(size, offset)) return;
    uint16_t len = (uint16_t)((size >= ZIP_U32_LIMIT ? 16 : 0) + (offset >= ZIP_U32_LIMIT ? 8 : 0));
    buf_le16(b, 0x0001);
    buf_le16(b, len);
    if (size >= ZIP_U32_LIMIT) {
        buf_le64(b, size); /* uncompressed */
        buf_le64(b, size); /* compressed: stored */
    }
    if (offset >= ZIP_U32_LIMIT) buf_le64(b, offset);
}

static bm_status zip_begin_entry(zip_writer *z, const char *name, uint64_t size) {
    if (z->count == z->cap) {
        size_t cap = z->cap ? z->cap * 2 : 16;
        zip_entry *e = bmi_realloc(z->entries, cap * sizeof *e);
        if (!e) return bmi_fail(BM_ERR_OUT_OF_MEMORY, "out of memory for the ZIP directory");
        z->entries = e;
        z->cap = cap;
    }
    size_t plen = strlen(z->prefix), nlen = strlen(name);
    zip_entry *e = &z->entries[z->count];
    memset(e, 0, sizeof *e);
    e->name = bmi_malloc(plen + nlen + 1);
    if (!e->name) return bmi_fail(BM_ERR_OUT_OF_MEMORY, "out of memory for a ZIP entry name");
    memcpy(e->name, z->prefix, plen);
    memcpy(e->name + plen, name, nlen + 1);
    e->header_offset = z->out.pos;
    e->size = size;
    z->count++;
    z->open = e;

    byte_buf extra = {0};
    zip64_extra(&extra, size, e->header_offset);
    /* torch pads every entry's data to 64 bytes with an extra field "FB",
     * whose length counts only the 'Z' filler after its 4-byte header. */
    uint64_t data_start = e->header_offset + 30 + plen + nlen + extra.len + 4;
    uint16_t pad = (uint16_t)((ZIP_DATA_ALIGNMENT - data_start % ZIP_DATA_ALIGNMENT) % ZIP_DATA_ALIGNMENT);
    buf_str(&extra, "FB");
    buf_le16(&extra, pad);
    for (uint16_t k = 0; k < pad; k++) buf_byte(&extra, 'Z');

    byte_buf h = {0};
    buf_le32(&h, 0x04034b50);
    buf_le16(&h, 0); /* version needed: miniz writes 0 for stored entries */
    buf_le16(&h, ZIP_FLAGS);
    buf_le16(&h, 0); /* stored */
    buf_le16(&h, 0); /* time and date 0: torch output is reproducible */
    buf_le16(&h, 0);
    buf_le32(&h, 0); /* crc and sizes follow the data */
    buf_le32(&h, 0);
    buf_le32(&h, 0);
    buf_le16(&h, (uint16_t)(plen + nlen));
    buf_le16(&h, (uint16_t)extra.len);
    buf_str(&h, e->name);
    buf_append(&h, extra.p, extra.len);
    bm_status st = h.failed || extra.failed
                       ? bmi_fail(BM_ERR_OUT_OF_MEMORY, "out of memory for a ZIP header")
                       : out_write(&z->out, h.p, h.len);
    e->data_offset = z->out.pos;
    buf_free(&h);
    buf_free(&extra);
    return st;
}

static bm_status zip_end_entry(zip_writer *z, uint32_t crc) {
    zip_entry *e = z->open;
    z->open = NULL;
    if (z->out.pos - e->data_offset != e->size)
        return bmi_fail(BM_ERR_IO, "%s: wrote %llu bytes, announced %llu", e->name,
                        (unsigned long long)(z->out.pos - e->data_offset), (unsigned long long)e->size);
    e->crc = crc;
    uint8_t d[24];
    size_t len;
    memcpy(d, "PK\x07\x08", 4);
    for (int k = 0; k < 4; k++) d[4 + k] = (uint8_t)(crc >> (8 * k));
    if (entry_needs_zip64(e->size, e->header_offset)) {
        for (int k = 0; k < 8; k++) d[8 + k] = d[16 + k] = (uint8_t)(e->size >> (8 * k));
        len = 24;
    } else {
        for (int k = 0; k < 4; k++) d[8 + k] = d[12 + k] = (uint8_t)(e->size >> (8 * k));
        len = 16;
    }
    return out_write(&z->out, d, len);
}

static bm_status zip_add_bytes(zip_writer *z, const char *name, const void *data, size_t n) {
    bm_status st = zip_begin_entry(z, name, n);
    if (st == BM_OK) st = out_write(&z->out, data, n);
    if (st == BM_OK) st = zip_end_entry(z, bmi_crc32(0, data, n));
    return st;
}

static bm_status zip_add_tensor(zip_writer *z, const char *name, const tensor_stream *ts, size_t i) {
    uint64_t bytes;
    bm_status st = tensor_byte_size(&ts->tensors[i], &bytes);
    if (st == BM_OK) st = zip_begin_entry(z, name, bytes);
    uint32_t crc = 0;
    if (st == BM_OK) st = stream_tensor(&z->out, ts, i, &crc);
    if (st == BM_OK) st = zip_end_entry(z, crc);
    return st;
}

static void zip_central_entry(byte_buf *b, const zip_entry *e) {
    byte_buf extra = {0};
    zip64_extra(&extra, e->size, e->header_offset);
    uint32_t size32 = e->size >= ZIP_U32_LIMIT ? ZIP_U32_LIMIT : (uint32_t)e->size;
    uint32_t offset32 = e->header_offset >= ZIP_U32_LIMIT ? ZIP_U32_LIMIT : (uint32_t)e->header_offset;
    buf_le32(b, 0x02014b50);
    buf_le16(b, 0); /* version made by, as miniz */
    buf_le16(b, 0); /* version needed */
    buf_le16(b, ZIP_FLAGS);
    buf_le16(b, 0);
    buf_le16(b, 0);
    buf_le16(b, 0);
    buf_le32(b, e->crc);
    buf_le32(b, size32);
    buf_le32(b, size32);
    buf_le16(b, (uint16_t)strlen(e->name));
    buf_le16(b, (uint16_t)extra.len);
    buf_le16(b, 0); /* comment */
    buf_le16(b, 0); /* disk */
    buf_le16(b, 0); /* internal attributes */
    buf_le32(b, 0); /* external attributes */
    buf_le32(b, offset32);
    buf_str(b, e->name);
    buf_append(b, extra.p, extra.len);
    if (extra.failed) b->failed = 1;
    buf_free(&extra);
}

/* Central directory, then the ZIP64 end record and locator (miniz writes them
 * for every torch archive, small or not), then the classic end record with
 * its fields saturated where they overflow. */
static bm_status zip_finish(zip_writer *z) {
    byte_buf b = {0};
    uint64_t cd_offset = z->out.pos;
    for (size_t i = 0; i < z->count; i++) zip_central_entry(&b, &z->entries[i]);
    uint64_t cd_size = b.len, end64_offset = cd_offset + cd_size, count = z->count;

    buf_le32(&b, 0x06064b50);
    buf_le64(&b, 44);     /* size of the rest of this record */
    buf_le16(&b, 0x031e); /* made by: Unix, spec 3.0, as miniz */
    buf_le16(&b, 45);     /* needed: 4.5, ZIP64 */
    buf_le32(&b, 0);
    buf_le32(&b, 0);
    buf_le64(&b, count);
    buf_le64(&b, count);
    buf_le64(&b, cd_size);
    buf_le64(&b, cd_offset);

    buf_le32(&b, 0x07064b50);
    buf_le32(&b, 0);
    buf_le64(&b, end64_offset);
    buf_le32(&b, 1); /* total disks */

    buf_le32(&b, 0x06054b50);
    buf_le16(&b, 0);
    buf_le16(&b, 0);
    buf_le16(&b, (uint16_t)(count > 0xFFFF ? 0xFFFF : count));
    buf_le16(&b, (uint16_t)(count > 0xFFFF ? 0xFFFF : count));
    buf_le32(&b, cd_size >= ZIP_U32_LIMIT ? ZIP_U32_LIMIT : (uint32_t)cd_size);
    buf_le32(&b, cd_offset >= ZIP_U32_LIMIT ? ZIP_U32_LIMIT : (uint32_t)cd_offset);
    buf_le16(&b, 0); /* comment */

    bm_status st = b.failed ? bmi_fail(BM_ERR_OUT_OF_MEMORY, "out of memory for the ZIP directory")
                            : out_write(&z->out, b.p, b.len);
    buf_free(&b);
    return st;
}

/* torch names the archive's top folder after the file: basename without its
 * extension. */
static char *archive_prefix(const char *path) {
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    const char *dot = strrchr(base, '.');
    size_t len = dot ? (size_t)(dot - base) : strlen(base);
    if (len == 0) base = "archive", len = 7;
    char *prefix = bmi_malloc(len + 2);
    if (!prefix) return NULL;
    memcpy(prefix, base, len);
    prefix[len] = '/';
    prefix[len + 1] = '\0';
    return prefix;
}

/* Storage entries come in the order of their keys as strings ("0", "1",
 * "10", ...), because torch writes sorted(storage keys). */
static int compare_keys_as_text(const void *a, const void *b) {
    char x[24], y[24];
    snprintf(x, sizeof x, "%zu", *(const size_t *)a);
    snprintf(y, sizeof y, "%zu", *(const size_t *)b);
    return strcmp(x, y);
}

static bm_status write_torch_entries(zip_writer *z, const byte_buf *pickle, const tensor_stream *ts,
                                     const size_t *key_order, size_t n) {
    bm_status st = zip_add_bytes(z, "data.pkl", pickle->p, pickle->len);
    if (st == BM_OK) st = zip_add_bytes(z, "byteorder", "little", 6);
    for (size_t k = 0; k < n && st == BM_OK; k++) {
        char name[32];
        snprintf(name, sizeof name, "data/%zu", key_order[k]);
        st = zip_add_tensor(z, name, ts, key_order[k]);
    }
    if (st == BM_OK) st = zip_add_bytes(z, "version", "3\n", 2);
    if (st == BM_OK) st = zip_finish(z);
    return st;
}

bm_status bmi_write_torch_from(const char *path, const bmi_tensor *tensors, size_t n,
                               bmi_tensor_source src) {
    if (!path) return bmi_fail(BM_ERR_INVALID_ARGUMENT, "no output path");
    bm_status st = check_tensors(tensors, n, src);
    if (st != BM_OK) return st;

    byte_buf pickle = {0};
    tensor_stream ts = {0};
    zip_writer z = {0};
    size_t *key_order = bmi_malloc((n ? n : 1) * sizeof *key_order);
    char *prefix = archive_prefix(path);
    if (!key_order || !prefix) st = bmi_fail(BM_ERR_OUT_OF_MEMORY, "out of memory writing %s", path);
    if (st == BM_OK) st = build_pickle(&pickle, tensors, n);
    if (st == BM_OK) st = stream_init(&ts, tensors, src);
    if (st == BM_OK) {
        for (size_t i = 0; i < n; i++) key_order[i] = i;
        qsort(key_order, n, sizeof *key_order, compare_keys_as_text);
        z.prefix = prefix;
        st = out_open(&z.out, path);
        if (st == BM_OK) {
            st = write_torch_entries(&z, &pickle, &ts, key_order, n);
            st = out_finish(&z.out, st);
        }
    }
    for (size_t i = 0; i < z.count; i++) bmi_free(z.entries[i].name);
    bmi_free(z.entries);
    bmi_free(ts.chunk);
    buf_free(&pickle);
    bmi_free(prefix);
    bmi_free(key_order);
    return st;
}

bm_status bmi_write_torch(const char *path, const bmi_tensor *tensors, size_t n) {
    bmi_tensor_source src = {0};
    return bmi_write_torch_from(path, tensors, n, src);
}
