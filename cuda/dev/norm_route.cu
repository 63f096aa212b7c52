/* Harness: the decode row path's norms (cuda/add_rmsnorm.cu) and its
 * grouping of the rows by expert (bmc_group_rows, cuda/moe_rows.cu).
 *
 * 1. The MoE norm with routing (bmc_add_rmsnorm with route_w set) against a
 * double CPU version: the residual sum, the normalised rows (f32 and the
 * 16-bit hi/lo halves, both norms where a parallel layer has two), the
 * expert of every live row (lowest index on ties) and its gate; padding
 * rows (rows >= *n_dev) not routed. Then bmc_group_rows on the kernel's own
 * choices, as the row path runs it, against a CPU stable counting sort.
 *
 * 2. bmc_group_rows alone on drawn experts (E 2, 8 and 64; 1 to 1024 rows;
 * all rows live with n_dev given or NULL, some padding, none live; random
 * experts, every row on one expert, every expert used): order, pos_of and
 * expert_start position by position against the CPU sort, padding rows in
 * place, the padding rows' experts poisoned (never read); the gather
 * (one or two planes, 16-byte vectors or not, planes further apart than
 * the rows) byte for byte against the CPU gather, the rows between the
 * planes untouched; bad arguments refused.
 *
 * 3. The unfinished forms of h the norm finishes (h_form): out_proj's two
 * partial products plus bias (HALVES) and fc2's split-K slices with gate,
 * expert bias and sorted positions (PARTS, also added onto h as a parallel
 * layer does), for the Mamba norm (16-bit halves out) and the MoE norm with
 * routing (the PARTS inputs aliasing its routing outputs, as in the row
 * path), at 1, 3, 64, 256 and 1000 rows, E 8, with and without padding
 * rows: bit for bit against the launch pair each form replaces
 * (bmc_fold_rows or bmc_scatter_parts, then the norm of plain rows) on the
 * residual, the 16-bit rows and the routing outputs (the grouping's left
 * as drawn); against a double CPU version (residual and normalised rows);
 * h left unchanged.
 *
 * Then, at the 2.8B width for 64, 256 and 1024 rows (loops of launches per
 * event pair: the kernels take a few microseconds), the routing norm and
 * bmc_group_rows each alone and together, against the norm + bmc_route_rows
 * + bmc_gather_rows_planes they replace; and each form against fold or
 * scatter + norm. */
#include <cuda_fp16.h>

#include <initializer_list>

#include "dev.cuh"

static const int d = 1472;

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

/* The stable counting sort of the live rows t < n by expert[t]: order[i] =
 * the row at sorted position i (padding positions in place), pos_of its
 * inverse (if not NULL), start[E+1]. */
static void cpu_group(int rows, int n, int E, const int *expert, int *order, int *pos_of, int *start) {
    memset(start, 0, (E + 1) * sizeof(int));
    for (int t = 0; t < n; t++) start[expert[t] + 1]++;
    for (int e = 0; e < E; e++) start[e + 1] += start[e];
    int *next = (int *)malloc(E * sizeof(int));
    memcpy(next, start, E * sizeof(int));
    for (int t = 0; t < n; t++) order[next[expert[t]]++] = t;
    for (int i = n; i < rows; i++) order[i] = i;
    if (pos_of)
        for (int i = 0; i < rows; i++) pos_of[order[i]] = i;
    free(next);
}

/* bmc_group_rows' outputs against cpu_group of the same experts; the CPU's
 * order left in want (rows ints). */
static void check_grouping(const char *what, int rows, int n, int E, const int *expert, const int *order,
                           const int *pos_of, const int *start, int *want) {
    int want_start[65], bad_start = 0, bad_order = 0, bad_pos = 0;
    cpu_group(rows, n, E, expert, want, NULL, want_start);
    for (int e = 0; e <= E; e++) bad_start += start[e] != want_start[e];
    for (int i = 0; i < rows; i++) bad_order += order[i] != want[i];
    for (int i = 0; i < rows; i++) bad_pos += pos_of[want[i]] != i;
    DEV_CHECK(bad_start == 0 && start[E] == n, "%s: %d expert starts wrong (last %d)", what, bad_start, start[E]);
    DEV_CHECK(bad_order == 0, "%s: %d sorted positions wrong", what, bad_order);
    DEV_CHECK(bad_pos == 0, "%s: pos_of is not order's inverse at %d rows", what, bad_pos);
}

/* The gather that may come with the grouping: rows of gd 16-bit values in
 * `planes` planes of rows + gap rows (gd 0: no gather). */
struct gather_shape {
    int gd, planes, gap;
};

/* bmc_group_rows' arguments: the grouping into order, pos and start, and
 * the gather of src's rows of shape g into dst (NULL: none). */
