/* pytorch_model.bin reader: the ZIP archive torch.save (>= 1.6) writes,
 * holding <prefix>/data.pkl and one raw little-endian storage per
 * <prefix>/data/<key>. The pickle is interpreted by the restricted reader in
 * pickle.c (nothing is executed); every tensor view it describes is checked
 * against the bytes of its storage before it enters the table. */
#include "pickle.h"
#include "tensor.h"
#include "zip.h"

#include <stdlib.h>

#define SHOWN(n) ((int)((n) > 200 ? 200 : (n))) /* cap on names quoted in messages */

typedef struct archive {
    bmi_zip zip;
    const bmi_zip_entry *data_pkl;
    const char *prefix; /* the directory holding data.pkl, with its '/' */
    size_t prefix_len;
    char *scratch;      /* entry names being looked up */
    size_t scratch_cap;
} archive;

/* Pre-1.6 torch.save wrote a bare pickle stream (or, earlier still, a tar
 * file); neither has the per-storage entries we map in place. */
static int is_legacy_format(const uint8_t *p, size_t len) {
    if (len >= 2 && p[0] == 0x80 && p[1] >= 1 && p[1] <= 5) return 1;
    return len >= 262 && memcmp(p + 257, "ustar", 5) == 0;
}

static bm_status find_data_pkl(archive *a) {
    static const char suffix[] = "/data.pkl";
    const size_t slen = sizeof suffix - 1;
    const bmi_zip_entry *found = NULL;
    for (size_t i = 0; i < a->zip.count; i++) {
        const bmi_zip_entry *e = &a->zip.entries[i];
        if (e->name_len <= slen || memcmp(e->name + e->name_len - slen, suffix, slen) != 0) continue;
        if (memchr(e->name, '/', e->name_len - slen)) continue; /* not at the archive's top */
        if (found)
            return bmi_fail(BM_ERR_FORMAT, "archive holds more than one data.pkl ('%.*s' and '%.*s')",
                            SHOWN(found->name_len), found->name, SHOWN(e->name_len), e->name);
        found = e;
    }
    if (!found)
        return bmi_fail(BM_ERR_FORMAT, "ZIP archive has no <name>/data.pkl: not a torch.save checkpoint");
    a->data_pkl = found;
    a->prefix = found->name;
    a->prefix_len = found->name_len - slen + 1;
    return BM_OK;
}

/* The entry <prefix><middle><tail>, or NULL. */
static bm_status find_entry(archive *a, const char *middle, const char *tail, size_t tail_len,
                            const bmi_zip_entry **entry) {
    size_t mid_len = strlen(middle), n;
    if (!bmi_add_size(a->prefix_len, mid_len, &n) || !bmi_add_size(n, tail_len, &n))
        return bmi_fail(BM_ERR_FORMAT, "entry name too long");
    if (n > a->scratch_cap) {
        char *grown = bmi_realloc(a->scratch, n);
        if (!grown) return bmi_fail(BM_ERR_OUT_OF_MEMORY, "out of memory for an entry name");
        a->scratch = grown;
        a->scratch_cap = n;
    }
    memcpy(a->scratch, a->prefix, a->prefix_len);
    memcpy(a->scratch + a->prefix_len, middle, mid_len);
    if (tail_len) memcpy(a->scratch + a->prefix_len + mid_len, tail, tail_len);
    *entry = bmi_zip_find(&a->zip, a->scratch, n);
    return BM_OK;
}

/* torch >= 1.10 records the byte order of the storages; older archives
 * are little-endian, as are all machines that wrote released checkpoints. */
static bm_status check_byteorder(archive *a) {
    const bmi_zip_entry *e;
    const uint8_t *bytes;
    size_t n;
    bm_status st = find_entry(a, "byteorder", "", 0, &e);
    if (st != BM_OK || !e) return st;
    st = bmi_zip_entry_data(&a->zip, e, &bytes, &n);
    if (st != BM_OK) return st;
    if (n == 6 && memcmp(bytes, "little", 6) == 0) return BM_OK;
    if (n == 3 && memcmp(bytes, "big", 3) == 0)
        return bmi_fail(BM_ERR_UNSUPPORTED, "checkpoint was saved on a big-endian machine; only "
                                            "little-endian storages are supported");
    return bmi_fail(BM_ERR_FORMAT, "byteorder entry holds neither 'little' nor 'big'");
}

