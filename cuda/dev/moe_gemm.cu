/* Harness: the grouped expert GEMM of the decode row path (cuda/moe_gemm.cu)
 * against a double CPU version: fc1 with the gated GELU (rows read through a
 * permutation, bf16 output) and fc2 with the gate-scaled scatter (store and
 * add), on uneven expert groups (an empty expert, one of more than a tile of
 * rows) and K, N off the tile sizes, with the tiles and the weight-streaming
 * kernels (ring, direct); then its time on the
 * 2.8B expert shapes at 16 to 1024 rows over 8 experts, spread evenly and
 * routed at random, with the bandwidth of the bytes it must read (each
 * expert's weights once). And fc1 -> fc2 chained in one launch
 * (bmc_moe_chain_sm90) against the two launches: the same bits, and the
 * time of each. */
#include "dev.cuh"

static double gelu(double x) { return 0.5 * x * (1 + erf(x / sqrt(2.0))); }

/* The kernel a variant forces (bmc_moe_gemm_args.variant), for the checks' lines. */
static const char *stream_name(int variant) {
    switch (variant) {
    case 0: return "automatic choice";
    case 9: return "64x128 tiles in a 2-stage pipeline";
    case 10: return "weight-streaming kernel (ring)";
    case 12: return "direct weight stream";
    case 14: return "TMA + wgmma kernel";
    default: return "tiles";
    }
}

/* The forced variants each check runs besides the automatic choice: the
 * wgmma kernel (14) only where it runs (an sm_90 device, an sm_90a build). */
static int n_forced(int n) { return bmc_moe_sm90_ready() ? n : n - 1; }

