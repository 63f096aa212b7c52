/* Restricted pickle interpreter: see pickle.h. Opcode semantics follow
 * CPython's Lib/pickle.py and the pickletools documentation; the difference
 * is that nothing is ever imported or called. */
#include "pickle.h"

#include <stdarg.h>
#include <stdio.h>

/* Bounds on what a pickle may make us hold. A torch state dict needs about
 * a dozen values per tensor, so these leave room for checkpoints with
 * a hundred thousand tensors while keeping a hostile file from asking for
 * more than a few hundred MiB. */
#define MAX_VALUES (1u << 21)
#define MAX_STACK (1u << 20)
#define MAX_MARKS (1u << 16)
#define MAX_ITEMS (1u << 24) /* container items, all containers together */
#define MAX_MEMO (1u << 22)
#define MAX_NAME 4096        /* bytes in a GLOBAL's module or name */
#define MAX_PROTOCOL 5

enum opcode {
    OP_MARK = '(', OP_STOP = '.', OP_POP = '0', OP_POP_MARK = '1', OP_DUP = '2',
    OP_BININT = 'J', OP_BININT1 = 'K', OP_BININT2 = 'M', OP_NONE = 'N',
    OP_PERSID = 'P', OP_BINPERSID = 'Q', OP_REDUCE = 'R', OP_BINSTRING = 'T',
    OP_SHORT_BINSTRING = 'U', OP_BINUNICODE = 'X', OP_APPEND = 'a', OP_BUILD = 'b',
    OP_GLOBAL = 'c', OP_DICT = 'd', OP_EMPTY_DICT = '}', OP_APPENDS = 'e', OP_GET = 'g',
    OP_BINGET = 'h', OP_INST = 'i', OP_LONG_BINGET = 'j', OP_LIST = 'l', OP_EMPTY_LIST = ']',
    OP_OBJ = 'o', OP_PUT = 'p', OP_BINPUT = 'q', OP_LONG_BINPUT = 'r', OP_SETITEM = 's',
    OP_TUPLE = 't', OP_EMPTY_TUPLE = ')', OP_SETITEMS = 'u', OP_BINFLOAT = 'G',
    /* protocol 2 */
    OP_PROTO = 0x80, OP_NEWOBJ = 0x81, OP_EXT1 = 0x82, OP_EXT2 = 0x83, OP_EXT4 = 0x84,
    OP_TUPLE1 = 0x85, OP_TUPLE2 = 0x86, OP_TUPLE3 = 0x87, OP_NEWTRUE = 0x88, OP_NEWFALSE = 0x89,
    OP_LONG1 = 0x8a, OP_LONG4 = 0x8b,
    /* protocol 3 */
    OP_BINBYTES = 'B', OP_SHORT_BINBYTES = 'C',
    /* protocol 4 */
    OP_SHORT_BINUNICODE = 0x8c, OP_BINUNICODE8 = 0x8d, OP_BINBYTES8 = 0x8e, OP_EMPTY_SET = 0x8f,
    OP_ADDITEMS = 0x90, OP_FROZENSET = 0x91, OP_NEWOBJ_EX = 0x92, OP_STACK_GLOBAL = 0x93,
    OP_MEMOIZE = 0x94, OP_FRAME = 0x95,
    /* protocol 5 */
    OP_BYTEARRAY8 = 0x96, OP_NEXT_BUFFER = 0x97, OP_READONLY_BUFFER = 0x98
};

typedef struct vm {
    bmi_pickle *pk;
    const uint8_t *p;
    size_t len, pos;
    size_t op_pos; /* where the opcode being run starts, for messages */
    uint8_t op;
    uint32_t *stack;
    size_t sp, stack_cap;
    size_t *marks; /* stack heights at each open MARK */
    size_t n_marks, marks_cap;
    uint32_t *memo; /* BMI_PK_NIL where unset */
    size_t memo_cap, memo_count;
    size_t total_items;
} vm;

static bm_status vm_fail(const vm *m, bm_status st, const char *fmt, ...) BMI_PRINTF(3, 4);
static bm_status vm_fail(const vm *m, bm_status st, const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return bmi_fail(st, "data.pkl byte %zu (opcode 0x%02x): %s", m->op_pos, m->op, msg);
}

static bm_status vm_oom(void) {
    return bmi_fail(BM_ERR_OUT_OF_MEMORY, "out of memory while reading data.pkl");
}

/* Make room for `need` elements of `size` bytes in *arr, never more than
 * `limit` (a hostile pickle hits the limit, not the allocator). */
static bm_status grow(const vm *m, void **arr, size_t *cap, size_t need, size_t size, size_t limit,
                      const char *what) {
    if (need <= *cap) return BM_OK;
    if (need > limit) return vm_fail(m, BM_ERR_FORMAT, "more than %zu %s", limit, what);
    size_t want = *cap ? *cap * 2 : 16;
    if (want < need) want = need;
    if (want > limit) want = limit;
    void *grown = bmi_realloc(*arr, want * size);
    if (!grown) return vm_oom();
    *arr = grown;
    *cap = want;
    return BM_OK;
}

static bmi_pk_value *val(const vm *m, uint32_t i) { return &m->pk->values[i]; }

