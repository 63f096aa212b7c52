/* Harness: the chunked prefill scan (cuda/scan_prefill.cu) against a plain
 * sequential scan in double, from a random (not zero) starting state: y, the
 * final ssm state and the new conv state, at the 2.8B model's width for a
 * short prompt, a prompt shorter than the conv window, and 2048 tokens;
 * then its time at 512 and 2048 tokens. */
#include "dev.cuh"

#define NS 16

static double softplus(double x) { return x > 20 ? x : log1p(exp(x)); }
static double silu(double x) { return x / (1 + exp(-x)); }

static void run_case(int T, int di, int R, int K, int timing) {
    const int xd = R + 2 * NS;
    const size_t n_td = (size_t)T * di;
    float *delta = (float *)malloc(n_td * 4), *u = (float *)malloc(n_td * 4), *xz = (float *)malloc(n_td * 2 * 4);
    float *xdbl = (float *)malloc((size_t)T * xd * 4), *A = (float *)malloc((size_t)di * NS * 4);
    float *D = (float *)malloc(di * 4), *bias = (float *)malloc(di * 4);
    float *conv = (float *)malloc((size_t)di * (K - 1) * 4 + 4), *ssm = (float *)malloc((size_t)di * NS * 4);
    dev_fill(delta, n_td, 2.0, -2.0);
    dev_fill(u, n_td, 1.0, 0.0);
    dev_fill(xz, n_td * 2, 1.0, 0.0);
    dev_fill(xdbl, (size_t)T * xd, 1.0, 0.0);
    for (int i = 0; i < di * NS; i++) A[i] = -(float)(1 + i % NS) * (float)(0.75 + 0.25 * dev_uniform());
    dev_fill(D, di, 0.5, 1.0);
    dev_fill(bias, di, 1.0, -3.0);
    dev_fill(conv, (size_t)di * (K - 1), 1.0, 0.0);
    dev_fill(ssm, (size_t)di * NS, 1.0, 0.0);
    /* reference */
    double *y_ref = (double *)malloc(n_td * 8), *s_ref = (double *)malloc((size_t)di * NS * 8);
    double *conv_ref = (double *)malloc((size_t)di * (K - 1) * 8 + 8);
    for (int c = 0; c < di; c++) {
        double s[NS];
        for (int n = 0; n < NS; n++) s[n] = ssm[(size_t)c * NS + n];
        for (int t = 0; t < T; t++) {
            double dl = softplus((double)delta[(size_t)t * di + c] + bias[c]), uu = u[(size_t)t * di + c], y = 0;
            for (int n = 0; n < NS; n++) {
                s[n] = exp(dl * A[(size_t)c * NS + n]) * s[n] + dl * uu * xdbl[(size_t)t * xd + R + n];
                y += s[n] * xdbl[(size_t)t * xd + R + NS + n];
            }
            y_ref[(size_t)t * di + c] = (y + D[c] * uu) * silu(xz[(size_t)t * 2 * di + di + c]);
        }
        for (int n = 0; n < NS; n++) s_ref[(size_t)c * NS + n] = s[n];
        for (int k = 0; k < K - 1; k++) {
            int t = T - (K - 1) + k;
            conv_ref[(size_t)c * (K - 1) + k] = t >= 0 ? xz[(size_t)t * 2 * di + c] : conv[(size_t)c * (K - 1) + T + k];
        }
    }
    float *d_delta = dev_upload(delta, n_td), *d_u = dev_upload(u, n_td), *d_xz = dev_upload(xz, n_td * 2);
    float *d_xdbl = dev_upload(xdbl, (size_t)T * xd), *d_A = dev_upload(A, (size_t)di * NS);
    float *d_D = dev_upload(D, di), *d_bias = dev_upload(bias, di);
    float *ssm_dev = (float *)malloc((size_t)di * NS * 4); /* the device's plane layout */
    bmc_ssm_layout(ssm_dev, ssm, di, 1);
    float *d_conv = dev_upload(conv, (size_t)di * (K - 1)), *d_ssm = dev_upload(ssm_dev, (size_t)di * NS);
    __nv_bfloat16 *d_y = dev_alloc_poisoned<__nv_bfloat16>(n_td);
    float *d_scratch = dev_alloc_poisoned<float>(bmc_scan_prefill_scratch_floats(T, di, NS));
    bmc_scan_args a;
    memset(&a, 0, sizeof a);
    a.T = T;
    a.di = di;
    a.R = R;
    a.N = NS;
    a.K = K;
    a.delta_raw = d_delta;
    a.dt_bias = d_bias;
    a.u = d_u;
    a.xdbl = d_xdbl;
    a.ldxdbl = xd;
    a.xz = d_xz;
    a.ldxz = 2 * di;
    a.A = d_A;
    a.D = d_D;
    a.conv_state = d_conv;
    a.ssm_state = d_ssm;
    a.y16 = d_y;
    a.act_type = BMC_BF16;
    a.chunk_scratch = d_scratch;
    DEV_CUDA(bmc_scan_prefill(&a, 0));
    DEV_CUDA(cudaDeviceSynchronize());
    uint16_t *yh = (uint16_t *)malloc(n_td * 2);
    float *yf = (float *)malloc(n_td * 4), *sf = (float *)malloc((size_t)di * NS * 4);
    float *cf = (float *)malloc((size_t)di * (K - 1) * 4 + 4);
    dev_download(yh, (const uint16_t *)d_y, n_td);
    for (size_t i = 0; i < n_td; i++) yf[i] = dev_from_bf16(yh[i]);
    dev_download(ssm_dev, d_ssm, (size_t)di * NS);
    bmc_ssm_layout(sf, ssm_dev, di, 0);
    dev_download(cf, d_conv, (size_t)di * (K - 1));
    double ey = dev_rel_error(yf, y_ref, n_td), es = dev_rel_error(sf, s_ref, (size_t)di * NS);
    double ec = dev_rel_error(cf, conv_ref, (size_t)di * (K - 1));
    printf("T %5d di %5d: y rel err %.2e (bf16 out), state %.2e, conv state %.2e\n", T, di, ey, es, ec);
    DEV_CHECK(ey < 1e-2, "T %d: y error %.3e", T, ey);
    DEV_CHECK(es < 1e-4, "T %d: state error %.3e", T, es);
    DEV_CHECK(ec == 0, "T %d: conv state error %.3e", T, ec);
    if (timing) {
        double us = dev_time_us(20, [&](int) { bmc_scan_prefill(&a, 0); });
        printf("  time %.1f us = %.1f Mtoken-channels/us... %.2f us per 1k tokens\n", us, (double)n_td / us / 1e6,
               us / T * 1000);
    }
    cudaFree(d_delta); cudaFree(d_u); cudaFree(d_xz); cudaFree(d_xdbl); cudaFree(d_A); cudaFree(d_D);
    cudaFree(d_bias); cudaFree(d_conv); cudaFree(d_ssm); cudaFree(d_y); cudaFree(d_scratch);
    free(delta); free(u); free(xz); free(xdbl); free(A); free(D); free(bias); free(conv); free(ssm); free(ssm_dev);
    free(y_ref); free(s_ref); free(conv_ref); free(yh); free(yf); free(sf); free(cf);
}

int main(void) {
    if (dev_no_gpu("dev_scan_prefill")) return 0;
    dev_seed();
    run_case(2, 2944, 92, 4, 0);  /* shorter than the conv window */
    run_case(37, 2944, 92, 4, 0);
    run_case(512, 2944, 92, 4, 1);
    run_case(2048, 2944, 92, 4, 1);
    return dev_summary("dev_scan_prefill");
}