/* Checked uint64 arithmetic for element indices. */
static int mul_u64(uint64_t a, uint64_t b, uint64_t *out) {
    if (a != 0 && b > UINT64_MAX / a) return 0;
    *out = a * b;
    return 1;
}
static int add_u64(uint64_t a, uint64_t b, uint64_t *out) {
    if (b > UINT64_MAX - a) return 0;
    *out = a + b;
    return 1;
}

/* The index of the last storage element the view reaches (offset plus
 * (shape-1)*stride over each dimension); 0 on overflow. */
static int last_element(const bmi_pk_tensor *t, uint64_t *last) {
    uint64_t at = (uint64_t)t->offset;
    for (int i = 0; i < t->ndim; i++) {
        uint64_t reach;
        if (!mul_u64((uint64_t)t->shape[i] - 1, (uint64_t)t->stride[i], &reach) ||
            !add_u64(at, reach, &at))
            return 0;
    }
    *last = at;
    return 1;
}

/* Turn one pickled tensor into a view into its storage's bytes, checking
 * that every element the shape and strides can reach lies in the storage. */
static bm_status make_view(archive *a, const bmi_pickle *pk, const char *name, uint32_t v,
                           bmi_tensor *view) {
    const bmi_pk_tensor *t = &pk->tensors[pk->values[v].u.tensor];
    const bmi_pk_value *s = &pk->values[t->storage];
    const bmi_pk_value *type = &pk->values[s->u.storage.type];
    if (type->u.global.dtype < 0)
        return bmi_fail(BM_ERR_UNSUPPORTED, "tensor '%s' is stored as torch.%.*s; supported storages "
                        "are Float, BFloat16, Half (and Int, Long, Byte)", name,
                        SHOWN(type->u.global.name.n), type->u.global.name.p);
    bmi_dtype dtype = (bmi_dtype)type->u.global.dtype;
    size_t elsize = bmi_dtype_size(dtype);
    bmi_pk_text key = s->u.storage.key;

    const bmi_zip_entry *e;
    bm_status st = find_entry(a, "data/", key.p, key.n, &e);
    if (st != BM_OK) return st;
    if (!e)
        return bmi_fail(BM_ERR_FORMAT, "tensor '%s': storage '%.*s' is missing from the archive", name,
                        SHOWN(key.n), key.p);
    const uint8_t *bytes;
    size_t nbytes;
    st = bmi_zip_entry_data(&a->zip, e, &bytes, &nbytes);
    if (st != BM_OK) {
        bmi_error_context("tensor '%s'", name);
        return st;
    }
    uint64_t numel = (uint64_t)s->u.storage.numel, want;
    if (!mul_u64(numel, elsize, &want) || want != nbytes)
        return bmi_fail(BM_ERR_FORMAT, "tensor '%s': storage '%.*s' should hold %llu %s elements but "
                        "its entry has %zu bytes", name, SHOWN(key.n), key.p,
                        (unsigned long long)numel, bmi_dtype_name(dtype), nbytes);

    memset(view, 0, sizeof *view);
    view->dtype = dtype;
    view->ndim = t->ndim;
    int empty = 0;
    uint64_t span = 1; /* the product of the dimensions, zeros counted as ones */
    for (int i = 0; i < t->ndim; i++) {
        view->shape[i] = t->shape[i];
        view->stride[i] = t->stride[i];
        if (t->shape[i] == 0) empty = 1;
        /* Zero strides let a huge shape fit a small storage; users of the
         * view multiply dimensions in int64, so bound the product. */
        if (!mul_u64(span, t->shape[i] ? (uint64_t)t->shape[i] : 1, &span) || span > INT64_MAX)
            return bmi_fail(BM_ERR_FORMAT, "tensor '%s' has a shape with too many elements", name);
    }
    uint64_t offset = (uint64_t)t->offset, last = offset;
    if (offset > numel || (!empty && (!last_element(t, &last) || last >= numel)))
        return bmi_fail(BM_ERR_FORMAT, "tensor '%s' reaches past the end of its storage '%.*s' "
                        "(%llu elements)", name, SHOWN(key.n), key.p, (unsigned long long)numel);
    view->data = bytes + offset * elsize;
    view->nbytes = empty ? 0 : (size_t)(last - offset + 1) * elsize;
    return BM_OK;
}