static bm_status new_value(vm *m, bmi_pk_kind kind, uint32_t *idx) {
    bmi_pickle *pk = m->pk;
    bm_status st = grow(m, (void **)&pk->values, &pk->cap_values, pk->n_values + 1,
                        sizeof *pk->values, MAX_VALUES, "values");
    if (st != BM_OK) return st;
    bmi_pk_value *v = &pk->values[pk->n_values];
    memset(v, 0, sizeof *v);
    v->kind = kind;
    *idx = (uint32_t)pk->n_values++;
    return BM_OK;
}

static bm_status new_opaque(vm *m, uint32_t origin, const char *why, uint32_t *idx) {
    bm_status st = new_value(m, BMI_PK_OPAQUE, idx);
    if (st != BM_OK) return st;
    val(m, *idx)->u.opaque.origin = origin;
    val(m, *idx)->u.opaque.why = why;
    return BM_OK;
}

/* ---- the stack: MARK splits it into frames; pops stay in the top frame -- */

static size_t frame_bottom(const vm *m) { return m->n_marks ? m->marks[m->n_marks - 1] : 0; }

static bm_status push(vm *m, uint32_t v) {
    bm_status st = grow(m, (void **)&m->stack, &m->stack_cap, m->sp + 1, sizeof *m->stack, MAX_STACK,
                        "stack entries");
    if (st != BM_OK) return st;
    m->stack[m->sp++] = v;
    return BM_OK;
}

static bm_status push_new(vm *m, bmi_pk_kind kind, uint32_t *idx) {
    bm_status st = new_value(m, kind, idx);
    return st != BM_OK ? st : push(m, *idx);
}

static bm_status peek(const vm *m, uint32_t *v) {
    if (m->sp <= frame_bottom(m)) return vm_fail(m, BM_ERR_FORMAT, "stack underflow");
    *v = m->stack[m->sp - 1];
    return BM_OK;
}

static bm_status pop(vm *m, uint32_t *v) {
    bm_status st = peek(m, v);
    if (st == BM_OK) m->sp--;
    return st;
}

/* Close the innermost MARK; its items are stack[*start, sp). */
static bm_status pop_mark(vm *m, size_t *start) {
    if (m->n_marks == 0) return vm_fail(m, BM_ERR_FORMAT, "no MARK to close");
    *start = m->marks[--m->n_marks];
    return BM_OK;
}

/* The object a MARK-closing opcode works on: the top of the frame below. */
static bm_status target_below_mark(const vm *m, size_t start, uint32_t *target) {
    if (start <= frame_bottom(m)) return vm_fail(m, BM_ERR_FORMAT, "stack underflow");
    *target = m->stack[start - 1];
    return BM_OK;
}

/* ---- containers ---------------------------------------------------------- */

static bm_status seq_append(vm *m, uint32_t target, const uint32_t *items, size_t n) {
    if (n > MAX_ITEMS - m->total_items)
        return vm_fail(m, BM_ERR_FORMAT, "more than %u container items", MAX_ITEMS);
    bmi_pk_value *t = val(m, target);
    size_t need = (size_t)t->u.seq.count + n, cap = t->u.seq.cap;
    if (need > cap) {
        size_t want = cap * 2 > need ? cap * 2 : need;
        if (want < 4) want = 4;
        uint32_t *grown = bmi_realloc(t->u.seq.items, want * sizeof *grown);
        if (!grown) return vm_oom();
        t->u.seq.items = grown;
        t->u.seq.cap = (uint32_t)want;
    }
    if (n) memcpy(t->u.seq.items + t->u.seq.count, items, n * sizeof *items);
    t->u.seq.count = (uint32_t)need;
    m->total_items += n;
    return BM_OK;
}

/* A new container holding stack[start, sp), which it replaces. */
static bm_status collapse_to(vm *m, bmi_pk_kind kind, size_t start) {
    uint32_t idx;
    bm_status st = new_value(m, kind, &idx);
    if (st == BM_OK) st = seq_append(m, idx, m->stack + start, m->sp - start);
    if (st != BM_OK) return st;
    m->sp = start;
    return push(m, idx);
}

static const char *kind_name(bmi_pk_kind k) {
    static const char *names[] = {"None",   "a bool",  "an integer", "an integer", "a float",
                                  "a string", "bytes", "a tuple",    "a list",     "a dict",
                                  "a set",  "a class or function", "a storage", "a tensor",
                                  "an object"};
    return (unsigned)k < sizeof names / sizeof names[0] ? names[k] : "a value";
}

/* Python would call target.append/extend; opaque objects swallow items
 * because we never build them anyway. */
static bm_status append_to(vm *m, uint32_t target, const uint32_t *items, size_t n) {
    bmi_pk_kind k = val(m, target)->kind;
    if (k == BMI_PK_LIST) return seq_append(m, target, items, n);
    if (k == BMI_PK_OPAQUE) return BM_OK;
    return vm_fail(m, BM_ERR_FORMAT, "cannot append to %s", kind_name(k));
}

static bm_status set_items_of(vm *m, uint32_t target, const uint32_t *pairs, size_t n) {
    bmi_pk_kind k = val(m, target)->kind;
    if (n % 2) return vm_fail(m, BM_ERR_FORMAT, "odd number of items for a dict");
    if (k == BMI_PK_DICT) return seq_append(m, target, pairs, n);
    if (k == BMI_PK_OPAQUE) return BM_OK;
    return vm_fail(m, BM_ERR_FORMAT, "cannot set items of %s", kind_name(k));
}

