/* libFuzzer target for saved states (bm_state_load) against the tiny-f32
 * fixture model.
 *
 * Each input is tried twice: as given, and with its checksum recomputed (so
 * the fuzzer gets past the checksum to the header checks and to payloads of
 * arbitrary floats: NaN, infinities, huge values). Every load either fails
 * with a message and leaves the state exactly as it was, or succeeds; a
 * state that loads must save back to the same bytes and then run a step
 * without trouble whatever numbers it holds.
 *
 * Model: $BM_SHARED/fixtures/tiny-f32 (default ../shared); the target aborts
 * if it is missing. Seeds: states saved by bm-generate from both fixtures
 * (test/fuzz/make_corpus.sh) and the committed corpus test/fuzz/corpus/state.
 * The header layout is docs/STATE_FORMAT.md. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "blackmamba.h"
#include "common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static bm_model *model;
static bm_session *session;
static bm_state *state;
static uint8_t *reference;  /* what `state` saves to before each input */
static size_t state_len;
static float *logits;
static int32_t vocab;

static void init_once(void) {
    if (model) return;
    const char *shared = getenv("BM_SHARED");
    char path[4096];
    snprintf(path, sizeof path, "%s/fixtures/tiny-f32", shared && *shared ? shared : "../shared");
    bm_model_params p;
    bm_model_params_init(&p);
    p.backend = BM_BACKEND_CPU;
    p.n_threads = 1; /* no worker threads: the replay driver forks */
    bm_session_params sp;
    bm_session_params_init(&sp);
    sp.n_threads = 1;
    bm_model_info info;
    info.size = sizeof info;
    if (bm_model_load(path, &p, &model) != BM_OK || bm_model_get_info(model, &info) != BM_OK ||
        bm_session_new(model, &sp, &session) != BM_OK || bm_state_new(model, &state) != BM_OK) {
        fprintf(stderr, "fuzz_state: %s\n", bm_last_error());
        abort();
    }
    vocab = info.vocab_size;
    int32_t prompt[4] = {1, 2, 3, 4};
    if (bm_prefill(session, state, prompt, 4, NULL) != BM_OK || bm_state_save(state, NULL, 0, &state_len) != BM_OK)
        abort();
    reference = malloc(state_len);
    logits = malloc((size_t)vocab * sizeof *logits);
    size_t n = 0;
    if (!reference || !logits || bm_state_save(state, reference, state_len, &n) != BM_OK || n != state_len) abort();
}

/* The state must still save to `reference`. */
static void check_unchanged(uint8_t *scratch) {
    size_t n = 0;
    if (bm_state_save(state, scratch, state_len, &n) != BM_OK || n != state_len ||
        memcmp(scratch, reference, state_len) != 0)
        abort();
}

static void try_load(const uint8_t *bytes, size_t size, uint8_t *scratch) {
    bm_status st = bm_state_load(state, bytes, size);
    if (st != BM_OK) {
        if (st >= 0 || !bm_last_error()[0]) abort();
        check_unchanged(scratch);
        return;
    }
    /* Loaded: it saves back to the same bytes, then runs. */
    size_t n = 0;
    if (size != state_len || bm_state_save(state, scratch, state_len, &n) != BM_OK || n != size ||
        memcmp(scratch, bytes, size) != 0)
        abort();
    if (bm_step(session, state, (int32_t)(size % (size_t)vocab), logits) != BM_OK) abort();
    /* Back to the reference for the next input. */
    if (bm_state_load(state, reference, state_len) != BM_OK) abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    init_once();
    uint8_t *scratch = malloc(state_len);
    if (!scratch) abort();
    try_load(data, size, scratch);
    if (size >= 64) {
        /* The checksum (bytes 56..63) over the header's first 56 bytes and the payload. */
        uint8_t *fixed = malloc(size);
        if (!fixed) abort();
        memcpy(fixed, data, size);
        uint64_t h = bmi_hash64(bmi_hash64(0, fixed, 56), fixed + 64, size - 64);
        for (int i = 0; i < 8; i++) fixed[56 + i] = (uint8_t)(h >> (8 * i));
        try_load(fixed, size, scratch);
        free(fixed);
    }
    free(scratch);
    return 0;
}
