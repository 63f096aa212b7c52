/* bm-bench: decode and prefill speed of a BlackMamba model, next to the
 * floors the hardware sets, measured in the same run.
 *
 *   bm-bench --dims 1.5B|2.8B [--backend cpu|cuda] [--dtype bf16|f16|f32]
 *            [--threads N] [--batch LIST] [--prompt LIST] [--steps N]
 *   bm-bench MODEL_DIR [same options]
 *
 * --dims builds a random-weight model at the released dimensions in memory
 * (no files). Reports: load time; GPU memory used; state bytes; decode time
 * per step at each batch size (default 1,4,16,64,256,1024 on CUDA; a step here is what a generation loop does:
 * advance the state, compute logits, choose the next token greedily, get it
 * to the host) and, at batch 1, the bytes a step must read (every Mamba
 * weight, the router and one expert per MoE layer, one embedding row, the
 * LM head, the state read and written) as a share of the memory bandwidth
 * measured here; prefill tokens/s for each prompt length and the FLOPs it
 * must do as a share of the measured bf16 GEMM rate (CUDA) or nothing (CPU:
 * the CPU share is of memory read bandwidth, decode only). The table is last.
 * On the CPU (--backend cpu) the run is --reps rounds (default 5) of [read
 * bandwidth, decode at batch 1 (--steps, default 32), prefill of each
 * --prompt length (default 512), read bandwidth], each decode figure as a
 * share of the bandwidth measured around it, and a table of medians.
 * On CUDA a second table gives, for each batch size, the aggregate tokens/s,
 * ms/step, which decode path ran (GEMV or rows), and the step's floors: the
 * bytes it must move (the weights it actually read, counting the experts its
 * tokens chose, plus each stream's state read and written) at the measured
 * copy bandwidth, and its FLOPs at the measured GEMM rate. --prefill-batch
 * SxL (default 64x128) times bm_prefill_batch of S prompts of L tokens
 * against one bm_prefill each; --prompt 0 skips the prefill figures. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "blackmamba.h"
#include "model.h"
#include "../test/test_cuda_random.h"
#ifdef BM_WITH_CUDA
#include "bmcuda.h"
#endif

#define MAX_LIST 16

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static int parse_list(const char *s, int *out) {
    int n = 0;
    while (s && *s && n < MAX_LIST) {
        out[n++] = atoi(s);
        s = strchr(s, ',');
        if (s) s++;
    }
    return n;
}

static void usage(void) {
    fprintf(stderr, "usage: bm-bench --dims 1.5B|2.8B [--backend cpu|cuda] [--dtype bf16|f16|f32] [--threads N]\n"
                    "                [--batch LIST] [--prompt LIST] [--steps N] [--reps N (CPU rounds, 5)]\n"
                    "                [--prefill-batch SxL]\n"
                    "       bm-bench MODEL_DIR [same options]\n");
    exit(2);
}

/* ---- what a token must touch ----------------------------------------------- */

typedef struct counts {
    double step_bytes;   /* bytes one decode step at batch 1 must move */
    double flops_token;  /* prefill FLOPs per token (LM head excluded) */
    double head_flops;   /* the LM head for one row */
    /* a step of n streams that reads `pairs` (MoE layer, expert) weights:
     * fixed_bytes + pairs * expert_bytes + n * stream_bytes */
    double fixed_bytes, expert_bytes, stream_bytes;
    int moe_layers, experts; /* MoE layers (2+ experts) and experts in each */
} counts;

static double counts_pairs_one(const counts *k) { return k->moe_layers; }

static double step_bytes_n(const counts *k, int n, double pairs) {
    return k->fixed_bytes + pairs * k->expert_bytes + n * k->stream_bytes;
}

/* (MoE layer, expert) pairs a step of n streams is expected to read when
 * routing spreads evenly: E (1 - (1 - 1/E)^n) per layer. */
static double expected_pairs(const counts *k, int n) {
    if (k->moe_layers == 0) return 0;
    const double E = k->experts;
    double miss = 1.0;
    for (int i = 0; i < n; i++) miss *= 1.0 - 1.0 / E;
    return k->moe_layers * E * (1.0 - miss);
}