static bmc_group_args group_args(int rows, const int *d_n, int E, const int *d_expert, int *order, int *pos,
                                 int *start, gather_shape g, const uint16_t *src, uint16_t *dst) {
    bmc_group_args ga;
    memset(&ga, 0, sizeof ga);
    ga.rows = rows;
    ga.n_dev = d_n;
    ga.E = E;
    ga.expert_of = d_expert;
    ga.order = order;
    ga.pos_of = pos;
    ga.expert_start = start;
    ga.src = src;
    ga.d = g.gd;
    ga.planes = g.planes;
    ga.plane_rows = rows + g.gap;
    ga.dst = dst;
    return ga;
}

/* bmc_group_rows on the device's experts d_expert (expert on the host: the
 * live rows' the same, the padding rows' poisoned on the device) against
 * the CPU: the grouping, and the gather byte for byte (fresh random rows,
 * the destination poisoned: the gaps between its planes must stay so). */
static void group_and_check(const char *what, int rows, int n, const int *d_n, int E, const int *d_expert,
                            const int *expert, gather_shape g) {
    const size_t plane_rows = (size_t)rows + g.gap, values = g.planes * plane_rows * g.gd;
    uint16_t *src = NULL, *d_src = NULL, *d_dst = NULL;
    if (g.gd) {
        src = (uint16_t *)malloc(values * 2);
        for (size_t i = 0; i < values; i++) src[i] = dev_bf16((float)dev_uniform());
        d_src = dev_upload(src, values);
        d_dst = dev_alloc_poisoned<uint16_t>(values);
    }
    int *d_order = dev_alloc_poisoned<int>(rows), *d_pos = dev_alloc_poisoned<int>(rows);
    int *d_start = dev_alloc_poisoned<int>(E + 1);
    const bmc_group_args ga = group_args(rows, d_n, E, d_expert, d_order, d_pos, d_start, g, d_src, d_dst);
    DEV_CUDA(bmc_group_rows(&ga, 0, 0));
    int *order = (int *)malloc(rows * 4), *pos = (int *)malloc(rows * 4), *want = (int *)malloc(rows * 4);
    int start[65];
    dev_download(order, d_order, rows);
    dev_download(pos, d_pos, rows);
    dev_download(start, d_start, E + 1);
    check_grouping(what, rows, n, E, expert, order, pos, start, want);
    if (g.gd) {
        uint16_t *dst = (uint16_t *)malloc(values * 2);
        dev_download(dst, d_dst, values);
        size_t wrong = 0, gap_touched = 0;
        for (size_t p = 0; p < (size_t)g.planes; p++) {
            for (size_t i = 0; i < (size_t)rows; i++)
                wrong += memcmp(dst + (p * plane_rows + i) * g.gd, src + (p * plane_rows + want[i]) * g.gd,
                                (size_t)g.gd * 2) != 0;
            for (size_t k = (p * plane_rows + rows) * g.gd; k < (p + 1) * plane_rows * g.gd; k++)
                gap_touched += dst[k] != 0xffffu;
        }
        DEV_CHECK(wrong == 0, "%s: %zu gathered rows differ from the CPU's", what, wrong);
        DEV_CHECK(gap_touched == 0, "%s: %zu values written between the planes", what, gap_touched);
        free(dst);
    }
    cudaFree(d_src); cudaFree(d_dst); cudaFree(d_order); cudaFree(d_pos); cudaFree(d_start);
    free(src); free(order); free(pos); free(want);
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
    int *d_expert = dev_alloc_poisoned<int>(rows), *d_n = dev_upload(&n, 1);
    float *d_gate = dev_alloc_poisoned<float>(rows);

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
    DEV_CUDA(bmc_add_rmsnorm(&na, 0, 0));
    DEV_CUDA(cudaDeviceSynchronize());

    float *res_out = (float *)malloc(rd * 4), *ya = (float *)malloc(rd * 4), *yb = (float *)malloc(rd * 4);
    uint16_t *a16 = (uint16_t *)malloc(2 * rd * 2), *b16 = (uint16_t *)malloc(2 * rd * 2);
    int *expert = (int *)malloc(rows * 4);
    float *gate = (float *)malloc(rows * 4);
    dev_download(res_out, d_res, rd);
    dev_download(yb, d_yb, rd);
    dev_download(b16, d_b16, 2 * rd);
    if (c.with_a) {
        dev_download(ya, d_ya, rd);
        dev_download(a16, d_a16, 2 * rd);
    }
    dev_download(expert, d_expert, rows);
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

    /* the grouping of the kernel's choices, as the row path launches it next */
    if (out_of_range == 0) group_and_check(what, rows, n, na.n_dev, E, d_expert, expert, gather_shape{0, 0, 0});

    cudaFree(d_res); cudaFree(d_h); cudaFree(d_wa); cudaFree(d_wb); cudaFree(d_rw); cudaFree(d_rb); cudaFree(d_ya);
    cudaFree(d_yb); cudaFree(d_a16); cudaFree(d_b16); cudaFree(d_expert); cudaFree(d_gate); cudaFree(d_n);
    free(res); free(h); free(wa); free(wb); free(rw); free(rb); free(res_out); free(ya); free(yb); free(a16);
    free(b16); free(expert); free(gate); free(ref);
}

