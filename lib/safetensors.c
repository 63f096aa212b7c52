/* safetensors reader: an 8-byte little-endian header length, a JSON header
 * {name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__":
 * {...}}, then the data section the offsets are relative to. Views point
 * straight into the bytes; nothing is copied. */
#include "tensor.h"

#include <jansson.h>

#define SHOWN(s) (int)(strlen(s) > 200 ? 200 : strlen(s)), (s) /* %.*s of a name */

/* The reference implementation refuses headers above 100 MB; so do we, so a
 * hostile length cannot make jansson build a huge tree. */
#define MAX_HEADER (100u * 1000u * 1000u)

static bm_status parse_dtype(const char *name, const char *s, bmi_dtype *out) {
    static const struct {
        const char *name;
        bmi_dtype dtype;
    } usable[] = {{"F32", BMI_F32}, {"BF16", BMI_BF16}, {"F16", BMI_F16},
                  {"I32", BMI_I32}, {"I64", BMI_I64},   {"U8", BMI_U8}};
    static const char *const valid_elsewhere[] = {"F64", "I8", "I16", "U16", "U32", "U64", "BOOL",
                                                  "F8_E4M3", "F8_E5M2", "F8_E8M0", "F4", "F6_E2M3",
                                                  "F6_E3M2", "C64"};
    for (size_t i = 0; i < sizeof usable / sizeof usable[0]; i++) {
        if (strcmp(s, usable[i].name) == 0) {
            *out = usable[i].dtype;
            return BM_OK;
        }
    }
    for (size_t i = 0; i < sizeof valid_elsewhere / sizeof valid_elsewhere[0]; i++)
        if (strcmp(s, valid_elsewhere[i]) == 0)
            return bmi_fail(BM_ERR_UNSUPPORTED, "tensor '%.*s' has dtype %s; supported are F32, BF16, "
                            "F16 (and I32, I64, U8)", SHOWN(name), s);
    return bmi_fail(BM_ERR_FORMAT, "tensor '%.*s' has unknown dtype '%.*s'", SHOWN(name), SHOWN(s));
}

/* Read "shape" into the view and return the element count through *numel. */
static bm_status parse_shape(const char *name, json_t *shape, bmi_tensor *view, size_t *numel) {
    if (!json_is_array(shape))
        return bmi_fail(BM_ERR_FORMAT, "tensor '%.*s': shape is not an array", SHOWN(name));
    size_t ndim = json_array_size(shape);
    if (ndim > BMI_MAX_DIMS)
        return bmi_fail(BM_ERR_FORMAT, "tensor '%.*s' has %zu dimensions (at most %d)", SHOWN(name),
                        ndim, BMI_MAX_DIMS);
    view->ndim = (int)ndim;
    /* The product of the dimensions, zeros counted as ones, bounds every
     * stride; keeping it within int64 keeps all stride arithmetic exact. */
    size_t span = 1;
    int empty = 0;
    for (size_t i = 0; i < ndim; i++) {
        json_t *d = json_array_get(shape, i);
        if (!json_is_integer(d) || json_integer_value(d) < 0)
            return bmi_fail(BM_ERR_FORMAT, "tensor '%.*s': shape[%zu] is not a non-negative integer",
                            SHOWN(name), i);
        view->shape[i] = (int64_t)json_integer_value(d);
        if (view->shape[i] == 0) empty = 1;
        if ((uint64_t)view->shape[i] > SIZE_MAX ||
            !bmi_mul_size(span, view->shape[i] ? (size_t)view->shape[i] : 1, &span) ||
            span > (size_t)INT64_MAX)
            return bmi_fail(BM_ERR_FORMAT, "tensor '%.*s': shape has too many elements", SHOWN(name));
    }
    *numel = empty ? 0 : span;
    int64_t stride = 1;
    for (size_t i = ndim; i-- > 0;) {
        view->stride[i] = stride;
        stride *= view->shape[i] ? view->shape[i] : 1;
    }
    return BM_OK;
}

static bm_status parse_offsets(const char *name, json_t *offsets, size_t data_len, size_t *begin,
                               size_t *end) {
    if (!json_is_array(offsets) || json_array_size(offsets) != 2 ||
        !json_is_integer(json_array_get(offsets, 0)) || !json_is_integer(json_array_get(offsets, 1)))
        return bmi_fail(BM_ERR_FORMAT, "tensor '%.*s': data_offsets is not [begin, end]", SHOWN(name));
    json_int_t b = json_integer_value(json_array_get(offsets, 0));
    json_int_t e = json_integer_value(json_array_get(offsets, 1));
    if (b < 0 || e < b)
        return bmi_fail(BM_ERR_FORMAT, "tensor '%.*s': data_offsets [%lld, %lld] are not 0 <= begin <= end",
                        SHOWN(name), (long long)b, (long long)e);
    if ((unsigned long long)e > data_len)
        return bmi_fail(BM_ERR_FORMAT, "tensor '%.*s': data_offsets end %lld is past the data section "
                        "(%zu bytes; truncated file?)", SHOWN(name), (long long)e, data_len);
    *begin = (size_t)b;
    *end = (size_t)e;
    return BM_OK;
}

