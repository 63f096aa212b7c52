/* Errors, allocation, number formats: see common.h. */
#include "common.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#define BMI_ERROR_CAP 1024

static _Thread_local char last_error[BMI_ERROR_CAP];

bm_status bmi_fail(bm_status status, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error, sizeof last_error, fmt, ap);
    va_end(ap);
    return status;
}

void bmi_error_context(const char *fmt, ...) {
    char prefix[BMI_ERROR_CAP], old[BMI_ERROR_CAP];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    memcpy(old, last_error, sizeof old);
    snprintf(last_error, sizeof last_error, "%s: %s", prefix, old);
}

void bmi_clear_error(void) { last_error[0] = '\0'; }

BM_API const char *bm_last_error(void) { return last_error; }

BM_API const char *bm_status_string(bm_status s) {
    switch (s) {
    case BM_OK: return "ok";
    case BM_ERR_INVALID_ARGUMENT: return "invalid argument";
    case BM_ERR_IO: return "i/o error";
    case BM_ERR_FORMAT: return "bad format";
    case BM_ERR_UNSUPPORTED: return "unsupported";
    case BM_ERR_OUT_OF_MEMORY: return "out of memory";
    case BM_ERR_DEVICE: return "device error";
    case BM_ERR_CANCELLED: return "cancelled";
    case BM_ERR_MISMATCH: return "mismatch";
    case BM_ERR_BUFFER_TOO_SMALL: return "buffer too small";
    default: return "unknown status";
    }
}

BM_API uint32_t bm_version(void) { return BM_VERSION_NUMBER; }

/* ---- allocation with fault injection ------------------------------------ */

/* Counters are process-wide on purpose: the allocation-failure sweep runs one
 * thread and counts every allocation the library makes. */
static uint64_t alloc_count;
static uint64_t alloc_fail_at;

static int alloc_should_fail(void) {
    uint64_t n = __atomic_add_fetch(&alloc_count, 1, __ATOMIC_RELAXED);
    uint64_t at = __atomic_load_n(&alloc_fail_at, __ATOMIC_RELAXED);
    return at != 0 && n == at;
}

uint64_t bmi_alloc_fail_at(uint64_t n) {
    uint64_t made = __atomic_exchange_n(&alloc_count, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&alloc_fail_at, n, __ATOMIC_RELAXED);
    return made;
}

void *bmi_malloc(size_t n) {
    if (alloc_should_fail()) return NULL;
    return malloc(n ? n : 1);
}

void *bmi_calloc(size_t count, size_t size) {
    if (alloc_should_fail()) return NULL;
    if (count == 0 || size == 0) count = size = 1;
    return calloc(count, size);
}

void *bmi_realloc(void *p, size_t n) {
    if (alloc_should_fail()) return NULL;
    return realloc(p, n ? n : 1);
}

void *bmi_aligned_alloc(size_t alignment, size_t n) {
    void *p = NULL;
    if (alloc_should_fail()) return NULL;
    if (posix_memalign(&p, alignment, n ? n : 1) != 0) return NULL;
    return p;
}

void bmi_free(void *p) { free(p); }

char *bmi_strndup(const char *s, size_t n) {
    char *d = bmi_malloc(n + 1);
    if (!d) return NULL;
    memcpy(d, s, n);
    d[n] = '\0';
    return d;
}

char *bmi_strdup(const char *s) { return bmi_strndup(s, strlen(s)); }

/* ---- number formats ----------------------------------------------------- */

size_t bmi_dtype_size(bmi_dtype t) {
    switch (t) {
    case BMI_F32: case BMI_I32: return 4;
    case BMI_BF16: case BMI_F16: return 2;
    case BMI_I64: return 8;
    case BMI_U8: return 1;
    default: return 0;
    }
}

const char *bmi_dtype_name(bmi_dtype t) {
    static const char *names[BMI_DTYPE_COUNT] = {"f32", "bf16", "f16", "i32", "i64", "u8"};
    return (unsigned)t < BMI_DTYPE_COUNT ? names[t] : "?";
}

float bmi_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f, man = h & 0x3ff, u;
    if (exp == 0) {
        if (man == 0) {
            u = sign;
        } else { /* subnormal: renormalise */
            exp = 127 - 15 + 1;
            while (!(man & 0x400)) { man <<= 1; exp--; }
            u = sign | (exp << 23) | ((man & 0x3ff) << 13);
        }
    } else if (exp == 31) {
        u = sign | 0x7f800000u | (man << 13);
    } else {
        u = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &u, 4);
    return f;
}

uint16_t bmi_f32_to_f16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    uint32_t sign = (u >> 16) & 0x8000;
    int32_t exp = (int32_t)((u >> 23) & 0xff) - 127 + 15;
    uint32_t man = u & 0x7fffff;
    if (((u >> 23) & 0xff) == 0xff) return (uint16_t)(sign | 0x7c00 | (man ? 0x200 : 0));
    if (exp >= 31) return (uint16_t)(sign | 0x7c00);
    if (exp <= 0) {
        if (exp < -10) return (uint16_t)sign;
        man |= 0x800000;
        uint32_t shift = (uint32_t)(14 - exp);
        uint32_t half = man >> shift, rem = man & ((1u << shift) - 1), mid = 1u << (shift - 1);
        if (rem > mid || (rem == mid && (half & 1))) half++;
        return (uint16_t)(sign | half);
    }
    uint32_t h = sign | ((uint32_t)exp << 10) | (man >> 13), rem = man & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (h & 1))) h++; /* may carry into exponent: correct */
    return (uint16_t)h;
}

uint64_t bmi_hash64(uint64_t seed, const void *data, size_t n) {
    const uint8_t *p = (const uint8_t *)data;
    uint64_t h = 0xcbf29ce484222325ull ^ seed;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

static int compare_ptr(const void *a, const void *b) {
    uintptr_t x = (uintptr_t) * (const void *const *)a, y = (uintptr_t) * (const void *const *)b;
    return x < y ? -1 : x > y;
}

bm_status bmi_check_distinct(const void *const *ptrs, size_t n, const char *fn) {
    if (n < 2) return BM_OK;
    if (n <= 16) { /* the common small case needs no allocation */
        for (size_t i = 0; i < n; i++)
            for (size_t j = i + 1; j < n; j++)
                if (ptrs[i] == ptrs[j])
                    return bmi_fail(BM_ERR_INVALID_ARGUMENT, "%s: entries %zu and %zu are the same state", fn, i, j);
        return BM_OK;
    }
    const void **sorted = bmi_malloc(n * sizeof *sorted);
    if (!sorted) return bmi_fail(BM_ERR_OUT_OF_MEMORY, "%s: out of memory", fn);
    memcpy(sorted, ptrs, n * sizeof *sorted);
    qsort(sorted, n, sizeof *sorted, compare_ptr);
    bm_status st = BM_OK;
    for (size_t i = 1; i < n && st == BM_OK; i++)
        if (sorted[i] == sorted[i - 1])
            st = bmi_fail(BM_ERR_INVALID_ARGUMENT, "%s: the same state appears twice", fn);
    bmi_free(sorted);
    return st;
}
