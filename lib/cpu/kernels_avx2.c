/* The AVX2 + FMA path (with F16C): the same arithmetic as the portable path,
 * eight floats at a time, for x86-64 machines without AVX-512. Chosen at run
 * time (kernels.c); nothing here may run before the CPU has been checked.
 *
 * Weights stay in their stored type and are widened in registers:
 * - bf16: 16 weights are one 32-byte load; even ones become floats by a
 *   16-bit left shift of each 32-bit lane, odd ones by masking the low half;
 *   x is packed to match (per block of 16: 8 even-indexed values, 8 odd).
 * - f16: vcvtph2ps; f32 as is. x is packed unchanged.
 * AVX2 has no 16-bit masked load, so a row's last partial block is copied
 * into a zeroed buffer first (never reading past the row). Tiles of 4 rows x
 * up to 3 tokens (more than 4 tokens); decode (1 to 4 tokens) reads row by
 * row in address order. */
#include "kernels_simd.h"

#if BMI_CPU_X86

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#endif

#include <immintrin.h>

#define INLINE static inline __attribute__((always_inline))

/* ---- vector math ------------------------------------------------------------- */

#define VF __m256
#define VSET1(c) _mm256_set1_ps(c)
#define VZERO _mm256_setzero_ps()
#define VADD _mm256_add_ps
#define VSUB _mm256_sub_ps
#define VMUL _mm256_mul_ps
#define VDIV _mm256_div_ps
#define VFMA _mm256_fmadd_ps
#define VFMS _mm256_fmsub_ps
#define VMAX _mm256_max_ps
#define VABS(x) _mm256_andnot_ps(_mm256_set1_ps(-0.0f), (x))
#define VSEL_NONNEG(x, a, b) _mm256_blendv_ps((a), (b), _mm256_cmp_ps((x), VZERO, _CMP_LT_OQ))

/* e^x as in the AVX-512 path; 2^n is built in the exponent field, so x is
 * clamped to where 2^n is a normal float and results below that are 0. */
static inline __m256 vexp2(__m256 x, __m256 lo) {
    __m256 in_range = _mm256_cmp_ps(x, _mm256_set1_ps(-87.33654f), _CMP_GE_OQ);
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.33654f)), _mm256_set1_ps(88.02969f));
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_add_ps(_mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r), lo);
    __m256 p = _mm256_set1_ps(1.0f / 5040);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 720));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_and_ps(_mm256_mul_ps(p, _mm256_castsi256_ps(e)), in_range);
}

static inline __m256 vexp(__m256 x) { return vexp2(x, _mm256_setzero_ps()); }

#include "vmath.h"

/* Lanes i < n set (n clamped to 0..8), for maskload/maskstore. */
static inline __m256i tail8(int n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

static inline float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* ---- packing x ---------------------------------------------------------------- */

static size_t avx2_packed_cols(bmi_dtype dtype, int cols) {
    size_t c = (size_t)cols;
    return dtype == BMI_BF16 ? (c + 15) / 16 * 16 : (c + 7) / 8 * 8;
}

static void avx2_pack(bmi_dtype dtype, const float *x, int cols, float *out) {
    if (dtype != BMI_BF16) {
        int i = 0;
        for (; i + 8 <= cols; i += 8) _mm256_store_ps(out + i, _mm256_loadu_ps(x + i));
        if (i < cols) _mm256_store_ps(out + i, _mm256_maskload_ps(x + i, tail8(cols - i)));
        return;
    }
    for (int i = 0; i < cols; i += 16) {
        float e[8], o[8];
        for (int k = 0; k < 8; k++) {
            e[k] = i + 2 * k < cols ? x[i + 2 * k] : 0.0f;
            o[k] = i + 2 * k + 1 < cols ? x[i + 2 * k + 1] : 0.0f;
        }
        _mm256_store_ps(out + i, _mm256_loadu_ps(e));
        _mm256_store_ps(out + i + 8, _mm256_loadu_ps(o));
    }
}

/* ---- matrix products ----------------------------------------------------------- */

#define PREFETCH_AHEAD 4096

INLINE __m128 hsum4(__m256 a, __m256 b, __m256 c, __m256 d) {
    __m256 abcd = _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, d));
    return _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1));
}