static bm_status parse_entry(const char *name, json_t *entry, const uint8_t *data, size_t data_len,
                             bmi_tensor *view) {
    if (!json_is_object(entry))
        return bmi_fail(BM_ERR_FORMAT, "header entry '%.*s' is not an object", SHOWN(name));
    json_t *dtype = json_object_get(entry, "dtype");
    if (!json_is_string(dtype))
        return bmi_fail(BM_ERR_FORMAT, "tensor '%.*s' has no dtype string", SHOWN(name));
    memset(view, 0, sizeof *view);
    bm_status st = parse_dtype(name, json_string_value(dtype), &view->dtype);
    size_t numel = 0, begin = 0, end = 0, want;
    if (st == BM_OK) st = parse_shape(name, json_object_get(entry, "shape"), view, &numel);
    if (st == BM_OK) st = parse_offsets(name, json_object_get(entry, "data_offsets"), data_len, &begin, &end);
    if (st != BM_OK) return st;
    if (!bmi_mul_size(numel, bmi_dtype_size(view->dtype), &want))
        return bmi_fail(BM_ERR_FORMAT, "tensor '%.*s': shape is too large", SHOWN(name));
    if (want != end - begin)
        return bmi_fail(BM_ERR_FORMAT, "tensor '%.*s': %zu bytes between its data_offsets, but its shape "
                        "and dtype need %zu", SHOWN(name), end - begin, want);
    view->name = (char *)name;
    /* The pointer may be unaligned for the dtype; the model builder copies
     * such tensors rather than reading them in place. */
    view->data = data + begin;
    view->nbytes = end - begin;
    return BM_OK;
}

static bm_status parse_header(json_t *root, const uint8_t *data, size_t data_len, bmi_tensor_table *table) {
    if (!json_is_object(root)) return bmi_fail(BM_ERR_FORMAT, "safetensors header is not a JSON object");
    const char *name;
    json_t *entry;
    json_object_foreach(root, name, entry) {
        if (strcmp(name, "__metadata__") == 0) {
            if (!json_is_object(entry))
                return bmi_fail(BM_ERR_FORMAT, "safetensors __metadata__ is not an object");
            continue;
        }
        bmi_tensor view;
        bm_status st = parse_entry(name, entry, data, data_len, &view);
        if (st == BM_OK) st = bmi_table_add(table, &view);
        if (st != BM_OK) return st;
    }
    return BM_OK;
}

/* ---- a JSON syntax check that allocates nothing ---------------------------
 * jansson reports a failed allocation as if the text were malformed (the
 * lexer's error token becomes "string expected" and the like), so the header
 * is first checked against the rules jansson applies: strict JSON, an object
 * at the top, valid UTF-8, no \u0000, no lone surrogates, integers within
 * long long, reals that cannot overflow a double. Where a limit differs it
 * is stricter than jansson's (nesting depth, real exponents). Once the text
 * passes, a jansson failure is either a duplicate name or out of memory. */

#define JSON_MAX_DEPTH 64

typedef struct json_cursor {
    const uint8_t *p;
    size_t len, pos;
    int depth;
    const char *err;
} json_cursor;

static int jc_fail(json_cursor *c, const char *why) {
    if (!c->err) c->err = why;
    return 0;
}

static int jc_peek(const json_cursor *c) { return c->pos < c->len ? c->p[c->pos] : -1; }

static void jc_space(json_cursor *c) {
    while (c->pos < c->len) {
        uint8_t b = c->p[c->pos];
        if (b != ' ' && b != '\t' && b != '\n' && b != '\r') break;
        c->pos++;
    }
}

static int jc_byte_in(json_cursor *c, uint8_t lo, uint8_t hi) {
    int b = jc_peek(c);
    if (b < lo || b > hi) return jc_fail(c, "invalid UTF-8");
    c->pos++;
    return 1;
}

/* One multi-byte UTF-8 sequence (shortest form, no surrogates, <= U+10FFFF). */
static int jc_utf8(json_cursor *c) {
    uint8_t b = c->p[c->pos++];
    uint8_t lo = 0x80, hi = 0xbf;
    int more;
    if (b >= 0xc2 && b <= 0xdf) more = 1;
    else if (b >= 0xe0 && b <= 0xef) more = 2, lo = b == 0xe0 ? 0xa0 : 0x80, hi = b == 0xed ? 0x9f : 0xbf;
    else if (b >= 0xf0 && b <= 0xf4) more = 3, lo = b == 0xf0 ? 0x90 : 0x80, hi = b == 0xf4 ? 0x8f : 0xbf;
    else return jc_fail(c, "invalid UTF-8");
    if (!jc_byte_in(c, lo, hi)) return 0;
    while (--more > 0)
        if (!jc_byte_in(c, 0x80, 0xbf)) return 0;
    return 1;
}

