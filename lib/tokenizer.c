/* The byte-level BPE tokenizer of GPT-2 / GPT-NeoX, read from a Hugging Face
 * tokenizer.json, giving the same ids as the Hugging Face library.
 *
 * Encoding, in the order the reference applies it:
 *  1. added tokens with normalized=false (the specials) are cut out of the
 *     raw text, leftmost-longest;
 *  2. each piece between them is NFC-normalised;
 *  3. added tokens with normalized=true are cut out of the normalised piece;
 *  4. what is left is split by the GPT-2 pattern
 *       's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
 *     (a hand-written scanner, pretoken_end) into words;
 *  5. each word's bytes are BPE-merged. The byte-level alphabet only renames
 *     bytes, so BPE runs on byte ids directly and the alphabet matters only
 *     when reading the vocabulary and when decoding.
 *
 * A bm_tokenizer is immutable after loading; every call keeps its scratch
 * memory (including the word cache) to itself, so threads share a tokenizer
 * without locks. */
#include "tokenizer.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

/* Per-id tables are sized by the largest id, so a hostile file must not be
 * able to ask for billions; real vocabularies are far below this. */
#define MAX_TOKEN_ID ((1 << 24) - 1)
/* Words up to this many bytes use the quadratic array encoder, which is
 * faster than the queue for the short words that make up real text. */
#define SMALL_WORD_MAX 64
/* The per-call word cache holds words up to CACHE_KEY_MAX bytes whose
 * encoding has at most CACHE_IDS_MAX ids; a slot is 64 bytes. */
#define CACHE_KEY_MAX 30
#define CACHE_IDS_MAX 8
#define CACHE_MIN_TEXT 2048
#define CACHE_MAX_SLOTS 4096
#define NO_RANK UINT32_MAX
#define NFC_OPTIONS (UTF8PROC_STABLE | UTF8PROC_COMPOSE)

enum token_flags { TOKEN_IN_VOCAB = 1, TOKEN_ADDED = 2, TOKEN_SPECIAL = 4 };

enum char_class { CLASS_LETTER, CLASS_NUMBER, CLASS_SPACE, CLASS_OTHER };

struct span {
    uint32_t off, len;
};

struct merge {
    int32_t left, right, merged;
};

struct pair_slot {
    uint64_t key; /* (left << 32) | right; EMPTY_PAIR when free */
    uint32_t rank;
};
#define EMPTY_PAIR UINT64_MAX

/* Added tokens live in a byte trie; index 0 means "none". */
struct trie_node {
    uint32_t first_child, next_sibling;
    int32_t token_id; /* -1 when no token ends here */
    uint8_t byte;
};

struct trie {
    struct trie_node *nodes;
    size_t n_nodes, cap;
    uint32_t root[256];
};

struct byte_buf {
    uint8_t *data;
    size_t len, cap;
};

struct code_points {
    int32_t *data;
    size_t cap;
};

struct bm_tokenizer {
    int32_t n_ids;            /* largest id + 1 */
    uint8_t *flags;           /* enum token_flags per id; 0 for holes */
    struct span *spelling;    /* tokenizer.json form of each id, in `text` */
    struct span *piece;       /* bytes each id decodes to, in `text` */
    struct byte_buf text;
    size_t max_piece;

    uint32_t *id_by_spelling; /* open addressing, id + 1, 0 = empty */
    size_t spelling_mask;

    struct merge *merges;     /* by rank */
    uint32_t n_merges;
    struct pair_slot *pairs;  /* (left, right) -> rank */
    size_t pair_mask;

    int32_t byte_id[256];
    uint32_t byte_to_cp[256];
    int16_t cp_to_byte[324];  /* the alphabet ends at U+0143 */
    uint8_t ascii_class[128];
    int nfc;

    struct trie raw_tokens;        /* added tokens matched before normalising */
    struct trie normalized_tokens; /* added tokens matched after */
    int32_t eos;
};

/* ---- growing buffers ---------------------------------------------------- */

/* Make room for `need` elements of `elem` bytes; 0 on overflow or OOM. */
static int grow_array(void **p, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap) return 1;
    size_t n = *cap ? *cap : 16, bytes;
    while (n < need) {
        if (n > SIZE_MAX / 2) return 0;
        n *= 2;
    }
    if (!bmi_mul_size(n, elem, &bytes)) return 0;
    void *q = bmi_realloc(*p, bytes);
    if (!q) return 0;
    *p = q;
    *cap = n;
    return 1;
}

static int buf_append(struct byte_buf *b, const void *data, size_t n) {
    size_t need;
    if (!bmi_add_size(b->len, n, &need)) return 0;
    if (!grow_array((void **)&b->data, &b->cap, need, 1)) return 0;
    if (n) memcpy(b->data + b->len, data, n);
    b->len += n;
    return 1;
}

static uint64_t hash_bytes(const void *p, size_t n) { return bmi_hash64(0x6b746f6bu, p, n); }

static size_t table_size_for(size_t count) {
    size_t n = 16;
    while (n < count * 2) n *= 2;
    return n;
}

/* ---- UTF-8 -------------------------------------------------------------- */

/* Length of the well-formed UTF-8 character at s (n bytes available), or 0
 * when it is ill-formed or cut short. Follows Table 3-7 of the Unicode
 * standard, which excludes overlong forms, surrogates and values above
 * U+10FFFF. */
static size_t utf8_char_length(const uint8_t *s, size_t n) {
    uint8_t b = s[0], lo = 0x80, hi = 0xBF;
    size_t len;
    if (b < 0x80) return 1;
    if (b >= 0xC2 && b <= 0xDF) {
        len = 2;
    } else if (b >= 0xE0 && b <= 0xEF) {
        len = 3;
        if (b == 0xE0) lo = 0xA0;
        if (b == 0xED) hi = 0x9F;
    } else if (b >= 0xF0 && b <= 0xF4) {
        len = 4;
        if (b == 0xF0) lo = 0x90;
        if (b == 0xF4) hi = 0x8F;
    } else {
        return 0;
    }
    if (n < len || s[1] < lo || s[1] > hi) return 0;
    for (size_t i = 2; i < len; i++)
        if ((s[i] & 0xC0) != 0x80) return 0;
    return len;
}

static int all_ascii8(const uint8_t *s) {
    uint64_t w;
    memcpy(&w, s, 8);
    return (w & 0x8080808080808080ull) == 0;
}

/* Offset of the first byte that does not start a well-formed character, or
 * n when all of s is valid. */
static size_t utf8_first_invalid(const uint8_t *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        if (i + 8 <= n && all_ascii8(s + i)) {
            i += 8;
            continue;
        }
        size_t k = utf8_char_length(s + i, n - i);
        if (!k) return i;
        i += k;
    }
    return n;
}

/* Decode one character of text already known to be valid. */
static size_t utf8_decode_valid(const uint8_t *s, int32_t *cp) {
    uint8_t b = s[0];
    if (b < 0x80) {
        *cp = b;
        return 1;
    }
    if (b < 0xE0) {
        *cp = ((b & 0x1F) << 6) | (s[1] & 0x3F);
        return 2;
    }
    if (b < 0xF0) {
        *cp = ((b & 0x0F) << 12) | ((s[1] & 0x3F) << 6) | (s[2] & 0x3F);
        return 3;
    }
    *cp = ((b & 0x07) << 18) | ((s[1] & 0x3F) << 12) | ((s[2] & 0x3F) << 6) | (s[3] & 0x3F);
    return 4;
}

/* Output that counts everything and stores it only when it all fits, so a
 * first pass with no buffer measures and a second pass writes. */
struct byte_sink {
    char *buf;
    size_t cap, len;
};

static void sink_write(struct byte_sink *s, const void *p, size_t n) {
    if (s->buf && n <= s->cap && s->len <= s->cap - n) memcpy(s->buf + s->len, p, n);
    s->len += n;
}

static const uint8_t REPLACEMENT_CHAR[3] = {0xEF, 0xBF, 0xBD};

/* Turns a byte stream into valid UTF-8, replacing each maximal invalid
 * subpart by U+FFFD and holding back a character that may still complete.
 * Decoding and streaming decoding both run bytes through this, which is
 * what makes their outputs agree. */
