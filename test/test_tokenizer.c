/* The tokenizer against the ids the Hugging Face library gives (the golden
 * texts, and a table of tricky strings), round trips, streaming decoding,
 * bad input, bad tokenizer.json files, allocation failures and threads. */
#include <jansson.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <utf8proc.h>

#include "check.h"
#include "common.h"
#include "fixture.h"
#include "tokenizer.h"

static char tokenizer_path[4096], golden_dir[4096];

/* ---- helpers -------------------------------------------------------------- */

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Encode into a fresh array (malloc), asking for the size first. */
static int32_t *encode(const bm_tokenizer *t, const char *text, size_t len, size_t *n) {
    size_t need = 0;
    if (bm_tokenize(t, text, len, NULL, 0, &need) != BM_OK) return NULL;
    int32_t *ids = malloc((need ? need : 1) * sizeof *ids);
    if (ids && bm_tokenize(t, text, len, ids, need, n) != BM_OK) {
        free(ids);
        return NULL;
    }
    return ids;
}

static char *decode(const bm_tokenizer *t, const int32_t *ids, size_t n, size_t *len) {
    size_t need = 0;
    if (bm_detokenize(t, ids, n, NULL, 0, &need) != BM_OK) return NULL;
    char *text = malloc(need + 1);
    if (text && bm_detokenize(t, ids, n, text, need, len) != BM_OK) {
        free(text);
        return NULL;
    }
    return text;
}

static char *nfc(const char *s, size_t n, size_t *out_len) {
    utf8proc_uint8_t *out = NULL;
    utf8proc_ssize_t len = utf8proc_map((const utf8proc_uint8_t *)s, (utf8proc_ssize_t)n, &out,
                                        UTF8PROC_STABLE | UTF8PROC_COMPOSE);
    if (len < 0) return NULL;
    *out_len = (size_t)len;
    return (char *)out;
}

static int same_bytes(const char *a, size_t an, const char *b, size_t bn) {
    return an == bn && (an == 0 || memcmp(a, b, an) == 0);
}

static int32_t id_of(const bm_tokenizer *t, const char *spelling) {
    return bm_tokenizer_token_to_id(t, spelling, strlen(spelling));
}

/* decode(encode(x)) must give back NFC(x). */
static void check_round_trip(const bm_tokenizer *t, const char *text, size_t len, const char *what) {
    size_t n = 0, out_len = 0, want_len = 0;
    int32_t *ids = encode(t, text, len, &n);
    char *out = ids ? decode(t, ids, n, &out_len) : NULL;
    char *want = nfc(text, len, &want_len);
    CHECK_MSG(out && want && same_bytes(out, out_len, want, want_len), "round trip of %s", what);
    free(ids);
    free(out);
    free(want);
}

/* ---- golden ids from the reference library -------------------------------- */

static void compare_ids(const int32_t *got, size_t n_got, const json_t *want, const char *what) {
    size_t n_want = json_array_size(want), first_diff = 0;
    while (first_diff < n_got && first_diff < n_want &&
           got[first_diff] == (int32_t)json_integer_value(json_array_get(want, first_diff)))
        first_diff++;
    CHECK_MSG(n_got == n_want && first_diff == n_got, "%s: %zu ids, golden %zu, first difference at %zu", what,
              n_got, n_want, first_diff);
}

static void check_streaming(const bm_tokenizer *t, const int32_t *ids, size_t n, const char *what);

static void test_golden(const bm_tokenizer *t) {
    char path[8192];
    snprintf(path, sizeof path, "%s/ids.json", golden_dir);
    json_error_t err;
    json_t *golden = json_load_file(path, 0, &err);
    CHECK_MSG(json_is_object(golden), "cannot read %s: %s", path, err.text);
    if (!json_is_object(golden)) return;
    CHECK(json_object_size(golden) >= 3);
    const char *name;
    json_t *want;
    json_object_foreach(golden, name, want) {
        snprintf(path, sizeof path, "%s/%s", golden_dir, name);
        size_t len = 0, n = 0;
        char *text = read_file(path, &len);
        CHECK_MSG(text != NULL, "cannot read %s", path);
        if (!text) continue;
        int32_t *ids = encode(t, text, len, &n);
        CHECK_MSG(ids != NULL, "encoding %s: %s", name, bm_last_error());
        if (ids) {
            compare_ids(ids, n, want, name);
            /* The exact size works; one less reports the size and keeps a
             * prefix of the ids. */
            size_t count = 0;
            int32_t *small = malloc(n * sizeof *small);
            CHECK_ERR(bm_tokenize(t, text, len, small, n - 1, &count), BM_ERR_BUFFER_TOO_SMALL);
            CHECK(count == n);
            CHECK(memcmp(small, ids, (n - 1) * sizeof *ids) == 0);
            free(small);
            check_round_trip(t, text, len, name);
            check_streaming(t, ids, n, name);
        }
        free(ids);
        free(text);
    }
    json_decref(golden);
}

/* ---- a table of tricky strings, ids from the reference library ------------ */

struct ref_case {
    const char *text;
    size_t len, n_ids;
    int32_t ids[64];
};

/* Made with tokenizers 0.23 (Tokenizer.from_file(...).encode(text).ids).
 * Octal escapes keep the file ASCII; \077 is '?' (no trigraphs). */
