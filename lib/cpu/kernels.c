/* The reference scalar functions, the portable path (plain loops that read
 * like the math; every faster path is tested against it), the choice of path
 * and the threaded matrix-product driver shared by every path. */
#include "kernels.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels_simd.h"

#if BMI_CPU_X86
#include <cpuid.h>
#endif

/* ---- reference scalar functions ------------------------------------------- */

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

/* ---- the portable path --------------------------------------------------------- */

#define PORTABLE_MAX_COLS 65536

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

static size_t portable_packed_cols(bmi_dtype dtype, int cols) {
    (void)dtype;
    return (size_t)cols;
}

static void portable_pack(bmi_dtype dtype, const float *x, int cols, float *out) {
    (void)dtype;
    memcpy(out, x, (size_t)cols * sizeof(float));
}

/* Convert each weight row once and reuse it for every token. */
static void portable_matmul_rows(const bmi_matrix *W, const float *bias, int r0, int r1, const float *xp,
                                 size_t ldxp, int n_tok, float *y, size_t ldy) {
    float row[PORTABLE_MAX_COLS];
    for (int r = r0; r < r1; r++) {
        const float *wr = W->dtype == BMI_F32 ? (const float *)W->data + (size_t)r * (size_t)W->cols : row;
        if (W->dtype != BMI_F32) bmi_cpu_row_to_f32(W, r, row);
        float b = bias ? bias[r] : 0.0f;
        for (int t = 0; t < n_tok; t++)
            y[(size_t)t * ldy + (size_t)r] = dot_f32(wr, xp + (size_t)t * ldxp, W->cols) + b;
    }
}

static void portable_silu(float *x, int n) {
    for (int i = 0; i < n; i++) x[i] = bmi_cpu_silu(x[i]);
}

static void portable_mul_silu(float *y, const float *z, int n) {
    for (int i = 0; i < n; i++) y[i] *= bmi_cpu_silu(z[i]);
}

static void portable_softplus_bias(float *x, const float *b, int n) {
    for (int i = 0; i < n; i++) x[i] = bmi_cpu_softplus(x[i] + b[i]);
}

static void portable_glu(float *a, int F, int gated, bm_activation act) {
    for (int f = 0; f < F; f++) {
        float h = act == BM_ACTIVATION_SILU ? bmi_cpu_silu(a[f]) : bmi_cpu_gelu(a[f]);
        a[f] = gated ? h * a[F + f] : h;
    }
}

void bmi_cpu_conv_portable(int c0, int c1, int n_tok, int K, const float *x, size_t ldx, const float *w,
                           const float *b, float *hist, float *u, size_t ldu) {
    for (int c = c0; c < c1; c++) {
        float *h = hist + (size_t)c * (size_t)(K - 1);
        const float *wc = w + (size_t)c * (size_t)K;
        for (int t = 0; t < n_tok; t++) {
            float acc = b[c];
            for (int k = 0; k < K; k++) {
                int j = t - (K - 1) + k; /* input index; before the first token: history */
                acc += wc[k] * (j < 0 ? h[K - 1 + j] : x[(size_t)j * ldx + (size_t)c]);
            }
            u[(size_t)t * ldu + (size_t)c] = bmi_cpu_silu(acc);
        }
        for (int k = 0; k < K - 1; k++) { /* ascending: h[k + n_tok] is read before it is written */
            int j = n_tok - (K - 1) + k;
            h[k] = j < 0 ? h[K - 1 + j] : x[(size_t)j * ldx + (size_t)c];
        }
    }
}

static void portable_scan(int c0, int c1, int n_tok, int N, const float *delta, const float *u, size_t ld,
                          const float *bc, size_t ldbc, const float *A, const float *D, float *ssm, float *y) {
    for (int c = c0; c < c1; c++) {
        float *s = ssm + (size_t)c * (size_t)N;
        const float *a = A + (size_t)c * (size_t)N;
        for (int t = 0; t < n_tok; t++) {
            size_t i = (size_t)t * ld + (size_t)c;
            const float *B = bc + (size_t)t * ldbc, *C = B + N;
            float dt = delta[i], du = dt * u[i], acc = 0;
            for (int n = 0; n < N; n++) {
                s[n] = expf(dt * a[n]) * s[n] + du * B[n];
                acc += s[n] * C[n];
            }
            y[i] = acc + D[c] * u[i];
        }
    }
}

const bmi_cpu_path bmi_cpu_path_portable = {
    .name = "portable",
    .packed_cols = portable_packed_cols,
    .pack = portable_pack,
    .matmul_rows = portable_matmul_rows,
    .silu = portable_silu,
    .mul_silu = portable_mul_silu,
    .softplus_bias = portable_softplus_bias,
    .glu = portable_glu,
    .conv = bmi_cpu_conv_portable,
    .scan = portable_scan,
};

/* ---- choosing a path ------------------------------------------------------------ */

const char *const bmi_cpu_path_names[] = {"portable", "avx2", "avx512", NULL};

#if BMI_CPU_X86
/* F16C (CPUID.1:ECX bit 29), which not every compiler's
 * __builtin_cpu_supports knows; the AVX checks cover the OS side. */
static int has_f16c(void) {
    unsigned a, b, c, d;
    return __get_cpuid(1, &a, &b, &c, &d) && (c >> 29 & 1u);
}
#endif