/* ---- reading the byte stream --------------------------------------------- */

static bm_status take(vm *m, uint64_t n, const uint8_t **out) {
    if (n > m->len - m->pos)
        return vm_fail(m, BM_ERR_FORMAT, "needs %llu bytes but only %zu are left (truncated?)",
                       (unsigned long long)n, m->len - m->pos);
    *out = m->p + m->pos;
    m->pos += (size_t)n;
    return BM_OK;
}

static bm_status take_uint(vm *m, int bytes, uint64_t *v) {
    const uint8_t *b = NULL;
    bm_status st = take(m, (uint64_t)bytes, &b);
    if (st != BM_OK) return st;
    *v = bytes == 1 ? b[0] : bytes == 2 ? bmi_rd16(b) : bytes == 4 ? bmi_rd32(b) : bmi_rd64(b);
    return BM_OK;
}

/* A newline-terminated argument (text opcodes: GLOBAL, PUT, GET, ...). */
static bm_status take_line(vm *m, size_t max, bmi_pk_text *line) {
    size_t left = m->len - m->pos;
    const uint8_t *start = m->p + m->pos;
    const uint8_t *nl = memchr(start, '\n', left < max + 1 ? left : max + 1);
    if (!nl) return vm_fail(m, BM_ERR_FORMAT, "argument line is unterminated or too long");
    line->p = (const char *)start;
    line->n = (size_t)(nl - start);
    m->pos += line->n + 1;
    return BM_OK;
}

static bm_status take_decimal_line(vm *m, uint64_t *v) {
    bmi_pk_text line;
    bm_status st = take_line(m, 10, &line);
    if (st != BM_OK) return st;
    if (line.n == 0) return vm_fail(m, BM_ERR_FORMAT, "empty number");
    *v = 0;
    for (size_t i = 0; i < line.n; i++) {
        if (line.p[i] < '0' || line.p[i] > '9') return vm_fail(m, BM_ERR_FORMAT, "bad number");
        *v = *v * 10 + (uint64_t)(line.p[i] - '0');
    }
    return BM_OK;
}

static bm_status push_text(vm *m, bmi_pk_kind kind, int len_bytes) {
    uint64_t n;
    const uint8_t *b = NULL;
    bm_status st = take_uint(m, len_bytes, &n);
    if (st != BM_OK) return st;
    /* BINSTRING's length is signed in CPython; a negative one is an error. */
    if (m->op == OP_BINSTRING && n > INT32_MAX)
        return vm_fail(m, BM_ERR_FORMAT, "negative string length");
    st = take(m, n, &b);
    if (st != BM_OK) return st;
    uint32_t idx;
    st = push_new(m, kind, &idx);
    if (st != BM_OK) return st;
    val(m, idx)->u.str.p = (const char *)b;
    val(m, idx)->u.str.n = (size_t)n;
    return BM_OK;
}

static bm_status push_int(vm *m, int64_t v) {
    uint32_t idx;
    bm_status st = push_new(m, BMI_PK_INT, &idx);
    if (st == BM_OK) val(m, idx)->u.i = v;
    return st;
}

/* LONG1/LONG4: little-endian two's complement of any width. */
static bm_status push_long(vm *m, int len_bytes) {
    uint64_t n;
    const uint8_t *b = NULL;
    bm_status st = take_uint(m, len_bytes, &n);
    if (st != BM_OK) return st;
    if (len_bytes == 4 && n > INT32_MAX) return vm_fail(m, BM_ERR_FORMAT, "negative LONG4 length");
    st = take(m, n, &b);
    if (st != BM_OK) return st;
    if (n > 8) {
        uint32_t idx;
        return push_new(m, BMI_PK_BIGINT, &idx);
    }
    uint64_t u = 0;
    for (size_t i = 0; i < n; i++) u |= (uint64_t)b[i] << (8 * i);
    if (n > 0 && n < 8 && (b[n - 1] & 0x80)) u |= ~(uint64_t)0 << (8 * n);
    int64_t v;
    memcpy(&v, &u, sizeof v);
    return push_int(m, v);
}

static bm_status push_binfloat(vm *m) {
    const uint8_t *b = NULL;
    bm_status st = take(m, 8, &b);
    if (st != BM_OK) return st;
    uint64_t u = 0;
    for (int i = 0; i < 8; i++) u = u << 8 | b[i]; /* big-endian, unlike everything else */
    double d;
    memcpy(&d, &u, sizeof d);
    uint32_t idx;
    st = push_new(m, BMI_PK_FLOAT, &idx);
    if (st == BM_OK) val(m, idx)->u.f = d;
    return st;
}

/* ---- the memo ------------------------------------------------------------ */

