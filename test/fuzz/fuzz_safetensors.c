/* libFuzzer target for the safetensors reader. `make fuzz` builds it;
 * docs/ROBUSTNESS.md says how to run it and what ran. */
#include "fuzz_reader.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    return fuzz_reader(bmi_parse_safetensors, data, size);
}
