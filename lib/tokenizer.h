/* Internal entry points of the tokenizer (lib/tokenizer.c) for tests and
 * fuzz targets. Not public API. */
#ifndef BM_TOKENIZER_H
#define BM_TOKENIZER_H

#include "common.h"

/* bm_tokenizer_load without the file: parse `len` bytes of tokenizer.json
 * text (need not be NUL-terminated). Same errors as bm_tokenizer_load. */
bm_status bmi_tokenizer_parse(const char *json, size_t len, bm_tokenizer **out);

/* BPE-encode `len` raw bytes as one word, without normalisation, added
 * tokens or pre-tokenization. `use_queue` forces the priority-queue encoder
 * that long words take (otherwise the choice is by length as in
 * bm_tokenize), so tests can check both give the same ids. ids/cap/n_ids as
 * bm_tokenize. */
bm_status bmi_tokenizer_bpe(const bm_tokenizer *t, const char *word, size_t len, int use_queue, int32_t *ids,
                            size_t cap, size_t *n_ids);

#endif
