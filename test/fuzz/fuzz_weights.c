/* libFuzzer target for a whole model made of hostile weights: the bytes that
 * the format readers accept go on to the weight binder (shapes, dtypes,
 * strided and overlapping views, tied or untied output, biases) and to the
 * CPU forward pass (NaN, infinities, subnormals, huge values in any weight).
 *
 * Input: one byte choosing the configuration (even: micro model 1, odd:
 * micro model 2, the two configurations of test/fuzz/make_corpus.sh's
 * bm-mkmodel seeds), then a weights file: a torch ZIP when it starts with
 * "PK", else safetensors. Whatever is accepted must either fail with a
 * message or give a model that runs a prefill, a step and a batched step,
 * whose state saves and loads back exactly. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char *const CONFIGS[2] = {
    "{\"num_layers\": 4, \"hidden_size\": 8, \"state_size\": 2, \"conv_dimension\": 2, \"vocab_size\": 16, "
    "\"expansion_factor\": 1, \"mamba_moe_layers\": [\"r\", \"2\", \"1\", \"r1\"], \"ffn_hidden_size\": 8, "
    "\"add_bias_linear\": false, \"swiglu\": true}",
    "{\"num_layers\": 2, \"hidden_size\": 4, \"state_size\": 1, \"conv_dimension\": 1, \"vocab_size\": 8, "
    "\"expansion_factor\": 1, \"mamba_moe_layers\": [\"r\", \"3\"], \"ffn_hidden_size\": 4, "
    "\"add_bias_linear\": true, \"swiglu\": false}",
};

static void run_model(bm_model *m) {
    bm_model_info info;
    info.size = sizeof info;
    if (bm_model_get_info(m, &info) != BM_OK) abort();
    size_t V = (size_t)info.vocab_size;
    bm_session_params sp;
    bm_session_params_init(&sp);
    sp.n_threads = 1;
    bm_session *s = NULL;
    bm_state *a = NULL, *b = NULL;
    float *logits = malloc(2 * V * sizeof *logits);
    if (!logits || bm_session_new(m, &sp, &s) != BM_OK || bm_state_new(m, &a) != BM_OK || bm_state_new(m, &b) != BM_OK)
        abort();
    const int32_t prompt[5] = {1, 0, (int32_t)V - 1, 2, 3};
    if (bm_prefill(s, a, prompt, 5, logits) != BM_OK || bm_step(s, a, (int32_t)V - 1, logits) != BM_OK) abort();
    size_t len = 0;
    if (bm_state_save(a, NULL, 0, &len) != BM_OK) abort();
    uint8_t *buf = malloc(len), *again = malloc(len);
    if (!buf || !again || bm_state_save(a, buf, len, &len) != BM_OK || bm_state_load(b, buf, len) != BM_OK ||
        bm_state_save(b, again, len, &len) != BM_OK || memcmp(buf, again, len) != 0)
        abort();
    bm_state *both[2] = {a, b};
    const int32_t toks[2] = {4, 5};
    if (bm_step_batch(s, both, toks, 2, logits) != BM_OK) abort();
    free(buf);
    free(again);
    free(logits);
    bm_state_free(a);
    bm_state_free(b);
    bm_session_free(s);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    const char *config_text = CONFIGS[data[0] & 1];
    data++;
    size--;
    uint8_t *copy = malloc(size ? size : 1); /* exactly the bytes: reads past them are caught */
    if (!copy) return 0;
    if (size) memcpy(copy, data, size);
    bmi_tensor_table table;
    int torch = size >= 2 && copy[0] == 'P' && copy[1] == 'K';
    bm_status st = torch ? bmi_parse_torch(copy, size, &table) : bmi_parse_safetensors(copy, size, &table);
    if (st != BM_OK) {
        free(copy);
        return 0;
    }
    bmi_config config;
    if (bmi_config_parse(config_text, strlen(config_text), &config) != BM_OK) abort();
    bm_model_params p;
    bm_model_params_init(&p);
    p.backend = BM_BACKEND_CPU;
    p.n_threads = 1;
    bm_model *m = NULL;
    st = bmi_model_create(&config, &table, &p, &m); /* takes config and table, also on failure */
    if (st != BM_OK) {
        if (st >= 0 || m != NULL || !bm_last_error()[0]) abort();
    } else {
        run_model(m);
        bm_model_free(m);
    }
    free(copy);
    return 0;
}
