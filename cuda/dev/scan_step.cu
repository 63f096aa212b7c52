/* Harness: the fused decode step of a Mamba layer (cuda/scan_step.cu)
 * against a double CPU version, for batch 1 and 5 streams whose states lie
 * in separate allocations; then its time at batch 1 (2.8B width), with the
 * bytes it must move (state read + written, dt_proj read). */
#include "dev.cuh"

#define NS 16

static double softplus(double x) { return x > 20 ? x : log1p(exp(x)); }
static double silu(double x) { return x / (1 + exp(-x)); }

int main(void) {
    if (dev_no_gpu("dev_scan_step")) return 0;
    dev_seed();
    const int di = 2944, R = 92, xd = R + 2 * NS;
    const long long ssm_off = 1000; /* the layer's ssm state inside a larger state */
    for (int nb = 1; nb <= 5; nb += 4) {
        float *xz = (float *)malloc((size_t)nb * 2 * di * 4), *xdbl = (float *)malloc((size_t)nb * xd * 4);
        float *A = (float *)malloc((size_t)di * NS * 4), *D = (float *)malloc(di * 4), *bias = (float *)malloc(di * 4);
        float *wf = (float *)malloc((size_t)di * R * 4);
        uint16_t *wh = (uint16_t *)malloc((size_t)di * R * 2);
        dev_fill(xz, (size_t)nb * 2 * di, 1.0, 0.0);
        dev_fill(xdbl, (size_t)nb * xd, 1.0, 0.0);
        for (int i = 0; i < di * NS; i++) A[i] = -(float)(1 + i % NS);
        dev_fill(D, di, 0.5, 1.0);
        dev_fill(bias, di, 1.0, -3.0);
        dev_fill(wf, (size_t)di * R, 0.2, 0.0);
        for (int i = 0; i < di * R; i++) wh[i] = dev_bf16(wf[i]);
        const size_t state_floats = ssm_off + (size_t)di * NS;
        float **states_h = (float **)malloc(nb * sizeof(float *));
        float *st = (float *)malloc(state_floats * 4 * nb);
        dev_fill(st, state_floats * nb, 1.0, 0.0);
        for (int b = 0; b < nb; b++) states_h[b] = dev_upload(st + state_floats * b, state_floats);
        float **d_states = dev_upload(states_h, nb);
        double *y_ref = (double *)malloc((size_t)nb * di * 8), *s_ref = (double *)malloc((size_t)nb * di * NS * 8);
        for (int b = 0; b < nb; b++)
            for (int c = 0; c < di; c++) {
                double dt = 0;
                for (int r = 0; r < R; r++) dt += (double)dev_from_bf16(wh[(size_t)c * R + r]) * xdbl[(size_t)b * xd + r];
                double dl = softplus(dt + bias[c]), u = xz[(size_t)b * 2 * di + c], y = 0;
                for (int n = 0; n < NS; n++) {
                    double s = st[state_floats * b + ssm_off + (size_t)c * NS + n];
                    s = exp(dl * A[(size_t)c * NS + n]) * s + dl * u * xdbl[(size_t)b * xd + R + n];
                    s_ref[((size_t)b * di + c) * NS + n] = s;
                    y += s * xdbl[(size_t)b * xd + R + NS + n];
                }
                y_ref[(size_t)b * di + c] = (y + D[c] * u) * silu(xz[(size_t)b * 2 * di + di + c]);
            }
        float *d_xz = dev_upload(xz, (size_t)nb * 2 * di), *d_xdbl = dev_upload(xdbl, (size_t)nb * xd);
        float *d_A = dev_upload(A, (size_t)di * NS), *d_D = dev_upload(D, di), *d_bias = dev_upload(bias, di);
        uint16_t *d_w = dev_upload(wh, (size_t)di * R);
        float *d_y = dev_alloc_poisoned<float>((size_t)nb * di);
        bmc_step_scan_args a;
        memset(&a, 0, sizeof a);
        a.nb = nb;
        a.di = di;
        a.R = R;
        a.N = NS;
        a.xz = d_xz;
        a.xdbl = d_xdbl;
        a.ldxdbl = xd;
        a.dt_proj = d_w;
        a.dt_bias = d_bias;
        a.A = d_A;
        a.D = d_D;
        a.state_ptrs = d_states;
        a.ssm_offset = ssm_off;
        a.y = d_y;
        DEV_CUDA(bmc_scan_step(&a, BMC_BF16, 0, 0));
        DEV_CUDA(cudaDeviceSynchronize());
        float *y = (float *)malloc((size_t)nb * di * 4), *s = (float *)malloc((size_t)nb * di * NS * 4);
        dev_download(y, d_y, (size_t)nb * di);
        for (int b = 0; b < nb; b++) dev_download(s + (size_t)b * di * NS, states_h[b] + ssm_off, (size_t)di * NS);
        double ey = dev_rel_error(y, y_ref, (size_t)nb * di), es = dev_rel_error(s, s_ref, (size_t)nb * di * NS);
        printf("batch %d: y rel err %.2e, state rel err %.2e\n", nb, ey, es);
        DEV_CHECK(ey < 1e-5 && es < 1e-5, "batch %d: y %.3e state %.3e", nb, ey, es);
        if (nb == 1) {
            double us = dev_time_us(100, [&](int) { bmc_scan_step(&a, BMC_BF16, 0, 0); });
            double bytes = (double)di * NS * 8 + (double)di * R * 2;
            printf("  time %.2f us at batch 1 (%.0f GB/s of state + dt_proj)\n", us, bytes / (us * 1e3));
        }
        for (int b = 0; b < nb; b++) cudaFree(states_h[b]);
        cudaFree(d_states); cudaFree(d_xz); cudaFree(d_xdbl); cudaFree(d_A); cudaFree(d_D); cudaFree(d_bias);
        cudaFree(d_w); cudaFree(d_y);
        free(xz); free(xdbl); free(A); free(D); free(bias); free(wf); free(wh); free(states_h); free(st);
        free(y_ref); free(s_ref); free(y); free(s);
    }
    return dev_summary("dev_scan_step");
}