INLINE void store_tile(__m256 acc[4][3], const int R, const int T, const float *bias, float *y, size_t ldy) {
    for (int r4 = 0; r4 < R; r4 += 4) {
        int n = R - r4 < 4 ? R - r4 : 4;
#pragma GCC unroll 3
        for (int t = 0; t < T; t++) {
            __m256 z = _mm256_setzero_ps();
            float s[4];
            _mm_storeu_ps(s, hsum4(acc[r4][t], n > 1 ? acc[r4 + 1][t] : z, n > 2 ? acc[r4 + 2][t] : z,
                                   n > 3 ? acc[r4 + 3][t] : z));
            for (int i = 0; i < n; i++) y[(size_t)t * ldy + (size_t)(r4 + i)] = s[i] + (bias ? bias[r4 + i] : 0.0f);
        }
    }
}

/* `count` 16-bit values at p (count < block), zero padded, loaded as 32 bytes. */
INLINE __m256i load_tail16(const uint16_t *p, int count) {
    uint16_t buf[16] = {0};
    memcpy(buf, p, (size_t)count * 2);
    return _mm256_loadu_si256((const __m256i *)buf);
}

INLINE void tile_bf16(const uint16_t *w, size_t ldw, int K, const float *x, size_t ldx, const float *bias, float *y,
                      size_t ldy, const int R, const int T, const int prefetch) {
    const __m256i hi = _mm256_set1_epi32((int)0xffff0000u);
    __m256 acc[4][3];
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
#pragma GCC unroll 3
        for (int t = 0; t < T; t++) acc[r][t] = _mm256_setzero_ps();
    for (int k = 0; k < K; k += 16) {
        int full = K - k >= 16;
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) {
            const uint16_t *p = w + (size_t)r * ldw + (size_t)k;
            if (prefetch) _mm_prefetch((const char *)(p + (size_t)R * ldw), _MM_HINT_T0);
            __m256i v = full ? _mm256_loadu_si256((const __m256i *)p) : load_tail16(p, K - k);
            __m256 we = _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
            __m256 wo = _mm256_castsi256_ps(_mm256_and_si256(v, hi));
#pragma GCC unroll 3
            for (int t = 0; t < T; t++) {
                const float *xt = x + (size_t)t * ldx + (size_t)k;
                acc[r][t] = _mm256_fmadd_ps(we, _mm256_load_ps(xt), acc[r][t]);
                acc[r][t] = _mm256_fmadd_ps(wo, _mm256_load_ps(xt + 8), acc[r][t]);
            }
        }
    }
    store_tile(acc, R, T, bias, y, ldy);
}

/* 8 weights from column k of an f16 or f32 row (fewer at the row's end). */
INLINE __m256 load8(const void *row, int k, int K, bmi_dtype dt) {
    int n = K - k;
    if (dt == BMI_F16) {
        const uint16_t *p = (const uint16_t *)row + k;
        if (n >= 8) return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
        uint16_t buf[8] = {0};
        memcpy(buf, p, (size_t)n * 2);
        return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)buf));
    }
    const float *p = (const float *)row + k;
    return n >= 8 ? _mm256_loadu_ps(p) : _mm256_maskload_ps(p, tail8(n));
}

