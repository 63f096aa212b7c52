/* The CPU backend's arithmetic, in fp32 whatever the stored weight type.
 *
 * Two layers:
 * - the reference scalar functions (bmi_cpu_rmsnorm, bmi_cpu_silu, ...): the
 *   plain form of one line of SPEC.md's forward pass each;
 * - "paths": tables of the hot kernels (matrix products, the scan, the
 *   element-wise activations). The portable path is plain C loops built from
 *   the reference functions; the AVX2 and AVX-512 paths (kernels_avx2.c,
 *   kernels_avx512.c) compute the same things with vector instructions and
 *   are chosen at run time by CPU features. BM_CPU_PATH=portable|avx2|avx512
 *   forces one (a path the machine cannot run is ignored). */
#ifndef BM_CPU_KERNELS_H
#define BM_CPU_KERNELS_H

#include "model.h"
#include "pool.h"

/* ---- reference scalar functions ------------------------------------------- */

/* One row of W converted to f32: out[cols]. */
void bmi_cpu_row_to_f32(const bmi_matrix *W, int row, float *out);

/* out[i] = x[i] * rsqrt(mean(x^2) + eps) * w[i], i < d. */
void bmi_cpu_rmsnorm(const float *x, const float *w, int d, float eps, float *out);
/* out[i] = (x[i] - mean) * rsqrt(var + eps) * w[i] + b[i]. */
void bmi_cpu_layernorm(const float *x, const float *w, const float *b, int d, float eps, float *out);

float bmi_cpu_silu(float x);
float bmi_cpu_gelu(float x);     /* exact: 0.5 x (1 + erf(x / sqrt 2)) */
float bmi_cpu_softplus(float x); /* log(1 + e^x), x past 20 returned as is (as torch does) */
float bmi_cpu_sigmoid(float x);

/* ---- paths ------------------------------------------------------------------ */

typedef struct bmi_cpu_path {
    const char *name; /* "portable", "avx2", "avx512" */

    /* Matrix products take x in a path-specific packed form: a row of x of
     * `cols` floats becomes packed_cols(dtype, cols) floats (zero padded,
     * possibly reordered to suit how the path unpacks weights of `dtype`). */
    size_t (*packed_cols)(bmi_dtype dtype, int cols);
    void (*pack)(bmi_dtype dtype, const float *x, int cols, float *out);
    /* y[t*ldy + r] = W[r] . x[t] (+ bias[r]) for r0 <= r < r1, t < n_tok;
     * xp: n_tok packed rows, ldxp floats apart. bias may be NULL. */
    void (*matmul_rows)(const bmi_matrix *W, const float *bias, int r0, int r1, const float *xp, size_t ldxp,
                        int n_tok, float *y, size_t ldy);

    /* Element-wise, i < n. */
    void (*silu)(float *x, int n);                          /* x = SiLU(x) */
    void (*mul_silu)(float *y, const float *z, int n);      /* y = y * SiLU(z) */
    void (*softplus_bias)(float *x, const float *b, int n); /* x = softplus(x + b) */
    /* The MLP gate in place: a[f] = act(a[f]) * a[F + f] (gated) or act(a[f]). */
    void (*glu)(float *a, int F, int gated, bm_activation act);

    /* The causal depthwise convolution and SiLU of channels c0 <= c < c1 over
     * n_tok tokens of one stream: u_t[c] = SiLU(b[c] + sum_k w[c*K + k] *
     * x_{t-K+1+k}[c]), x_t = x + t*ldx, u_t = u + t*ldu; inputs before the
     * first token come from hist ([di, K-1], oldest first), which then holds
     * the last K-1 inputs. */
    void (*conv)(int c0, int c1, int n_tok, int K, const float *x, size_t ldx, const float *w, const float *b,
                 float *hist, float *u, size_t ldu);

    /* The selective scan of channels c0 <= c < c1 over n_tok tokens of one
     * stream, in time order. Row t of delta (already softplus'd), u and y is
     * ld floats apart (channel c at index c); bc + t*ldbc holds B_t[N] then
     * C_t[N]. A: [di, N]; ssm: [di, N], updated in place.
     *   s[c] = exp(delta A[c]) * s[c] + delta u B_t;   y = s[c] . C_t + D[c] u */
    void (*scan)(int c0, int c1, int n_tok, int N, const float *delta, const float *u, size_t ld, const float *bc,
                 size_t ldbc, const float *A, const float *D, float *ssm, float *y);
} bmi_cpu_path;

extern const bmi_cpu_path bmi_cpu_path_portable;
/* The portable convolution, for paths that cannot vectorise a kernel size. */
void bmi_cpu_conv_portable(int c0, int c1, int n_tok, int K, const float *x, size_t ldx, const float *w,
                           const float *b, float *hist, float *u, size_t ldu);

/* The path named `name` if this machine can run it (and this build has it),
 * else NULL. */
const bmi_cpu_path *bmi_cpu_path_by_name(const char *name);
/* The path BM_CPU_PATH names if usable, else the fastest usable one. */
const bmi_cpu_path *bmi_cpu_path_select(void);
/* Every path name this build knows, best last, NULL-terminated. */
extern const char *const bmi_cpu_path_names[];

/* Floats of scratch bmi_cpu_matmul needs to pack n_tok rows of `cols`. */
size_t bmi_cpu_pack_floats(int n_tok, int cols);

/* y[t][r] = W[r] . x[t] (+ bias[r]) for t < n_tok, r < W->rows.
 * x: [n_tok][ldx] (first W->cols used); y: [n_tok][ldy]. `pack` holds
 * bmi_cpu_pack_floats(n_tok, W->cols) floats. Parallel over rows (and token
 * blocks) on `pool`. */
void bmi_cpu_matmul(const bmi_cpu_path *path, bmi_pool *pool, float *pack, const bmi_matrix *W, const float *bias,
                    const float *x, int ldx, int n_tok, float *y, int ldy);

#endif
