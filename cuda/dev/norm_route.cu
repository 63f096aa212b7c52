/* Harness: the decode row path's MoE norm with routing (cuda/add_rmsnorm.cu,
 * bmc_add_rmsnorm with route_w set) against a double CPU version: the
 * residual sum, the normalised rows (f32 and the 16-bit hi/lo halves, both
 * norms where a parallel layer has two), the expert of every live row (lowest
 * index on ties) and its gate, and the grouping (position by position against
 * a CPU stable counting sort of the kernel's own choices); padding rows
 * (rows >= *n_dev) neither routed nor moved; the blocks-done counter back at
 * zero after every launch (one counter for all cases, each case run twice).
 * Then the fused kernel timed against the pair it replaced (the norm, then
 * bmc_route_rows) at the 2.8B width for 64, 256 and 1024 rows. */
#include "dev.cuh"

static const int d = 1472;
static unsigned *d_counter;

struct route_case {
    int rows, n_live; /* n_live < 0: n_dev NULL, every row live */
    int E, act, with_a;
    int tied_favourite; /* experts 3 and 6 identical and far ahead: every row must take 3 */
};

/* The CPU version in double: y[t, k] for one norm weight. */
static void ref_norm(const float *x, int rows, const float *w, double *y) {
    for (int t = 0; t < rows; t++) {
        double ss = 0;
        for (int k = 0; k < d; k++) ss += (double)x[(size_t)t * d + k] * x[(size_t)t * d + k];
        const double scale = 1.0 / sqrt(ss / d + 1e-5);
        for (int k = 0; k < d; k++) y[(size_t)t * d + k] = x[(size_t)t * d + k] * scale * w[k];
    }
}

/* The 16-bit halves as the kernel must write them from its f32 output. */
static int halves_wrong(const uint16_t *h16, const float *y, int rows, int act) {
    int wrong = 0;
    for (size_t i = 0; i < (size_t)rows * d; i++) {
        const uint16_t hi = dev_to16(y[i], act), lo = dev_to16(y[i] - dev_from16(hi, act), act);
        wrong += h16[i] != hi || h16[i + (size_t)rows * d] != lo;
    }
    return wrong;
}