struct utf8_repair {
    uint8_t held[4];
    uint8_t n_held, need; /* bytes held, bytes the held character needs */
    uint8_t lo, hi;       /* allowed range of the next byte */
};

static int utf8_lead_info(uint8_t b, uint8_t *need, uint8_t *lo, uint8_t *hi) {
    *lo = 0x80;
    *hi = 0xBF;
    if (b >= 0xC2 && b <= 0xDF) {
        *need = 2;
    } else if (b >= 0xE0 && b <= 0xEF) {
        *need = 3;
        if (b == 0xE0) *lo = 0xA0;
        if (b == 0xED) *hi = 0x9F;
    } else if (b >= 0xF0 && b <= 0xF4) {
        *need = 4;
        if (b == 0xF0) *lo = 0x90;
        if (b == 0xF4) *hi = 0x8F;
    } else {
        return 0;
    }
    return 1;
}

static void utf8_repair_feed(struct utf8_repair *r, const uint8_t *s, size_t n, struct byte_sink *out) {
    size_t i = 0;
    while (i < n) {
        if (r->n_held == 0) {
            size_t j = i;
            while (j < n && s[j] < 0x80) j++;
            if (j > i) {
                sink_write(out, s + i, j - i);
                i = j;
                continue;
            }
            if (utf8_lead_info(s[i], &r->need, &r->lo, &r->hi)) {
                r->held[0] = s[i];
                r->n_held = 1;
            } else {
                sink_write(out, REPLACEMENT_CHAR, 3);
            }
            i++;
        } else if (s[i] >= r->lo && s[i] <= r->hi) {
            r->held[r->n_held++] = s[i++];
            r->lo = 0x80;
            r->hi = 0xBF;
            if (r->n_held == r->need) {
                sink_write(out, r->held, r->n_held);
                r->n_held = 0;
            }
        } else {
            /* The held bytes can never complete; the current byte starts
             * afresh, so it is not consumed here. */
            sink_write(out, REPLACEMENT_CHAR, 3);
            r->n_held = 0;
        }
    }
}

static void utf8_repair_finish(struct utf8_repair *r, struct byte_sink *out) {
    if (r->n_held) sink_write(out, REPLACEMENT_CHAR, 3);
    r->n_held = 0;
}

/* ---- NFC ---------------------------------------------------------------- */

/* Append NFC(s) to out. */
static bm_status nfc_append_chunk(struct byte_buf *out, struct code_points *cps, const uint8_t *s, size_t n) {
    utf8proc_ssize_t count;
    for (;;) {
        count = utf8proc_decompose(s, (utf8proc_ssize_t)n, cps->data, (utf8proc_ssize_t)cps->cap, NFC_OPTIONS);
        if (count < 0) return bmi_fail(BM_ERR_INVALID_ARGUMENT, "cannot normalize text: %s", utf8proc_errmsg(count));
        if ((size_t)count <= cps->cap) break;
        if (!grow_array((void **)&cps->data, &cps->cap, (size_t)count, sizeof(int32_t)))
            return bmi_fail(BM_ERR_OUT_OF_MEMORY, "out of memory normalizing text");
    }
    count = utf8proc_normalize_utf32(cps->data, count, NFC_OPTIONS);
    if (count < 0) return bmi_fail(BM_ERR_INVALID_ARGUMENT, "cannot normalize text: %s", utf8proc_errmsg(count));
    size_t need;
    if (!bmi_mul_size((size_t)count, 4, &need) || !bmi_add_size(need, out->len, &need) ||
        !grow_array((void **)&out->data, &out->cap, need, 1))
        return bmi_fail(BM_ERR_OUT_OF_MEMORY, "out of memory normalizing text");
    for (utf8proc_ssize_t i = 0; i < count; i++)
        out->len += (size_t)utf8proc_encode_char(cps->data[i], out->data + out->len);
    return BM_OK;
}

/* out = NFC(s), for valid UTF-8 s. No ASCII character composes with what
 * precedes it or moves across a mark, so the text splits into independent
 * chunks just before each ASCII character: ASCII runs are copied, and only
 * the stretches around non-ASCII characters (with the ASCII character before
 * them, which may take a combining mark) go through utf8proc. */
static bm_status nfc_text(struct byte_buf *out, struct code_points *cps, const uint8_t *s, size_t n) {
    size_t i = 0;
    out->len = 0;
    while (i < n) {
        size_t j = i;
        while (j < n && s[j] < 0x80) j++;
        if (j == n) {
            if (!buf_append(out, s + i, n - i)) return bmi_fail(BM_ERR_OUT_OF_MEMORY, "out of memory normalizing text");
            break;
        }
        size_t start = j > i ? j - 1 : j, end = j;
        while (end < n && s[end] >= 0x80) end++;
        if (!buf_append(out, s + i, start - i)) return bmi_fail(BM_ERR_OUT_OF_MEMORY, "out of memory normalizing text");
        bm_status st = nfc_append_chunk(out, cps, s + start, end - start);
        if (st != BM_OK) return st;
        i = end;
    }
    return BM_OK;
}

static int has_non_ascii(const uint8_t *s, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        if (!all_ascii8(s + i)) return 1;
    for (; i < n; i++)
        if (s[i] >= 0x80) return 1;
    return 0;
}

/* ---- character classes of the GPT-2 pattern ------------------------------ */

static enum char_class class_of_code_point(int32_t cp) {
    /* \s is Unicode White_Space: the separator categories plus TAB..CR and
     * NEL, which are controls by category. */
    if ((cp >= 0x09 && cp <= 0x0D) || cp == 0x85) return CLASS_SPACE;
    switch (utf8proc_category(cp)) {
    case UTF8PROC_CATEGORY_LU: case UTF8PROC_CATEGORY_LL: case UTF8PROC_CATEGORY_LT:
    case UTF8PROC_CATEGORY_LM: case UTF8PROC_CATEGORY_LO:
        return CLASS_LETTER;
    case UTF8PROC_CATEGORY_ND: case UTF8PROC_CATEGORY_NL: case UTF8PROC_CATEGORY_NO:
        return CLASS_NUMBER;
    case UTF8PROC_CATEGORY_ZS: case UTF8PROC_CATEGORY_ZL: case UTF8PROC_CATEGORY_ZP:
        return CLASS_SPACE;
    default:
        return CLASS_OTHER;
    }
}

static inline enum char_class class_at(const bm_tokenizer *t, const uint8_t *s, size_t pos, size_t *len) {
    if (s[pos] < 0x80) {
        *len = 1;
        return (enum char_class)t->ascii_class[s[pos]];
    }
    int32_t cp;
    *len = utf8_decode_valid(s + pos, &cp);
    return class_of_code_point(cp);
}

/* First position at or after pos whose character is not of class c. */
static size_t skip_class(const bm_tokenizer *t, const uint8_t *s, size_t n, size_t pos, enum char_class c) {
    while (pos < n) {
        size_t len;
        if (class_at(t, s, pos, &len) != c) break;
        pos += len;
    }
    return pos;
}

/* Length of 's 't 're 've 'm 'll 'd at pos (case-sensitive, as in GPT-2), or 0. */
static size_t contraction_length(const uint8_t *s, size_t n, size_t pos) {
    if (s[pos] != '\'' || pos + 1 >= n) return 0;
    uint8_t a = s[pos + 1];
    if (a == 's' || a == 't' || a == 'm' || a == 'd') return 2;
    if (pos + 2 < n) {
        uint8_t b = s[pos + 2];
        if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return 3;
    }
    return 0;
}

/* End of the pattern's match at pos (pos < n). The alternatives are tried
 * in the pattern's order; the regex engine's backtracking shows up only in
 * the whitespace case, where a run followed by a non-space gives up its last
 * character so that the next word can take it as its leading space. */
static size_t pretoken_end(const bm_tokenizer *t, const uint8_t *s, size_t n, size_t pos) {
    size_t len, next_len, k = contraction_length(s, n, pos);
    if (k) return pos + k;
    enum char_class c = class_at(t, s, pos, &len);
    if (c == CLASS_LETTER || c == CLASS_NUMBER || c == CLASS_OTHER) return skip_class(t, s, n, pos + len, c);
    if (s[pos] == ' ' && pos + 1 < n) {
        enum char_class next = class_at(t, s, pos + 1, &next_len);
        if (next != CLASS_SPACE) return skip_class(t, s, n, pos + 1 + next_len, next);
    }
    size_t last_start = pos, end = pos;
    while (end < n) {
        size_t l;
        if (class_at(t, s, end, &l) != CLASS_SPACE) break;
        last_start = end;
        end += l;
    }
    if (end == n || last_start == pos) return end;
    return last_start;
}

