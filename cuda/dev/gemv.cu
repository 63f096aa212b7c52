/* Harness: the decode GEMV (cuda/gemv.cu) at the 2.8B model's shapes.
 * Checks plain, gated (fc1) and batch-4 products against a double CPU
 * product of the same bf16 weights, then times each shape at batch 1 for
 * every ksplit and reports the achieved weight bandwidth, then per launch
 * of 20 back to back with PDL, as in the step graph. The weights are
 * rotated over several copies so the timing reads DRAM, not L2. */
#include "dev.cuh"

typedef struct shape {
    const char *name;
    int rows, K, epilogue;
} shape;

static void cpu_gemv(const uint16_t *W, const float *x, int rows, int K, int nb, int gated, double *y) {
    const int out_rows = gated ? rows / 2 : rows;
    for (int b = 0; b < nb; b++)
        for (int r = 0; r < out_rows; r++) {
            double acc = 0, acc2 = 0;
            for (int k = 0; k < K; k++) acc += (double)dev_from_bf16(W[(size_t)r * K + k]) * x[(size_t)b * K + k];
            if (gated) {
                for (int k = 0; k < K; k++)
                    acc2 += (double)dev_from_bf16(W[(size_t)(r + out_rows) * K + k]) * x[(size_t)b * K + k];
                acc = 0.5 * acc * (1.0 + erf(acc / sqrt(2.0))) * acc2;
            }
            y[(size_t)b * out_rows + r] = acc;
        }
}

int main(void) {
    if (dev_no_gpu("dev_gemv")) return 0;
    dev_seed();
    int sms = 0;
    DEV_CUDA(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
    const shape shapes[] = {{"in_proj 5888x1472", 5888, 1472, BMC_EPI_STORE},
                            {"x_proj 124x2944", 124, 2944, BMC_EPI_STORE},
                            {"out_proj 1472x2944", 1472, 2944, BMC_EPI_STORE},
                            {"fc1 gated 7744x1472", 7744, 1472, BMC_EPI_GATED},
                            /* the same bytes with each warp's two rows adjacent: what the gated
                             * pairs (rows f and F+f, 11 MB apart) cost in DRAM locality */
                            {"fc1 as plain 7744x1472", 7744, 1472, BMC_EPI_STORE},
                            {"fc2 1472x3872", 1472, 3872, BMC_EPI_STORE},
                            {"lm_head 50304x1472", 50304, 1472, BMC_EPI_STORE}};
    printf("%-22s %8s %8s %8s %8s   (us at batch 1; GB/s of weights)\n", "shape", "ks=1", "ks=2", "ks=4", "ks=8");
    for (const shape &s : shapes) {
        const size_t wn = (size_t)s.rows * s.K;
        const int copies = wn * 2 > (64u << 20) ? 2 : (int)((256u << 20) / (wn * 2)) + 1;
        float *wf = (float *)malloc(wn * sizeof(float));
        uint16_t *wh = (uint16_t *)malloc(wn * 2);
        dev_fill(wf, wn, 1.0 / sqrt((double)s.K), 0.0);
        for (size_t i = 0; i < wn; i++) wh[i] = dev_bf16(wf[i]);
        uint16_t *dw = (uint16_t *)NULL;
        DEV_CUDA(cudaMalloc((void **)&dw, wn * 2 * copies));
        for (int c = 0; c < copies; c++) DEV_CUDA(cudaMemcpy(dw + wn * c, wh, wn * 2, cudaMemcpyHostToDevice));
        const int nb_max = 4;
        float *x = (float *)malloc((size_t)nb_max * s.K * sizeof(float));
        dev_fill(x, (size_t)nb_max * s.K, 1.0, 0.0);
        float *dx = dev_upload(x, (size_t)nb_max * s.K);
        const int gated = s.epilogue == BMC_EPI_GATED, out_rows = gated ? s.rows / 2 : s.rows;
        double *ref = (double *)malloc((size_t)nb_max * out_rows * sizeof(double));
        float *got = (float *)malloc((size_t)nb_max * out_rows * sizeof(float));
        for (int nb = 1; nb <= nb_max; nb += 3) {
            cpu_gemv(wh, x, s.rows, s.K, nb, gated, ref);
            for (int ks = 1; ks <= 8; ks *= 2) {
                float *dy = dev_alloc_poisoned<float>((size_t)nb * out_rows);
                bmc_gemv_args a;
                memset(&a, 0, sizeof a);
                a.W = dw;
                a.rows = s.rows;
                a.K = s.K;
                a.nb = nb;
                a.prologue = BMC_PRO_LOAD;
                a.x = dx;
                a.ldx = s.K;
                a.epilogue = s.epilogue;
                a.y = dy;
                a.ldy = out_rows;
                DEV_CUDA(bmc_gemv(&a, BMC_BF16, ks, sms, 0, 0));
                DEV_CUDA(cudaDeviceSynchronize());
                dev_download(got, dy, (size_t)nb * out_rows);
                double e = dev_rel_error(got, ref, (size_t)nb * out_rows);
                DEV_CHECK(e < 1e-4, "%s batch %d ksplit %d: rel err %.2e", s.name, nb, ks, e);
                cudaFree(dy);
            }
        }
        printf("%-22s", s.name);
        float *dy = dev_alloc_poisoned<float>(out_rows);
        /* batch 1 over copy c of the weights (ksplit 0: bmc_gemv's choice; pdl: as in the step graph) */
        auto run = [&](int c, int ks, int pdl) {
            bmc_gemv_args a;
            memset(&a, 0, sizeof a);
            a.W = dw + wn * (c % copies);
            a.rows = s.rows;
            a.K = s.K;
            a.nb = 1;
            a.prologue = BMC_PRO_LOAD;
            a.x = dx;
            a.ldx = s.K;
            a.epilogue = s.epilogue;
            a.y = dy;
            a.ldy = out_rows;
            bmc_gemv(&a, BMC_BF16, ks, sms, 0, pdl);
        };
        for (int ks = 1; ks <= 8; ks *= 2) {
            double us = dev_time_us(50, [&](int i) { run(i, ks, 0); });
            printf(" %6.1f/%4.0f", us, wn * 2 / (us * 1e3));
        }
        { /* back to back with PDL, as in the step graph: 20 launches over
           * different copies of the weights, per launch */
            double us = dev_time_loop_us(20, 20, [&](int i) { run(i, 0, 1); });
            printf(" | chain %6.1f/%4.0f", us, wn * 2 / (us * 1e3));
        }
        printf("\n");
        cudaFree(dy);
        cudaFree(dw);
        cudaFree(dx);
        free(wf);
        free(wh);
        free(x);
        free(ref);
        free(got);
    }
    return dev_summary("dev_gemv");
}
