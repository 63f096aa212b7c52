/* libFuzzer target for config.json (bmi_config_parse, read through libyaml),
 * and for a configuration that disagrees with its weights: a config that
 * parses is checked for the invariants the rest of the library relies on,
 * then (when the fixtures are there) a model is built from it and the tensors
 * of the tiny-f32 fixture. That must either fail with a message (a missing
 * tensor, a wrong shape, a tensor the config does not use) or give a model
 * that runs a step.
 *
 * Fixture: $BM_SHARED/fixtures/tiny-f32/model.safetensors (default
 * ../shared); without it only the parser is fuzzed.
 * Build: `make fuzz` (libFuzzer) or the replay driver in `make test`.
 * Seeds: the fixtures' config.json (test/fuzz/make_corpus.sh) and the
 * committed corpus test/fuzz/corpus/config. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int fixture_tried;
static uint8_t *fixture;      /* the safetensors bytes, kept for the whole run */
static size_t fixture_len;

static void load_fixture_once(void) {
    if (fixture_tried) return;
    fixture_tried = 1;
    const char *shared = getenv("BM_SHARED");
    char path[4096];
    snprintf(path, sizeof path, "%s/fixtures/tiny-f32/model.safetensors", shared && *shared ? shared : "../shared");
    FILE *f = fopen(path, "rb");
    if (!f) return;
    if (fseek(f, 0, SEEK_END) == 0) {
        long n = ftell(f);
        if (n > 0 && fseek(f, 0, SEEK_SET) == 0 && (fixture = malloc((size_t)n)) != NULL) {
            if (fread(fixture, 1, (size_t)n, f) == (size_t)n) {
                fixture_len = (size_t)n;
            } else {
                free(fixture);
                fixture = NULL;
            }
        }
    }
    fclose(f);
}

static void check_config(const bmi_config *c) {
    if (c->n_layers < 1 || c->n_layers > BMI_MAX_LAYERS || !c->layers || !c->layer_kinds) abort();
    if (c->d_model < 1 || c->d_state < 1 || c->d_conv < 1 || c->expand < 1 || c->vocab_size < 1) abort();
    if (c->d_inner != c->expand * c->d_model || c->dt_rank < 1) abort();
    for (int i = 0; i < c->n_layers; i++) {
        const bmi_layer_config *l = &c->layers[i];
        if (l->n_experts < 0 || l->n_experts > BMI_MAX_EXPERTS || (!l->has_mamba && l->n_experts == 0)) abort();
        if (l->n_experts > 0 && c->ffn_hidden < 1) abort();
    }
    (void)strlen(c->layer_kinds);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    load_fixture_once();
    bmi_config c;
    memset(&c, 0xA5, sizeof c); /* garbage: a failed parse must not touch it */
    bmi_config before;
    memcpy(&before, &c, sizeof c);
    bm_status st = bmi_config_parse((const char *)data, size, &c);
    if (st != BM_OK) {
        if (st >= 0 || !bm_last_error()[0] || memcmp(&c, &before, sizeof c) != 0) abort();
        return 0;
    }
    check_config(&c);
    if (!fixture) {
        bmi_config_free(&c);
        return 0;
    }
    /* The config against the fixture's tensors. The parse is cheap: only the
     * header is read, the views point into `fixture`. */
    bmi_tensor_table table;
    if (bmi_parse_safetensors(fixture, fixture_len, &table) != BM_OK) abort();
    bm_model_params p;
    bm_model_params_init(&p);
    p.backend = BM_BACKEND_CPU;
    p.n_threads = 1;
    bm_model *m = NULL;
    st = bmi_model_create(&c, &table, &p, &m); /* takes both, also on failure */
    if (st != BM_OK) {
        if (st >= 0 || m != NULL || !bm_last_error()[0]) abort();
        return 0;
    }
    bm_model_info info;
    info.size = sizeof info;
    if (bm_model_get_info(m, &info) != BM_OK) abort();
    bm_session_params sp;
    bm_session_params_init(&sp);
    sp.n_threads = 1;
    bm_session *s = NULL;
    bm_state *state = NULL;
    float *logits = malloc((size_t)info.vocab_size * sizeof *logits);
    if (!logits || bm_session_new(m, &sp, &s) != BM_OK || bm_state_new(m, &state) != BM_OK) abort();
    int32_t tokens[3] = {1, 0, info.vocab_size - 1};
    if (bm_prefill(s, state, tokens, 3, logits) != BM_OK || bm_step(s, state, 2 % info.vocab_size, logits) != BM_OK)
        abort();
    bm_state_free(state);
    bm_session_free(s);
    bm_model_free(m);
    free(logits);
    return 0;
}
