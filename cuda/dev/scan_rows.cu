/* Harness: the decode row path's scan step (cuda/scan_step.cu's row kernel,
 * bmc_scan_step with y16) against a double CPU version: dt from xdbl's first
 * R columns and the 16-bit dt_proj, softplus, the state update, y = C . s
 * + D u gated by SiLU(z), written as 16-bit hi and lo halves. 1, 3, 17, 64,
 * 256 and 1000 streams at the 2.8B (di 2944, R 92) and 1.5B (2304, 72)
 * widths, each state its own allocation, every fifth stream (b % 5 == 1) a
 * NULL pointer (padding); odd sizes (di not a multiple of 32, R not a
 * multiple of 4, R 256 with its opt-in shared memory) and f16. Checked: the
 * states (and the floats around each layer's ssm state untouched), y as
 * hi + lo, lo a remainder of hi (|lo| within half an ulp of hi), the
 * padding rows' y exactly zero in both halves, and the rows past the last
 * stream unwritten. The bound is that of dev/scan_step (1e-5, norm-wise):
 * f32 arithmetic with expf/log1pf, plus, for y, the halves' own limit
 * (|y - hi - lo| <= 2^-18 |y| in bf16).
 * Then its time at 64, 256 and 1024 streams (2.8B width, each launch on
 * another layer's state so that the states come from DRAM as in a step),
 * with the bytes it must move and the rate against a device-to-device copy
 * measured in the same run. */
#include "dev.cuh"

#define NS 16

static double softplus(double x) { return x > 20 ? x : log1p(exp(x)); }
static double silu(double x) { return x / (1 + exp(-x)); }

struct scan_case {
    int nb, di, R, act;
};

/* The inputs of one layer for nb streams. */
struct scan_inputs {
    int nb, di, R, xd;
    float *xz, *xdbl, *A, *D, *bias;
    uint16_t *w;
};

static void make_inputs(scan_inputs *in, int nb, int di, int R, int act) {
    in->nb = nb;
    in->di = di;
    in->R = R;
    in->xd = R + 2 * NS;
    in->xz = (float *)malloc((size_t)nb * 2 * di * 4);
    in->xdbl = (float *)malloc((size_t)nb * in->xd * 4);
    in->A = (float *)malloc((size_t)di * NS * 4);
    in->D = (float *)malloc(di * 4);
    in->bias = (float *)malloc(di * 4);
    in->w = (uint16_t *)malloc((size_t)di * R * 2);
    float *wf = (float *)malloc((size_t)di * R * 4);
    dev_fill(in->xz, (size_t)nb * 2 * di, 1.0, 0.0);
    dev_fill(in->xdbl, (size_t)nb * in->xd, 1.0, 0.0);
    for (int i = 0; i < di * NS; i++) in->A[i] = -(float)(1 + i % NS) * (float)(1.0 + 0.2 * dev_uniform());
    dev_fill(in->D, di, 0.5, 1.0);
    dev_fill(in->bias, di, 1.0, -3.0);
    dev_fill(wf, (size_t)di * R, 0.2, 0.0);
    for (size_t i = 0; i < (size_t)di * R; i++) in->w[i] = dev_to16(wf[i], act);
    free(wf);
}

static void free_inputs(scan_inputs *in) {
    free(in->xz); free(in->xdbl); free(in->A); free(in->D); free(in->bias); free(in->w);
}

/* The inputs on the device, and the scan's arguments over them for the
 * streams' states (ssm_offset 0: the caller places the layer). */
struct scan_device {
    float *xz, *xdbl, *A, *D, *bias;
    uint16_t *w;
};

static bmc_step_scan_args upload_inputs(const scan_inputs &in, scan_device *dv, float **d_states, void *y16,
                                        int y_lo_rows, int act) {
    dv->xz = dev_upload(in.xz, (size_t)in.nb * 2 * in.di);
    dv->xdbl = dev_upload(in.xdbl, (size_t)in.nb * in.xd);
    dv->A = dev_upload(in.A, (size_t)in.di * NS);
    dv->D = dev_upload(in.D, in.di);
    dv->bias = dev_upload(in.bias, in.di);
    dv->w = dev_upload(in.w, (size_t)in.di * in.R);
    bmc_step_scan_args a;
    memset(&a, 0, sizeof a);
    a.nb = in.nb;
    a.di = in.di;
    a.R = in.R;
    a.N = NS;
    a.xz = dv->xz;
    a.xdbl = dv->xdbl;
    a.ldxdbl = in.xd;
    a.dt_proj = dv->w;
    a.dt_bias = dv->bias;
    a.A = dv->A;
    a.D = dv->D;
    a.state_ptrs = d_states;
    a.y16 = y16;
    a.act_type = act;
    a.y_lo_rows = y_lo_rows;
    return a;
}

static void free_device(scan_device *dv) {
    cudaFree(dv->xz); cudaFree(dv->xdbl); cudaFree(dv->A); cudaFree(dv->D); cudaFree(dv->bias); cudaFree(dv->w);
}

