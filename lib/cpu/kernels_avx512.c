/* The AVX-512 path (F, BW, VL): the same arithmetic as the portable path,
 * sixteen floats at a time. Chosen at run time (kernels.c); every function
 * here is compiled for AVX-512 whatever the build's -march, so nothing in
 * this file may run before the CPU has been checked.
 *
 * Weights stay in their stored type and are widened in registers:
 * - bf16: 32 weights are one 64-byte load; the even ones become floats by a
 *   16-bit left shift of each 32-bit lane, the odd ones by masking off the
 *   low half. x is packed to match: in each block of 32, the 16 even-indexed
 *   values, then the 16 odd ones. Exact, no rounding of x.
 * - f16: vcvtph2ps; f32: loaded as is. x is packed unchanged.
 * Matrix products work on register tiles of up to 4 weight rows x 4 tokens
 * (prefill, batches of more than 4); decode (1 to 4 tokens) reads one row
 * at a time, the weights in address order with software prefetch. Tails of
 * rows, tokens and columns are masked.
 *
 * Not used: AVX512-BF16 dot products (vdpbf16ps). They round x to bf16; to
 * keep fp32 accuracy x must be split into a bf16 high and low part, which
 * takes two vdpbf16ps per 32 weights and token, the same count as the two
 * FMAs here, while the widening above is exact. Decode is bound by memory,
 * prefill by FMA throughput, so neither would gain. */
#include "kernels_simd.h"

#if BMI_CPU_X86

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512vl,avx2,fma,f16c"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx2,fma,f16c")
#endif

#include <immintrin.h>

#define INLINE static inline __attribute__((always_inline))

/* ---- vector math ------------------------------------------------------------- */

#define VF __m512
#define VSET1(c) _mm512_set1_ps(c)
#define VZERO _mm512_setzero_ps()
#define VADD _mm512_add_ps
#define VSUB _mm512_sub_ps
#define VMUL _mm512_mul_ps
#define VDIV _mm512_div_ps
#define VFMA _mm512_fmadd_ps
#define VFMS _mm512_fmsub_ps
#define VMAX _mm512_max_ps
#define VABS _mm512_abs_ps
#define VSEL_NONNEG(x, a, b) _mm512_mask_blend_ps(_mm512_cmp_ps_mask((x), VZERO, _CMP_GE_OQ), (b), (a))

/* e^(x + lo) = 2^n e^r, n = round(x / ln 2), r = x - n ln 2 + lo, |r| <~ ln2/2
 * (ln 2 split in two so r is exact); e^r by its Taylor series to r^7
 * (truncation error < 6e-9 relative); 2^n applied by vscalefps, which
 * gives 0 or inf past the float range. */
static inline __m512 vexp2(__m512 x, __m512 lo) {
    x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-104.0f)), _mm512_set1_ps(89.0f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_add_ps(_mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r), lo);
    __m512 p = _mm512_set1_ps(1.0f / 5040);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 720));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}

static inline __m512 vexp(__m512 x) { return vexp2(x, _mm512_setzero_ps()); }

#include "vmath.h"

static inline __mmask16 tail16(int n) { return (__mmask16)(n >= 16 ? 0xffffu : (1u << n) - 1u); }

/* ---- packing x ---------------------------------------------------------------- */

static size_t avx512_packed_cols(bmi_dtype dtype, int cols) {
    size_t c = (size_t)cols;
    return dtype == BMI_BF16 ? (c + 31) / 32 * 32 : (c + 15) / 16 * 16;
}

static void avx512_pack(bmi_dtype dtype, const float *x, int cols, float *out) {
    if (dtype != BMI_BF16) {
        int i = 0;
        for (; i + 16 <= cols; i += 16) _mm512_store_ps(out + i, _mm512_loadu_ps(x + i));
        if (i < cols) _mm512_store_ps(out + i, _mm512_maskz_loadu_ps(tail16(cols - i), x + i));
        return;
    }
    const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    for (int i = 0; i < cols; i += 32) {
        int left = cols - i;
        __m512 a = _mm512_maskz_loadu_ps(tail16(left), x + i);
        __m512 b = _mm512_maskz_loadu_ps(tail16(left > 16 ? left - 16 : 0), x + i + 16);
        _mm512_store_ps(out + i, _mm512_permutex2var_ps(a, even, b));
        _mm512_store_ps(out + i + 16, _mm512_permutex2var_ps(a, odd, b));
    }
}