static const struct ref_case REF_CASES[] = {
    {"x  \012\012y", 6, 5, {89, 50276, 187, 187, 90}},
    {"\012\012\012", 3, 1, {2756}},
    {"a\302\240\302\240b", 6, 4, {66, 575, 575, 67}},
    {"it's  'S 're 've 'll 'd 'm 't", 29, 17, {262, 434, 50276, 8, 52, 686, 250, 686, 306, 686, 620, 686, 69, 686, 78, 686, 85}},
    {"\011\011tabs   three   \012", 18, 7, {186, 186, 33754, 50275, 13524, 50275, 187}},
    {"line\015\012next\015\012", 12, 5, {1282, 190, 187, 8384, 2379}},
    {"trailing   ", 11, 3, {7604, 4837, 50275}},
    {" leading", 8, 1, {4283}},
    {"a\343\200\200b\342\200\250c\342\200\251d\302\205e", 16, 10, {66, 19409, 67, 40702, 68, 325, 104, 69, 16643, 70}},
    {"e\314\201 cafe\314\201 \341\204\200\341\205\241\341\206\250", 20, 4, {860, 36241, 42984, 212}},
    {"\307\204 \307\205 \307\206", 8, 8, {131, 215, 209, 131, 216, 209, 131, 217}},
    {"\331\241\331\242\331\243 \302\275 \342\205\247", 13, 10, {149, 96, 149, 97, 149, 98, 24142, 3384, 216, 102}},
    {"\360\237\221\250\342\200\215\360\237\221\251\342\200\215\360\237\221\247", 18, 13, {14931, 228, 103, 325, 224, 14931, 228, 104, 325, 224, 14931, 228, 102}},
    {"\344\275\240\345\245\275\344\270\226\347\225\214", 12, 4, {24553, 34439, 42848, 45261}},
    {"<|endoftext|>", 13, 1, {0}},
    {"a<|endoftext|>b", 15, 3, {66, 0, 67}},
    {"<|endoftext|", 12, 6, {29, 93, 423, 1171, 1156, 93}},
    {"<|padding|><|endoftext|>", 24, 2, {1, 0}},
    {"  <|endoftext|>  x", 18, 4, {50276, 0, 50276, 89}},
    {"x\000y\034\037z\177", 7, 7, {89, 177, 90, 205, 208, 91, 210}},
    {"\077\077\077!!! ... ---", 14, 4, {33186, 15844, 3346, 8915}},
    {"123456789012345 3.14", 20, 7, {42594, 43784, 39154, 1857, 495, 15, 1047}},
    {"'''s", 4, 2, {35033, 84}},
    {" 's", 3, 2, {686, 84}},
    {"don't", 5, 2, {9903, 626}},
    {"DON'T", 5, 3, {39153, 8, 53}},
    {"\314\200abc", 5, 3, {136, 211, 19758}},
    {"a \314\200b", 5, 5, {66, 209, 136, 211, 67}},
    {"\357\254\254 \340\245\230", 7, 8, {26344, 146, 122, 147, 212, 21433, 2483, 122}},
    {"word\302\240", 6, 2, {3418, 575}},
    {"\302\240 x", 4, 2, {575, 1269}},
    {" \012 x", 4, 2, {2490, 1269}},
    {"\012 \012", 3, 1, {19668}},
    {"x\342\200\203\342\200\203y", 8, 4, {89, 3930, 3930, 90}},
    {"\303\205\316\251 \357\254\201", 8, 6, {18221, 138, 104, 16141, 107, 212}},
    {"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", 70, 10, {49642, 49642, 49642, 49642, 49642, 49642, 49642, 49642, 23342, 5781}},
    {"abababababababababababababababababababababababababababababababababababababababab", 80, 40, {357, 357, 357, 357, 357, 357, 357, 357, 357, 357, 357, 357, 357, 357, 357, 357, 357, 357, 357, 357,
      357, 357, 357, 357, 357, 357, 357, 357, 357, 357, 357, 357, 357, 357, 357, 357, 357, 357, 357, 357}},
    {"\012\012\012\012\012\012\012\012\012\012\012\012\012\012\012\012\012\012\012\012\012\012\012\012\012"
     "\012\012\012\012\012\012\012\012\012\012\012\012\012\012\012\012\012\012\012\012\012\012\012\012\012", 50, 7, {25330, 25330, 25330, 25330, 25330, 25330, 535}},
};

static void test_reference_cases(const bm_tokenizer *t) {
    for (size_t i = 0; i < sizeof REF_CASES / sizeof REF_CASES[0]; i++) {
        const struct ref_case *c = &REF_CASES[i];
        size_t n = 0;
        int32_t *ids = encode(t, c->text, c->len, &n);
        CHECK_MSG(ids && n == c->n_ids && memcmp(ids, c->ids, n * sizeof *ids) == 0, "reference case %zu (%zu ids)", i,
                  n);
        check_round_trip(t, c->text, c->len, "a reference case");
        free(ids);
    }
}

/* ---- added tokens, whitespace ----------------------------------------------- */

static void test_added_tokens(const bm_tokenizer *t) {
    int32_t a = id_of(t, "a"), b = id_of(t, "b"), space_b = id_of(t, "\xc4\xa0" "b");
    CHECK(a >= 0 && b >= 0 && space_b >= 0);
    /* "a", n spaces, "b": the multi-space added tokens (24 down to 2 spaces)
     * take the spaces leftmost-longest; a single space left over goes to the
     * word after it. */
    for (int n_spaces = 1; n_spaces <= 60; n_spaces++) {
        char text[80];
        text[0] = 'a';
        memset(text + 1, ' ', (size_t)n_spaces);
        text[n_spaces + 1] = 'b';
        int32_t want[8];
        size_t n_want = 0, n = 0;
        want[n_want++] = a;
        for (int q = 0; q < n_spaces / 24; q++) want[n_want++] = bm_tokenizer_token_to_id(t, text + 1, 24);
        int r = n_spaces % 24;
        if (r >= 2) want[n_want++] = bm_tokenizer_token_to_id(t, text + 1, (size_t)r);
        want[n_want++] = r == 1 ? space_b : b;
        int32_t *ids = encode(t, text, (size_t)n_spaces + 2, &n);
        CHECK_MSG(ids && n == n_want && memcmp(ids, want, n * sizeof *ids) == 0, "a, %d spaces, b", n_spaces);
        free(ids);
    }
    const char *text = "Hello<|endoftext|>world <|padding|>!";
    size_t n = 0;
    int32_t *ids = encode(t, text, strlen(text), &n);
    CHECK(ids && n == 6 && ids[0] == id_of(t, "Hello") && ids[1] == 0 && ids[2] == id_of(t, "world") &&
          ids[3] == id_of(t, "\xc4\xa0") && ids[4] == 1 && ids[5] == id_of(t, "!"));
    free(ids);
    /* Not quite a special token: plain text. */
    text = "<|endoftext |>";
    ids = encode(t, text, strlen(text), &n);
    for (size_t i = 0; ids && i < n; i++) CHECK(ids[i] != 0);
    free(ids);
    check_round_trip(t, "x<|endoftext|><|endoftext|>\n\n  \t y  ", 36, "specials and spaces");
}

static void test_whitespace_runs(const bm_tokenizer *t) {
    static const char *const texts[] = {" ", "  ", "\n", "\n\n\n\n", "\t", " \t \n \r\n", "a \n b", "   x",
                                        "x   ", "\n\n\nx\n\n\n", "\xe3\x80\x80\xe3\x80\x80x"};
    for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++) check_round_trip(t, texts[i], strlen(texts[i]), texts[i]);
    /* Long runs of each kind. */
    static const char fill[] = {' ', '\n', '\t', 'z', '7', '!'};
    for (size_t i = 0; i < sizeof fill; i++) {
        size_t len = 5000;
        char *text = malloc(len);
        memset(text, fill[i], len);
        check_round_trip(t, text, len, "a long run");
        free(text);
    }
}

