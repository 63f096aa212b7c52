/* Harness: the prefill causal conv + SiLU (cuda/conv_prefill.cu) against a
 * double CPU version, with history from a random conv state, for prompts
 * shorter and longer than the window; then its time at 2048 tokens. */
#include "dev.cuh"

int main(void) {
    if (dev_no_gpu("dev_conv_prefill")) return 0;
    dev_seed();
    const int di = 2944, K = 4;
    const int Ts[] = {1, 3, 37, 2048};
    for (int T : Ts) {
        float *xz = (float *)malloc((size_t)T * 2 * di * 4), *st = (float *)malloc((size_t)di * (K - 1) * 4);
        float *w = (float *)malloc((size_t)di * K * 4), *b = (float *)malloc(di * 4);
        dev_fill(xz, (size_t)T * 2 * di, 1.0, 0.0);
        dev_fill(st, (size_t)di * (K - 1), 1.0, 0.0);
        dev_fill(w, (size_t)di * K, 0.5, 0.0);
        dev_fill(b, di, 0.1, 0.0);
        double *ref = (double *)malloc((size_t)T * di * 8);
        for (int t = 0; t < T; t++)
            for (int c = 0; c < di; c++) {
                double acc = b[c];
                for (int k = 0; k < K; k++) {
                    int tt = t - K + 1 + k;
                    double x = tt >= 0 ? xz[(size_t)tt * 2 * di + c] : st[(size_t)c * (K - 1) + (K - 1) + tt];
                    acc += w[(size_t)c * K + k] * x;
                }
                ref[(size_t)t * di + c] = acc / (1 + exp(-acc));
            }
        float *d_xz = dev_upload(xz, (size_t)T * 2 * di), *d_st = dev_upload(st, (size_t)di * (K - 1));
        float *d_w = dev_upload(w, (size_t)di * K), *d_b = dev_upload(b, di);
        float *d_u = dev_alloc_poisoned<float>((size_t)T * di);
        __nv_bfloat16 *d_u16 = dev_alloc_poisoned<__nv_bfloat16>((size_t)T * di);
        DEV_CUDA(bmc_conv_prefill(d_xz, 2 * di, T, di, K, d_st, d_w, d_b, d_u, d_u16, BMC_BF16, 0));
        DEV_CUDA(cudaDeviceSynchronize());
        float *u = (float *)malloc((size_t)T * di * 4);
        dev_download(u, d_u, (size_t)T * di);
        double e = dev_rel_error(u, ref, (size_t)T * di);
        printf("T %4d: rel err %.2e\n", T, e);
        DEV_CHECK(e < 1e-5, "T %d: %.3e", T, e);
        if (T == 2048) {
            double us = dev_time_us(50, [&](int) { bmc_conv_prefill(d_xz, 2 * di, T, di, K, d_st, d_w, d_b, d_u, d_u16, BMC_BF16, 0); });
            printf("  %.1f us (%.0f GB/s moved)\n", us, (double)T * di * (4 + 4 + 2) / (us * 1e3));
        }
        cudaFree(d_xz); cudaFree(d_st); cudaFree(d_w); cudaFree(d_b); cudaFree(d_u); cudaFree(d_u16);
        free(xz); free(st); free(w); free(b); free(ref); free(u);
    }
    return dev_summary("dev_conv_prefill");
}
