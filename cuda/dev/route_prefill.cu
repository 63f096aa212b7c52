/* Harness: prefill routing (cuda/route_prefill.cu): top-1 and gate per
 * token against a double CPU version (ties by lowest index), and the stable
 * grouping by expert (order within an expert = token order); then its time
 * for 2048 tokens at the 2.8B width. */
#include "dev.cuh"

int main(void) {
    if (dev_no_gpu("dev_route_prefill")) return 0;
    dev_seed();
    const int d = 1472, E = 8;
    const int Ts[] = {1, 33, 2048};
    for (int T : Ts) {
        float *x = (float *)malloc((size_t)T * d * 4), *w = (float *)malloc((size_t)E * d * 4), *b = (float *)malloc(E * 4);
        dev_fill(x, (size_t)T * d, 1.0, 0.0);
        dev_fill(w, (size_t)E * d, 0.05, 0.0);
        dev_fill(b, E, 0.1, 0.0);
        float *d_x = dev_upload(x, (size_t)T * d), *d_w = dev_upload(w, (size_t)E * d), *d_b = dev_upload(b, E);
        int *d_expert = dev_alloc_poisoned<int>(T), *d_order = dev_alloc_poisoned<int>(T);
        int *d_start = dev_alloc_poisoned<int>(E + 1);
        float *d_gate = dev_alloc_poisoned<float>(T);
        int *h_start = NULL;
        DEV_CUDA(cudaMallocHost((void **)&h_start, (E + 1) * 4));
        DEV_CUDA(bmc_route_prefill(d_x, T, d, d_w, d_b, E, d_expert, d_gate, d_order, d_start, h_start, 0));
        DEV_CUDA(cudaDeviceSynchronize());
        int *expert = (int *)malloc(T * 4), *order = (int *)malloc(T * 4);
        float *gate = (float *)malloc(T * 4);
        double *gate_ref = (double *)malloc(T * 8);
        dev_download(expert, d_expert, T);
        dev_download(order, d_order, T);
        dev_download(gate, d_gate, T);
        int wrong = 0;
        for (int t = 0; t < T; t++) {
            int best = 0;
            double bl = 0;
            for (int e = 0; e < E; e++) {
                double l = b[e];
                for (int k = 0; k < d; k++) l += (double)w[e * d + k] * x[(size_t)t * d + k];
                if (e == 0 || l > bl) best = e, bl = l;
            }
            wrong += expert[t] != best;
            gate_ref[t] = 1 / (1 + exp(-bl));
        }
        DEV_CHECK(wrong == 0, "T %d: %d tokens routed differently", T, wrong);
        double eg = dev_rel_error(gate, gate_ref, T);
        DEV_CHECK(eg < 1e-5, "T %d: gate error %.3e", T, eg);
        int ok = h_start[0] == 0 && h_start[E] == T;
        for (int e = 0; e < E && ok; e++)
            for (int i = h_start[e]; i < h_start[e + 1]; i++) {
                ok &= expert[order[i]] == e;
                if (i > h_start[e]) ok &= order[i] > order[i - 1]; /* stable */
            }
        DEV_CHECK(ok, "T %d: grouping is wrong or unstable", T);
        if (T == 2048) {
            double us = dev_time_us(20, [&](int) { bmc_route_prefill(d_x, T, d, d_w, d_b, E, d_expert, d_gate, d_order, d_start, h_start, 0); });
            printf("T 2048: %.1f us\n", us);
        }
        cudaFree(d_x); cudaFree(d_w); cudaFree(d_b); cudaFree(d_expert); cudaFree(d_order); cudaFree(d_start);
        cudaFree(d_gate); cudaFreeHost(h_start);
        free(x); free(w); free(b); free(expert); free(order); free(gate); free(gate_ref);
    }
    return dev_summary("dev_route_prefill");
}