/* ---- bad and edge input ----------------------------------------------------- */

static void test_invalid_utf8(const bm_tokenizer *t) {
    static const struct {
        const char *text;
        size_t len, offset;
    } bad[] = {
        {"\xff", 1, 0},         {"abc\xc3", 4, 3},          {"ab\xed\xa0\x80", 5, 2}, {"\xc0\xaf", 2, 0},
        {"x\xf4\x90\x80\x80", 5, 1}, {"ok \xe2\x82 no", 8, 3}, {"\x80", 1, 0},        {"caf\xc3\xa9\xa9", 6, 5},
    };
    int32_t ids[16];
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        size_t n = 12345;
        char want[64];
        snprintf(want, sizeof want, "byte offset %zu", bad[i].offset);
        CHECK_ERR(bm_tokenize(t, bad[i].text, bad[i].len, ids, 16, &n), BM_ERR_INVALID_ARGUMENT);
        CHECK_MSG(strstr(bm_last_error(), want) != NULL, "case %zu: \"%s\" lacks \"%s\"", i, bm_last_error(), want);
        CHECK(n == 12345);
        CHECK_ERR(bm_tokenize(t, bad[i].text, bad[i].len, NULL, 0, &n), BM_ERR_INVALID_ARGUMENT);
    }
}

static void test_edges(const bm_tokenizer *t) {
    size_t n = 99;
    int32_t ids[4];
    char buf[8];
    CHECK_OK(bm_tokenize(t, "", 0, ids, 4, &n));
    CHECK(n == 0);
    n = 99;
    CHECK_OK(bm_tokenize(t, NULL, 0, NULL, 0, &n));
    CHECK(n == 0);
    CHECK_ERR(bm_tokenize(NULL, "a", 1, ids, 4, &n), BM_ERR_INVALID_ARGUMENT);
    CHECK_ERR(bm_tokenize(t, NULL, 1, ids, 4, &n), BM_ERR_INVALID_ARGUMENT);
    CHECK_ERR(bm_tokenize(t, "a", 1, ids, 4, NULL), BM_ERR_INVALID_ARGUMENT);
    /* Size query, exact fit, too small. */
    CHECK_OK(bm_tokenize(t, "Hello world", 11, NULL, 0, &n));
    CHECK(n == 2);
    CHECK_OK(bm_tokenize(t, "Hello world", 11, ids, 2, &n));
    CHECK(n == 2 && ids[0] == id_of(t, "Hello") && ids[1] == id_of(t, "\xc4\xa0world"));
    CHECK_ERR(bm_tokenize(t, "Hello world", 11, ids, 1, &n), BM_ERR_BUFFER_TOO_SMALL);
    CHECK(n == 2);
    CHECK_ERR(bm_tokenize(t, "Hello world", 11, ids, 0, &n), BM_ERR_BUFFER_TOO_SMALL);

    /* Decoding: sizes, ranges. */
    size_t len = 99;
    CHECK_OK(bm_detokenize(t, NULL, 0, buf, sizeof buf, &len));
    CHECK(len == 0);
    int32_t hello[2] = {id_of(t, "Hello"), id_of(t, "\xc4\xa0world")};
    CHECK_OK(bm_detokenize(t, hello, 2, NULL, 0, &len));
    CHECK(len == 11);
    memset(buf, '#', sizeof buf);
    CHECK_ERR(bm_detokenize(t, hello, 2, buf, sizeof buf, &len), BM_ERR_BUFFER_TOO_SMALL);
    CHECK(len == 11 && buf[0] == '#');
    char big[16];
    CHECK_OK(bm_detokenize(t, hello, 2, big, 11, &len));
    CHECK(len == 11 && memcmp(big, "Hello world", 11) == 0);
    int32_t out_of_range[][2] = {{5, -1}, {50277, 5}, {INT32_MAX, 0}, {INT32_MIN, 0}};
    for (size_t i = 0; i < 4; i++) {
        CHECK_ERR(bm_detokenize(t, out_of_range[i], 2, big, sizeof big, &len), BM_ERR_INVALID_ARGUMENT);
        CHECK_ERR(bm_detokenize(t, out_of_range[i], 2, NULL, 0, &len), BM_ERR_INVALID_ARGUMENT);
    }
    CHECK_ERR(bm_detokenize(NULL, hello, 2, big, sizeof big, &len), BM_ERR_INVALID_ARGUMENT);
    CHECK_ERR(bm_detokenize(t, NULL, 2, big, sizeof big, &len), BM_ERR_INVALID_ARGUMENT);
    CHECK_ERR(bm_detokenize(t, hello, 2, big, sizeof big, NULL), BM_ERR_INVALID_ARGUMENT);
    /* A lone continuation byte and a cut character become U+FFFD. */
    int32_t cut[2] = {id_of(t, "\xc3\xa2"), id_of(t, "a")}; /* byte 0xE2, then 'a' */
    CHECK_OK(bm_detokenize(t, cut, 2, big, sizeof big, &len));
    CHECK(len == 4 && memcmp(big, "\xef\xbf\xbd" "a", 4) == 0);
}