INLINE void tile_plain(const void *w, size_t ldw, int K, const float *x, size_t ldx, const float *bias, float *y,
                       size_t ldy, const int R, const int T, const int prefetch, const bmi_dtype dt) {
    size_t esize = dt == BMI_F16 ? 2 : 4;
    __m256 acc[4][3];
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
#pragma GCC unroll 3
        for (int t = 0; t < T; t++) acc[r][t] = _mm256_setzero_ps();
    for (int k = 0; k < K; k += 8) {
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) {
            const char *row = (const char *)w + (size_t)r * ldw * esize;
            if (prefetch) _mm_prefetch(row + ((size_t)R * ldw + (size_t)k) * esize, _MM_HINT_T0);
            __m256 wv = load8(row, k, K, dt);
#pragma GCC unroll 3
            for (int t = 0; t < T; t++)
                acc[r][t] = _mm256_fmadd_ps(wv, _mm256_load_ps(x + (size_t)t * ldx + (size_t)k), acc[r][t]);
        }
    }
    store_tile(acc, R, T, bias, y, ldy);
}

/* One tile of R rows (1..4) x T tokens (1..3); `prefetch` on the first pass
 * over the rows fetches the next tile's weights as this one reads its own. */
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
    default: break;
    }
}

/* Few tokens (decode, small batches): row by row, the weights in address
 * order with software prefetch, each used for all T <= 4 tokens (their x rows
 * stay in L1). s[t] = row . x_t. */
INLINE void dot_bf16_row(const uint16_t *p, int K, const float *x, size_t ldx, float *s, const int T) {
    const __m256i hi = _mm256_set1_epi32((int)0xffff0000u);
    const int j = T <= 2 ? 2 : 0; /* up to 2 tokens: four accumulators each, for shorter FMA chains */
    __m256 a[4][4];
#pragma GCC unroll 4
    for (int t = 0; t < T; t++) a[t][0] = a[t][1] = a[t][2] = a[t][3] = _mm256_setzero_ps();
    int k = 0;
    for (; k + 32 <= K; k += 32) {
        _mm_prefetch((const char *)(p + k) + PREFETCH_AHEAD, _MM_HINT_T0);
        __m256i v0 = _mm256_loadu_si256((const __m256i *)(p + k)),
                v1 = _mm256_loadu_si256((const __m256i *)(p + k + 16));
        __m256 e0 = _mm256_castsi256_ps(_mm256_slli_epi32(v0, 16)), o0 = _mm256_castsi256_ps(_mm256_and_si256(v0, hi));
        __m256 e1 = _mm256_castsi256_ps(_mm256_slli_epi32(v1, 16)), o1 = _mm256_castsi256_ps(_mm256_and_si256(v1, hi));
#pragma GCC unroll 4
        for (int t = 0; t < T; t++) {
            const float *xt = x + (size_t)t * ldx + (size_t)k;
            a[t][0] = _mm256_fmadd_ps(e0, _mm256_load_ps(xt), a[t][0]);
            a[t][1] = _mm256_fmadd_ps(o0, _mm256_load_ps(xt + 8), a[t][1]);
            a[t][j] = _mm256_fmadd_ps(e1, _mm256_load_ps(xt + 16), a[t][j]);
            a[t][j + 1] = _mm256_fmadd_ps(o1, _mm256_load_ps(xt + 24), a[t][j + 1]);
        }
    }
    for (; k < K; k += 16) {
        __m256i v = K - k >= 16 ? _mm256_loadu_si256((const __m256i *)(p + k)) : load_tail16(p + k, K - k);
        __m256 e = _mm256_castsi256_ps(_mm256_slli_epi32(v, 16)), o = _mm256_castsi256_ps(_mm256_and_si256(v, hi));
#pragma GCC unroll 4
        for (int t = 0; t < T; t++) {
            const float *xt = x + (size_t)t * ldx + (size_t)k;
            a[t][0] = _mm256_fmadd_ps(e, _mm256_load_ps(xt), a[t][0]);
            a[t][1] = _mm256_fmadd_ps(o, _mm256_load_ps(xt + 8), a[t][1]);
        }
    }
#pragma GCC unroll 4
    for (int t = 0; t < T; t++)
        s[t] = hsum8(_mm256_add_ps(_mm256_add_ps(a[t][0], a[t][1]), _mm256_add_ps(a[t][2], a[t][3])));
}

