/* Harness: the decode row path's x_proj (cuda/x_proj_rows.cu,
 * bmc_x_proj_rows) against a double CPU version on fresh random inputs:
 * 1, 3, 64, 256 and 1000 rows at the 2.8B (K 2944, 124 outputs) and 1.5B
 * (2304, 104) widths, u read as the f32 u columns of an xz buffer (row stride
 * 2 di, z beside it), bf16 and f16 weights, every variant forced at 64 and
 * 1000 rows and on the odd sizes (256 and 130 outputs: two column tiles of
 * the tensor-core kernel; K not a multiple of 16 or 32; rows not a multiple
 * of any tile; one output; a K long enough that the tensor-core kernel's
 * stages run as a ring); the same bits on a second run; nothing written
 * outside the outputs (poisoned gaps between rows). The tensor-core variants
 * must answer cudaErrorNotSupported for f16 weights and before sm_90. Then
 * the time at 64, 256 and 1024 rows of each variant and of the path the
 * kernel replaced (cuBLASLt over the two 16-bit halves of u, then the fold
 * of the halves), with the bytes moved.
 *
 * The error bounds, CUDA-core variants (1 .. 7). The inputs are exact (f32
 * u, 16-bit weights) and each product is exact inside an FMA, so only the
 * additions round:
 *  - per output, whatever the order, |got - exact| <= gamma_K sum_k |W u|
 *    with gamma_K = K 2^-24 / (1 - K 2^-24) (the bound for any summation
 *    of K terms): checked element by element;
 *  - over all outputs, the rounding errors of a chain of m additions of
 *    zero-mean terms add up like a random walk, to a relative error of about
 *    2^-24 sqrt(m / 6); the kernel's longest chain is one lane's K / 4
 *    products (the shape whose warps do not split K), 736 at K 2944:
 *    6.6e-7. Checked norm-wise at 4e-6.
 *
 * Tensor-core variants (8 and up; bf16 weights). u goes in as hi = bf16(u)
 * and lo = bf16(u - hi), rounded to nearest: |u - hi| <= 2^-8 |u|, u - hi
 * is exact in f32 (hi is within a factor 2 of u), |u - hi - lo| <= 2^-8
 * |u - hi| <= 2^-16 |u| (in the normal range), and |hi| + |lo| <= (1 + 2^-7
 * + 2^-16) |u|. The products of two bf16 are exact in f32; the additions
 * are not IEEE ones. Model (measured on V100 and A100 by Fasi et al., 2021;
 * keeping more bits only lowers the error): an MMA adds its b products and
 * the accumulator in one step, each term aligned to the largest and cut
 * (not rounded) to f32's 24 bits, and the sum cut to 24 bits. A step's
 * error is then below (b + 1) 2^-23 times the sum of its terms'
 * magnitudes, itself at most the sum of |terms| over the rank's whole K
 * range K_r (plus the errors so far); the rank's 2 K_r / b steps (hi and lo)
 * add to at most 4 (1 + 1 / b) K_r 2^-24 <= 5 K_r 2^-24 of it for b >= 4.
 * The CS partials are added in f32, rounded, in rank order (gamma_{CS-1}).
 * K_r <= 16 ceil(ceil(K / 16) / CS). Checked element by element:
 *   |got - exact| <= (2^-16 + 1.01 (5 K_r 2^-24 + gamma_{CS-1})) sum_k |W u|
 * (1.01: the halves' 1 + 2^-7 and the second-order terms). Norm-wise the
 * halves' residual dominates: each 8-bit rounding of a number spread evenly
 * within its binade leaves a relative rms error of 2^-7 sqrt(3/7) / sqrt(12)
 * = 1.5e-3, and u - hi - lo is the rounding error of u's rounding error:
 * (1.5e-3)^2 = 2.2e-6; the cut additions, which are zero-mean but for the
 * final cut of each step, add about 0.7e-6 in quadrature at K 2944 (the
 * model above simulated in double: 2.3e-6 in all, at CS 4 to 16). Checked
 * norm-wise at 1e-5. */
#include <cublasLt.h>

#include "dev.cuh"


struct xp_case {
    int rows, K, n_out, act, every; /* every: each variant forced too */
};