static bm_status memo_put(vm *m, uint64_t key) {
    /* Picklers number memo entries 0, 1, 2, ..., each PUT taking at least two
     * bytes, so a key past the pickle's length is hostile, not large. */
    if (key >= MAX_MEMO || key >= m->len)
        return vm_fail(m, BM_ERR_FORMAT, "memo key %llu is out of range", (unsigned long long)key);
    uint32_t top;
    bm_status st = peek(m, &top);
    if (st != BM_OK) return st;
    size_t old = m->memo_cap;
    st = grow(m, (void **)&m->memo, &m->memo_cap, (size_t)key + 1, sizeof *m->memo, MAX_MEMO,
              "memo entries");
    if (st != BM_OK) return st;
    for (size_t i = old; i < m->memo_cap; i++) m->memo[i] = BMI_PK_NIL;
    if (m->memo[key] == BMI_PK_NIL) m->memo_count++;
    m->memo[key] = top;
    return BM_OK;
}

static bm_status memo_get(vm *m, uint64_t key) {
    if (key >= m->memo_cap || m->memo[key] == BMI_PK_NIL)
        return vm_fail(m, BM_ERR_FORMAT, "memo key %llu was never set", (unsigned long long)key);
    return push(m, m->memo[key]);
}

/* ---- globals and the whitelist ------------------------------------------- */

static int text_is(bmi_pk_text t, const char *s) {
    size_t n = strlen(s);
    return t.n == n && memcmp(t.p, s, n) == 0;
}

static int storage_dtype(bmi_pk_text name) {
    static const struct {
        const char *name;
        bmi_dtype dtype;
    } known[] = {{"FloatStorage", BMI_F32}, {"BFloat16Storage", BMI_BF16}, {"HalfStorage", BMI_F16},
                 {"IntStorage", BMI_I32},   {"LongStorage", BMI_I64},      {"ByteStorage", BMI_U8},
                 {"UntypedStorage", BMI_U8}};
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
        if (text_is(name, known[i].name)) return (int)known[i].dtype;
    return -1;
}

static int ends_with(bmi_pk_text t, const char *suffix) {
    size_t n = strlen(suffix);
    return t.n >= n && memcmp(t.p + t.n - n, suffix, n) == 0;
}

static bm_status push_global(vm *m, bmi_pk_text module, bmi_pk_text name) {
    if (module.n > MAX_NAME || name.n > MAX_NAME)
        return vm_fail(m, BM_ERR_FORMAT, "global name longer than %d bytes", MAX_NAME);
    bmi_pk_callable fn = BMI_PK_FN_OTHER;
    int dtype = -1;
    if (text_is(module, "torch._utils")) {
        if (text_is(name, "_rebuild_tensor_v2")) fn = BMI_PK_FN_REBUILD_TENSOR_V2;
        else if (text_is(name, "_rebuild_parameter")) fn = BMI_PK_FN_REBUILD_PARAMETER;
        else if (text_is(name, "_rebuild_parameter_with_state"))
            fn = BMI_PK_FN_REBUILD_PARAMETER_WITH_STATE;
    } else if (text_is(module, "torch._tensor") && text_is(name, "_rebuild_from_type_v2")) {
        fn = BMI_PK_FN_REBUILD_FROM_TYPE_V2;
    } else if (text_is(module, "collections") && text_is(name, "OrderedDict")) {
        fn = BMI_PK_FN_ORDERED_DICT;
    } else if (text_is(module, "torch") && ends_with(name, "Storage")) {
        fn = BMI_PK_FN_STORAGE_TYPE;
        dtype = storage_dtype(name);
    }
    uint32_t idx;
    bm_status st = push_new(m, BMI_PK_GLOBAL, &idx);
    if (st != BM_OK) return st;
    bmi_pk_value *v = val(m, idx);
    v->u.global.module = module;
    v->u.global.name = name;
    v->u.global.fn = fn;
    v->u.global.dtype = dtype;
    return BM_OK;
}

static bm_status stack_global(vm *m) {
    uint32_t name, module;
    bm_status st = pop(m, &name);
    if (st == BM_OK) st = pop(m, &module);
    if (st != BM_OK) return st;
    if (val(m, name)->kind != BMI_PK_STR || val(m, module)->kind != BMI_PK_STR)
        return vm_fail(m, BM_ERR_FORMAT, "STACK_GLOBAL needs two strings");
    return push_global(m, val(m, module)->u.str, val(m, name)->u.str);
}

static bm_status text_global(vm *m) {
    bmi_pk_text module, name;
    bm_status st = take_line(m, MAX_NAME, &module);
    if (st == BM_OK) st = take_line(m, MAX_NAME, &name);
    return st != BM_OK ? st : push_global(m, module, name);
}

/* The arguments of a whitelisted call, as plain values. */
typedef struct call_args {
    const uint32_t *items;
    uint32_t count;
} call_args;

static call_args args_of(const vm *m, uint32_t tuple) {
    call_args a = {val(m, tuple)->u.seq.items, val(m, tuple)->u.seq.count};
    return a;
}

static int int_at_least(const vm *m, uint32_t v, int64_t min, int64_t *out) {
    const bmi_pk_value *x = val(m, v);
    if (x->kind != BMI_PK_INT || x->u.i < min) return 0;
    *out = x->u.i;
    return 1;
}

/* Read a size or stride argument: a tuple (or list) of non-negative ints. */
static const char *read_dims(const vm *m, uint32_t v, int64_t *dims, int *ndim) {
    const bmi_pk_value *x = val(m, v);
    if (x->kind != BMI_PK_TUPLE && x->kind != BMI_PK_LIST) return "its size or stride is not a tuple";
    if (x->u.seq.count > BMI_MAX_DIMS) return "it has more dimensions than the 8 supported";
    for (uint32_t i = 0; i < x->u.seq.count; i++)
        if (!int_at_least(m, x->u.seq.items[i], 0, &dims[i]))
            return "its size or stride holds something other than a non-negative integer";
    *ndim = (int)x->u.seq.count;
    return NULL;
}