static void run_case(const scan_case &c) {
    const int nb = c.nb, di = c.di, R = c.R, act = c.act;
    char what[96];
    snprintf(what, sizeof what, "streams %d di %d R %d %s", nb, di, R, act == BMC_F16 ? "f16" : "bf16");
    scan_inputs in;
    make_inputs(&in, nb, di, R, act);
    const int xd = in.xd;
    /* each state: a conv part before the layer's ssm state and 64 floats after it */
    const long long ssm_off = (long long)di * 3;
    const size_t state_floats = (size_t)ssm_off + (size_t)di * NS + 64;
    float *st = (float *)malloc(state_floats * 4 * nb);
    dev_fill(st, state_floats * nb, 1.0, 0.0);
    float **states_h = (float **)malloc(nb * sizeof(float *));
    for (int b = 0; b < nb; b++) states_h[b] = b % 5 == 1 ? NULL : dev_upload(st + state_floats * b, state_floats);
    float **d_states = dev_upload(states_h, nb);

    double *y_ref = (double *)malloc((size_t)nb * di * 8), *s_ref = (double *)malloc((size_t)nb * di * NS * 8);
    for (int b = 0; b < nb; b++)
        for (int c2 = 0; c2 < di; c2++) {
            const float *xr = in.xdbl + (size_t)b * xd;
            double dt = 0;
            for (int r = 0; r < R; r++) dt += (double)dev_from16(in.w[(size_t)c2 * R + r], act) * xr[r];
            const double dl = softplus(dt + in.bias[c2]), u = in.xz[(size_t)b * 2 * di + c2];
            double y = 0;
            for (int n = 0; n < NS; n++) {
                double s = st[state_floats * b + ssm_off + (size_t)c2 * NS + n];
                s = exp(dl * in.A[(size_t)c2 * NS + n]) * s + dl * u * xr[R + n];
                s_ref[((size_t)b * di + c2) * NS + n] = s;
                y += s * xr[R + NS + n];
            }
            y_ref[(size_t)b * di + c2] = (y + in.D[c2] * u) * silu(in.xz[(size_t)b * 2 * di + di + c2]);
        }

    /* y16: hi rows [0, nb), lo rows [nb + 1, 2 nb + 1); row nb and the last stay poisoned */
    const int lo_rows = nb + 1, y_rows = 2 * nb + 2;
    uint16_t *d_y16 = dev_alloc_poisoned<uint16_t>((size_t)y_rows * di);
    scan_device dv;
    bmc_step_scan_args a = upload_inputs(in, &dv, d_states, d_y16, lo_rows, act);
    a.ssm_offset = ssm_off;
    DEV_CUDA(bmc_scan_step(&a, act, 0, 0));
    DEV_CUDA(cudaDeviceSynchronize());

    uint16_t *y16 = (uint16_t *)malloc((size_t)y_rows * di * 2);
    dev_download(y16, d_y16, (size_t)y_rows * di);
    float *s = (float *)malloc((size_t)nb * di * NS * 4), *y = (float *)malloc((size_t)nb * di * 4);
    float *whole = (float *)malloc(state_floats * 4);
    double *sref_live = (double *)malloc((size_t)nb * di * NS * 8), *yref_live = (double *)malloc((size_t)nb * di * 8);
    size_t n_live = 0;
    int around = 0, not_zero = 0, bad_split = 0, unwritten_ok = 1;
    const double half_ulp = act == BMC_F16 ? 0x1p-11 : 0x1p-8, tiny = act == BMC_F16 ? 0x1p-25 : 0.0;
    for (int b = 0; b < nb; b++) {
        const uint16_t *hi = y16 + (size_t)b * di, *lo = y16 + (size_t)(b + lo_rows) * di;
        if (!states_h[b]) {
            for (int c2 = 0; c2 < di; c2++) not_zero += hi[c2] != 0 || lo[c2] != 0;
            continue;
        }
        dev_download(whole, states_h[b], state_floats);
        for (size_t i = 0; i < state_floats; i++) {
            if (i >= (size_t)ssm_off && i < (size_t)ssm_off + (size_t)di * NS) continue;
            around += whole[i] != st[state_floats * b + i];
        }
        memcpy(s + n_live * di * NS, whole + ssm_off, (size_t)di * NS * 4);
        memcpy(sref_live + n_live * di * NS, s_ref + (size_t)b * di * NS, (size_t)di * NS * 8);
        memcpy(yref_live + n_live * di, y_ref + (size_t)b * di, (size_t)di * 8);
        for (int c2 = 0; c2 < di; c2++) {
            const double h = dev_from16(hi[c2], act), l = dev_from16(lo[c2], act);
            y[n_live * di + c2] = (float)(h + l);
            bad_split += !(fabs(l) <= fmax(fabs(h) * half_ulp, tiny));
        }
        n_live++;
    }
    for (int c2 = 0; c2 < di; c2++) {
        unwritten_ok &= y16[(size_t)nb * di + c2] == 0xffff;
        unwritten_ok &= y16[(size_t)(y_rows - 1) * di + c2] == 0xffff;
    }
    const double ey = dev_rel_error(y, yref_live, n_live * di), es = dev_rel_error(s, sref_live, n_live * di * NS);
    printf("%s: y (hi + lo) rel err %.2e, state rel err %.2e, %zu live streams\n", what, ey, es, n_live);
    DEV_CHECK(ey < 1e-5 && es < 1e-5, "%s: y %.3e state %.3e", what, ey, es);
    DEV_CHECK(bad_split == 0, "%s: %d lo halves larger than half an ulp of hi", what, bad_split);
    DEV_CHECK(not_zero == 0, "%s: %d y halves of padding rows not zero", what, not_zero);
    DEV_CHECK(around == 0, "%s: %d floats around the ssm states changed", what, around);
    DEV_CHECK(unwritten_ok, "%s: rows past the streams written", what);

    for (int b = 0; b < nb; b++) cudaFree(states_h[b]);
    cudaFree(d_states); cudaFree(d_y16);
    free_device(&dv);
    free_inputs(&in);
    free(st); free(states_h); free(y_ref); free(s_ref); free(y16); free(s); free(y); free(whole);
    free(sref_live); free(yref_live);
}

