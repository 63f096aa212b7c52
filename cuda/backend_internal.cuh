/* The CUDA backend's host-side objects, shared by backend.cu (model upload,
 * states, sessions, the table) and forward.cu (prefill and decode). */
#ifndef BM_CUDA_BACKEND_INTERNAL_CUH
#define BM_CUDA_BACKEND_INTERNAL_CUH

#include <cublasLt.h>
#include <cuda_runtime.h>

extern "C" {
#include "model.h"
}
#include "bmcuda.h"
#include "kernels.cuh"

#define BMC_NORM_EPS 1e-5f
/* Rows of one stream per prefill forward; longer prompts run in chunks. */
#define BMC_PREFILL_ROWS 2048
/* Rows the LM head processes at once for bm_prefill_all. */
#define BMC_LOGIT_ROWS 256
/* Expert GEMMs run on row counts rounded up to this (the extra rows are the
 * next expert's or zero padding, overwritten or ignored), so the cuBLASLt
 * heuristic is asked once per bucket instead of once per routing outcome. */
#define BMC_EXPERT_ROW_BUCKET 32
#define BMC_WORKSPACE_BYTES (32u << 20)

typedef struct dev_mamba {
    const void *in_proj, *x_proj, *dt_proj, *out_proj; /* 16-bit */
    const float *dt_proj_f32;                          /* prefill's TF32 GEMM reads this copy */
    const float *in_proj_bias, *conv_w, *conv_b, *dt_bias, *A, *D, *out_proj_bias;
} dev_mamba;

typedef struct dev_layer {
    int has_mamba, n_experts, mamba_index;
    const float *norm, *norm_moe;
    dev_mamba mamba;
    const float *router_w, *router_b; /* f32 [E, d], [E] */
    /* Decode routes this MoE-only layer inside the previous layer's out_proj
     * (BMC_EPI_STORE_ROUTE) when that layer is a plain Mamba layer. */
    int fused_route;
    const float *route_w_normed;      /* f32 [E, d]: router_w * norm, for the fused routing */
    const void *fc1, *fc2;            /* [E, g*F, d], [E, d, F] back to back */
    const float *fc1_bias, *fc2_bias; /* [E, g*F], [E, d] or NULL */
} dev_layer;

/* The decode scan step of Mamba layer L for nb streams: its weights, shapes
 * and state offset; the caller adds where y goes (f32 y, or y16 halves). */
static inline bmc_step_scan_args bmc_layer_scan_args(const bmi_config *c, const dev_layer *L, int nb, const float *xz,
                                                     const float *xdbl, float *const *state_ptrs) {
    bmc_step_scan_args sa;
    memset(&sa, 0, sizeof sa);
    sa.nb = nb;
    sa.di = c->d_inner;
    sa.R = c->dt_rank;
    sa.N = c->d_state;
    sa.xz = xz;
    sa.xdbl = xdbl;
    sa.ldxdbl = c->dt_rank + 2 * c->d_state;
    sa.dt_proj = L->mamba.dt_proj;
    sa.dt_bias = L->mamba.dt_bias;
    sa.A = L->mamba.A;
    sa.D = L->mamba.D;
    sa.state_ptrs = state_ptrs;
    sa.ssm_offset = (long long)bmi_state_ssm_offset(c, L->mamba_index);
    return sa;
}

typedef struct cuda_model {
    int device, wtype, sm_count, pdl, fuse_routing, l2_prefetch;
    /* Decode batches of at least this many streams take the row path
     * (forward_rows.cu); smaller ones the GEMV path. BM_CUDA_ROWS_MIN. */
    int rows_min;
    int max_experts;                  /* over the layers, at least 1 */
    /* Measurement switch BM_CUDA_DEBUG_SKIP (forward.cu, forward_rows.cu):
     * decode kernels left out of the step graph, a bit per BMC_SKIP_* kind. The
     * results are wrong; the time saved is the kernels' cost in the graph. */
    unsigned debug_skip;
    char *pool;                       /* every weight, one allocation */
    size_t pool_bytes;
    const void *embedding, *lm_head;
    const float *lm_head_bias, *final_w, *final_b;
    dev_layer *layers;
    int final_res;                    /* which residual buffer of a decode step holds the last sum */
    /* The batch-1 decode step as one persistent kernel (decode_fused.cu), when
     * BM_CUDA_FUSED_STEP=1 and the device and the model allow it; the
     * per-session pointers of `fused` are filled in at capture. */
    int fused_ok;
    bmc_fused_step_args fused;
    bmc_fused_layer *fused_layers;    /* device copy of the layer table */
    int *fused_mamba;                 /* host: 1 for each Mamba layer (the trace's phase layout) */
} cuda_model;