/* _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad,
 * backward_hooks[, metadata]). Shape and stride are only read here; they are
 * checked against the storage's bytes when the tensor is used. A malformed
 * call gives an opaque value saying why, so it is an error only if the
 * value ends up among the weights. */
static bm_status rebuild_tensor(vm *m, uint32_t args, uint32_t *result) {
    call_args a = args_of(m, args);
    bmi_pk_tensor t;
    memset(&t, 0, sizeof t);
    const char *why = NULL;
    int ndim_stride = 0;
    if (a.count < 6 || a.count > 7) {
        why = "_rebuild_tensor_v2 got the wrong number of arguments";
    } else if (val(m, a.items[0])->kind != BMI_PK_STORAGE) {
        const bmi_pk_value *s = val(m, a.items[0]);
        why = s->kind == BMI_PK_OPAQUE && s->u.opaque.why ? s->u.opaque.why
                                                          : "its storage argument is not a storage";
    } else if (!int_at_least(m, a.items[1], 0, &t.offset)) {
        why = "its storage offset is not a non-negative integer";
    } else if ((why = read_dims(m, a.items[2], t.shape, &t.ndim)) == NULL &&
               (why = read_dims(m, a.items[3], t.stride, &ndim_stride)) == NULL &&
               ndim_stride != t.ndim) {
        why = "its size and stride have different lengths";
    }
    if (why) return new_opaque(m, BMI_PK_NIL, why, result);
    t.storage = a.items[0];
    bmi_pickle *pk = m->pk;
    bm_status st = grow(m, (void **)&pk->tensors, &pk->cap_tensors, pk->n_tensors + 1,
                        sizeof *pk->tensors, MAX_VALUES, "tensors");
    if (st == BM_OK) st = new_value(m, BMI_PK_TENSOR, result);
    if (st != BM_OK) return st;
    pk->tensors[pk->n_tensors] = t;
    val(m, *result)->u.tensor = (uint32_t)pk->n_tensors++;
    return BM_OK;
}

/* What a whitelisted callable would return, built without calling it.
 * `nested` is 0 inside _rebuild_from_type_v2, which may not recurse. */
static bm_status apply(vm *m, uint32_t callable, uint32_t args, int nested, uint32_t *result) {
    bmi_pk_callable fn = val(m, callable)->u.global.fn;
    call_args a = args_of(m, args);
    switch (fn) {
    case BMI_PK_FN_ORDERED_DICT:
        if (a.count == 0) return new_value(m, BMI_PK_DICT, result);
        break;
    case BMI_PK_FN_REBUILD_TENSOR_V2:
        return rebuild_tensor(m, args, result);
    case BMI_PK_FN_REBUILD_PARAMETER:
    case BMI_PK_FN_REBUILD_PARAMETER_WITH_STATE: {
        /* (data, requires_grad, backward_hooks[, state]): the data is the tensor. */
        uint32_t want = fn == BMI_PK_FN_REBUILD_PARAMETER ? 3 : 4;
        if (a.count != want) return new_opaque(m, callable, "_rebuild_parameter got the wrong "
                                               "number of arguments", result);
        bmi_pk_kind k = val(m, a.items[0])->kind;
        if (k == BMI_PK_TENSOR || k == BMI_PK_OPAQUE) {
            *result = a.items[0];
            return BM_OK;
        }
        return new_opaque(m, callable, "a parameter whose data is not a tensor", result);
    }
    case BMI_PK_FN_REBUILD_FROM_TYPE_V2:
        /* (func, new_type, args, state): tensor subclasses; only the plain
         * rebuild functions are accepted as func. */
        if (nested && a.count == 4 && val(m, a.items[0])->kind == BMI_PK_GLOBAL &&
            val(m, a.items[2])->kind == BMI_PK_TUPLE) {
            bmi_pk_callable inner = val(m, a.items[0])->u.global.fn;
            if (inner == BMI_PK_FN_REBUILD_TENSOR_V2 || inner == BMI_PK_FN_REBUILD_PARAMETER ||
                inner == BMI_PK_FN_REBUILD_PARAMETER_WITH_STATE)
                return apply(m, a.items[0], a.items[2], 0, result);
        }
        break;
    default:
        break;
    }
    return new_opaque(m, callable, NULL, result);
}

static bm_status reduce(vm *m) {
    uint32_t args, callable, result;
    bm_status st = pop(m, &args);
    if (st == BM_OK) st = pop(m, &callable);
    if (st != BM_OK) return st;
    if (val(m, callable)->kind == BMI_PK_GLOBAL && val(m, args)->kind == BMI_PK_TUPLE)
        st = apply(m, callable, args, 1, &result);
    else
        st = new_opaque(m, val(m, callable)->kind == BMI_PK_GLOBAL ? callable : BMI_PK_NIL, NULL,
                        &result);
    return st != BM_OK ? st : push(m, result);
}