/* ---- tries of added tokens ------------------------------------------------ */

static void trie_init(struct trie *tr) { memset(tr, 0, sizeof *tr); }

static void trie_free(struct trie *tr) { bmi_free(tr->nodes); }

static uint32_t trie_new_node(struct trie *tr, uint8_t byte) {
    if (tr->n_nodes == 0) tr->n_nodes = 1; /* node 0 stands for "none" */
    if (tr->n_nodes >= UINT32_MAX || !grow_array((void **)&tr->nodes, &tr->cap, tr->n_nodes + 1, sizeof *tr->nodes))
        return 0;
    uint32_t i = (uint32_t)tr->n_nodes++;
    tr->nodes[i] = (struct trie_node){0, 0, -1, byte};
    return i;
}

/* Insert s -> id. Returns BM_OK, or BM_ERR_FORMAT when s is already there. */
static bm_status trie_insert(struct trie *tr, const uint8_t *s, size_t n, int32_t id) {
    uint32_t node = tr->root[s[0]];
    if (!node) {
        node = trie_new_node(tr, s[0]);
        if (!node) return bmi_fail(BM_ERR_OUT_OF_MEMORY, "out of memory building the added-token trie");
        tr->root[s[0]] = node;
    }
    for (size_t i = 1; i < n; i++) {
        uint32_t child = tr->nodes[node].first_child;
        while (child && tr->nodes[child].byte != s[i]) child = tr->nodes[child].next_sibling;
        if (!child) {
            child = trie_new_node(tr, s[i]);
            if (!child) return bmi_fail(BM_ERR_OUT_OF_MEMORY, "out of memory building the added-token trie");
            tr->nodes[child].next_sibling = tr->nodes[node].first_child;
            tr->nodes[node].first_child = child;
        }
        node = child;
    }
    if (tr->nodes[node].token_id >= 0)
        return bmi_fail(BM_ERR_FORMAT, "added token \"%.*s\" appears twice", (int)(n > 64 ? 64 : n), (const char *)s);
    tr->nodes[node].token_id = id;
    return BM_OK;
}

/* Length of the longest token that s starts with (0 if none), its id in *id. */
static size_t trie_longest_at(const struct trie *tr, const uint8_t *s, size_t n, int32_t *id) {
    uint32_t node = tr->root[s[0]];
    size_t best = 0, depth = 1;
    while (node) {
        if (tr->nodes[node].token_id >= 0) {
            best = depth;
            *id = tr->nodes[node].token_id;
        }
        if (depth == n) break;
        uint32_t child = tr->nodes[node].first_child;
        while (child && tr->nodes[child].byte != s[depth]) child = tr->nodes[child].next_sibling;
        node = child;
        depth++;
    }
    return best;
}

/* Leftmost-longest match at or after pos: returns its start (n if none) and
 * sets *len and *id. */
static size_t trie_find(const struct trie *tr, const uint8_t *s, size_t n, size_t pos, size_t *len, int32_t *id) {
    if (tr->n_nodes == 0) return n;
    for (size_t i = pos; i < n; i++) {
        if (!tr->root[s[i]]) continue;
        size_t k = trie_longest_at(tr, s + i, n - i, id);
        if (k) {
            *len = k;
            return i;
        }
    }
    return n;
}

/* ---- vocabulary lookups --------------------------------------------------- */

static const uint8_t *spelling_of(const bm_tokenizer *t, int32_t id, size_t *len) {
    *len = t->spelling[id].len;
    return t->text.data + t->spelling[id].off;
}

static int32_t find_spelling(const bm_tokenizer *t, const void *s, size_t n) {
    if (!t->id_by_spelling) return -1;
    size_t i = (size_t)hash_bytes(s, n) & t->spelling_mask;
    for (uint32_t v; (v = t->id_by_spelling[i]) != 0; i = (i + 1) & t->spelling_mask) {
        size_t len;
        const uint8_t *sp = spelling_of(t, (int32_t)(v - 1), &len);
        if (len == n && memcmp(sp, s, n) == 0) return (int32_t)(v - 1);
    }
    return -1;
}

/* The id of a vocabulary (model) token, or -1: merges only name those. */
static int32_t find_vocab_token(const bm_tokenizer *t, const void *s, size_t n) {
    int32_t id = find_spelling(t, s, n);
    return id >= 0 && (t->flags[id] & TOKEN_IN_VOCAB) ? id : -1;
}

static void index_spelling(bm_tokenizer *t, int32_t id) {
    size_t len;
    const uint8_t *sp = spelling_of(t, id, &len);
    size_t i = (size_t)hash_bytes(sp, len) & t->spelling_mask;
    while (t->id_by_spelling[i]) i = (i + 1) & t->spelling_mask;
    t->id_by_spelling[i] = (uint32_t)id + 1;
}

static inline size_t pair_slot_of(uint64_t key, size_t mask) {
    return (size_t)((key * 0x9E3779B97F4A7C15ull) >> 32) & mask;
}

static inline uint32_t pair_rank(const bm_tokenizer *t, int32_t left, int32_t right) {
    uint64_t key = ((uint64_t)(uint32_t)left << 32) | (uint32_t)right;
    size_t i = pair_slot_of(key, t->pair_mask);
    for (;;) {
        const struct pair_slot *p = &t->pairs[i];
        if (p->key == key) return p->rank;
        if (p->key == EMPTY_PAIR) return NO_RANK;
        i = (i + 1) & t->pair_mask;
    }
}

/* A repeated merge takes its last rank, as in the reference. */
static void set_pair_rank(bm_tokenizer *t, int32_t left, int32_t right, uint32_t rank) {
    uint64_t key = ((uint64_t)(uint32_t)left << 32) | (uint32_t)right;
    size_t i = pair_slot_of(key, t->pair_mask);
    while (t->pairs[i].key != EMPTY_PAIR && t->pairs[i].key != key) i = (i + 1) & t->pair_mask;
    t->pairs[i].key = key;
    t->pairs[i].rank = rank;
}

/* ---- loading -------------------------------------------------------------- */

/* GPT-2 gives every byte a printable stand-in so that BPE never sees spaces
 * or control characters: printable Latin-1 bytes stand for themselves, the
 * other 68 take U+0100 upwards in byte order. */
static void build_byte_alphabet(bm_tokenizer *t) {
    uint32_t next = 256;
    for (int i = 0; i < 324; i++) t->cp_to_byte[i] = -1;
    for (uint32_t b = 0; b < 256; b++) {
        int printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174;
        t->byte_to_cp[b] = printable ? b : next++;
        t->cp_to_byte[t->byte_to_cp[b]] = (int16_t)b;
    }
}

static void build_ascii_classes(bm_tokenizer *t) {
    for (int32_t c = 0; c < 128; c++) t->ascii_class[c] = (uint8_t)class_of_code_point(c);
}

static const char *json_type_name(const json_t *v) {
    if (!v) return "missing";
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: return "an integer";
    case JSON_REAL: return "a number";
    case JSON_TRUE: case JSON_FALSE: return "a boolean";
    default: return "null";
    }
}

/* The "type" of a component object, or NULL. */
static const char *component_type(const json_t *v) {
    return json_is_object(v) ? json_string_value(json_object_get(v, "type")) : NULL;
}

static int is_absent(const json_t *v) { return v == NULL || json_is_null(v); }

static bm_status check_normalizer(const json_t *norm, int *nfc) {
    const char *type = component_type(norm);
    *nfc = 0;
    if (is_absent(norm)) return BM_OK;
    if (type && strcmp(type, "NFC") == 0) {
        *nfc = 1;
        return BM_OK;
    }
    if (type && strcmp(type, "Sequence") == 0) {
        json_t *list = json_object_get(norm, "normalizers"), *item;
        size_t i;
        if (!json_is_array(list)) return bmi_fail(BM_ERR_FORMAT, "normalizer.normalizers is not an array");
        json_array_foreach(list, i, item) {
            const char *it = component_type(item);
            if (!it || strcmp(it, "NFC") != 0)
                return bmi_fail(BM_ERR_UNSUPPORTED, "normalizer \"%s\" is not supported (only NFC)", it ? it : "?");
            *nfc = 1;
        }
        return BM_OK;
    }
    return bmi_fail(BM_ERR_UNSUPPORTED, "normalizer \"%s\" is not supported (only NFC)", type ? type : "?");
}