static void check_case(int E, int rows, int K, int N, const int *counts, int split) {
    /* inputs, bf16-rounded on the host so the reference sees what the GPU sees */
    const size_t xn = (size_t)rows * K, w1n = (size_t)E * 2 * N * K, w2n = (size_t)E * K * N;
    float *x = (float *)malloc(xn * 4), *w1 = (float *)malloc(w1n * 4), *w2 = (float *)malloc(w2n * 4);
    float *b1 = (float *)malloc((size_t)E * 2 * N * 4), *b2 = (float *)malloc((size_t)E * K * 4);
    float *gates = (float *)malloc(rows * 4), *y0 = (float *)malloc((size_t)rows * K * 4);
    uint16_t *xh = (uint16_t *)malloc(xn * 2), *w1h = (uint16_t *)malloc(w1n * 2), *w2h = (uint16_t *)malloc(w2n * 2);
    dev_fill(x, xn, 1.0, 0.0);
    dev_fill(w1, w1n, 0.1, 0.0);
    dev_fill(w2, w2n, 0.1, 0.0);
    dev_fill(b1, (size_t)E * 2 * N, 0.2, 0.0);
    dev_fill(b2, (size_t)E * K, 0.2, 0.0);
    dev_fill(gates, rows, 0.5, 0.5);
    dev_fill(y0, (size_t)rows * K, 1.0, 0.0);
    /* split: x stays f32 and goes up as two 16-bit halves (rows, then their remainders) */
    uint16_t *xs = (uint16_t *)malloc(2 * xn * 2);
    for (size_t i = 0; i < xn; i++) {
        xs[i] = dev_bf16(x[i]);
        xs[xn + i] = dev_bf16(x[i] - dev_from_bf16(xs[i]));
        if (!split) x[i] = dev_from_bf16(xh[i] = dev_bf16(x[i]));
    }
    for (size_t i = 0; i < w1n; i++) w1[i] = dev_from_bf16(w1h[i] = dev_bf16(w1[i]));
    for (size_t i = 0; i < w2n; i++) w2[i] = dev_from_bf16(w2h[i] = dev_bf16(w2[i]));
    int *start = (int *)malloc((E + 1) * 4), *order = (int *)malloc(rows * 4);
    start[0] = 0;
    for (int e = 0; e < E; e++) start[e + 1] = start[e] + counts[e];
    for (int i = 0; i < rows; i++) order[i] = (int)(((long long)i * 7919) % rows); /* a permutation (rows prime to 7919) */
    /* reference: m[r] = gelu(x W1a + b1a) * (x W1b + b1b); y[order[r]] (+)= gate * (m W2 + b2) */
    double *m_ref = (double *)malloc((size_t)rows * N * 8), *y_ref = (double *)malloc((size_t)rows * K * 8);
    double *y_add = (double *)malloc((size_t)rows * K * 8);
    float *m_q = (float *)malloc((size_t)rows * N * 4);
    for (int e = 0; e < E; e++)
        for (int r = start[e]; r < start[e + 1]; r++) {
            const float *xr = x + (size_t)order[r] * K;
            for (int f = 0; f < N; f++) {
                double a = b1[(size_t)e * 2 * N + f], g = b1[(size_t)e * 2 * N + N + f];
                for (int k = 0; k < K; k++) {
                    a += (double)w1[((size_t)e * 2 * N + f) * K + k] * xr[k];
                    g += (double)w1[((size_t)e * 2 * N + N + f) * K + k] * xr[k];
                }
                m_ref[(size_t)r * N + f] = gelu(a) * g;
                m_q[(size_t)r * N + f] = split ? (float)m_ref[(size_t)r * N + f]
                                               : dev_from_bf16(dev_bf16((float)m_ref[(size_t)r * N + f]));
            }
        }
    for (int e = 0; e < E; e++)
        for (int r = start[e]; r < start[e + 1]; r++) {
            const int t = order[r];
            for (int n = 0; n < K; n++) {
                double a = b2[(size_t)e * K + n];
                for (int f = 0; f < N; f++) a += (double)w2[((size_t)e * K + n) * N + f] * m_q[(size_t)r * N + f];
                y_ref[(size_t)t * K + n] = gates[t] * a;
                y_add[(size_t)t * K + n] = y0[(size_t)t * K + n] + gates[t] * a;
            }
        }
    uint16_t *d_x = split ? dev_upload(xs, 2 * xn) : dev_upload(xh, xn), *d_w1 = dev_upload(w1h, w1n), *d_w2 = dev_upload(w2h, w2n);
    float *d_b1 = dev_upload(b1, (size_t)E * 2 * N), *d_b2 = dev_upload(b2, (size_t)E * K), *d_g = dev_upload(gates, rows);
    int *d_start = dev_upload(start, E + 1), *d_order = dev_upload(order, rows);
    uint16_t *d_m = dev_alloc_poisoned<uint16_t>((size_t)2 * rows * N);
    bmc_moe_gemm_args a;
    memset(&a, 0, sizeof a);
    a.mode = BMC_MOE_GATED;
    a.N = N;
    a.K = K;
    a.E = E;
    a.max_rows = rows;
    /* the rows in expert order, as the row path's grouping leaves them */
    uint16_t *d_sorted = dev_alloc_poisoned<uint16_t>((size_t)2 * rows * K);
    DEV_CUDA(bmc_gather_rows_planes(d_x, d_order, rows, K, split ? 2 : 1, rows, d_sorted, 0));
    a.X = d_sorted;
    a.ldx = K;
    a.W = d_w1;
    a.expert_stride = (long long)2 * N * K;
    a.expert_start = d_start;
    a.bias = d_b1;
    a.bias_stride = 2 * N;
    a.act = 0;
    a.y = d_m;
    a.ldy = N;
    a.x_lo_rows = a.y_lo_rows = split ? rows : 0;
    DEV_CUDA(bmc_moe_gemm(&a, BMC_BF16, 0));
    DEV_CUDA(cudaDeviceSynchronize());
    uint16_t *mh = (uint16_t *)malloc((size_t)2 * rows * N * 2);
    float *mf = (float *)malloc((size_t)rows * N * 4);
    auto fc1_error = [&](const uint16_t *d_out) { /* the output's halves summed, against the reference */
        dev_download(mh, d_out, (size_t)(split ? 2 : 1) * rows * N);
        for (size_t i = 0; i < (size_t)rows * N; i++)
            mf[i] = dev_from_bf16(mh[i]) + (split ? dev_from_bf16(mh[(size_t)rows * N + i]) : 0.0f);
        return dev_rel_error(mf, m_ref, (size_t)rows * N);
    };
    double e1 = fc1_error(d_m);
    printf("  fc1 gated GELU%s, E %d rows %d K %d N %d: rel err %.2e\n", split ? " (f32 input as two halves)" : "", E,
           rows, K, N, e1);
    DEV_CHECK(e1 < (split ? 1e-4 : 1e-2), "fc1 rel err %.3e", e1);
    {
        /* the two-stage pipeline that devices with less shared memory (sm_86, sm_89) fall back to (9), and the
         * weight-streaming kernels: ring (10) and direct (12); the GPU's own m above stays fc2's input */
        uint16_t *d_m2 = dev_alloc_poisoned<uint16_t>((size_t)2 * rows * N);
        bmc_moe_gemm_args b = a;
        b.y = d_m2;
        const int fc1_variants[4] = {9, 10, 12, 14};
        for (int i = 0; i < n_forced(4); i++) {
            const int v = fc1_variants[i];
            DEV_CUDA(cudaMemset(d_m2, 0xff, (size_t)2 * rows * N * 2));
            b.variant = v;
            DEV_CUDA(bmc_moe_gemm(&b, BMC_BF16, 0));
            DEV_CUDA(cudaDeviceSynchronize());
            const double ev = fc1_error(d_m2);
            printf("  fc1, %s: rel err %.2e\n", stream_name(v), ev);
            DEV_CHECK(ev < (split ? 1e-4 : 1e-2), "fc1 variant %d rel err %.3e", v, ev);
        }
        cudaFree(d_m2);
    }
    /* fc2 over the experts' rows (store, add or split-K parts follow per case) */
    auto fc2_args = [&](int mode, int variant) {
        bmc_moe_gemm_args f;
        memset(&f, 0, sizeof f);
        f.mode = mode;
        f.N = K;
        f.K = N;
        f.E = E;
        f.max_rows = rows;
        f.X = d_m;
        f.ldx = N;
        f.W = d_w2;
        f.expert_stride = (long long)K * N;
        f.expert_start = d_start;
        f.x_lo_rows = split ? rows : 0;
        f.variant = variant;
        return f;
    };
    /* fc2 from the GPU's own m (bf16), store then add: tiles, then the ring and the direct weight streams */
    const int scatter_variants[4] = {0, 10, 12, 14};
    for (int run = 0; run < 2 * n_forced(4); run++) {
        const int add = run & 1, variant = scatter_variants[run >> 1];
        float *d_y = add ? dev_upload(y0, (size_t)rows * K) : dev_alloc_poisoned<float>((size_t)rows * K);
        a = fc2_args(BMC_MOE_SCATTER, variant);
        a.bias = d_b2;
        a.bias_stride = K;
        a.y = d_y;
        a.ldy = K;
        a.y_rows = d_order;
        a.gates = d_g;
        a.add = add;
        DEV_CUDA(bmc_moe_gemm(&a, BMC_BF16, 0));
        DEV_CUDA(cudaDeviceSynchronize());
        float *yh = (float *)malloc((size_t)rows * K * 4);
        dev_download(yh, d_y, (size_t)rows * K);
        double e2 = dev_rel_error(yh, add ? y_add : y_ref, (size_t)rows * K);
        printf("  fc2 scatter (%s)%s, %s, E %d rows %d: rel err %.2e\n", add ? "add" : "store", split ? " (two halves)" : "",
               stream_name(variant), E, rows, e2);
        DEV_CHECK(e2 < 1e-4, "fc2 variant %d rel err %.3e", variant, e2);
        free(yh);
        cudaFree(d_y);
    }
    const int split_variants[4] = {0, 10, 12, 14}; /* automatic, ring and direct weight streams, wgmma */
    for (int vi = 0; vi < n_forced(4); vi++) { /* fc2 split over K (3 slices, partial sums) + bmc_scatter_parts */
        const int variant = split_variants[vi];
        int *d_expert_of = NULL;
        int *expert_of = (int *)malloc(rows * 4);
        for (int e = 0; e < E; e++)
            for (int r = start[e]; r < start[e + 1]; r++) expert_of[order[r]] = e;
        d_expert_of = dev_upload(expert_of, rows);
        int nrows = rows, *d_n = dev_upload(&nrows, 1);
        float *d_part = dev_alloc_poisoned<float>((size_t)3 * rows * K), *d_y = dev_alloc_poisoned<float>((size_t)rows * K);
        a = fc2_args(BMC_MOE_PARTIAL, variant);
        a.k_split = 3;
        a.y = d_part;
        a.ldy = K;
        DEV_CUDA(bmc_moe_gemm(&a, BMC_BF16, 0));
        DEV_CUDA(bmc_scatter_parts(d_part, 3, (long long)rows * K, d_n, d_order, d_g, d_b2, d_expert_of, rows, K, 0, d_y, 0, 0));
        DEV_CUDA(cudaDeviceSynchronize());
        float *yh = (float *)malloc((size_t)rows * K * 4);
        dev_download(yh, d_y, (size_t)rows * K);
        double e3 = dev_rel_error(yh, y_ref, (size_t)rows * K);
        printf("  fc2 split over K in 3 + scatter of the parts%s, %s, E %d rows %d: rel err %.2e\n",
               split ? " (two halves)" : "", stream_name(variant), E, rows, e3);
        DEV_CHECK(e3 < 1e-4, "fc2 split variant %d rel err %.3e", variant, e3);
        free(yh); free(expert_of);
        cudaFree(d_part); cudaFree(d_y); cudaFree(d_n); cudaFree(d_expert_of);
    }
    free(xs); free(x); free(w1); free(w2); free(b1); free(b2); free(gates); free(y0); free(xh); free(w1h); free(w2h);
    free(start); free(order); free(m_ref); free(y_ref); free(y_add); free(m_q); free(mh); free(mf);
    cudaFree(d_x); cudaFree(d_w1); cudaFree(d_w2); cudaFree(d_b1); cudaFree(d_b2); cudaFree(d_g);
    cudaFree(d_start); cudaFree(d_order); cudaFree(d_m); cudaFree(d_sorted);
}

