/* ZIP central directory reader: see zip.h. Record layouts follow PKWARE's
 * APPNOTE (sections 4.3.7 local header, 4.3.12 central header, 4.3.14-16
 * ZIP64 end records, 4.5.3 ZIP64 extra field). */
#include "zip.h"

#include <stdlib.h>

#define SIG_LOCAL 0x04034b50u
#define SIG_CENTRAL 0x02014b50u
#define SIG_EOCD 0x06054b50u
#define SIG_EOCD64 0x06064b50u
#define SIG_EOCD64_LOCATOR 0x07064b50u

#define LOCAL_SIZE 30
#define CENTRAL_SIZE 46
#define EOCD_SIZE 22
#define EOCD64_SIZE 56
#define EOCD64_LOCATOR_SIZE 20
#define MAX_COMMENT 65535
#define ZIP64_EXTRA_ID 0x0001

/* Values that say "the real one is in the ZIP64 record or extra field". */
#define SAT16 0xffffu
#define SAT32 0xffffffffu

typedef struct cd_location {
    uint64_t offset, size, count;
} cd_location;

/* 1 when [off, off + n) lies inside [0, len). */
static int span_fits(uint64_t off, uint64_t n, size_t len) {
    return off <= len && n <= len - off;
}

/* The end-of-central-directory record is the last thing in the archive but
 * for a comment of up to 64 KiB, so it is found by scanning backwards. */
static bm_status find_eocd(const uint8_t *p, size_t len, size_t *pos) {
    if (len < EOCD_SIZE) return bmi_fail(BM_ERR_FORMAT, "not a ZIP archive: only %zu bytes", len);
    size_t last = len - EOCD_SIZE;
    size_t first = last > MAX_COMMENT ? last - MAX_COMMENT : 0;
    for (size_t i = last + 1; i-- > first;) {
        if (bmi_rd32(p + i) != SIG_EOCD) continue;
        size_t comment = bmi_rd16(p + i + 20);
        if (comment <= len - i - EOCD_SIZE) {
            *pos = i;
            return BM_OK;
        }
    }
    return bmi_fail(BM_ERR_FORMAT, "not a ZIP archive: no end-of-central-directory record "
                                   "(truncated file?)");
}

static bm_status read_eocd64(const uint8_t *p, size_t len, size_t locator, cd_location *cd,
                             uint64_t *cd_limit) {
    uint32_t disk_of_record = bmi_rd32(p + locator + 4);
    uint64_t off = bmi_rd64(p + locator + 8);
    uint32_t disks = bmi_rd32(p + locator + 16);
    if (disk_of_record != 0 || disks > 1)
        return bmi_fail(BM_ERR_FORMAT, "multi-volume ZIP archives are not supported");
    if (off > locator || locator - off < EOCD64_SIZE || !span_fits(off, EOCD64_SIZE, len))
        return bmi_fail(BM_ERR_FORMAT, "ZIP64 end-of-central-directory offset %llu is out of range",
                        (unsigned long long)off);
    const uint8_t *r = p + off;
    if (bmi_rd32(r) != SIG_EOCD64)
        return bmi_fail(BM_ERR_FORMAT, "ZIP64 end-of-central-directory record has a bad signature");
    if (bmi_rd32(r + 16) != 0 || bmi_rd32(r + 20) != 0 || bmi_rd64(r + 24) != bmi_rd64(r + 32))
        return bmi_fail(BM_ERR_FORMAT, "multi-volume ZIP archives are not supported");
    cd->count = bmi_rd64(r + 32);
    cd->size = bmi_rd64(r + 40);
    cd->offset = bmi_rd64(r + 48);
    *cd_limit = off;
    return BM_OK;
}