static bm_status check_pre_tokenizer(const json_t *pre) {
    const char *type = component_type(pre);
    if (!type || strcmp(type, "ByteLevel") != 0)
        return bmi_fail(BM_ERR_UNSUPPORTED, "pre_tokenizer \"%s\" is not supported (only ByteLevel)",
                        type ? type : "none");
    /* add_prefix_space defaults to true in the reference, so it must be
     * spelled out as false. */
    if (!json_is_false(json_object_get(pre, "add_prefix_space")))
        return bmi_fail(BM_ERR_UNSUPPORTED, "ByteLevel pre_tokenizer with add_prefix_space is not supported");
    json_t *use_regex = json_object_get(pre, "use_regex");
    if (use_regex && !json_is_true(use_regex))
        return bmi_fail(BM_ERR_UNSUPPORTED, "ByteLevel pre_tokenizer without use_regex is not supported");
    return BM_OK;
}

static bm_status check_decoding(const json_t *root) {
    const char *type = component_type(json_object_get(root, "decoder"));
    if (!type || strcmp(type, "ByteLevel") != 0)
        return bmi_fail(BM_ERR_UNSUPPORTED, "decoder \"%s\" is not supported (only ByteLevel)", type ? type : "none");
    /* The ByteLevel post-processor only adjusts offsets; any other one adds
     * tokens (BOS, templates) that bm_tokenize does not. */
    json_t *post = json_object_get(root, "post_processor");
    type = component_type(post);
    if (!is_absent(post) && (!type || strcmp(type, "ByteLevel") != 0))
        return bmi_fail(BM_ERR_UNSUPPORTED, "post_processor \"%s\" is not supported", type ? type : "?");
    return BM_OK;
}

/* A model option that must be null, missing, or one harmless value. */
static int option_is_off(const json_t *model, const char *key) {
    json_t *v = json_object_get(model, key);
    if (is_absent(v) || json_is_false(v)) return 1;
    if (json_is_string(v) && json_string_length(v) == 0) return 1;
    if (json_is_number(v) && json_number_value(v) == 0.0) return 1;
    return 0;
}

static bm_status check_model(const json_t *model) {
    if (!json_is_object(model)) return bmi_fail(BM_ERR_FORMAT, "\"model\" is missing or not an object");
    const char *type = component_type(model);
    if (type && strcmp(type, "BPE") != 0)
        return bmi_fail(BM_ERR_UNSUPPORTED, "model type \"%s\" is not supported (only BPE)", type);
    static const char *const off_options[] = {"dropout", "continuing_subword_prefix", "end_of_word_suffix",
                                              "byte_fallback", "ignore_merges"};
    for (size_t i = 0; i < sizeof off_options / sizeof off_options[0]; i++)
        if (!option_is_off(model, off_options[i]))
            return bmi_fail(BM_ERR_UNSUPPORTED, "BPE option \"%s\" is not supported", off_options[i]);
    if (!json_is_object(json_object_get(model, "vocab")))
        return bmi_fail(BM_ERR_FORMAT, "model.vocab is missing or not an object");
    if (!json_is_array(json_object_get(model, "merges")))
        return bmi_fail(BM_ERR_FORMAT, "model.merges is missing or not an array");
    return BM_OK;
}

static bm_status check_pipeline(const json_t *root, int *nfc) {
    bm_status st = check_model(json_object_get(root, "model"));
    if (st == BM_OK) st = check_normalizer(json_object_get(root, "normalizer"), nfc);
    if (st == BM_OK) st = check_pre_tokenizer(json_object_get(root, "pre_tokenizer"));
    if (st == BM_OK) st = check_decoding(root);
    json_t *added = json_object_get(root, "added_tokens");
    if (st == BM_OK && !is_absent(added) && !json_is_array(added))
        st = bmi_fail(BM_ERR_FORMAT, "added_tokens is not an array");
    /* truncation and padding shape batches for training; bm_tokenize never
     * truncates or pads, so they are ignored rather than refused. */
    return st;
}

static bm_status read_id(const json_t *v, const char *what, int32_t *id) {
    if (!json_is_integer(v)) return bmi_fail(BM_ERR_FORMAT, "%s: id is %s, not an integer", what, json_type_name(v));
    json_int_t i = json_integer_value(v);
    if (i < 0 || i > MAX_TOKEN_ID)
        return bmi_fail(BM_ERR_FORMAT, "%s: id %lld is out of range", what, (long long)i);
    *id = (int32_t)i;
    return BM_OK;
}

/* Size the per-id tables from the largest id anywhere in the file. */
static bm_status count_ids(bm_tokenizer *t, const json_t *vocab, const json_t *added) {
    const char *key;
    json_t *v;
    size_t i;
    int32_t max_id = -1, id;
    json_object_foreach((json_t *)vocab, key, v) {
        bm_status st = read_id(v, "model.vocab", &id);
        if (st != BM_OK) {
            bmi_error_context("token \"%.64s\"", key);
            return st;
        }
        if (id > max_id) max_id = id;
    }
    json_array_foreach(added, i, v) {
        bm_status st = read_id(json_object_get(v, "id"), "added_tokens", &id);
        if (st != BM_OK) return st;
        if (id > max_id) max_id = id;
    }
    if (max_id < 0) return bmi_fail(BM_ERR_FORMAT, "the vocabulary is empty");
    t->n_ids = max_id + 1;
    size_t n = (size_t)t->n_ids, slots = table_size_for(json_object_size(vocab) + json_array_size(added));
    t->flags = bmi_calloc(n, 1);
    t->spelling = bmi_calloc(n, sizeof *t->spelling);
    t->piece = bmi_calloc(n, sizeof *t->piece);
    t->id_by_spelling = bmi_calloc(slots, sizeof *t->id_by_spelling);
    t->spelling_mask = slots - 1;
    if (!t->flags || !t->spelling || !t->piece || !t->id_by_spelling)
        return bmi_fail(BM_ERR_OUT_OF_MEMORY, "out of memory loading the tokenizer");
    return BM_OK;
}

static bm_status store_text(bm_tokenizer *t, const void *s, size_t n, struct span *where) {
    if (t->text.len > UINT32_MAX - n) return bmi_fail(BM_ERR_FORMAT, "tokenizer text is too large");
    where->off = (uint32_t)t->text.len;
    where->len = (uint32_t)n;
    /* Room for one byte first, so that text.data is an object even when every
     * text so far is empty (spans are added to it; NULL + 0 is undefined). */
    if (!grow_array((void **)&t->text.data, &t->text.cap, 1, 1) || !buf_append(&t->text, s, n))
        return bmi_fail(BM_ERR_OUT_OF_MEMORY, "out of memory loading the tokenizer");
    return BM_OK;
}

static bm_status load_vocab(bm_tokenizer *t, const json_t *vocab) {
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)vocab, key, v) {
        int32_t id = (int32_t)json_integer_value(v); /* checked by count_ids */
        size_t len = strlen(key);
        if (t->flags[id]) return bmi_fail(BM_ERR_FORMAT, "model.vocab: id %d is given to two tokens", (int)id);
        bm_status st = store_text(t, key, len, &t->spelling[id]);
        if (st != BM_OK) return st;
        t->flags[id] = TOKEN_IN_VOCAB;
        index_spelling(t, id);
    }
    return BM_OK;
}

static int added_flag(const json_t *tok, const char *key, int fallback) {
    json_t *v = json_object_get(tok, key);
    return json_is_boolean(v) ? json_is_true(v) : fallback;
}

/* The content an added token is matched by: normalised like the text it is
 * matched in when the token is "normalized". */