/* DEV_PROFILE=1: one launch each of fc1 at 64 rows (2.8B experts) with the
 * 16x128 tiles, the ring and the direct streaming kernels and each one's
 * weight stream alone, nothing else: a short program for a profiler
 * (ncu -k regex:moe_). */
/* fc1 (gated, f32 inputs in halves, 16-bit halves out) then fc2 (K split
 * in `split` PARTIAL slices) in one chained launch (bmc_moe_chain_sm90)
 * against the two launches of the same kernel: the same bits in both
 * outputs (fc1's as well as fc2's: the chain changes the schedule, not the
 * arithmetic), and again with the counters zeroed for a second launch.
 * Random weights and inputs; `counts` rows per expert. With `timed`, the
 * time of both ways (launches queued back to back). */
static void chain_case(int E, int rows, int d, int F, const int *counts, int split, bool timed) {
    const size_t w1n = (size_t)E * 2 * F * d, w2n = (size_t)E * d * F;
    uint16_t *w1h = (uint16_t *)malloc(w1n * 2), *w2h = (uint16_t *)malloc(w2n * 2);
    uint16_t *xh = (uint16_t *)malloc((size_t)2 * rows * d * 2);
    for (size_t i = 0; i < w1n; i++) w1h[i] = dev_bf16((float)(0.05 * dev_uniform()));
    for (size_t i = 0; i < w2n; i++) w2h[i] = dev_bf16((float)(0.05 * dev_uniform()));
    for (size_t i = 0; i < (size_t)rows * d; i++) { /* hi, then lo rows */
        const float v = (float)dev_uniform();
        xh[i] = dev_bf16(v);
        xh[(size_t)rows * d + i] = dev_bf16(v - dev_from_bf16(xh[i]));
    }
    int start[65];
    start[0] = 0;
    for (int e = 0; e < E; e++) start[e + 1] = start[e] + counts[e];
    uint16_t *d_w1 = dev_upload(w1h, w1n), *d_w2 = dev_upload(w2h, w2n), *d_x = dev_upload(xh, (size_t)2 * rows * d);
    int *d_start = dev_upload(start, E + 1), *d_done = nullptr;
    DEV_CUDA(cudaMalloc(&d_done, E * sizeof(int)));
    const size_t mn = (size_t)2 * rows * F, yn = (size_t)split * rows * d;
    uint16_t *d_m[2] = {dev_alloc_poisoned<uint16_t>(mn), dev_alloc_poisoned<uint16_t>(mn)};
    float *d_y[2] = {dev_alloc_poisoned<float>(yn), dev_alloc_poisoned<float>(yn)};
    bmc_moe_gemm_args a1[2], a2[2];
    for (int k = 0; k < 2; k++) {
        memset(&a1[k], 0, sizeof a1[k]);
        a1[k].mode = BMC_MOE_GATED; a1[k].N = F; a1[k].K = d; a1[k].E = E; a1[k].max_rows = rows;
        a1[k].X = d_x; a1[k].ldx = d; a1[k].x_lo_rows = a1[k].y_lo_rows = rows; a1[k].W = d_w1;
        a1[k].expert_stride = (long long)2 * F * d; a1[k].expert_start = d_start; a1[k].y = d_m[k]; a1[k].ldy = F;
        a1[k].variant = 14;
        memset(&a2[k], 0, sizeof a2[k]);
        a2[k].mode = BMC_MOE_PARTIAL; a2[k].k_split = split; a2[k].N = d; a2[k].K = F; a2[k].E = E;
        a2[k].max_rows = rows; a2[k].X = d_m[k]; a2[k].ldx = F; a2[k].x_lo_rows = rows; a2[k].W = d_w2;
        a2[k].expert_stride = (long long)d * F; a2[k].expert_start = d_start; a2[k].y = d_y[k]; a2[k].ldy = d;
        a2[k].variant = 14;
    }
    DEV_CUDA(bmc_moe_gemm(&a1[0], BMC_BF16, 0));
    DEV_CUDA(bmc_moe_gemm(&a2[0], BMC_BF16, 0));
    uint16_t *m0 = (uint16_t *)malloc(mn * 2), *m1 = (uint16_t *)malloc(mn * 2);
    float *y0 = (float *)malloc(yn * 4), *y1 = (float *)malloc(yn * 4);
    dev_download(m0, d_m[0], mn);
    dev_download(y0, d_y[0], yn);
    for (int run = 0; run < 2; run++) {
        DEV_CUDA(cudaMemset(d_m[1], 0xff, mn * 2));
        DEV_CUDA(cudaMemset(d_y[1], 0xff, yn * 4));
        DEV_CUDA(cudaMemset(d_done, 0, E * sizeof(int)));
        DEV_CUDA(bmc_moe_chain_sm90(&a1[1], &a2[1], d_done, BMC_BF16, 0));
        DEV_CUDA(cudaDeviceSynchronize());
        dev_download(m1, d_m[1], mn);
        dev_download(y1, d_y[1], yn);
        DEV_CHECK(memcmp(m0, m1, mn * 2) == 0, "E %d rows %d: chained fc1 output differs from fc1 alone (run %d)", E,
                  rows, run);
        DEV_CHECK(memcmp(y0, y1, yn * 4) == 0, "E %d rows %d: chained fc2 output differs from fc2 alone (run %d)", E,
                  rows, run);
    }
    if (timed) {
        const double t_two = dev_time_loop_us(15, 10, [&](int) {
            DEV_CUDA(bmc_moe_gemm(&a1[0], BMC_BF16, 0));
            DEV_CUDA(bmc_moe_gemm(&a2[0], BMC_BF16, 0));
        });
        const double t_chain = dev_time_loop_us(15, 10, [&](int) {
            DEV_CUDA(cudaMemsetAsync(d_done, 0, E * sizeof(int)));
            DEV_CUDA(bmc_moe_chain_sm90(&a1[1], &a2[1], d_done, BMC_BF16, 0));
        });
        const double t_zero = dev_time_loop_us(15, 10, [&](int) { DEV_CUDA(cudaMemsetAsync(d_done, 0, E * sizeof(int))); });
        const double bytes = (w1n + w2n) * 2.0;
        printf("  fc1 + fc2 (K in %d slices), %d rows over %d experts: two launches %.1f us (%.0f GB/s), chained %.1f us"
               " (%.0f GB/s; %.1f us of it the counters' memset)\n",
               split, rows, E, t_two, bytes / (t_two * 1e3), t_chain - t_zero, bytes / ((t_chain - t_zero) * 1e3),
               t_zero);
    }
    free(w1h); free(w2h); free(xh); free(m0); free(m1); free(y0); free(y1);
    cudaFree(d_w1); cudaFree(d_w2); cudaFree(d_x); cudaFree(d_start); cudaFree(d_done);
    for (int k = 0; k < 2; k++) cudaFree(d_m[k]), cudaFree(d_y[k]);
}

