/* bm-generate: generate text from a BlackMamba model on the command line.
 * Streams the text to stdout; timings and progress go to stderr. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "blackmamba.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: bm-generate -m MODEL [options]\n"
            "Generate text with a BlackMamba model; the text streams to stdout.\n\n"
            "  -m, --model PATH        model directory (config.json + model.safetensors or pytorch_model.bin)\n"
            "                          or a weights file with config.json beside it\n"
            "  -p, --prompt TEXT       the prompt (default: read standard input to its end)\n"
            "  -n, --n-tokens N        most tokens to generate (default 128)\n"
            "      --temp T            temperature; 0 = greedy (default 0.8)\n"
            "      --top-k K           keep the K most likely tokens; 0 = off (default 40)\n"
            "      --top-p P           nucleus sampling; 1 = off (default 0.95)\n"
            "      --min-p P           drop tokens under P * p(best); 0 = off (default 0.05)\n"
            "      --repeat-penalty R  penalty for the last 64 tokens; 1 = off (default 1.1)\n"
            "      --seed S            random seed (default: from the clock)\n"
            "      --stop TEXT         stop before TEXT appears (may be given up to 8 times)\n"
            "      --backend B         cpu, cuda or auto (default auto)\n"
            "      --threads N         CPU threads (default: all processors)\n"
            "      --activation A      MLP gate activation: gelu (default) or silu\n"
            "      --tokenizer PATH    tokenizer.json (default: the one in the model directory)\n"
            "      --ids               print token ids instead of text (no tokenizer needed;\n"
            "                          the prompt is then a list of ids: -p \"1 2 3\")\n"
            "      --state-in FILE     continue from a saved state (a conversation)\n"
            "      --state-out FILE    save the state after generating\n"
            "  -q, --quiet             no timings on stderr\n"
            "  -h, --help              this text\n");
}

typedef struct options {
    const char *model, *prompt, *tokenizer, *state_in, *state_out;
    const char *stops[8];
    int n_stops, n_tokens, threads, ids, quiet;
    bm_backend backend;
    bm_activation activation;
    float temp, top_k, top_p, min_p, repeat_penalty;
    uint64_t seed;
    int have_seed;
} options;

static int die(const char *what, bm_status st) {
    fprintf(stderr, "bm-generate: %s: %s (%s)\n", what, bm_last_error(), bm_status_string(st));
    return 1;
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int parse_number(const char *flag, const char *s, double lo, double hi, double *out) {
    char *end = NULL;
    errno = 0;
    double v = s ? strtod(s, &end) : 0;
    if (!s || errno || end == s || *end || v < lo || v > hi) {
        fprintf(stderr, "bm-generate: %s needs a number in [%g, %g], got '%s'\n", flag, lo, hi, s ? s : "");
        return -1;
    }
    *out = v;
    return 0;
}

static int parse_args(int argc, char **argv, options *o) {
    memset(o, 0, sizeof *o);
    o->n_tokens = 128;
    o->temp = 0.8f, o->top_k = 40, o->top_p = 0.95f, o->min_p = 0.05f, o->repeat_penalty = 1.1f;
    o->backend = BM_BACKEND_AUTO;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        double x;
#define IS(s, l) (!strcmp(a, s) || !strcmp(a, l))
#define NEED_VALUE()                                                           \
    do {                                                                       \
        if (!v) {                                                              \
            fprintf(stderr, "bm-generate: %s needs a value\n", a);             \
            return -1;                                                         \
        }                                                                      \
        i++;                                                                   \
    } while (0)
        if (IS("-h", "--help")) {
            usage(stdout);
            exit(0);
        } else if (IS("-m", "--model")) { NEED_VALUE(); o->model = v; }
        else if (IS("-p", "--prompt")) { NEED_VALUE(); o->prompt = v; }
        else if (IS("-n", "--n-tokens")) { NEED_VALUE(); if (parse_number(a, v, 0, 1e9, &x)) return -1; o->n_tokens = (int)x; }
        else if (!strcmp(a, "--temp")) { NEED_VALUE(); if (parse_number(a, v, 0, 100, &x)) return -1; o->temp = (float)x; }
        else if (!strcmp(a, "--top-k")) { NEED_VALUE(); if (parse_number(a, v, 0, 1e9, &x)) return -1; o->top_k = (float)x; }
        else if (!strcmp(a, "--top-p")) { NEED_VALUE(); if (parse_number(a, v, 0, 1, &x)) return -1; o->top_p = (float)x; }
        else if (!strcmp(a, "--min-p")) { NEED_VALUE(); if (parse_number(a, v, 0, 1, &x)) return -1; o->min_p = (float)x; }
        else if (!strcmp(a, "--repeat-penalty")) { NEED_VALUE(); if (parse_number(a, v, 0.01, 100, &x)) return -1; o->repeat_penalty = (float)x; }
        else if (!strcmp(a, "--seed")) { NEED_VALUE(); if (parse_number(a, v, 0, 1.8e19, &x)) return -1; o->seed = strtoull(v, NULL, 10); o->have_seed = 1; }
        else if (!strcmp(a, "--threads")) { NEED_VALUE(); if (parse_number(a, v, 1, 1024, &x)) return -1; o->threads = (int)x; }
        else if (!strcmp(a, "--stop")) {
            NEED_VALUE();
            if (o->n_stops == 8) { fprintf(stderr, "bm-generate: at most 8 --stop strings\n"); return -1; }
            o->stops[o->n_stops++] = v;
        } else if (!strcmp(a, "--backend")) {
            NEED_VALUE();
            if (!strcmp(v, "cpu")) o->backend = BM_BACKEND_CPU;
            else if (!strcmp(v, "cuda")) o->backend = BM_BACKEND_CUDA;
            else if (!strcmp(v, "auto")) o->backend = BM_BACKEND_AUTO;
            else { fprintf(stderr, "bm-generate: --backend is cpu, cuda or auto, not '%s'\n", v); return -1; }
        } else if (!strcmp(a, "--activation")) {
            NEED_VALUE();
            if (!strcmp(v, "gelu")) o->activation = BM_ACTIVATION_GELU;
            else if (!strcmp(v, "silu")) o->activation = BM_ACTIVATION_SILU;
            else { fprintf(stderr, "bm-generate: --activation is gelu or silu, not '%s'\n", v); return -1; }
        } else if (!strcmp(a, "--tokenizer")) { NEED_VALUE(); o->tokenizer = v; }
        else if (!strcmp(a, "--state-in")) { NEED_VALUE(); o->state_in = v; }
        else if (!strcmp(a, "--state-out")) { NEED_VALUE(); o->state_out = v; }
        else if (!strcmp(a, "--ids")) o->ids = 1;
        else if (IS("-q", "--quiet")) o->quiet = 1;
        else {
            fprintf(stderr, "bm-generate: unknown option '%s' (see --help)\n", a);
            return -1;
        }
#undef IS
#undef NEED_VALUE
    }
    if (!o->model) {
        fprintf(stderr, "bm-generate: -m MODEL is required (see --help)\n");
        return -1;
    }
    return 0;
}

static char *read_stdin(size_t *len) {
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap);
    size_t got;
    while (buf && (got = fread(buf + n, 1, cap - n, stdin)) > 0) {
        n += got;
        if (n == cap) {
            char *b = realloc(buf, cap *= 2);
            if (!b) { free(buf); return NULL; }
            buf = b;
        }
    }
    *len = n;
    return buf;
}

static int on_piece(const char *piece, size_t len, int32_t token, void *user) {
    (void)token;
    (void)user;
    fwrite(piece, 1, len, stdout);
    fflush(stdout);
    return 0;
}

static int parse_ids(const char *text, int32_t **ids, size_t *n) {
    size_t cap = 16;
    *ids = malloc(cap * sizeof **ids);
    *n = 0;
    const char *p = text;
    while (*ids && *p) {
        char *end;
        while (*p == ' ' || *p == ',' || *p == '\n' || *p == '\t') p++;
        if (!*p) break;
        long v = strtol(p, &end, 10);
        if (end == p || v < 0 || v > INT32_MAX) {
            fprintf(stderr, "bm-generate: --ids prompt must be token ids, not '%.20s'\n", p);
            return -1;
        }
        if (*n == cap) *ids = realloc(*ids, (cap *= 2) * sizeof **ids);
        if (*ids) (*ids)[(*n)++] = (int32_t)v;
        p = end;
    }
    return *ids ? 0 : -1;
}

static int save_state(const bm_state *st, const char *path) {
    size_t n = 0;
    bm_status r = bm_state_save(st, NULL, 0, &n);
    if (r) return die("saving the state", r);
    void *buf = malloc(n);
    if (!buf) return 1;
    r = bm_state_save(st, buf, n, &n);
    if (r) { free(buf); return die("saving the state", r); }
    FILE *f = fopen(path, "wb");
    int bad = !f || fwrite(buf, 1, n, f) != n;
    if (f && fclose(f) != 0) bad = 1;
    free(buf);
    if (bad) { fprintf(stderr, "bm-generate: cannot write %s: %s\n", path, strerror(errno)); return 1; }
    return 0;
}

static int load_state(bm_state *st, const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) { fprintf(stderr, "bm-generate: cannot open %s: %s\n", path, strerror(errno)); return 1; }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    void *buf = malloc(n > 0 ? (size_t)n : 1);
    int bad = !buf || fread(buf, 1, (size_t)n, f) != (size_t)n;
    fclose(f);
    if (bad) { free(buf); fprintf(stderr, "bm-generate: cannot read %s\n", path); return 1; }
    bm_status r = bm_state_load(st, buf, (size_t)n);
    free(buf);
    return r ? die(path, r) : 0;
}

int main(int argc, char **argv) {
    options o;
    if (parse_args(argc, argv, &o)) return 2;
    bm_model_params mp;
    bm_model_params_init(&mp);
    mp.backend = o.backend;
    mp.n_threads = o.threads;
    mp.activation = o.activation;
    bm_model *model = NULL;
    bm_session *session = NULL;
    bm_state *state = NULL;
    bm_tokenizer *own_tok = NULL;
    char *text = NULL;
    int32_t *ids = NULL;
    int rc = 1;
    bm_status st;

    if (!o.quiet) fprintf(stderr, "loading %s ...", o.model);
    double t0 = now();
    if ((st = bm_model_load(o.model, &mp, &model))) {
        if (!o.quiet) fputc('\n', stderr);
        rc = die("loading the model", st);
        goto out;
    }
    double load_s = now() - t0;
    bm_model_info info;
    info.size = sizeof info;
    bm_model_get_info(model, &info);
    if (!o.quiet)
        fprintf(stderr, " %.2f s (%s, %d layers, d %d, %.0fM params, %.0fM active)\n", load_s,
                info.backend == BM_BACKEND_CUDA ? "cuda" : "cpu", info.n_layers, info.d_model, info.n_params / 1e6,
                info.n_active_params / 1e6);
    const bm_tokenizer *tok = bm_model_tokenizer(model);
    if (o.tokenizer) {
        if ((st = bm_tokenizer_load(o.tokenizer, &own_tok))) { rc = die(o.tokenizer, st); goto out; }
        tok = own_tok;
    }
    if (!tok && !o.ids) {
        fprintf(stderr, "bm-generate: the model directory has no tokenizer.json: give --tokenizer PATH or use --ids\n");
        goto out;
    }
    if ((st = bm_session_new(model, NULL, &session)) || (st = bm_state_new(model, &state))) {
        rc = die("making a session", st);
        goto out;
    }
    if (o.state_in && load_state(state, o.state_in)) goto out;
    size_t len = 0;
    if (o.prompt) {
        len = strlen(o.prompt);
    } else {
        text = read_stdin(&len);
        if (!text) { fprintf(stderr, "bm-generate: cannot read standard input\n"); goto out; }
    }
    const char *prompt = o.prompt ? o.prompt : text;

    bm_generate_params gp;
    bm_generate_params_init(&gp);
    gp.sampler.temperature = o.temp;
    gp.sampler.top_k = (int32_t)o.top_k;
    gp.sampler.top_p = o.top_p;
    gp.sampler.min_p = o.min_p;
    gp.sampler.repeat_penalty = o.repeat_penalty;
    gp.max_tokens = o.n_tokens;
    gp.stop_strings = o.stops;
    gp.n_stop_strings = (size_t)o.n_stops;
    gp.on_piece = on_piece;
    uint64_t rng = o.have_seed ? o.seed : (uint64_t)time(NULL);
    bm_generate_result res;
    res.size = sizeof res;
    if (o.ids) {
        size_t n = 0;
        if (parse_ids(prompt, &ids, &n)) goto out;
        if (n == 0) { fprintf(stderr, "bm-generate: the prompt is empty\n"); goto out; }
        /* Without text, print each sampled id; run the loop here. */
        float *logits = malloc((size_t)info.vocab_size * sizeof(float));
        double t1 = now();
        st = bm_prefill(session, state, ids, n, logits);
        double t2 = now();
        int generated = 0;
        for (; st == BM_OK && generated < o.n_tokens; generated++) {
            int32_t next;
            if ((st = bm_sample(logits, (size_t)info.vocab_size, &gp.sampler, &rng, NULL, 0, &next))) break;
            printf("%d%c", next, generated + 1 < o.n_tokens ? ' ' : '\n');
            fflush(stdout);
            st = bm_step(session, state, next, logits);
        }
        double t3 = now();
        free(logits);
        if (st) { rc = die("generating", st); goto out; }
        if (!o.quiet)
            fprintf(stderr, "prompt: %zu tokens, %.1f tokens/s; generation: %d tokens, %.1f tokens/s\n", n,
                    n / (t2 - t1), generated, generated / (t3 - t2));
    } else {
        if ((st = bm_generate(session, state, tok, prompt, len, &gp, &rng, &res))) {
            fputc('\n', stdout);
            rc = die("generating", st);
            goto out;
        }
        fputc('\n', stdout);
        static const char *why[] = {"-", "end of text", "stop string", "token limit", "callback"};
        if (!o.quiet)
            fprintf(stderr, "prompt: %d tokens, %.1f tokens/s; generation: %d tokens, %.1f tokens/s; stopped: %s\n",
                    res.n_prompt_tokens, res.n_prompt_tokens / (res.prompt_seconds > 0 ? res.prompt_seconds : 1e-9),
                    res.n_generated,
                    res.n_generated / (res.generate_seconds > 0 ? res.generate_seconds : 1e-9),
                    why[res.stop <= 4 ? res.stop : 0]);
    }
    if (o.state_out && save_state(state, o.state_out)) goto out;
    rc = 0;
out:
    free(text);
    free(ids);
    bm_state_free(state);
    bm_session_free(session);
    bm_tokenizer_free(own_tok);
    bm_model_free(model);
    return rc;
}