static int jc_hex4(json_cursor *c, unsigned *v) {
    *v = 0;
    for (int i = 0; i < 4; i++) {
        int b = jc_peek(c);
        unsigned d;
        if (b >= '0' && b <= '9') d = (unsigned)(b - '0');
        else if (b >= 'a' && b <= 'f') d = (unsigned)(b - 'a' + 10);
        else if (b >= 'A' && b <= 'F') d = (unsigned)(b - 'A' + 10);
        else return jc_fail(c, "bad \\u escape");
        *v = *v * 16 + d;
        c->pos++;
    }
    return 1;
}

static int jc_escape(json_cursor *c) {
    int b = jc_peek(c);
    c->pos++;
    if (b == '"' || b == '\\' || b == '/' || b == 'b' || b == 'f' || b == 'n' || b == 'r' || b == 't')
        return 1;
    if (b != 'u') return jc_fail(c, "bad escape");
    unsigned v, low;
    if (!jc_hex4(c, &v)) return 0;
    if (v == 0) return jc_fail(c, "\\u0000 in a string");
    if (v >= 0xdc00 && v <= 0xdfff) return jc_fail(c, "lone low surrogate");
    if (v < 0xd800 || v > 0xdbff) return 1;
    if (jc_peek(c) != '\\' || c->pos + 1 >= c->len || c->p[c->pos + 1] != 'u')
        return jc_fail(c, "lone high surrogate");
    c->pos += 2;
    if (!jc_hex4(c, &low)) return 0;
    return low >= 0xdc00 && low <= 0xdfff ? 1 : jc_fail(c, "lone high surrogate");
}

static int jc_string(json_cursor *c) {
    c->pos++; /* the opening quote */
    for (;;) {
        int b = jc_peek(c);
        if (b < 0) return jc_fail(c, "unterminated string");
        if (b == '"') {
            c->pos++;
            return 1;
        }
        if (b == '\\') {
            c->pos++;
            if (!jc_escape(c)) return 0;
        } else if (b < 0x20) {
            return jc_fail(c, "control character in a string");
        } else if (b >= 0x80) {
            if (!jc_utf8(c)) return 0;
        } else {
            c->pos++;
        }
    }
}

static size_t jc_digits(json_cursor *c) {
    size_t start = c->pos;
    while (jc_peek(c) >= '0' && jc_peek(c) <= '9') c->pos++;
    return c->pos - start;
}

static int jc_number(json_cursor *c) {
    int negative = jc_peek(c) == '-';
    if (negative) c->pos++;
    size_t int_start = c->pos, int_digits = jc_digits(c);
    if (int_digits == 0) return jc_fail(c, "bad number");
    if (int_digits > 1 && c->p[int_start] == '0') return jc_fail(c, "number with a leading zero");
    int real = 0;
    long exponent = 0;
    if (jc_peek(c) == '.') {
        c->pos++;
        if (jc_digits(c) == 0) return jc_fail(c, "bad number");
        real = 1;
    }
    if (jc_peek(c) == 'e' || jc_peek(c) == 'E') {
        c->pos++;
        int exp_negative = jc_peek(c) == '-';
        if (jc_peek(c) == '-' || jc_peek(c) == '+') c->pos++;
        size_t exp_start = c->pos, exp_digits = jc_digits(c);
        if (exp_digits == 0) return jc_fail(c, "bad number");
        if (exp_digits > 4) return jc_fail(c, "number out of range");
        for (size_t i = exp_start; i < c->pos; i++) exponent = exponent * 10 + (c->p[i] - '0');
        if (exp_negative) exponent = -exponent;
        real = 1;
    }
    if (real) /* under 10^300 a double cannot overflow */
        return (long)int_digits + exponent <= 300 ? 1 : jc_fail(c, "number out of range");
    static const char max_digits[] = "9223372036854775807", min_digits[] = "9223372036854775808";
    if (int_digits < 19) return 1;
    if (int_digits > 19 || memcmp(c->p + int_start, negative ? min_digits : max_digits, 19) > 0)
        return jc_fail(c, "integer out of range");
    return 1;
}

static int jc_literal(json_cursor *c, const char *word) {
    size_t n = strlen(word);
    if (c->len - c->pos < n || memcmp(c->p + c->pos, word, n) != 0) return jc_fail(c, "invalid token");
    c->pos += n;
    return 1;
}

