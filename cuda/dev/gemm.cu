/* Harness: the prefill GEMMs through cuBLASLt (cuda/gemm.cu) at the 2.8B
 * model's shapes, for a short and a long prompt: each against a double CPU
 * product of the same 16-bit (or f32) inputs, with inputs and outputs at the
 * offsets the expert GEMMs use; then the time and TFLOP/s of each. */
#include <cublasLt.h>

#include "dev.cuh"

typedef struct shape {
    const char *name;
    int n, k, x_type, y_kind, row_offset;
} shape;

static float round16(float v) { return dev_from_bf16(dev_bf16(v)); }

int main(void) {
    if (dev_no_gpu("dev_gemm")) return 0;
    dev_seed();
    cublasLtHandle_t lt;
    if (cublasLtCreate(&lt) != CUBLAS_STATUS_SUCCESS) return 2;
    bmc_gemm_cache *cache = bmc_gemm_cache_new();
    void *ws = NULL;
    DEV_CUDA(cudaMalloc(&ws, 32u << 20));
    const shape shapes[] = {{"in_proj  5888x1472", 5888, 1472, BMC_BF16, BMC_GEMM_OUT_F32, 0},
                            {"x_proj    124x2944", 124, 2944, BMC_BF16, BMC_GEMM_OUT_F32, 0},
                            {"dt_proj tf32 2944x92", 2944, 92, BMC_GEMM_F32, BMC_GEMM_OUT_F32, 0},
                            {"out_proj 1472x2944", 1472, 2944, BMC_BF16, BMC_GEMM_OUT_F32, 0},
                            {"fc1 at row 13 7744x1472", 7744, 1472, BMC_BF16, BMC_GEMM_OUT_16, 13},
                            {"fc2 at row 13 1472x3872", 1472, 3872, BMC_BF16, BMC_GEMM_OUT_F32, 13},
                            {"lm_head 50304x1472", 50304, 1472, BMC_BF16, BMC_GEMM_OUT_F32, 0}};
    const int Ms[] = {64, 2048};
    for (int M : Ms) {
        for (const shape &s : shapes) {
            const int f32 = s.x_type == BMC_GEMM_F32, es = f32 ? 4 : 2;
            /* x holds offset + M rows (+ padding); the dt GEMM reads x with a wider stride, as from xdbl */
            const int ldx = f32 ? s.k + 32 : s.k, rows = s.row_offset + M;
            const size_t xn = (size_t)rows * ldx, wn = (size_t)s.n * s.k, yn = (size_t)rows * s.n;
            float *x = (float *)malloc(xn * 4), *w = (float *)malloc(wn * 4);
            dev_fill(x, xn, 1.0, 0.0);
            dev_fill(w, wn, 1.0 / sqrt((double)s.k), 0.0);
            if (!f32) {
                for (size_t i = 0; i < xn; i++) x[i] = round16(x[i]);
                for (size_t i = 0; i < wn; i++) w[i] = round16(w[i]);
            }
            void *dx, *dw, *dy;
            DEV_CUDA(cudaMalloc(&dx, xn * es));
            DEV_CUDA(cudaMalloc(&dw, wn * es));
            DEV_CUDA(cudaMalloc(&dy, yn * 4));
            DEV_CUDA(cudaMemset(dy, 0xff, yn * 4));
            if (f32) {
                DEV_CUDA(cudaMemcpy(dx, x, xn * 4, cudaMemcpyHostToDevice));
                DEV_CUDA(cudaMemcpy(dw, w, wn * 4, cudaMemcpyHostToDevice));
            } else {
                uint16_t *h = (uint16_t *)malloc((xn > wn ? xn : wn) * 2);
                for (size_t i = 0; i < xn; i++) h[i] = dev_bf16(x[i]);
                DEV_CUDA(cudaMemcpy(dx, h, xn * 2, cudaMemcpyHostToDevice));
                for (size_t i = 0; i < wn; i++) h[i] = dev_bf16(w[i]);
                DEV_CUDA(cudaMemcpy(dw, h, wn * 2, cudaMemcpyHostToDevice));
                free(h);
            }
            const int ys = s.y_kind == BMC_GEMM_OUT_F32 ? 4 : 2;
            bmc_gemm_args a = {M, s.n, s.k, (char *)dx + (size_t)s.row_offset * ldx * es, ldx, s.x_type, dw, s.k,
                               (char *)dy + (size_t)s.row_offset * s.n * ys, s.n, s.y_kind};
            const char *what = "";
            int r = bmc_gemm(lt, cache, ws, 32u << 20, &a, 0, &what);
            DEV_CHECK(r == 0, "%s M %d: %s status %d", s.name, M, what, r);
            DEV_CUDA(cudaDeviceSynchronize());
            /* check a sample of rows (all of them at M 64) */
            const int step = M > 64 ? 37 : 1;
            double num = 0, den = 0;
            float *got = (float *)malloc((size_t)s.n * 4);
            uint16_t *got16 = (uint16_t *)malloc((size_t)s.n * 2);
            for (int t = 0; t < M; t += step) {
                const size_t row = (size_t)(s.row_offset + t);
                if (ys == 4) {
                    DEV_CUDA(cudaMemcpy(got, (char *)dy + row * s.n * 4, (size_t)s.n * 4, cudaMemcpyDeviceToHost));
                } else {
                    DEV_CUDA(cudaMemcpy(got16, (char *)dy + row * s.n * 2, (size_t)s.n * 2, cudaMemcpyDeviceToHost));
                    for (int j = 0; j < s.n; j++) got[j] = dev_from_bf16(got16[j]);
                }
                for (int j = 0; j < s.n; j++) {
                    double ref = 0;
                    for (int k = 0; k < s.k; k++) ref += (double)x[row * ldx + k] * w[(size_t)j * s.k + k];
                    double g = got[j];
                    if (!(g == g)) g = 1e30;
                    num += (g - ref) * (g - ref);
                    den += ref * ref;
                }
            }
            double e = sqrt(num / den);
            double tol = f32 ? 2e-3 : ys == 2 ? 5e-3 : 1e-4;
            DEV_CHECK(e < tol, "%s M %d: rel err %.3e", s.name, M, e);
            double us = dev_time_us(20, [&](int) { bmc_gemm(lt, cache, ws, 32u << 20, &a, 0, &what); });
            printf("M %4d %-24s rel err %.2e  %8.1f us  %6.1f TFLOP/s\n", M, s.name, e, us,
                   2.0 * M * s.n * s.k / (us * 1e6));
            free(x); free(w); free(got); free(got16);
            cudaFree(dx); cudaFree(dw); cudaFree(dy);
        }
    }
    bmc_gemm_cache_free(cache);
    cudaFree(ws);
    cublasLtDestroy(lt);
    return dev_summary("dev_gemm");
}