/* torch.save's persistent ids: ("storage", storage_type, key, location, numel). */
static bm_status persistent_load(vm *m) {
    uint32_t pid, result;
    bm_status st = pop(m, &pid);
    if (st != BM_OK) return st;
    const bmi_pk_value *t = val(m, pid);
    int64_t numel = 0;
    if (t->kind != BMI_PK_TUPLE || t->u.seq.count != 5 || val(m, t->u.seq.items[0])->kind != BMI_PK_STR ||
        !text_is(val(m, t->u.seq.items[0])->u.str, "storage") ||
        val(m, t->u.seq.items[2])->kind != BMI_PK_STR || !int_at_least(m, t->u.seq.items[4], 0, &numel)) {
        st = new_opaque(m, BMI_PK_NIL, "its persistent id is not a ('storage', type, key, location, "
                        "numel) tuple", &result);
    } else if (val(m, t->u.seq.items[1])->kind != BMI_PK_GLOBAL ||
               val(m, t->u.seq.items[1])->u.global.fn != BMI_PK_FN_STORAGE_TYPE) {
        st = new_opaque(m, BMI_PK_NIL, "its persistent id names something other than a torch "
                        "storage type", &result);
    } else {
        uint32_t type = t->u.seq.items[1];
        bmi_pk_text key = val(m, t->u.seq.items[2])->u.str;
        st = new_value(m, BMI_PK_STORAGE, &result);
        if (st == BM_OK) {
            bmi_pk_value *s = val(m, result);
            s->u.storage.type = type;
            s->u.storage.key = key;
            s->u.storage.numel = numel;
        }
    }
    return st != BM_OK ? st : push(m, result);
}

/* Objects Python would construct (NEWOBJ, OBJ, INST): opaque, never built. */
static bm_status push_constructed(vm *m, uint32_t cls) {
    uint32_t result;
    bm_status st = new_opaque(m, val(m, cls)->kind == BMI_PK_GLOBAL ? cls : BMI_PK_NIL, NULL, &result);
    return st != BM_OK ? st : push(m, result);
}

/* ---- the interpreter loop ------------------------------------------------ */

static bm_status op_mark_closing(vm *m) {
    size_t start = 0;
    uint32_t target;
    bm_status st = pop_mark(m, &start);
    if (st != BM_OK) return st;
    size_t n = m->sp - start;
    switch (m->op) {
    case OP_TUPLE: return collapse_to(m, BMI_PK_TUPLE, start);
    case OP_LIST: return collapse_to(m, BMI_PK_LIST, start);
    case OP_DICT:
        if (n % 2) return vm_fail(m, BM_ERR_FORMAT, "odd number of items for a dict");
        return collapse_to(m, BMI_PK_DICT, start);
    case OP_POP_MARK:
        m->sp = start;
        return BM_OK;
    case OP_FROZENSET:
        m->sp = start;
        st = new_opaque(m, BMI_PK_NIL, NULL, &target);
        return st != BM_OK ? st : push(m, target);
    case OP_OBJ:
        if (n == 0) return vm_fail(m, BM_ERR_FORMAT, "OBJ without a class");
        target = m->stack[start];
        m->sp = start;
        return push_constructed(m, target);
    default:
        break;
    }
    /* APPENDS, SETITEMS, ADDITEMS work on the object below the mark. */
    st = target_below_mark(m, start, &target);
    if (st != BM_OK) return st;
    if (m->op == OP_APPENDS) st = append_to(m, target, m->stack + start, n);
    else if (m->op == OP_SETITEMS) st = set_items_of(m, target, m->stack + start, n);
    else if (val(m, target)->kind != BMI_PK_SET && val(m, target)->kind != BMI_PK_OPAQUE)
        st = vm_fail(m, BM_ERR_FORMAT, "cannot add set items to %s", kind_name(val(m, target)->kind));
    m->sp = start;
    return st;
}

static bm_status op_small_tuple(vm *m, size_t n) {
    if (m->sp - frame_bottom(m) < n) return vm_fail(m, BM_ERR_FORMAT, "stack underflow");
    return collapse_to(m, BMI_PK_TUPLE, m->sp - n);
}

static bm_status op_pop(vm *m) {
    /* CPython discards the innermost MARK when its frame is empty. */
    if (m->sp > frame_bottom(m)) {
        m->sp--;
        return BM_OK;
    }
    if (m->n_marks) {
        m->n_marks--;
        return BM_OK;
    }
    return vm_fail(m, BM_ERR_FORMAT, "stack underflow");
}

static bm_status op_setitem_or_append(vm *m) {
    uint32_t pair[2], target;
    bm_status st;
    if (m->op == OP_APPEND) {
        st = pop(m, &pair[0]);
        if (st == BM_OK) st = peek(m, &target);
        return st != BM_OK ? st : append_to(m, target, pair, 1);
    }
    st = pop(m, &pair[1]);
    if (st == BM_OK) st = pop(m, &pair[0]);
    if (st == BM_OK) st = peek(m, &target);
    return st != BM_OK ? st : set_items_of(m, target, pair, 2);
}

static bm_status op_newobj(vm *m) {
    uint32_t kwargs, args, cls;
    bm_status st = BM_OK;
    if (m->op == OP_NEWOBJ_EX) st = pop(m, &kwargs);
    if (st == BM_OK) st = pop(m, &args);
    if (st == BM_OK) st = pop(m, &cls);
    return st != BM_OK ? st : push_constructed(m, cls);
}

