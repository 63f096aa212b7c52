/* Harness: the decode step of a Mamba layer (cuda/scan_step.cu,
 * bmc_scan_step) on both of its paths against one double CPU version: dt
 * from xdbl's first R columns and the 16-bit dt_proj, softplus, the state
 * update, y = C . s + D u gated by SiLU(z). Each stream's state is its own
 * allocation, the layer's ssm state inside it (a conv part before it, 64
 * floats after it), as the backend places them.
 * GEMV path (f32 y): batch 1 and 5 at the 2.8B width (di 2944, R 92).
 * Row path (y16: y as 16-bit hi and lo halves): 1, 3, 17, 64, 256 and 1000
 * streams at the 2.8B and 1.5B (2304, 72) widths, every fifth stream
 * (b % 5 == 1) a NULL pointer (padding); odd sizes (di not a multiple of 32,
 * R not a multiple of 4, R 256 with its opt-in shared memory) and f16.
 * Checked on both paths: y and the states, and the floats around each
 * layer's ssm state untouched. On the row path also: y as hi + lo, lo a
 * remainder of hi (|lo| within half an ulp of hi), the padding rows' y
 * exactly zero in both halves, and the rows past the last stream unwritten.
 * The bound, 1e-5 norm-wise on both paths, is f32 arithmetic with
 * expf/log1pf, plus, for the halves, their own limit (|y - hi - lo| <=
 * 2^-18 |y| in bf16).
 * Timed: the GEMV path at batch 1, with the bytes it must move (state read
 * + written, dt_proj read); the row path at 64, 256 and 1024 streams (2.8B
 * width, each launch on another layer's state so that the states come from
 * DRAM as in a step), with the bytes it must move and the rate against a
 * device-to-device copy measured in the same run. */
#include "dev.cuh"

#define NS 16

static const double scan_tol = 1e-5;

static double softplus(double x) { return x > 20 ? x : log1p(exp(x)); }
static double silu(double x) { return x / (1 + exp(-x)); }

/* One layer's inputs for nb streams, on the host; w is dt_proj in the
 * 16-bit type act. */
struct scan_inputs {
    int nb, di, R, xd, act;
    float *xz, *xdbl, *A, *D, *bias;
    uint16_t *w;
};