/* ---- bmc_group_rows on drawn experts ----------------------------------------- */

enum { DRAW_RANDOM, DRAW_ONE, DRAW_EVERY };

struct group_case {
    int rows, n_live; /* n_live < 0: n_dev NULL, every row live */
    int E, draw;
    gather_shape g;
};

static void run_group_case(const group_case &c) {
    const int rows = c.rows, E = c.E, n = c.n_live < 0 ? rows : c.n_live;
    static const char *const draws[] = {"random experts", "all on one expert", "every expert used"};
    char what[160];
    snprintf(what, sizeof what, "bmc_group_rows: rows %d live %d%s E %d, %s, gather d %d planes %d gap %d", rows, n,
             c.n_live < 0 ? " (n_dev NULL)" : "", E, draws[c.draw], c.g.gd, c.g.planes, c.g.gap);
    int *expert = (int *)malloc(rows * 4);
    const int one = (int)((dev_uniform() + 1.0) * 0.5 * E) % E;
    for (int t = 0; t < rows; t++) {
        const int drawn = (int)((dev_uniform() + 1.0) * 0.5 * E) % E;
        expert[t] = t >= n ? -1 : c.draw == DRAW_ONE ? one : c.draw == DRAW_EVERY ? t % E : drawn;
    }
    for (int t = n - 1; c.draw == DRAW_EVERY && t > 0; t--) { /* shuffled: each expert's rows spread out */
        const int u = (int)((dev_uniform() + 1.0) * 0.5 * (t + 1)) % (t + 1), x = expert[t];
        expert[t] = expert[u];
        expert[u] = x;
    }
    int *d_expert = dev_alloc_poisoned<int>(rows), *d_n = dev_upload(&n, 1);
    DEV_CUDA(cudaMemcpy(d_expert, expert, (size_t)n * 4, cudaMemcpyHostToDevice)); /* padding rows: -1, poison */
    group_and_check(what, rows, n, c.n_live < 0 ? NULL : d_n, E, d_expert, expert, c.g);
    cudaFree(d_expert); cudaFree(d_n);
    free(expert);
}

/* Arguments bmc_group_rows must refuse, before any launch. */
static void check_refusals(void) {
    int *d_int = dev_alloc_poisoned<int>(64);
    uint16_t *d_16 = dev_alloc_poisoned<uint16_t>(64);
    bmc_group_args ok;
    memset(&ok, 0, sizeof ok);
    ok.rows = 4;
    ok.E = 8;
    ok.expert_of = d_int;
    ok.order = ok.pos_of = ok.expert_start = d_int + 16;
    ok.src = d_16;
    ok.d = 8;
    ok.planes = 2;
    ok.plane_rows = 4;
    ok.dst = d_16 + 32;
    bmc_group_args bad[9];
    for (bmc_group_args &b : bad) b = ok;
    bad[0].E = 1;
    bad[1].E = 65;
    bad[2].expert_of = NULL;
    bad[3].order = NULL;
    bad[4].expert_start = NULL;
    bad[5].src = NULL;
    bad[6].plane_rows = 3;
    bad[7].d = 0;
    bad[8].pos_of = NULL;
    int refused = 0;
    for (const bmc_group_args &b : bad) refused += bmc_group_rows(&b, 0, 0) == cudaErrorInvalidValue;
    DEV_CHECK(refused == 9, "bmc_group_rows refused %d of 9 bad argument sets", refused);
    DEV_CUDA(cudaGetLastError());
    cudaFree(d_int); cudaFree(d_16);
}

/* The row path's MoE layer (one norm, 16-bit halves) at B rows, all live,
 * E 8: the routing norm and bmc_group_rows (with and without the gather of
 * the two halves) each alone and one after the other, against the plain
 * norm + bmc_route_rows + bmc_gather_rows_planes (the three launches they
 * replace), in loops of 20 launches per event pair. */