/* ---- matrix products ----------------------------------------------------------- */

/* Bytes ahead that a matrix-vector product prefetches in its weight stream. */
#define PREFETCH_AHEAD 4096

/* [sum(a), sum(b), sum(c), sum(d)] */
INLINE __m128 hsum4(__m512 a, __m512 b, __m512 c, __m512 d) {
    __m512 ab = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, 0x44), _mm512_shuffle_f32x4(a, b, 0xEE));
    __m512 cd = _mm512_add_ps(_mm512_shuffle_f32x4(c, d, 0x44), _mm512_shuffle_f32x4(c, d, 0xEE));
    __m512 v = _mm512_add_ps(_mm512_shuffle_f32x4(ab, cd, 0x88), _mm512_shuffle_f32x4(ab, cd, 0xDD));
    v = _mm512_add_ps(v, _mm512_permute_ps(v, 0x4E));
    v = _mm512_add_ps(v, _mm512_permute_ps(v, 0xB1));
    return _mm512_castps512_ps128(
        _mm512_permutexvar_ps(_mm512_setr_epi32(0, 4, 8, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0), v));
}

/* y[t*ldy + r] = acc[r][t] + bias[r] for r < R, t < T. */
INLINE void store_tile(__m512 acc[4][4], const int R, const int T, const float *bias, float *y, size_t ldy) {
    for (int r4 = 0; r4 < R; r4 += 4) {
        int n = R - r4 < 4 ? R - r4 : 4;
        __mmask8 m = (__mmask8)((1u << n) - 1u);
        __m128 b = bias ? _mm_maskz_loadu_ps(m, bias + r4) : _mm_setzero_ps();
#pragma GCC unroll 4
        for (int t = 0; t < T; t++) {
            __m512 z = _mm512_setzero_ps();
            __m128 s = hsum4(acc[r4][t], n > 1 ? acc[r4 + 1][t] : z, n > 2 ? acc[r4 + 2][t] : z,
                             n > 3 ? acc[r4 + 3][t] : z);
            _mm_mask_storeu_ps(y + (size_t)t * ldy + (size_t)r4, m, _mm_add_ps(s, b));
        }
    }
}

/* R bf16 rows (ldw apart) x T packed tokens (ldx apart), K columns. */
INLINE void tile_bf16(const uint16_t *w, size_t ldw, int K, const float *x, size_t ldx, const float *bias, float *y,
                      size_t ldy, const int R, const int T, const int prefetch) {
    const __m512i hi = _mm512_set1_epi32((int)0xffff0000u);
    __m512 acc[4][4];
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
#pragma GCC unroll 4
        for (int t = 0; t < T; t++) acc[r][t] = _mm512_setzero_ps();
    int k = 0;
    for (; k < K; k += 32) {
        __mmask32 m = K - k >= 32 ? (__mmask32)0xffffffffu : (__mmask32)((1u << (K - k)) - 1u);
        __m512 xe[4], xo[4];
#pragma GCC unroll 4
        for (int t = 0; t < T; t++) {
            xe[t] = _mm512_load_ps(x + (size_t)t * ldx + (size_t)k);
            xo[t] = _mm512_load_ps(x + (size_t)t * ldx + (size_t)k + 16);
        }
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) {
            const uint16_t *p = w + (size_t)r * ldw + (size_t)k;
            if (prefetch) _mm_prefetch((const char *)(p + (size_t)R * ldw), _MM_HINT_T0);
            __m512i v = _mm512_maskz_loadu_epi16(m, p);
            __m512 we = _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
            __m512 wo = _mm512_castsi512_ps(_mm512_and_si512(v, hi));
#pragma GCC unroll 4
            for (int t = 0; t < T; t++) {
                acc[r][t] = _mm512_fmadd_ps(we, xe[t], acc[r][t]);
                acc[r][t] = _mm512_fmadd_ps(wo, xo[t], acc[r][t]);
            }
        }
    }
    store_tile(acc, R, T, bias, y, ldy);
}

