/* bm-mkmodel: writes a BlackMamba model directory with random weights in the
 * published layout (config.json + pytorch_model.bin and/or
 * model.safetensors) at any dimensions, so the library can be tried, tested
 * and benchmarked without downloading a checkpoint. Run with --help. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ckpt_random.h"

static void usage(FILE *f, const char *argv0) {
    fprintf(f,
            "usage: %s OUTDIR [options]\n"
            "\n"
            "Writes OUTDIR/config.json and random weights in the published BlackMamba layout\n"
            "(same tensor names, shapes and file formats as the released checkpoints).\n"
            "OUTDIR is created if it does not exist; existing files in it are replaced.\n"
            "The same options and seed always give the same bytes.\n"
            "\n"
            "options:\n"
            "  --dims NAME       start from a preset (default tiny):\n"
            "                      tiny  d 64, layers r,4,r,4, ffn 96, vocab 512\n"
            "                      1.5B  d 1152, 30 layers r,8,... ffn 3072, vocab 50304 (2.9 GB bf16)\n"
            "                      2.8B  d 1472, 36 layers r,8,... ffn 3872, vocab 50304 (5.6 GB bf16)\n"
            "                    all: state 16, conv 4, expand 2, dt_rank ceil(d/16), swiglu\n"
            "  --d-model N       hidden size d\n"
            "  --layers CODES    comma-separated layer codes, one per layer:\n"
            "                      r   Mamba block\n"
            "                      N   MoE block with N experts (N in 2..9)\n"
            "                      1   dense MLP block\n"
            "                      rN  Mamba + parallel MoE with N experts\n"
            "                      r1  Mamba + parallel dense MLP\n"
            "                    \"\" means every layer is r (give --n-layers)\n"
            "  --n-layers N      number of layers; repeats or cuts the layer pattern\n"
            "  --ffn N           ffn_hidden_size F of each expert / dense MLP\n"
            "  --vocab N         vocabulary rows (embedding and logits)\n"
            "  --state N         state_size N\n"
            "  --conv N          conv_dimension K\n"
            "  --expand N        expansion_factor (d_inner = N * d)\n"
            "  --dtype T         f32, bf16 or f16 (default bf16, as published)\n"
            "  --format F        torch (pytorch_model.bin, default), safetensors\n"
            "                    (model.safetensors) or both\n"
            "  --seed N          random seed (default 1)\n"
            "  --bias            add_bias_linear: biases on every linear layer and the output\n"
            "  --no-swiglu       fc1 is [F, d] and the MLP is ungated\n"
            "  --quiet           print nothing on success\n"
            "  -h, --help        show this help\n"
            "\n"
            "example: %s /tmp/tiny && bm-generate /tmp/tiny ...\n",
            argv0, argv0);
}

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int parse_positive(const char *option, const char *text, int64_t *out) {
    char *end = NULL;
    long long v = strtoll(text, &end, 10);
    if (!text[0] || *end || v < 1) {
        fprintf(stderr, "bm-mkmodel: %s wants a positive integer, not \"%s\"\n", option, text);
        return 0;
    }
    *out = v;
    return 1;
}

static int parse_seed(const char *text, uint64_t *out) {
    char *end = NULL;
    unsigned long long v = strtoull(text, &end, 0);
    if (!text[0] || *end || text[0] == '-') {
        fprintf(stderr, "bm-mkmodel: --seed wants a non-negative integer, not \"%s\"\n", text);
        return 0;
    }
    *out = v;
    return 1;
}

static int parse_dtype(const char *text, bmi_dtype *out) {
    if (strcmp(text, "f32") == 0) *out = BMI_F32;
    else if (strcmp(text, "bf16") == 0) *out = BMI_BF16;
    else if (strcmp(text, "f16") == 0) *out = BMI_F16;
    else {
        fprintf(stderr, "bm-mkmodel: --dtype is f32, bf16 or f16, not \"%s\"\n", text);
        return 0;
    }
    return 1;
}

static int parse_format(const char *text, unsigned *out) {
    if (strcmp(text, "torch") == 0) *out = BMI_FORMAT_TORCH;
    else if (strcmp(text, "safetensors") == 0) *out = BMI_FORMAT_SAFETENSORS;
    else if (strcmp(text, "both") == 0) *out = BMI_FORMAT_TORCH | BMI_FORMAT_SAFETENSORS;
    else {
        fprintf(stderr, "bm-mkmodel: --format is torch, safetensors or both, not \"%s\"\n", text);
        return 0;
    }
    return 1;
}

/* --n-layers: the pattern so far, repeated or cut to n layers. */
static int resize_layers(bmi_random_config *c, int64_t n) {
    if (n > BMI_RANDOM_MAX_LAYERS) {
        fprintf(stderr, "bm-mkmodel: at most %d layers\n", BMI_RANDOM_MAX_LAYERS);
        return 0;
    }
    int period = c->list_layers && c->n_layers > 0 ? c->n_layers : 1;
    for (int i = 0; i < (int)n; i++)
        c->layers[i] = c->list_layers ? c->layers[i % period] : (bmi_random_layer){1, 0};
    c->n_layers = (int)n;
    return 1;
}

