/* A restricted pickle reader for the data.pkl of torch.save archives.
 *
 * It interprets a whitelist of opcodes (protocols 2 to 5) into a tree of
 * plain values and never runs anything: a GLOBAL only names a callable, and
 * REDUCE "calls" one of a handful of known torch/collections callables by
 * building the value they would return (a tensor description, a dict). Any
 * other callable gives an opaque value, which is fine to hold (Megatron puts
 * arbitrary objects next to the weights) but is not a tensor. Every size is
 * bounded (stack, marks, memo, values, container items) and every read is
 * checked against the pickle's length.
 * Internal API: bmi_ prefix, errors through bmi_fail. */
#ifndef BM_PICKLE_H
#define BM_PICKLE_H

#include "tensor.h"

#define BMI_PK_NIL UINT32_MAX /* "no value" where a value index is expected */

typedef enum bmi_pk_kind {
    BMI_PK_NONE,
    BMI_PK_BOOL,
    BMI_PK_INT,     /* fits int64 */
    BMI_PK_BIGINT,  /* an integer wider than 64 bits; its value is not kept */
    BMI_PK_FLOAT,
    BMI_PK_STR,
    BMI_PK_BYTES,
    BMI_PK_TUPLE,
    BMI_PK_LIST,
    BMI_PK_DICT,    /* items are key, value, key, value, ... in insertion order */
    BMI_PK_SET,     /* contents are dropped: nothing a checkpoint needs is a set */
    BMI_PK_GLOBAL,  /* a named callable or class, never resolved */
    BMI_PK_STORAGE, /* a persistent id ("storage", type, key, location, numel) */
    BMI_PK_TENSOR,  /* the result of torch._utils._rebuild_tensor_v2 */
    BMI_PK_OPAQUE   /* anything else: an object we did not (and will not) build */
} bmi_pk_kind;

/* The callables REDUCE knows how to "apply" without running anything. */
typedef enum bmi_pk_callable {
    BMI_PK_FN_OTHER = 0,
    BMI_PK_FN_REBUILD_TENSOR_V2,
    BMI_PK_FN_REBUILD_PARAMETER,
    BMI_PK_FN_REBUILD_PARAMETER_WITH_STATE,
    BMI_PK_FN_REBUILD_FROM_TYPE_V2,
    BMI_PK_FN_ORDERED_DICT,
    BMI_PK_FN_STORAGE_TYPE /* torch.<X>Storage: names a persistent storage's dtype */
} bmi_pk_callable;

typedef struct bmi_pk_text {
    const char *p; /* into the pickle bytes; not NUL-terminated */
    size_t n;
} bmi_pk_text;

typedef struct bmi_pk_value {
    bmi_pk_kind kind;
    union {
        int64_t i; /* BOOL, INT */
        double f;
        bmi_pk_text str; /* STR, BYTES */
        struct {
            uint32_t *items;
            uint32_t count, cap;
        } seq; /* TUPLE, LIST, DICT */
        struct {
            bmi_pk_text module, name;
            bmi_pk_callable fn;
            int dtype; /* for BMI_PK_FN_STORAGE_TYPE: a bmi_dtype, or -1 if not one we read */
        } global;
        struct {
            uint32_t type; /* a GLOBAL with fn BMI_PK_FN_STORAGE_TYPE */
            bmi_pk_text key;
            int64_t numel;
        } storage;
        uint32_t tensor; /* index into bmi_pickle.tensors */
        struct {
            uint32_t origin; /* the GLOBAL whose "call" made it, or BMI_PK_NIL */
            const char *why; /* static text saying why it is not a tensor, or NULL */
        } opaque;
    } u;
} bmi_pk_value;

typedef struct bmi_pk_tensor {
    uint32_t storage; /* a STORAGE value */
    int ndim;
    int64_t offset;   /* in elements */
    int64_t shape[BMI_MAX_DIMS];
    int64_t stride[BMI_MAX_DIMS];
} bmi_pk_tensor;

typedef struct bmi_pickle {
    bmi_pk_value *values;
    size_t n_values, cap_values;
    bmi_pk_tensor *tensors;
    size_t n_tensors, cap_tensors;
    uint32_t root; /* the value STOP returned */
} bmi_pickle;

/* Interpret the pickle in data[0, len). Strings in the result point into
 * `data`, which must outlive the bmi_pickle. On failure *out is left empty
 * and BM_ERR_FORMAT (naming the byte offset) or BM_ERR_OUT_OF_MEMORY is
 * returned. */
bm_status bmi_pickle_load(const void *data, size_t len, bmi_pickle *out);
void bmi_pickle_free(bmi_pickle *p);

/* The value of the last entry of dict `dict` whose key is the string `key`
 * (later SETITEMs win, as in Python), or BMI_PK_NIL. */
uint32_t bmi_pickle_dict_get(const bmi_pickle *p, uint32_t dict, const char *key);

/* A short description of a value for error messages ("a list", "an object
 * made by os.system", ...), written into buf. */
const char *bmi_pickle_describe(const bmi_pickle *p, uint32_t v, char *buf, size_t cap);

#endif