/* Checkpoints from TransformerEngine-based Megatron carry per-module
 * "_extra_state" entries (None or a BytesIO), which hold no weights. */
static int is_extra_state(const char *name, const bmi_pk_value *v) {
    static const char suffix[] = "_extra_state";
    size_t n = strlen(name), s = sizeof suffix - 1;
    return n >= s && strcmp(name + n - s, suffix) == 0 &&
           (v->kind == BMI_PK_NONE || v->kind == BMI_PK_OPAQUE);
}

/* Opaque values made by a torch function other than the plain rebuild
 * (quantized, sparse, meta or subclass tensors): valid, just not ours. */
static int made_by_torch(const bmi_pickle *pk, const bmi_pk_value *v) {
    if (v->kind != BMI_PK_OPAQUE || v->u.opaque.origin == BMI_PK_NIL) return 0;
    bmi_pk_text module = pk->values[v->u.opaque.origin].u.global.module;
    return (module.n == 5 && memcmp(module.p, "torch", 5) == 0) ||
           (module.n > 6 && memcmp(module.p, "torch.", 6) == 0);
}

static int compare_name_ptrs(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static bm_status check_unique_names(const bmi_tensor_table *t) {
    if (t->count < 2) return BM_OK;
    const char **names = bmi_malloc(t->count * sizeof *names);
    if (!names) return bmi_fail(BM_ERR_OUT_OF_MEMORY, "out of memory checking tensor names");
    for (size_t i = 0; i < t->count; i++) names[i] = t->items[i].name;
    qsort(names, t->count, sizeof *names, compare_name_ptrs);
    bm_status st = BM_OK;
    for (size_t i = 1; i < t->count && st == BM_OK; i++)
        if (strcmp(names[i - 1], names[i]) == 0)
            st = bmi_fail(BM_ERR_FORMAT, "tensor '%s' appears twice in the state dict", names[i]);
    bmi_free(names);
    return st;
}

static bm_status add_state_dict(archive *a, const bmi_pickle *pk, uint32_t dict, int is_top_level,
                                bmi_tensor_table *table) {
    const bmi_pk_value *d = &pk->values[dict];
    char *name = NULL;
    bm_status st = BM_OK;
    for (uint32_t i = 0; i + 1 < d->u.seq.count && st == BM_OK; i += 2) {
        const bmi_pk_value *k = &pk->values[d->u.seq.items[i]];
        uint32_t v = d->u.seq.items[i + 1];
        char what[300];
        if (k->kind != BMI_PK_STR) {
            st = bmi_fail(BM_ERR_FORMAT, "state dict has a key that is %s, not a string",
                          bmi_pickle_describe(pk, d->u.seq.items[i], what, sizeof what));
            break;
        }
        if (memchr(k->u.str.p, '\0', k->u.str.n)) {
            st = bmi_fail(BM_ERR_FORMAT, "tensor name '%.*s' holds a NUL byte", SHOWN(k->u.str.n),
                          k->u.str.p);
            break;
        }
        bmi_free(name);
        name = bmi_strndup(k->u.str.p, k->u.str.n);
        if (!name) {
            st = bmi_fail(BM_ERR_OUT_OF_MEMORY, "out of memory for a tensor name");
            break;
        }
        const bmi_pk_value *value = &pk->values[v];
        if (value->kind != BMI_PK_TENSOR) {
            if (is_extra_state(name, value)) continue;
            if (value->kind == BMI_PK_OPAQUE && value->u.opaque.why)
                st = bmi_fail(BM_ERR_FORMAT, "'%s' in the state dict is not a usable tensor: %s", name,
                              value->u.opaque.why);
            else if (made_by_torch(pk, value))
                st = bmi_fail(BM_ERR_UNSUPPORTED, "'%s' in the state dict is %s: a kind of tensor this "
                              "loader does not read (quantized, sparse, ...)", name,
                              bmi_pickle_describe(pk, v, what, sizeof what));
            else
                st = bmi_fail(BM_ERR_FORMAT, "'%s' in the state dict is %s, not a tensor%s", name,
                              bmi_pickle_describe(pk, v, what, sizeof what),
                              is_top_level ? " (and the checkpoint has no 'model' entry)" : "");
            break;
        }
        bmi_tensor view;
        st = make_view(a, pk, name, v, &view);
        if (st == BM_OK) {
            view.name = name;
            st = bmi_table_add(table, &view);
        }
    }
    bmi_free(name);
    return st == BM_OK ? check_unique_names(table) : st;
}

/* torch.save({"model": state_dict}) as the published checkpoints have it;
 * a bare torch.save(state_dict) is accepted too. */
static bm_status add_tensors(archive *a, const bmi_pickle *pk, bmi_tensor_table *table) {
    char what[300];
    if (pk->values[pk->root].kind != BMI_PK_DICT)
        return bmi_fail(BM_ERR_FORMAT, "data.pkl holds %s, not a dict",
                        bmi_pickle_describe(pk, pk->root, what, sizeof what));
    uint32_t model = bmi_pickle_dict_get(pk, pk->root, "model");
    if (model == BMI_PK_NIL) return add_state_dict(a, pk, pk->root, 1, table);
    if (pk->values[model].kind != BMI_PK_DICT)
        return bmi_fail(BM_ERR_FORMAT, "the 'model' entry is %s, not a dict of tensors",
                        bmi_pickle_describe(pk, model, what, sizeof what));
    return add_state_dict(a, pk, model, 0, table);
}

bm_status bmi_parse_torch(const void *data, size_t len, bmi_tensor_table *out) {
    if (!out) return bmi_fail(BM_ERR_INVALID_ARGUMENT, "bmi_parse_torch: NULL table");
    memset(out, 0, sizeof *out);
    if (!data && len) return bmi_fail(BM_ERR_INVALID_ARGUMENT, "bmi_parse_torch: NULL data");
    if (is_legacy_format(data, len))
        return bmi_fail(BM_ERR_UNSUPPORTED, "checkpoint is in the legacy (torch < 1.6) format; "
                        "re-save it with torch >= 1.6 (torch.save(torch.load(f), f)) or convert "
                        "it to safetensors");
    archive a;
    memset(&a, 0, sizeof a);
    bmi_tensor_table table;
    memset(&table, 0, sizeof table);
    bmi_pickle pk;
    memset(&pk, 0, sizeof pk);
    const uint8_t *pkl;
    size_t pkl_len;
    bm_status st = bmi_zip_open(data, len, &a.zip);
    if (st == BM_OK) st = find_data_pkl(&a);
    if (st == BM_OK) st = check_byteorder(&a);
    if (st == BM_OK) st = bmi_zip_entry_data(&a.zip, a.data_pkl, &pkl, &pkl_len);
    if (st == BM_OK) st = bmi_pickle_load(pkl, pkl_len, &pk);
    if (st == BM_OK) st = add_tensors(&a, &pk, &table);
    bmi_pickle_free(&pk);
    bmi_free(a.scratch);
    bmi_zip_close(&a.zip);
    if (st != BM_OK) {
        bmi_table_free(&table);
        return st;
    }
    *out = table;
    return BM_OK;
}

bm_status bmi_read_torch(const char *path, bmi_tensor_table *out) {
    return bmi_read_mapped(path, bmi_parse_torch, out);
}
