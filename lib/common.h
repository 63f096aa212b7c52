/* Internal helpers shared by every part of the library: error reporting,
 * fallible allocation (with a fault-injection hook for tests), checked size
 * arithmetic and the number formats the checkpoints use.
 * Nothing here is public API; internal symbols use the bmi_ prefix. */
#ifndef BM_COMMON_H
#define BM_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "blackmamba.h"

#if defined(__GNUC__)
#define BMI_PRINTF(a, b) __attribute__((format(printf, a, b)))
#define BMI_UNUSED __attribute__((unused))
#else
#define BMI_PRINTF(a, b)
#define BMI_UNUSED
#endif

/* Record `status` and a printf-style message as this thread's last error and
 * return `status`, so callers can write `return bmi_fail(BM_ERR_IO, ...)`. */
bm_status bmi_fail(bm_status status, const char *fmt, ...) BMI_PRINTF(2, 3);
/* Prefix this thread's last error message with "context: ". */
void bmi_error_context(const char *fmt, ...) BMI_PRINTF(1, 2);
void bmi_clear_error(void);

/* Every heap allocation of the library goes through these, so that the
 * allocation-failure test can make the n-th one fail. They set no error
 * message themselves; the caller reports BM_ERR_OUT_OF_MEMORY. */
void *bmi_malloc(size_t n);
void *bmi_calloc(size_t count, size_t size);
void *bmi_realloc(void *p, size_t n);
void *bmi_aligned_alloc(size_t alignment, size_t n); /* free with bmi_free */
void bmi_free(void *p);
char *bmi_strdup(const char *s);
char *bmi_strndup(const char *s, size_t n);
/* Test hook: the n-th allocation from now fails (n >= 1); 0 disables.
 * Returns how many allocations have been made since the last call. */
uint64_t bmi_alloc_fail_at(uint64_t n);

/* Checked size arithmetic: returns 0 on overflow, 1 otherwise. */
static inline int bmi_mul_size(size_t a, size_t b, size_t *out) {
    if (a != 0 && b > SIZE_MAX / a) return 0;
    *out = a * b;
    return 1;
}
static inline int bmi_add_size(size_t a, size_t b, size_t *out) {
    if (b > SIZE_MAX - a) return 0;
    *out = a + b;
    return 1;
}

/* Element types of stored tensors. */
typedef enum bmi_dtype {
    BMI_F32 = 0,
    BMI_BF16 = 1,
    BMI_F16 = 2,
    BMI_I32 = 3,
    BMI_I64 = 4,
    BMI_U8 = 5,
    BMI_DTYPE_COUNT
} bmi_dtype;
size_t bmi_dtype_size(bmi_dtype t);
const char *bmi_dtype_name(bmi_dtype t);

static inline float bmi_bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
/* Round to nearest even; NaN stays NaN. */
static inline uint16_t bmi_f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}
float bmi_f16_to_f32(uint16_t h);
uint16_t bmi_f32_to_f16(float f);

/* Little-endian loads from possibly unaligned bytes. */
static inline uint16_t bmi_rd16(const void *p) {
    const uint8_t *b = (const uint8_t *)p;
    return (uint16_t)(b[0] | (b[1] << 8));
}
static inline uint32_t bmi_rd32(const void *p) {
    const uint8_t *b = (const uint8_t *)p;
    return (uint32_t)b[0] | ((uint32_t)b[1] << 8) | ((uint32_t)b[2] << 16) | ((uint32_t)b[3] << 24);
}
static inline uint64_t bmi_rd64(const void *p) {
    return (uint64_t)bmi_rd32(p) | ((uint64_t)bmi_rd32((const uint8_t *)p + 4) << 32);
}

/* BM_ERR_INVALID_ARGUMENT naming `fn` if any pointer appears twice in
 * ptrs[0..n) (sorts a copy: O(n log n)). */
bm_status bmi_check_distinct(const void *const *ptrs, size_t n, const char *fn);

/* 64-bit FNV-1a, used for fingerprints and checksums (not for security). */
uint64_t bmi_hash64(uint64_t seed, const void *data, size_t n);

#endif
