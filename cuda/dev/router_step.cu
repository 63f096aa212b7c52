/* Harness: the decode router (cuda/router_step.cu): residual add, RMSNorm,
 * router logits, top-1, gate and the grouping of batch rows by expert,
 * against a double CPU version, for batch 1..8 with 8 experts; then its
 * time at batch 1 (2.8B width). */
#include "dev.cuh"

int main(void) {
    if (dev_no_gpu("dev_router_step")) return 0;
    dev_seed();
    const int d = 1472, E = 8;
    for (int nb = 1; nb <= BMC_MAX_STEP_ROWS; nb++) {
        float *res = (float *)malloc((size_t)nb * d * 4), *h = (float *)malloc((size_t)nb * d * 4);
        float *w = (float *)malloc(d * 4), *rw = (float *)malloc((size_t)E * d * 4), *rb = (float *)malloc(E * 4);
        dev_fill(res, (size_t)nb * d, 1.0, 0.0);
        dev_fill(h, (size_t)nb * d, 1.0, 0.0);
        dev_fill(w, d, 0.1, 1.0);
        dev_fill(rw, (size_t)E * d, 0.05, 0.0);
        dev_fill(rb, E, 0.1, 0.0);
        float *d_res = dev_upload(res, (size_t)nb * d), *d_h = dev_upload(h, (size_t)nb * d);
        float *d_w = dev_upload(w, d), *d_rw = dev_upload(rw, (size_t)E * d), *d_rb = dev_upload(rb, E);
        float *d_res_out = dev_alloc_poisoned<float>((size_t)nb * d), *d_normed = dev_alloc_poisoned<float>((size_t)nb * d);
        float *d_gates = dev_alloc_poisoned<float>(nb);
        int *d_slots = dev_alloc_poisoned<int>(2 * BMC_MAX_STEP_ROWS + BMC_MAX_STEP_ROWS * BMC_MAX_STEP_ROWS);
        bmc_router_step_args a;
        memset(&a, 0, sizeof a);
        a.nb = nb;
        a.d = d;
        a.n_experts = E;
        a.add = 1;
        a.res_in = d_res;
        a.h_in = d_h;
        a.res_out = d_res_out;
        a.norm_w = d_w;
        a.eps = 1e-5f;
        a.normed = d_normed;
        a.router_w = d_rw;
        a.router_b = d_rb;
        a.gates = d_gates;
        a.slot_expert = d_slots;
        a.slot_count = d_slots + BMC_MAX_STEP_ROWS;
        a.slot_rows = d_slots + 2 * BMC_MAX_STEP_ROWS;
        DEV_CUDA(bmc_router_step(&a, 0, 0));
        DEV_CUDA(cudaDeviceSynchronize());
        double *normed_ref = (double *)malloc((size_t)nb * d * 8), *gate_ref = (double *)malloc(nb * 8);
        int *expert_ref = (int *)malloc(nb * 4);
        for (int b = 0; b < nb; b++) {
            double ss = 0;
            for (int k = 0; k < d; k++) {
                double v = (double)res[b * d + k] + h[b * d + k];
                ss += v * v;
            }
            double scale = 1.0 / sqrt(ss / d + 1e-5);
            for (int k = 0; k < d; k++) normed_ref[b * d + k] = ((double)res[b * d + k] + h[b * d + k]) * scale * w[k];
            int best = 0;
            double best_l = 0;
            for (int e = 0; e < E; e++) {
                double l = rb[e];
                for (int k = 0; k < d; k++) l += rw[e * d + k] * normed_ref[b * d + k];
                if (e == 0 || l > best_l) best = e, best_l = l;
            }
            expert_ref[b] = best;
            gate_ref[b] = 1 / (1 + exp(-best_l));
        }
        float *normed = (float *)malloc((size_t)nb * d * 4), *gates = (float *)malloc(nb * 4);
        int slots[2 * BMC_MAX_STEP_ROWS + BMC_MAX_STEP_ROWS * BMC_MAX_STEP_ROWS];
        dev_download(normed, d_normed, (size_t)nb * d);
        dev_download(gates, d_gates, nb);
        dev_download(slots, d_slots, 2 * BMC_MAX_STEP_ROWS + BMC_MAX_STEP_ROWS * BMC_MAX_STEP_ROWS);
        double en = dev_rel_error(normed, normed_ref, (size_t)nb * d), eg = dev_rel_error(gates, gate_ref, nb);
        DEV_CHECK(en < 1e-5 && eg < 1e-5, "batch %d: normed %.3e gates %.3e", nb, en, eg);
        /* every row appears once, in its expert's slot; slots in increasing expert order */
        int seen[BMC_MAX_STEP_ROWS] = {0}, prev = -1, ok = 1;
        for (int sl = 0; sl < BMC_MAX_STEP_ROWS; sl++) {
            int cnt = slots[BMC_MAX_STEP_ROWS + sl];
            if (cnt == 0) continue;
            int e = slots[sl];
            ok &= e > prev;
            prev = e;
            for (int i = 0; i < cnt; i++) {
                int r = slots[2 * BMC_MAX_STEP_ROWS + sl * BMC_MAX_STEP_ROWS + i];
                ok &= r >= 0 && r < nb && expert_ref[r] == e;
                if (r >= 0 && r < nb) seen[r]++;
            }
        }
        for (int b = 0; b < nb; b++) ok &= seen[b] == 1;
        DEV_CHECK(ok, "batch %d: grouping by expert is wrong", nb);
        if (nb == 1) {
            double us = dev_time_us(100, [&](int) { bmc_router_step(&a, 0, 0); });
            printf("batch 1: %.2f us\n", us);
        }
        cudaFree(d_res); cudaFree(d_h); cudaFree(d_w); cudaFree(d_rw); cudaFree(d_rb); cudaFree(d_res_out);
        cudaFree(d_normed); cudaFree(d_gates); cudaFree(d_slots);
        free(res); free(h); free(w); free(rw); free(rb); free(normed_ref); free(gate_ref); free(expert_ref);
        free(normed); free(gates);
    }
    return dev_summary("dev_router_step");
}
