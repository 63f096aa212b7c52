/* A checkpoint, as the format readers hand it to the model builder: a list of
 * named tensor views into memory the table keeps alive (usually a read-only
 * mapping of the file). Readers check every offset, size and stride against
 * the bytes they map before they add a view, so the builder can trust them. */
#ifndef BM_TENSOR_H
#define BM_TENSOR_H

#include "common.h"

#define BMI_MAX_DIMS 8

typedef struct bmi_tensor {
    char *name;                    /* owned, NUL-terminated */
    bmi_dtype dtype;
    int ndim;
    int64_t shape[BMI_MAX_DIMS];
    int64_t stride[BMI_MAX_DIMS];  /* in elements; row-major contiguous when
                                      stride[i] == prod(shape[i+1..]) */
    const void *data;              /* first element; inside the table's memory */
    size_t nbytes;                 /* bytes spanned from data to the last
                                      element + 1 element (checked in bounds) */
} bmi_tensor;

typedef struct bmi_mapping {
    void *addr;                    /* read-only mapping of a whole file */
    size_t len;
} bmi_mapping;

typedef struct bmi_tensor_table {
    bmi_tensor *items;
    size_t count, cap;
    bmi_mapping map;               /* the file the views point into */
} bmi_tensor_table;

/* Map a file read-only. On failure returns BM_ERR_IO with a message. */
bm_status bmi_map_file(const char *path, bmi_mapping *out);
void bmi_unmap(bmi_mapping *m);

/* Append a view; copies `name`. Returns BM_ERR_OUT_OF_MEMORY on failure. */
bm_status bmi_table_add(bmi_tensor_table *t, const bmi_tensor *view);
const bmi_tensor *bmi_table_find(const bmi_tensor_table *t, const char *name);
/* Frees names, the array and the mapping; the table is zeroed. NULL-safe. */
void bmi_table_free(bmi_tensor_table *t);
/* 1 when the view is row-major contiguous. */
int bmi_tensor_is_contiguous(const bmi_tensor *t);
/* Number of elements (product of shape), 0 if it overflows int64. */
int64_t bmi_tensor_numel(const bmi_tensor *t);

/* Format readers. Each fills an empty table on success; on failure the table
 * is left empty and a negative status with a message naming the problem is
 * returned. Neither executes or trusts anything in the file. */
bm_status bmi_read_safetensors(const char *path, bmi_tensor_table *out);
bm_status bmi_read_torch(const char *path, bmi_tensor_table *out);
/* Same parsers over bytes already in memory (for fuzzing); `map` is not
 * owned: the caller keeps the bytes alive while the table lives. */
bm_status bmi_parse_safetensors(const void *data, size_t len, bmi_tensor_table *out);
bm_status bmi_parse_torch(const void *data, size_t len, bmi_tensor_table *out);

/* Map `path` and run one of the parsers over it; on success the table owns
 * the mapping, on failure the message is prefixed with the path. */
typedef bm_status (*bmi_parse_fn)(const void *data, size_t len, bmi_tensor_table *out);
bm_status bmi_read_mapped(const char *path, bmi_parse_fn parse, bmi_tensor_table *out);

#endif
