/* Harness: the decode row path's x_proj (cuda/x_proj_rows.cu,
 * bmc_x_proj_rows) against a double CPU version on fresh random inputs:
 * 1, 3, 64, 256 and 1000 rows at the 2.8B (K 2944, 124 outputs) and 1.5B
 * (2304, 104) widths, u read as the f32 u columns of an xz buffer (row stride
 * 2 di, z beside it), bf16 and f16 weights, every tile shape forced at 64
 * and 1000 rows, and odd sizes (256 outputs, K not a multiple of 32, one
 * output); the same bits on a second run; nothing written outside the
 * outputs (poisoned gaps between rows). Then its time at 64, 256 and 1024
 * rows, each tile shape, and the path it replaces (cuBLASLt over the two
 * 16-bit halves of u, then the fold of the halves), with the bytes moved.
 *
 * The error bounds. The inputs are exact (f32 u, 16-bit weights) and each
 * product is exact inside an FMA, so only the additions round:
 *  - per output, whatever the order, |got - exact| <= gamma_K sum_k |W u|
 *    with gamma_K = K 2^-24 / (1 - K 2^-24) (the bound for any summation
 *    of K terms): checked element by element;
 *  - over all outputs, the rounding errors of a chain of m additions of
 *    zero-mean terms add up like a random walk, to a relative error of about
 *    2^-24 sqrt(m / 6); the kernel's longest chain is one lane's K / 4
 *    products (the shape whose warps do not split K), 736 at K 2944:
 *    6.6e-7. Checked norm-wise at 4e-6. */
#include <cublasLt.h>

#include "dev.cuh"


struct xp_case {
    int rows, K, n_out, act;
};

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
    double *ref = (double *)malloc((size_t)rows * n * 8), *bound = (double *)malloc((size_t)rows * n * 8);
    const double gamma = K * 0x1p-24 / (1 - K * 0x1p-24);
    for (int b = 0; b < rows; b++)
        for (int j = 0; j < n; j++) {
            double s = 0, a = 0;
            for (int k = 0; k < K; k++) {
                const double p = (double)wf[(size_t)j * K + k] * xz[(size_t)b * ldu + k];
                s += p;
                a += fabs(p);
            }
            ref[(size_t)b * n + j] = s;
            bound[(size_t)b * n + j] = gamma * a;
        }
    float *d_xz = dev_upload(xz, (size_t)rows * ldu);
    uint16_t *d_w = dev_upload(w16, (size_t)n * K);
    float *d_y = dev_alloc_poisoned<float>((size_t)rows * ldy);
    float *y = (float *)malloc((size_t)rows * ldy * 4), *y2 = (float *)malloc((size_t)rows * ldy * 4);
    float *got = (float *)malloc((size_t)rows * n * 4);
    /* 0: the kernel's own choice; at 64 and 1000 rows also every shape */
    const int last_variant = rows == 64 || rows == 1000 ? BMC_X_PROJ_VARIANTS : 0;
    for (int v = 0; v <= last_variant; v++) {
        char what[96];
        snprintf(what, sizeof what, "rows %d K %d outputs %d %s variant %d", rows, K, n,
                 c.act == BMC_F16 ? "f16" : "bf16", v);
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
                over += !(e <= bound[(size_t)b * n + j]);
            }
        const double err = dev_rel_error(got, ref, (size_t)rows * n);
        printf("%s: rel err %.2e\n", what, err);
        DEV_CHECK(err < 4e-6, "%s: rel err %.3e", what, err);
        DEV_CHECK(over == 0, "%s: %d outputs beyond gamma_K sum |W u|", what, over);
        DEV_CHECK(outside == 0, "%s: %d floats written outside the outputs", what, outside);
        DEV_CHECK(memcmp(y, y2, (size_t)rows * ldy * 4) == 0, "%s: a second run gave other bits", what);
    }
    cudaFree(d_xz); cudaFree(d_w); cudaFree(d_y);
    free(xz); free(wf); free(w16); free(ref); free(bound); free(y); free(y2); free(got);
}

/* Time per launch at the 2.8B width: the kernel (its own choice, then every
 * shape) and the cuBLASLt path it replaced (GEMM over the 2B rows of the
 * 16-bit halves, split-K as the heuristic likes, then the fold). */
static void time_rows(int rows, cublasLtHandle_t lt, bmc_gemm_cache *cache, void *ws) {
    const int K = 2944, n = 124, ldu = 2 * K;
    float *xz = (float *)malloc((size_t)rows * ldu * 4), *wf = (float *)malloc((size_t)n * K * 4);
    uint16_t *w16 = (uint16_t *)malloc((size_t)n * K * 2), *u16 = (uint16_t *)malloc((size_t)2 * rows * K * 2);
    dev_fill(xz, (size_t)rows * ldu, 1.0, 0.0);
    dev_fill(wf, (size_t)n * K, 0.1, 0.0);
    for (size_t i = 0; i < (size_t)n * K; i++) w16[i] = dev_bf16(wf[i]);
    halves(xz, ldu, rows, K, BMC_BF16, u16);
    float *d_xz = dev_upload(xz, (size_t)rows * ldu);
    uint16_t *d_w = dev_upload(w16, (size_t)n * K), *d_u16 = dev_upload(u16, (size_t)2 * rows * K);
    float *d_y = dev_alloc_poisoned<float>((size_t)2 * rows * n);
    const double bytes = (double)n * K * 2 + (double)rows * K * 4 + (double)rows * n * 4;
    const double fmas = (double)rows * n * K;
    printf("rows %4d, K %d, %d outputs: %.2f MB to move (weights, u, xdbl), %.0f M FMAs\n", rows, K, n, bytes / 1e6,
           fmas / 1e6);
    for (int v = 0; v <= BMC_X_PROJ_VARIANTS; v++) {
        const double us = dev_time_loop_us(50, 20, [&](int) {
            bmc_x_proj_rows(d_xz, ldu, rows, K, d_w, BMC_BF16, n, d_y, n, v, 0, 0);
        });
        char label[32];
        snprintf(label, sizeof label, v ? "shape %d" : "its choice", v);
        printf("  x_proj_rows, %-10s %7.2f us  %6.0f GB/s  %6.2f TFMA/s\n", label, us, bytes / (us * 1e3),
               fmas / (us * 1e6));
    }
    const char *what = "";
    bmc_gemm_args g = {2 * rows, n, K, d_u16, K, BMC_BF16, d_w, K, d_y, n, BMC_GEMM_OUT_F32};
    const double us = dev_time_loop_us(50, 20, [&](int) {
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
            for (int r : rows) run_case({r, widths[w][0], widths[w][1], r == 3 || r == 256 ? BMC_F16 : BMC_BF16});
        const xp_case odd[] = {{37, 1000, 256, BMC_BF16}, {5, 64, 8, BMC_F16}, {2, 8, 1, BMC_BF16}, {300, 104, 40, BMC_BF16}};
        for (const xp_case &c : odd) run_case(c);
    }

    cublasLtHandle_t lt;
    if (cublasLtCreate(&lt) != CUBLAS_STATUS_SUCCESS) return 2;
    bmc_gemm_cache *cache = bmc_gemm_cache_new();
    void *ws = NULL;
    DEV_CUDA(cudaMalloc(&ws, 32u << 20));
    time_rows(64, lt, cache, ws);
    time_rows(256, lt, cache, ws);
    time_rows(1024, lt, cache, ws);
    bmc_gemm_cache_free(cache);
    cudaFree(ws);
    cublasLtDestroy(lt);
    return dev_summary("dev_x_proj_rows");
}
