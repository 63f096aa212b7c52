/* Tensor tables and read-only file mappings: see tensor.h. */
#include "tensor.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

bm_status bmi_map_file(const char *path, bmi_mapping *out) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return bmi_fail(BM_ERR_IO, "cannot open %s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return bmi_fail(BM_ERR_IO, "cannot stat %s: %s", path, strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return bmi_fail(BM_ERR_IO, "%s is not a regular file", path);
    }
    if (st.st_size == 0) {
        close(fd);
        return bmi_fail(BM_ERR_FORMAT, "%s is empty", path);
    }
    void *addr = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    int e = errno;
    close(fd);
    if (addr == MAP_FAILED) return bmi_fail(BM_ERR_IO, "cannot map %s: %s", path, strerror(e));
    out->addr = addr;
    out->len = (size_t)st.st_size;
    return BM_OK;
}

void bmi_unmap(bmi_mapping *m) {
    if (m && m->addr) munmap(m->addr, m->len);
    if (m) m->addr = NULL, m->len = 0;
}

bm_status bmi_table_add(bmi_tensor_table *t, const bmi_tensor *view) {
    if (t->count == t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 64;
        bmi_tensor *items = bmi_realloc(t->items, cap * sizeof *items);
        if (!items) return bmi_fail(BM_ERR_OUT_OF_MEMORY, "out of memory for the tensor list");
        t->items = items;
        t->cap = cap;
    }
    bmi_tensor *dst = &t->items[t->count];
    *dst = *view;
    dst->name = bmi_strdup(view->name);
    if (!dst->name) return bmi_fail(BM_ERR_OUT_OF_MEMORY, "out of memory for a tensor name");
    t->count++;
    return BM_OK;
}

const bmi_tensor *bmi_table_find(const bmi_tensor_table *t, const char *name) {
    for (size_t i = 0; i < t->count; i++)
        if (strcmp(t->items[i].name, name) == 0) return &t->items[i];
    return NULL;
}

void bmi_table_free(bmi_tensor_table *t) {
    if (!t) return;
    for (size_t i = 0; i < t->count; i++) bmi_free(t->items[i].name);
    bmi_free(t->items);
    bmi_unmap(&t->map);
    memset(t, 0, sizeof *t);
}

int bmi_tensor_is_contiguous(const bmi_tensor *t) {
    int64_t expect = 1;
    for (int i = t->ndim - 1; i >= 0; i--) {
        if (t->shape[i] != 1 && t->stride[i] != expect) return 0;
        expect *= t->shape[i];
    }
    return 1;
}

int64_t bmi_tensor_numel(const bmi_tensor *t) {
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) {
        if (t->shape[i] < 0) return 0;
        if (t->shape[i] != 0 && n > INT64_MAX / t->shape[i]) return 0;
        n *= t->shape[i];
    }
    return n;
}

bm_status bmi_read_mapped(const char *path, bmi_parse_fn parse, bmi_tensor_table *out) {
    if (!path || !out) return bmi_fail(BM_ERR_INVALID_ARGUMENT, "reading tensors: NULL argument");
    memset(out, 0, sizeof *out);
    bmi_mapping map;
    bm_status st = bmi_map_file(path, &map);
    if (st != BM_OK) return st;
    if ((st = parse(map.addr, map.len, out)) != BM_OK) {
        bmi_unmap(&map);
        bmi_error_context("%s", path);
        return st;
    }
    out->map = map;
    return BM_OK;
}