static void time_rows(int B) {
    const int E = 8, loop = 20, reps = 50;
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
    uint16_t *d_16 = dev_alloc_poisoned<uint16_t>(2 * rd), *d_sorted = dev_alloc_poisoned<uint16_t>(2 * rd);
    int *d_expert = dev_alloc_poisoned<int>(B), *d_order = dev_alloc_poisoned<int>(B);
    int *d_pos = dev_alloc_poisoned<int>(B), *d_start = dev_alloc_poisoned<int>(E + 1), *d_n = dev_upload(&B, 1);
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
    const double plain = dev_time_loop_us(reps, loop, [&](int) { DEV_CUDA(bmc_add_rmsnorm(&na, 0, 0)); });
    na.out_b_f32 = d_y;
    const double before = dev_time_loop_us(reps, loop, [&](int) {
        DEV_CUDA(bmc_add_rmsnorm(&na, 0, 0));
        DEV_CUDA(bmc_route_rows(d_y, B, d_n, d, d_rw, d_rb, E, d_expert, d_gate, d_order, d_start, 0));
        DEV_CUDA(bmc_gather_rows_planes(d_16, d_order, B, d, 2, B, d_sorted, 0));
    });
    na.out_b_f32 = NULL; /* as the row path runs it: nothing reads the f32 rows any more */
    na.route_w = d_rw;
    na.route_b = d_rb;
    na.n_experts = E;
    na.n_dev = d_n;
    na.expert_of = d_expert;
    na.gate = d_gate;
    bmc_group_args ga = group_args(B, d_n, E, d_expert, d_order, d_pos, d_start, gather_shape{d, 2, 0}, d_16, NULL);
    const double routing = dev_time_loop_us(reps, loop, [&](int) { DEV_CUDA(bmc_add_rmsnorm(&na, 0, 0)); });
    const double group = dev_time_loop_us(reps, loop, [&](int) { DEV_CUDA(bmc_group_rows(&ga, 0, 0)); });
    const double gather = dev_time_loop_us(reps, loop, [&](int) {
        DEV_CUDA(bmc_gather_rows_planes(d_16, d_order, B, d, 2, B, d_sorted, 0));
    });
    ga.dst = d_sorted;
    const double group_gather = dev_time_loop_us(reps, loop, [&](int) { DEV_CUDA(bmc_group_rows(&ga, 0, 0)); });
    const double after = dev_time_loop_us(reps, loop, [&](int) {
        DEV_CUDA(bmc_add_rmsnorm(&na, 0, 0));
        DEV_CUDA(bmc_group_rows(&ga, 0, 0));
    });
    DEV_CUDA(cudaDeviceSynchronize());
    printf("rows %4d, E 8, d %d, per launch: norm alone %.2f us, routing norm %.2f us, bmc_group_rows %.2f us "
           "(+ gather %.2f us; bmc_gather_rows_planes alone %.2f us)\n",
           B, d, plain, routing, group, group_gather, gather);
    printf("rows %4d, E 8, d %d, the layer's start: routing norm + bmc_group_rows with gather %.2f us, norm + "
           "bmc_route_rows + bmc_gather_rows_planes %.2f us\n",
           B, d, after, before);
    cudaFree(d_res); cudaFree(d_h); cudaFree(d_w); cudaFree(d_rw); cudaFree(d_rb); cudaFree(d_y); cudaFree(d_gate);
    cudaFree(d_16); cudaFree(d_sorted); cudaFree(d_expert); cudaFree(d_order); cudaFree(d_pos); cudaFree(d_start);
    cudaFree(d_n);
    free(x); free(w); free(rw);
}

/* ---- the unfinished forms of h ------------------------------------------------ */

struct form_case {
    int rows, n_live, act;
    int moe;  /* the MoE norm with routing (b-norm), else the Mamba norm (a-norm) */
    int form; /* BMC_H_HALVES or BMC_H_PARTS */
    int bias; /* out_proj's or the experts' bias given */
    int add;  /* PARTS: added onto h (a parallel layer) */
};

static const int form_E = 8;

/* A previous MoE layer's routing, as the PARTS form finds it: random experts
 * and gates in [0, 1) for the live rows, grouped by expert (stable), order
 * and pos_of padding positions in place; the padding rows' expert and gate
 * poisoned (nothing may read them). */
static void draw_routing(int rows, int n, int *expert, float *gate, int *order, int *pos_of) {
    int start[form_E + 1];
    for (int t = 0; t < rows; t++) {
        expert[t] = -1;
        memset(&gate[t], 0xff, 4);
        if (t >= n) continue;
        expert[t] = (int)((dev_uniform() + 1.0) * 0.5 * form_E) % form_E;
        gate[t] = (float)(0.5 + 0.5 * dev_uniform());
    }
    cpu_group(rows, n, form_E, expert, order, pos_of, start);
}

/* What one path (the fused form, or the launch pair it replaces) reads and
 * writes, from the same host bytes. */
struct form_bufs {
    float *res, *h, *gate;
    uint16_t *out16;
    int *expert, *order, *pos;
};

static form_bufs upload_form_bufs(const float *res, const float *h, size_t h_floats, int rows, const int *expert,
                                  const float *gate, const int *order, const int *pos) {
    form_bufs b;
    b.res = dev_upload(res, (size_t)rows * d);
    b.h = dev_upload(h, h_floats);
    b.out16 = dev_alloc_poisoned<uint16_t>(2 * (size_t)rows * d);
    b.expert = dev_upload(expert, rows);
    b.gate = dev_upload(gate, rows);
    b.order = dev_upload(order, rows);
    b.pos = dev_upload(pos, rows);
    return b;
}