static counts count_work(const bm_model *m, double weight_elem_bytes) {
    const bmi_config *c = &m->config;
    const double d = c->d_model, di = c->d_inner, N = c->d_state, R = c->dt_rank, K = c->d_conv;
    const double F = c->ffn_hidden, g = c->swiglu ? 2 : 1, V = c->vocab_size;
    counts k;
    memset(&k, 0, sizeof k);
    for (int i = 0; i < c->n_layers; i++) {
        const bmi_layer_config *lc = &c->layers[i];
        k.step_bytes += d * 4; /* norm */
        k.fixed_bytes += d * 4;
        if (lc->has_mamba) {
            double mats = 2 * di * d + (R + 2 * N) * di + di * R + d * di;
            k.step_bytes += mats * weight_elem_bytes + (di * K + di * 3 + di * N) * 4;
            k.fixed_bytes += mats * weight_elem_bytes + (di * K + di * 3 + di * N) * 4;
            k.flops_token += 2 * mats + 10 * di * N; /* matrices, and the scan's few operations per state entry */
        }
        if (lc->n_experts) {
            double expert = g * F * d + d * F, router = lc->n_experts >= 2 ? lc->n_experts * d : 0;
            k.step_bytes += expert * weight_elem_bytes + router * 4;
            k.fixed_bytes += router * 4;
            if (lc->n_experts >= 2) {
                k.expert_bytes = expert * weight_elem_bytes;
                k.moe_layers++;
                k.experts = lc->n_experts;
            } else {
                k.fixed_bytes += expert * weight_elem_bytes; /* a dense MLP */
            }
            k.flops_token += 2 * (expert + router);
        }
    }
    k.step_bytes += d * weight_elem_bytes + V * d * weight_elem_bytes + 2 * d * 4; /* embedding row, head, final norm */
    k.step_bytes += 2.0 * (double)m->state_floats * 4;                            /* state read and written */
    k.fixed_bytes += V * d * weight_elem_bytes + 2 * d * 4;
    k.stream_bytes = d * weight_elem_bytes + 2.0 * (double)m->state_floats * 4;
    k.head_flops = 2 * V * d;
    return k;
}

/* ---- CPU read bandwidth ------------------------------------------------------ */

typedef struct read_job {
    const uint64_t *p;
    size_t n;
    uint64_t sum;
} read_job;

static void *read_worker(void *arg) {
    read_job *j = (read_job *)arg;
    uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    for (size_t i = 0; i + 4 <= j->n; i += 4) {
        s0 += j->p[i];
        s1 += j->p[i + 1];
        s2 += j->p[i + 2];
        s3 += j->p[i + 3];
    }
    j->sum = s0 + s1 + s2 + s3;
    return NULL;
}

/* Bytes per second read by `threads` threads summing a 2 GiB buffer. */
static double cpu_read_bandwidth(int threads) {
    const size_t bytes = (size_t)2 << 30, words = bytes / 8;
    uint64_t *buf = (uint64_t *)malloc(bytes);
    if (!buf) return 0;
    for (size_t i = 0; i < words; i++) buf[i] = i * 0x9E3779B97F4A7C15ull;
    if (threads < 1) threads = 1;
    if (threads > 256) threads = 256;
    double best = 0;
    for (int rep = 0; rep < 5; rep++) {
        pthread_t t[256];
        read_job jobs[256];
        double t0 = now();
        for (int i = 0; i < threads; i++) {
            jobs[i].p = buf + words / threads * i;
            jobs[i].n = words / threads;
            pthread_create(&t[i], NULL, read_worker, &jobs[i]);
        }
        uint64_t sum = 0;
        for (int i = 0; i < threads; i++) {
            pthread_join(t[i], NULL);
            sum += jobs[i].sum;
        }
        double bw = (double)bytes / (now() - t0);
        if (bw > best && sum != 1) best = bw;
    }
    free(buf);
    return best;
}

/* ---- CPU rounds ----------------------------------------------------------------- */