static bm_status added_match_form(const bm_tokenizer *t, const char *content, size_t len, int normalized,
                                  struct byte_buf *form) {
    form->len = 0;
    if (!normalized || !t->nfc) {
        if (!buf_append(form, content, len)) return bmi_fail(BM_ERR_OUT_OF_MEMORY, "out of memory loading the tokenizer");
        return BM_OK;
    }
    struct code_points cps = {NULL, 0};
    bm_status st = nfc_text(form, &cps, (const uint8_t *)content, len);
    bmi_free(cps.data);
    return st;
}

static bm_status load_added_token(bm_tokenizer *t, const json_t *tok, struct byte_buf *form) {
    int32_t id = (int32_t)json_integer_value(json_object_get(tok, "id")); /* checked by count_ids */
    json_t *content_v = json_object_get(tok, "content");
    if (!json_is_string(content_v) || json_string_length(content_v) == 0)
        return bmi_fail(BM_ERR_FORMAT, "added token %d has no content", (int)id);
    const char *content = json_string_value(content_v);
    size_t len = json_string_length(content_v);
    if (memchr(content, 0, len)) return bmi_fail(BM_ERR_FORMAT, "added token %d contains NUL", (int)id);
    int special = added_flag(tok, "special", 0);
    static const char *const unsupported[] = {"single_word", "lstrip", "rstrip"};
    for (size_t i = 0; i < 3; i++)
        if (added_flag(tok, unsupported[i], 0))
            return bmi_fail(BM_ERR_UNSUPPORTED, "added token \"%.64s\": %s is not supported", content, unsupported[i]);

    int32_t same = find_spelling(t, content, len);
    if (t->flags[id]) {
        if (same != id)
            return bmi_fail(BM_ERR_FORMAT, "added token \"%.64s\" has id %d, which belongs to another token", content,
                            (int)id);
    } else {
        if (same >= 0)
            return bmi_fail(BM_ERR_FORMAT, "added token \"%.64s\" has id %d but is also token %d", content, (int)id,
                            (int)same);
        bm_status st = store_text(t, content, len, &t->spelling[id]);
        if (st != BM_OK) return st;
        index_spelling(t, id);
    }
    t->flags[id] |= TOKEN_ADDED | (special ? TOKEN_SPECIAL : 0);

    /* Specials default to matching the raw text, other added tokens the
     * normalised text, as in the reference. */
    int normalized = added_flag(tok, "normalized", !special);
    bm_status st = added_match_form(t, content, len, normalized, form);
    if (st != BM_OK) return st;
    if (form->len == 0) return bmi_fail(BM_ERR_FORMAT, "added token %d normalizes to nothing", (int)id);
    return trie_insert(normalized ? &t->normalized_tokens : &t->raw_tokens, form->data, form->len, id);
}

static bm_status load_added_tokens(bm_tokenizer *t, const json_t *added) {
    struct byte_buf form = {NULL, 0, 0};
    size_t i;
    json_t *tok;
    bm_status st = BM_OK;
    json_array_foreach(added, i, tok) {
        if (!json_is_object(tok)) {
            st = bmi_fail(BM_ERR_FORMAT, "added_tokens[%zu] is not an object", i);
            break;
        }
        st = load_added_token(t, tok, &form);
        if (st != BM_OK) break;
    }
    bmi_free(form.data);
    return st;
}

/* Bytes that never occur in UTF-8 (C0, C1, F5..FF) may lack a token, as
 * they do in GPT-NeoX's vocabulary; any other byte needs one, or some text
 * could not be encoded. */
static bm_status find_byte_tokens(bm_tokenizer *t) {
    for (int b = 0; b < 256; b++) {
        uint8_t utf8[4];
        size_t n = (size_t)utf8proc_encode_char((utf8proc_int32_t)t->byte_to_cp[b], utf8);
        int never_in_utf8 = b == 0xC0 || b == 0xC1 || b >= 0xF5;
        t->byte_id[b] = find_vocab_token(t, utf8, n);
        if (t->byte_id[b] < 0 && !never_in_utf8)
            return bmi_fail(BM_ERR_UNSUPPORTED, "the vocabulary has no token for byte 0x%02x: not a byte-level BPE", b);
    }
    return BM_OK;
}

/* One merge as "left right" or ["left", "right"]. */
static bm_status split_merge(const json_t *m, size_t rank, const char **left, size_t *left_len, const char **right,
                             size_t *right_len) {
    if (json_is_string(m)) {
        const char *s = json_string_value(m), *space = strchr(s, ' ');
        if (!space || strchr(space + 1, ' '))
            return bmi_fail(BM_ERR_FORMAT, "model.merges[%zu] \"%.64s\" is not two tokens", rank, s);
        *left = s;
        *left_len = (size_t)(space - s);
        *right = space + 1;
        *right_len = strlen(space + 1);
        return BM_OK;
    }
    if (json_is_array(m) && json_array_size(m) == 2 && json_is_string(json_array_get(m, 0)) &&
        json_is_string(json_array_get(m, 1))) {
        *left = json_string_value(json_array_get(m, 0));
        *left_len = json_string_length(json_array_get(m, 0));
        *right = json_string_value(json_array_get(m, 1));
        *right_len = json_string_length(json_array_get(m, 1));
        return BM_OK;
    }
    return bmi_fail(BM_ERR_FORMAT, "model.merges[%zu] is neither \"a b\" nor [a, b]", rank);
}

static bm_status load_merge(bm_tokenizer *t, const json_t *m, size_t rank, struct byte_buf *joined) {
    const char *left = NULL, *right = NULL;
    size_t left_len = 0, right_len = 0;
    bm_status st = split_merge(m, rank, &left, &left_len, &right, &right_len);
    if (st != BM_OK) return st;
    int32_t a = find_vocab_token(t, left, left_len), b = find_vocab_token(t, right, right_len);
    if (a < 0 || b < 0)
        return bmi_fail(BM_ERR_FORMAT, "model.merges[%zu]: \"%.*s\" is not in the vocabulary", rank,
                        (int)(a < 0 ? (left_len > 64 ? 64 : left_len) : (right_len > 64 ? 64 : right_len)),
                        a < 0 ? left : right);
    joined->len = 0;
    if (!buf_append(joined, left, left_len) || !buf_append(joined, right, right_len))
        return bmi_fail(BM_ERR_OUT_OF_MEMORY, "out of memory loading the tokenizer");
    int32_t merged = find_vocab_token(t, joined->data, joined->len);
    if (merged < 0)
        return bmi_fail(BM_ERR_FORMAT, "model.merges[%zu]: the merged token \"%.*s\" is not in the vocabulary", rank,
                        (int)(joined->len > 64 ? 64 : joined->len), (const char *)joined->data);
    t->merges[rank] = (struct merge){a, b, merged};
    set_pair_rank(t, a, b, (uint32_t)rank);
    return BM_OK;
}

static bm_status load_merges(bm_tokenizer *t, const json_t *merges) {
    size_t n = json_array_size(merges), slots = table_size_for(n);
    if (n >= NO_RANK) return bmi_fail(BM_ERR_FORMAT, "too many merges");
    t->merges = bmi_calloc(n, sizeof *t->merges);
    t->pairs = bmi_malloc(slots * sizeof *t->pairs);
    if (!t->merges || !t->pairs) return bmi_fail(BM_ERR_OUT_OF_MEMORY, "out of memory loading the merges");
    for (size_t i = 0; i < slots; i++) t->pairs[i] = (struct pair_slot){EMPTY_PAIR, NO_RANK};
    t->pair_mask = slots - 1;
    t->n_merges = (uint32_t)n;
    struct byte_buf joined = {NULL, 0, 0};
    bm_status st = BM_OK;
    for (size_t i = 0; i < n && st == BM_OK; i++) st = load_merge(t, json_array_get(merges, i), i, &joined);
    bmi_free(joined.data);
    return st;
}

/* What an id decodes to: its spelling read back through the byte alphabet,
 * or, when some character is outside the alphabet (added tokens such as the
 * multi-space ones), the spelling's own bytes, as the reference decoder does. */
static int read_through_alphabet(const bm_tokenizer *t, const uint8_t *sp, size_t len, struct byte_buf *bytes) {
    bytes->len = 0;
    for (size_t pos = 0; pos < len;) {
        int32_t cp;
        pos += utf8_decode_valid(sp + pos, &cp);
        if (cp >= 324 || t->cp_to_byte[cp] < 0) return 0;
        bytes->data[bytes->len++] = (uint8_t)t->cp_to_byte[cp];
    }
    return 1;
}