enum {
    OPT_DIMS = 256, OPT_D_MODEL, OPT_LAYERS, OPT_N_LAYERS, OPT_FFN, OPT_VOCAB, OPT_STATE, OPT_CONV,
    OPT_EXPAND, OPT_DTYPE, OPT_FORMAT, OPT_SEED, OPT_BIAS, OPT_NO_SWIGLU, OPT_QUIET
};

typedef struct cli {
    const char *outdir, *dims, *layers;
    int64_t d_model, n_layers, ffn, vocab, state, conv, expand;
    int dtype_set, seed_set, bias, no_swiglu, quiet;
    bmi_dtype dtype;
    uint64_t seed;
    unsigned formats;
} cli;

/* Returns 0 to go on, otherwise the exit code. */
static int parse_args(int argc, char **argv, cli *a) {
    static const struct option options[] = {
        {"dims", required_argument, 0, OPT_DIMS},       {"d-model", required_argument, 0, OPT_D_MODEL},
        {"layers", required_argument, 0, OPT_LAYERS},   {"n-layers", required_argument, 0, OPT_N_LAYERS},
        {"ffn", required_argument, 0, OPT_FFN},         {"vocab", required_argument, 0, OPT_VOCAB},
        {"state", required_argument, 0, OPT_STATE},     {"conv", required_argument, 0, OPT_CONV},
        {"expand", required_argument, 0, OPT_EXPAND},   {"dtype", required_argument, 0, OPT_DTYPE},
        {"format", required_argument, 0, OPT_FORMAT},   {"seed", required_argument, 0, OPT_SEED},
        {"bias", no_argument, 0, OPT_BIAS},             {"no-swiglu", no_argument, 0, OPT_NO_SWIGLU},
        {"quiet", no_argument, 0, OPT_QUIET},           {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0}};
    memset(a, 0, sizeof *a);
    a->dims = "tiny";
    a->formats = BMI_FORMAT_TORCH;
    int ok = 1, opt;
    while (ok && (opt = getopt_long(argc, argv, "h", options, NULL)) != -1) {
        switch (opt) {
        case 'h': usage(stdout, argv[0]); return -1;
        case OPT_DIMS: a->dims = optarg; break;
        case OPT_D_MODEL: ok = parse_positive("--d-model", optarg, &a->d_model); break;
        case OPT_LAYERS: a->layers = optarg; break;
        case OPT_N_LAYERS: ok = parse_positive("--n-layers", optarg, &a->n_layers); break;
        case OPT_FFN: ok = parse_positive("--ffn", optarg, &a->ffn); break;
        case OPT_VOCAB: ok = parse_positive("--vocab", optarg, &a->vocab); break;
        case OPT_STATE: ok = parse_positive("--state", optarg, &a->state); break;
        case OPT_CONV: ok = parse_positive("--conv", optarg, &a->conv); break;
        case OPT_EXPAND: ok = parse_positive("--expand", optarg, &a->expand); break;
        case OPT_DTYPE: ok = a->dtype_set = parse_dtype(optarg, &a->dtype); break;
        case OPT_FORMAT: ok = parse_format(optarg, &a->formats); break;
        case OPT_SEED: ok = a->seed_set = parse_seed(optarg, &a->seed); break;
        case OPT_BIAS: a->bias = 1; break;
        case OPT_NO_SWIGLU: a->no_swiglu = 1; break;
        case OPT_QUIET: a->quiet = 1; break;
        default: ok = 0; break; /* getopt printed why */
        }
    }
    if (ok && optind != argc - 1) {
        fprintf(stderr, optind == argc ? "bm-mkmodel: no OUTDIR given\n" : "bm-mkmodel: more than one OUTDIR\n");
        ok = 0;
    }
    if (!ok) {
        fprintf(stderr, "run %s --help for usage\n", argv[0]);
        return 2;
    }
    a->outdir = argv[optind];
    return 0;
}