/* The CPU figures, on a machine whose bandwidth and free cores change from
 * one minute to the next: `reps` rounds of [read bandwidth, decode at batch
 * 1, prefill at each prompt length, read bandwidth], each decode figure set
 * against the bandwidth measured around it; then the medians. */
static int median_index(int n) { return n / 2; }

static int cpu_rounds(bm_model *m, const counts *work, int threads, int reps, int steps, const int *prompts,
                      int n_prompts, int V) {
    enum { MAX_REPS = 64 };
    if (reps < 1) reps = 1;
    if (reps > MAX_REPS) reps = MAX_REPS;
    bm_session *s = NULL;
    bm_state *st = NULL;
    bm_status status;
    if ((status = bm_session_new(m, NULL, &s)) || (status = bm_state_new(m, &st))) {
        fprintf(stderr, "bm-bench: %s\n", bm_last_error());
        return 1;
    }
    bm_sampler_params greedy;
    bm_sampler_params_init(&greedy);
    greedy.temperature = 0;
    greedy.repeat_penalty = 1;
    float *logits = (float *)malloc((size_t)V * sizeof(float));
    static double bw[MAX_REPS], dec[MAX_REPS], share[MAX_REPS], pre[MAX_LIST][MAX_REPS];
    printf("\nCPU rounds (%d threads): read bandwidth before/after, decode batch 1, prefill\n", threads);
    for (int r = 0; r < reps; r++) {
        double bw0 = cpu_read_bandwidth(threads);
        /* decode: a short prompt, one warm-up step, then `steps` greedy steps */
        int32_t prompt8[8] = {1, 2, 3, 4, 5, 6, 7, 8}, tok = 17;
        uint64_t rng = 1;
        bm_state_reset(st);
        bm_prefill(s, st, prompt8, 8, NULL);
        bm_state *one[1] = {st};
        bm_step_batch_sample(s, one, &tok, 1, &greedy, &rng, &tok);
        double t0 = now();
        for (int i = 0; i < steps; i++)
            if ((status = bm_step_batch_sample(s, one, &tok, 1, &greedy, &rng, &tok))) {
                fprintf(stderr, "bm-bench: decode: %s\n", bm_last_error());
                return 1;
            }
        dec[r] = steps / (now() - t0);
        char pre_text[256] = "";
        for (int pi = 0; pi < n_prompts; pi++) {
            const int L = prompts[pi] > 0 ? prompts[pi] : 1;
            int32_t *prompt = (int32_t *)malloc((size_t)L * sizeof(int32_t));
            for (int i = 0; i < L; i++) prompt[i] = (int32_t)((i * 7919u + 13u) % (unsigned)V);
            bm_state_reset(st);
            t0 = now();
            if ((status = bm_prefill(s, st, prompt, (size_t)L, logits))) {
                fprintf(stderr, "bm-bench: prefill: %s\n", bm_last_error());
                return 1;
            }
            pre[pi][r] = L / (now() - t0);
            size_t used = strlen(pre_text);
            snprintf(pre_text + used, sizeof pre_text - used, ", prefill %d: %.1f tok/s", L, pre[pi][r]);
            free(prompt);
        }
        double bw1 = cpu_read_bandwidth(threads);
        bw[r] = 0.5 * (bw0 + bw1);
        share[r] = 100.0 * work->step_bytes * dec[r] / bw[r];
        printf("round %d: read %.1f / %.1f GB/s, decode %.2f tok/s (%.0f%% of the read floor %.1f tok/s)%s\n", r + 1,
               bw0 / 1e9, bw1 / 1e9, dec[r], share[r], bw[r] / work->step_bytes, pre_text);
        fflush(stdout);
    }
    qsort(bw, (size_t)reps, sizeof bw[0], cmp_double);
    qsort(dec, (size_t)reps, sizeof dec[0], cmp_double);
    qsort(share, (size_t)reps, sizeof share[0], cmp_double);
    int mi = median_index(reps);
    printf("\n| %-34s | %-14s | %-38s |\n", "CPU, medians of rounds", "measured", "floor / share");
    printf("|%s|%s|%s|\n", "------------------------------------", "----------------",
           "----------------------------------------");
    char text[96];
    snprintf(text, sizeof text, "%.2f GB/step at %.1f GB/s: %.0f%% of BW", work->step_bytes / 1e9, bw[mi] / 1e9,
             share[mi]);
    printf("| %-34s | %14.2f | %-38s |\n", "decode batch 1 (tokens/s)", dec[mi], text);
    for (int pi = 0; pi < n_prompts; pi++) {
        qsort(pre[pi], (size_t)reps, sizeof pre[pi][0], cmp_double);
        char label[64];
        snprintf(label, sizeof label, "prefill %d tokens (tokens/s)", prompts[pi]);
        snprintf(text, sizeof text, "range %.0f..%.0f over %d rounds", pre[pi][0], pre[pi][reps - 1], reps);
        printf("| %-34s | %14.1f | %-38s |\n", label, pre[pi][mi], text);
    }
    snprintf(text, sizeof text, "range %.1f..%.1f GB/s", bw[0] / 1e9, bw[reps - 1] / 1e9);
    printf("| %-34s | %14.1f | %-38s |\n", "memory read bandwidth (GB/s)", bw[mi] / 1e9, text);
    free(logits);
    bm_state_free(st);
    bm_session_free(s);
    return 0;
}