/* 16 weights from column k of an f16 or f32 row, as floats. */
INLINE __m512 load16(const void *row, int k, __mmask16 m, bmi_dtype dt) {
    if (dt == BMI_F16) return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, (const uint16_t *)row + k));
    return _mm512_maskz_loadu_ps(m, (const float *)row + k);
}

INLINE void tile_plain(const void *w, size_t ldw, int K, const float *x, size_t ldx, const float *bias, float *y,
                       size_t ldy, const int R, const int T, const int prefetch, const bmi_dtype dt) {
    size_t esize = dt == BMI_F16 ? 2 : 4;
    __m512 acc[4][4];
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
#pragma GCC unroll 4
        for (int t = 0; t < T; t++) acc[r][t] = _mm512_setzero_ps();
    for (int k = 0; k < K; k += 16) {
        __mmask16 m = tail16(K - k);
        __m512 xv[4];
#pragma GCC unroll 4
        for (int t = 0; t < T; t++) xv[t] = _mm512_load_ps(x + (size_t)t * ldx + (size_t)k);
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) {
            const char *row = (const char *)w + (size_t)r * ldw * esize;
            if (prefetch) _mm_prefetch(row + ((size_t)R * ldw + (size_t)k) * esize, _MM_HINT_T0);
            __m512 wv = load16(row, k, m, dt);
#pragma GCC unroll 4
            for (int t = 0; t < T; t++) acc[r][t] = _mm512_fmadd_ps(wv, xv[t], acc[r][t]);
        }
    }
    store_tile(acc, R, T, bias, y, ldy);
}

/* One tile of R rows (1..4) x T tokens (1..4), R and T made compile-time
 * constants by the switch so the accumulators live in registers. With
 * `prefetch` (the first pass over these rows, straight from memory) each
 * weight line of the next tile is prefetched as this tile reads its own:
 * this machine's hardware prefetchers follow R interleaved row streams
 * poorly. */
#define TILE_CASE(R, T)                                                                                        \
    case (R) * 8 + (T):                                                                                        \
        if (dt == BMI_BF16) tile_bf16(w, ldw, K, x, ldx, bias, y, ldy, R, T, prefetch);                         \
        else if (dt == BMI_F16) tile_plain(w, ldw, K, x, ldx, bias, y, ldy, R, T, prefetch, BMI_F16);          \
        else tile_plain(w, ldw, K, x, ldx, bias, y, ldy, R, T, prefetch, BMI_F32);                              \
        break;

static void tile(bmi_dtype dt, const void *w, size_t ldw, int K, const float *x, size_t ldx, const float *bias,
                 float *y, size_t ldy, int R, int T, int prefetch) {
    switch (R * 8 + T) {
        TILE_CASE(1, 1) TILE_CASE(2, 1) TILE_CASE(3, 1) TILE_CASE(4, 1)
        TILE_CASE(1, 2) TILE_CASE(2, 2) TILE_CASE(3, 2) TILE_CASE(4, 2)
        TILE_CASE(1, 3) TILE_CASE(2, 3) TILE_CASE(3, 3) TILE_CASE(4, 3)
        TILE_CASE(1, 4) TILE_CASE(2, 4) TILE_CASE(3, 4) TILE_CASE(4, 4)
    default: break;
    }
}

/* 64 bytes of weights. A 64-byte load from an address that is not a multiple
 * of 64 always spans two cache lines, and weights mapped from a file can sit
 * anywhere (safetensors data is only 8-byte aligned): a stream of such loads
 * reads memory at 60% of the aligned speed on this machine, while two
 * 32-byte halves (a line split only every other load) keep full speed. */