INLINE void dot_plain_row(const char *row, int K, const float *x, size_t ldx, float *s, const int T,
                          const bmi_dtype dt) {
    size_t esize = dt == BMI_F16 ? 2 : 4;
    __m256 a[4][2];
#pragma GCC unroll 4
    for (int t = 0; t < T; t++) a[t][0] = a[t][1] = _mm256_setzero_ps();
    int k = 0;
    for (; k + 16 <= K; k += 16) {
        _mm_prefetch(row + (size_t)k * esize + PREFETCH_AHEAD, _MM_HINT_T0);
        __m256 w0 = load8(row, k, K, dt), w1 = load8(row, k + 8, K, dt);
#pragma GCC unroll 4
        for (int t = 0; t < T; t++) {
            const float *xt = x + (size_t)t * ldx + (size_t)k;
            a[t][0] = _mm256_fmadd_ps(w0, _mm256_load_ps(xt), a[t][0]);
            a[t][1] = _mm256_fmadd_ps(w1, _mm256_load_ps(xt + 8), a[t][1]);
        }
    }
    for (; k < K; k += 8) {
        __m256 w0 = load8(row, k, K, dt);
#pragma GCC unroll 4
        for (int t = 0; t < T; t++)
            a[t][0] = _mm256_fmadd_ps(w0, _mm256_load_ps(x + (size_t)t * ldx + (size_t)k), a[t][0]);
    }
#pragma GCC unroll 4
    for (int t = 0; t < T; t++) s[t] = hsum8(_mm256_add_ps(a[t][0], a[t][1]));
}

#define STREAM_CASE(T)                                                                                         \
    case T:                                                                                                    \
        if (dt == BMI_BF16) dot_bf16_row(row, K, x, ldx, s, T);                                                \
        else if (dt == BMI_F16) dot_plain_row(row, K, x, ldx, s, T, BMI_F16);                                  \
        else dot_plain_row(row, K, x, ldx, s, T, BMI_F32);                                                     \
        break;

static void stream_rows(const bmi_matrix *W, const float *bias, int r0, int r1, const float *x, size_t ldx, int n_tok,
                        float *y, size_t ldy) {
    bmi_dtype dt = W->dtype;
    size_t row_bytes = (size_t)W->cols * bmi_dtype_size(dt);
    int K = W->cols;
    for (int r = r0; r < r1; r++) {
        const void *row = (const char *)W->data + (size_t)r * row_bytes;
        float s[4];
        switch (n_tok) {
            STREAM_CASE(1) STREAM_CASE(2) STREAM_CASE(3) STREAM_CASE(4)
        default: break;
        }
        for (int t = 0; t < n_tok; t++) y[(size_t)t * ldy + (size_t)r] = s[t] + (bias ? bias[r] : 0.0f);
    }
}

static void avx2_matmul_rows(const bmi_matrix *W, const float *bias, int r0, int r1, const float *xp, size_t ldxp,
                             int n_tok, float *y, size_t ldy) {
    size_t esize = bmi_dtype_size(W->dtype), ldw = (size_t)W->cols;
    if (n_tok <= 4) { /* each weight from memory once, used for every token at once */
        stream_rows(W, bias, r0, r1, xp, ldxp, n_tok, y, ldy);
        return;
    }
    for (int t = 0; t < n_tok; t += 3) {
        int T = n_tok - t < 3 ? n_tok - t : 3;
        for (int r = r0; r < r1; r += 4) {
            int R = r1 - r < 4 ? r1 - r : 4;
            const void *w = (const char *)W->data + (size_t)r * ldw * esize;
            tile(W->dtype, w, ldw, W->cols, xp + (size_t)t * ldxp, ldxp, bias ? bias + r : NULL,
                 y + (size_t)t * ldy + (size_t)r, ldy, R, T, t == 0 && r + R < r1);
        }
    }
}

/* ---- element-wise ---------------------------------------------------------------- */