/* ---- main ------------------------------------------------------------------------ */

int main(int argc, char **argv) {
    const char *dims = NULL, *dir = NULL, *backend_name = "cuda", *dtype = "bf16";
    int threads = 0, batches[MAX_LIST] = {1}, n_batches = 1, prompts[MAX_LIST] = {512, 2048}, n_prompts = 2;
    int steps = 0, cpu_reps = 5, prompts_given = 0, batches_given = 0, pb_streams = 64, pb_len = 128;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--dims") && v) dims = v, i++;
        else if (!strcmp(a, "--backend") && v) backend_name = v, i++;
        else if (!strcmp(a, "--dtype") && v) dtype = v, i++;
        else if (!strcmp(a, "--threads") && v) threads = atoi(v), i++;
        else if (!strcmp(a, "--batch") && v) n_batches = parse_list(v, batches), batches_given = 1, i++;
        else if (!strcmp(a, "--prefill-batch") && v) {
            pb_streams = atoi(v), i++;
            const char *x = strchr(v, 'x');
            pb_len = x ? atoi(x + 1) : 128;
        }
        else if (!strcmp(a, "--prompt") && v) n_prompts = parse_list(v, prompts), prompts_given = 1, i++;
        else if (!strcmp(a, "--reps") && v) cpu_reps = atoi(v), i++;
        else if (!strcmp(a, "--steps") && v) steps = atoi(v), i++;
        else if (a[0] != '-' && !dir) dir = a;
        else usage();
    }
    if (!dims == !dir) usage();
    bm_backend backend = !strcmp(backend_name, "cpu") ? BM_BACKEND_CPU : BM_BACKEND_CUDA;
    const int cuda = backend == BM_BACKEND_CUDA;
#ifndef BM_WITH_CUDA
    if (cuda) {
        fprintf(stderr, "bm-bench: this build has no CUDA backend; use --backend cpu\n");
        return 1;
    }
#endif
    if (!steps) steps = cuda ? 200 : 32;
    if (!cuda && !prompts_given) n_prompts = 1; /* 512 */
    if (n_prompts == 1 && prompts[0] <= 0) n_prompts = 0; /* --prompt 0: no prefill figures */
    if (cuda && !batches_given) {
        static const int many[] = {1, 4, 16, 64, 256, 1024};
        n_batches = 6;
        memcpy(batches, many, sizeof many);
    }
    char device[128] = "CPU";
#ifdef BM_WITH_CUDA
    size_t free_before = 0, free_after = 0, total = 0;
    if (cuda && bmi_cuda_device_info(0, device, sizeof device, &free_before, &total)) {
        fprintf(stderr, "bm-bench: %s\n", bm_last_error());
        return 1;
    }