static void free_form_bufs(form_bufs &b) {
    cudaFree(b.res); cudaFree(b.h); cudaFree(b.gate); cudaFree(b.out16); cudaFree(b.expert); cudaFree(b.order);
    cudaFree(b.pos);
}

/* The norm's arguments over one path's buffers, h as plain rows (the pair's
 * second launch) until the caller sets a form. */
static bmc_norm_args form_norm_args(const form_case &c, form_bufs &b, const float *w, const float *rw,
                                    const float *rb, const int *n_dev) {
    bmc_norm_args na;
    memset(&na, 0, sizeof na);
    na.res = b.res;
    na.h = b.h;
    na.add = 1;
    na.rows = c.rows;
    na.d = d;
    na.eps = 1e-5f;
    na.act_type = c.act;
    na.lo_rows = c.rows;
    na.n_dev = n_dev;
    if (!c.moe) {
        na.w_a = w;
        na.out_a_16 = b.out16;
        return na;
    }
    na.w_b = w;
    na.out_b_16 = b.out16;
    na.route_w = rw;
    na.route_b = rb;
    na.n_experts = form_E;
    na.expert_of = b.expert;
    na.gate = b.gate;
    return na;
}

/* The PARTS form's inputs in one path's buffers: with routing they are its
 * outputs too, as in the row path (the previous MoE layer's routing). */
static void set_parts(bmc_norm_args &na, form_bufs &b, const float *parts, int split, const float *bias, int add) {
    na.h_form = BMC_H_PARTS;
    na.parts = parts;
    na.n_parts = split;
    na.part_stride = (long long)na.rows * d;
    na.parts_pos = b.pos;
    na.parts_gate = b.gate;
    na.parts_expert = b.expert;
    na.parts_bias = bias;
    na.parts_add = add;
}

template <typename T> static size_t bytes_differ(const T *a, const T *b, size_t n) {
    size_t diff = 0;
    for (size_t i = 0; i < n; i++) diff += memcmp(&a[i], &b[i], sizeof(T)) != 0;
    return diff;
}