static void avx2_silu(float *x, int n) {
    int i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, vsilu(_mm256_loadu_ps(x + i)));
    if (i < n) {
        __m256i m = tail8(n - i);
        _mm256_maskstore_ps(x + i, m, vsilu(_mm256_maskload_ps(x + i, m)));
    }
}

static void avx2_mul_silu(float *y, const float *z, int n) {
    for (int i = 0; i < n; i += 8) {
        __m256i m = tail8(n - i);
        __m256 g = vsilu(_mm256_maskload_ps(z + i, m));
        _mm256_maskstore_ps(y + i, m, _mm256_mul_ps(_mm256_maskload_ps(y + i, m), g));
    }
}

static void avx2_softplus_bias(float *x, const float *b, int n) {
    for (int i = 0; i < n; i += 8) {
        __m256i m = tail8(n - i);
        __m256 v = _mm256_add_ps(_mm256_maskload_ps(x + i, m), _mm256_maskload_ps(b + i, m));
        _mm256_maskstore_ps(x + i, m, vsoftplus(v));
    }
}

static void avx2_glu(float *a, int F, int gated, bm_activation act) {
    for (int f = 0; f < F; f += 8) {
        __m256i m = tail8(F - f);
        __m256 v = _mm256_maskload_ps(a + f, m);
        __m256 h = act == BM_ACTIVATION_SILU ? vsilu(v) : vgelu(v);
        if (gated) h = _mm256_mul_ps(h, _mm256_maskload_ps(a + F + f, m));
        _mm256_maskstore_ps(a + f, m, h);
    }
}

/* ---- the convolution -------------------------------------------------------------- */

/* Eight channels at a time: their K taps and K-1 history values gathered
 * once, then a window of K registers slides over the tokens. */
#define CONV_MAX_K 8

INLINE void conv_block(int c, int n, int n_tok, const int K, const float *x, size_t ldx, const float *w,
                       const float *b, float *hist, float *u, size_t ldu) {
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), m = tail8(n);
    const __m256 mf = _mm256_castsi256_ps(m);
    const __m256i wi = _mm256_mullo_epi32(lane, _mm256_set1_epi32(K)),
                  hi = _mm256_mullo_epi32(lane, _mm256_set1_epi32(K - 1));
    const float *wb = w + (size_t)c * (size_t)K;
    float *hb = hist + (size_t)c * (size_t)(K - 1);
    __m256 wk[CONV_MAX_K], win[CONV_MAX_K];
    for (int k = 0; k < K; k++)
        wk[k] = _mm256_mask_i32gather_ps(_mm256_setzero_ps(), wb, _mm256_add_epi32(wi, _mm256_set1_epi32(k)), mf, 4);
    for (int k = 0; k < K - 1; k++)
        win[k] = _mm256_mask_i32gather_ps(_mm256_setzero_ps(), hb, _mm256_add_epi32(hi, _mm256_set1_epi32(k)), mf, 4);
    __m256 bias = _mm256_maskload_ps(b + c, m);
    for (int t = 0; t < n_tok; t++) {
        win[K - 1] = _mm256_maskload_ps(x + (size_t)t * ldx + (size_t)c, m);
        __m256 acc = bias;
        for (int k = 0; k < K; k++) acc = _mm256_fmadd_ps(wk[k], win[k], acc);
        _mm256_maskstore_ps(u + (size_t)t * ldu + (size_t)c, m, vsilu(acc));
        for (int k = 0; k < K - 1; k++) win[k] = win[k + 1];
    }
    for (int k = 0; k < K - 1; k++) { /* no scatter in AVX2 */
        float v[8];
        _mm256_storeu_ps(v, win[k]);
        for (int i = 0; i < n; i++) hb[(size_t)i * (size_t)(K - 1) + (size_t)k] = v[i];
    }
}

