/* config.json: read through libyaml (JSON is a subset of YAML 1.2 for these
 * files), checked, with the layer grammar of SPEC.md. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <yaml.h>

#include "model.h"

#define BMI_CONFIG_MAX_BYTES (1u << 20)

static const char *scalar_of(const yaml_node_t *n) {
    return n && n->type == YAML_SCALAR_NODE ? (const char *)n->data.scalar.value : NULL;
}

static bm_status parse_int(const yaml_node_t *n, const char *key, long lo, long hi, int *out) {
    const char *s = scalar_of(n);
    if (!s) return bmi_fail(BM_ERR_FORMAT, "config.json: \"%s\" must be a number", key);
    char *end = NULL;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end != '\0')
        return bmi_fail(BM_ERR_FORMAT, "config.json: \"%s\" is not an integer: \"%.40s\"", key, s);
    if (v < lo || v > hi)
        return bmi_fail(BM_ERR_FORMAT, "config.json: \"%s\" = %ld is outside [%ld, %ld]", key, v, lo, hi);
    *out = (int)v;
    return BM_OK;
}

static bm_status parse_bool(const yaml_node_t *n, const char *key, int *out) {
    const char *s = scalar_of(n);
    if (s && (!strcmp(s, "true") || !strcmp(s, "True"))) return *out = 1, BM_OK;
    if (s && (!strcmp(s, "false") || !strcmp(s, "False"))) return *out = 0, BM_OK;
    return bmi_fail(BM_ERR_FORMAT, "config.json: \"%s\" must be true or false", key);
}

/* One entry of mamba_moe_layers: "r", "N" (2..9 experts; more accepted up to
 * BMI_MAX_EXPERTS), "1", "rN", "r1". */
static bm_status parse_layer_code(const char *s, int index, bmi_layer_config *out) {
    const char *p = s;
    out->has_mamba = 0;
    out->n_experts = 0;
    if (*p == 'r') out->has_mamba = 1, p++;
    if (*p) {
        char *end = NULL;
        errno = 0;
        long e = strtol(p, &end, 10);
        if (errno || end == p || *end != '\0' || *p == '+' || *p == '-' || e < 1 || e > BMI_MAX_EXPERTS)
            return bmi_fail(BM_ERR_FORMAT, "config.json: mamba_moe_layers[%d] = \"%.20s\" is not a layer code "
                                           "(r, N, 1, rN or r1 with N experts in 2..%d)",
                            index, s, BMI_MAX_EXPERTS);
        out->n_experts = (int)e;
    }
    if (!out->has_mamba && out->n_experts == 0)
        return bmi_fail(BM_ERR_FORMAT, "config.json: mamba_moe_layers[%d] is empty", index);
    return BM_OK;
}


static bm_status parse_layers(yaml_document_t *doc, const yaml_node_t *seq, bmi_config *c) {
    if (!seq || seq->type != YAML_SEQUENCE_NODE)
        return bmi_fail(BM_ERR_FORMAT, "config.json: \"mamba_moe_layers\" must be a list of strings");
    long count = seq->data.sequence.items.top - seq->data.sequence.items.start;
    if (count == 0) { /* empty: every layer is plain Mamba */
        for (int i = 0; i < c->n_layers; i++) c->layers[i] = (bmi_layer_config){1, 0};
        return BM_OK;
    }
    if (count != c->n_layers)
        return bmi_fail(BM_ERR_FORMAT, "config.json: mamba_moe_layers has %ld entries but num_layers is %d", count,
                        c->n_layers);
    size_t text_len = 0;
    for (long i = 0; i < count; i++) {
        const char *s = scalar_of(yaml_document_get_node(doc, seq->data.sequence.items.start[i]));
        if (!s) return bmi_fail(BM_ERR_FORMAT, "config.json: mamba_moe_layers[%ld] must be a string", i);
        bm_status st = parse_layer_code(s, (int)i, &c->layers[i]);
        if (st) return st;
        text_len += strlen(s) + 1;
    }
    char *kinds = bmi_malloc(text_len + 1), *w = kinds;
    if (!kinds) return bmi_fail(BM_ERR_OUT_OF_MEMORY, "out of memory reading config.json");
    for (long i = 0; i < count; i++) {
        const char *s = scalar_of(yaml_document_get_node(doc, seq->data.sequence.items.start[i]));
        size_t n = strlen(s);
        if (i) *w++ = ',';
        memcpy(w, s, n);
        w += n;
    }
    *w = '\0';
    c->layer_kinds = kinds;
    return BM_OK;
}

