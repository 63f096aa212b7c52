/* The CPU backend's kernel paths (lib/cpu/kernels*.c) on fresh random data
 * (seeded from the clock; BM_TEST_SEED=<n> replays a run), every path this
 * machine can run:
 * - matrix products of f32, bf16 and f16 weights at odd shapes (1..N rows,
 *   column counts that are not multiples of any vector width, 1..300
 *   tokens, with and without bias, strided inputs and outputs, 1 and 2
 *   threads) against a double-precision sum and against the portable path;
 * - the element-wise activations, the convolution and the selective scan
 *   against double precision (and the portable path against the same truth);
 * - whole models: the golden fixtures through every path (prefill of all
 *   positions, decode, greedy tokens), and a random model at odd dimensions
 *   (every layer kind, biases, N = 5 state entries, odd d, F, vocab) whose
 *   logits must agree between every path and the portable one. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "check.h"
#include "cpu.h"
#include "fixture.h"

/* ---- random numbers ---------------------------------------------------------- */

static uint64_t rng;

static uint64_t next_u64(void) {
    uint64_t z = (rng += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Uniform in [lo, hi), never exactly zero. */
static float frand(float lo, float hi) {
    for (;;) {
        float f = lo + (hi - lo) * (float)((next_u64() >> 40) * (1.0 / 16777216.0));
        if (f != 0.0f) return f;
    }
}

static int irand(int lo, int hi) { return lo + (int)(next_u64() % (uint64_t)(hi - lo + 1)); }

/* ---- the paths to test ------------------------------------------------------- */

static const bmi_cpu_path *paths[8];
static int n_paths; /* paths[0] is the portable one */

static void find_paths(void) {
    for (int i = 0; bmi_cpu_path_names[i]; i++) {
        const bmi_cpu_path *p = bmi_cpu_path_by_name(bmi_cpu_path_names[i]);
        if (p) paths[n_paths++] = p;
        else printf("test_cpu_kernels: path %s not supported here, skipped\n", bmi_cpu_path_names[i]);
    }
    CHECK(n_paths >= 1 && paths[0] == &bmi_cpu_path_portable);
}

/* ---- matrix products ------------------------------------------------------------ */

static float weight_value(bmi_dtype dt, const void *w, size_t i) {
    if (dt == BMI_F32) return ((const float *)w)[i];
    if (dt == BMI_BF16) return bmi_bf16_to_f32(((const uint16_t *)w)[i]);
    return bmi_f16_to_f32(((const uint16_t *)w)[i]);
}

/* n random weights starting `shift` elements past a 64-byte boundary (rows
 * then start at every alignment a mapped file can give them); the
 * allocation ends with the last weight, so a read past it is caught under
 * ASan. *base receives what to free. */
static void *random_weights(bmi_dtype dt, size_t n, int shift, void **base) {
    size_t es = bmi_dtype_size(dt);
    void *mem = NULL;
    if (posix_memalign(&mem, 64, (n + (size_t)shift) * es + 1) != 0) abort();
    *base = mem;
    void *w = (char *)mem + (size_t)shift * es;
    for (size_t i = 0; i < n; i++) {
        float f = frand(-1.0f, 1.0f);
        if (dt == BMI_F32) ((float *)w)[i] = f;
        else if (dt == BMI_BF16) ((uint16_t *)w)[i] = bmi_f32_to_bf16(f);
        else ((uint16_t *)w)[i] = bmi_f32_to_f16(f);
    }
    return w;
}

/* One product at the given shape on every path and 1 or 2 threads. */
static void check_matmul_case(bmi_dtype dt, int rows, int cols, int n_tok, int with_bias, bmi_pool **pools) {
    int ldx = cols + irand(0, 3), ldy = rows + irand(0, 3);
    void *wbase = NULL;
    void *wdata = random_weights(dt, (size_t)rows * (size_t)cols, irand(0, 1) ? 0 : irand(1, 31), &wbase);
    bmi_matrix W = {wdata, dt, rows, cols};
    float *x = malloc((size_t)n_tok * (size_t)ldx * sizeof(float));
    float *bias = with_bias ? malloc((size_t)rows * sizeof(float)) : NULL;
    for (size_t i = 0; i < (size_t)n_tok * (size_t)ldx; i++) x[i] = frand(-2.0f, 2.0f);
    for (int r = 0; r < rows && bias; r++) bias[r] = frand(-1.0f, 1.0f);
    /* the truth, in double, and the scale |w| . |x| that bounds rounding */
    double *truth = malloc((size_t)n_tok * (size_t)rows * sizeof(double));
    double *scale = malloc((size_t)n_tok * (size_t)rows * sizeof(double));
    for (int t = 0; t < n_tok; t++)
        for (int r = 0; r < rows; r++) {
            double s = bias ? bias[r] : 0.0, a = bias ? fabs(bias[r]) : 0.0;
            for (int c = 0; c < cols; c++) {
                double p = (double)weight_value(dt, wdata, (size_t)r * (size_t)cols + (size_t)c) *
                           x[(size_t)t * (size_t)ldx + (size_t)c];
                s += p;
                a += fabs(p);
            }
            truth[(size_t)t * (size_t)rows + (size_t)r] = s;
            scale[(size_t)t * (size_t)rows + (size_t)r] = a;
        }
    double tol = (2.0 + cols / 64.0) * 1.2e-7;
    float *pack = bmi_aligned_alloc(64, bmi_cpu_pack_floats(n_tok, cols) * sizeof(float));
    size_t ny = (size_t)n_tok * (size_t)ldy;
    float *y = malloc(ny * sizeof(float)), *ref = malloc(ny * sizeof(float));
    for (int p = 0; p < n_paths; p++)
        for (int th = 0; th < 2; th++) {
            for (size_t i = 0; i < ny; i++) y[i] = NAN; /* the padding must stay NaN */
            bmi_cpu_matmul(paths[p], pools[th], pack, &W, bias, x, ldx, n_tok, y, ldy);
            double worst = 0, worst_ref = 0;
            int pad_ok = 1;
            for (int t = 0; t < n_tok; t++) {
                for (int r = 0; r < rows; r++) {
                    size_t i = (size_t)t * (size_t)ldy + (size_t)r, k = (size_t)t * (size_t)rows + (size_t)r;
                    double e = fabs(y[i] - truth[k]) / (scale[k] + 1e-30);
                    if (!(e <= worst)) worst = e; /* NaN counts as worst */
                    if (p > 0) {
                        double er = fabs((double)y[i] - ref[i]) / (scale[k] + 1e-30);
                        if (!(er <= worst_ref)) worst_ref = er;
                    }
                }
                for (int r = rows; r < ldy; r++) pad_ok &= isnan(y[(size_t)t * (size_t)ldy + (size_t)r]);
            }
            CHECK_MSG(worst <= tol, "%s %s rows %d cols %d tokens %d bias %d threads %d: error %.3g (tol %.3g)",
                      paths[p]->name, bmi_dtype_name(dt), rows, cols, n_tok, with_bias, th + 1, worst, tol);
            CHECK_MSG(worst_ref <= 2 * tol, "%s %s rows %d cols %d tokens %d: differs from portable by %.3g",
                      paths[p]->name, bmi_dtype_name(dt), rows, cols, n_tok, worst_ref);
            CHECK_MSG(pad_ok, "%s wrote outside its rows (rows %d ldy %d)", paths[p]->name, rows, ldy);
            if (p == 0 && th == 0) memcpy(ref, y, ny * sizeof(float));
        }
    bmi_free(pack);
    free(y);
    free(ref);
    free(truth);
    free(scale);
    free(x);
    free(bias);
    free(wbase);
}

static void check_matmuls(bmi_pool **pools) {
    static const int odd_cols[] = {1,  2,  3,  7,  8,  9,  15, 16,  17,  31,  32,
                                   33, 47, 63, 64, 65, 72, 92, 100, 129, 255, 1153};
    static const int many_tokens[] = {5, 8, 13, 16, 17, 31, 33, 64, 65, 100, 257, 300};
    bmi_dtype dts[3] = {BMI_F32, BMI_BF16, BMI_F16};
    for (int d = 0; d < 3; d++) {
        /* every small shape class: rows 1..20, tokens 1..4 (decode and small batches) */
        for (int rows = 1; rows <= 20; rows++)
            check_matmul_case(dts[d], rows, odd_cols[irand(0, (int)(sizeof odd_cols / sizeof *odd_cols) - 1)],
                              irand(1, 4), rows % 2, pools);
        /* random odd shapes, many tokens */
        for (int i = 0; i < 24; i++) {
            int n_tok = many_tokens[irand(0, (int)(sizeof many_tokens / sizeof *many_tokens) - 1)];
            int cols = i % 2 ? odd_cols[irand(0, (int)(sizeof odd_cols / sizeof *odd_cols) - 1)] : irand(1, 400);
            int rows = irand(1, 70);
            if ((double)rows * cols * n_tok > 4e6) cols = (int)(4e6 / ((double)rows * n_tok)) + 1;
            check_matmul_case(dts[d], rows, cols, n_tok, i % 3 == 0, pools);
        }
        /* enough rows to make several tasks per thread, and a decode-sized row */
        check_matmul_case(dts[d], 517, 1153, 1, 1, pools);
        check_matmul_case(dts[d], 259, 301, 37, 0, pools);
        /* packed x past one token block (4 MB): several blocks */
        check_matmul_case(dts[d], 7, 3601, 300, 1, pools);
    }
}

/* ---- element-wise ------------------------------------------------------------------ */

static double silu_d(double x) { return x / (1.0 + exp(-x)); }
static double gelu_d(double x) { return 0.5 * x * erfc(-x / sqrt(2.0)); }
static double softplus_d(double x) { return x > 20.0 ? x : log1p(exp(x)); }

/* Values across the ranges the kernels special-case: small, ordinary, and
 * past where e^x leaves the float range. */
static float activation_input(void) {
    switch (irand(0, 4)) {
    case 0: return frand(-1e-3f, 1e-3f);
    case 1: return frand(-4.0f, 4.0f);
    case 2: return frand(-12.0f, 12.0f);
    case 3: return frand(-40.0f, 40.0f);
    default: return frand(-120.0f, 120.0f);
    }
}

/* |got - want| <= rel |want| + abs_floor, for every element. */
static int close_all(const float *got, const double *want, int n, double rel, double abs_floor, double *worst) {
    int ok = 1;
    for (int i = 0; i < n; i++) {
        double e = fabs(got[i] - want[i]);
        double lim = rel * fabs(want[i]) + abs_floor;
        if (!(e <= lim)) {
            if (ok && getenv("BM_TEST_VERBOSE"))
                fprintf(stderr, "  element %d: got %.9g want %.9g\n", i, got[i], want[i]);
            ok = 0;
        }
        double r = e / (fabs(want[i]) + abs_floor);
        if (!(r <= *worst)) *worst = r;
    }
    return ok;
}

static void check_elementwise(void) {
    enum { MAXN = 700 };
    float x[2 * MAXN], z[MAXN], b[MAXN], a[2 * MAXN];
    double want[MAXN];
    for (int p = 0; p < n_paths; p++) {
        /* The vector forms must be close to the truth; the portable one uses
         * libm's float functions, where 1 + erf(x) cancels for x < -3, so it
         * is held to an absolute bound scaled by |x| instead. */
        double rel = p == 0 ? 2e-6 : 1.5e-6;
        /* Absolute floors: results below ~1e-35 (e^x past the float range) may
         * flush to zero or differ; GELU below ~1e-30 rounds its exponent
         * argument (|x|^2 / 2 ~ 80) to a float. */
        double floor_gelu = p == 0 ? 4e-8 * 120 : 1e-30;
        double w_silu = 0, w_mul = 0, w_sp = 0, w_gelu = 0, w_glu = 0;
        int ok_silu = 1, ok_mul = 1, ok_sp = 1, ok_gelu = 1, ok_glu = 1;
        for (int round = 0; round < 40; round++) {
            int n = round < 20 ? round + 1 : irand(1, MAXN);
            for (int i = 0; i < n; i++) x[i] = activation_input(), z[i] = activation_input(), b[i] = frand(-3, 3);
            memcpy(a, x, sizeof(float) * (size_t)n);
            for (int i = 0; i < n; i++) want[i] = silu_d(x[i]);
            paths[p]->silu(a, n);
            ok_silu &= close_all(a, want, n, rel, 1e-35, &w_silu);
            memcpy(a, x, sizeof(float) * (size_t)n);
            for (int i = 0; i < n; i++) want[i] = (double)x[i] * silu_d(z[i]);
            paths[p]->mul_silu(a, z, n);
            ok_mul &= close_all(a, want, n, rel, 1e-33, &w_mul);
            memcpy(a, x, sizeof(float) * (size_t)n);
            for (int i = 0; i < n; i++) want[i] = softplus_d((double)(x[i] + b[i]));
            paths[p]->softplus_bias(a, b, n);
            ok_sp &= close_all(a, want, n, rel, 1e-37, &w_sp);
            /* glu: ungated GELU, gated GELU, gated SiLU */
            for (int mode = 0; mode < 3; mode++) {
                int gated = mode > 0;
                bm_activation act = mode == 2 ? BM_ACTIVATION_SILU : BM_ACTIVATION_GELU;
                memcpy(a, x, sizeof(float) * (size_t)n);
                if (gated) memcpy(a + n, z, sizeof(float) * (size_t)n);
                for (int i = 0; i < n; i++) {
                    double h = act == BM_ACTIVATION_SILU ? silu_d(x[i]) : gelu_d(x[i]);
                    want[i] = gated ? h * z[i] : h;
                }
                paths[p]->glu(a, n, gated, act);
                double fl = (act == BM_ACTIVATION_GELU ? floor_gelu : 1e-35) * (gated ? 120 : 1);
                if (mode == 0) ok_gelu &= close_all(a, want, n, rel, fl, &w_gelu);
                else ok_glu &= close_all(a, want, n, rel, fl, &w_glu);
                /* the gate half is input only */
                if (gated) CHECK(memcmp(a + n, z, sizeof(float) * (size_t)n) == 0);
            }
        }
        CHECK_MSG(ok_silu, "%s silu worst relative error %.3g", paths[p]->name, w_silu);
        CHECK_MSG(ok_mul, "%s mul_silu worst relative error %.3g", paths[p]->name, w_mul);
        CHECK_MSG(ok_sp, "%s softplus_bias worst relative error %.3g", paths[p]->name, w_sp);
        CHECK_MSG(ok_gelu, "%s gelu worst relative error %.3g", paths[p]->name, w_gelu);
        CHECK_MSG(ok_glu, "%s glu worst relative error %.3g", paths[p]->name, w_glu);
    }
}

/* ---- the selective scan ------------------------------------------------------------- */

static void check_scan_case(int N, int di, int n_tok) {
    int c0 = irand(0, di - 1), c1 = irand(c0 + 1, di);
    size_t ld = (size_t)di + (size_t)irand(0, 5), ldbc = 2 * (size_t)N + (size_t)irand(0, 7);
    size_t nrow = (size_t)n_tok * ld, nbc = (size_t)n_tok * ldbc, ns = (size_t)di * (size_t)N;
    float *delta = malloc(nrow * 4), *u = malloc(nrow * 4), *bc = malloc(nbc * 4), *A = malloc(ns * 4);
    float *D = malloc((size_t)di * 4), *s0 = malloc(ns * 4), *s = malloc(ns * 4), *y = malloc(nrow * 4);
    double *sd = malloc(ns * sizeof(double)), *yd = malloc(nrow * sizeof(double));
    for (size_t i = 0; i < nrow; i++) delta[i] = frand(1e-3f, 2.0f), u[i] = frand(-2, 2);
    for (size_t i = 0; i < nbc; i++) bc[i] = frand(-1, 1);
    for (size_t i = 0; i < ns; i++) A[i] = -frand(0.05f, 20.0f), s0[i] = frand(-1, 1);
    for (int i = 0; i < di; i++) D[i] = frand(-1, 1);
    for (size_t i = 0; i < ns; i++) sd[i] = s0[i];
    for (int c = c0; c < c1; c++)
        for (int t = 0; t < n_tok; t++) {
            size_t i = (size_t)t * ld + (size_t)c;
            const float *B = bc + (size_t)t * ldbc, *C = B + N;
            double acc = 0;
            for (int n = 0; n < N; n++) {
                double *sv = &sd[(size_t)c * (size_t)N + (size_t)n];
                *sv =
                    exp((double)delta[i] * A[(size_t)c * (size_t)N + (size_t)n]) * *sv + (double)delta[i] * u[i] * B[n];
                acc += *sv * C[n];
            }
            yd[i] = acc + (double)D[c] * u[i];
        }
    for (int p = 0; p < n_paths; p++) {
        memcpy(s, s0, ns * 4);
        for (size_t i = 0; i < nrow; i++) y[i] = NAN;
        paths[p]->scan(c0, c1, n_tok, N, delta, u, ld, bc, ldbc, A, D, s, y);
        double worst = 0;
        int untouched = 1;
        for (int c = 0; c < di; c++) {
            int in = c >= c0 && c < c1;
            for (int n = 0; n < N; n++) {
                size_t k = (size_t)c * (size_t)N + (size_t)n;
                if (!in) untouched &= s[k] == s0[k];
                else {
                    double e = fabs(s[k] - sd[k]) / (1.0 + fabs(sd[k]));
                    if (!(e <= worst)) worst = e;
                }
            }
            for (int t = 0; t < n_tok; t++) {
                size_t i = (size_t)t * ld + (size_t)c;
                if (!in) untouched &= isnan(y[i]) != 0;
                else {
                    double e = fabs(y[i] - yd[i]) / (1.0 + fabs(yd[i]));
                    if (!(e <= worst)) worst = e;
                }
            }
        }
        CHECK_MSG(worst <= 2e-5, "%s scan N %d channels %d..%d of %d, %d tokens: error %.3g", paths[p]->name, N, c0,
                  c1, di, n_tok, worst);
        CHECK_MSG(untouched, "%s scan touched channels outside %d..%d", paths[p]->name, c0, c1);
    }
    free(delta);
    free(u);
    free(bc);
    free(A);
    free(D);
    free(s0);
    free(s);
    free(y);
    free(sd);
    free(yd);
}

static void check_scans(void) {
    static const int Ns[] = {16, 16, 16, 1, 3, 8, 15, 17, 31, 32, 40};
    for (int i = 0; i < 40; i++) {
        int N = Ns[i % (int)(sizeof Ns / sizeof *Ns)];
        int n_tok = i < 10 ? i + 1 : irand(1, 300);
        check_scan_case(N, irand(1, 70), n_tok);
    }
}

/* ---- the convolution ---------------------------------------------------------------------- */

static void check_conv_case(int K, int di, int n_tok) {
    int c0 = irand(0, di - 1), c1 = irand(c0 + 1, di);
    size_t ldx = (size_t)di + (size_t)irand(0, 9), ldu = (size_t)di + (size_t)irand(0, 5),
           nh = (size_t)di * (size_t)(K > 1 ? K - 1 : 1);
    float *x = malloc((size_t)n_tok * ldx * 4), *w = malloc((size_t)di * (size_t)K * 4), *b = malloc((size_t)di * 4);
    float *h0 = malloc(nh * 4), *h = malloc(nh * 4), *u = malloc((size_t)n_tok * ldu * 4);
    double *want = malloc((size_t)n_tok * ldu * sizeof(double));
    float *hwant = malloc(nh * 4);
    for (size_t i = 0; i < (size_t)n_tok * ldx; i++) x[i] = frand(-3, 3);
    for (int i = 0; i < di * K; i++) w[i] = frand(-1, 1);
    for (int i = 0; i < di; i++) b[i] = frand(-1, 1);
    for (size_t i = 0; i < nh; i++) h0[i] = frand(-3, 3);
    memcpy(hwant, h0, nh * 4);
    for (int c = c0; c < c1; c++) {
        /* the whole input sequence of channel c: K-1 history values, then the tokens */
        double seq[8 + 300];
        for (int k = 0; k < K - 1; k++) seq[k] = h0[(size_t)c * (size_t)(K - 1) + (size_t)k];
        for (int t = 0; t < n_tok; t++) seq[K - 1 + t] = x[(size_t)t * ldx + (size_t)c];
        for (int t = 0; t < n_tok; t++) {
            double acc = b[c];
            for (int k = 0; k < K; k++) acc += (double)w[(size_t)c * (size_t)K + (size_t)k] * seq[t + k];
            want[(size_t)t * ldu + (size_t)c] = silu_d(acc);
        }
        for (int k = 0; k < K - 1; k++) hwant[(size_t)c * (size_t)(K - 1) + (size_t)k] = (float)seq[n_tok + k];
    }
    for (int p = 0; p < n_paths; p++) {
        memcpy(h, h0, nh * 4);
        for (size_t i = 0; i < (size_t)n_tok * ldu; i++) u[i] = NAN;
        paths[p]->conv(c0, c1, n_tok, K, x, ldx, w, b, h, u, ldu);
        double worst = 0;
        int untouched = 1;
        for (int t = 0; t < n_tok; t++)
            for (size_t c = 0; c < ldu; c++) {
                size_t i = (size_t)t * ldu + c;
                if ((int)c >= c0 && (int)c < c1) {
                    double e = fabs(u[i] - want[i]) / (1.0 + fabs(want[i]));
                    if (!(e <= worst)) worst = e;
                } else untouched &= isnan(u[i]) != 0;
            }
        CHECK_MSG(worst <= 1e-6, "%s conv K %d channels %d..%d of %d, %d tokens: error %.3g", paths[p]->name, K, c0, c1,
                  di, n_tok, worst);
        CHECK_MSG(untouched, "%s conv wrote outside channels %d..%d", paths[p]->name, c0, c1);
        CHECK_MSG(memcmp(h, hwant, nh * 4) == 0, "%s conv K %d, %d tokens: history not the last K-1 inputs",
                  paths[p]->name, K, n_tok);
    }
    free(x);
    free(w);
    free(b);
    free(h0);
    free(h);
    free(u);
    free(want);
    free(hwant);
}

static void check_convs(void) {
    static const int Ks[] = {4, 4, 1, 2, 3, 5, 8, 9};
    for (int i = 0; i < 40; i++) {
        int K = Ks[i % (int)(sizeof Ks / sizeof *Ks)];
        int n_tok = i < 12 ? i % 4 + 1 : irand(1, 300); /* fewer tokens than K - 1 too */
        check_conv_case(K, irand(1, 70), n_tok);
    }
}

/* ---- the pool under many tiny jobs -------------------------------------------------------- */

/* Decode runs hundreds of jobs of a few short tasks; workers join late or
 * not at all (the caller closes a job once it is out of tasks). Every task
 * must still run exactly once, and a job's results be complete on return. */
typedef struct tiny_job {
    int hits[16];
    int sum;
} tiny_job;

static void tiny_task(void *arg, int i) {
    tiny_job *j = arg;
    __atomic_add_fetch(&j->hits[i], 1, __ATOMIC_RELAXED);
    __atomic_add_fetch(&j->sum, i + 1, __ATOMIC_RELAXED);
}

static void check_pool_tiny_jobs(void) {
    for (int threads = 2; threads <= 4; threads += 2) {
        bmi_pool *p = NULL;
        CHECK_OK(bmi_pool_new(threads, &p));
        if (!p) continue;
        int ok = 1;
        for (int round = 0; round < 20000; round++) {
            tiny_job j;
            memset(&j, 0, sizeof j);
            int n = 2 + round % 15;
            bmi_pool_run(p, n, tiny_task, &j);
            for (int i = 0; i < n; i++) ok &= j.hits[i] == 1;
            ok &= j.sum == n * (n + 1) / 2;
            if (round % 1000 == 999) { /* let the workers fall asleep now and then */
                struct timespec ts = {0, 200000};
                nanosleep(&ts, NULL);
            }
        }
        CHECK_MSG(ok, "pool of %d threads: a tiny job's task ran other than once", threads);
        bmi_pool_free(p);
    }
}

/* ---- whole models --------------------------------------------------------------------- */

static bm_session *session_on(bm_model *m, const char *path_name, int threads) {
    setenv("BM_CPU_PATH", path_name, 1);
    bm_session_params sp;
    bm_session_params_init(&sp);
    sp.n_threads = threads;
    bm_session *s = NULL;
    CHECK_OK(bm_session_new(m, &sp, &s));
    unsetenv("BM_CPU_PATH");
    if (s) {
        const bmi_cpu_ctx *ctx = s->backend_ctx;
        CHECK_MSG(strcmp(ctx->path->name, path_name) == 0, "session runs %s, asked for %s", ctx->path->name, path_name);
    }
    return s;
}

static void check_golden_on_paths(void) {
    static const char *fixtures[] = {"tiny-f32", "tiny-bf16"};
    for (int f = 0; f < 2; f++) {
        char dir[4096];
        snprintf(dir, sizeof dir, "%s/%s", fixture_path("fixtures"), fixtures[f]);
        golden_set g;
        if (golden_load(dir, &g) != 0) {
            CHECK_MSG(0, "cannot read the golden set of %s", fixtures[f]);
            continue;
        }
        char path[4200];
        snprintf(path, sizeof path, "%s/model.safetensors", dir);
        bm_model_params mp;
        bm_model_params_init(&mp);
        mp.backend = BM_BACKEND_CPU;
        bm_model *m = NULL;
        CHECK_OK(bm_model_load(path, &mp, &m));
        size_t V = (size_t)g.vocab;
        for (int p = 0; m && p < n_paths; p++)
            for (int threads = 1; threads <= 2; threads++) {
                bm_session *s = session_on(m, paths[p]->name, threads);
                bm_state *st = NULL;
                CHECK_OK(bm_state_new(m, &st));
                if (!s || !st) continue;
                double worst = 0;
                int tokens_ok = 1;
                for (int k = 0; k < g.n_prompts; k++) {
                    const golden_prompt *gp = &g.prompts[k];
                    float *all = malloc(gp->n_prompt * V * sizeof(float)), *logits = malloc(V * sizeof(float));
                    CHECK_OK(bm_state_reset(st));
                    CHECK_OK(bm_prefill_all(s, st, gp->prompt, gp->n_prompt, all));
                    for (size_t t = 0; gp->prefill_logits && t < gp->n_prompt; t++) {
                        double e = rel_error(all + t * V, gp->prefill_logits + t * V, V);
                        if (!(e <= worst)) worst = e;
                    }
                    memcpy(logits, all + (gp->n_prompt - 1) * V, V * sizeof(float));
                    for (size_t i = 0; i < gp->n_decode; i++) {
                        if (i > 0) CHECK_OK(bm_step(s, st, gp->decode_tokens[i - 1], logits));
                        double e = rel_error(logits, gp->decode_logits + i * V, V);
                        if (!(e <= worst)) worst = e;
                        if (argmax(logits, V) != gp->decode_tokens[i]) tokens_ok = 0;
                    }
                    free(all);
                    free(logits);
                }
                CHECK_MSG(worst <= 1e-4, "%s on %s, %d threads: golden rel error %.3g", fixtures[f], paths[p]->name,
                          threads, worst);
                CHECK_MSG(tokens_ok, "%s on %s, %d threads: greedy tokens differ", fixtures[f], paths[p]->name,
                          threads);
                bm_state_free(st);
                bm_session_free(s);
            }
        bm_model_free(m);
        golden_free(&g);
    }
}

/* A random model at odd dimensions built in memory: d 40 (di 80, dt_rank 3),
 * N 5, K 3, F 37, vocab 77, layers r, 3, r2, 1, r1, with every bias. */
typedef struct odd_model {
    bmi_tensor_table table;
    void *bufs[256];
    int n_bufs;
    bmi_dtype dtype;
} odd_model;

static void add_tensor(odd_model *om, const char *name, int ndim, const int64_t *shape, int kind) {
    bmi_tensor v;
    memset(&v, 0, sizeof v);
    v.name = (char *)name;
    v.ndim = ndim;
    int64_t n = 1;
    for (int i = ndim - 1; i >= 0; i--) {
        v.shape[i] = shape[i];
        v.stride[i] = n;
        n *= shape[i];
    }
    /* kind: 0 matrix (fan-in scaled), 1 norm weight ~1, 2 small bias, 3 A_log, 4 dt bias */
    bmi_dtype dt = kind == 0 ? om->dtype : BMI_F32;
    float scale = kind == 0 ? sqrtf(3.0f / (float)shape[ndim - 1]) : 0.1f;
    void *buf = malloc((size_t)n * bmi_dtype_size(dt));
    for (int64_t i = 0; i < n; i++) {
        float f;
        if (kind == 1) f = 1.0f + frand(-0.2f, 0.2f);
        else if (kind == 3) f = logf((float)(i % shape[ndim - 1] + 1)) + frand(-0.1f, 0.1f);
        else if (kind == 4) f = logf(expm1f(frand(1e-3f, 0.1f)));
        else f = frand(-scale, scale);
        if (dt == BMI_F32) ((float *)buf)[i] = f;
        else if (dt == BMI_BF16) ((uint16_t *)buf)[i] = bmi_f32_to_bf16(f);
        else ((uint16_t *)buf)[i] = bmi_f32_to_f16(f);
    }
    v.dtype = dt;
    v.data = buf;
    v.nbytes = (size_t)n * bmi_dtype_size(dt);
    om->bufs[om->n_bufs++] = buf;
    CHECK_OK(bmi_table_add(&om->table, &v));
}

static bm_model *odd_model_make(odd_model *om, bmi_dtype dtype) {
    enum { D = 40, DI = 80, R = 3, N = 5, K = 3, F = 37, V = 77 };
    static const char *kinds[] = {"r", "3", "r2", "1", "r1"};
    memset(om, 0, sizeof *om);
    om->dtype = dtype;
    char name[256];
#define T1(nm, a, kind) add_tensor(om, nm, 1, (int64_t[]){a}, kind)
#define T2(nm, a, b, kind) add_tensor(om, nm, 2, (int64_t[]){a, b}, kind)
    T2("embedding.word_embeddings.weight", V, D, 0);
    for (int i = 0; i < 5; i++) {
        const char *k = kinds[i];
        int mamba = k[0] == 'r', experts = k[mamba] ? k[mamba] - '0' : 0;
        snprintf(name, sizeof name, "decoder.layers.%d.norm.weight", i), T1(name, D, 1);
        if (mamba && experts) snprintf(name, sizeof name, "decoder.layers.%d.norm_moe.weight", i), T1(name, D, 1);
        if (mamba) {
            const char *p = "mixer";
#define MX(suffix) snprintf(name, sizeof name, "decoder.layers.%d.%s.%s", i, p, suffix)
            MX("in_proj.weight"), T2(name, 2 * DI, D, 0);
            MX("in_proj.bias"), T1(name, 2 * DI, 2);
            MX("conv1d.weight"), add_tensor(om, name, 3, (int64_t[]){DI, 1, K}, 0);
            MX("conv1d.bias"), T1(name, DI, 2);
            MX("x_proj.weight"), T2(name, R + 2 * N, DI, 0);
            MX("dt_proj.weight"), T2(name, DI, R, 0);
            MX("dt_proj.bias"), T1(name, DI, 4);
            MX("A_log"), T2(name, DI, N, 3);
            MX("D"), T1(name, DI, 1);
            MX("out_proj.weight"), T2(name, D, DI, 0);
            MX("out_proj.bias"), T1(name, D, 2);
        }
        if (experts) {
            const char *p = mamba ? "moe" : "mixer";
            if (experts >= 2) {
                MX("router.weight"), T2(name, experts, D, 0);
                MX("router.bias"), T1(name, experts, 2);
            }
            for (int e = 0; e < experts; e++) {
                char pre[64];
                if (experts >= 2) snprintf(pre, sizeof pre, "local_experts.%d.", e);
                else pre[0] = 0;
                snprintf(name, sizeof name, "decoder.layers.%d.%s.%slinear_fc1.weight", i, p, pre),
                    T2(name, 2 * F, D, 0);
                snprintf(name, sizeof name, "decoder.layers.%d.%s.%slinear_fc1.bias", i, p, pre), T1(name, 2 * F, 2);
                snprintf(name, sizeof name, "decoder.layers.%d.%s.%slinear_fc2.weight", i, p, pre), T2(name, D, F, 0);
                snprintf(name, sizeof name, "decoder.layers.%d.%s.%slinear_fc2.bias", i, p, pre), T1(name, D, 2);
            }
#undef MX
        }
    }
    T1("decoder.final_layernorm.weight", D, 1);
    T1("decoder.final_layernorm.bias", D, 2);
    T1("output_layer.bias", V, 2);
#undef T1
#undef T2
    const char *json = "{\"num_layers\": 5, \"hidden_size\": 40, \"state_size\": 5, \"conv_dimension\": 3, "
                       "\"vocab_size\": 77, \"expansion_factor\": 2, \"mamba_moe_layers\": [\"r\", \"3\", \"r2\", "
                       "\"1\", \"r1\"], \"ffn_hidden_size\": 37, \"bias\": false, \"add_bias_linear\": true, "
                       "\"swiglu\": true, \"max_sequence_length\": 2048}";
    bmi_config config;
    bm_status st = bmi_config_parse(json, strlen(json), &config);
    CHECK_OK(st);
    if (st) {
        bmi_table_free(&om->table);
        return NULL;
    }
    bm_model_params mp;
    bm_model_params_init(&mp);
    mp.backend = BM_BACKEND_CPU;
    bm_model *m = NULL;
    CHECK_OK(bmi_model_create(&config, &om->table, &mp, &m)); /* takes config and table */
    return m;
}

static void odd_model_free(odd_model *om) {
    for (int i = 0; i < om->n_bufs; i++) free(om->bufs[i]);
}

static void check_odd_model(void) {
    bmi_dtype dts[3] = {BMI_F32, BMI_BF16, BMI_F16};
    enum { L = 45, STREAMS = 3, STEPS = 4, V = 77 };
    for (int d = 0; d < 3; d++) {
        odd_model om;
        bm_model *m = odd_model_make(&om, dts[d]);
        if (!m) {
            odd_model_free(&om);
            continue;
        }
        int32_t prompt[L];
        for (int i = 0; i < L; i++) prompt[i] = irand(0, V - 1);
        /* per path: all prefill positions of one stream, then STEPS batched
         * steps of STREAMS streams with different histories */
        float *out[8];
        size_t n_out = (size_t)L * V + (size_t)STEPS * STREAMS * V;
        for (int p = 0; p < n_paths; p++) {
            out[p] = malloc(n_out * sizeof(float));
            bm_session *s = session_on(m, paths[p]->name, 1 + p % 2);
            bm_state *st[STREAMS] = {0};
            for (int k = 0; k < STREAMS; k++) CHECK_OK(bm_state_new(m, &st[k]));
            if (!s || !st[STREAMS - 1]) continue;
            CHECK_OK(bm_prefill_all(s, st[0], prompt, L, out[p]));
            for (int k = 1; k < STREAMS; k++) CHECK_OK(bm_prefill(s, st[k], prompt + k, (size_t)(L - 7 * k), NULL));
            int32_t next[STREAMS] = {1, 2, 3};
            for (int i = 0; i < STEPS; i++) {
                float *lg = out[p] + (size_t)L * V + (size_t)i * STREAMS * V;
                CHECK_OK(bm_step_batch(s, st, next, STREAMS, lg));
                for (int k = 0; k < STREAMS; k++) next[k] = (next[k] * 31 + i) % V;
            }
            for (int k = 0; k < STREAMS; k++) bm_state_free(st[k]);
            bm_session_free(s);
            double e = rel_error(out[p], out[0], n_out);
            int finite = 1;
            for (size_t i = 0; i < n_out; i++) finite &= isfinite(out[p][i]) != 0;
            CHECK_MSG(finite, "odd model %s on %s: non-finite logits", bmi_dtype_name(dts[d]), paths[p]->name);
            CHECK_MSG(e <= 2e-5, "odd model %s on %s: rel error %.3g against portable", bmi_dtype_name(dts[d]),
                      paths[p]->name, e);
        }
        for (int p = 0; p < n_paths; p++) free(out[p]);
        bm_model_free(m);
        odd_model_free(&om);
    }
}

int main(void) {
    const char *seed_env = getenv("BM_TEST_SEED");
    uint64_t seed =
        seed_env && *seed_env ? strtoull(seed_env, NULL, 10) : (uint64_t)time(NULL) ^ ((uint64_t)clock() << 32);
    printf("test_cpu_kernels: seed %llu (BM_TEST_SEED=%llu replays this run)\n", (unsigned long long)seed,
           (unsigned long long)seed);
    rng = seed;
    find_paths();
    bmi_pool *pools[2] = {NULL, NULL};
    CHECK_OK(bmi_pool_new(1, &pools[0]));
    CHECK_OK(bmi_pool_new(2, &pools[1]));
    check_matmuls(pools);
    check_elementwise();
    check_scans();
    check_convs();
    check_pool_tiny_jobs();
    bmi_pool_free(pools[0]);
    bmi_pool_free(pools[1]);
    check_golden_on_paths();
    check_odd_model();
    return check_summary("test_cpu_kernels");
}