static int profile_once(void) {
    const int d = 1472, F = 3872, E = 8, rows = 64;
    const size_t w1n = (size_t)E * 2 * F * d;
    uint16_t *w1h = (uint16_t *)malloc(w1n * 2), *xh = (uint16_t *)malloc((size_t)2 * rows * d * 2);
    for (size_t i = 0; i < w1n; i++) w1h[i] = dev_bf16((float)(0.05 * dev_uniform()));
    for (size_t i = 0; i < (size_t)2 * rows * d; i++) xh[i] = dev_bf16((float)dev_uniform());
    int start[9], order[64];
    for (int e = 0; e <= E; e++) start[e] = rows * e / E;
    for (int i = 0; i < rows; i++) order[i] = i;
    uint16_t *d_w1 = dev_upload(w1h, w1n), *d_x = dev_upload(xh, (size_t)2 * rows * d);
    uint16_t *d_m = dev_alloc_poisoned<uint16_t>((size_t)2 * rows * F);
    int *d_start = dev_upload(start, 9), *d_order = dev_upload(order, rows);
    bmc_moe_gemm_args a;
    memset(&a, 0, sizeof a);
    a.mode = BMC_MOE_GATED; a.N = F; a.K = d; a.E = E; a.max_rows = rows; a.ldx = d;
    uint16_t *d_sorted = dev_alloc_poisoned<uint16_t>((size_t)2 * rows * d);
    DEV_CUDA(bmc_gather_rows_planes(d_x, d_order, rows, d, 2, rows, d_sorted, 0));
    a.X = d_sorted; a.W = d_w1; a.expert_stride = (long long)2 * F * d; a.expert_start = d_start;
    a.y = d_m; a.ldy = F; a.x_lo_rows = a.y_lo_rows = rows;
    const int variants[6] = {1, 10, 11, 12, 13, 14};
    for (int v : variants) {
        if (v == 14 && !bmc_moe_sm90_ready()) continue;
        a.variant = v;
        DEV_CUDA(bmc_moe_gemm(&a, BMC_BF16, 0));
    }
    DEV_CUDA(cudaDeviceSynchronize());
    free(w1h); free(xh);
    cudaFree(d_w1); cudaFree(d_x); cudaFree(d_m); cudaFree(d_start); cudaFree(d_order); cudaFree(d_sorted);
    printf("dev_moe_gemm: profile launches done\n");
    return 0;
}

