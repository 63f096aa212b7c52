/* Placeholder until the safetensors reader lands. */
#include "tensor.h"
bm_status bmi_read_safetensors(const char *path, bmi_tensor_table *out) {
    (void)path; (void)out;
    return bmi_fail(BM_ERR_UNSUPPORTED, "safetensors reader not built yet");
}
bm_status bmi_parse_safetensors(const void *data, size_t len, bmi_tensor_table *out) {
    (void)data; (void)len; (void)out;
    return bmi_fail(BM_ERR_UNSUPPORTED, "safetensors reader not built yet");
}