static void run_form_case(const form_case &c) {
    const int rows = c.rows, n = c.n_live, E = form_E, split = bmc_moe_fc2_split(rows);
    const int halves = c.form == BMC_H_HALVES;
    char what[128];
    snprintf(what, sizeof what, "%s norm, h %s%s%s, rows %d live %d, %s", c.moe ? "MoE" : "Mamba",
             halves ? "HALVES" : "PARTS", c.bias ? " + bias" : "", c.add ? " added" : "", rows, n,
             c.act == BMC_F16 ? "f16" : "bf16");
    const size_t rd = (size_t)rows * d, h_floats = halves ? 2 * rd : rd, part_floats = (size_t)split * rd;
    const size_t bias_floats = halves ? (size_t)d : (size_t)E * d;
    float *res = (float *)malloc(rd * 4), *h = (float *)malloc(h_floats * 4), *w = (float *)malloc(d * 4);
    float *rw = (float *)malloc((size_t)E * d * 4), *rb = (float *)malloc(E * 4);
    float *bias = (float *)malloc(bias_floats * 4), *parts = (float *)malloc(halves ? 4 : part_floats * 4);
    float *gate = (float *)malloc(rows * 4);
    int *expert = (int *)malloc(rows * 4), *order = (int *)malloc(rows * 4), *pos = (int *)malloc(rows * 4);
    dev_fill(res, rd, 1.0, 0.0);
    dev_fill(h, h_floats, 0.5, 0.0);
    dev_fill(w, d, 0.5, 1.0);
    dev_fill(rw, (size_t)E * d, 0.05, 0.0);
    dev_fill(rb, E, 0.1, 0.0);
    dev_fill(bias, bias_floats, 0.2, 0.0);
    if (halves) { /* no routing read: poison, the routing writes what it writes */
        memset(expert, 0xff, rows * 4);
        memset(gate, 0xff, rows * 4);
        memset(order, 0xff, rows * 4);
        memset(pos, 0xff, rows * 4);
    } else {
        draw_routing(rows, n, expert, gate, order, pos);
        memset(parts, 0xff, part_floats * 4); /* fc2 writes only the live positions */
        for (int p = 0; p < split; p++) dev_fill(parts + (size_t)p * rd, (size_t)n * d, 0.3, 0.0);
    }
    float *d_w = dev_upload(w, d), *d_rw = dev_upload(rw, (size_t)E * d), *d_rb = dev_upload(rb, E);
    float *d_bias = c.bias ? dev_upload(bias, bias_floats) : NULL;
    float *d_parts = halves ? NULL : dev_upload(parts, part_floats);
    int *d_n = dev_upload(&n, 1);

    /* the launch pair */
    form_bufs pb = upload_form_bufs(res, h, h_floats, rows, expert, gate, order, pos);
    if (halves)
        DEV_CUDA(bmc_fold_rows(pb.h, rows, d, d, rows, d_bias, 0, 0));
    else
        DEV_CUDA(bmc_scatter_parts(d_parts, split, (long long)rd, d_n, pb.order, pb.gate, d_bias, pb.expert, rows, d,
                                   c.add, pb.h, 0, 0));
    bmc_norm_args na = form_norm_args(c, pb, d_w, d_rw, d_rb, d_n);
    DEV_CUDA(bmc_add_rmsnorm(&na, 0, 0));
    DEV_CUDA(cudaDeviceSynchronize());

    /* the fused form */
    form_bufs fb = upload_form_bufs(res, h, h_floats, rows, expert, gate, order, pos);
    na = form_norm_args(c, fb, d_w, d_rw, d_rb, d_n);
    if (halves) {
        na.h_form = BMC_H_HALVES;
        na.h_lo_rows = rows;
        na.h_bias = d_bias;
    } else {
        set_parts(na, fb, d_parts, split, d_bias, c.add);
    }
    DEV_CUDA(bmc_add_rmsnorm(&na, 0, 0));
    DEV_CUDA(cudaDeviceSynchronize());

    float *res_p = (float *)malloc(rd * 4), *res_f = (float *)malloc(rd * 4), *h_f = (float *)malloc(h_floats * 4);
    uint16_t *o_p = (uint16_t *)malloc(2 * rd * 2), *o_f = (uint16_t *)malloc(2 * rd * 2);
    dev_download(res_p, pb.res, rd);
    dev_download(res_f, fb.res, rd);
    dev_download(h_f, fb.h, h_floats);
    dev_download(o_p, pb.out16, 2 * rd);
    dev_download(o_f, fb.out16, 2 * rd);
    size_t diff = bytes_differ(res_p, res_f, rd);
    DEV_CHECK(diff == 0, "%s: %zu residual sums differ from the pair's", what, diff);
    diff = bytes_differ(o_p, o_f, 2 * rd);
    DEV_CHECK(diff == 0, "%s: %zu 16-bit outputs differ from the pair's", what, diff);
    diff = bytes_differ(h, h_f, h_floats);
    DEV_CHECK(diff == 0, "%s: %zu values of h changed", what, diff);
    if (c.moe) {
        int *ip = (int *)malloc(rows * 4), *expert_f = (int *)malloc(rows * 4);
        float *gp = (float *)malloc(rows * 4), *gq = (float *)malloc(rows * 4);
        dev_download(gp, pb.gate, rows);
        dev_download(gq, fb.gate, rows);
        diff = bytes_differ(gp, gq, rows);
        dev_download(ip, pb.expert, rows);
        dev_download(expert_f, fb.expert, rows);
        diff += bytes_differ(ip, expert_f, rows);
        DEV_CHECK(diff == 0, "%s: %zu routing outputs differ from the pair's", what, diff);
        /* the grouping is the next launch's: the norm leaves order and pos_of (which it reads) as drawn */
        dev_download(ip, fb.order, rows);
        diff = bytes_differ(ip, order, rows);
        dev_download(ip, fb.pos, rows);
        diff += bytes_differ(ip, pos, rows);
        DEV_CHECK(diff == 0, "%s: %zu of the drawn order and pos_of changed", what, diff);
        int out_of_range = 0;
        for (int t = 0; t < n; t++) out_of_range += expert_f[t] < 0 || expert_f[t] >= E;
        DEV_CHECK(out_of_range == 0, "%s: %d rows routed to no expert", what, out_of_range);
        /* then the grouping and gather of the row path on the norm's choices and outputs' shape */
        if (out_of_range == 0)
            group_and_check(what, rows, n, d_n, E, fb.expert, expert_f, gather_shape{d, 2, 0});
        free(ip); free(expert_f); free(gp); free(gq);
    }

    /* the CPU version in double */
    double *x = (double *)malloc(rd * 8), *y = (double *)malloc(rd * 8);
    for (int t = 0; t < rows; t++) {
        const int live = t < n;
        for (int k = 0; k < d; k++) {
            const size_t o = (size_t)t * d + k;
            double hv;
            if (halves) {
                hv = (double)h[o] + h[rd + o] + (c.bias ? bias[k] : 0.0);
            } else if (live) {
                double sum = c.bias ? bias[(size_t)expert[t] * d + k] : 0.0;
                for (int p = 0; p < split; p++) sum += parts[(size_t)p * rd + (size_t)pos[t] * d + k];
                hv = gate[t] * sum + (c.add ? h[o] : 0.0);
            } else {
                hv = h[o];
            }
            x[o] = res[o] + hv;
        }
    }
    const double e_res = dev_rel_error(res_f, x, rd);
    DEV_CHECK(e_res < 1e-6, "%s: residual error %.3e", what, e_res);
    for (int t = 0; t < rows; t++) {
        double ss = 0;
        for (int k = 0; k < d; k++) ss += x[(size_t)t * d + k] * x[(size_t)t * d + k];
        const double scale = 1.0 / sqrt(ss / d + 1e-5);
        for (int k = 0; k < d; k++) y[(size_t)t * d + k] = x[(size_t)t * d + k] * scale * w[k];
    }
    float *y_f = res_p; /* reused: hi + lo of the fused output */
    for (size_t i = 0; i < rd; i++) y_f[i] = dev_from16(o_f[i], c.act) + dev_from16(o_f[rd + i], c.act);
    const double e_y = dev_rel_error(y_f, y, rd);
    DEV_CHECK(e_y < 1e-5, "%s: normalised rows (hi + lo) error %.3e", what, e_y);

    free_form_bufs(pb);
    free_form_bufs(fb);
    cudaFree(d_w); cudaFree(d_rw); cudaFree(d_rb); cudaFree(d_bias); cudaFree(d_parts); cudaFree(d_n);
    free(res); free(h); free(w); free(rw); free(rb); free(bias); free(parts); free(gate); free(expert); free(order);
    free(pos); free(res_p); free(res_f); free(h_f); free(o_p); free(o_f); free(x); free(y);
}