static void run_case(const route_case &c, int rep) {
    const int rows = c.rows, E = c.E, act = c.act;
    const int n = c.n_live < 0 ? rows : c.n_live;
    char what[96];
    snprintf(what, sizeof what, "rows %d live %d%s E %d %s%s%s run %d", rows, n, c.n_live < 0 ? " (n_dev NULL)" : "",
             E, act == BMC_F16 ? "f16" : "bf16", c.with_a ? " two norms" : "", c.tied_favourite ? " tied favourite" : "",
             rep);
    const size_t rd = (size_t)rows * d;
    float *res = (float *)malloc(rd * 4), *h = (float *)malloc(rd * 4), *wa = (float *)malloc(d * 4);
    float *wb = (float *)malloc(d * 4), *rw = (float *)malloc((size_t)E * d * 4), *rb = (float *)malloc(E * 4);
    dev_fill(res, rd, 1.0, 0.0);
    dev_fill(h, rd, 0.5, 0.0);
    dev_fill(wa, d, 0.5, 1.0);
    dev_fill(wb, d, 0.5, 1.0);
    dev_fill(rw, (size_t)E * d, 0.05, 0.0);
    dev_fill(rb, E, 0.1, 0.0);
    if (c.tied_favourite) {
        memcpy(rw + (size_t)6 * d, rw + (size_t)3 * d, d * 4);
        rb[3] = rb[6] = 20.0f;
    }
    float *d_res = dev_upload(res, rd), *d_h = dev_upload(h, rd), *d_wa = dev_upload(wa, d), *d_wb = dev_upload(wb, d);
    float *d_rw = dev_upload(rw, (size_t)E * d), *d_rb = dev_upload(rb, E);
    float *d_ya = dev_alloc_poisoned<float>(rd), *d_yb = dev_alloc_poisoned<float>(rd);
    uint16_t *d_a16 = dev_alloc_poisoned<uint16_t>(2 * rd), *d_b16 = dev_alloc_poisoned<uint16_t>(2 * rd);
    int *d_expert = dev_alloc_poisoned<int>(rows), *d_order = dev_alloc_poisoned<int>(rows);
    int *d_start = dev_alloc_poisoned<int>(E + 1);
    float *d_gate = dev_alloc_poisoned<float>(rows);
    int *d_n = dev_upload(&n, 1);

    bmc_norm_args na;
    memset(&na, 0, sizeof na);
    na.res = d_res;
    na.h = d_h;
    na.add = 1;
    na.rows = rows;
    na.d = d;
    na.eps = 1e-5f;
    na.act_type = act;
    na.lo_rows = rows;
    if (c.with_a) {
        na.w_a = d_wa;
        na.out_a_f32 = d_ya;
        na.out_a_16 = d_a16;
    }
    na.w_b = d_wb;
    na.out_b_f32 = d_yb;
    na.out_b_16 = d_b16;
    na.route_w = d_rw;
    na.route_b = d_rb;
    na.n_experts = E;
    na.n_dev = c.n_live < 0 ? NULL : d_n;
    na.expert_of = d_expert;
    na.gate = d_gate;
    na.order = d_order;
    na.expert_start = d_start;
    na.counter = d_counter;
    DEV_CUDA(bmc_add_rmsnorm(&na, 0));
    DEV_CUDA(cudaDeviceSynchronize());

    unsigned counter = 1;
    dev_download(&counter, d_counter, 1);
    DEV_CHECK(counter == 0, "%s: the counter is %u after the launch", what, counter);

    float *res_out = (float *)malloc(rd * 4), *ya = (float *)malloc(rd * 4), *yb = (float *)malloc(rd * 4);
    uint16_t *a16 = (uint16_t *)malloc(2 * rd * 2), *b16 = (uint16_t *)malloc(2 * rd * 2);
    int *expert = (int *)malloc(rows * 4), *order = (int *)malloc(rows * 4), *start = (int *)malloc((E + 1) * 4);
    float *gate = (float *)malloc(rows * 4);
    dev_download(res_out, d_res, rd);
    dev_download(yb, d_yb, rd);
    dev_download(b16, d_b16, 2 * rd);
    if (c.with_a) {
        dev_download(ya, d_ya, rd);
        dev_download(a16, d_a16, 2 * rd);
    }
    dev_download(expert, d_expert, rows);
    dev_download(order, d_order, rows);
    dev_download(start, d_start, E + 1);
    dev_download(gate, d_gate, rows);

    /* the residual sum is one f32 addition: exact */
    int wrong = 0;
    for (size_t i = 0; i < rd; i++) wrong += res_out[i] != res[i] + h[i];
    DEV_CHECK(wrong == 0, "%s: %d residual sums differ", what, wrong);
    for (size_t i = 0; i < rd; i++) res[i] += h[i];

    double *ref = (double *)malloc(rd * 8);
    if (c.with_a) {
        ref_norm(res, rows, wa, ref);
        const double ea = dev_rel_error(ya, ref, rd);
        DEV_CHECK(ea < 1e-5, "%s: norm a error %.3e", what, ea);
        wrong = halves_wrong(a16, ya, rows, act);
        DEV_CHECK(wrong == 0, "%s: %d 16-bit halves of norm a wrong", what, wrong);
    }
    ref_norm(res, rows, wb, ref);
    const double eb = dev_rel_error(yb, ref, rd);
    DEV_CHECK(eb < 1e-5, "%s: norm b error %.3e", what, eb);
    wrong = halves_wrong(b16, yb, rows, act);
    DEV_CHECK(wrong == 0, "%s: %d 16-bit halves of norm b wrong", what, wrong);

    /* A choice other than the double argmax passes only as a near tie (the
     * f32 logits cannot order two experts closer than their rounding); the
     * gate is checked against the logit of the expert chosen. */
    int out_of_range = 0, near_ties = 0, not_favourite = 0;
    double gate_err = 0, l[64];
    wrong = 0;
    for (int t = 0; t < n; t++) {
        int best = 0;
        for (int e = 0; e < E; e++) {
            l[e] = rb[e];
            for (int k = 0; k < d; k++) l[e] += (double)rw[(size_t)e * d + k] * ref[(size_t)t * d + k];
            if (l[e] > l[best]) best = e;
        }
        const int got = expert[t];
        if (got < 0 || got >= E) {
            out_of_range++;
            continue;
        }
        if (got != best) {
            if (l[best] - l[got] < 1e-5) near_ties++;
            else wrong++;
        }
        not_favourite += c.tied_favourite && got != 3;
        const double g = 1.0 / (1.0 + exp(-l[got]));
        const double err = gate[t] == gate[t] ? fabs(gate[t] - g) / g : INFINITY;
        if (err > gate_err) gate_err = err;
    }
    DEV_CHECK(out_of_range == 0 && wrong == 0, "%s: %d rows routed elsewhere, %d to no expert", what, wrong,
              out_of_range);
    if (near_ties) printf("%s: %d near ties (< 1e-5 apart) resolved the other way\n", what, near_ties);
    if (c.tied_favourite) DEV_CHECK(not_favourite == 0, "%s: %d rows not on expert 3", what, not_favourite);
    DEV_CHECK(gate_err < 1e-5, "%s: gate error %.3e", what, gate_err);
    int touched = 0;
    for (int t = n; t < rows; t++) {
        uint32_t g;
        memcpy(&g, &gate[t], 4);
        touched += expert[t] != -1 || g != 0xffffffffu;
    }
    DEV_CHECK(touched == 0, "%s: %d padding rows routed", what, touched);

    /* the grouping: a stable counting sort of the kernel's choices */
    if (out_of_range == 0) {
        int want_start[65] = {0};
        for (int t = 0; t < n; t++) want_start[expert[t] + 1]++;
        for (int e = 0; e < E; e++) want_start[e + 1] += want_start[e];
        int next[64], bad_start = 0, bad_order = 0;
        for (int e = 0; e <= E; e++) bad_start += start[e] != want_start[e];
        memcpy(next, want_start, sizeof next);
        int *want = (int *)malloc(rows * 4);
        for (int t = 0; t < n; t++) want[next[expert[t]]++] = t;
        for (int i = n; i < rows; i++) want[i] = i;
        for (int i = 0; i < rows; i++) bad_order += order[i] != want[i];
        DEV_CHECK(bad_start == 0 && start[E] == n, "%s: %d expert starts wrong (last %d)", what, bad_start, start[E]);
        DEV_CHECK(bad_order == 0, "%s: %d sorted positions wrong", what, bad_order);
        free(want);
    }

    cudaFree(d_res); cudaFree(d_h); cudaFree(d_wa); cudaFree(d_wb); cudaFree(d_rw); cudaFree(d_rb); cudaFree(d_ya);
    cudaFree(d_yb); cudaFree(d_a16); cudaFree(d_b16); cudaFree(d_expert); cudaFree(d_order); cudaFree(d_start);
    cudaFree(d_gate); cudaFree(d_n);
    free(res); free(h); free(wa); free(wb); free(rw); free(rb); free(res_out); free(ya); free(yb); free(a16);
    free(b16); free(expert); free(order); free(start); free(gate); free(ref);
}

