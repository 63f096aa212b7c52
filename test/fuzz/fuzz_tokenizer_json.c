/* libFuzzer target: parse arbitrary bytes as a tokenizer.json. Any input
 * must either load or fail with a status and a message; a file that loads
 * must then tokenize and decode a fixed text without trouble.
 * Build (example):
 *   make BUILD=build-fuzz CC=clang SAN="-fsanitize=fuzzer-no-link,address,undefined" lib
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -Iinclude -Ilib test/fuzz/fuzz_tokenizer_json.c \
 *     build-fuzz/libblackmamba.a -ljansson -lutf8proc -lyaml -lm -lpthread -o fuzz_tokenizer_json
 * A good seed corpus is the real tokenizer.json cut down to a few hundred
 * vocabulary entries and merges. */
#include <stdint.h>
#include <stdlib.h>

#include "blackmamba.h"
#include "tokenizer.h"

static const char SAMPLE[] = "Hello, world! <|endoftext|>  caf\xc3\xa9 \xf0\x9f\x98\x80 12345\n\n\t'll 're";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    bm_tokenizer *t = NULL;
    bm_status st = bmi_tokenizer_parse((const char *)data, size, &t);
    if (st != BM_OK) {
        if (st >= 0 || t != NULL || !bm_last_error()[0]) abort();
        return 0;
    }
    int32_t ids[256];
    size_t n = 0, len = 0;
    st = bm_tokenize(t, SAMPLE, sizeof SAMPLE - 1, ids, 256, &n);
    if (st != BM_OK && st != BM_ERR_BUFFER_TOO_SMALL) abort();
    if (n > 256) n = 256;
    char text[4096];
    st = bm_detokenize(t, ids, n, text, sizeof text, &len);
    if (st != BM_OK && st != BM_ERR_BUFFER_TOO_SMALL) abort();
    for (int32_t id = -1; id <= bm_tokenizer_vocab_size(t); id += 97) {
        const char *piece;
        size_t piece_len;
        (void)bm_tokenizer_id_to_piece(t, id, &piece, &piece_len);
    }
    bm_tokenizer_free(t);
    return 0;
}