INLINE __m512i load64(const void *p, const int aligned) {
    if (aligned) return _mm512_loadu_si512(p);
    return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)p)),
                              _mm256_loadu_si256((const __m256i *)((const char *)p + 32)), 1);
}

/* Few tokens (decode, small batches): each row on its own, so the weights
 * are read in address order, one sequential stream per thread, prefetched
 * PREFETCH_AHEAD bytes ahead; the T <= 4 rows of x stay in L1. Four
 * independent accumulators per token. s[t] = row . x_t. */
INLINE void dot_bf16_row(const uint16_t *p, int K, const float *x, size_t ldx, float *s, const int T,
                         const int aligned) {
    const __m512i hi = _mm512_set1_epi32((int)0xffff0000u);
    __m512 a[4][4];
#pragma GCC unroll 4
    for (int t = 0; t < T; t++) a[t][0] = a[t][1] = a[t][2] = a[t][3] = _mm512_setzero_ps();
    int k = 0;
    for (; k + 64 <= K; k += 64) {
        _mm_prefetch((const char *)(p + k) + PREFETCH_AHEAD, _MM_HINT_T0);
        _mm_prefetch((const char *)(p + k) + PREFETCH_AHEAD + 64, _MM_HINT_T0);
        __m512i v0 = load64(p + k, aligned), v1 = load64(p + k + 32, aligned);
        __m512 e0 = _mm512_castsi512_ps(_mm512_slli_epi32(v0, 16)), o0 = _mm512_castsi512_ps(_mm512_and_si512(v0, hi));
        __m512 e1 = _mm512_castsi512_ps(_mm512_slli_epi32(v1, 16)), o1 = _mm512_castsi512_ps(_mm512_and_si512(v1, hi));
#pragma GCC unroll 4
        for (int t = 0; t < T; t++) {
            const float *xt = x + (size_t)t * ldx + (size_t)k;
            a[t][0] = _mm512_fmadd_ps(e0, _mm512_load_ps(xt), a[t][0]);
            a[t][1] = _mm512_fmadd_ps(o0, _mm512_load_ps(xt + 16), a[t][1]);
            a[t][2] = _mm512_fmadd_ps(e1, _mm512_load_ps(xt + 32), a[t][2]);
            a[t][3] = _mm512_fmadd_ps(o1, _mm512_load_ps(xt + 48), a[t][3]);
        }
    }
    for (; k < K; k += 32) {
        __mmask32 m = K - k >= 32 ? (__mmask32)0xffffffffu : (__mmask32)((1u << (K - k)) - 1u);
        __m512i v = _mm512_maskz_loadu_epi16(m, p + k);
        __m512 e = _mm512_castsi512_ps(_mm512_slli_epi32(v, 16)), o = _mm512_castsi512_ps(_mm512_and_si512(v, hi));
#pragma GCC unroll 4
        for (int t = 0; t < T; t++) {
            const float *xt = x + (size_t)t * ldx + (size_t)k;
            a[t][0] = _mm512_fmadd_ps(e, _mm512_load_ps(xt), a[t][0]);
            a[t][1] = _mm512_fmadd_ps(o, _mm512_load_ps(xt + 16), a[t][1]);
        }
    }
#pragma GCC unroll 4
    for (int t = 0; t < T; t++)
        s[t] = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a[t][0], a[t][1]), _mm512_add_ps(a[t][2], a[t][3])));
}

/* 16 weights of an f16 or f32 row, as floats: f16 as one 32-byte load, f32
 * as load64 does. */
INLINE __m512 load16_stream(const void *row, int k, const bmi_dtype dt, const int aligned) {
    if (dt == BMI_F16) return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)((const uint16_t *)row + k)));
    return _mm512_castsi512_ps(load64((const float *)row + k, aligned));
}