static int jc_value(json_cursor *c);

/* Members of an object or elements of an array, up to `close`. */
static int jc_members(json_cursor *c, int close, int keyed) {
    if (++c->depth > JSON_MAX_DEPTH) return jc_fail(c, "nested too deeply");
    c->pos++; /* the opening bracket */
    jc_space(c);
    if (jc_peek(c) == close) {
        c->pos++;
        c->depth--;
        return 1;
    }
    for (;;) {
        if (keyed) {
            if (jc_peek(c) != '"') return jc_fail(c, "string expected");
            if (!jc_string(c)) return 0;
            jc_space(c);
            if (jc_peek(c) != ':') return jc_fail(c, "':' expected");
            c->pos++;
            jc_space(c);
        }
        if (!jc_value(c)) return 0;
        jc_space(c);
        int b = jc_peek(c);
        c->pos++;
        if (b == close) break;
        if (b != ',') return jc_fail(c, keyed ? "',' or '}' expected" : "',' or ']' expected");
        jc_space(c);
    }
    c->depth--;
    return 1;
}

static int jc_value(json_cursor *c) {
    switch (jc_peek(c)) {
    case '{': return jc_members(c, '}', 1);
    case '[': return jc_members(c, ']', 0);
    case '"': return jc_string(c);
    case 't': return jc_literal(c, "true");
    case 'f': return jc_literal(c, "false");
    case 'n': return jc_literal(c, "null");
    default:
        if (jc_peek(c) == '-' || (jc_peek(c) >= '0' && jc_peek(c) <= '9')) return jc_number(c);
        return jc_fail(c, "invalid token");
    }
}

static bm_status check_json_syntax(const uint8_t *text, size_t len) {
    json_cursor c = {text, len, 0, 0, NULL};
    jc_space(&c);
    if (jc_peek(&c) != '{') jc_fail(&c, "'{' expected");
    else if (jc_value(&c)) {
        jc_space(&c);
        if (c.pos != c.len) jc_fail(&c, "text after the header object");
    }
    if (!c.err) return BM_OK;
    return bmi_fail(BM_ERR_FORMAT, "safetensors header is not valid JSON: %s at byte %zu", c.err,
                    c.pos < c.len ? c.pos : c.len);
}

static bm_status load_json(const uint8_t *text, size_t len, json_t **root) {
    *root = NULL;
    bm_status st = check_json_syntax(text, len);
    if (st != BM_OK) return st;
    json_error_t err;
    /* Duplicate names are rejected here: which of two would be "the" tensor? */
    *root = json_loadb((const char *)text, len, JSON_REJECT_DUPLICATES, &err);
    if (*root) return BM_OK;
    if (json_error_code(&err) == json_error_duplicate_key)
        return bmi_fail(BM_ERR_FORMAT, "safetensors header names something twice (byte %d)", err.position);
    /* The syntax is known to be fine, so jansson ran out of memory. */
    return bmi_fail(BM_ERR_OUT_OF_MEMORY, "out of memory parsing the safetensors header");
}

bm_status bmi_parse_safetensors(const void *data, size_t len, bmi_tensor_table *out) {
    if (!out) return bmi_fail(BM_ERR_INVALID_ARGUMENT, "bmi_parse_safetensors: NULL table");
    memset(out, 0, sizeof *out);
    if (!data && len) return bmi_fail(BM_ERR_INVALID_ARGUMENT, "bmi_parse_safetensors: NULL data");
    const uint8_t *p = data;
    if (len < 8)
        return bmi_fail(BM_ERR_FORMAT, "safetensors file too short (%zu bytes) for its header length", len);
    uint64_t header_len = bmi_rd64(p);
    if (header_len > len - 8)
        return bmi_fail(BM_ERR_FORMAT, "safetensors header length %llu exceeds the file (%zu bytes)",
                        (unsigned long long)header_len, len);
    if (header_len < 2 || header_len > MAX_HEADER)
        return bmi_fail(BM_ERR_FORMAT, "safetensors header length %llu is implausible",
                        (unsigned long long)header_len);
    json_t *root;
    bm_status st = load_json(p + 8, (size_t)header_len, &root);
    if (st != BM_OK) return st;
    bmi_tensor_table table;
    memset(&table, 0, sizeof table);
    const uint8_t *section = p + 8 + header_len;
    st = parse_header(root, section, len - 8 - (size_t)header_len, &table);
    json_decref(root);
    if (st != BM_OK) {
        bmi_table_free(&table);
        return st;
    }
    *out = table;
    return BM_OK;
}

bm_status bmi_read_safetensors(const char *path, bmi_tensor_table *out) {
    return bmi_read_mapped(path, bmi_parse_safetensors, out);
}