/* The row path's two absorbed launches at B rows (all live, E 8, bf16): the
 * Mamba norm after an MoE layer (bmc_scatter_parts + norm against PARTS) and
 * the MoE norm after a Mamba layer (bmc_fold_rows + routing norm against
 * HALVES), each as a loop of 20 launches per event pair. */
static void time_forms(int B) {
    const int E = form_E, split = bmc_moe_fc2_split(B), loop = 20, reps = 50;
    const size_t rd = (size_t)B * d;
    float *res = (float *)malloc(rd * 4), *h = (float *)malloc(2 * rd * 4), *w = (float *)malloc(d * 4);
    float *rw = (float *)malloc((size_t)E * d * 4), *rb = (float *)malloc(E * 4);
    float *bias = (float *)malloc((size_t)E * d * 4), *parts = (float *)malloc((size_t)split * rd * 4);
    float *gate = (float *)malloc(B * 4);
    int *expert = (int *)malloc(B * 4), *order = (int *)malloc(B * 4), *pos = (int *)malloc(B * 4);
    dev_fill(res, rd, 1.0, 0.0);
    dev_fill(h, 2 * rd, 0.5, 0.0);
    dev_fill(w, d, 0.5, 1.0);
    dev_fill(rw, (size_t)E * d, 0.05, 0.0);
    dev_fill(rb, E, 0.1, 0.0);
    dev_fill(bias, (size_t)E * d, 0.2, 0.0);
    dev_fill(parts, (size_t)split * rd, 0.3, 0.0);
    draw_routing(B, B, expert, gate, order, pos);
    float *d_w = dev_upload(w, d), *d_rw = dev_upload(rw, (size_t)E * d), *d_rb = dev_upload(rb, E);
    float *d_bias = dev_upload(bias, (size_t)E * d), *d_parts = dev_upload(parts, (size_t)split * rd);
    int *d_n = dev_upload(&B, 1);
    form_bufs b = upload_form_bufs(res, h, 2 * rd, B, expert, gate, order, pos);
    form_case c = {B, B, BMC_BF16, 0, BMC_H_PARTS, 1, 0};

    /* the Mamba norm: PARTS reads the routing in b, which nothing rewrites here */
    bmc_norm_args plain = form_norm_args(c, b, d_w, d_rw, d_rb, d_n), fused = plain;
    set_parts(fused, b, d_parts, split, d_bias, 0);
    const double alone = dev_time_loop_us(reps, loop, [&](int) { DEV_CUDA(bmc_add_rmsnorm(&plain, 0, 0)); });
    const double scatter_pair = dev_time_loop_us(reps, loop, [&](int) {
        DEV_CUDA(bmc_scatter_parts(d_parts, split, (long long)rd, d_n, b.order, b.gate, d_bias, b.expert, B, d, 0, b.h,
                                   0, 0));
        DEV_CUDA(bmc_add_rmsnorm(&plain, 0, 0));
    });
    const double parts_fused = dev_time_loop_us(reps, loop, [&](int) { DEV_CUDA(bmc_add_rmsnorm(&fused, 0, 0)); });

    /* the MoE norm: its routing rewrites b's routing, which the Mamba norm above no longer reads */
    c.moe = 1;
    c.form = BMC_H_HALVES;
    plain = form_norm_args(c, b, d_w, d_rw, d_rb, d_n);
    fused = plain;
    fused.h_form = BMC_H_HALVES;
    fused.h_lo_rows = B;
    fused.h_bias = d_bias; /* any d floats */
    const double route_alone = dev_time_loop_us(reps, loop, [&](int) { DEV_CUDA(bmc_add_rmsnorm(&plain, 0, 0)); });
    const double fold_pair = dev_time_loop_us(reps, loop, [&](int) {
        DEV_CUDA(bmc_fold_rows(b.h, B, d, d, B, d_bias, 0, 0));
        DEV_CUDA(bmc_add_rmsnorm(&plain, 0, 0));
    });
    const double halves_fused = dev_time_loop_us(reps, loop, [&](int) { DEV_CUDA(bmc_add_rmsnorm(&fused, 0, 0)); });
    DEV_CUDA(cudaDeviceSynchronize());
    printf("rows %4d, d %d, fc2 in %d slices, per launch: Mamba norm alone %.2f us, bmc_scatter_parts + norm %.2f us, "
           "PARTS norm %.2f us\n",
           B, d, split, alone, scatter_pair, parts_fused);
    printf("rows %4d, d %d, E 8, per launch: MoE norm alone %.2f us, bmc_fold_rows + MoE norm %.2f us, HALVES MoE "
           "norm %.2f us\n",
           B, d, route_alone, fold_pair, halves_fused);
    free_form_bufs(b);
    cudaFree(d_w); cudaFree(d_rw); cudaFree(d_rb); cudaFree(d_bias); cudaFree(d_parts); cudaFree(d_n);
    free(res); free(h); free(w); free(rw); free(rb); free(bias); free(parts); free(gate); free(expert); free(order);
    free(pos);
}