/* The row path's MoE layer (one norm, 16-bit halves) at B rows, E 8: the
 * fused launch against the norm followed by bmc_route_rows. */
static void time_rows(int B) {
    const int E = 8;
    const size_t rd = (size_t)B * d;
    float *x = (float *)malloc(rd * 4), *w = (float *)malloc(d * 4), *rw = (float *)malloc((size_t)E * d * 4);
    float rb[8];
    dev_fill(x, rd, 1.0, 0.0);
    dev_fill(w, d, 0.5, 1.0);
    dev_fill(rw, (size_t)E * d, 0.05, 0.0);
    dev_fill(rb, E, 0.1, 0.0);
    float *d_res = dev_upload(x, rd), *d_h = dev_upload(x, rd), *d_w = dev_upload(w, d);
    float *d_rw = dev_upload(rw, (size_t)E * d), *d_rb = dev_upload(rb, E);
    float *d_y = dev_alloc_poisoned<float>(rd), *d_gate = dev_alloc_poisoned<float>(B);
    uint16_t *d_16 = dev_alloc_poisoned<uint16_t>(2 * rd);
    int *d_expert = dev_alloc_poisoned<int>(B), *d_order = dev_alloc_poisoned<int>(B);
    int *d_start = dev_alloc_poisoned<int>(E + 1), *d_n = dev_upload(&B, 1);
    bmc_norm_args na;
    memset(&na, 0, sizeof na);
    na.res = d_res;
    na.h = d_h;
    na.add = 0; /* the residual stays as drawn over the repeats */
    na.rows = B;
    na.d = d;
    na.eps = 1e-5f;
    na.act_type = BMC_BF16;
    na.lo_rows = B;
    na.w_b = d_w;
    na.out_b_16 = d_16;
    const double plain = dev_time_us(200, [&](int) { bmc_add_rmsnorm(&na, 0); });
    na.out_b_f32 = d_y;
    const double pair = dev_time_us(200, [&](int) {
        bmc_add_rmsnorm(&na, 0);
        bmc_route_rows(d_y, B, d_n, d, d_rw, d_rb, E, d_expert, d_gate, d_order, d_start, 0);
    });
    na.out_b_f32 = NULL; /* as the row path runs it: nothing reads the f32 rows any more */
    na.route_w = d_rw;
    na.route_b = d_rb;
    na.n_experts = E;
    na.n_dev = d_n;
    na.expert_of = d_expert;
    na.gate = d_gate;
    na.order = d_order;
    na.expert_start = d_start;
    na.counter = d_counter;
    const double fused = dev_time_us(200, [&](int) { bmc_add_rmsnorm(&na, 0); });
    DEV_CUDA(cudaDeviceSynchronize());
    printf("rows %4d, E 8, d %d: norm alone %.1f us, norm + bmc_route_rows %.1f us, fused %.1f us\n", B, d, plain,
           pair, fused);
    cudaFree(d_res); cudaFree(d_h); cudaFree(d_w); cudaFree(d_rw); cudaFree(d_rb); cudaFree(d_y); cudaFree(d_gate);
    cudaFree(d_16); cudaFree(d_expert); cudaFree(d_order); cudaFree(d_start); cudaFree(d_n);
    free(x); free(w); free(rw);
}

