/* CUDA: requests the device cannot hold are clean errors. A model larger
 * than the GPU fails to load with BM_ERR_OUT_OF_MEMORY and a message, and
 * leaves the device usable; with device memory filled by states, a batch
 * over all of them either runs or fails with no state changed. */
#include <sys/mman.h>

#include "check.h"
#include "test_cuda_random.h"

/* Every tensor of `c` viewed over one zero-filled, never-touched mapping: a
 * model of any size without host memory behind it. */
static bm_status zero_model(const bmi_random_config *c, bm_model **out, void **map, size_t *map_len) {
    bmi_random_model spec;
    bm_status st = bmi_random_model_spec(c, &spec);
    if (st) return st;
    size_t largest = 0;
    for (size_t i = 0; i < spec.count; i++) {
        size_t n = (size_t)bmi_tensor_numel(&spec.tensors[i]) * bmi_dtype_size(spec.tensors[i].dtype);
        if (n > largest) largest = n;
    }
    *map_len = largest + 4096;
    *map = mmap(NULL, *map_len, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (*map == MAP_FAILED) {
        bmi_random_model_free(&spec);
        return bmi_fail(BM_ERR_OUT_OF_MEMORY, "no address space for a zero mapping");
    }
    char *json = NULL;
    bmi_config config;
    bmi_tensor_table table;
    memset(&table, 0, sizeof table);
    if ((st = bmi_random_config_json(c, &json)) == BM_OK) st = bmi_config_parse(json, strlen(json), &config);
    bmi_free(json);
    for (size_t i = 0; i < spec.count && st == BM_OK; i++) {
        bmi_tensor view = spec.tensors[i];
        view.data = *map;
        int64_t stride = 1;
        for (int k = view.ndim - 1; k >= 0; k--) view.stride[k] = stride, stride *= view.shape[k];
        view.nbytes = (size_t)bmi_tensor_numel(&view) * bmi_dtype_size(view.dtype);
        st = bmi_table_add(&table, &view);
    }
    bmi_random_model_free(&spec);
    if (st) {
        bmi_table_free(&table);
        return st;
    }
    bm_model_params p;
    bm_model_params_init(&p);
    p.backend = BM_BACKEND_CUDA;
    return bmi_model_create(&config, &table, &p, out);
}

static void test_model_too_large(void) {
    bmi_random_config c;
    CHECK_OK(bmi_random_config_preset(&c, "tiny"));
    /* 512 Mamba layers of d 4096 (the widest the CUDA kernels take): ~107 GB of bf16 weights */
    c.d_model = 4096;
    CHECK_OK(bmi_random_parse_layers(&c, "r"));
    c.n_layers = 512;
    for (int i = 0; i < c.n_layers; i++) c.layers[i] = c.layers[0];
    c.vocab = 512;
    bm_model *m = NULL;
    void *map = NULL;
    size_t map_len = 0;
    bm_status st = zero_model(&c, &m, &map, &map_len);
    CHECK_MSG(st == BM_ERR_OUT_OF_MEMORY && bm_last_error()[0], "a 107 GB model on an 80 GB GPU -> %d (%s)", st,
              bm_last_error());
    printf("too large a model: %s\n", bm_last_error());
    bm_model_free(m);
    if (map && map != MAP_FAILED) munmap(map, map_len);
}

/* Fill the device with states of a small model, then ask for a step of all of them. */
static void test_full_device(void) {
    bmi_random_config c;
    CHECK_OK(bmi_random_config_preset(&c, "tiny"));
    c.d_model = 1024;
    random_weights w;
    bm_model *m = NULL;
    bm_session *s = NULL;
    CHECK_OK(random_weights_make(&c, 4, &w));
    CHECK_OK(random_model_create(&w, BM_BACKEND_CUDA, 0, &m));
    if (!m) return;
    CHECK_OK(bm_session_new(m, NULL, &s));
    size_t cap = 1u << 20, n = 0;
    bm_state **states = calloc(cap, sizeof *states);
    bm_status st = BM_OK;
    while (n < cap && (st = bm_state_new(m, &states[n])) == BM_OK) n++;
    CHECK_MSG(n < cap && st == BM_ERR_OUT_OF_MEMORY && bm_last_error()[0], "state %zu of a full device -> %d (%s)", n,
              st, bm_last_error());
    printf("device full after %zu states: %s\n", n, bm_last_error());
    /* give one state back so that small allocations are not the only thing left */
    if (n) bm_state_free(states[--n]);
    int32_t *tokens = calloc(n, sizeof *tokens);
    for (size_t i = 0; i < n; i++) tokens[i] = (int32_t)(i % 500);
    st = bm_step_batch(s, states, tokens, n, NULL);
    size_t advanced = 0;
    for (size_t i = 0; i < n; i++) advanced += bm_state_n_tokens(states[i]) == 1;
    printf("a step of %zu states on a full device -> %d (%s), %zu advanced\n", n, st,
           st ? bm_last_error() : "ok", advanced);
    CHECK_MSG(st == BM_OK ? advanced == n : (advanced == 0 && bm_last_error()[0]),
              "step of %zu states on a full device -> %d, %zu advanced", n, st, advanced);
    for (size_t i = 0; i < n; i++) bm_state_free(states[i]);
    /* the device works again once the states are gone */
    bm_state *one = NULL;
    CHECK_OK(bm_state_new(m, &one));
    CHECK_OK(bm_step(s, one, 3, NULL));
    bm_state_free(one);
    free(tokens);
    free(states);
    bm_session_free(s);
    bm_model_free(m);
    random_weights_free(&w);
}

int main(void) {
    test_model_too_large();
    test_full_device();
    return check_summary("test_cuda_oom");
}
