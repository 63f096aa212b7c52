#include "fixture.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>


const char *fixture_path(const char *rel) {
    static char buf[4096];
    const char *shared = getenv("BM_SHARED");
    snprintf(buf, sizeof buf, "%s/%s", shared && *shared ? shared : "../shared", rel);
    return buf;
}

int golden_load(const char *fixture_dir, golden_set *g) {
    char path[4096];
    memset(g, 0, sizeof *g);
    snprintf(path, sizeof path, "%s/golden.safetensors", fixture_dir);
    if (bmi_read_safetensors(path, &g->table) != BM_OK) {
        fprintf(stderr, "cannot read %s: %s\n", path, bm_last_error());
        return -1;
    }
    for (int k = 0; k < 16; k++) {
        char name[64];
        snprintf(name, sizeof name, "p%d.prompt", k);
        const bmi_tensor *t = bmi_table_find(&g->table, name);
        if (!t) break;
        golden_prompt *p = &g->prompts[k];
        p->prompt = t->data;
        p->n_prompt = (size_t)t->shape[0];
        snprintf(name, sizeof name, "p%d.prefill_logits", k);
        t = bmi_table_find(&g->table, name);
        p->prefill_logits = t ? t->data : NULL;
        snprintf(name, sizeof name, "p%d.decode_tokens", k);
        t = bmi_table_find(&g->table, name);
        if (!t) return -1;
        p->decode_tokens = t->data;
        p->n_decode = (size_t)t->shape[0];
        snprintf(name, sizeof name, "p%d.decode_logits", k);
        t = bmi_table_find(&g->table, name);
        if (!t) return -1;
        p->decode_logits = t->data;
        g->vocab = (int)t->shape[1];
        g->n_prompts = k + 1;
    }
    return g->n_prompts > 0 ? 0 : -1;
}

void golden_free(golden_set *g) { bmi_table_free(&g->table); }

double rel_error(const float *a, const float *b, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)a[i] - b[i];
        if (isnan(a[i]) || isnan(b[i])) return INFINITY;
        num += d * d;
        den += (double)b[i] * b[i];
    }
    if (den == 0) return num == 0 ? 0 : INFINITY;
    return sqrt(num / den);
}

int argmax(const float *x, size_t n) {
    size_t best = 0;
    for (size_t i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return (int)best;
}

double top2_margin(const float *x, size_t n) {
    int b = argmax(x, n);
    double second = -INFINITY;
    for (size_t i = 0; i < n; i++)
        if ((int)i != b && x[i] > second) second = x[i];
    return (x[b] - second) / fabs(x[b]);
}

const char *tmpdir_make(char *buf, size_t cap) {
    const char *base = getenv("TMPDIR");
    snprintf(buf, cap, "%s/bmtest.XXXXXX", base && *base ? base : "/tmp");
    return mkdtemp(buf);
}

void tmpdir_remove(const char *dir) {
    char cmd[4200];
    if (!dir || !strstr(dir, "bmtest.")) return;
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
}

void *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc(n > 0 ? (size_t)n : 1);
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    if (buf) *len = (size_t)n;
    return buf;
}

int write_file(const char *path, const void *data, size_t len) {
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    size_t w = fwrite(data, 1, len, f);
    return (fclose(f) == 0 && w == len) ? 0 : -1;
}

int copy_file(const char *from, const char *to) {
    size_t n;
    void *buf = read_file(from, &n);
    if (!buf) return -1;
    int r = write_file(to, buf, n);
    free(buf);
    return r;
}
