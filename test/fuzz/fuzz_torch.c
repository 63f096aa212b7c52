/* libFuzzer target for the pytorch_model.bin reader (ZIP directory plus the
 * restricted pickle interpreter). `make fuzz` builds it; docs/ROBUSTNESS.md
 * says how to run it and what ran. */
#include "fuzz_reader.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) { return fuzz_reader(bmi_parse_torch, data, size); }