static void test_lookups(const bm_tokenizer *t) {
    CHECK(bm_tokenizer_vocab_size(t) == 50277);
    CHECK(bm_tokenizer_vocab_size(NULL) == 0);
    CHECK(bm_tokenizer_eos(t) == 0);
    CHECK(bm_tokenizer_eos(NULL) == -1);
    CHECK(bm_tokenizer_is_special(t, 0) == 1 && bm_tokenizer_is_special(t, 1) == 1);
    CHECK(bm_tokenizer_is_special(t, 50254) == 0 && bm_tokenizer_is_special(t, 2) == 0);
    CHECK(bm_tokenizer_is_special(t, -1) == 0 && bm_tokenizer_is_special(t, 50277) == 0);
    CHECK(bm_tokenizer_is_special(NULL, 0) == 0);
    CHECK(id_of(t, "<|endoftext|>") == 0);
    CHECK(id_of(t, "<|padding|>") == 1);
    CHECK(id_of(t, "!") == 2);
    CHECK(bm_tokenizer_token_to_id(t, "                        ", 24) == 50254);
    CHECK(bm_tokenizer_token_to_id(t, "  ", 2) == 50276);
    CHECK(id_of(t, "no such token, surely") == -1);
    CHECK(bm_tokenizer_token_to_id(NULL, "a", 1) == -1);
    CHECK(bm_tokenizer_token_to_id(t, NULL, 1) == -1);
    const char *piece = NULL;
    size_t len = 0;
    CHECK_OK(bm_tokenizer_id_to_piece(t, 0, &piece, &len));
    CHECK(len == 13 && memcmp(piece, "<|endoftext|>", 13) == 0);
    CHECK_OK(bm_tokenizer_id_to_piece(t, id_of(t, "\xc4\xa0the"), &piece, &len));
    CHECK(len == 4 && memcmp(piece, " the", 4) == 0);
    CHECK_OK(bm_tokenizer_id_to_piece(t, 50276, &piece, &len));
    CHECK(len == 2 && memcmp(piece, "  ", 2) == 0);
    CHECK_ERR(bm_tokenizer_id_to_piece(t, 50277, &piece, &len), BM_ERR_INVALID_ARGUMENT);
    CHECK_ERR(bm_tokenizer_id_to_piece(t, -3, &piece, &len), BM_ERR_INVALID_ARGUMENT);
    CHECK_ERR(bm_tokenizer_id_to_piece(t, 0, NULL, &len), BM_ERR_INVALID_ARGUMENT);
    CHECK(bm_tokenizer_max_token_bytes(t) >= 24);
    CHECK(bm_tokenizer_max_token_bytes(NULL) == 0);
    /* Every byte that UTF-8 uses has a token whose piece is that byte; the
     * 13 that it never uses have none in this vocabulary. */
    int bytes_seen[256] = {0}, n_seen = 0;
    for (int32_t id = 0; id < bm_tokenizer_vocab_size(t); id++)
        if (bm_tokenizer_id_to_piece(t, id, &piece, &len) == BM_OK && len == 1) bytes_seen[(uint8_t)piece[0]] = 1;
    for (int b = 0; b < 256; b++) n_seen += bytes_seen[b];
    CHECK(n_seen == 243 && bytes_seen[0] && bytes_seen[0xF4] && bytes_seen[0xC2] && !bytes_seen[0xC0]);
}

/* ---- streaming decoding ------------------------------------------------------ */

static int stream_all(const bm_tokenizer *t, const int32_t *ids, size_t n, char *out, size_t cap, size_t *len) {
    bm_detokenizer *d = NULL;
    if (bm_detokenizer_new(t, &d) != BM_OK) return 0;
    size_t used = 0, got = 0;
    int ok = 1;
    for (size_t i = 0; i < n && ok; i++) {
        ok = bm_detokenizer_push(d, ids[i], out + used, cap - used, &got) == BM_OK;
        used += got;
    }
    ok = ok && bm_detokenizer_flush(d, out + used, cap - used, &got) == BM_OK;
    *len = used + got;
    bm_detokenizer_free(d);
    return ok;
}

/* Every prefix ids[0..k): the pushes so far plus what a flush would give
 * must equal bm_detokenize of the prefix. One stream covers every prefix
 * (pushes never depend on later ids; the flush is measured, not done), and
 * streams replayed from scratch with a real flush cover a sample of them. */
static void check_streaming(const bm_tokenizer *t, const int32_t *ids, size_t n, const char *what) {
    size_t full_len = 0;
    char *full = decode(t, ids, n, &full_len);
    size_t cap = 3 * (full_len + 16);
    char *streamed = malloc(cap), *prefix = malloc(cap);
    bm_detokenizer *d = NULL;
    CHECK_OK(bm_detokenizer_new(t, &d));
    if (!full || !streamed || !prefix || !d) goto done;
    size_t used = 0, bad_prefixes = 0, bad_replays = 0, held = 0;
    for (size_t k = 0; k <= n; k++) {
        size_t got = 0, flush_len = 0, prefix_len = 0;
        if (k > 0) {
            if (bm_detokenizer_push(d, ids[k - 1], streamed + used, cap - used, &got) != BM_OK) bad_prefixes++;
            used += got;
        }
        bm_detokenizer_flush(d, NULL, 0, &flush_len);
        held += flush_len != 0;
        bm_detokenize(t, ids, k, prefix, cap, &prefix_len);
        memcpy(streamed + used, "\xef\xbf\xbd", flush_len);
        if (!same_bytes(streamed, used + flush_len, prefix, prefix_len)) bad_prefixes++;
        if (k % 61 == 0 || k == n || n < 300) {
            size_t replay_len = 0;
            char *replay = malloc(cap);
            if (!replay || !stream_all(t, ids, k, replay, cap, &replay_len) ||
                !same_bytes(replay, replay_len, prefix, prefix_len))
                bad_replays++;
            free(replay);
        }
    }
    CHECK_MSG(bad_prefixes == 0, "%s: %zu prefixes stream differently", what, bad_prefixes);
    CHECK_MSG(bad_replays == 0, "%s: %zu replayed prefixes differ", what, bad_replays);
    CHECK(same_bytes(streamed, used, full, full_len));
    /* mixed.txt has emoji split over several tokens, so something is held. */
    if (strcmp(what, "mixed.txt") == 0) CHECK(held > 0);
done:
    bm_detokenizer_free(d);
    free(full);
    free(streamed);
    free(prefix);
}

