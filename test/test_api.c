/* The public API's contract on bad input: every misuse gives a negative
 * status and a message, and leaves states as they were. Also configs that
 * disagree with their weights. */
#include <math.h>
#include <stdlib.h>

#include "check.h"
#include "ckpt_write.h"
#include "fixture.h"

static char f32_dir[4096], bf16_dir[4096];

static bm_model *load_cpu(const char *path) {
    bm_model_params p;
    bm_model_params_init(&p);
    p.backend = BM_BACKEND_CPU;
    p.n_threads = 2;
    bm_model *m = NULL;
    CHECK_OK(bm_model_load(path, &p, &m));
    return m;
}

static void test_status_strings(void) {
    CHECK(strcmp(bm_status_string(BM_OK), "ok") == 0);
    for (int s = -1; s >= -9; s--) CHECK(strcmp(bm_status_string(s), "unknown status") != 0);
    CHECK(strcmp(bm_status_string(-100), "unknown status") == 0);
    CHECK((bm_version() >> 16) == BM_VERSION_MAJOR);
    CHECK(bm_version() == BM_VERSION_NUMBER);
}

static void test_load_errors(void) {
    bm_model *m = NULL;
    bm_model_params p;
    CHECK_ERR(bm_model_load(NULL, NULL, &m), BM_ERR_INVALID_ARGUMENT);
    CHECK_ERR(bm_model_load(f32_dir, NULL, NULL), BM_ERR_INVALID_ARGUMENT);
    CHECK_ERR(bm_model_load("/nonexistent/model", NULL, &m), BM_ERR_IO);
    CHECK(m == NULL);
    bm_model_params_init(&p);
    p.size = 12;
    CHECK_ERR(bm_model_load(f32_dir, &p, &m), BM_ERR_INVALID_ARGUMENT);
    bm_model_params_init(&p);
    p.reserved[3] = 1;
    CHECK_ERR(bm_model_load(f32_dir, &p, &m), BM_ERR_INVALID_ARGUMENT);
    bm_model_params_init(&p);
    p.backend = (bm_backend)7;
    CHECK_ERR(bm_model_load(f32_dir, &p, &m), BM_ERR_INVALID_ARGUMENT);
    bm_model_params_init(&p);
    p.activation = (bm_activation)9;
    CHECK_ERR(bm_model_load(f32_dir, &p, &m), BM_ERR_INVALID_ARGUMENT);
#ifndef BM_WITH_CUDA
    bm_model_params_init(&p);
    p.backend = BM_BACKEND_CUDA;
    CHECK_ERR(bm_model_load(f32_dir, &p, &m), BM_ERR_UNSUPPORTED);
#endif
    CHECK(m == NULL);
}

/* A temporary model dir: the f32 fixture's weights with a config of our own. */
static int load_with_config(const char *config, bm_status want, const char *want_in_message) {
    char dir[256], path[4400];
    if (!tmpdir_make(dir, sizeof dir)) return -1;
    snprintf(path, sizeof path, "%s/config.json", dir);
    write_file(path, config, strlen(config));
    char from[4400];
    snprintf(from, sizeof from, "%s/model.safetensors", f32_dir);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    copy_file(from, path);
    bm_model *m = NULL;
    bm_status st = bm_model_load(dir, NULL, &m);
    CHECK_MSG(st == want, "config %.60s... -> %d (%s), wanted %d", config, st, bm_last_error(), want);
    if (want_in_message)
        CHECK_MSG(strstr(bm_last_error(), want_in_message) != NULL, "message \"%s\" lacks \"%s\"", bm_last_error(),
                  want_in_message);
    bm_model_free(m);
    tmpdir_remove(dir);
    return 0;
}

/* The f32 fixture's config with one key's value replaced (or the key added). */
static void config_with(char *out, size_t cap, const char *key, const char *value) {
    static const char *keys[] = {"num_layers", "hidden_size", "state_size", "conv_dimension", "vocab_size",
                                 "expansion_factor", "mamba_moe_layers", "ffn_hidden_size", "add_bias_linear",
                                 "swiglu"};
    static const char *values[] = {"4", "64", "16", "4", "300", "2", "[\"r\", \"4\", \"r\", \"4\"]", "96", "false",
                                   "true"};
    size_t n = (size_t)snprintf(out, cap, "{");
    int replaced = 0;
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
        const char *v = values[i];
        if (key && !strcmp(key, keys[i])) v = value, replaced = 1;
        if (!v) continue; /* a NULL value drops the key */
        n += (size_t)snprintf(out + n, cap - n, "%s\"%s\": %s", n > 1 ? ", " : "", keys[i], v);
    }
    if (key && !replaced) n += (size_t)snprintf(out + n, cap - n, ", \"%s\": %s", key, value);
    snprintf(out + n, cap - n, "}");
}