static bm_status build_pieces(bm_tokenizer *t) {
    struct byte_buf bytes = {NULL, 0, 0};
    bm_status st = BM_OK;
    for (int32_t id = 0; id < t->n_ids && st == BM_OK; id++) {
        if (!t->flags[id]) continue;
        size_t len;
        const uint8_t *sp = spelling_of(t, id, &len);
        /* A spelling has at least as many bytes as the bytes it stands for. */
        if (!grow_array((void **)&bytes.data, &bytes.cap, len, 1)) {
            st = bmi_fail(BM_ERR_OUT_OF_MEMORY, "out of memory loading the tokenizer");
            break;
        }
        if (read_through_alphabet(t, sp, len, &bytes)) {
            st = store_text(t, bytes.data, bytes.len, &t->piece[id]);
        } else {
            t->piece[id] = t->spelling[id]; /* the same bytes: share them */
        }
        if (t->piece[id].len > t->max_piece) t->max_piece = t->piece[id].len;
    }
    bmi_free(bytes.data);
    return st;
}

static bm_status build_tokenizer(bm_tokenizer *t, const json_t *root) {
    const json_t *model = json_object_get(root, "model");
    const json_t *vocab = json_object_get(model, "vocab");
    json_t *added = json_object_get(root, "added_tokens");
    json_t *no_added = NULL;
    bm_status st;
    if (is_absent(added)) added = no_added = json_array();
    if (!added) return bmi_fail(BM_ERR_OUT_OF_MEMORY, "out of memory loading the tokenizer");
    st = count_ids(t, vocab, added);
    if (st == BM_OK) st = load_vocab(t, vocab);
    if (st == BM_OK) st = find_byte_tokens(t);
    if (st == BM_OK) st = load_added_tokens(t, added);
    if (st == BM_OK) st = load_merges(t, json_object_get(model, "merges"));
    if (st == BM_OK) st = build_pieces(t);
    json_decref(no_added);
    if (st != BM_OK) return st;
    int32_t eos = find_spelling(t, "<|endoftext|>", 13);
    t->eos = eos;
    return BM_OK;
}

static void tokenizer_destroy(bm_tokenizer *t) {
    if (!t) return;
    bmi_free(t->flags);
    bmi_free(t->spelling);
    bmi_free(t->piece);
    bmi_free(t->text.data);
    bmi_free(t->id_by_spelling);
    bmi_free(t->merges);
    bmi_free(t->pairs);
    trie_free(&t->raw_tokens);
    trie_free(&t->normalized_tokens);
    bmi_free(t);
}

bm_status bmi_tokenizer_parse(const char *json, size_t len, bm_tokenizer **out) {
    if (!out || (!json && len)) return bmi_fail(BM_ERR_INVALID_ARGUMENT, "bm_tokenizer_load: NULL argument");
    json_error_t err;
    json_t *root = json_loadb(json ? json : "", len, 0, &err);
    if (!root) {
        if (json_error_code(&err) == json_error_out_of_memory)
            return bmi_fail(BM_ERR_OUT_OF_MEMORY, "out of memory parsing tokenizer.json");
        return bmi_fail(BM_ERR_FORMAT, "not valid JSON: %s (line %d, column %d)", err.text, err.line, err.column);
    }
    bm_status st = BM_OK;
    bm_tokenizer *t = NULL;
    int nfc = 0;
    if (!json_is_object(root)) st = bmi_fail(BM_ERR_FORMAT, "the top level is not an object");
    if (st == BM_OK) st = check_pipeline(root, &nfc);
    if (st == BM_OK && !(t = bmi_calloc(1, sizeof *t))) st = bmi_fail(BM_ERR_OUT_OF_MEMORY, "out of memory loading the tokenizer");
    if (st == BM_OK) {
        t->nfc = nfc;
        t->eos = -1;
        trie_init(&t->raw_tokens);
        trie_init(&t->normalized_tokens);
        build_byte_alphabet(t);
        build_ascii_classes(t);
        st = build_tokenizer(t, root);
    }
    json_decref(root);
    if (st != BM_OK) {
        tokenizer_destroy(t);
        return st;
    }
    *out = t;
    return BM_OK;
}

static bm_status read_whole_file(const char *path, char **data, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return bmi_fail(BM_ERR_IO, "cannot open: %s", strerror(errno));
    struct byte_buf b = {NULL, 0, 0};
    char chunk[65536];
    size_t n;
    bm_status st = BM_OK;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0) {
        if (!buf_append(&b, chunk, n)) {
            st = bmi_fail(BM_ERR_OUT_OF_MEMORY, "out of memory reading the file");
            break;
        }
    }
    if (st == BM_OK && ferror(f)) st = bmi_fail(BM_ERR_IO, "cannot read: %s", strerror(errno));
    fclose(f);
    if (st != BM_OK) {
        bmi_free(b.data);
        return st;
    }
    *data = (char *)b.data;
    *len = b.len;
    return BM_OK;
}

BM_API bm_status bm_tokenizer_load(const char *tokenizer_json_path, bm_tokenizer **out) {
    if (!tokenizer_json_path || !out) return bmi_fail(BM_ERR_INVALID_ARGUMENT, "bm_tokenizer_load: NULL argument");
    char *data = NULL;
    size_t len = 0;
    bm_status st = read_whole_file(tokenizer_json_path, &data, &len);
    if (st == BM_OK) st = bmi_tokenizer_parse(data, len, out);
    bmi_free(data);
    if (st != BM_OK) bmi_error_context("%s", tokenizer_json_path);
    return st;
}

BM_API void bm_tokenizer_free(bm_tokenizer *t) { tokenizer_destroy(t); }

/* ---- BPE ------------------------------------------------------------------ */

struct id_sink {
    int32_t *ids;
    size_t cap, n;
};

static inline void id_put(struct id_sink *s, int32_t id) {
    if (s->n < s->cap) s->ids[s->n] = id;
    s->n++;
}

/* For short words: symbols in an array, each step merging the lowest-ranked
 * (then leftmost) adjacent pair. Quadratic, but with n <= SMALL_WORD_MAX the
 * scans are cheaper than a queue. Writes the result over `sym`. */
static size_t bpe_small(const bm_tokenizer *t, const uint8_t *w, size_t n, int32_t *sym) {
    uint32_t rank[SMALL_WORD_MAX];
    for (size_t i = 0; i < n; i++) sym[i] = t->byte_id[w[i]];
    for (size_t i = 0; i + 1 < n; i++) rank[i] = pair_rank(t, sym[i], sym[i + 1]);
    while (n > 1) {
        size_t best = 0;
        for (size_t i = 1; i + 1 < n; i++)
            if (rank[i] < rank[best]) best = i;
        if (rank[best] == NO_RANK) break;
        sym[best] = t->merges[rank[best]].merged;
        memmove(sym + best + 1, sym + best + 2, (n - best - 2) * sizeof *sym);
        memmove(rank + best, rank + best + 1, (n - best - 2) * sizeof *rank);
        n--;
        if (best > 0) rank[best - 1] = pair_rank(t, sym[best - 1], sym[best]);
        if (best + 1 < n) rank[best] = pair_rank(t, sym[best], sym[best + 1]);
    }
    return n;
}

/* Scratch for long words: a linked list of symbols and a min-heap of
 * candidate merges keyed (rank << 32 | position). Stale heap entries are
 * skipped when popped, so each merge costs O(log n) and a word of a million
 * identical bytes takes well under a second. */
struct bpe_scratch {
    int32_t *sym;
    uint32_t *prev, *next;
    uint64_t *heap;
    size_t sym_cap, prev_cap, next_cap, heap_cap, heap_len;
};

#define DEAD_SYMBOL (-1)
#define NO_SYMBOL UINT32_MAX

static void heap_push(struct bpe_scratch *b, uint64_t key) {
    size_t i = b->heap_len++;
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (b->heap[parent] <= key) break;
        b->heap[i] = b->heap[parent];
        i = parent;
    }
    b->heap[i] = key;
}

