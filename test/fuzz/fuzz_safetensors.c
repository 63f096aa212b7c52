/* libFuzzer target for the safetensors reader. Build (once a rule exists):
 *   clang -fsanitize=fuzzer,address,undefined -Iinclude -Ilib -D_GNU_SOURCE \
 *     test/fuzz/fuzz_safetensors.c lib/safetensors.c lib/tensor.c lib/common.c -ljansson
 * Seeds: the fixtures' model.safetensors and golden.safetensors. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "tensor.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    /* A private copy of exactly `size` bytes, so reads past the end are caught
     * even when the fuzzer's buffer is larger. */
    uint8_t *copy = malloc(size ? size : 1);
    if (!copy) return 0;
    if (size) memcpy(copy, data, size);
    bmi_tensor_table table;
    bm_status st = bmi_parse_safetensors(copy, size, &table);
    /* Nothing fails to allocate here, so "out of memory" would mean the
     * parser mistook bad input for an allocation failure. */
    if (st == BM_ERR_OUT_OF_MEMORY) abort();
    if (st == BM_OK) {
        /* Touch every byte of every view: they must all lie inside the copy. */
        volatile uint8_t sink = 0;
        for (size_t i = 0; i < table.count; i++) {
            const uint8_t *p = table.items[i].data;
            for (size_t k = 0; k < table.items[i].nbytes; k++) sink ^= p[k];
        }
        (void)sink;
        bmi_table_free(&table);
    }
    free(copy);
    return 0;
}
