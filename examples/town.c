/* town: a village of characters, each with its own recurrent state, all
 * advanced together one token per step. Shows bm_prefill_batch,
 * bm_step_batch_sample with a seed per character, and saving every state to
 * one file to resume later.
 *
 *   town -m MODEL [-n 256] [--steps 32] [--tokenizer PATH] [--save FILE] [--resume FILE]
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "blackmamba.h"

#define TOWN_MAGIC "BMTOWN1"

typedef struct town {
    size_t n;
    bm_state **states;
    uint64_t *rngs;
    int32_t *next;      /* each character's sampled, not yet fed, token */
    char **text;        /* what each character said so far (with a tokenizer) */
    size_t *text_len;
} town;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int fail(const char *what, bm_status st) {
    fprintf(stderr, "town: %s: %s (%s)\n", what, bm_last_error(), bm_status_string(st));
    return 1;
}

static int save_town(const town *t, const char *path) {
    FILE *f = fopen(path, "wb");
    if (!f) { perror(path); return 1; }
    uint64_t n = t->n;
    fwrite(TOWN_MAGIC, 1, 8, f);
    fwrite(&n, sizeof n, 1, f);
    for (size_t i = 0; i < t->n; i++) {
        size_t len = 0;
        bm_state_save(t->states[i], NULL, 0, &len);
        void *buf = malloc(len);
        bm_status st = bm_state_save(t->states[i], buf, len, &len);
        if (st) { free(buf); fclose(f); return fail("saving a state", st); }
        uint64_t len64 = len;
        fwrite(&t->rngs[i], sizeof t->rngs[i], 1, f);
        fwrite(&t->next[i], sizeof t->next[i], 1, f);
        fwrite(&len64, sizeof len64, 1, f);
        fwrite(buf, 1, len, f);
        free(buf);
    }
    if (fclose(f) != 0) { perror(path); return 1; }
    return 0;
}

static int resume_town(town *t, const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) { perror(path); return 1; }
    char magic[8];
    uint64_t n = 0;
    if (fread(magic, 1, 8, f) != 8 || memcmp(magic, TOWN_MAGIC, 8) || fread(&n, sizeof n, 1, f) != 1 || n != t->n) {
        fprintf(stderr, "town: %s is not a saved town of %zu characters\n", path, t->n);
        fclose(f);
        return 1;
    }
    for (size_t i = 0; i < t->n; i++) {
        uint64_t len = 0;
        if (fread(&t->rngs[i], sizeof t->rngs[i], 1, f) != 1 || fread(&t->next[i], sizeof t->next[i], 1, f) != 1 ||
            fread(&len, sizeof len, 1, f) != 1 || len > (1u << 30)) {
            fprintf(stderr, "town: %s is truncated\n", path);
            fclose(f);
            return 1;
        }
        void *buf = malloc(len);
        int bad = !buf || fread(buf, 1, len, f) != len;
        bm_status st = bad ? BM_ERR_FORMAT : bm_state_load(t->states[i], buf, len);
        free(buf);
        if (st) { fclose(f); return fail("resuming a state", st); }
    }
    fclose(f);
    return 0;
}

static void say(town *t, const bm_tokenizer *tok, size_t i, int32_t token) {
    if (!tok) return;
    char piece[1024];
    size_t len = 0;
    if (bm_detokenize(tok, &token, 1, piece, sizeof piece, &len) != BM_OK) return;
    char *grown = realloc(t->text[i], t->text_len[i] + len + 1);
    if (!grown) return;
    memcpy(grown + t->text_len[i], piece, len);
    t->text_len[i] += len;
    grown[t->text_len[i]] = '\0';
    t->text[i] = grown;
}