static uint64_t heap_pop(struct bpe_scratch *b) {
    uint64_t top = b->heap[0], last = b->heap[--b->heap_len];
    size_t i = 0, n = b->heap_len;
    for (;;) {
        size_t child = 2 * i + 1;
        if (child >= n) break;
        if (child + 1 < n && b->heap[child + 1] < b->heap[child]) child++;
        if (last <= b->heap[child]) break;
        b->heap[i] = b->heap[child];
        i = child;
    }
    if (n) b->heap[i] = last;
    return top;
}

static void push_pair(const bm_tokenizer *t, struct bpe_scratch *b, uint32_t pos) {
    uint32_t right = b->next[pos];
    if (right == NO_SYMBOL) return;
    uint32_t rank = pair_rank(t, b->sym[pos], b->sym[right]);
    if (rank != NO_RANK) heap_push(b, ((uint64_t)rank << 32) | pos);
}

static bm_status bpe_queue_reserve(struct bpe_scratch *b, size_t n) {
    /* n - 1 initial pairs plus at most two new ones per merge. */
    if (n > UINT32_MAX / 4) return bmi_fail(BM_ERR_INVALID_ARGUMENT, "a word of %zu bytes is too long to encode", n);
    if (!grow_array((void **)&b->sym, &b->sym_cap, n, sizeof *b->sym) ||
        !grow_array((void **)&b->prev, &b->prev_cap, n, sizeof *b->prev) ||
        !grow_array((void **)&b->next, &b->next_cap, n, sizeof *b->next) ||
        !grow_array((void **)&b->heap, &b->heap_cap, 3 * n, sizeof *b->heap))
        return bmi_fail(BM_ERR_OUT_OF_MEMORY, "out of memory encoding a word of %zu bytes", n);
    return BM_OK;
}

static bm_status bpe_queue(const bm_tokenizer *t, struct bpe_scratch *b, const uint8_t *w, size_t n,
                           struct id_sink *out) {
    bm_status st = bpe_queue_reserve(b, n);
    if (st != BM_OK) return st;
    b->heap_len = 0;
    for (size_t i = 0; i < n; i++) {
        b->sym[i] = t->byte_id[w[i]];
        b->prev[i] = i ? (uint32_t)(i - 1) : NO_SYMBOL;
        b->next[i] = i + 1 < n ? (uint32_t)(i + 1) : NO_SYMBOL;
    }
    for (size_t i = 0; i + 1 < n; i++) push_pair(t, b, (uint32_t)i);
    while (b->heap_len) {
        uint64_t key = heap_pop(b);
        uint32_t rank = (uint32_t)(key >> 32), pos = (uint32_t)key, right = b->next[pos];
        const struct merge *m = &t->merges[rank];
        /* Skip entries whose pair has changed since they were pushed. */
        if (b->sym[pos] != m->left || right == NO_SYMBOL || b->sym[right] != m->right) continue;
        b->sym[pos] = m->merged;
        b->sym[right] = DEAD_SYMBOL;
        b->next[pos] = b->next[right];
        if (b->next[pos] != NO_SYMBOL) b->prev[b->next[pos]] = pos;
        if (b->prev[pos] != NO_SYMBOL) push_pair(t, b, b->prev[pos]);
        push_pair(t, b, pos);
    }
    for (uint32_t i = 0; i != NO_SYMBOL; i = b->next[i]) id_put(out, b->sym[i]);
    return BM_OK;
}

static void bpe_scratch_free(struct bpe_scratch *b) {
    bmi_free(b->sym);
    bmi_free(b->prev);
    bmi_free(b->next);
    bmi_free(b->heap);
}

/* ---- encoding ------------------------------------------------------------- */

struct cache_slot {
    uint8_t key_len, n_ids; /* key_len 0: empty */
    uint8_t key[CACHE_KEY_MAX];
    int32_t ids[CACHE_IDS_MAX];
};

struct encoder {
    const bm_tokenizer *t;
    struct id_sink out;
    struct byte_buf norm;
    struct code_points cps;
    struct bpe_scratch bpe;
    struct cache_slot *cache; /* direct-mapped, NULL for short texts */
    size_t cache_mask;
};

static void encoder_init(struct encoder *e, const bm_tokenizer *t, int32_t *ids, size_t cap, size_t text_len) {
    memset(e, 0, sizeof *e);
    e->t = t;
    e->out = (struct id_sink){ids, ids ? cap : 0, 0};
    if (text_len >= CACHE_MIN_TEXT) {
        size_t slots = 64;
        while (slots < CACHE_MAX_SLOTS && slots * 16 < text_len) slots *= 2;
        /* The cache only saves time, so a failed allocation just goes without. */
        e->cache = bmi_calloc(slots, sizeof *e->cache);
        e->cache_mask = e->cache ? slots - 1 : 0;
    }
}

static void encoder_free(struct encoder *e) {
    bmi_free(e->norm.data);
    bmi_free(e->cps.data);
    bpe_scratch_free(&e->bpe);
    bmi_free(e->cache);
}

static struct cache_slot *cache_slot_for(struct encoder *e, const uint8_t *w, size_t n) {
    if (!e->cache || n > CACHE_KEY_MAX) return NULL;
    return &e->cache[(size_t)hash_bytes(w, n) & e->cache_mask];
}

static bm_status encode_word(struct encoder *e, const uint8_t *w, size_t n) {
    const bm_tokenizer *t = e->t;
    if (n == 1) {
        id_put(&e->out, t->byte_id[w[0]]);
        return BM_OK;
    }
    struct cache_slot *slot = cache_slot_for(e, w, n);
    if (slot && slot->key_len == n && memcmp(slot->key, w, n) == 0) {
        for (size_t i = 0; i < slot->n_ids; i++) id_put(&e->out, slot->ids[i]);
        return BM_OK;
    }
    if (n > SMALL_WORD_MAX) return bpe_queue(t, &e->bpe, w, n, &e->out);
    int32_t sym[SMALL_WORD_MAX];
    size_t k = bpe_small(t, w, n, sym);
    for (size_t i = 0; i < k; i++) id_put(&e->out, sym[i]);
    if (slot && k <= CACHE_IDS_MAX) {
        slot->key_len = (uint8_t)n;
        slot->n_ids = (uint8_t)k;
        memcpy(slot->key, w, n);
        memcpy(slot->ids, sym, k * sizeof *sym);
    }
    return BM_OK;
}

/* Pre-tokenize and BPE text that holds no added tokens. */
static bm_status encode_plain(struct encoder *e, const uint8_t *s, size_t n) {
    size_t pos = 0;
    while (pos < n) {
        size_t end = pretoken_end(e->t, s, n, pos);
        bm_status st = encode_word(e, s + pos, end - pos);
        if (st != BM_OK) return st;
        pos = end;
    }
    return BM_OK;
}

/* Text between two raw added tokens: normalise, then cut out the added
 * tokens that match normalised text. */
static bm_status encode_segment(struct encoder *e, const uint8_t *s, size_t n) {
    const bm_tokenizer *t = e->t;
    if (n == 0) return BM_OK;
    if (t->nfc && has_non_ascii(s, n)) {
        bm_status st = nfc_text(&e->norm, &e->cps, s, n);
        if (st != BM_OK) return st;
        s = e->norm.data;
        n = e->norm.len;
    }
    size_t pos = 0;
    while (pos < n) {
        size_t len = 0;
        int32_t id = -1;
        size_t at = trie_find(&t->normalized_tokens, s, n, pos, &len, &id);
        bm_status st = encode_plain(e, s + pos, at - pos);
        if (st != BM_OK) return st;
        if (at == n) break;
        id_put(&e->out, id);
        pos = at + len;
    }
    return BM_OK;
}

static bm_status encode_text(struct encoder *e, const uint8_t *s, size_t n) {
    size_t pos = 0;
    while (pos < n) {
        size_t len = 0;
        int32_t id = -1;
        size_t at = trie_find(&e->t->raw_tokens, s, n, pos, &len, &id);
        bm_status st = encode_segment(e, s + pos, at - pos);
        if (st != BM_OK) return st;
        if (at == n) break;
        id_put(&e->out, id);
        pos = at + len;
    }
    return BM_OK;
}

static bm_status report_count(const struct encoder *e, int32_t *ids, size_t cap, size_t *n_ids) {
    *n_ids = e->out.n;
    if (ids && e->out.n > cap)
        return bmi_fail(BM_ERR_BUFFER_TOO_SMALL, "the text needs %zu token ids, the buffer holds %zu", e->out.n, cap);
    return BM_OK;
}