/* The read ceiling the expert kernels are judged against: every byte of a
 * buffer loaded once, 16 bytes per thread per load, folded so the loads stay. */
__global__ void read_all_kernel(const uint4 *p, size_t n, unsigned *sink) {
    unsigned acc = 0;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const uint4 v = __ldcs(p + i);
        acc ^= v.x ^ v.y ^ v.z ^ v.w;
    }
    if (acc == 0x9e3779b9u) *sink = acc;
}

int main(void) {
    if (dev_no_gpu("dev_moe_gemm")) return 0;
    dev_seed();
    printf("  TMA + wgmma kernel (variant 14): %s\n",
           bmc_moe_sm90_probe() ? "runs here, checked" : "not on this device or build, skipped");
    if (dev_profiling()) return profile_once();
    const int counts1[5] = {3, 0, 70, 1, 77}; /* 151 rows: an empty expert, two of more than one tile */
    check_case(5, 151, 136, 200, counts1, 0);
    check_case(5, 151, 136, 200, counts1, 1);
    const int counts2[8] = {1, 1, 1, 1, 1, 1, 1, 1};
    check_case(8, 8, 1472, 136, counts2, 0); /* 16-row tiles */
    check_case(8, 8, 1472, 136, counts2, 1);
    const int counts3[8] = {9, 7, 8, 12, 4, 0, 17, 7}; /* 64 rows at the 2.8B widths, as a 64-stream step routes them */
    check_case(8, 64, 1472, 3872, counts3, 1);
    const int counts4[8] = {40, 35, 150, 20, 25, 0, 18, 12}; /* 300 rows: one expert needs several wgmma passes */
    check_case(8, 300, 1472, 3872, counts4, 1);
    if (bmc_moe_sm90_ready()) { /* the chained fc1 -> fc2 launch */
        const int skew[2] = {63, 1}; /* fc1's units fewer than the SMs: fc2's start at once and must wait */
        chain_case(2, 64, 1472, 3872, skew, 4, false);
        chain_case(5, 151, 136, 200, counts1, 2, false); /* an empty expert, several passes */
        chain_case(8, 64, 1472, 3872, counts3, 4, true);
        chain_case(8, 300, 1472, 3872, counts4, 4, true);
        int even[8];
        for (int e = 0; e < 8; e++) even[e] = 32;
        chain_case(8, 256, 1472, 3872, even, 4, true);
        for (int e = 0; e < 8; e++) even[e] = 128;
        chain_case(8, 1024, 1472, 3872, even, 2, true);
    }

    /* timing: the 2.8B expert shapes */
    const int d = 1472, F = 3872, E = 8;
    const size_t w1n = (size_t)E * 2 * F * d, w2n = (size_t)E * d * F;
    uint16_t *w1h = (uint16_t *)malloc(w1n * 2);
    for (size_t i = 0; i < w1n; i++) w1h[i] = dev_bf16((float)(0.05 * dev_uniform()));
    uint16_t *d_w1 = dev_upload(w1h, w1n), *d_w2 = dev_upload(w1h, w2n);
    free(w1h);
    {
        int sms = 0;
        DEV_CUDA(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
        unsigned *sink = dev_alloc_poisoned<unsigned>(1);
        const double t = dev_time_us(15, [&](int) { read_all_kernel<<<sms * 8, 256>>>((const uint4 *)d_w1, w1n / 8, sink); });
        printf("  read ceiling: fc1's %.0f MB of experts read once in %.1f us, %.0f GB/s\n", w1n * 2 / 1e6, t,
               w1n * 2.0 / (t * 1e-6) / 1e9);
        cudaFree(sink);
    }
    /* every variant (0 = the automatic choice) at each row count, the rows spread evenly over the experts
     * and as a step routes them (each row to an expert drawn at random: uneven groups, more passes) */
    enum { NV = 15 };
    static const char *const shapes[NV] = {"auto",     "16x128/4", "16x64/4", "16x32/4", "32x128/4", "32x64/4", "64x128/3",
                                           "64x64/3",  "16x64/6",  "64x128/2", "stream",  "S W only", "direct",  "D W only", "wgmma"};
    printf("  2.8B experts, inputs in two halves: fc1 / fc2 us per variant (tiles TMxTN/stages; stream: the ring\n"
           "  weight stream; direct: the direct weight stream; W only: a streaming kernel's weight loads alone),\n"
           "  the auto choice's GB/s and TFLOP/s, then fc2 split over K + scatter as the row path runs it with the auto choice and each\n"
           "  streaming kernel, and the GB/s of each streaming kernel's fc1 + split fc2. Rows \"Nr<=M\": each row\n"
           "  routed to an expert at random, as a step's routing spreads them (M: the fullest expert's rows)\n");
    printf("  %-9s", "rows");
    for (int v = 0; v < NV; v++) printf(" %9s", shapes[v]);
    printf(" %6s %7s | %-5s %6s %6s %6s %6s | %6s %6s %6s\n", "GB/s", "TFLOP/s", "split", "auto", "stream", "direct",
           "wgmma", "stream", "direct", "wgmma");
    const int row_counts[5] = {16, 64, 128, 256, 1024};
    for (int run = 0; run < 10; run++) {
        const int rows = row_counts[run / 2], routed = run & 1;
        uint16_t *xh = (uint16_t *)malloc((size_t)2 * rows * F * 2);
        for (size_t i = 0; i < (size_t)2 * rows * F; i++) xh[i] = dev_bf16((float)dev_uniform());
        uint16_t *d_x = dev_upload(xh, (size_t)2 * rows * F), *d_m = dev_alloc_poisoned<uint16_t>((size_t)2 * rows * F);
        float *d_y = dev_alloc_poisoned<float>((size_t)rows * d), *gates = (float *)malloc(rows * 4);
        int start[9], count[8] = {0}, *order = (int *)malloc(rows * 4);
        for (int i = 0; i < rows; i++) count[routed ? (int)((dev_uniform() + 1) * 4) & 7 : i * E / rows]++;
        start[0] = 0;
        for (int e = 0; e < E; e++) start[e + 1] = start[e] + count[e];
        int most = 0;
        for (int e = 0; e < E; e++) most = count[e] > most ? count[e] : most;
        for (int i = 0; i < rows; i++) order[i] = i, gates[i] = 0.5f;
        int *d_start = dev_upload(start, 9), *d_order = dev_upload(order, rows);
        float *d_g = dev_upload(gates, rows);
        bmc_moe_gemm_args a1, a2;
        memset(&a1, 0, sizeof a1);
        a1.mode = BMC_MOE_GATED; a1.N = F; a1.K = d; a1.E = E; a1.max_rows = rows; a1.ldx = d;
        uint16_t *d_sorted = dev_alloc_poisoned<uint16_t>((size_t)2 * rows * d);
        DEV_CUDA(bmc_gather_rows_planes(d_x, d_order, rows, d, 2, rows, d_sorted, 0));
        a1.X = d_sorted; a1.W = d_w1; a1.expert_stride = (long long)2 * F * d; a1.expert_start = d_start;
        a1.y = d_m; a1.ldy = F; a1.x_lo_rows = a1.y_lo_rows = rows;
        memset(&a2, 0, sizeof a2);
        a2.mode = BMC_MOE_SCATTER; a2.N = d; a2.K = F; a2.E = E; a2.max_rows = rows; a2.X = d_x; a2.ldx = F;
        a2.W = d_w2; a2.expert_stride = (long long)d * F; a2.expert_start = d_start; a2.y = d_y; a2.ldy = d;
        a2.y_rows = d_order; a2.gates = d_g; a2.x_lo_rows = rows;
        char label[24];
        if (routed) snprintf(label, sizeof label, "%dr<=%d", rows, most);
        else snprintf(label, sizeof label, "%d", rows);
        printf("  %-9s", label);
        double t_auto = 0, t_fc1[NV];
        for (int v = 0; v < NV; v++) {
            a1.variant = a2.variant = v;
            if (v == 14 && !bmc_moe_sm90_ready()) {
                t_fc1[v] = 0;
                printf(" %9s", "-");
                continue;
            }
            double t1 = dev_time_us(15, [&](int) { DEV_CUDA(bmc_moe_gemm(&a1, BMC_BF16, 0)); });
            double t2 = dev_time_us(15, [&](int) { DEV_CUDA(bmc_moe_gemm(&a2, BMC_BF16, 0)); });
            if (v == 0) t_auto = t1 + t2;
            t_fc1[v] = t1;
            char cell[32];
            snprintf(cell, sizeof cell, "%.0f/%.0f", t1, t2);
            printf(" %9s", cell);
        }
        const double bytes = (w1n + w2n) * 2.0, flops = 2.0 * rows * (2.0 * F * d + (double)d * F);
        /* fc2 as the row path runs it: split over K, then the parts scattered */
        const int split = bmc_moe_fc2_split(rows);
        float *d_part = dev_alloc_poisoned<float>((size_t)split * rows * d);
        int *d_n = dev_upload(&rows, 1);
        bmc_moe_gemm_args a3 = a2;
        a3.mode = BMC_MOE_PARTIAL;
        a3.k_split = split;
        a3.y = d_part;
        const int split_variants[4] = {0, 10, 12, 14};
        const int n_split = n_forced(4);
        double t_split[4] = {0, 0, 0, 0};
        for (int i = 0; i < n_split; i++) {
            a3.variant = split_variants[i];
            t_split[i] = dev_time_us(15, [&](int) {
                DEV_CUDA(bmc_moe_gemm(&a3, BMC_BF16, 0));
                DEV_CUDA(bmc_scatter_parts(d_part, split, (long long)rows * d, d_n, d_order, d_g, NULL, NULL, rows, d, 0, d_y, 0, 0));
            });
        }
        printf(" %6.0f %7.1f | %-5d", bytes / (t_auto * 1e-6) / 1e9, flops / (t_auto * 1e-6) / 1e12, split);
        for (int i = 0; i < 4; i++) printf(" %6.0f", t_split[i]);
        printf(" |");
        for (int i = 1; i < 4; i++) /* fc1 + fc2 as the row path would run them with each streaming kernel */
            printf(" %6.0f", i < n_split ? bytes / ((t_fc1[split_variants[i]] + t_split[i]) * 1e-6) / 1e9 : 0.0);
        printf("\n");
        cudaFree(d_part);
        cudaFree(d_n);
        free(xh); free(gates); free(order);
        cudaFree(d_x); cudaFree(d_m); cudaFree(d_y); cudaFree(d_start); cudaFree(d_order); cudaFree(d_g);
        cudaFree(d_sorted);
    }
    return dev_summary("dev_moe_gemm");
}
