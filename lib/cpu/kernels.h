/* The CPU backend's arithmetic, in fp32 whatever the stored weight type. Each
 * function is the plain form of one line of SPEC.md's forward pass. */
#ifndef BM_CPU_KERNELS_H
#define BM_CPU_KERNELS_H

#include "model.h"
#include "pool.h"

/* y[t][r] = W[r] . x[t] (+ bias[r]) for t < n_tok, r < W->rows.
 * x: [n_tok][ldx] (first W->cols used); y: [n_tok][ldy]. Parallel over rows. */
void bmi_cpu_matmul(bmi_pool *pool, const bmi_matrix *W, const float *bias, const float *x, int ldx, int n_tok,
                    float *y, int ldy);

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

#endif