INLINE void dot_plain_row(const char *row, int K, const float *x, size_t ldx, float *s, const int T,
                          const bmi_dtype dt, const int aligned) {
    size_t esize = dt == BMI_F16 ? 2 : 4;
    __m512 a[4][2];
#pragma GCC unroll 4
    for (int t = 0; t < T; t++) a[t][0] = a[t][1] = _mm512_setzero_ps();
    int k = 0;
    for (; k + 32 <= K; k += 32) {
        _mm_prefetch(row + (size_t)k * esize + PREFETCH_AHEAD, _MM_HINT_T0);
        if (esize == 4) _mm_prefetch(row + (size_t)k * esize + PREFETCH_AHEAD + 64, _MM_HINT_T0);
        __m512 w0 = load16_stream(row, k, dt, aligned), w1 = load16_stream(row, k + 16, dt, aligned);
#pragma GCC unroll 4
        for (int t = 0; t < T; t++) {
            const float *xt = x + (size_t)t * ldx + (size_t)k;
            a[t][0] = _mm512_fmadd_ps(w0, _mm512_load_ps(xt), a[t][0]);
            a[t][1] = _mm512_fmadd_ps(w1, _mm512_load_ps(xt + 16), a[t][1]);
        }
    }
    for (; k < K; k += 16) {
        __m512 w0 = load16(row, k, tail16(K - k), dt);
#pragma GCC unroll 4
        for (int t = 0; t < T; t++)
            a[t][0] = _mm512_fmadd_ps(w0, _mm512_load_ps(x + (size_t)t * ldx + (size_t)k), a[t][0]);
    }
#pragma GCC unroll 4
    for (int t = 0; t < T; t++) s[t] = _mm512_reduce_add_ps(_mm512_add_ps(a[t][0], a[t][1]));
}

/* One row, T tokens (1..4 made constants by the switch), in the row's
 * alignment; y[t*ldy] = dot + bias. */
#define STREAM_CASE(T)                                                                                         \
    case T:                                                                                                    \
        if (dt == BMI_BF16) {                                                                                  \
            if (aligned) dot_bf16_row(row, K, x, ldx, s, T, 1);                                                \
            else dot_bf16_row(row, K, x, ldx, s, T, 0);                                                        \
        } else if (dt == BMI_F16) {                                                                            \
            if (aligned) dot_plain_row(row, K, x, ldx, s, T, BMI_F16, 1);                                      \
            else dot_plain_row(row, K, x, ldx, s, T, BMI_F16, 0);                                              \
        } else {                                                                                               \
            if (aligned) dot_plain_row(row, K, x, ldx, s, T, BMI_F32, 1);                                      \
            else dot_plain_row(row, K, x, ldx, s, T, BMI_F32, 0);                                              \
        }                                                                                                      \
        break;

static void stream_rows(const bmi_matrix *W, const float *bias, int r0, int r1, const float *x, size_t ldx, int n_tok,
                        float *y, size_t ldy) {
    bmi_dtype dt = W->dtype;
    size_t row_bytes = (size_t)W->cols * bmi_dtype_size(dt);
    int K = W->cols;
    for (int r = r0; r < r1; r++) {
        const void *row = (const char *)W->data + (size_t)r * row_bytes;
        int aligned = ((uintptr_t)row & 63) == 0;
        float s[4];
        switch (n_tok) {
            STREAM_CASE(1) STREAM_CASE(2) STREAM_CASE(3) STREAM_CASE(4)
        default: break;
        }
        for (int t = 0; t < n_tok; t++) y[(size_t)t * ldy + (size_t)r] = s[t] + (bias ? bias[r] : 0.0f);
    }
}

static void avx512_matmul_rows(const bmi_matrix *W, const float *bias, int r0, int r1, const float *xp, size_t ldxp,
                               int n_tok, float *y, size_t ldy) {
    size_t esize = bmi_dtype_size(W->dtype), ldw = (size_t)W->cols;
    if (n_tok <= 4) { /* each weight from memory once, used for every token at once */
        stream_rows(W, bias, r0, r1, xp, ldxp, n_tok, y, ldy);
        return;
    }
    /* Token tiles outer: a tile's packed x rows stay in L1 while the task's
     * weight rows (a few hundred KB at most) come again and again from L2. */
    for (int t = 0; t < n_tok; t += 4) {
        int T = n_tok - t < 4 ? n_tok - t : 4;
        for (int r = r0; r < r1; r += 4) {
            int R = r1 - r < 4 ? r1 - r : 4;
            const void *w = (const char *)W->data + (size_t)r * ldw * esize;
            tile(W->dtype, w, ldw, W->cols, xp + (size_t)t * ldxp, ldxp, bias ? bias + r : NULL,
                 y + (size_t)t * ldy + (size_t)r, ldy, R, T, t == 0 && r + R < r1);
        }
    }
}