int main(void) {
    if (dev_no_gpu("dev_norm_route")) return 0;
    dev_seed();
    DEV_CUDA(cudaMalloc((void **)&d_counter, sizeof(unsigned)));
    DEV_CUDA(cudaMemset(d_counter, 0, sizeof(unsigned)));
    const route_case cases[] = {
        {1, 1, 8, BMC_BF16, 0, 0},       {7, 7, 8, BMC_F16, 1, 0},         {64, 64, 8, BMC_BF16, 0, 0},
        {64, 50, 8, BMC_BF16, 1, 0},     {64, 0, 8, BMC_BF16, 0, 0},       {300, 300, 8, BMC_BF16, 0, 0},
        {300, 257, 8, BMC_BF16, 0, 0},   {300, -1, 8, BMC_BF16, 0, 0},     {1024, 1024, 8, BMC_BF16, 0, 0},
        {1024, 1000, 8, BMC_BF16, 1, 0}, {1024, 1024, 8, BMC_BF16, 0, 1},  {300, 290, 2, BMC_BF16, 0, 0},
        {300, 290, 13, BMC_BF16, 0, 0},  {300, 290, 64, BMC_F16, 0, 0},    {1024, 999, 64, BMC_BF16, 0, 1},
    };
    for (const route_case &c : cases)
        for (int rep = 0; rep < 2; rep++) run_case(c, rep);
    time_rows(64);
    time_rows(256);
    time_rows(1024);
    cudaFree(d_counter);
    return dev_summary("dev_norm_route");
}
