/* libFuzzer target: tokenize arbitrary bytes, then decode the ids, both in
 * one call and streamed. Invalid UTF-8 must be refused cleanly; valid UTF-8
 * must decode back to its NFC form, and the streamed decode must equal the
 * one-call decode.
 *
 * The tokenizer comes from $BM_TOKENIZER, else
 * $BM_SHARED/tokenizer/20B_tokenizer.json, else ../shared/... .
 * Build (example):
 *   make BUILD=build-fuzz CC=clang SAN="-fsanitize=fuzzer-no-link,address,undefined" lib
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -Iinclude -Ilib test/fuzz/fuzz_tokenize.c \
 *     build-fuzz/libblackmamba.a -ljansson -lutf8proc -lyaml -lm -lpthread -o fuzz_tokenize */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <utf8proc.h>

#include "blackmamba.h"

static bm_tokenizer *tokenizer;

static void load_tokenizer_once(void) {
    if (tokenizer) return;
    char path[4096];
    const char *explicit_path = getenv("BM_TOKENIZER"), *shared = getenv("BM_SHARED");
    if (explicit_path && *explicit_path) {
        snprintf(path, sizeof path, "%s", explicit_path);
    } else {
        snprintf(path, sizeof path, "%s/tokenizer/20B_tokenizer.json", shared && *shared ? shared : "../shared");
    }
    if (bm_tokenizer_load(path, &tokenizer) != BM_OK) {
        fprintf(stderr, "fuzz_tokenize: %s\n", bm_last_error());
        abort();
    }
}

/* NFC(data) equals the decode. Skipped when the text may hold a special
 * token: those are cut out before normalising, so a combining mark right
 * after one (">" + U+0338) is not composed with it, as in the reference. */
static void check_nfc_round_trip(const uint8_t *data, size_t size, const char *text, size_t len) {
    if (memchr(data, '<', size)) return;
    utf8proc_uint8_t *want = NULL;
    utf8proc_ssize_t want_len = utf8proc_map(data, (utf8proc_ssize_t)size, &want, UTF8PROC_STABLE | UTF8PROC_COMPOSE);
    if (want_len < 0 || (size_t)want_len != len || memcmp(want, text, len) != 0) abort();
    free(want);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    load_tokenizer_once();
    size_t n = 0;
    bm_status st = bm_tokenize(tokenizer, (const char *)data, size, NULL, 0, &n);
    if (st != BM_OK) {
        if (st != BM_ERR_INVALID_ARGUMENT || !bm_last_error()[0]) abort();
        return 0;
    }
    int32_t *ids = malloc((n ? n : 1) * sizeof *ids);
    size_t got = 0;
    if (!ids || bm_tokenize(tokenizer, (const char *)data, size, ids, n, &got) != BM_OK || got != n) abort();

    size_t len = 0;
    if (bm_detokenize(tokenizer, ids, n, NULL, 0, &len) != BM_OK) abort();
    char *text = malloc(len + 1), *streamed = malloc(len + 16);
    size_t text_len = 0, used = 0, piece = 0;
    if (!text || !streamed || bm_detokenize(tokenizer, ids, n, text, len, &text_len) != BM_OK || text_len != len) abort();
    check_nfc_round_trip(data, size, text, text_len);

    bm_detokenizer *d = NULL;
    if (bm_detokenizer_new(tokenizer, &d) != BM_OK) abort();
    for (size_t i = 0; i < n; i++) {
        if (bm_detokenizer_push(d, ids[i], streamed + used, len + 16 - used, &piece) != BM_OK) abort();
        used += piece;
    }
    if (bm_detokenizer_flush(d, streamed + used, len + 16 - used, &piece) != BM_OK) abort();
    used += piece;
    if (used != len || memcmp(streamed, text, len) != 0) abort();
    bm_detokenizer_free(d);
    free(streamed);
    free(text);
    free(ids);
    return 0;
}