static void check_config(const char *key, const char *value, bm_status want, const char *want_in_message) {
    char cfg[1024];
    config_with(cfg, sizeof cfg, key, value);
    load_with_config(cfg, want, want_in_message);
}

static void test_config_mismatch(void) {
    check_config(NULL, NULL, BM_OK, NULL);
    check_config("some_future_key", "[1, {\"a\": 2}]", BM_OK, NULL); /* unknown keys are ignored */
    check_config("mamba_moe_layers", "[\"r\", \"4\", \"r\", \"8\"]", BM_ERR_FORMAT, "router.weight");
    check_config("mamba_moe_layers", "[\"r\", \"4\", \"r\", \"r\"]", BM_ERR_FORMAT, "decoder.layers.3");
    check_config("mamba_moe_layers", "[\"r\", \"4\", \"r\", \"x\"]", BM_ERR_FORMAT, "mamba_moe_layers[3]");
    check_config("mamba_moe_layers", "[\"r\", \"4\", \"r\", \"99\"]", BM_ERR_FORMAT, "mamba_moe_layers[3]");
    check_config("mamba_moe_layers", "[\"r\", \"4\", \"r\"]", BM_ERR_FORMAT, "mamba_moe_layers");
    check_config("mamba_moe_layers", "[]", BM_ERR_FORMAT, "missing tensor decoder.layers.1.mixer.in_proj"); /* all Mamba */
    check_config("mamba_moe_layers", "\"r\"", BM_ERR_FORMAT, "mamba_moe_layers");
    check_config("hidden_size", "65", BM_ERR_FORMAT, "shape");
    check_config("hidden_size", "0", BM_ERR_FORMAT, "hidden_size");
    check_config("hidden_size", "-64", BM_ERR_FORMAT, "hidden_size");
    check_config("hidden_size", "\"64\"", BM_OK, NULL); /* YAML reads a quoted number as the same scalar */
    check_config("hidden_size", "6.4e1", BM_ERR_FORMAT, "hidden_size");
    check_config("state_size", "0", BM_ERR_FORMAT, "state_size");
    check_config("state_size", "32", BM_ERR_FORMAT, "x_proj");
    check_config("vocab_size", "301", BM_ERR_FORMAT, "embedding");
    check_config("vocab_size", "99999999999999999999999", BM_ERR_FORMAT, "vocab_size");
    check_config("num_layers", "3", BM_ERR_FORMAT, "num_layers");
    check_config("num_layers", "100000", BM_ERR_FORMAT, "num_layers");
    check_config("expansion_factor", "4", BM_ERR_FORMAT, "in_proj");
    check_config("conv_dimension", "3", BM_ERR_FORMAT, "conv1d");
    check_config("ffn_hidden_size", "97", BM_ERR_FORMAT, "linear_fc");
    check_config("ffn_hidden_size", NULL, BM_ERR_FORMAT, "ffn_hidden_size");
    check_config("add_bias_linear", "true", BM_ERR_FORMAT, "bias");
    check_config("add_bias_linear", "7", BM_ERR_FORMAT, "add_bias_linear");
    check_config("swiglu", "false", BM_ERR_FORMAT, "linear_fc1");
    check_config("vocab_size", NULL, BM_ERR_FORMAT, "vocab_size");
    load_with_config("{\"num_layers\": 4, \"num_layers\": 4}", BM_ERR_FORMAT, "twice");
    load_with_config("[1, 2, 3]", BM_ERR_FORMAT, "object");
    load_with_config("{\"num_layers\": [", BM_ERR_FORMAT, "config.json");
    load_with_config("", BM_ERR_FORMAT, "config.json");
    load_with_config("\xff\xfe{", BM_ERR_FORMAT, "config.json");
    load_with_config("{a: &x [1], b: *x, c: *x}", BM_ERR_FORMAT, "config.json");
}


/* The f32 fixture rewritten with its tensors renamed or added, as converted
 * checkpoints have them: `rename` gives the embedding's other name,
 * `untie` adds an output_layer.weight (a scaled copy of the embedding), and
 * `extra` adds a tensor no configuration uses. Returns the loaded model's
 * logits after token 7, or NULL (with `want` checked) when the load fails. */