static int build_config(const cli *a, bmi_random_config *c) {
    if (bmi_random_config_preset(c, a->dims) != BM_OK ||
        (a->layers && bmi_random_parse_layers(c, a->layers) != BM_OK)) {
        fprintf(stderr, "bm-mkmodel: %s\n", bm_last_error());
        return 0;
    }
    if (a->n_layers && !resize_layers(c, a->n_layers)) return 0;
    if (a->d_model) c->d_model = a->d_model;
    if (a->ffn) c->ffn_hidden = a->ffn;
    if (a->vocab) c->vocab = a->vocab;
    if (a->state) c->d_state = a->state;
    if (a->conv) c->d_conv = a->conv;
    if (a->expand) c->expand = a->expand;
    if (a->dtype_set) c->dtype = a->dtype;
    if (a->seed_set) c->seed = a->seed;
    if (a->bias) c->add_bias_linear = 1;
    if (a->no_swiglu) c->swiglu = 0;
    if (bmi_random_config_check(c) != BM_OK) {
        fprintf(stderr, "bm-mkmodel: %s\n", bm_last_error());
        return 0;
    }
    return 1;
}

static void print_summary(const char *outdir, const bmi_random_config *c, unsigned formats, double seconds) {
    bmi_random_model m = {0};
    if (bmi_random_model_spec(c, &m) != BM_OK) return;
    printf("%s: d_model %lld, %d layers, ffn %lld, vocab %lld, %s; %zu tensors, %llu parameters "
           "(%.2f GB per file); wrote%s%s in %.1f s\n",
           outdir, (long long)c->d_model, c->n_layers, (long long)c->ffn_hidden, (long long)c->vocab,
           bmi_dtype_name(c->dtype), m.count, (unsigned long long)m.n_params,
           (double)m.n_params * (double)bmi_dtype_size(c->dtype) / 1e9,
           (formats & BMI_FORMAT_TORCH) ? " pytorch_model.bin" : "",
           (formats & BMI_FORMAT_SAFETENSORS) ? " model.safetensors" : "", seconds);
    bmi_random_model_free(&m);
}

int main(int argc, char **argv) {
    cli a;
    int rc = parse_args(argc, argv, &a);
    if (rc) return rc < 0 ? 0 : rc;
    static bmi_random_config c; /* static: the layer table is a few KB */
    if (!build_config(&a, &c)) return 2;
    double start = now_seconds();
    if (bmi_write_random_model(a.outdir, &c, a.formats) != BM_OK) {
        fprintf(stderr, "bm-mkmodel: %s\n", bm_last_error());
        return 1;
    }
    if (!a.quiet) print_summary(a.outdir, &c, a.formats, now_seconds() - start);
    return 0;
}