/* Activations of one prefill chunk of up to `rows` tokens. */
typedef struct prefill_scratch {
    int rows;
    char *mem;
    int32_t *tokens;
    float *res, *h, *normed_moe, *xz, *u, *xdbl, *delta, *eout, *chunk, *gate, *logits;
    void *normed16, *moe16, *u16, *y16, *gathered16, *act16, *m16, *final16;
    int *expert_of, *order, *expert_start;
} prefill_scratch;

/* BM_CUDA_DEBUG_SKIP: a comma-separated list of these names. */
enum {
    BMC_SKIP_IN_PROJ = 1u << 0,
    BMC_SKIP_X_PROJ = 1u << 1,
    BMC_SKIP_SCAN = 1u << 2,
    BMC_SKIP_OUT_PROJ = 1u << 3,
    BMC_SKIP_ROUTER = 1u << 4,
    BMC_SKIP_FC1 = 1u << 5,
    BMC_SKIP_FC2 = 1u << 6,
    BMC_SKIP_HEAD = 1u << 7,
    BMC_SKIP_CONV = 1u << 8, /* row path only (the batch-1 conv is in_proj's epilogue) */
};
static inline unsigned bmc_parse_debug_skip(const char *list) {
    static const char *const names[] = {"in_proj", "x_proj", "scan", "out_proj", "router",
                                          "fc1",     "fc2",    "head", "conv"};
    unsigned mask = 0;
    for (const char *p = list; p && *p;) {
        const char *end = strchr(p, ',');
        const size_t n = end ? (size_t)(end - p) : strlen(p);
        for (unsigned i = 0; i < sizeof names / sizeof names[0]; i++)
            if (strlen(names[i]) == n && strncmp(names[i], p, n) == 0) mask |= 1u << i;
        p = end ? end + 1 : p + n;
    }
    return mask;
}

/* Decode row path (forward_rows.cu): a step of up to BMC_MAX_ROWS streams as
 * GEMMs over the rows, padded to a bucket size; one graph per bucket. */
#define BMC_ROW_BUCKETS 15
#define BMC_ROWS_MIN_DEFAULT 8
#define BMC_MAX_ROWS 1024
extern const int bmc_row_buckets[BMC_ROW_BUCKETS];

typedef struct rows_scratch {
    int cap;                          /* rows every buffer holds (a bucket size); 0 before first use */
    char *mem;
    int32_t *tokens, *sampled;
    float **state_ptrs;               /* NULL for the padding rows */
    int *n_dev;                       /* live rows of this step */
    double *u;                        /* the sampler's draws */
    float *res, *h, *xz, *xdbl, *gate, *eout, *logits;
    void *normed16, *moe16, *y16, *sorted16, *m16, *final16; /* sorted16: moe16 gathered in expert order (fc1's input) */
    int *expert_of, *order, *pos_of;  /* pos_of: order's inverse, where the next norm finds a row's fc2 slices */
    int *expert_start;                /* [n_layers][max_experts + 1]: each MoE layer keeps its own */
    int *moe_done;                    /* [max_experts]: fc1 -> fc2 counters of a chained launch (bmc_moe_mlp) */
    /* pinned host staging, BMC_MAX_ROWS rows */
    char *pinned;
    int32_t *h_tokens, *h_sampled;
    float **h_state_ptrs;
    int *h_n;
    double *h_u;
    cudaGraphExec_t graphs[BMC_ROW_BUCKETS][2];
    int eager_runs[BMC_ROW_BUCKETS][2]; /* a bucket runs eagerly once (loads modules, asks heuristics), then is captured */
    int last_rows;                    /* rows of the last row-path step, 0 when the last step took the GEMV path */
    /* BM_CUDA_ROWS_PROFILE=1: every step runs eagerly with an event after
     * each operation; the time per kind of operation and bucket is printed
     * to stderr when the session is freed (a measurement aid) */
    int profile;
    cudaEvent_t *ev;
    int *ev_kind, n_ev, cap_ev;
    double prof_ms[BMC_ROW_BUCKETS][12];
    int prof_steps[BMC_ROW_BUCKETS];
} rows_scratch;