static float *load_variant(int rename, int untie, int extra, bm_status want) {
    bmi_tensor_table t = {0};
    char from[4400], dir[256], path[300];
    snprintf(from, sizeof from, "%s/model.safetensors", f32_dir);
    if (bmi_read_safetensors(from, &t) != BM_OK || !tmpdir_make(dir, sizeof dir)) return NULL;
    bmi_tensor *items = calloc(t.count + 2, sizeof *items);
    memcpy(items, t.items, t.count * sizeof *items);
    size_t n = t.count;
    float *scaled = NULL;
    for (size_t i = 0; i < t.count; i++) {
        if (strcmp(items[i].name, "embedding.word_embeddings.weight") != 0) continue;
        if (rename) items[i].name = "embedding.weight";
        if (untie) {
            size_t count = (size_t)(items[i].shape[0] * items[i].shape[1]);
            scaled = malloc(count * sizeof(float));
            for (size_t k = 0; k < count; k++) scaled[k] = -2.0f * ((const float *)items[i].data)[k];
            items[n] = items[i];
            items[n].name = "output_layer.weight";
            items[n++].data = scaled;
        }
        if (extra) {
            items[n] = items[i];
            items[n++].name = "decoder.layers.9.mixer.surprise";
        }
    }
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    CHECK_OK(bmi_write_safetensors(path, items, n, NULL));
    char cfg_from[4400], cfg_to[300];
    snprintf(cfg_from, sizeof cfg_from, "%s/config.json", f32_dir);
    snprintf(cfg_to, sizeof cfg_to, "%s/config.json", dir);
    copy_file(cfg_from, cfg_to);
    bm_model *m = NULL;
    bm_status st = bm_model_load(dir, NULL, &m);
    CHECK_MSG(st == want, "variant rename=%d untie=%d extra=%d -> %d (%s)", rename, untie, extra, st, bm_last_error());
    float *logits = NULL;
    if (m) {
        bm_session *s = NULL;
        bm_state *state = NULL;
        logits = malloc(300 * sizeof(float));
        CHECK_OK(bm_session_new(m, NULL, &s));
        CHECK_OK(bm_state_new(m, &state));
        CHECK_OK(bm_step(s, state, 7, logits));
        bm_state_free(state);
        bm_session_free(s);
        bm_model_free(m);
    }
    if (extra && st) CHECK(strstr(bm_last_error(), "decoder.layers.9.mixer.surprise") != NULL);
    free(scaled);
    free(items);
    bmi_table_free(&t);
    tmpdir_remove(dir);
    return logits;
}

static void test_tensor_name_variants(void) {
    float *plain = load_variant(0, 0, 0, BM_OK), *renamed = load_variant(1, 0, 0, BM_OK);
    float *untied = load_variant(0, 1, 0, BM_OK);
    free(load_variant(0, 0, 1, BM_ERR_FORMAT));
    if (plain && renamed && untied) {
        CHECK_MSG(memcmp(plain, renamed, 300 * sizeof(float)) == 0, "embedding.weight loads as the tied embedding");
        /* an untied head of -2 E: the logits are -2 times the tied ones */
        double worst = 0;
        for (int i = 0; i < 300; i++) {
            double e = fabs(untied[i] + 2.0 * plain[i]) / (fabs(plain[i]) + 1e-3);
            if (e > worst) worst = e;
        }
        CHECK_MSG(worst < 1e-4, "output_layer.weight is used as the LM head (error %.3g)", worst);
    }
    free(plain);
    free(renamed);
    free(untied);
}