#endif

    /* the model */
    random_weights w;
    memset(&w, 0, sizeof w);
    bm_model *m = NULL;
    double load_s = 0;
    bm_status st;
    if (dims) {
        bmi_random_config rc;
        if ((st = bmi_random_config_preset(&rc, dims))) {
            fprintf(stderr, "bm-bench: %s\n", bm_last_error());
            return 1;
        }
        rc.dtype = !strcmp(dtype, "f16") ? BMI_F16 : !strcmp(dtype, "f32") ? BMI_F32 : BMI_BF16;
        double t0 = now();
        if ((st = random_weights_make(&rc, 16, &w))) {
            fprintf(stderr, "bm-bench: %s\n", bm_last_error());
            return 1;
        }
        printf("random %s weights (%s) made in %.1f s\n", dims, dtype, now() - t0);
        t0 = now();
        st = random_model_create(&w, backend, threads, &m);
        load_s = now() - t0;
    } else {
        bm_model_params p;
        bm_model_params_init(&p);
        p.backend = backend;
        p.n_threads = threads;
        double t0 = now();
        st = bm_model_load(dir, &p, &m);
        load_s = now() - t0;
    }
    if (st) {
        fprintf(stderr, "bm-bench: %s\n", bm_last_error());
        return 1;
    }
    bm_model_info info;
    memset(&info, 0, sizeof info);
    info.size = sizeof info;
    bm_model_get_info(m, &info);
    /* the CUDA backend holds every matrix in 16 bits; the CPU reads them as stored */
    const double elem = cuda || info.weight_dtype != 0 ? 2.0 : 4.0;
    const counts work = count_work(m, elem);
    printf("model: %d layers, d %d, %llu params (%llu active), state %llu bytes, backend %s, device %s\n",
           info.n_layers, info.d_model, (unsigned long long)info.n_params, (unsigned long long)info.n_active_params,
           (unsigned long long)info.state_bytes, cuda ? "cuda" : "cpu", device);

    if (!cuda) { /* the CPU: rounds of bandwidth, decode and prefill, then medians */
        int rc = cpu_rounds(m, &work, threads ? threads : m->n_threads, cpu_reps, steps, prompts, n_prompts,
                            info.vocab_size);
        bm_model_free(m);
        random_weights_free(&w);
        return rc;
    }

    /* the ceilings, measured now */
    double bandwidth = 0, gemm_rate = 0;
#ifdef BM_WITH_CUDA
    if (cuda) {
        if (bmi_cuda_measure_copy(0, (size_t)1 << 30, 20, &bandwidth) ||
            bmi_cuda_measure_gemm(0, 8192, 8192, 8192, 10, &gemm_rate))
            fprintf(stderr, "bm-bench: measuring the device: %s\n", bm_last_error());
    }