static bm_status op_inst(vm *m) {
    bmi_pk_text module, name;
    size_t start = 0;
    uint32_t cls;
    bm_status st = take_line(m, MAX_NAME, &module);
    if (st == BM_OK) st = take_line(m, MAX_NAME, &name);
    if (st == BM_OK) st = pop_mark(m, &start);
    if (st != BM_OK) return st;
    m->sp = start;
    st = push_global(m, module, name);
    if (st == BM_OK) st = pop(m, &cls);
    return st != BM_OK ? st : push_constructed(m, cls);
}

static bm_status op_memo(vm *m) {
    uint64_t key = 0;
    bm_status st = BM_OK;
    switch (m->op) {
    case OP_BINPUT: case OP_BINGET: st = take_uint(m, 1, &key); break;
    case OP_LONG_BINPUT: case OP_LONG_BINGET: st = take_uint(m, 4, &key); break;
    case OP_PUT: case OP_GET: st = take_decimal_line(m, &key); break;
    default: key = m->memo_count; break; /* MEMOIZE */
    }
    if (st != BM_OK) return st;
    if (m->op == OP_BINGET || m->op == OP_LONG_BINGET || m->op == OP_GET) return memo_get(m, key);
    return memo_put(m, key);
}

static bm_status op_simple_value(vm *m) {
    uint32_t idx;
    uint64_t u;
    bm_status st;
    switch (m->op) {
    case OP_NONE: return push_new(m, BMI_PK_NONE, &idx);
    case OP_EMPTY_DICT: return push_new(m, BMI_PK_DICT, &idx);
    case OP_EMPTY_LIST: return push_new(m, BMI_PK_LIST, &idx);
    case OP_EMPTY_TUPLE: return push_new(m, BMI_PK_TUPLE, &idx);
    case OP_EMPTY_SET: return push_new(m, BMI_PK_SET, &idx);
    case OP_NEWTRUE:
    case OP_NEWFALSE:
        st = push_new(m, BMI_PK_BOOL, &idx);
        if (st == BM_OK) val(m, idx)->u.i = m->op == OP_NEWTRUE;
        return st;
    case OP_BININT:
        st = take_uint(m, 4, &u);
        return st != BM_OK ? st : push_int(m, (int32_t)(uint32_t)u);
    case OP_BININT1:
    case OP_BININT2:
        st = take_uint(m, m->op == OP_BININT1 ? 1 : 2, &u);
        return st != BM_OK ? st : push_int(m, (int64_t)u);
    case OP_LONG1: return push_long(m, 1);
    case OP_LONG4: return push_long(m, 4);
    case OP_BINFLOAT: return push_binfloat(m);
    case OP_SHORT_BINUNICODE: case OP_SHORT_BINSTRING: return push_text(m, BMI_PK_STR, 1);
    case OP_BINUNICODE: case OP_BINSTRING: return push_text(m, BMI_PK_STR, 4);
    case OP_BINUNICODE8: return push_text(m, BMI_PK_STR, 8);
    case OP_SHORT_BINBYTES: return push_text(m, BMI_PK_BYTES, 1);
    case OP_BINBYTES: return push_text(m, BMI_PK_BYTES, 4);
    case OP_BINBYTES8: case OP_BYTEARRAY8: return push_text(m, BMI_PK_BYTES, 8);
    case OP_EXT1: case OP_EXT2: case OP_EXT4:
        /* copyreg extension codes name classes we would have to look up. */
        st = take_uint(m, m->op == OP_EXT1 ? 1 : m->op == OP_EXT2 ? 2 : 4, &u);
        if (st == BM_OK) st = new_opaque(m, BMI_PK_NIL, "it comes from a copyreg extension code", &idx);
        return st != BM_OK ? st : push(m, idx);
    default:
        return vm_fail(m, BM_ERR_FORMAT, "opcode is not allowed");
    }
}