typedef struct cuda_session {
    cudaStream_t stream;
    cublasLtHandle_t lt;
    void *workspace;
    bmc_gemm_cache *gemm_cache;
    /* decode scratch, BMC_MAX_STEP_ROWS rows */
    char *step_mem;
    float *res[2], *h, *normed, *xz, *xdbl, *yg, *m, *logits, *gates, *scales, *route_partials;
    unsigned *route_counter, *grid_barrier;
    int *slot_expert, *slot_count, *slot_rows;
    int32_t *d_tokens, *d_recent, *d_sampled;
    float **d_state_ptrs;
    /* pinned host staging: what a step graph copies in, what comes back */
    char *pinned;
    int32_t *h_tokens, *h_prefill_tokens, *h_recent, *h_sampled;
    float **h_state_ptrs;
    int *h_starts;
    cudaEvent_t inputs_consumed;
    cudaGraphExec_t graphs[BMC_MAX_STEP_ROWS + 1][2];
    /* BM_CUDA_FUSED_TRACE=1: the fused step records timings here (device,
     * fused.trace_words u64 per block); summary on stderr at session free */
    unsigned long long *fused_trace;
    prefill_scratch ps;
    rows_scratch rs;
} cuda_session;

bm_status bmc_fail_cuda(cudaError_t e, const char *what);
#define BMC_TRY(call, what)                                                                                        \
    do {                                                                                                           \
        cudaError_t bmc_e_ = (call);                                                                               \
        if (bmc_e_ != cudaSuccess) return bmc_fail_cuda(bmc_e_, what);                                             \
    } while (0)

/* forward.cu */
bm_status bmc_forward_prefill_batch(bm_session *s, bm_state *const *states, const int32_t *const *tokens,
                                    const size_t *n_tokens, size_t n, float *logits);
/* One GEMM through the session's cuBLASLt handle (gemm.cu's bmc_gemm), errors as bm_status. */
bm_status bmc_session_gemm(cuda_session *cs, cudaStream_t st, int m, int n_out, int k, const void *x, int ldx,
                           int x_type, const void *W, int ldw, void *y, int ldy, int y_kind);
/* bm_sample's argument rules for the device paths. */
bm_status bmc_check_sampler(const bm_sampler_params *p, int V, const int32_t *recent, size_t n_recent);

/* forward_rows.cu */
bm_status bmc_rows_step_batch(bm_session *s, bm_state *const *states, const int32_t *tokens, size_t n, float *logits);
bm_status bmc_rows_step_batch_sample(bm_session *s, bm_state *const *states, const int32_t *tokens, size_t n,
                                     const bm_sampler_params *p, uint64_t *rngs, const int32_t *recent,
                                     size_t n_recent, int32_t *out_tokens);
void bmc_rows_release(cuda_session *cs);
bm_status bmc_forward_prefill(bm_session *s, bm_state *st, const int32_t *tokens, size_t n, float *logits,
                              int all_positions);
bm_status bmc_forward_step_batch(bm_session *s, bm_state *const *states, const int32_t *tokens, size_t n,
                                 float *logits);
bm_status bmc_forward_step_batch_sample(bm_session *s, bm_state *const *states, const int32_t *tokens, size_t n,
                                        const bm_sampler_params *p, uint64_t *rngs, const int32_t *recent,
                                        size_t n_recent, int32_t *out_tokens);

#endif