const bmi_cpu_path *bmi_cpu_path_by_name(const char *name) {
    if (!name) return NULL;
    if (strcmp(name, "portable") == 0) return &bmi_cpu_path_portable;
#if BMI_CPU_X86
    __builtin_cpu_init();
    if (strcmp(name, "avx2") == 0 && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && has_f16c())
        return &bmi_cpu_path_avx2;
    if (strcmp(name, "avx512") == 0 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("fma") && has_f16c())
        return &bmi_cpu_path_avx512;
#endif
    return NULL;
}

const bmi_cpu_path *bmi_cpu_path_select(void) {
    const bmi_cpu_path *p = bmi_cpu_path_by_name(getenv("BM_CPU_PATH"));
    if (p) return p;
    for (int i = 0; bmi_cpu_path_names[i]; i++) {
        const bmi_cpu_path *q = bmi_cpu_path_by_name(bmi_cpu_path_names[i]);
        if (q) p = q; /* names are listed best last */
    }
    return p;
}

/* ---- the matrix-product driver --------------------------------------------------- */

/* Every path packs a row into at most this many floats per 32 columns. */
static size_t pack_stride(int cols) { return ((size_t)cols + 31) / 32 * 32; }

size_t bmi_cpu_pack_floats(int n_tok, int cols) { return (size_t)n_tok * pack_stride(cols); }

/* Below this many multiply-adds a product runs on the calling thread. */
#define MATMUL_SERIAL_MACS 32768
/* Packed x per token block: each block meets every weight row once. Tasks
 * keep a 4-token tile of x in L1 and their weight rows in L2, so the block
 * itself can be large (one pass over the weights for a whole chunk). */
#define MATMUL_X_BLOCK_BYTES (4 * 1024 * 1024)

typedef struct matmul_job {
    const bmi_cpu_path *path;
    const bmi_matrix *W;
    const float *bias, *x;
    float *xp, *y;
    int ldx, n_tok;
    size_t ldxp, ldy;
    int rows_per_task, row_tasks, tok_block;
} matmul_job;

static void pack_task(void *arg, int task) {
    const matmul_job *j = arg;
    int t0 = task * 16, t1 = t0 + 16 < j->n_tok ? t0 + 16 : j->n_tok;
    for (int t = t0; t < t1; t++)
        j->path->pack(j->W->dtype, j->x + (size_t)t * (size_t)j->ldx, j->W->cols, j->xp + (size_t)t * j->ldxp);
}

static void matmul_task(void *arg, int task) {
    const matmul_job *j = arg;
    int tb = task / j->row_tasks, rg = task % j->row_tasks;
    int r0 = rg * j->rows_per_task, r1 = r0 + j->rows_per_task < j->W->rows ? r0 + j->rows_per_task : j->W->rows;
    int t0 = tb * j->tok_block, nt = j->n_tok - t0 < j->tok_block ? j->n_tok - t0 : j->tok_block;
    j->path->matmul_rows(j->W, j->bias, r0, r1, j->xp + (size_t)t0 * j->ldxp, j->ldxp, nt, j->y + (size_t)t0 * j->ldy,
                         j->ldy);
}

void bmi_cpu_matmul(const bmi_cpu_path *path, bmi_pool *pool, float *pack, const bmi_matrix *W, const float *bias,
                    const float *x, int ldx, int n_tok, float *y, int ldy) {
    if (n_tok <= 0 || W->rows <= 0) return;
    matmul_job j = {path, W, bias, x, pack, y, ldx, n_tok, path->packed_cols(W->dtype, W->cols), (size_t)ldy, 0, 0, 0};
    double macs = (double)W->rows * (double)W->cols * (double)n_tok;
    if (!pool || bmi_pool_size(pool) == 1 || macs < MATMUL_SERIAL_MACS) pool = NULL;
    int threads = bmi_pool_size(pool);
    if (n_tok >= 32 && pool) bmi_pool_run(pool, (n_tok + 15) / 16, pack_task, &j);
    else
        for (int t = 0; t < n_tok; t++)
            path->pack(W->dtype, x + (size_t)t * (size_t)ldx, W->cols, pack + (size_t)t * j.ldxp);
    /* Few tokens: stream the weights once, cut into enough row ranges (of at
     * least MATMUL_SERIAL_MACS each) to keep every thread busy to the end.
     * Many tokens: token blocks of up to MATMUL_X_BLOCK_BYTES, each against
     * row ranges of at most 64 rows (a few hundred KB of weights: L2). */
    int tok_block = (int)(MATMUL_X_BLOCK_BYTES / (j.ldxp * sizeof(float)));
    tok_block = tok_block < 8 ? 8 : tok_block / 4 * 4;
    if (n_tok <= tok_block) tok_block = n_tok;
    int target = n_tok <= 4 ? 16 * threads : 4 * threads;
    int rows = (W->rows + target - 1) / target;
    int min_rows = (int)(MATMUL_SERIAL_MACS / ((double)W->cols * n_tok)); /* tasks worth claiming */
    if (rows < min_rows) rows = min_rows;
    rows = (rows + 7) / 8 * 8;
    if (n_tok > 4 && rows > 64) rows = 64;
    j.rows_per_task = rows;
    j.row_tasks = (W->rows + rows - 1) / rows;
    j.tok_block = tok_block;
    bmi_pool_run(pool, j.row_tasks * ((n_tok + tok_block - 1) / tok_block), matmul_task, &j);
}