static void avx2_conv(int c0, int c1, int n_tok, int K, const float *x, size_t ldx, const float *w, const float *b,
                      float *hist, float *u, size_t ldu) {
    if (K < 1 || K > CONV_MAX_K) {
        bmi_cpu_conv_portable(c0, c1, n_tok, K, x, ldx, w, b, hist, u, ldu);
        return;
    }
    for (int c = c0; c < c1; c += 8) {
        int n = c1 - c < 8 ? c1 - c : 8;
        if (K == 4) conv_block(c, n, n_tok, 4, x, ldx, w, b, hist, u, ldu);
        else conv_block(c, n, n_tok, K, x, ldx, w, b, hist, u, ldu);
    }
}

/* ---- the selective scan ------------------------------------------------------------ */

static void avx2_scan(int c0, int c1, int n_tok, int N, const float *delta, const float *u, size_t ld,
                      const float *bc, size_t ldbc, const float *A, const float *D, float *ssm, float *y) {
    if (N == 16) { /* the state in two registers for the whole run */
        for (int c = c0; c < c1; c++) {
            float *sp = ssm + (size_t)c * 16;
            const float *a = A + (size_t)c * 16;
            __m256 s0 = _mm256_loadu_ps(sp), s1 = _mm256_loadu_ps(sp + 8);
            __m256 a0 = _mm256_loadu_ps(a), a1 = _mm256_loadu_ps(a + 8);
            for (int t = 0; t < n_tok; t++) {
                size_t i = (size_t)t * ld + (size_t)c;
                const float *B = bc + (size_t)t * ldbc;
                __m256 dt = _mm256_set1_ps(delta[i]), du = _mm256_set1_ps(delta[i] * u[i]);
                s0 = _mm256_fmadd_ps(vexp(_mm256_mul_ps(dt, a0)), s0, _mm256_mul_ps(du, _mm256_loadu_ps(B)));
                s1 = _mm256_fmadd_ps(vexp(_mm256_mul_ps(dt, a1)), s1, _mm256_mul_ps(du, _mm256_loadu_ps(B + 8)));
                __m256 p = _mm256_fmadd_ps(s1, _mm256_loadu_ps(B + 24), _mm256_mul_ps(s0, _mm256_loadu_ps(B + 16)));
                y[i] = hsum8(p) + D[c] * u[i];
            }
            _mm256_storeu_ps(sp, s0);
            _mm256_storeu_ps(sp + 8, s1);
        }
        return;
    }
    for (int c = c0; c < c1; c++) {
        float *s = ssm + (size_t)c * (size_t)N;
        const float *a = A + (size_t)c * (size_t)N;
        for (int t = 0; t < n_tok; t++) {
            size_t i = (size_t)t * ld + (size_t)c;
            const float *B = bc + (size_t)t * ldbc, *C = B + N;
            __m256 dt = _mm256_set1_ps(delta[i]), du = _mm256_set1_ps(delta[i] * u[i]), acc = _mm256_setzero_ps();
            for (int n = 0; n < N; n += 8) {
                __m256i m = tail8(N - n);
                __m256 sv = _mm256_fmadd_ps(vexp(_mm256_mul_ps(dt, _mm256_maskload_ps(a + n, m))),
                                            _mm256_maskload_ps(s + n, m),
                                            _mm256_mul_ps(du, _mm256_maskload_ps(B + n, m)));
                _mm256_maskstore_ps(s + n, m, sv);
                acc = _mm256_fmadd_ps(sv, _mm256_maskload_ps(C + n, m), acc);
            }
            y[i] = hsum8(acc) + D[c] * u[i];
        }
    }
}

const bmi_cpu_path bmi_cpu_path_avx2 = {
    .name = "avx2",
    .packed_cols = avx2_packed_cols,
    .pack = avx2_pack,
    .matmul_rows = avx2_matmul_rows,
    .silu = avx2_silu,
    .mul_silu = avx2_mul_silu,
    .softplus_bias = avx2_softplus_bias,
    .glu = avx2_glu,
    .conv = avx2_conv,
    .scan = avx2_scan,
};

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

#endif /* BMI_CPU_X86 */
