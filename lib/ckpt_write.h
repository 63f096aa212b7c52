/* Checkpoint writers: safetensors and the torch.save ZIP layout, the two
 * formats the readers in tensor.h accept. They exist so that tools and tests
 * can make checkpoints at any size (random-weight models, converted files)
 * without Python. Tensor bytes are streamed to the file a chunk at a time,
 * either copied from memory or produced on demand by a callback, so a
 * multi-gigabyte checkpoint never has to sit in memory.
 * Internal API: bmi_ prefix, errors through bmi_fail. */
#ifndef BM_CKPT_WRITE_H
#define BM_CKPT_WRITE_H

#include "tensor.h"

/* Produces elements [first, first + count) of tensors[index], in row-major
 * order, as little-endian values of the tensor's dtype, into dst (which has
 * room for count elements). Returns BM_OK or a negative status (with a
 * message set through bmi_fail); a failure aborts the write. */
typedef bm_status (*bmi_tensor_fill_fn)(void *ctx, size_t index, uint64_t first, uint64_t count,
                                        void *dst);

/* Where tensor bytes come from. With fill == NULL every tensor's `data`
 * (and stride) is read; with a fill callback `data` is ignored and may be
 * NULL. Either way each tensor is written row-major contiguous. */
typedef struct bmi_tensor_source {
    bmi_tensor_fill_fn fill;
    void *ctx;
} bmi_tensor_source;

/* Write a safetensors file: 8-byte header length, JSON header (padded with
 * spaces to a multiple of 8 bytes, "__metadata__" first), then the tensors
 * back to back in the order given. `metadata` is a NULL-terminated list of
 * key, value, key, value, ... strings for "__metadata__"; NULL writes
 * {"format": "pt"} as torch-based converters do. Names must be unique,
 * non-empty, valid UTF-8. On failure the partial file is removed. */
bm_status bmi_write_safetensors(const char *path, const bmi_tensor *tensors, size_t n,
                                const char *const *metadata);
bm_status bmi_write_safetensors_from(const char *path, const bmi_tensor *tensors, size_t n,
                                     const char *const *metadata, bmi_tensor_source src);

/* Write the file torch.save({"model": {name: tensor, ...}}) would write: a
 * ZIP archive laid out the way torch 2.x (miniz) lays it out. Entries under
 * "<stem>/" where stem is the file name without its extension ("archive" if
 * that is empty): data.pkl (pickle protocol 2), byteorder, one storage per
 * tensor as data/<key> (keys "0", "1", ... in tensor order, entries sorted by
 * key as torch sorts them, data 64-byte aligned through "FB" padding extra
 * fields), version ("3\n"); stored entries with data descriptors, ZIP64
 * extra fields and descriptors for entries at or past 4 GiB, and ZIP64 end
 * records. On failure the partial file is removed. */
bm_status bmi_write_torch(const char *path, const bmi_tensor *tensors, size_t n);
bm_status bmi_write_torch_from(const char *path, const bmi_tensor *tensors, size_t n,
                               bmi_tensor_source src);

/* CRC-32 (IEEE 802.3, the ZIP one), continued from `crc` (start with 0). */
uint32_t bmi_crc32(uint32_t crc, const void *data, size_t n);

#endif