static uint64_t rng_next(uint64_t *s) {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static void test_streaming_api(const bm_tokenizer *t) {
    bm_detokenizer *d = NULL;
    char buf[64];
    size_t len = 0;
    CHECK_ERR(bm_detokenizer_new(NULL, &d), BM_ERR_INVALID_ARGUMENT);
    CHECK_ERR(bm_detokenizer_new(t, NULL), BM_ERR_INVALID_ARGUMENT);
    CHECK_OK(bm_detokenizer_new(t, &d));
    if (!d) return;
    /* "é" is one token, but the emoji 😀 (F0 9F 98 80) needs several: no
     * byte of it comes out until it is complete. */
    const char *emoji = "\xf0\x9f\x98\x80";
    size_t n = 0;
    int32_t *ids = encode(t, emoji, 4, &n);
    CHECK(ids && n >= 2);
    for (size_t i = 0; ids && i + 1 < n; i++) {
        CHECK_OK(bm_detokenizer_push(d, ids[i], buf, sizeof buf, &len));
        CHECK(len == 0);
    }
    /* Size query and too small a buffer change nothing. */
    CHECK_OK(bm_detokenizer_push(d, ids[n - 1], NULL, 0, &len));
    CHECK(len == 4);
    CHECK_ERR(bm_detokenizer_push(d, ids[n - 1], buf, 3, &len), BM_ERR_BUFFER_TOO_SMALL);
    CHECK(len == 4);
    CHECK_ERR(bm_detokenizer_push(d, -1, buf, sizeof buf, &len), BM_ERR_INVALID_ARGUMENT);
    CHECK_ERR(bm_detokenizer_push(d, 50277, buf, sizeof buf, &len), BM_ERR_INVALID_ARGUMENT);
    CHECK_OK(bm_detokenizer_push(d, ids[n - 1], buf, sizeof buf, &len));
    CHECK(len == 4 && memcmp(buf, emoji, 4) == 0);
    CHECK_OK(bm_detokenizer_flush(d, buf, sizeof buf, &len));
    CHECK(len == 0);
    /* An unfinished character: flush gives U+FFFD, after checking sizes. */
    CHECK_OK(bm_detokenizer_push(d, ids[0], buf, sizeof buf, &len));
    CHECK(len == 0);
    CHECK_OK(bm_detokenizer_flush(d, NULL, 0, &len));
    CHECK(len == 3);
    CHECK_ERR(bm_detokenizer_flush(d, buf, 2, &len), BM_ERR_BUFFER_TOO_SMALL);
    CHECK_OK(bm_detokenizer_flush(d, buf, sizeof buf, &len));
    CHECK(len == 3 && memcmp(buf, "\xef\xbf\xbd", 3) == 0);
    CHECK_OK(bm_detokenizer_flush(d, buf, sizeof buf, &len));
    CHECK(len == 0);
    /* Reset drops held bytes; a new character is then not spoiled. */
    CHECK_OK(bm_detokenizer_push(d, ids[0], buf, sizeof buf, &len));
    bm_detokenizer_reset(d);
    int32_t a = id_of(t, "a");
    CHECK_OK(bm_detokenizer_push(d, a, buf, sizeof buf, &len));
    CHECK(len == 1 && buf[0] == 'a');
    /* Held bytes that a later token cannot continue: U+FFFD, then the token. */
    CHECK_OK(bm_detokenizer_push(d, ids[0], buf, sizeof buf, &len));
    CHECK_OK(bm_detokenizer_push(d, a, buf, sizeof buf, &len));
    CHECK(len == 4 && memcmp(buf, "\xef\xbf\xbd" "a", 4) == 0);
    CHECK_ERR(bm_detokenizer_push(NULL, a, buf, sizeof buf, &len), BM_ERR_INVALID_ARGUMENT);
    CHECK_ERR(bm_detokenizer_push(d, a, buf, sizeof buf, NULL), BM_ERR_INVALID_ARGUMENT);
    CHECK_ERR(bm_detokenizer_flush(NULL, buf, sizeof buf, &len), BM_ERR_INVALID_ARGUMENT);
    bm_detokenizer_reset(NULL);
    bm_detokenizer_free(d);
    bm_detokenizer_free(NULL);
    free(ids);

    /* Random ids, many of them stray bytes >= 0x80: the stream must agree
     * with bm_detokenize, output must be valid UTF-8, and the bound the header
     * gives must hold for every push. */
    int32_t high_bytes[128];
    size_t n_high = 0;
    for (int32_t id = 0; id < bm_tokenizer_vocab_size(t) && n_high < 128; id++) {
        const char *piece;
        if (bm_tokenizer_id_to_piece(t, id, &piece, &len) == BM_OK && len == 1 && (uint8_t)piece[0] >= 0x80)
            high_bytes[n_high++] = id;
    }
    CHECK(n_high == 115); /* 0x80..0xFF less C0, C1, F5..FF */
    uint64_t seed = 0x1234567;
    size_t bound = 3 * (bm_tokenizer_max_token_bytes(t) + 3), bad = 0, invalid = 0;
    for (int round = 0; round < 200; round++) {
        int32_t rand_ids[40];
        for (int i = 0; i < 40; i++) {
            uint64_t r = rng_next(&seed);
            rand_ids[i] = (r & 1) ? high_bytes[(r >> 8) % n_high] : (int32_t)((r >> 8) % 50277);
        }
        size_t want_len = 0, got_len = 0;
        char *want = decode(t, rand_ids, 40, &want_len);
        char *got = malloc(40 * bound);
        if (!want || !got || !stream_all(t, rand_ids, 40, got, 40 * bound, &got_len) ||
            !same_bytes(want, want_len, got, got_len))
            bad++;
        if (want) {
            utf8proc_int32_t cp;
            for (utf8proc_ssize_t pos = 0, k; pos < (utf8proc_ssize_t)want_len; pos += k)
                if ((k = utf8proc_iterate((const utf8proc_uint8_t *)want + pos, (utf8proc_ssize_t)want_len - pos, &cp)) <= 0) {
                    invalid++;
                    break;
                }
        }
        free(want);
        free(got);
    }
    CHECK_MSG(bad == 0, "%zu random streams differ from bm_detokenize", bad);
    CHECK_MSG(invalid == 0, "%zu decodes are not valid UTF-8", invalid);
    bm_detokenizer *tight = NULL;
    CHECK_OK(bm_detokenizer_new(t, &tight));
    char *tight_buf = malloc(bound);
    size_t over = 0;
    for (int i = 0; tight && tight_buf && i < 2000; i++) {
        uint64_t r = rng_next(&seed);
        int32_t id = (r & 1) ? high_bytes[(r >> 8) % n_high] : (int32_t)((r >> 8) % 50277);
        if (bm_detokenizer_push(tight, id, tight_buf, bound, &len) != BM_OK) over++;
    }
    CHECK(over == 0);
    free(tight_buf);
    bm_detokenizer_free(tight);
}

/* ---- BPE internals: both encoders agree; long words stay fast -------------- */

static void test_bpe_encoders(const bm_tokenizer *t) {
    static const char alphabet[] = "aaabbcdeeeinnorsttl  \n\n\t!.";
    uint64_t seed = 42;
    size_t differ = 0;
    for (int round = 0; round < 300; round++) {
        char word[200];
        size_t len = 1 + rng_next(&seed) % sizeof word;
        for (size_t i = 0; i < len; i++) word[i] = alphabet[rng_next(&seed) % (sizeof alphabet - 1)];
        int32_t a[200], b[200];
        size_t na = 0, nb = 0;
        if (bmi_tokenizer_bpe(t, word, len, 0, a, 200, &na) != BM_OK ||
            bmi_tokenizer_bpe(t, word, len, 1, b, 200, &nb) != BM_OK || na != nb || memcmp(a, b, na * sizeof *a) != 0)
            differ++;
    }
    CHECK_MSG(differ == 0, "%zu words encode differently with the queue", differ);

    /* A 1 MB word of one letter: linear in practice. */
    size_t len = 1 << 20, n = 0;
    char *word = malloc(len);
    memset(word, 'a', len);
    double t0 = now_seconds();
    int32_t *ids = encode(t, word, len, &n);
    double secs = now_seconds() - t0;
    CHECK(ids != NULL && n > 0 && n < len / 4);
    printf("test_tokenizer: a 1 MB word of 'a' took %.3f s (%zu ids)\n", secs, n);
    size_t out_len = 0;
    char *out = ids ? decode(t, ids, n, &out_len) : NULL;
    CHECK(out && same_bytes(out, out_len, word, len));
    free(out);
    free(ids);
    free(word);
}

/* ---- a large input ------------------------------------------------------------ */

static char *make_large_text(size_t target, size_t *len) {
    static const char *const names[] = {"apache.txt", "mixed.txt", "stdio_h.txt"};
    char *parts[3];
    size_t part_len[3];
    for (int i = 0; i < 3; i++) {
        char path[8192];
        snprintf(path, sizeof path, "%s/%s", golden_dir, names[i]);
        parts[i] = read_file(path, &part_len[i]);
        if (!parts[i]) {
            for (int j = 0; j < i; j++) free(parts[j]);
            return NULL;
        }
    }
    char *text = malloc(target + 20000);
    size_t used = 0;
    uint64_t seed = 7;
    while (text && used < target) {
        int i = (int)(rng_next(&seed) % 3);
        memcpy(text + used, parts[i], part_len[i]);
        used += part_len[i];
    }
    for (int i = 0; i < 3; i++) free(parts[i]);
    *len = used;
    return text;
}

static void test_large_input(const bm_tokenizer *t) {
    size_t len = 0, n = 0, count = 0;
    char *text = make_large_text(10u << 20, &len);
    CHECK(text != NULL);
    if (!text) return;
    double t0 = now_seconds();
    CHECK_OK(bm_tokenize(t, text, len, NULL, 0, &count));
    double t1 = now_seconds();
    int32_t *ids = malloc(count * sizeof *ids);
    CHECK_OK(bm_tokenize(t, text, len, ids, count, &n));
    double t2 = now_seconds();
    CHECK(n == count);
    printf("test_tokenizer: %.1f MB in %zu ids: count %.3f s, encode %.3f s (%.1f MB/s)\n", len / 1e6, n, t1 - t0,
           t2 - t1, len / 1e6 / (t2 - t1));
    size_t out_len = 0, want_len = 0;
    char *out = decode(t, ids, n, &out_len);
    char *want = nfc(text, len, &want_len);
    CHECK(out && want && same_bytes(out, out_len, want, want_len));
    free(out);
    free(want);
    free(ids);
    free(text);
}

/* ---- tokenizer.json variants ---------------------------------------------------- */

static json_t *real_json;

/* Parse the real file with one change made by `edit`, expecting `want`. */
static void check_variant(void (*edit)(json_t *), bm_status want, const char *what) {
    json_t *copy = json_deep_copy(real_json);
    edit(copy);
    char *text = json_dumps(copy, JSON_COMPACT);
    bm_tokenizer *t = NULL;
    bm_status st = bmi_tokenizer_parse(text, strlen(text), &t);
    CHECK_MSG(st == want && (st == BM_OK || bm_last_error()[0]), "%s: got %d (%s), wanted %d", what, (int)st,
              bm_last_error(), (int)want);
    CHECK(st == BM_OK ? t != NULL : t == NULL);
    bm_tokenizer_free(t);
    free(text);
    json_decref(copy);
}

static json_t *model_of(json_t *root) { return json_object_get(root, "model"); }
static json_t *added_token(json_t *root, size_t i) { return json_array_get(json_object_get(root, "added_tokens"), i); }

static void edit_nothing(json_t *r) { (void)r; }
static void edit_wordpiece(json_t *r) { json_object_set_new(model_of(r), "type", json_string("WordPiece")); }
static void edit_nfkc(json_t *r) { json_object_set_new(json_object_get(r, "normalizer"), "type", json_string("NFKC")); }
static void edit_no_normalizer(json_t *r) { json_object_set_new(r, "normalizer", json_null()); }
static void edit_prefix_space(json_t *r) {
    json_object_set_new(json_object_get(r, "pre_tokenizer"), "add_prefix_space", json_true());
}
static void edit_whitespace_pre(json_t *r) {
    json_object_set_new(json_object_get(r, "pre_tokenizer"), "type", json_string("Whitespace"));
}
static void edit_decoder(json_t *r) { json_object_set_new(r, "decoder", json_null()); }
static void edit_template(json_t *r) {
    json_object_set_new(json_object_get(r, "post_processor"), "type", json_string("TemplateProcessing"));
}
static void edit_dropout(json_t *r) { json_object_set_new(model_of(r), "dropout", json_real(0.1)); }
static void edit_lstrip(json_t *r) { json_object_set_new(added_token(r, 0), "lstrip", json_true()); }
static void edit_bad_merge(json_t *r) {
    json_array_set_new(json_object_get(model_of(r), "merges"), 3, json_string("Ġ nosuchtoken"));
}
static void edit_merge_three(json_t *r) { json_array_set_new(json_object_get(model_of(r), "merges"), 3, json_string("a b c")); }
static void edit_merge_unjoined(json_t *r) {
    json_array_set_new(json_object_get(model_of(r), "merges"), 3, json_string("<|endoftext|> <|padding|>"));
}
static void edit_merges_as_pairs(json_t *r) {
    json_t *merges = json_object_get(model_of(r), "merges"), *m;
    size_t i;
    json_array_foreach(merges, i, m) {
        const char *s = json_string_value(m), *space = strchr(s, ' ');
        json_t *pair = json_pack("[s#s]", s, (int)(space - s), space + 1);
        json_array_set_new(merges, i, pair);
    }
}
static void edit_no_vocab(json_t *r) { json_object_del(model_of(r), "vocab"); }
static void edit_string_id(json_t *r) { json_object_set_new(json_object_get(model_of(r), "vocab"), "a", json_string("7")); }
static void edit_huge_id(json_t *r) { json_object_set_new(json_object_get(model_of(r), "vocab"), "zzzz", json_integer(1LL << 40)); }
static void edit_negative_id(json_t *r) { json_object_set_new(json_object_get(model_of(r), "vocab"), "zzzz", json_integer(-2)); }
static void edit_dup_id(json_t *r) { json_object_set_new(json_object_get(model_of(r), "vocab"), "zzzz", json_integer(5)); }
static void edit_no_byte(json_t *r) { json_object_del(json_object_get(model_of(r), "vocab"), "Ġ"); }
static void edit_added_clash(json_t *r) { json_object_set_new(added_token(r, 0), "content", json_string("Ġthe")); }
static void edit_added_empty(json_t *r) { json_object_set_new(added_token(r, 2), "content", json_string("")); }
static void edit_added_not_object(json_t *r) { json_array_set_new(json_object_get(r, "added_tokens"), 1, json_integer(3)); }
static void edit_top_array(json_t *r) { json_object_clear(r); }

static void test_bad_json(void) {
    bm_tokenizer *t = NULL;
    CHECK_ERR(bm_tokenizer_load("/nonexistent/tokenizer.json", &t), BM_ERR_IO);
    CHECK(strstr(bm_last_error(), "/nonexistent/tokenizer.json") != NULL);
    CHECK_ERR(bm_tokenizer_load(golden_dir, &t), BM_ERR_IO); /* a directory */
    CHECK_ERR(bm_tokenizer_load(NULL, &t), BM_ERR_INVALID_ARGUMENT);
    CHECK_ERR(bm_tokenizer_load(tokenizer_path, NULL), BM_ERR_INVALID_ARGUMENT);
    static const char *const not_json[] = {"", "{", "[]", "null", "{\"model\": 3}", "{\"model\": {\"type\": \"BPE\"}}",
                                           "\xff\xfe", "{\"model\": {\"vocab\": {}, \"merges\": []}}"};
    for (size_t i = 0; i < sizeof not_json / sizeof not_json[0]; i++) {
        bm_status st = bmi_tokenizer_parse(not_json[i], strlen(not_json[i]), &t);
        CHECK_MSG(st == BM_ERR_FORMAT || st == BM_ERR_UNSUPPORTED, "\"%s\" gave %d", not_json[i], (int)st);
        CHECK(bm_last_error()[0] != '\0');
    }
    CHECK(t == NULL);
    CHECK_ERR(bmi_tokenizer_parse(NULL, 3, &t), BM_ERR_INVALID_ARGUMENT);

    json_error_t err;
    real_json = json_load_file(tokenizer_path, 0, &err);
    CHECK(real_json != NULL);
    if (!real_json) return;
    check_variant(edit_nothing, BM_OK, "unchanged");
    check_variant(edit_no_normalizer, BM_OK, "no normalizer");
    check_variant(edit_merges_as_pairs, BM_OK, "merges as pairs");
    check_variant(edit_wordpiece, BM_ERR_UNSUPPORTED, "WordPiece");
    check_variant(edit_nfkc, BM_ERR_UNSUPPORTED, "NFKC");
    check_variant(edit_prefix_space, BM_ERR_UNSUPPORTED, "add_prefix_space");
    check_variant(edit_whitespace_pre, BM_ERR_UNSUPPORTED, "Whitespace pre-tokenizer");
    check_variant(edit_decoder, BM_ERR_UNSUPPORTED, "no decoder");
    check_variant(edit_template, BM_ERR_UNSUPPORTED, "template post-processor");
    check_variant(edit_dropout, BM_ERR_UNSUPPORTED, "dropout");
    check_variant(edit_lstrip, BM_ERR_UNSUPPORTED, "lstrip");
    check_variant(edit_no_byte, BM_ERR_UNSUPPORTED, "a byte missing");
    check_variant(edit_bad_merge, BM_ERR_FORMAT, "merge of an unknown token");
    check_variant(edit_merge_three, BM_ERR_FORMAT, "merge of three");
    check_variant(edit_merge_unjoined, BM_ERR_FORMAT, "merge result not in vocab");
    check_variant(edit_no_vocab, BM_ERR_FORMAT, "no vocab");
    check_variant(edit_string_id, BM_ERR_FORMAT, "string id");
    check_variant(edit_huge_id, BM_ERR_FORMAT, "huge id");
    check_variant(edit_negative_id, BM_ERR_FORMAT, "negative id");
    check_variant(edit_dup_id, BM_ERR_FORMAT, "id used twice");
    check_variant(edit_added_clash, BM_ERR_FORMAT, "added token naming another token");
    check_variant(edit_added_empty, BM_ERR_FORMAT, "empty added token");
    check_variant(edit_added_not_object, BM_ERR_FORMAT, "added token not an object");
    check_variant(edit_top_array, BM_ERR_FORMAT, "empty object");
}

/* Merges written as pairs give the same ids as merges written as strings. */
static void test_pair_merges(const bm_tokenizer *t) {
    if (!real_json) return;
    json_t *copy = json_deep_copy(real_json);
    edit_merges_as_pairs(copy);
    char *text = json_dumps(copy, JSON_COMPACT);
    bm_tokenizer *pairs = NULL;
    CHECK_OK(bmi_tokenizer_parse(text, strlen(text), &pairs));
    const char *sample = "Pairs or strings, the merges are the same: caf\xc3\xa9 <|endoftext|> 12345.";
    size_t n1 = 0, n2 = 0;
    int32_t *a = encode(t, sample, strlen(sample), &n1);
    int32_t *b = pairs ? encode(pairs, sample, strlen(sample), &n2) : NULL;
    CHECK(a && b && n1 == n2 && memcmp(a, b, n1 * sizeof *a) == 0);
    free(a);
    free(b);
    bm_tokenizer_free(pairs);
    free(text);
    json_decref(copy);
}

/* ---- allocation failures ---------------------------------------------------------- */

/* A small tokenizer: the byte tokens, a few hundred merges and the added
 * tokens, keeping the real ids (so there are holes between them). */
static char *make_small_json(void) {
    json_t *small = json_deep_copy(real_json);
    json_t *model = model_of(small), *vocab = json_object_get(model, "vocab");
    json_t *merges = json_object_get(model, "merges"), *kept_vocab = json_object(), *kept_merges = json_array();
    const char *key;
    json_t *v;
    json_object_foreach(vocab, key, v) {
        utf8proc_int32_t cp;
        utf8proc_ssize_t k = utf8proc_iterate((const utf8proc_uint8_t *)key, -1, &cp);
        if (k > 0 && key[k] == '\0') json_object_set(kept_vocab, key, v); /* one character */
    }
    json_object_set(kept_vocab, "<|endoftext|>", json_object_get(vocab, "<|endoftext|>"));
    json_object_set(kept_vocab, "<|padding|>", json_object_get(vocab, "<|padding|>"));
    for (size_t i = 0; i < 300; i++) {
        const char *m = json_string_value(json_array_get(merges, i)), *space = strchr(m, ' ');
        char joined[256];
        snprintf(joined, sizeof joined, "%.*s%s", (int)(space - m), m, space + 1);
        if (!json_object_getn(kept_vocab, m, (size_t)(space - m)) || !json_object_get(kept_vocab, space + 1)) continue;
        json_object_set(kept_vocab, joined, json_object_get(vocab, joined));
        json_array_append(kept_merges, json_array_get(merges, i));
    }
    json_object_set_new(model, "vocab", kept_vocab);
    json_object_set_new(model, "merges", kept_merges);
    char *text = json_dumps(small, JSON_COMPACT);
    json_decref(small);
    return text;
}

static void test_allocation_failures(const bm_tokenizer *t) {
    if (!real_json) return;
    char *small_json = make_small_json();
    CHECK(small_json != NULL);
    if (!small_json) return;
    bm_tokenizer *small = NULL;
    size_t failed_ok = 0, steps = 0;
    for (uint64_t at = 1;; at++) {
        bm_tokenizer *got = NULL;
        bmi_alloc_fail_at(at);
        bm_status st = bmi_tokenizer_parse(small_json, strlen(small_json), &got);
        uint64_t made = bmi_alloc_fail_at(0);
        steps++;
        if (made < at) { /* nothing failed: done */
            CHECK_OK(st);
            small = got;
            break;
        }
        if (st == BM_ERR_OUT_OF_MEMORY && got == NULL) failed_ok++;
        else bm_tokenizer_free(got);
    }
    CHECK_MSG(failed_ok == steps - 1, "parse: %zu of %zu injected failures reported as out of memory", failed_ok,
              steps - 1);
    /* The small tokenizer has holes: their ids are not token ids. */
    int32_t hole = 5000;
    size_t len = 0;
    if (small) CHECK_ERR(bm_detokenize(small, &hole, 1, NULL, 0, &len), BM_ERR_INVALID_ARGUMENT);
    if (small) CHECK(bm_tokenizer_vocab_size(small) == 50277);
    bm_tokenizer_free(small);
    free(small_json);

    /* Encoding: normalisation, a long word (the queue) and the cache. */
    size_t text_len = 0, want_n = 0;
    char *text = make_large_text(4000, &text_len);
    char *long_text = malloc(text_len + 300);
    memcpy(long_text, text, text_len);
    memset(long_text + text_len, 'q', 300);
    text_len += 300;
    int32_t *want = encode(t, long_text, text_len, &want_n);
    int32_t *got = malloc(want_n * sizeof *got);
    size_t wrong = 0, oom = 0;
    steps = 0;
    for (uint64_t at = 1; want && got; at++) {
        size_t n = 0;
        bmi_alloc_fail_at(at);
        bm_status st = bm_tokenize(t, long_text, text_len, got, want_n, &n);
        uint64_t made = bmi_alloc_fail_at(0);
        steps++;
        if (st == BM_OK && (n != want_n || memcmp(got, want, n * sizeof *got) != 0)) wrong++;
        if (st == BM_ERR_OUT_OF_MEMORY) oom++;
        else if (st != BM_OK) wrong++;
        if (made < at) break;
    }
    CHECK_MSG(wrong == 0, "%zu wrong results under allocation failures", wrong);
    CHECK(oom > 0 && steps > 3);
    bm_detokenizer *d = NULL;
    bmi_alloc_fail_at(1);
    CHECK_ERR(bm_detokenizer_new(t, &d), BM_ERR_OUT_OF_MEMORY);
    bmi_alloc_fail_at(0);
    CHECK(d == NULL);
    free(want);
    free(got);
    free(text);
    free(long_text);
}

/* ---- threads ----------------------------------------------------------------------- */

struct thread_job {
    const bm_tokenizer *t;
    const char *text;
    size_t len;
    const int32_t *want;
    size_t n_want;
    int failures;
};

static void *thread_main(void *arg) {
    struct thread_job *job = arg;
    for (int i = 0; i < 20; i++) {
        size_t n = 0;
        int32_t *ids = encode(job->t, job->text, job->len, &n);
        if (!ids || n != job->n_want || memcmp(ids, job->want, n * sizeof *ids) != 0) job->failures++;
        free(ids);
    }
    return NULL;
}

static void test_threads(const bm_tokenizer *t) {
    size_t len = 0, n = 0;
    char *text = make_large_text(40000, &len);
    int32_t *want = text ? encode(t, text, len, &n) : NULL;
    CHECK(want != NULL);
    if (!want) {
        free(text);
        return;
    }
    struct thread_job jobs[4];
    pthread_t threads[4];
    for (int i = 0; i < 4; i++) {
        jobs[i] = (struct thread_job){t, text, len, want, n, 0};
        CHECK(pthread_create(&threads[i], NULL, thread_main, &jobs[i]) == 0);
    }
    int failures = 0;
    for (int i = 0; i < 4; i++) {
        pthread_join(threads[i], NULL);
        failures += jobs[i].failures;
    }
    CHECK(failures == 0);
    free(want);
    free(text);
}

int main(void) {
    snprintf(tokenizer_path, sizeof tokenizer_path, "%s/tokenizer/20B_tokenizer.json", check_shared_dir());
    snprintf(golden_dir, sizeof golden_dir, "%s/tokenizer/golden", check_shared_dir());
    bm_tokenizer *t = NULL;
    double t0 = now_seconds();
    CHECK_OK(bm_tokenizer_load(tokenizer_path, &t));
    printf("test_tokenizer: loaded in %.3f s\n", now_seconds() - t0);
    if (t) {
        test_golden(t);
        test_reference_cases(t);
        test_added_tokens(t);
        test_whitespace_runs(t);
        test_invalid_utf8(t);
        test_edges(t);
        test_lookups(t);
        test_streaming_api(t);
        test_bpe_encoders(t);
        test_large_input(t);
    }
    test_bad_json();
    if (t) {
        test_pair_merges(t);
        test_allocation_failures(t);
        test_threads(t);
    }
    bm_tokenizer_free(t);
    bm_tokenizer_free(NULL);
    json_decref(real_json);
    return check_summary("test_tokenizer");
}
