/* A C program built the way an application builds against libblackmamba:
 * only the installed header and pkg-config, strict warnings, C99 or C11:
 *
 *   cc -std=c99 -Wall -Wextra -Werror -pedantic hello.c \
 *      $(pkg-config --cflags --libs blackmamba) -o hello
 *   ./hello MODEL_DIR [TOKENIZER_JSON]
 *
 * It checks the header against the library, loads the model, feeds a
 * prompt, samples a few tokens greedily, saves the state, restores it into a
 * second state, checks both continue alike, and (with a tokenizer) encodes
 * and decodes a line. CI builds and runs it (.ci/run, examples/abi/build.sh). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <blackmamba.h>

static int fail(const char *what, bm_status st) {
    fprintf(stderr, "hello: %s: %s (%s)\n", what, bm_status_string(st), bm_last_error());
    return 1;
}

int main(int argc, char **argv) {
    bm_model_params mp;
    bm_model *model = NULL;
    bm_model_info info;
    bm_session *session = NULL;
    bm_state *a = NULL, *b = NULL;
    bm_sampler_params sp;
    float *logits = NULL, *logits_b = NULL;
    void *saved = NULL;
    size_t saved_len = 0;
    uint64_t rng = 42;
    int32_t prompt[4] = {1, 2, 3, 4};
    int32_t token = 0;
    int rc = 1, i;
    bm_status st;

    if (argc < 2) {
        fprintf(stderr, "usage: %s MODEL_DIR [TOKENIZER_JSON]\n", argv[0]);
        return 2;
    }
    if ((bm_version() >> 16) != BM_VERSION_MAJOR) {
        fprintf(stderr, "hello: header major %d, library %u\n", BM_VERSION_MAJOR, (unsigned)(bm_version() >> 16));
        return 1;
    }
    bm_model_params_init(&mp);
    mp.backend = BM_BACKEND_CPU;
    mp.n_threads = 2;
    if ((st = bm_model_load(argv[1], &mp, &model))) return fail("bm_model_load", st);
    memset(&info, 0, sizeof info);
    info.size = sizeof info;
    if ((st = bm_model_get_info(model, &info))) { rc = fail("bm_model_get_info", st); goto out; }
    printf("model: %d layers (%s), d %d, vocab %d, %llu parameters\n", info.n_layers, info.layer_kinds,
           info.d_model, info.vocab_size, (unsigned long long)info.n_params);

    logits = malloc((size_t)info.vocab_size * sizeof *logits);
    logits_b = malloc((size_t)info.vocab_size * sizeof *logits_b);
    if (!logits || !logits_b) goto out;
    if ((st = bm_session_new(model, NULL, &session))) { rc = fail("bm_session_new", st); goto out; }
    if ((st = bm_state_new(model, &a)) || (st = bm_state_new(model, &b))) { rc = fail("bm_state_new", st); goto out; }
    if ((st = bm_prefill(session, a, prompt, 4, logits))) { rc = fail("bm_prefill", st); goto out; }

    bm_sampler_params_init(&sp);
    sp.temperature = 0.0f;
    printf("greedy:");
    for (i = 0; i < 8; i++) {
        if ((st = bm_sample(logits, (size_t)info.vocab_size, &sp, &rng, NULL, 0, &token))) { rc = fail("bm_sample", st); goto out; }
        printf(" %d", (int)token);
        if ((st = bm_step(session, a, token, logits))) { rc = fail("bm_step", st); goto out; }
    }
    printf("\n");

    if ((st = bm_state_save(a, NULL, 0, &saved_len))) { rc = fail("bm_state_save", st); goto out; }
    saved = malloc(saved_len);
    if (!saved) goto out;
    if ((st = bm_state_save(a, saved, saved_len, &saved_len)) || (st = bm_state_load(b, saved, saved_len))) {
        rc = fail("save/load", st);
        goto out;
    }
    if ((st = bm_step(session, a, 5, logits)) || (st = bm_step(session, b, 5, logits_b))) { rc = fail("bm_step", st); goto out; }
    if (memcmp(logits, logits_b, (size_t)info.vocab_size * sizeof *logits) != 0) {
        fprintf(stderr, "hello: a restored state continues differently\n");
        goto out;
    }
    printf("state: %lu bytes, %llu tokens, restores exactly\n", (unsigned long)saved_len,
           (unsigned long long)bm_state_n_tokens(a));

    if (argc > 2) {
        static const char text[] = "Hello, world!";
        bm_tokenizer *tok = NULL;
        int32_t ids[32];
        size_t n = 0, len = 0;
        char back[64];
        if ((st = bm_tokenizer_load(argv[2], &tok))) { rc = fail("bm_tokenizer_load", st); goto out; }
        st = bm_tokenize(tok, text, sizeof text - 1, ids, 32, &n);
        if (st == BM_OK) st = bm_detokenize(tok, ids, n, back, sizeof back, &len);
        bm_tokenizer_free(tok);
        if (st) { rc = fail("tokenizer", st); goto out; }
        if (len != sizeof text - 1 || memcmp(back, text, len) != 0) {
            fprintf(stderr, "hello: the tokenizer does not round-trip\n");
            goto out;
        }
        printf("tokenizer: \"%s\" is %lu tokens and back\n", text, (unsigned long)n);
    }
    rc = 0;
out:
    free(saved);
    free(logits);
    free(logits_b);
    bm_state_free(a);
    bm_state_free(b);
    bm_session_free(session);
    bm_model_free(model);
    if (rc == 0) printf("hello: ok\n");
    return rc;
}