int main(void) {
    if (dev_no_gpu("dev_norm_route")) return 0;
    dev_seed();
    if (dev_profiling()) {
        for (int rows : {64, 256, 1024}) time_rows(rows);
        for (int rows : {64, 256}) time_forms(rows);
        return 0;
    }
    const route_case cases[] = {
        {1, 1, 8, BMC_BF16, 0, 0},       {7, 7, 8, BMC_F16, 1, 0},         {64, 64, 8, BMC_BF16, 0, 0},
        {64, 50, 8, BMC_BF16, 1, 0},     {64, 0, 8, BMC_BF16, 0, 0},       {300, 300, 8, BMC_BF16, 0, 0},
        {300, 257, 8, BMC_BF16, 0, 0},   {300, -1, 8, BMC_BF16, 0, 0},     {1024, 1024, 8, BMC_BF16, 0, 0},
        {1024, 1000, 8, BMC_BF16, 1, 0}, {1024, 1024, 8, BMC_BF16, 0, 1},  {300, 290, 2, BMC_BF16, 0, 0},
        {300, 290, 13, BMC_BF16, 0, 0},  {300, 290, 64, BMC_F16, 0, 0},    {1024, 999, 64, BMC_BF16, 0, 1},
    };
    for (const route_case &c : cases)
        for (int rep = 0; rep < 2; rep++) run_case(c, rep);
    /* the gathers, taken in turn: the row path's (two planes of d), planes
     * apart, one plane, none, and widths without 16-byte vectors or whose
     * rows exceed what a block's threads hold in registers */
    const gather_shape shapes[] = {{d, 2, 0}, {1470, 2, 3}, {d, 1, 0}, {0, 0, 0}, {8, 2, 1}, {13, 1, 0}, {8192, 2, 0}};
    int shape = 0;
    for (int E : {2, 8, 64})
        for (int rows : {1, 5, 64, 300, 1024})
            for (int live : {rows, -1, rows - (rows / 4 > 1 ? rows / 4 : 1), 0})
                for (int draw : {DRAW_RANDOM, DRAW_ONE, DRAW_EVERY}) {
                    if (live == 0 && rows != 64 && rows != 1) continue; /* none live: enough at two sizes */
                    const group_case c = {rows, live, E, draw, shapes[shape++ % 7]};
                    run_group_case(c);
                }
    check_refusals();
    /* moe, form, bias, add */
    const int kinds[][4] = {{0, BMC_H_HALVES, 1, 0}, {1, BMC_H_HALVES, 1, 0}, {0, BMC_H_HALVES, 0, 0},
                            {0, BMC_H_PARTS, 1, 0},  {1, BMC_H_PARTS, 1, 0},  {1, BMC_H_PARTS, 0, 1},
                            {0, BMC_H_PARTS, 1, 1}};
    const int form_rows[] = {1, 3, 64, 256, 1000};
    for (int rows : form_rows)
        for (int live : {rows, rows - (rows / 8 > 1 ? rows / 8 : 1)})
            for (int k = 0; k < (int)(sizeof kinds / sizeof kinds[0]); k++) {
                /* f16 for the third and last kinds (the others are bf16, as the released models) */
                const int act = k == 2 || k == 6 ? BMC_F16 : BMC_BF16;
                const form_case c = {rows, live, act, kinds[k][0], kinds[k][1], kinds[k][2], kinds[k][3]};
                run_form_case(c);
            }
    time_rows(64);
    time_rows(256);
    time_rows(1024);
    time_forms(64);
    time_forms(256);
    time_forms(1024);
    return dev_summary("dev_norm_route");
}
