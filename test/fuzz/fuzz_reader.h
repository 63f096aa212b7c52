/* The body shared by the checkpoint-reader fuzz targets: parse a private
 * copy of exactly `size` bytes (so a read past the end is caught even when
 * the fuzzer's buffer is larger), then touch every byte of every view the
 * reader accepted: they must all lie inside the copy. */
#ifndef BM_FUZZ_READER_H
#define BM_FUZZ_READER_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "tensor.h"

static int fuzz_reader(bmi_parse_fn parse, const uint8_t *data, size_t size) {
    uint8_t *copy = malloc(size ? size : 1);
    if (!copy) return 0;
    if (size) memcpy(copy, data, size);
    bmi_tensor_table table;
    bm_status st = parse(copy, size, &table);
    /* Nothing fails to allocate here, so "out of memory" would mean the
     * parser mistook bad input for an allocation failure. */
    if (st == BM_ERR_OUT_OF_MEMORY) abort();
    if (st == BM_OK) {
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

#endif