static bm_status locate_central_directory(const uint8_t *p, size_t len, cd_location *cd) {
    size_t eocd = 0;
    bm_status st = find_eocd(p, len, &eocd);
    if (st != BM_OK) return st;
    uint16_t disk = bmi_rd16(p + eocd + 4), cd_disk = bmi_rd16(p + eocd + 6);
    uint16_t here = bmi_rd16(p + eocd + 8), total = bmi_rd16(p + eocd + 10);
    uint64_t cd_limit = eocd;
    /* A ZIP64 locator sits right before the classic record when the sizes
     * did not fit; its values then replace the saturated classic ones. */
    if (eocd >= EOCD64_LOCATOR_SIZE && bmi_rd32(p + eocd - EOCD64_LOCATOR_SIZE) == SIG_EOCD64_LOCATOR) {
        st = read_eocd64(p, len, eocd - EOCD64_LOCATOR_SIZE, cd, &cd_limit);
        if (st != BM_OK) return st;
    } else {
        if (disk != 0 || cd_disk != 0 || here != total)
            return bmi_fail(BM_ERR_FORMAT, "multi-volume ZIP archives are not supported");
        cd->count = total;
        cd->size = bmi_rd32(p + eocd + 12);
        cd->offset = bmi_rd32(p + eocd + 16);
        if (cd->count == SAT16 || cd->size == SAT32 || cd->offset == SAT32)
            return bmi_fail(BM_ERR_FORMAT, "ZIP archive needs ZIP64 records but has none");
    }
    if (cd->offset > cd_limit || cd->size > cd_limit - cd->offset)
        return bmi_fail(BM_ERR_FORMAT, "ZIP central directory (offset %llu, %llu bytes) lies outside "
                                       "the archive", (unsigned long long)cd->offset,
                        (unsigned long long)cd->size);
    if (cd->count > cd->size / CENTRAL_SIZE)
        return bmi_fail(BM_ERR_FORMAT, "ZIP central directory claims %llu entries in %llu bytes",
                        (unsigned long long)cd->count, (unsigned long long)cd->size);
    return BM_OK;
}

/* Fill in the fields the central header saturated from its ZIP64 extra
 * field, in the order APPNOTE fixes: size, compressed size, offset, disk. */
static bm_status apply_zip64_extra(const uint8_t *extra, size_t extra_len, bmi_zip_entry *e,
                                   int need_size, int need_comp, int need_offset, int need_disk) {
    if (!need_size && !need_comp && !need_offset && !need_disk) return BM_OK;
    size_t i = 0;
    while (extra_len - i >= 4) {
        uint16_t id = bmi_rd16(extra + i), n = bmi_rd16(extra + i + 2);
        if (n > extra_len - i - 4) break;
        if (id == ZIP64_EXTRA_ID) {
            const uint8_t *f = extra + i + 4;
            size_t want = 8 * (size_t)(need_size + need_comp + need_offset) + 4 * (size_t)need_disk;
            if (n < want) break;
            if (need_size) e->size = bmi_rd64(f), f += 8;
            if (need_comp) e->comp_size = bmi_rd64(f), f += 8;
            if (need_offset) e->local_offset = bmi_rd64(f), f += 8;
            if (need_disk && bmi_rd32(f) != 0)
                return bmi_fail(BM_ERR_FORMAT, "multi-volume ZIP archives are not supported");
            return BM_OK;
        }
        i += 4 + (size_t)n;
    }
    return bmi_fail(BM_ERR_FORMAT, "ZIP entry '%.*s' lacks the ZIP64 extra field its sizes need",
                    (int)(e->name_len > 200 ? 200 : e->name_len), e->name);
}

static bm_status read_central_entry(const uint8_t *p, uint64_t *pos, uint64_t end, bmi_zip_entry *e) {
    uint64_t at = *pos;
    if (end - at < CENTRAL_SIZE || bmi_rd32(p + at) != SIG_CENTRAL)
        return bmi_fail(BM_ERR_FORMAT, "ZIP central directory entry at offset %llu is malformed",
                        (unsigned long long)at);
    const uint8_t *h = p + at;
    size_t name_len = bmi_rd16(h + 28), extra_len = bmi_rd16(h + 30), comment_len = bmi_rd16(h + 32);
    uint64_t total = (uint64_t)CENTRAL_SIZE + name_len + extra_len + comment_len;
    if (end - at < total)
        return bmi_fail(BM_ERR_FORMAT, "ZIP central directory entry at offset %llu overruns the "
                                       "directory", (unsigned long long)at);
    memset(e, 0, sizeof *e);
    e->flags = bmi_rd16(h + 8);
    e->method = bmi_rd16(h + 10);
    e->comp_size = bmi_rd32(h + 20);
    e->size = bmi_rd32(h + 24);
    e->local_offset = bmi_rd32(h + 42);
    e->name = (const char *)h + CENTRAL_SIZE;
    e->name_len = name_len;
    uint16_t disk = bmi_rd16(h + 34);
    if (disk != 0 && disk != SAT16)
        return bmi_fail(BM_ERR_FORMAT, "multi-volume ZIP archives are not supported");
    bm_status st = apply_zip64_extra(h + CENTRAL_SIZE + name_len, extra_len, e, e->size == SAT32,
                                     e->comp_size == SAT32, e->local_offset == SAT32, disk == SAT16);
    if (st != BM_OK) return st;
    *pos = at + total;
    return BM_OK;
}

static int compare_names(const char *a, size_t an, const char *b, size_t bn) {
    int c = memcmp(a, b, an < bn ? an : bn);
    if (c != 0) return c;
    return an < bn ? -1 : an > bn;
}