static bm_status layer_kinds_from_layers(bmi_config *c) {
    size_t cap = (size_t)c->n_layers * 4 + 1;
    char *kinds = bmi_malloc(cap), *w = kinds;
    if (!kinds) return bmi_fail(BM_ERR_OUT_OF_MEMORY, "out of memory reading config.json");
    for (int i = 0; i < c->n_layers; i++) {
        if (i) *w++ = ',';
        if (c->layers[i].has_mamba) *w++ = 'r';
        if (c->layers[i].n_experts) w += snprintf(w, cap - (size_t)(w - kinds), "%d", c->layers[i].n_experts);
    }
    *w = '\0';
    c->layer_kinds = kinds;
    return BM_OK;
}

static yaml_node_t *lookup(yaml_document_t *doc, yaml_node_t *map, const char *key) {
    for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top; p++) {
        const char *k = scalar_of(yaml_document_get_node(doc, p->key));
        if (k && !strcmp(k, key)) return yaml_document_get_node(doc, p->value);
    }
    return NULL;
}

/* A key given twice would make the file mean different things to different
 * readers: refuse it. */
static bm_status check_unique_keys(yaml_document_t *doc, yaml_node_t *map) {
    for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top; p++) {
        const char *k = scalar_of(yaml_document_get_node(doc, p->key));
        if (!k) return bmi_fail(BM_ERR_FORMAT, "config.json: a key is not a string");
        for (yaml_node_pair_t *q = map->data.mapping.pairs.start; q < p; q++) {
            const char *k2 = scalar_of(yaml_document_get_node(doc, q->key));
            if (k2 && !strcmp(k, k2)) return bmi_fail(BM_ERR_FORMAT, "config.json: key \"%.64s\" appears twice", k);
        }
    }
    return BM_OK;
}

static bm_status parse_document(yaml_document_t *doc, bmi_config *c) {
    yaml_node_t *root = yaml_document_get_root_node(doc);
    if (!root || root->type != YAML_MAPPING_NODE)
        return bmi_fail(BM_ERR_FORMAT, "config.json: the top level must be an object");
    if (root->data.mapping.pairs.top - root->data.mapping.pairs.start > 256)
        return bmi_fail(BM_ERR_FORMAT, "config.json: more than 256 keys");
    bm_status unique = check_unique_keys(doc, root);
    if (unique) return unique;
    static const struct { const char *key; long lo, hi; size_t off; int required; } ints[] = {
        {"num_layers", 1, BMI_MAX_LAYERS, offsetof(bmi_config, n_layers), 1},
        {"hidden_size", 1, 65536, offsetof(bmi_config, d_model), 1},
        {"state_size", 1, 1024, offsetof(bmi_config, d_state), 1},
        {"conv_dimension", 1, 64, offsetof(bmi_config, d_conv), 1},
        {"vocab_size", 1, 1 << 24, offsetof(bmi_config, vocab_size), 1},
        {"expansion_factor", 1, 16, offsetof(bmi_config, expand), 1},
        {"ffn_hidden_size", 1, 1 << 20, offsetof(bmi_config, ffn_hidden), 0},
        {"max_sequence_length", 0, 1L << 30, offsetof(bmi_config, max_seq), 0},
    };
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++) {
        yaml_node_t *n = lookup(doc, root, ints[i].key);
        if (!n) {
            if (ints[i].required) return bmi_fail(BM_ERR_FORMAT, "config.json: missing \"%s\"", ints[i].key);
            continue;
        }
        bm_status st = parse_int(n, ints[i].key, ints[i].lo, ints[i].hi, (int *)((char *)c + ints[i].off));
        if (st) return st;
    }
    static const struct { const char *key; size_t off; } bools[] = {
        {"add_bias_linear", offsetof(bmi_config, add_bias_linear)},
        {"swiglu", offsetof(bmi_config, swiglu)},
    };
    for (size_t i = 0; i < sizeof bools / sizeof bools[0]; i++) {
        yaml_node_t *n = lookup(doc, root, bools[i].key);
        if (!n) continue;
        bm_status st = parse_bool(n, bools[i].key, (int *)((char *)c + bools[i].off));
        if (st) return st;
    }
    yaml_node_t *dt_rank = lookup(doc, root, "dt_rank");
    if (dt_rank && !(scalar_of(dt_rank) && !strcmp(scalar_of(dt_rank), "auto"))) {
        bm_status st = parse_int(dt_rank, "dt_rank", 1, 1 << 16, &c->dt_rank);
        if (st) return st;
    }
    c->layers = bmi_calloc((size_t)c->n_layers, sizeof *c->layers);
    if (!c->layers) return bmi_fail(BM_ERR_OUT_OF_MEMORY, "out of memory reading config.json");
    yaml_node_t *seq = lookup(doc, root, "mamba_moe_layers");
    bm_status st = seq ? parse_layers(doc, seq, c) : BM_OK;
    if (st) return st;
    if (!seq) {
        for (int i = 0; i < c->n_layers; i++) c->layers[i] = (bmi_layer_config){1, 0};
    }
    if (!c->layer_kinds && (st = layer_kinds_from_layers(c))) return st;
    return bmi_config_validate(c);
}