/* ---- element-wise ---------------------------------------------------------------- */

static void avx512_silu(float *x, int n) {
    for (int i = 0; i < n; i += 16) {
        __mmask16 m = tail16(n - i);
        _mm512_mask_storeu_ps(x + i, m, vsilu(_mm512_maskz_loadu_ps(m, x + i)));
    }
}

static void avx512_mul_silu(float *y, const float *z, int n) {
    for (int i = 0; i < n; i += 16) {
        __mmask16 m = tail16(n - i);
        __m512 g = vsilu(_mm512_maskz_loadu_ps(m, z + i));
        _mm512_mask_storeu_ps(y + i, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, y + i), g));
    }
}

static void avx512_softplus_bias(float *x, const float *b, int n) {
    for (int i = 0; i < n; i += 16) {
        __mmask16 m = tail16(n - i);
        __m512 v = _mm512_add_ps(_mm512_maskz_loadu_ps(m, x + i), _mm512_maskz_loadu_ps(m, b + i));
        _mm512_mask_storeu_ps(x + i, m, vsoftplus(v));
    }
}

static void avx512_glu(float *a, int F, int gated, bm_activation act) {
    for (int f = 0; f < F; f += 16) {
        __mmask16 m = tail16(F - f);
        __m512 v = _mm512_maskz_loadu_ps(m, a + f);
        __m512 h = act == BM_ACTIVATION_SILU ? vsilu(v) : vgelu(v);
        if (gated) h = _mm512_mul_ps(h, _mm512_maskz_loadu_ps(m, a + F + f));
        _mm512_mask_storeu_ps(a + f, m, h);
    }
}

/* ---- the convolution -------------------------------------------------------------- */

/* Sixteen channels at a time: their K taps and K-1 history values gathered
 * once, then a window of K registers slides over the tokens. */
#define CONV_MAX_K 8

INLINE void conv_block(int c, __mmask16 m, int n_tok, const int K, const float *x, size_t ldx, const float *w,
                       const float *b, float *hist, float *u, size_t ldu) {
    const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512i wi = _mm512_mullo_epi32(lane, _mm512_set1_epi32(K)),
                  hi = _mm512_mullo_epi32(lane, _mm512_set1_epi32(K - 1));
    const float *wb = w + (size_t)c * (size_t)K;
    float *hb = hist + (size_t)c * (size_t)(K - 1);
    __m512 wk[CONV_MAX_K], win[CONV_MAX_K];
    for (int k = 0; k < K; k++)
        wk[k] = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, _mm512_add_epi32(wi, _mm512_set1_epi32(k)), wb, 4);
    for (int k = 0; k < K - 1; k++)
        win[k] = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, _mm512_add_epi32(hi, _mm512_set1_epi32(k)), hb, 4);
    __m512 bias = _mm512_maskz_loadu_ps(m, b + c);
    for (int t = 0; t < n_tok; t++) {
        win[K - 1] = _mm512_maskz_loadu_ps(m, x + (size_t)t * ldx + (size_t)c);
        __m512 acc = bias;
        for (int k = 0; k < K; k++) acc = _mm512_fmadd_ps(wk[k], win[k], acc);
        _mm512_mask_storeu_ps(u + (size_t)t * ldu + (size_t)c, m, vsilu(acc));
        for (int k = 0; k < K - 1; k++) win[k] = win[k + 1];
    }
    for (int k = 0; k < K - 1; k++)
        _mm512_mask_i32scatter_ps(hb, m, _mm512_add_epi32(hi, _mm512_set1_epi32(k)), win[k], 4);
}