static bool sm90_here(void) {
    int dev = 0, major = 0;
    DEV_CUDA(cudaGetDevice(&dev));
    DEV_CUDA(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
    return major >= 9;
}

/* "shape 3", "mma BM 64 CS 8": what variant v (resolved for 0) runs */
static void variant_label(char *out, size_t size, int v, int rows, int act) {
    int bm = 0, cs = 0;
    const int rv = bmc_x_proj_rows_variant(v, rows, act, &bm, &cs);
    int n = v ? 0 : snprintf(out, size, "choice: ");
    if (bm) snprintf(out + n, size - n, "mma BM %d CS %d", bm, cs);
    else snprintf(out + n, size - n, "shape %d", rv);
}

/* y16 [2 rows][K]: hi = 16-bit(u), lo = 16-bit(u - hi), as the row path's
 * conv step used to write them for the cuBLASLt path */
static void halves(const float *u, int ldu, int rows, int K, int act, uint16_t *y16) {
    for (int b = 0; b < rows; b++)
        for (int k = 0; k < K; k++) {
            const float v = u[(size_t)b * ldu + k];
            const uint16_t hi = dev_to16(v, act);
            y16[(size_t)b * K + k] = hi;
            y16[(size_t)(rows + b) * K + k] = dev_to16(v - dev_from16(hi, act), act);
        }
}

static void run_case(const xp_case &c) {
    const int rows = c.rows, K = c.K, n = c.n_out, ldu = 2 * K, ldy = n + 3;
    float *xz = (float *)malloc((size_t)rows * ldu * 4), *wf = (float *)malloc((size_t)n * K * 4);
    uint16_t *w16 = (uint16_t *)malloc((size_t)n * K * 2);
    dev_fill(xz, (size_t)rows * ldu, 1.0, 0.0);
    dev_fill(wf, (size_t)n * K, 0.1, 0.0);
    for (size_t i = 0; i < (size_t)n * K; i++) w16[i] = dev_to16(wf[i], c.act);
    for (size_t i = 0; i < (size_t)n * K; i++) wf[i] = dev_from16(w16[i], c.act); /* the weights as the kernel sees them */
    double *ref = (double *)malloc((size_t)rows * n * 8), *asum = (double *)malloc((size_t)rows * n * 8);
    for (int b = 0; b < rows; b++)
        for (int j = 0; j < n; j++) {
            double s = 0, a = 0;
            for (int k = 0; k < K; k++) {
                const double p = (double)wf[(size_t)j * K + k] * xz[(size_t)b * ldu + k];
                s += p;
                a += fabs(p);
            }
            ref[(size_t)b * n + j] = s;
            asum[(size_t)b * n + j] = a;
        }
    float *d_xz = dev_upload(xz, (size_t)rows * ldu);
    uint16_t *d_w = dev_upload(w16, (size_t)n * K);
    float *d_y = dev_alloc_poisoned<float>((size_t)rows * ldy);
    float *y = (float *)malloc((size_t)rows * ldy * 4), *y2 = (float *)malloc((size_t)rows * ldy * 4);
    float *got = (float *)malloc((size_t)rows * n * 4);
    const bool sm90 = sm90_here();
    /* 0: the kernel's own choice; with c.every also every variant */
    for (int v = 0; v <= (c.every ? BMC_X_PROJ_VARIANTS : 0); v++) {
        char what[128], label[40];
        variant_label(label, sizeof label, v, rows, c.act);
        snprintf(what, sizeof what, "rows %d K %d outputs %d %s variant %d (%s)", rows, K, n,
                 c.act == BMC_F16 ? "f16" : "bf16", v, label);
        int bm = 0, cs = 0;
        bmc_x_proj_rows_variant(v, rows, c.act, &bm, &cs);
        if (bm && (c.act == BMC_F16 || !sm90)) { /* a tensor-core variant where it cannot run */
            const cudaError_t e = bmc_x_proj_rows(d_xz, ldu, rows, K, d_w, c.act, n, d_y, ldy, v, 0, 0);
            DEV_CHECK(e == cudaErrorNotSupported, "%s: %s instead of cudaErrorNotSupported", what, cudaGetErrorString(e));
            continue;
        }
        double factor = K * 0x1p-24 / (1 - K * 0x1p-24), normwise = 4e-6;
        if (bm) {
            const double kr = 16.0 * (((K + 15) / 16 + cs - 1) / cs);
            factor = 0x1p-16 + 1.01 * (5 * kr * 0x1p-24 + (cs - 1) * 0x1p-24 / (1 - (cs - 1) * 0x1p-24));
            normwise = 1e-5;
        }
        DEV_CUDA(cudaMemset(d_y, 0xff, (size_t)rows * ldy * 4));
        DEV_CUDA(bmc_x_proj_rows(d_xz, ldu, rows, K, d_w, c.act, n, d_y, ldy, v, 0, 0));
        DEV_CUDA(cudaDeviceSynchronize());
        dev_download(y, d_y, (size_t)rows * ldy);
        DEV_CUDA(cudaMemset(d_y, 0xff, (size_t)rows * ldy * 4));
        DEV_CUDA(bmc_x_proj_rows(d_xz, ldu, rows, K, d_w, c.act, n, d_y, ldy, v, 0, 0));
        DEV_CUDA(cudaDeviceSynchronize());
        dev_download(y2, d_y, (size_t)rows * ldy);
        int outside = 0, over = 0;
        for (int b = 0; b < rows; b++)
            for (int j = 0; j < ldy; j++) {
                const float g = y[(size_t)b * ldy + j];
                if (j >= n) {
                    uint32_t bits;
                    memcpy(&bits, &g, 4);
                    outside += bits != 0xffffffffu;
                    continue;
                }
                got[(size_t)b * n + j] = g;
                const double e = fabs(g - ref[(size_t)b * n + j]);
                over += !(e <= factor * asum[(size_t)b * n + j]);
            }
        const double err = dev_rel_error(got, ref, (size_t)rows * n);
        printf("%s: rel err %.2e\n", what, err);
        DEV_CHECK(err < normwise, "%s: rel err %.3e", what, err);
        DEV_CHECK(over == 0, "%s: %d outputs beyond %.3g sum |W u|", what, over, factor);
        DEV_CHECK(outside == 0, "%s: %d floats written outside the outputs", what, outside);
        DEV_CHECK(memcmp(y, y2, (size_t)rows * ldy * 4) == 0, "%s: a second run gave other bits", what);
    }
    cudaFree(d_xz); cudaFree(d_w); cudaFree(d_y);
    free(xz); free(wf); free(w16); free(ref); free(asum); free(y); free(y2); free(got);
}

/* Time per launch at the 2.8B width: the kernel (its own choice, then every
 * variant that runs here) and the cuBLASLt path it replaced (GEMM over the 2B rows of the
 * 16-bit halves, split-K as the heuristic likes, then the fold). */
/* Time per launch of K -> n at `rows`, the kernel (its own choice, then
 * every variant that runs here) and the cuBLASLt path it replaced (GEMM over
 * the 2B rows of the 16-bit halves, split-K as the heuristic likes, then the
 * fold). `copies` weight matrices are used in turn, so that above 1 the
 * weights come from DRAM as in a step (which reads each once). */
static void time_rows(int rows, int K, int n, int copies, const char *what_shape, cublasLtHandle_t lt,
                      bmc_gemm_cache *cache, void *ws) {
    const int ldu = 2 * K;
    const size_t wn = (size_t)n * K;
    float *xz = (float *)malloc((size_t)rows * ldu * 4), *wf = (float *)malloc(wn * 4);
    uint16_t *w16 = (uint16_t *)malloc(wn * 2), *u16 = (uint16_t *)malloc((size_t)2 * rows * K * 2);
    dev_fill(xz, (size_t)rows * ldu, 1.0, 0.0);
    dev_fill(wf, wn, 0.1, 0.0);
    for (size_t i = 0; i < wn; i++) w16[i] = dev_bf16(wf[i]);
    halves(xz, ldu, rows, K, BMC_BF16, u16);
    float *d_xz = dev_upload(xz, (size_t)rows * ldu);
    uint16_t *d_w = nullptr, *d_u16 = dev_upload(u16, (size_t)2 * rows * K);
    DEV_CUDA(cudaMalloc(&d_w, wn * 2 * copies));
    for (int i = 0; i < copies; i++) DEV_CUDA(cudaMemcpy(d_w + wn * i, w16, wn * 2, cudaMemcpyHostToDevice));
    float *d_y = dev_alloc_poisoned<float>((size_t)2 * rows * n);
    const double bytes = (double)n * K * 2 + (double)rows * K * 4 + (double)rows * n * 4;
    const double fmas = (double)rows * n * K;
    printf("%s: rows %4d, K %d, %d outputs, weights %s: %.2f MB to move (weights, u, y), %.0f M FMAs\n", what_shape,
           rows, K, n, copies > 1 ? "from DRAM" : "from L2", bytes / 1e6, fmas / 1e6);
    for (int v = 0; v <= BMC_X_PROJ_VARIANTS; v++) {
        char label[40];
        variant_label(label, sizeof label, v, rows, BMC_BF16);
        if (bmc_x_proj_rows(d_xz, ldu, rows, K, d_w, BMC_BF16, n, d_y, n, v, 0, 0) == cudaErrorNotSupported) {
            printf("  x_proj_rows, %-24s not on this GPU\n", label);
            continue;
        }
        const double us = dev_time_loop_us(50, 20, [&](int i) {
            bmc_x_proj_rows(d_xz, ldu, rows, K, d_w + wn * (i % copies), BMC_BF16, n, d_y, n, v, 0, 0);
        });
        printf("  x_proj_rows, %-24s %7.2f us  %6.0f GB/s  %6.2f TFMA/s\n", label, us, bytes / (us * 1e3),
               fmas / (us * 1e6));
    }
    const char *what = "";
    const double us = dev_time_loop_us(50, 20, [&](int i) {
        bmc_gemm_args g = {2 * rows, n, K, d_u16, K, BMC_BF16, d_w + wn * (i % copies), K, d_y, n, BMC_GEMM_OUT_F32};
        bmc_gemm(lt, cache, ws, 32u << 20, &g, 0, &what);
        bmc_fold_rows(d_y, rows, n, n, rows, NULL, 0, 0);
    });
    printf("  cuBLASLt on the two halves + fold: %.2f us\n", us);
    cudaFree(d_xz); cudaFree(d_w); cudaFree(d_u16); cudaFree(d_y);
    free(xz); free(wf); free(w16); free(u16);
}

int main(void) {
    if (dev_no_gpu("dev_x_proj_rows")) return 0;
    dev_seed();
    if (!dev_profiling()) {
        const int widths[2][2] = {{2944, 124}, {2304, 104}};
        const int rows[] = {1, 3, 64, 256, 1000};
        for (int w = 0; w < 2; w++)
            for (int r : rows)
                run_case({r, widths[w][0], widths[w][1], r == 3 || r == 256 ? BMC_F16 : BMC_BF16, r == 64 || r == 1000});
        /* K 6152: the tensor-core kernel's stages run as a ring (but at (32, 16)) */
        const xp_case odd[] = {{37, 1000, 256, BMC_BF16, 1}, {5, 64, 8, BMC_F16, 1},     {2, 8, 1, BMC_BF16, 1},
                               {300, 104, 40, BMC_BF16, 1},  {70, 6152, 130, BMC_BF16, 1}};
        for (const xp_case &c : odd) run_case(c);
    }

    cublasLtHandle_t lt;
    if (cublasLtCreate(&lt) != CUBLAS_STATUS_SUCCESS) return 2;
    bmc_gemm_cache *cache = bmc_gemm_cache_new();
    void *ws = NULL;
    DEV_CUDA(cudaMalloc(&ws, 32u << 20));
    for (int rows : {64, 256, 1024}) time_rows(rows, 2944, 124, 1, "x_proj", lt, cache, ws);
    /* out_proj's shape (2.8B), the weights from DRAM: would this kernel take it? */
    for (int rows : {64, 256}) time_rows(rows, 2944, 1472, 24, "out_proj", lt, cache, ws);
    bmc_gemm_cache_free(cache);
    cudaFree(ws);
    cublasLtDestroy(lt);
    return dev_summary("dev_x_proj_rows");
}