/* Run one opcode; *done is set by STOP. */
static bm_status step(vm *m, int *done) {
    uint64_t u;
    uint32_t v;
    bm_status st;
    switch (m->op) {
    case OP_PROTO:
        st = take_uint(m, 1, &u);
        if (st == BM_OK && u > MAX_PROTOCOL)
            st = vm_fail(m, BM_ERR_FORMAT, "pickle protocol %llu is not supported", (unsigned long long)u);
        return st;
    case OP_FRAME:
        /* Framing only groups opcodes for buffered readers; we have it all. */
        st = take_uint(m, 8, &u);
        if (st == BM_OK && u > m->len - m->pos)
            st = vm_fail(m, BM_ERR_FORMAT, "frame of %llu bytes runs past the end", (unsigned long long)u);
        return st;
    case OP_STOP:
        st = pop(m, &m->pk->root);
        if (st == BM_OK) *done = 1;
        return st;
    case OP_MARK:
        st = grow(m, (void **)&m->marks, &m->marks_cap, m->n_marks + 1, sizeof *m->marks, MAX_MARKS,
                  "nested MARKs");
        if (st == BM_OK) m->marks[m->n_marks++] = m->sp;
        return st;
    case OP_POP: return op_pop(m);
    case OP_DUP:
        st = peek(m, &v);
        return st != BM_OK ? st : push(m, v);
    case OP_TUPLE: case OP_LIST: case OP_DICT: case OP_POP_MARK: case OP_FROZENSET: case OP_OBJ:
    case OP_APPENDS: case OP_SETITEMS: case OP_ADDITEMS:
        return op_mark_closing(m);
    case OP_TUPLE1: return op_small_tuple(m, 1);
    case OP_TUPLE2: return op_small_tuple(m, 2);
    case OP_TUPLE3: return op_small_tuple(m, 3);
    case OP_APPEND: case OP_SETITEM: return op_setitem_or_append(m);
    case OP_GLOBAL: return text_global(m);
    case OP_STACK_GLOBAL: return stack_global(m);
    case OP_REDUCE: return reduce(m);
    case OP_BUILD:
        /* __setstate__ is never called: the state is dropped, the object stays. */
        st = pop(m, &v);
        return st != BM_OK ? st : peek(m, &v);
    case OP_NEWOBJ: case OP_NEWOBJ_EX: return op_newobj(m);
    case OP_INST: return op_inst(m);
    case OP_BINPERSID: return persistent_load(m);
    case OP_PERSID: {
        bmi_pk_text line;
        st = take_line(m, MAX_NAME, &line);
        if (st == BM_OK) st = new_opaque(m, BMI_PK_NIL, "its persistent id is text, not a torch storage", &v);
        return st != BM_OK ? st : push(m, v);
    }
    case OP_BINPUT: case OP_LONG_BINPUT: case OP_PUT: case OP_MEMOIZE:
    case OP_BINGET: case OP_LONG_BINGET: case OP_GET:
        return op_memo(m);
    case OP_READONLY_BUFFER: return peek(m, &v);
    case OP_NEXT_BUFFER:
        return vm_fail(m, BM_ERR_FORMAT, "out-of-band buffers (protocol 5) are not supported");
    default:
        return op_simple_value(m);
    }
}

static void free_vm(vm *m) {
    bmi_free(m->stack);
    bmi_free(m->marks);
    bmi_free(m->memo);
}

bm_status bmi_pickle_load(const void *data, size_t len, bmi_pickle *out) {
    memset(out, 0, sizeof *out);
    out->root = BMI_PK_NIL;
    vm m;
    memset(&m, 0, sizeof m);
    m.pk = out;
    m.p = data;
    m.len = len;
    bm_status st = BM_OK;
    int done = 0;
    while (!done) {
        if (m.pos >= m.len) {
            st = bmi_fail(BM_ERR_FORMAT, "data.pkl ends after %zu bytes without a STOP opcode "
                                         "(truncated?)", m.len);
            break;
        }
        m.op_pos = m.pos;
        m.op = m.p[m.pos++];
        st = step(&m, &done);
        if (st != BM_OK) break;
    }
    free_vm(&m);
    if (st != BM_OK) bmi_pickle_free(out);
    return st;
}

static int has_items(bmi_pk_kind k) {
    return k == BMI_PK_TUPLE || k == BMI_PK_LIST || k == BMI_PK_DICT;
}

void bmi_pickle_free(bmi_pickle *p) {
    if (!p) return;
    for (size_t i = 0; i < p->n_values; i++)
        if (has_items(p->values[i].kind)) bmi_free(p->values[i].u.seq.items);
    bmi_free(p->values);
    bmi_free(p->tensors);
    memset(p, 0, sizeof *p);
    p->root = BMI_PK_NIL;
}

uint32_t bmi_pickle_dict_get(const bmi_pickle *p, uint32_t dict, const char *key) {
    const bmi_pk_value *d = &p->values[dict];
    uint32_t found = BMI_PK_NIL;
    if (d->kind != BMI_PK_DICT) return found;
    for (uint32_t i = 0; i + 1 < d->u.seq.count; i += 2) {
        const bmi_pk_value *k = &p->values[d->u.seq.items[i]];
        if (k->kind == BMI_PK_STR && text_is(k->u.str, key)) found = d->u.seq.items[i + 1];
    }
    return found;
}

const char *bmi_pickle_describe(const bmi_pickle *p, uint32_t v, char *buf, size_t cap) {
    const bmi_pk_value *x = &p->values[v];
    const bmi_pk_value *g = NULL;
    if (x->kind == BMI_PK_GLOBAL) g = x;
    if (x->kind == BMI_PK_OPAQUE && x->u.opaque.origin != BMI_PK_NIL) g = &p->values[x->u.opaque.origin];
    if (x->kind == BMI_PK_OPAQUE && x->u.opaque.why) {
        snprintf(buf, cap, "an unusable tensor (%s)", x->u.opaque.why);
    } else if (g) {
        snprintf(buf, cap, "%s %.*s.%.*s%s", x->kind == BMI_PK_GLOBAL ? "the global" : "an object made by",
                 (int)(g->u.global.module.n > 100 ? 100 : g->u.global.module.n), g->u.global.module.p,
                 (int)(g->u.global.name.n > 100 ? 100 : g->u.global.name.n), g->u.global.name.p,
                 x->kind == BMI_PK_GLOBAL ? "" : " (which the loader never calls)");
    } else {
        snprintf(buf, cap, "%s", kind_name(x->kind));
    }
    return buf;
}