int main(int argc, char **argv) {
    const char *model_path = NULL, *tok_path = NULL, *save = NULL, *resume = NULL;
    size_t n = 256;
    int steps = 32;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            printf("usage: town -m MODEL [-n CHARACTERS (256)] [--steps N (32)] [--tokenizer PATH]\n"
                   "            [--save FILE] [--resume FILE]\n"
                   "Advances every character's own state together, one token per step, sampling with a\n"
                   "seed per character; --save writes all states to one file, --resume continues from it.\n");
            return 0;
        }
        if (!v) { fprintf(stderr, "town: %s needs a value\n", a); return 2; }
        if (!strcmp(a, "-m")) model_path = v;
        else if (!strcmp(a, "-n")) n = strtoul(v, NULL, 10);
        else if (!strcmp(a, "--steps")) steps = atoi(v);
        else if (!strcmp(a, "--tokenizer")) tok_path = v;
        else if (!strcmp(a, "--save")) save = v;
        else if (!strcmp(a, "--resume")) resume = v;
        else { fprintf(stderr, "town: unknown option %s\n", a); return 2; }
        i++;
    }
    if (!model_path || n == 0 || steps < 0) { fprintf(stderr, "town: -m MODEL is required (see --help)\n"); return 2; }

    bm_model *model = NULL;
    bm_session *session = NULL;
    bm_tokenizer *own_tok = NULL;
    bm_status st;
    if ((st = bm_model_load(model_path, NULL, &model))) return fail("loading the model", st);
    if ((st = bm_session_new(model, NULL, &session))) return fail("making a session", st);
    const bm_tokenizer *tok = bm_model_tokenizer(model);
    if (tok_path && (st = bm_tokenizer_load(tok_path, &own_tok)) == BM_OK) tok = own_tok;
    if (tok_path && st) return fail(tok_path, st);
    bm_model_info info = {.size = sizeof info};
    bm_model_get_info(model, &info);
    size_t V = (size_t)info.vocab_size;

    town t = {n, calloc(n, sizeof(bm_state *)), calloc(n, sizeof(uint64_t)), calloc(n, sizeof(int32_t)),
              calloc(n, sizeof(char *)), calloc(n, sizeof(size_t))};
    for (size_t i = 0; i < n; i++)
        if ((st = bm_state_new(model, &t.states[i]))) return fail("making a state", st);

    bm_sampler_params sp;
    bm_sampler_params_init(&sp);
    sp.repeat_penalty = 1; /* per-stream penalties need bm_step_batch + bm_sample */
    if (tok) sp.n_vocab_valid = bm_tokenizer_vocab_size(tok);
    if (resume) {
        if (resume_town(&t, resume)) return 1;
        printf("resumed %zu characters from %s (%llu tokens each so far for character 0)\n", n, resume,
               (unsigned long long)bm_state_n_tokens(t.states[0]));
    } else {
        /* every character gets its own prompt */
        int32_t **prompts = calloc(n, sizeof *prompts);
        size_t *lens = calloc(n, sizeof *lens);
        for (size_t i = 0; i < n; i++) {
            char text[128];
            snprintf(text, sizeof text, "Villager %zu walks into the square and says:", i);
            prompts[i] = malloc(64 * sizeof(int32_t));
            if (tok) {
                if ((st = bm_tokenize(tok, text, strlen(text), prompts[i], 64, &lens[i]))) return fail("tokenizing", st);
            } else {
                lens[i] = 4 + i % 5;
                for (size_t k = 0; k < lens[i]; k++) prompts[i][k] = (int32_t)((i * 7919 + k * 104729) % V);
            }
            t.rngs[i] = 0x5eed0000u + i;
        }
        float *logits = malloc(n * V * sizeof(float));
        double t0 = now();
        st = bm_prefill_batch(session, t.states, (const int32_t *const *)prompts, lens, n, logits);
        double t1 = now();
        if (st) return fail("prefilling", st);
        size_t total = 0;
        for (size_t i = 0; i < n; i++) {
            total += lens[i];
            if ((st = bm_sample(logits + i * V, V, &sp, &t.rngs[i], NULL, 0, &t.next[i]))) return fail("sampling", st);
            say(&t, tok, i, t.next[i]);
            free(prompts[i]);
        }
        printf("prefilled %zu characters (%zu tokens) in %.3f s: %.0f tokens/s\n", n, total, t1 - t0,
               total / (t1 - t0));
        free(logits);
        free(prompts);
        free(lens);
    }
    double t0 = now();
    for (int s = 0; s < steps; s++) {
        int32_t *fed = malloc(n * sizeof(int32_t));
        memcpy(fed, t.next, n * sizeof(int32_t));
        if ((st = bm_step_batch_sample(session, t.states, fed, n, &sp, t.rngs, t.next))) return fail("stepping", st);
        for (size_t i = 0; i < n; i++) say(&t, tok, i, t.next[i]);
        free(fed);
    }
    double t1 = now();
    if (steps > 0)
        printf("%d steps of %zu characters in %.3f s: %.1f ms/step, %.0f tokens/s\n", steps, n, t1 - t0,
               1e3 * (t1 - t0) / steps, steps * (double)n / (t1 - t0));
    for (size_t i = 0; i < n && i < 3 && tok; i++) printf("villager %zu: ...%s\n", i, t.text[i] ? t.text[i] : "");
    printf("character 0 next token: %d\n", t.next[0]);
    if (save && save_town(&t, save) == 0) printf("saved %zu states to %s\n", n, save);
    for (size_t i = 0; i < n; i++) {
        bm_state_free(t.states[i]);
        free(t.text[i]);
    }
    free(t.states), free(t.rngs), free(t.next), free(t.text), free(t.text_len);
    bm_tokenizer_free(own_tok);
    bm_session_free(session);
    bm_model_free(model);
    return 0;
}