bm_status bmi_config_validate(bmi_config *c) {
    int needs_ffn = 0;
    for (int i = 0; i < c->n_layers; i++) needs_ffn |= c->layers[i].n_experts > 0;
    if (needs_ffn && c->ffn_hidden <= 0)
        return bmi_fail(BM_ERR_FORMAT, "config.json: missing \"ffn_hidden_size\" (the model has MLP layers)");
    c->d_inner = c->expand * c->d_model;
    if (c->dt_rank <= 0) c->dt_rank = (c->d_model + 15) / 16;
    if (c->d_inner > 65536 || c->ffn_hidden > 65536)
        return bmi_fail(BM_ERR_FORMAT, "config.json: d_inner %d or ffn_hidden_size %d is over 65536", c->d_inner,
                        c->ffn_hidden);
    if ((long)c->d_inner * c->d_state > (1L << 28) || (long)c->d_model * c->vocab_size > (1L << 34))
        return bmi_fail(BM_ERR_FORMAT, "config.json: dimensions are absurdly large");
    return BM_OK;
}

bm_status bmi_config_parse(const char *text, size_t len, bmi_config *out) {
    if (len > BMI_CONFIG_MAX_BYTES) return bmi_fail(BM_ERR_FORMAT, "config.json is larger than 1 MiB");
    yaml_parser_t parser;
    yaml_document_t doc;
    if (!yaml_parser_initialize(&parser)) return bmi_fail(BM_ERR_OUT_OF_MEMORY, "out of memory reading config.json");
    yaml_parser_set_input_string(&parser, (const unsigned char *)text, len);
    if (!yaml_parser_load(&parser, &doc)) {
        bm_status st = parser.error == YAML_MEMORY_ERROR
                           ? bmi_fail(BM_ERR_OUT_OF_MEMORY, "out of memory reading config.json")
                           : bmi_fail(BM_ERR_FORMAT, "config.json: %s at line %zu column %zu",
                                      parser.problem ? parser.problem : "syntax error",
                                      parser.problem_mark.line + 1, parser.problem_mark.column + 1);
        yaml_parser_delete(&parser);
        return st;
    }
    bmi_config c = {0};
    c.activation = BM_ACTIVATION_GELU;
    bm_status st = parse_document(&doc, &c);
    yaml_document_delete(&doc);
    yaml_parser_delete(&parser);
    if (st) {
        bmi_config_free(&c);
        return st;
    }
    *out = c;
    return BM_OK;
}

bm_status bmi_config_read(const char *path, bmi_config *out) {
    FILE *f = fopen(path, "rb");
    if (!f) return bmi_fail(BM_ERR_IO, "cannot open %s: %s", path, strerror(errno));
    char *buf = bmi_malloc(BMI_CONFIG_MAX_BYTES + 1);
    if (!buf) {
        fclose(f);
        return bmi_fail(BM_ERR_OUT_OF_MEMORY, "out of memory reading %s", path);
    }
    size_t n = fread(buf, 1, BMI_CONFIG_MAX_BYTES + 1, f);
    int err = ferror(f);
    fclose(f);
    bm_status st = err ? bmi_fail(BM_ERR_IO, "cannot read %s", path) : bmi_config_parse(buf, n, out);
    bmi_free(buf);
    return st;
}

void bmi_config_free(bmi_config *c) {
    if (!c) return;
    bmi_free(c->layers);
    bmi_free(c->layer_kinds);
    memset(c, 0, sizeof *c);
}