static void avx512_conv(int c0, int c1, int n_tok, int K, const float *x, size_t ldx, const float *w, const float *b,
                        float *hist, float *u, size_t ldu) {
    if (K < 1 || K > CONV_MAX_K) {
        bmi_cpu_conv_portable(c0, c1, n_tok, K, x, ldx, w, b, hist, u, ldu);
        return;
    }
    for (int c = c0; c < c1; c += 16) {
        __mmask16 m = tail16(c1 - c);
        if (K == 4) conv_block(c, m, n_tok, 4, x, ldx, w, b, hist, u, ldu); /* the released models' K */
        else conv_block(c, m, n_tok, K, x, ldx, w, b, hist, u, ldu);
    }
}

/* ---- the selective scan ------------------------------------------------------------ */

/* N == 16: a channel's whole state is one register for the whole run. */
static void scan16(int c0, int c1, int n_tok, const float *delta, const float *u, size_t ld, const float *bc,
                   size_t ldbc, const float *A, const float *D, float *ssm, float *y) {
    for (int c = c0; c < c1; c++) {
        __m512 s = _mm512_loadu_ps(ssm + (size_t)c * 16), a = _mm512_loadu_ps(A + (size_t)c * 16);
        for (int t = 0; t < n_tok; t++) {
            size_t i = (size_t)t * ld + (size_t)c;
            const float *B = bc + (size_t)t * ldbc;
            float dt = delta[i], uu = u[i];
            __m512 decay = vexp(_mm512_mul_ps(_mm512_set1_ps(dt), a));
            s = _mm512_fmadd_ps(decay, s, _mm512_mul_ps(_mm512_set1_ps(dt * uu), _mm512_loadu_ps(B)));
            y[i] = _mm512_reduce_add_ps(_mm512_mul_ps(s, _mm512_loadu_ps(B + 16))) + D[c] * uu;
        }
        _mm512_storeu_ps(ssm + (size_t)c * 16, s);
    }
}

static void avx512_scan(int c0, int c1, int n_tok, int N, const float *delta, const float *u, size_t ld,
                        const float *bc, size_t ldbc, const float *A, const float *D, float *ssm, float *y) {
    if (N == 16) {
        scan16(c0, c1, n_tok, delta, u, ld, bc, ldbc, A, D, ssm, y);
        return;
    }
    for (int c = c0; c < c1; c++) {
        float *s = ssm + (size_t)c * (size_t)N;
        const float *a = A + (size_t)c * (size_t)N;
        for (int t = 0; t < n_tok; t++) {
            size_t i = (size_t)t * ld + (size_t)c;
            const float *B = bc + (size_t)t * ldbc, *C = B + N;
            float dt = delta[i], uu = u[i];
            __m512 acc = _mm512_setzero_ps();
            for (int n = 0; n < N; n += 16) {
                __mmask16 m = tail16(N - n);
                __m512 decay = vexp(_mm512_mul_ps(_mm512_set1_ps(dt), _mm512_maskz_loadu_ps(m, a + n)));
                __m512 sv = _mm512_fmadd_ps(decay, _mm512_maskz_loadu_ps(m, s + n),
                                            _mm512_mul_ps(_mm512_set1_ps(dt * uu), _mm512_maskz_loadu_ps(m, B + n)));
                _mm512_mask_storeu_ps(s + n, m, sv);
                acc = _mm512_fmadd_ps(sv, _mm512_maskz_loadu_ps(m, C + n), acc);
            }
            y[i] = _mm512_reduce_add_ps(acc) + D[c] * uu;
        }
    }
}

const bmi_cpu_path bmi_cpu_path_avx512 = {
    .name = "avx512",
    .packed_cols = avx512_packed_cols,
    .pack = avx512_pack,
    .matmul_rows = avx512_matmul_rows,
    .silu = avx512_silu,
    .mul_silu = avx512_mul_silu,
    .softplus_bias = avx512_softplus_bias,
    .glu = avx512_glu,
    .conv = avx512_conv,
    .scan = avx512_scan,
};

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

#endif /* BMI_CPU_X86 */
