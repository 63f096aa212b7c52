/* Shared by the C tests: golden fixture access and logit comparison. */
#ifndef BM_TEST_FIXTURE_H
#define BM_TEST_FIXTURE_H

#include <stddef.h>
#include <stdint.h>

#include "blackmamba.h"
#include "tensor.h"

/* Path of ../shared/<rel> (honouring BM_SHARED) in a static buffer. */
const char *fixture_path(const char *rel);

/* One golden prompt of a fixture's golden.safetensors. */
typedef struct golden_prompt {
    const int32_t *prompt;        /* [n_prompt] */
    size_t n_prompt;
    const float *prefill_logits;  /* [n_prompt, V] or NULL (prompts shorter than K) */
    const int32_t *decode_tokens; /* [n_decode] */
    size_t n_decode;
    const float *decode_logits;   /* [n_decode, V] */
} golden_prompt;

typedef struct golden_set {
    bmi_tensor_table table;
    int n_prompts;
    golden_prompt prompts[16];
    int vocab;
} golden_set;

/* Reads <fixture dir>/golden.safetensors; returns 0 on success. */
int golden_load(const char *fixture_dir, golden_set *g);
void golden_free(golden_set *g);

/* ||a - b|| / ||b|| over n floats (inf when b is all zero but a is not). */
double rel_error(const float *a, const float *b, size_t n);
int argmax(const float *x, size_t n);
/* Relative gap between the best and second logit: (top1 - top2) / |top1|. */
double top2_margin(const float *x, size_t n);

/* A scratch directory made with mkdtemp; removed (recursively) by tmpdir_remove. */
const char *tmpdir_make(char *buf, size_t cap);
void tmpdir_remove(const char *dir);
/* Copy a file; returns 0 on success. */
int copy_file(const char *from, const char *to);
/* Write `len` bytes to a file; returns 0 on success. */
int write_file(const char *path, const void *data, size_t len);
/* Read a whole file into a malloc'd buffer; returns NULL on failure. */
void *read_file(const char *path, size_t *len);

#endif
