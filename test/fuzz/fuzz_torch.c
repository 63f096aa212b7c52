/* libFuzzer target for the pytorch_model.bin reader (ZIP directory plus the
 * restricted pickle interpreter). Build (once a rule exists):
 *   clang -fsanitize=fuzzer,address,undefined -Iinclude -Ilib -D_GNU_SOURCE \
 *     test/fuzz/fuzz_torch.c lib/torch.c lib/zip.c lib/pickle.c lib/tensor.c lib/common.c
 * Seeds: the fixtures' pytorch_model.bin; a dictionary of pickle opcodes and
 * "PK\x01\x02", "PK\x03\x04", "PK\x05\x06", "PK\x06\x06", "PK\x06\x07" helps. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "tensor.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    uint8_t *copy = malloc(size ? size : 1);
    if (!copy) return 0;
    if (size) memcpy(copy, data, size);
    bmi_tensor_table table;
    bm_status st = bmi_parse_torch(copy, size, &table);
    /* Nothing fails to allocate here, so "out of memory" would mean the
     * parser mistook bad input for an allocation failure. */
    if (st == BM_ERR_OUT_OF_MEMORY) abort();
    if (st == BM_OK) {
        /* Touch every byte each view spans: they must lie inside the copy. */
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
