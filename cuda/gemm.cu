/* Prefill projections through cuBLASLt. Row-major y[m, n] = x[m, k] W[n, k]^T
 * is, in cuBLAS's column-major terms, y^T[n, m] = W^T x^T with W's storage
 * read as a k-by-n matrix transposed: the "TN" product, no copies. The
 * heuristic query costs tens of microseconds, so its answer is cached per
 * shape (a prefill meets a handful of shapes, MoE groups a few more). */
#include <cublasLt.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.cuh"

#define GEMM_CACHE_SLOTS 512

typedef struct gemm_key {
    int m, n, k, ldx, ldw, ldy, x_type, y_kind;
    int align_w, align_x, align_y; /* bytes: algorithms needing more are excluded */
} gemm_key;

typedef struct gemm_entry {
    gemm_key key;
    int used;
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t a, b, c;
    cublasLtMatmulAlgo_t algo;
} gemm_entry;

struct bmc_gemm_cache {
    gemm_entry slots[GEMM_CACHE_SLOTS];
    int next_victim;
};

bmc_gemm_cache *bmc_gemm_cache_new(void) { return (bmc_gemm_cache *)calloc(1, sizeof(bmc_gemm_cache)); }

static void entry_release(gemm_entry *e) {
    if (!e->used) return;
    cublasLtMatrixLayoutDestroy(e->a);
    cublasLtMatrixLayoutDestroy(e->b);
    cublasLtMatrixLayoutDestroy(e->c);
    cublasLtMatmulDescDestroy(e->op);
    e->used = 0;
}

void bmc_gemm_cache_free(bmc_gemm_cache *c) {
    if (!c) return;
    for (int i = 0; i < GEMM_CACHE_SLOTS; i++) entry_release(&c->slots[i]);
    free(c);
}

static cudaDataType_t data_type(int t) {
    return t == BMC_F16 ? CUDA_R_16F : t == BMC_GEMM_F32 ? CUDA_R_32F : CUDA_R_16BF;
}

#define LT_TRY(call, name)                                                                                     \
    do {                                                                                                       \
        cublasStatus_t s_ = (call);                                                                            \
        if (s_ != CUBLAS_STATUS_SUCCESS) {                                                                     \
            *what = name;                                                                                      \
            return (int)s_;                                                                                    \
        }                                                                                                      \
    } while (0)

static int build_entry(cublasLtHandle_t lt, const gemm_key *key, size_t workspace_bytes, gemm_entry *e,
                       const char **what) {
    memset(e, 0, sizeof *e);
    e->key = *key;
    cudaDataType_t in = data_type(key->x_type);
    cudaDataType_t out = key->y_kind == BMC_GEMM_OUT_F32 ? CUDA_R_32F : in;
    cublasComputeType_t compute = key->x_type == BMC_GEMM_F32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
    LT_TRY(cublasLtMatmulDescCreate(&e->op, compute, CUDA_R_32F), "cublasLtMatmulDescCreate");
    cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    LT_TRY(cublasLtMatmulDescSetAttribute(e->op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta), "set TRANSA");
    LT_TRY(cublasLtMatmulDescSetAttribute(e->op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb), "set TRANSB");
    /* A = W stored [n, ldw] row-major = column-major k x n with ld ldw, transposed. */
    LT_TRY(cublasLtMatrixLayoutCreate(&e->a, in, key->k, key->n, key->ldw), "layout A");
    LT_TRY(cublasLtMatrixLayoutCreate(&e->b, in, key->k, key->m, key->ldx), "layout B");
    LT_TRY(cublasLtMatrixLayoutCreate(&e->c, out, key->n, key->m, key->ldy), "layout C");
    cublasLtMatmulPreference_t pref;
    LT_TRY(cublasLtMatmulPreferenceCreate(&pref), "cublasLtMatmulPreferenceCreate");
    cublasStatus_t s = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                            &workspace_bytes, sizeof workspace_bytes);
    /* Expert GEMMs start at arbitrary rows of a shared buffer: tell the
     * heuristic how aligned the pointers really are (it assumes 256 bytes). */
    uint32_t align[3] = {(uint32_t)key->align_w, (uint32_t)key->align_x, (uint32_t)key->align_y};
    if (s == CUBLAS_STATUS_SUCCESS)
        s = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &align[0], 4);
    if (s == CUBLAS_STATUS_SUCCESS)
        s = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &align[1], 4);
    if (s == CUBLAS_STATUS_SUCCESS)
        s = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &align[2], 4);
    if (s == CUBLAS_STATUS_SUCCESS)
        s = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &align[2], 4);
    cublasLtMatmulHeuristicResult_t result;
    int found = 0;
    if (s == CUBLAS_STATUS_SUCCESS)
        s = cublasLtMatmulAlgoGetHeuristic(lt, e->op, e->a, e->b, e->c, e->c, pref, 1, &result, &found);
    cublasLtMatmulPreferenceDestroy(pref);
    if (s == CUBLAS_STATUS_SUCCESS && found == 0) s = CUBLAS_STATUS_NOT_SUPPORTED;
    if (s != CUBLAS_STATUS_SUCCESS) {
        e->used = 1;
        entry_release(e);
        *what = "cublasLtMatmulAlgoGetHeuristic";
        return (int)s;
    }
    e->algo = result.algo;
    e->used = 1;
    return 0;
}

static int alignment_of(const void *p) {
    uintptr_t a = (uintptr_t)p;
    int align = 256;
    while (align > 1 && (a % (uintptr_t)align) != 0) align >>= 1;
    return align;
}

int bmc_gemm(void *lt_handle, bmc_gemm_cache *cache, void *workspace, size_t workspace_bytes, const bmc_gemm_args *a,
             cudaStream_t stream, const char **what) {
    if (a->m <= 0 || a->n_out <= 0) return 0;
    gemm_key key;
    memset(&key, 0, sizeof key);
    key.m = a->m;
    key.n = a->n_out;
    key.k = a->k;
    key.ldx = a->ldx;
    key.ldw = a->ldw;
    key.ldy = a->ldy;
    key.x_type = a->x_type;
    key.y_kind = a->y_kind;
    key.align_w = alignment_of(a->W);
    key.align_x = alignment_of(a->x);
    key.align_y = alignment_of(a->y);
    gemm_entry *e = NULL;
    for (int i = 0; i < GEMM_CACHE_SLOTS && !e; i++)
        if (cache->slots[i].used && memcmp(&cache->slots[i].key, &key, sizeof key) == 0) e = &cache->slots[i];
    if (!e) {
        e = &cache->slots[cache->next_victim];
        cache->next_victim = (cache->next_victim + 1) % GEMM_CACHE_SLOTS;
        entry_release(e);
        int st = build_entry((cublasLtHandle_t)lt_handle, &key, workspace_bytes, e, what);
        if (st) return st;
    }
    const float one = 1.0f, zero = 0.0f;
    LT_TRY(cublasLtMatmul((cublasLtHandle_t)lt_handle, e->op, &one, a->W, e->a, a->x, e->b, &zero, a->y, e->c, a->y,
                          e->c, &e->algo, workspace, workspace_bytes, stream),
           "cublasLtMatmul");
    return 0;
}