BM_API bm_status bm_tokenize(const bm_tokenizer *t, const char *text, size_t len, int32_t *ids, size_t cap,
                             size_t *n_ids) {
    if (!t || !n_ids || (!text && len)) return bmi_fail(BM_ERR_INVALID_ARGUMENT, "bm_tokenize: NULL argument");
    const uint8_t *s = (const uint8_t *)text;
    size_t bad = utf8_first_invalid(s, len);
    if (bad < len)
        return bmi_fail(BM_ERR_INVALID_ARGUMENT, "bm_tokenize: invalid UTF-8 at byte offset %zu (byte 0x%02x)", bad,
                        s[bad]);
    struct encoder e;
    encoder_init(&e, t, ids, cap, len);
    bm_status st = encode_text(&e, s, len);
    if (st == BM_OK) st = report_count(&e, ids, cap, n_ids);
    encoder_free(&e);
    return st;
}

bm_status bmi_tokenizer_bpe(const bm_tokenizer *t, const char *word, size_t len, int use_queue, int32_t *ids,
                            size_t cap, size_t *n_ids) {
    if (!t || !n_ids || !word || len == 0) return bmi_fail(BM_ERR_INVALID_ARGUMENT, "bmi_tokenizer_bpe: bad argument");
    for (size_t i = 0; i < len; i++)
        if (t->byte_id[(uint8_t)word[i]] < 0)
            return bmi_fail(BM_ERR_INVALID_ARGUMENT, "bmi_tokenizer_bpe: byte 0x%02x has no token", (uint8_t)word[i]);
    struct encoder e;
    encoder_init(&e, t, ids, cap, 0);
    bm_status st = use_queue ? bpe_queue(t, &e.bpe, (const uint8_t *)word, len, &e.out)
                             : encode_word(&e, (const uint8_t *)word, len);
    if (st == BM_OK) st = report_count(&e, ids, cap, n_ids);
    encoder_free(&e);
    return st;
}

/* ---- decoding ------------------------------------------------------------- */

static int id_is_valid(const bm_tokenizer *t, int32_t id) { return id >= 0 && id < t->n_ids && t->flags[id]; }

static void decode_ids(const bm_tokenizer *t, struct utf8_repair *r, const int32_t *ids, size_t n,
                       struct byte_sink *out) {
    for (size_t i = 0; i < n; i++)
        utf8_repair_feed(r, t->text.data + t->piece[ids[i]].off, t->piece[ids[i]].len, out);
}

BM_API bm_status bm_detokenize(const bm_tokenizer *t, const int32_t *ids, size_t n, char *buf, size_t cap,
                               size_t *len) {
    if (!t || !len || (!ids && n)) return bmi_fail(BM_ERR_INVALID_ARGUMENT, "bm_detokenize: NULL argument");
    for (size_t i = 0; i < n; i++)
        if (!id_is_valid(t, ids[i]))
            return bmi_fail(BM_ERR_INVALID_ARGUMENT, "bm_detokenize: ids[%zu] = %d is not a token id (vocabulary size %d)",
                            i, (int)ids[i], (int)t->n_ids);
    struct utf8_repair r = {{0}, 0, 0, 0, 0};
    struct byte_sink count = {NULL, 0, 0};
    decode_ids(t, &r, ids, n, &count);
    utf8_repair_finish(&r, &count);
    if (!buf) {
        *len = count.len;
        return BM_OK;
    }
    if (count.len > cap) {
        *len = count.len;
        return bmi_fail(BM_ERR_BUFFER_TOO_SMALL, "bm_detokenize: the text needs %zu bytes, the buffer holds %zu",
                        count.len, cap);
    }
    struct byte_sink write = {buf, cap, 0};
    r = (struct utf8_repair){{0}, 0, 0, 0, 0};
    decode_ids(t, &r, ids, n, &write);
    utf8_repair_finish(&r, &write);
    *len = write.len;
    return BM_OK;
}

BM_API int32_t bm_tokenizer_vocab_size(const bm_tokenizer *t) { return t ? t->n_ids : 0; }

BM_API int32_t bm_tokenizer_eos(const bm_tokenizer *t) { return t ? t->eos : -1; }

BM_API int bm_tokenizer_is_special(const bm_tokenizer *t, int32_t id) {
    return t && id_is_valid(t, id) && (t->flags[id] & TOKEN_SPECIAL) ? 1 : 0;
}

BM_API int32_t bm_tokenizer_token_to_id(const bm_tokenizer *t, const char *token, size_t len) {
    if (!t || (!token && len)) return -1;
    return find_spelling(t, token ? token : "", len);
}

BM_API bm_status bm_tokenizer_id_to_piece(const bm_tokenizer *t, int32_t id, const char **piece, size_t *len) {
    if (!t || !piece || !len) return bmi_fail(BM_ERR_INVALID_ARGUMENT, "bm_tokenizer_id_to_piece: NULL argument");
    if (!id_is_valid(t, id))
        return bmi_fail(BM_ERR_INVALID_ARGUMENT, "bm_tokenizer_id_to_piece: %d is not a token id", (int)id);
    *piece = (const char *)t->text.data + t->piece[id].off;
    *len = t->piece[id].len;
    return BM_OK;
}

BM_API size_t bm_tokenizer_max_token_bytes(const bm_tokenizer *t) { return t ? t->max_piece : 0; }

/* ---- streaming decoding ---------------------------------------------------- */

struct bm_detokenizer {
    const bm_tokenizer *t;
    struct utf8_repair repair;
};

BM_API bm_status bm_detokenizer_new(const bm_tokenizer *t, bm_detokenizer **out) {
    if (!t || !out) return bmi_fail(BM_ERR_INVALID_ARGUMENT, "bm_detokenizer_new: NULL argument");
    bm_detokenizer *d = bmi_calloc(1, sizeof *d);
    if (!d) return bmi_fail(BM_ERR_OUT_OF_MEMORY, "out of memory making a detokenizer");
    d->t = t;
    *out = d;
    return BM_OK;
}

BM_API void bm_detokenizer_free(bm_detokenizer *d) { bmi_free(d); }

BM_API void bm_detokenizer_reset(bm_detokenizer *d) {
    if (d) d->repair.n_held = 0;
}

/* Measure on a copy of the state first, so a size query or too small a
 * buffer leaves the detokenizer as it was. */
BM_API bm_status bm_detokenizer_push(bm_detokenizer *d, int32_t id, char *buf, size_t cap, size_t *len) {
    if (!d || !len) return bmi_fail(BM_ERR_INVALID_ARGUMENT, "bm_detokenizer_push: NULL argument");
    if (!id_is_valid(d->t, id))
        return bmi_fail(BM_ERR_INVALID_ARGUMENT, "bm_detokenizer_push: %d is not a token id (vocabulary size %d)",
                        (int)id, (int)d->t->n_ids);
    struct utf8_repair trial = d->repair;
    struct byte_sink count = {NULL, 0, 0};
    decode_ids(d->t, &trial, &id, 1, &count);
    *len = count.len;
    if (!buf) return BM_OK;
    if (count.len > cap)
        return bmi_fail(BM_ERR_BUFFER_TOO_SMALL, "bm_detokenizer_push: %zu bytes to emit, the buffer holds %zu",
                        count.len, cap);
    struct byte_sink write = {buf, cap, 0};
    decode_ids(d->t, &d->repair, &id, 1, &write);
    return BM_OK;
}

BM_API bm_status bm_detokenizer_flush(bm_detokenizer *d, char *buf, size_t cap, size_t *len) {
    if (!d || !len) return bmi_fail(BM_ERR_INVALID_ARGUMENT, "bm_detokenizer_flush: NULL argument");
    struct utf8_repair trial = d->repair;
    struct byte_sink count = {NULL, 0, 0};
    utf8_repair_finish(&trial, &count);
    *len = count.len;
    if (!buf) return BM_OK;
    if (count.len > cap)
        return bmi_fail(BM_ERR_BUFFER_TOO_SMALL, "bm_detokenizer_flush: %zu bytes to emit, the buffer holds %zu",
                        count.len, cap);
    struct byte_sink write = {buf, cap, 0};
    utf8_repair_finish(&d->repair, &write);
    return BM_OK;
}