static int compare_entries(const void *a, const void *b) {
    const bmi_zip_entry *x = a, *y = b;
    return compare_names(x->name, x->name_len, y->name, y->name_len);
}

bm_status bmi_zip_open(const void *data, size_t len, bmi_zip *out) {
    memset(out, 0, sizeof *out);
    const uint8_t *p = data;
    cd_location cd = {0, 0, 0};
    bm_status st = locate_central_directory(p, len, &cd);
    if (st != BM_OK) return st;
    bmi_zip_entry *entries = bmi_calloc((size_t)cd.count, sizeof *entries);
    if (!entries) return bmi_fail(BM_ERR_OUT_OF_MEMORY, "out of memory for the ZIP directory");
    uint64_t pos = cd.offset, end = cd.offset + cd.size;
    for (uint64_t i = 0; i < cd.count; i++) {
        st = read_central_entry(p, &pos, end, &entries[i]);
        if (st != BM_OK) {
            bmi_free(entries);
            return st;
        }
    }
    /* Sorted by name, lookups are binary searches and duplicates (which
     * would make "the" entry of a name ambiguous) sit side by side. */
    qsort(entries, (size_t)cd.count, sizeof *entries, compare_entries);
    for (size_t i = 1; i < cd.count; i++) {
        if (compare_entries(&entries[i - 1], &entries[i]) == 0) {
            st = bmi_fail(BM_ERR_FORMAT, "ZIP archive holds two entries named '%.*s'",
                          (int)(entries[i].name_len > 200 ? 200 : entries[i].name_len),
                          entries[i].name);
            bmi_free(entries);
            return st;
        }
    }
    out->base = p;
    out->len = len;
    out->entries = entries;
    out->count = (size_t)cd.count;
    return BM_OK;
}

void bmi_zip_close(bmi_zip *z) {
    if (!z) return;
    bmi_free(z->entries);
    memset(z, 0, sizeof *z);
}

const bmi_zip_entry *bmi_zip_find(const bmi_zip *z, const char *name, size_t name_len) {
    size_t lo = 0, hi = z->count;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const bmi_zip_entry *e = &z->entries[mid];
        int c = compare_names(e->name, e->name_len, name, name_len);
        if (c == 0) return e;
        if (c < 0) lo = mid + 1;
        else hi = mid;
    }
    return NULL;
}

bm_status bmi_zip_entry_data(const bmi_zip *z, const bmi_zip_entry *e, const uint8_t **data,
                             size_t *size) {
    int shown = (int)(e->name_len > 200 ? 200 : e->name_len);
    if (e->flags & 1)
        return bmi_fail(BM_ERR_UNSUPPORTED, "ZIP entry '%.*s' is encrypted", shown, e->name);
    if (e->method != 0)
        return bmi_fail(BM_ERR_UNSUPPORTED, "ZIP entry '%.*s' is compressed (method %u); torch.save "
                        "stores entries uncompressed: re-save the checkpoint with torch.save or "
                        "convert it to safetensors", shown, e->name, (unsigned)e->method);
    if (e->comp_size != e->size)
        return bmi_fail(BM_ERR_FORMAT, "stored ZIP entry '%.*s' has compressed size %llu but size %llu",
                        shown, e->name, (unsigned long long)e->comp_size,
                        (unsigned long long)e->size);
    if (!span_fits(e->local_offset, LOCAL_SIZE, z->len))
        return bmi_fail(BM_ERR_FORMAT, "ZIP entry '%.*s': local header offset %llu is past the end",
                        shown, e->name, (unsigned long long)e->local_offset);
    const uint8_t *h = z->base + e->local_offset;
    if (bmi_rd32(h) != SIG_LOCAL)
        return bmi_fail(BM_ERR_FORMAT, "ZIP entry '%.*s': bad local header signature", shown, e->name);
    size_t name_len = bmi_rd16(h + 26), extra_len = bmi_rd16(h + 28);
    uint64_t start = e->local_offset + LOCAL_SIZE;
    if (!span_fits(start, name_len, z->len) || name_len != e->name_len ||
        memcmp(z->base + start, e->name, name_len) != 0)
        return bmi_fail(BM_ERR_FORMAT, "ZIP entry '%.*s': local header names another file", shown,
                        e->name);
    /* Data starts after the local header's own name and extra field, which
     * torch pads so that tensor data is 64-byte aligned. */
    start += name_len + extra_len;
    if (!span_fits(start, e->size, z->len))
        return bmi_fail(BM_ERR_FORMAT, "ZIP entry '%.*s' (%llu bytes at offset %llu) runs past the end "
                        "of the archive", shown, e->name, (unsigned long long)e->size,
                        (unsigned long long)start);
    *data = z->base + start;
    *size = (size_t)e->size;
    return BM_OK;
}