/* Device-to-device copy rate (bytes read + written per second) of 256 MB. */
static double copy_rate(void) {
    const size_t bytes = (size_t)256 << 20;
    void *a = NULL, *b = NULL;
    DEV_CUDA(cudaMalloc(&a, bytes));
    DEV_CUDA(cudaMalloc(&b, bytes));
    DEV_CUDA(cudaMemset(a, 1, bytes));
    const double us = dev_time_us(20, [&](int) { cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice, 0); });
    cudaFree(a);
    cudaFree(b);
    return 2.0 * bytes / (us * 1e-6);
}

static void time_streams(int nb, double copy) {
    const int di = 2944, R = 92, xd = R + 2 * NS;
    scan_inputs in;
    make_inputs(&in, nb, di, R, BMC_BF16);
    /* several layers of state per stream, each launch on the next layer, so
     * that what one launch leaves in L2 (50 MB) is not what the next reads */
    const size_t layer_floats = (size_t)di * NS, layer_bytes = layer_floats * 4 * nb;
    int layers = (int)((size_t)(200u << 20) / layer_bytes) + 1;
    if (layers < 2) layers = 2;
    float *st = (float *)malloc(layer_floats * layers * 4);
    dev_fill(st, layer_floats * layers, 1.0, 0.0);
    float **states_h = (float **)malloc(nb * sizeof(float *));
    for (int b = 0; b < nb; b++) states_h[b] = dev_upload(st, layer_floats * layers);
    float **d_states = dev_upload(states_h, nb);
    uint16_t *d_y16 = dev_alloc_poisoned<uint16_t>((size_t)2 * nb * di);
    scan_device dv;
    bmc_step_scan_args a = upload_inputs(in, &dv, d_states, d_y16, nb, BMC_BF16);
    const double us = dev_time_loop_us(30, 20, [&](int i) {
        a.ssm_offset = (long long)(i % layers) * (long long)layer_floats;
        bmc_scan_step(&a, BMC_BF16, 0, 0);
    });
    const double state = 2.0 * nb * di * NS * 4;
    const double other = (double)nb * (2 * di * 4 + xd * 4 + 2 * di * 2) + (double)di * (R * 2 + NS * 4 + 8);
    const double floor_us = (state + other) / copy * 1e6;
    printf("streams %4d: %7.2f us; state %.1f MB + %.1f MB other (xz, xdbl, y halves, weights): %.0f GB/s, %.0f%% "
           "of the copy rate (floor %.2f us)\n",
           nb, us, state / 1e6, other / 1e6, (state + other) / (us * 1e3), 100.0 * floor_us / us, floor_us);
    for (int b = 0; b < nb; b++) cudaFree(states_h[b]);
    cudaFree(d_states); cudaFree(d_y16);
    free_device(&dv);
    free_inputs(&in);
    free(st); free(states_h);
}

int main(void) {
    if (dev_no_gpu("dev_scan_rows")) return 0;
    dev_seed();
    const int widths[2][2] = {{2944, 92}, {2304, 72}};
    const int streams[] = {1, 3, 17, 64, 256, 1000};
    for (int w = 0; w < 2; w++)
        for (int nb : streams) run_case({nb, widths[w][0], widths[w][1], nb == 17 ? BMC_F16 : BMC_BF16});
    const scan_case odd[] = {{21, 200, 5, BMC_BF16}, {40, 136, 256, BMC_BF16}, {9, 64, 1, BMC_F16}};
    for (const scan_case &c : odd) run_case(c);

    const double copy = copy_rate();
    printf("device-to-device copy: %.0f GB/s (read + write)\n", copy / 1e9);
    time_streams(64, copy);
    time_streams(256, copy);
    time_streams(1024, copy);
    return dev_summary("dev_scan_rows");
}
