/* bm-tokbench: tokenizer throughput on one core.
 *
 *   bm-tokbench [-t tokenizer.json] [-n MB] [-r repeats] [file]
 *
 * Encodes `file`, or else at least -n MB (default 10) of text built from the
 * golden texts beside the tokenizer (shared/tokenizer/golden), mixed with
 * pseudo-random words so the per-call word cache does not see only repeats.
 * Prints the best of -r runs (default 3) in MB/s for bm_tokenize and
 * bm_detokenize. The tokenizer defaults to $BM_SHARED/tokenizer/20B_tokenizer.json
 * ($BM_SHARED defaults to ../shared). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "blackmamba.h"

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static char *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    size_t cap = 1 << 16, n = 0, got;
    char *data = malloc(cap);
    while (data && (got = fread(data + n, 1, cap - n, f)) > 0) {
        n += got;
        if (n == cap) {
            char *bigger = realloc(data, cap *= 2);
            if (!bigger) free(data);
            data = bigger;
        }
    }
    fclose(f);
    if (data) *len = n;
    return data;
}

static uint64_t rng_next(uint64_t *s) {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

/* Append a line of made-up words: text the cache has mostly not seen. */
static size_t append_random_words(char *out, uint64_t *seed) {
    static const char letters[] = "etaoinshrdlucmfwypvbgkqjxz";
    size_t n = 0;
    for (int w = 0; w < 12; w++) {
        size_t len = 2 + rng_next(seed) % 9;
        out[n++] = ' ';
        for (size_t i = 0; i < len; i++) out[n++] = letters[(rng_next(seed) % 26 * rng_next(seed) % 26) % 26];
    }
    out[n++] = '\n';
    return n;
}

static char *make_text(const char *shared, size_t target, size_t *len) {
    static const char *const names[] = {"apache.txt", "mixed.txt", "stdio_h.txt"};
    char *parts[3] = {NULL, NULL, NULL};
    size_t part_len[3];
    for (int i = 0; i < 3; i++) {
        char path[4096];
        snprintf(path, sizeof path, "%s/tokenizer/golden/%s", shared, names[i]);
        parts[i] = read_file(path, &part_len[i]);
        if (!parts[i]) {
            fprintf(stderr, "bm-tokbench: cannot read %s\n", path);
            for (int j = 0; j < i; j++) free(parts[j]);
            return NULL;
        }
    }
    char *text = malloc(target + 65536);
    size_t used = 0;
    uint64_t seed = 0x9E3779B97F4A7C15ull;
    while (text && used < target) {
        int i = (int)(rng_next(&seed) % 3);
        memcpy(text + used, parts[i], part_len[i]);
        used += part_len[i];
        for (int k = 0; k < 40; k++) used += append_random_words(text + used, &seed);
    }
    for (int i = 0; i < 3; i++) free(parts[i]);
    *len = used;
    return text;
}

static void usage(void) {
    fprintf(stderr, "usage: bm-tokbench [-t tokenizer.json] [-n MB] [-r repeats] [file]\n");
}

int main(int argc, char **argv) {
    const char *shared = getenv("BM_SHARED");
    const char *tokenizer_path = NULL, *file = NULL;
    double megabytes = 10;
    int repeats = 3;
    char default_path[4096];
    if (!shared || !*shared) shared = "../shared";
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-t") == 0 && i + 1 < argc) {
            tokenizer_path = argv[++i];
        } else if (strcmp(argv[i], "-n") == 0 && i + 1 < argc) {
            megabytes = atof(argv[++i]);
        } else if (strcmp(argv[i], "-r") == 0 && i + 1 < argc) {
            repeats = atoi(argv[++i]);
        } else if (argv[i][0] == '-') {
            usage();
            return 2;
        } else {
            file = argv[i];
        }
    }
    if (megabytes <= 0 || repeats < 1) {
        usage();
        return 2;
    }
    if (!tokenizer_path) {
        snprintf(default_path, sizeof default_path, "%s/tokenizer/20B_tokenizer.json", shared);
        tokenizer_path = default_path;
    }

    bm_tokenizer *t = NULL;
    double t0 = now_seconds();
    if (bm_tokenizer_load(tokenizer_path, &t) != BM_OK) {
        fprintf(stderr, "bm-tokbench: %s\n", bm_last_error());
        return 1;
    }
    double load_s = now_seconds() - t0;

    size_t len = 0;
    char *text = file ? read_file(file, &len) : make_text(shared, (size_t)(megabytes * 1e6), &len);
    if (!text) {
        if (file) fprintf(stderr, "bm-tokbench: cannot read %s\n", file);
        bm_tokenizer_free(t);
        return 1;
    }
    size_t n_ids = 0;
    if (bm_tokenize(t, text, len, NULL, 0, &n_ids) != BM_OK) {
        fprintf(stderr, "bm-tokbench: %s\n", bm_last_error());
        free(text);
        bm_tokenizer_free(t);
        return 1;
    }
    int32_t *ids = malloc((n_ids ? n_ids : 1) * sizeof *ids);
    char *decoded = malloc(3 * len + 16);
    double best_encode = 1e30, best_decode = 1e30;
    int status = 0;
    for (int r = 0; r < repeats && ids && decoded; r++) {
        size_t n = 0, out_len = 0;
        double a = now_seconds();
        bm_status st = bm_tokenize(t, text, len, ids, n_ids, &n);
        double b = now_seconds();
        if (st == BM_OK) st = bm_detokenize(t, ids, n, decoded, 3 * len + 16, &out_len);
        double c = now_seconds();
        if (st != BM_OK) {
            fprintf(stderr, "bm-tokbench: %s\n", bm_last_error());
            status = 1;
            break;
        }
        if (b - a < best_encode) best_encode = b - a;
        if (c - b < best_decode) best_decode = c - b;
    }
    if (status == 0 && ids && decoded) {
        printf("tokenizer load: %.3f s\n", load_s);
        printf("text: %.2f MB, %zu ids (%.2f bytes/id)%s%s\n", len / 1e6, n_ids, n_ids ? (double)len / n_ids : 0.0,
               file ? ", from " : "", file ? file : "");
        printf("encode: %.1f MB/s (best of %d, %.3f s)\n", len / 1e6 / best_encode, repeats, best_encode);
        printf("decode: %.1f MB/s (%.3f s)\n", len / 1e6 / best_decode, best_decode);
    }
    free(decoded);
    free(ids);
    free(text);
    bm_tokenizer_free(t);
    return status;
}
