/* A read-only ZIP reader over bytes in memory, just enough for the archives
 * torch.save writes: it reads the central directory (ZIP64 included, since
 * checkpoints past 4 GiB need it) and hands out the bytes of stored
 * (uncompressed) entries in place. It never decompresses and never copies
 * entry data. Internal API: bmi_ prefix, errors through bmi_fail. */
#ifndef BM_ZIP_H
#define BM_ZIP_H

#include "common.h"

typedef struct bmi_zip_entry {
    const char *name;      /* points into the central directory; not NUL-terminated */
    size_t name_len;
    uint64_t local_offset; /* of the entry's local header */
    uint64_t comp_size;    /* bytes stored in the archive */
    uint64_t size;         /* bytes once extracted */
    uint16_t method;       /* 0 = stored */
    uint16_t flags;
} bmi_zip_entry;

typedef struct bmi_zip {
    const uint8_t *base;
    size_t len;
    bmi_zip_entry *entries; /* in central-directory order */
    size_t count;
} bmi_zip;

/* Read the central directory of the archive in data[0, len). The archive
 * bytes are not copied: they must outlive the bmi_zip. On failure *out is
 * left empty and BM_ERR_FORMAT (or BM_ERR_OUT_OF_MEMORY) is returned. */
bm_status bmi_zip_open(const void *data, size_t len, bmi_zip *out);
void bmi_zip_close(bmi_zip *z);

/* The entry called exactly `name` (name_len bytes), or NULL. */
const bmi_zip_entry *bmi_zip_find(const bmi_zip *z, const char *name, size_t name_len);

/* Where the bytes of a stored entry lie, found through its local header
 * (whose name and extra field lengths may differ from the central
 * directory's). Compressed or encrypted entries give BM_ERR_UNSUPPORTED;
 * an entry that does not fit in the archive gives BM_ERR_FORMAT. */
bm_status bmi_zip_entry_data(const bmi_zip *z, const bmi_zip_entry *e, const uint8_t **data,
                             size_t *size);

#endif