#endif
    if (!cuda) bandwidth = cpu_read_bandwidth(threads ? threads : m->n_threads);
    printf("measured: %s bandwidth %.0f GB/s%s", cuda ? "device-to-device copy" : "memory read",
           bandwidth / 1e9, cuda ? " (read + written)" : "");
    if (cuda) printf(", bf16 GEMM 8192^3 %.0f TFLOP/s", gemm_rate / 1e12);
    printf("\n");

    bm_session *s = NULL;
    if ((st = bm_session_new(m, NULL, &s))) {
        fprintf(stderr, "bm-bench: %s\n", bm_last_error());
        return 1;
    }
    const int V = info.vocab_size;

    /* decode, for each batch size: streams with different 8-token
     * histories (one batched prefill), then greedy steps of all of them */
    double decode_ms[MAX_LIST], pairs_read[MAX_LIST];
    int row_path[MAX_LIST];
    for (int bi = 0; bi < n_batches; bi++) {
        const int B = batches[bi] > 0 ? batches[bi] : 1;
        bm_state **states = (bm_state **)calloc((size_t)B, sizeof *states);
        int32_t *tok = (int32_t *)malloc((size_t)B * sizeof(int32_t));
        uint64_t *rngs = (uint64_t *)malloc((size_t)B * sizeof(uint64_t));
        int32_t *hist = (int32_t *)malloc((size_t)B * 8 * sizeof(int32_t));
        const int32_t **hp = (const int32_t **)malloc((size_t)B * sizeof *hp);
        size_t *hl = (size_t *)malloc((size_t)B * sizeof *hl);
        for (int i = 0; i < B; i++) {
            if ((st = bm_state_new(m, &states[i]))) {
                fprintf(stderr, "bm-bench: %d states: %s\n", B, bm_last_error());
                return 1;
            }
            for (int k = 0; k < 8; k++) hist[i * 8 + k] = (int32_t)(((unsigned)i * 7919u + (unsigned)k * 104729u + 1u) % (unsigned)V);
            hp[i] = hist + i * 8;
            hl[i] = 8;
            tok[i] = (int32_t)((17u + (unsigned)i * 31u) % (unsigned)V);
            rngs[i] = (uint64_t)i;
        }
        if ((st = bm_prefill_batch(s, states, hp, hl, (size_t)B, NULL))) {
            fprintf(stderr, "bm-bench: prefill of the histories: %s\n", bm_last_error());
            return 1;
        }
        bm_sampler_params greedy;
        bm_sampler_params_init(&greedy);
        greedy.temperature = 0;
        greedy.repeat_penalty = 1;
        const int warm = cuda ? 10 : 1;
        const int n_steps = B >= 256 && steps > 100 ? 100 : steps;
        double t0 = 0;
        for (int i = 0; i < warm + n_steps; i++) {
            if (i == warm) t0 = now();
            if ((st = bm_step_batch_sample(s, states, tok, (size_t)B, &greedy, rngs, tok))) {
                fprintf(stderr, "bm-bench: decode: %s\n", bm_last_error());
                return 1;
            }
        }
        decode_ms[bi] = (now() - t0) / n_steps * 1e3;
        pairs_read[bi] = B == 1 ? counts_pairs_one(&work) : expected_pairs(&work, B);
        row_path[bi] = 0;
#ifdef BM_WITH_CUDA
        {
            int pairs = -1, rows = 0;
            if (bmi_cuda_last_step_experts(s, &pairs, &rows) == BM_OK && pairs >= 0) {
                pairs_read[bi] = pairs; /* the last step's own routing */
                row_path[bi] = rows > 0;
            }
        }
#endif
        printf("decode batch %4d (%s path): %.3f ms/step, %.4f ms/token, %.0f tokens/s; %.0f (layer, expert) pairs "
               "read%s\n",
               B, row_path[bi] ? "row" : "GEMV", decode_ms[bi], decode_ms[bi] / B, B * 1e3 / decode_ms[bi],
               pairs_read[bi], row_path[bi] ? "" : " (expected under even routing)");
        if (B == 1) {
            /* The same steps without the LM head and sampling, queued back to
             * back (no logits: nothing waits for the host): the state update
             * alone. The final step asks for logits only to wait for the rest. */
            float *row = (float *)malloc((size_t)V * sizeof(float));
            t0 = now();
            for (int i = 0; i < steps; i++)
                if ((st = bm_step(s, states[0], tok[0], i + 1 == steps ? row : NULL))) break;
            printf("decode batch   1, state only (no LM head, queued): %.3f ms/step\n", (now() - t0) / steps * 1e3);
            free(row);
        }
        for (int i = 0; i < B; i++) bm_state_free(states[i]);
        free(states);
        free(tok);
        free(rngs);
        free(hist);
        free(hp);
        free(hl);
    }

    /* batched prefill: pb_streams prompts of pb_len tokens in one call, and
     * the same prompts one bm_prefill each */
    double pb_batched = 0, pb_single = 0;
    if (cuda && pb_streams > 0 && pb_len > 0) {
        bm_state **states = (bm_state **)calloc((size_t)pb_streams, sizeof *states);
        int32_t *toks = (int32_t *)malloc((size_t)pb_streams * pb_len * sizeof(int32_t));
        const int32_t **pp = (const int32_t **)malloc((size_t)pb_streams * sizeof *pp);
        size_t *pl = (size_t *)malloc((size_t)pb_streams * sizeof *pl);
        for (int i = 0; i < pb_streams; i++) {
            bm_state_new(m, &states[i]);
            for (int k = 0; k < pb_len; k++) toks[(size_t)i * pb_len + k] = (int32_t)(((unsigned)i * 131u + (unsigned)k * 7919u) % (unsigned)V);
            pp[i] = toks + (size_t)i * pb_len;
            pl[i] = (size_t)pb_len;
        }
        double tb[5], ts[5];
        for (int r = -1; r < 5; r++) {
            for (int i = 0; i < pb_streams; i++) bm_state_reset(states[i]);
            double t0 = now();
            if ((st = bm_prefill_batch(s, states, pp, pl, (size_t)pb_streams, NULL))) {
                fprintf(stderr, "bm-bench: batched prefill: %s\n", bm_last_error());
                return 1;
            }
            if (r >= 0) tb[r] = now() - t0;
            for (int i = 0; i < pb_streams; i++) bm_state_reset(states[i]);
            t0 = now();
            for (int i = 0; i < pb_streams; i++)
                if ((st = bm_prefill(s, states[i], pp[i], pl[i], NULL))) {
                    fprintf(stderr, "bm-bench: prefill: %s\n", bm_last_error());
                    return 1;
                }
            if (r >= 0) ts[r] = now() - t0;
        }
        qsort(tb, 5, sizeof tb[0], cmp_double);
        qsort(ts, 5, sizeof ts[0], cmp_double);
        pb_batched = (double)pb_streams * pb_len / tb[2];
        pb_single = (double)pb_streams * pb_len / ts[2];
        printf("prefill of %d prompts x %d tokens: bm_prefill_batch %.2f ms (%.0f tokens/s), one bm_prefill each "
               "%.2f ms (%.0f tokens/s)\n",
               pb_streams, pb_len, tb[2] * 1e3, pb_batched, ts[2] * 1e3, pb_single);
        for (int i = 0; i < pb_streams; i++) bm_state_free(states[i]);
        free(states);
        free(toks);
        free(pp);
        free(pl);
    }

    /* prefill, for each prompt length */
    double prefill_tps[MAX_LIST];
    bm_state *ps = NULL;
    bm_state_new(m, &ps);
    float *logits = (float *)malloc((size_t)V * sizeof(float));
    for (int pi = 0; pi < n_prompts; pi++) {
        const int L = prompts[pi] > 0 ? prompts[pi] : 1;
        int32_t *prompt = (int32_t *)malloc((size_t)L * sizeof(int32_t));
        for (int i = 0; i < L; i++) prompt[i] = (int32_t)((i * 7919u + 13u) % (unsigned)V);
        const int reps = cuda ? 7 : 1;
        double t[16];
        for (int r = -1; r < reps; r++) { /* one warm-up: scratch, heuristics */
            bm_state_reset(ps);
            double t0 = now();
            if ((st = bm_prefill(s, ps, prompt, (size_t)L, logits))) {
                fprintf(stderr, "bm-bench: prefill: %s\n", bm_last_error());
                return 1;
            }
            if (r >= 0) t[r] = now() - t0;
        }
        qsort(t, (size_t)reps, sizeof t[0], cmp_double);
        prefill_tps[pi] = L / t[reps / 2];
        printf("prefill %5d tokens: %.2f ms, %.0f tokens/s\n", L, t[reps / 2] * 1e3, prefill_tps[pi]);
        free(prompt);
    }
    free(logits);
    bm_state_free(ps);