static void test_run_errors(bm_model *m, bm_model *other) {
    bm_session *s = NULL;
    bm_state *st = NULL, *foreign = NULL;
    bm_model_info info;
    memset(&info, 0, sizeof info);
    CHECK_ERR(bm_model_get_info(m, &info), BM_ERR_INVALID_ARGUMENT); /* size not set */
    info.size = sizeof info;
    CHECK_OK(bm_model_get_info(m, &info));
    CHECK(info.vocab_size == 300 && info.d_model == 64 && info.n_layers == 4 && info.n_mamba_layers == 2);
    CHECK(info.d_inner == 128 && info.d_state == 16 && info.d_conv == 4 && info.dt_rank == 4);
    CHECK(info.max_experts == 4 && info.backend == BM_BACKEND_CPU && strcmp(info.layer_kinds, "r,4,r,4") == 0);
    CHECK(info.state_bytes == 2u * 128 * (3 + 16) * 4);
    CHECK(info.n_params > info.n_active_params && info.n_active_params > 0);

    bm_session_params sp;
    bm_session_params_init(&sp);
    sp.size = 3;
    CHECK_ERR(bm_session_new(m, &sp, &s), BM_ERR_INVALID_ARGUMENT);
    CHECK_ERR(bm_session_new(NULL, NULL, &s), BM_ERR_INVALID_ARGUMENT);
    CHECK_OK(bm_session_new(m, NULL, &s));
    CHECK_OK(bm_state_new(m, &st));
    CHECK_OK(bm_state_new(other, &foreign));
    CHECK_ERR(bm_state_new(NULL, &st), BM_ERR_INVALID_ARGUMENT);

    int32_t good[3] = {1, 2, 3}, bad[3] = {1, 300, 3}, neg = -1;
    float *logits = malloc(300 * 3 * sizeof(float));
    CHECK_OK(bm_prefill(s, st, good, 3, NULL));
    size_t n = 0;
    CHECK_OK(bm_state_save(st, NULL, 0, &n));
    unsigned char *before = malloc(n), *after = malloc(n);
    CHECK_OK(bm_state_save(st, before, n, &n));

    CHECK_ERR(bm_prefill(s, st, bad, 3, logits), BM_ERR_INVALID_ARGUMENT);
    CHECK_ERR(bm_prefill(s, st, good, 0, logits), BM_ERR_INVALID_ARGUMENT);
    CHECK_ERR(bm_prefill(NULL, st, good, 3, logits), BM_ERR_INVALID_ARGUMENT);
    CHECK_ERR(bm_prefill(s, st, NULL, 3, logits), BM_ERR_INVALID_ARGUMENT);
    CHECK_ERR(bm_prefill_all(s, st, good, 3, NULL), BM_ERR_INVALID_ARGUMENT);
    CHECK_ERR(bm_step(s, st, neg, logits), BM_ERR_INVALID_ARGUMENT);
    CHECK_ERR(bm_step(s, st, 300, logits), BM_ERR_INVALID_ARGUMENT);
    CHECK_ERR(bm_step(s, foreign, 1, logits), BM_ERR_MISMATCH);
    bm_state *pair[2] = {st, foreign};
    CHECK_ERR(bm_step_batch(s, pair, good, 2, logits), BM_ERR_MISMATCH);
    bm_state *nul[2] = {st, NULL};
    CHECK_ERR(bm_step_batch(s, nul, good, 2, logits), BM_ERR_INVALID_ARGUMENT);
    bm_state *one[1] = {st};
    CHECK_ERR(bm_step_batch(s, one, bad + 1, 1, logits), BM_ERR_INVALID_ARGUMENT);
    CHECK_ERR(bm_state_copy(st, foreign), BM_ERR_MISMATCH);

    /* states from another model, corrupt bytes, truncation */
    size_t fn = 0;
    CHECK_OK(bm_state_save(foreign, NULL, 0, &fn));
    unsigned char *fbuf = malloc(fn);
    CHECK_OK(bm_state_save(foreign, fbuf, fn, &fn));
    CHECK_ERR(bm_state_load(st, fbuf, fn), BM_ERR_MISMATCH);
    unsigned char *corrupt = malloc(n);
    memcpy(corrupt, before, n);
    corrupt[n / 2] ^= 0x40;
    CHECK_ERR(bm_state_load(st, corrupt, n), BM_ERR_FORMAT);
    CHECK_ERR(bm_state_load(st, before, n - 1), BM_ERR_FORMAT);
    CHECK_ERR(bm_state_load(st, before, 10), BM_ERR_FORMAT);
    memcpy(corrupt, before, n);
    corrupt[8] = 99; /* version */
    CHECK_ERR(bm_state_load(st, corrupt, n), BM_ERR_FORMAT);
    CHECK_ERR(bm_state_load(st, NULL, n), BM_ERR_INVALID_ARGUMENT);

    CHECK_OK(bm_state_save(st, after, n, &n));
    CHECK_MSG(memcmp(before, after, n) == 0, "a failed call changed the state");
    CHECK(bm_state_n_tokens(st) == 3);

    /* NULL-safe frees and queries */
    bm_state_free(NULL);
    bm_session_free(NULL);
    bm_model_free(NULL);
    CHECK(bm_state_n_tokens(NULL) == 0);

    free(fbuf);
    free(corrupt);
    free(before);
    free(after);
    free(logits);
    bm_state_free(st);
    bm_state_free(foreign);
    bm_session_free(s);
}

int main(void) {
    snprintf(f32_dir, sizeof f32_dir, "%s", fixture_path("fixtures/tiny-f32"));
    snprintf(bf16_dir, sizeof bf16_dir, "%s", fixture_path("fixtures/tiny-bf16"));
    test_status_strings();
    test_load_errors();
    test_config_mismatch();
    test_tensor_name_variants();
    bm_model *m = load_cpu(f32_dir), *other = load_cpu(bf16_dir);
    if (m && other) test_run_errors(m, other);
    bm_model_free(m);
    bm_model_free(other);
    return check_summary("test_api");
}