static void make_inputs(scan_inputs *in, int nb, int di, int R, int act) {
    in->nb = nb;
    in->di = di;
    in->R = R;
    in->xd = R + 2 * NS;
    in->act = act;
    in->xz = (float *)malloc((size_t)nb * 2 * di * 4);
    in->xdbl = (float *)malloc((size_t)nb * in->xd * 4);
    in->A = (float *)malloc((size_t)di * NS * 4);
    in->D = (float *)malloc(di * 4);
    in->bias = (float *)malloc(di * 4);
    in->w = (uint16_t *)malloc((size_t)di * R * 2);
    float *wf = (float *)malloc((size_t)di * R * 4);
    dev_fill(in->xz, (size_t)nb * 2 * di, 1.0, 0.0);
    dev_fill(in->xdbl, (size_t)nb * in->xd, 1.0, 0.0);
    /* each channel's A its own, so that reading another channel's row shows */
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

/* The streams' states, each its own allocation as the backend's sessions'
 * are: ptrs holds the device addresses on the host (to read the states back),
 * d_ptrs the same array on the device (the kernel's state_ptrs). */
struct scan_states {
    int nb;
    float **ptrs, **d_ptrs;
};

/* Stream b's state from host + b * host_stride (stride 0: every stream the
 * same data). With `padding`, every fifth stream (b % 5 == 1) gets a NULL
 * pointer, as the row path's padding rows do. */
static void upload_states(scan_states *s, const float *host, size_t host_stride, size_t floats, int nb, int padding) {
    s->nb = nb;
    s->ptrs = (float **)malloc(nb * sizeof(float *));
    for (int b = 0; b < nb; b++)
        s->ptrs[b] = padding && b % 5 == 1 ? NULL : dev_upload(host + host_stride * b, floats);
    s->d_ptrs = dev_upload(s->ptrs, nb);
}

static void free_states(scan_states *s) {
    for (int b = 0; b < s->nb; b++) cudaFree(s->ptrs[b]);
    cudaFree(s->d_ptrs);
    free(s->ptrs);
}

/* The step in double from the host copy `st` of the states (state_floats
 * each, the layer's ssm state ssm_off floats in). A padding stream's y and
 * state are zero here, as the harness's read-back leaves them, so that
 * they add nothing to the error norms. */
static void cpu_scan(const scan_inputs &in, const float *st, size_t state_floats, long long ssm_off,
                     const scan_states &states, double *y_ref, double *s_ref) {
    const int di = in.di, R = in.R;
    for (int b = 0; b < in.nb; b++) {
        if (!states.ptrs[b]) {
            memset(y_ref + (size_t)b * di, 0, (size_t)di * 8);
            memset(s_ref + (size_t)b * di * NS, 0, (size_t)di * NS * 8);
            continue;
        }
        const float *xr = in.xdbl + (size_t)b * in.xd, *xz = in.xz + (size_t)b * 2 * di;
        for (int ch = 0; ch < di; ch++) {
            double dt = 0;
            for (int r = 0; r < R; r++) dt += (double)dev_from16(in.w[(size_t)ch * R + r], in.act) * xr[r];
            const double dl = softplus(dt + in.bias[ch]), u = xz[ch];
            double y = 0;
            for (int n = 0; n < NS; n++) {
                double s = st[state_floats * b + ssm_off + (size_t)ch * NS + n];
                s = exp(dl * in.A[(size_t)ch * NS + n]) * s + dl * u * xr[R + n];
                s_ref[((size_t)b * di + ch) * NS + n] = s;
                y += s * xr[R + NS + n];
            }
            y_ref[(size_t)b * di + ch] = (y + in.D[ch] * u) * silu(xz[di + ch]);
        }
    }
}

struct scan_device {
    float *xz, *xdbl, *A, *D, *bias;
    uint16_t *w;
};

/* Uploads the inputs and returns the scan's arguments over them and the
 * states, with no output set: the caller picks the path by setting y (GEMV)
 * or y16 (rows). act_type is the weights' type, which the row path requires
 * and the GEMV path ignores. */
static bmc_step_scan_args upload_args(const scan_inputs &in, scan_device *dv, const scan_states &states,
                                      long long ssm_off) {
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
    a.state_ptrs = states.d_ptrs;
    a.ssm_offset = ssm_off;
    a.act_type = in.act;
    return a;
}

static void free_device(scan_device *dv) {
    cudaFree(dv->xz); cudaFree(dv->xdbl); cudaFree(dv->A); cudaFree(dv->D); cudaFree(dv->bias); cudaFree(dv->w);
}

/* One checked launch's setup, shared by both paths: inputs, states with a
 * conv part (3 di floats) before the layer's ssm state and 64 floats after
 * it (both must come back untouched), the reference, the arguments. */
struct scan_check {
    scan_inputs in;
    float *st; /* the states, canonical layout (the reference's input) */
    size_t state_floats;
    long long ssm_off;
    scan_states states;
    double *y_ref, *s_ref;
    scan_device dv;
    bmc_step_scan_args a;
};

static void setup_check(scan_check *c, int nb, int di, int R, int act, int padding) {
    make_inputs(&c->in, nb, di, R, act);
    c->ssm_off = (long long)di * 3;
    c->state_floats = (size_t)c->ssm_off + (size_t)di * NS + 64;
    c->st = (float *)malloc(c->state_floats * 4 * nb);
    dev_fill(c->st, c->state_floats * nb, 1.0, 0.0);
    float *as_device = (float *)malloc(c->state_floats * 4 * nb); /* the ssm parts in the device's plane layout */
    memcpy(as_device, c->st, c->state_floats * 4 * nb);
    for (int b = 0; b < nb; b++)
        bmc_ssm_layout(as_device + c->state_floats * b + c->ssm_off, c->st + c->state_floats * b + c->ssm_off, di, 1);
    upload_states(&c->states, as_device, c->state_floats, c->state_floats, nb, padding);
    free(as_device);
    c->y_ref = (double *)malloc((size_t)nb * di * 8);
    c->s_ref = (double *)malloc((size_t)nb * di * NS * 8);
    cpu_scan(c->in, c->st, c->state_floats, c->ssm_off, c->states, c->y_ref, c->s_ref);
    c->a = upload_args(c->in, &c->dv, c->states, c->ssm_off);
}

/* Reads the ssm states back into s [nb, di, NS] (zero for padding streams,
 * as in the reference); returns how many floats around them changed. */
static int download_states(const scan_check *c, float *s) {
    const size_t ssm_floats = (size_t)c->in.di * NS;
    float *whole = (float *)malloc(c->state_floats * 4);
    int around = 0;
    for (int b = 0; b < c->in.nb; b++) {
        float *sb = s + (size_t)b * ssm_floats;
        if (!c->states.ptrs[b]) {
            memset(sb, 0, ssm_floats * 4);
            continue;
        }
        dev_download(whole, c->states.ptrs[b], c->state_floats);
        for (size_t i = 0; i < c->state_floats; i++) {
            if (i >= (size_t)c->ssm_off && i < (size_t)c->ssm_off + ssm_floats) continue;
            around += whole[i] != c->st[c->state_floats * b + i];
        }
        bmc_ssm_layout(sb, whole + c->ssm_off, c->in.di, 0);
    }
    free(whole);
    return around;
}

static void free_check(scan_check *c) {
    free_device(&c->dv);
    free_states(&c->states);
    free_inputs(&c->in);
    free(c->st); free(c->y_ref); free(c->s_ref);
}

static void check_gemv_path(int nb) {
    const int di = 2944, R = 92;
    scan_check c;
    setup_check(&c, nb, di, R, BMC_BF16, 0);
    float *d_y = dev_alloc_poisoned<float>((size_t)nb * di);
    c.a.y = d_y;
    DEV_CUDA(bmc_scan_step(&c.a, BMC_BF16, 0, 0));
    DEV_CUDA(cudaDeviceSynchronize());
    float *y = (float *)malloc((size_t)nb * di * 4), *s = (float *)malloc((size_t)nb * di * NS * 4);
    dev_download(y, d_y, (size_t)nb * di);
    const int around = download_states(&c, s);
    const double ey = dev_rel_error(y, c.y_ref, (size_t)nb * di), es = dev_rel_error(s, c.s_ref, (size_t)nb * di * NS);
    printf("batch %d: y rel err %.2e, state rel err %.2e\n", nb, ey, es);
    DEV_CHECK(ey < scan_tol && es < scan_tol, "batch %d: y %.3e state %.3e", nb, ey, es);
    DEV_CHECK(around == 0, "batch %d: %d floats around the ssm states changed", nb, around);
    /* timed on the launch just checked: batch 1 is the decode step this path is for */
    if (nb == 1) {
        const double us = dev_time_us(100, [&](int) { bmc_scan_step(&c.a, BMC_BF16, 0, 0); });
        const double bytes = (double)di * NS * 8 + (double)di * R * 2;
        printf("  time %.2f us at batch 1 (%.0f GB/s of state + dt_proj)\n", us, bytes / (us * 1e3));
    }
    cudaFree(d_y);
    free_check(&c);
    free(y); free(s);
}

struct row_case {
    int nb, di, R, act;
};

static void check_row_path(const row_case &k) {
    const int nb = k.nb, di = k.di, act = k.act;
    char what[96];
    snprintf(what, sizeof what, "streams %d di %d R %d %s", nb, di, k.R, act == BMC_F16 ? "f16" : "bf16");
    scan_check c;
    setup_check(&c, nb, di, k.R, act, 1);
    /* y16: hi rows [0, nb), lo rows [nb + 1, 2 nb + 1); row nb and the last
     * stay poisoned, to catch writes past the streams on either half */
    const int lo_rows = nb + 1, y_rows = 2 * nb + 2;
    uint16_t *d_y16 = dev_alloc_poisoned<uint16_t>((size_t)y_rows * di);
    c.a.y16 = d_y16;
    c.a.y_lo_rows = lo_rows;
    DEV_CUDA(bmc_scan_step(&c.a, act, 0, 0));
    DEV_CUDA(cudaDeviceSynchronize());

    uint16_t *y16 = (uint16_t *)malloc((size_t)y_rows * di * 2);
    dev_download(y16, d_y16, (size_t)y_rows * di);
    float *s = (float *)malloc((size_t)nb * di * NS * 4), *y = (float *)malloc((size_t)nb * di * 4);
    const int around = download_states(&c, s);
    size_t n_live = 0;
    int not_zero = 0, bad_split = 0, unwritten_ok = 1;
    /* below f16's normal range hi's ulp stops shrinking (2^-24), so there lo
     * may reach half of it whatever hi is */
    const double half_ulp = act == BMC_F16 ? 0x1p-11 : 0x1p-8, tiny = act == BMC_F16 ? 0x1p-25 : 0.0;
    for (int b = 0; b < nb; b++) {
        const uint16_t *hi = y16 + (size_t)b * di, *lo = y16 + (size_t)(b + lo_rows) * di;
        const int padding = !c.states.ptrs[b];
        n_live += !padding;
        for (int ch = 0; ch < di; ch++) {
            const double h = dev_from16(hi[ch], act), l = dev_from16(lo[ch], act);
            y[(size_t)b * di + ch] = (float)(h + l);
            if (padding)
                not_zero += hi[ch] != 0 || lo[ch] != 0;
            else
                bad_split += !(fabs(l) <= fmax(fabs(h) * half_ulp, tiny));
        }
    }
    for (int ch = 0; ch < di; ch++) {
        unwritten_ok &= y16[(size_t)nb * di + ch] == 0xffff;
        unwritten_ok &= y16[(size_t)(y_rows - 1) * di + ch] == 0xffff;
    }
    const double ey = dev_rel_error(y, c.y_ref, (size_t)nb * di), es = dev_rel_error(s, c.s_ref, (size_t)nb * di * NS);
    printf("%s: y (hi + lo) rel err %.2e, state rel err %.2e, %zu live streams\n", what, ey, es, n_live);
    DEV_CHECK(ey < scan_tol && es < scan_tol, "%s: y %.3e state %.3e", what, ey, es);
    DEV_CHECK(bad_split == 0, "%s: %d lo halves larger than half an ulp of hi", what, bad_split);
    DEV_CHECK(not_zero == 0, "%s: %d y halves of padding rows not zero", what, not_zero);
    DEV_CHECK(around == 0, "%s: %d floats around the ssm states changed", what, around);
    DEV_CHECK(unwritten_ok, "%s: rows past the streams written", what);

    cudaFree(d_y16);
    free_check(&c);
    free(y16); free(s); free(y);
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

static void time_row_path(int nb, double copy) {
    const int di = 2944, R = 92;
    scan_inputs in;
    make_inputs(&in, nb, di, R, BMC_BF16);
    const int xd = in.xd;
    /* several layers of state per stream, each launch on the next layer, so
     * that what one launch leaves in L2 (50 MB) is not what the next reads */
    const size_t layer_floats = (size_t)di * NS, layer_bytes = layer_floats * 4 * nb;
    int layers = (int)((size_t)(200u << 20) / layer_bytes) + 1;
    if (layers < 2) layers = 2;
    float *st = (float *)malloc(layer_floats * layers * 4);
    dev_fill(st, layer_floats * layers, 1.0, 0.0);
    scan_states states;
    upload_states(&states, st, 0, layer_floats * layers, nb, 0);
    scan_device dv;
    bmc_step_scan_args a = upload_args(in, &dv, states, 0);
    uint16_t *d_y16 = dev_alloc_poisoned<uint16_t>((size_t)2 * nb * di);
    a.y16 = d_y16;
    a.y_lo_rows = nb;
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
    cudaFree(d_y16);
    free_device(&dv);
    free_states(&states);
    free_inputs(&in);
    free(st);
}

int main(void) {
    if (dev_no_gpu("dev_scan_step")) return 0;
    dev_seed();
    if (dev_profiling()) { /* the row path's timed launches */
        const double copy = copy_rate();
        for (int nb : {64, 256, 1024}) time_row_path(nb, copy);
        return 0;
    }
    check_gemv_path(1);
    check_gemv_path(5);

    const int widths[2][2] = {{2944, 92}, {2304, 72}};
    const int streams[] = {1, 3, 17, 64, 256, 1000};
    for (int w = 0; w < 2; w++)
        for (int nb : streams) check_row_path({nb, widths[w][0], widths[w][1], nb == 17 ? BMC_F16 : BMC_BF16});
    const row_case odd[] = {{21, 200, 5, BMC_BF16}, {40, 136, 256, BMC_BF16}, {9, 64, 1, BMC_F16}};
    for (const row_case &k : odd) check_row_path(k);

    const double copy = copy_rate();
    printf("device-to-device copy: %.0f GB/s (read + write)\n", copy / 1e9);
    time_row_path(64, copy);
    time_row_path(256, copy);
    time_row_path(1024, copy);
    return dev_summary("dev_scan_step");
}