#ifdef BM_WITH_CUDA
    if (cuda) bmi_cuda_device_info(0, NULL, 0, &free_after, &total);
#endif

    /* the table */
    printf("\n| %-34s | %-14s | %-38s |\n", cuda ? device : "CPU", "measured", "floor / share");
    printf("|%s|%s|%s|\n", "------------------------------------", "----------------",
           "----------------------------------------");
    for (int bi = 0; bi < n_batches; bi++) {
        char label[64], share[96] = "";
        snprintf(label, sizeof label, "decode batch %d (ms/token)", batches[bi]);
        if (batches[bi] == 1 && bandwidth > 0) {
            /* the copy's bandwidth counts bytes read and written, as step_bytes does */
            double floor_ms = work.step_bytes / bandwidth * 1e3;
            snprintf(share, sizeof share, "%.3f ms (%.2f GB/step), %.0f%% of BW", floor_ms, work.step_bytes / 1e9,
                     100.0 * floor_ms / decode_ms[bi]);
        }
        printf("| %-34s | %14.4f | %-38s |\n", label, decode_ms[bi] / batches[bi], share);
    }
    /* many streams: aggregate rate, step time, and the two floors of a step:
     * bytes (weights actually read: every Mamba weight, the LM head, the
     * experts the step's tokens chose; each stream's embedding row and state
     * read and written) at the measured copy bandwidth, and FLOPs at the
     * measured GEMM rate */
    if (cuda && bandwidth > 0) {
        printf("\n| %-7s | %-4s | %12s | %9s | %26s | %6s | %13s |\n", "streams", "path", "tokens/s", "ms/step",
               "bandwidth floor (GB/step)", "of BW", "compute floor");
        printf("|---------|------|--------------|-----------|----------------------------|--------|---------------|\n");
        for (int bi = 0; bi < n_batches; bi++) {
            const int B = batches[bi];
            const double bytes = step_bytes_n(&work, B, pairs_read[bi]);
            const double floor_ms = bytes / bandwidth * 1e3;
            const double flop_ms = gemm_rate > 0 ? B * (work.flops_token + work.head_flops) / gemm_rate * 1e3 : 0;
            char fl[64];
            snprintf(fl, sizeof fl, "%.3f ms (%.2f)", floor_ms, bytes / 1e9);
            printf("| %7d | %-4s | %12.0f | %9.3f | %26s | %5.0f%% | %10.3f ms |\n", B, row_path[bi] ? "rows" : "GEMV",
                   B * 1e3 / decode_ms[bi], decode_ms[bi], fl, 100.0 * floor_ms / decode_ms[bi], flop_ms);
        }
        printf("\n");
    }
    if (pb_batched > 0) {
        char label[64], rest[96];
        snprintf(label, sizeof label, "prefill_batch %dx%d (tokens/s)", pb_streams, pb_len);
        snprintf(rest, sizeof rest, "one bm_prefill each: %.0f tokens/s", pb_single);
        printf("| %-34s | %14.0f | %-38s |\n", label, pb_batched, rest);
    }
    for (int pi = 0; pi < n_prompts; pi++) {
        char label[64], share[96] = "";
        snprintf(label, sizeof label, "prefill %d tokens (tokens/s)", prompts[pi]);
        if (cuda && gemm_rate > 0) {
            double flops = work.flops_token * prompts[pi] + work.head_flops;
            double floor_s = flops / gemm_rate;
            snprintf(share, sizeof share, "%.0f tok/s at GEMM rate, %.0f%%", prompts[pi] / floor_s,
                     100.0 * floor_s * prefill_tps[pi] / prompts[pi]);
        }
        printf("| %-34s | %14.0f | %-38s |\n", label, prefill_tps[pi], share);
    }
    printf("| %-34s | %14.2f | %-38s |\n", "load (s)", load_s, dims ? "in-memory weights, bind + upload" : "from files");
#ifdef BM_WITH_CUDA
    if (cuda) {
        char rest[96];
        double used = (double)free_before - (double)free_after, weights = (double)bmi_cuda_weight_bytes(m);
        snprintf(rest, sizeof rest, "weights %.2f GB + %.2f GB", weights / 1e9, (used - weights) / 1e9);
        printf("| %-34s | %14.2f | %-38s |\n", "GPU memory used (GB)", used / 1e9, rest);
    }
#endif
    printf("| %-34s | %14llu | %-38s |\n", "state bytes", (unsigned long long)info.state_bytes, "");
    bm_session_free(s);
    bm_model_free(m);
    random_weights_free(&w);
    return 0;
}
