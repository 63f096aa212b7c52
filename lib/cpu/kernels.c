#include "kernels.h"

#include <math.h>

void bmi_cpu_row_to_f32(const bmi_matrix *W, int row, float *out) {
    size_t base = (size_t)row * (size_t)W->cols;
    switch (W->dtype) {
    case BMI_F32:
        memcpy(out, (const float *)W->data + base, (size_t)W->cols * sizeof(float));
        break;
    case BMI_BF16: {
        const uint16_t *p = (const uint16_t *)W->data + base;
        for (int c = 0; c < W->cols; c++) out[c] = bmi_bf16_to_f32(p[c]);
        break;
    }
    default: {
        const uint16_t *p = (const uint16_t *)W->data + base;
        for (int c = 0; c < W->cols; c++) out[c] = bmi_f16_to_f32(p[c]);
        break;
    }
    }
}

/* Eight partial sums so the compiler can keep them in one vector register. */
static float dot_f32(const float *a, const float *b, int n) {
    float acc[8] = {0};
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int k = 0; k < 8; k++) acc[k] += a[i + k] * b[i + k];
    float s = 0;
    for (; i < n; i++) s += a[i] * b[i];
    return s + ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
}

#define MATMUL_ROWS_PER_TASK 16
#define MATMUL_TOKENS_PER_BLOCK 16
#define MATMUL_MAX_COLS 65536

typedef struct matmul_job {
    const bmi_matrix *W;
    const float *bias, *x;
    int ldx, n_tok, ldy;
    float *y;
} matmul_job;

static void matmul_task(void *arg, int task) {
    const matmul_job *j = arg;
    const bmi_matrix *W = j->W;
    int r0 = task * MATMUL_ROWS_PER_TASK;
    int r1 = r0 + MATMUL_ROWS_PER_TASK < W->rows ? r0 + MATMUL_ROWS_PER_TASK : W->rows;
    /* Convert each weight row once and reuse it across a block of tokens. */
    float row[MATMUL_MAX_COLS] __attribute__((aligned(64)));
    for (int r = r0; r < r1; r++) {
        const float *wr = W->dtype == BMI_F32 ? (const float *)W->data + (size_t)r * (size_t)W->cols : row;
        if (W->dtype != BMI_F32) bmi_cpu_row_to_f32(W, r, row);
        float b = j->bias ? j->bias[r] : 0.0f;
        for (int t = 0; t < j->n_tok; t++)
            j->y[(size_t)t * (size_t)j->ldy + (size_t)r] = dot_f32(wr, j->x + (size_t)t * (size_t)j->ldx, W->cols) + b;
    }
}

void bmi_cpu_matmul(bmi_pool *pool, const bmi_matrix *W, const float *bias, const float *x, int ldx, int n_tok,
                    float *y, int ldy) {
    for (int t0 = 0; t0 < n_tok; t0 += MATMUL_TOKENS_PER_BLOCK) {
        int nt = n_tok - t0 < MATMUL_TOKENS_PER_BLOCK ? n_tok - t0 : MATMUL_TOKENS_PER_BLOCK;
        matmul_job j = {W, bias, x + (size_t)t0 * (size_t)ldx, ldx, nt, ldy, y + (size_t)t0 * (size_t)ldy};
        bmi_pool_run(pool, (W->rows + MATMUL_ROWS_PER_TASK - 1) / MATMUL_ROWS_PER_TASK, matmul_task, &j);
    }
}

void bmi_cpu_rmsnorm(const float *x, const float *w, int d, float eps, float *out) {
    double ss = 0;
    for (int i = 0; i < d; i++) ss += (double)x[i] * x[i];
    float scale = (float)(1.0 / sqrt(ss / d + eps));
    for (int i = 0; i < d; i++) out[i] = x[i] * scale * w[i];
}

void bmi_cpu_layernorm(const float *x, const float *w, const float *b, int d, float eps, float *out) {
    double mean = 0, var = 0;
    for (int i = 0; i < d; i++) mean += x[i];
    mean /= d;
    for (int i = 0; i < d; i++) var += (x[i] - mean) * (x[i] - mean);
    var /= d;
    float scale = (float)(1.0 / sqrt(var + eps));
    for (int i = 0; i < d; i++) out[i] = (float)(x[i] - mean) * scale * w[i] + b[i];
}

float bmi_cpu_silu(float x) { return x / (1.0f + expf(-x)); }
float bmi_cpu_gelu(float x) { return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f)); }
float bmi_cpu_softplus(float x) { return x > 20.0f ? x : log1pf(expf(x)); }
float bmi_cpu_sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }
