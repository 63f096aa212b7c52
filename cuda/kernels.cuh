/* The CUDA backend's operations: one per .cu file, each with one host entry
 * point declared here. Entry points only enqueue work on the given stream and
 * return the launch status; they make no decisions about the model (that is
 * backend.cu's job) and never synchronise, except bmc_route_prefill which
 * says so.
 *
 * Conventions: activations and the recurrent state are f32; weights are a
 * 16-bit type named by `wtype` (BMC_BF16 or BMC_F16), row-major [out, in] as
 * in the checkpoint; "rows" are tokens. `pdl` asks for a programmatic
 * dependent launch (decode graphs on sm_90; see device_util.cuh): the
 * kernel may start while the one before it drains and waits for it before
 * it reads activations or writes anything. Pass it only in a chain whose
 * kernels all keep that rule (the decode paths); prefill and harnesses
 * pass 0. */
#ifndef BM_CUDA_KERNELS_CUH
#define BM_CUDA_KERNELS_CUH

#include <cuda_runtime.h>
#include <stddef.h>
#include <stdint.h>

#define BMC_BF16 0
#define BMC_F16 1

/* Most streams one decode graph advances; larger batches run in groups. */
#define BMC_MAX_STEP_ROWS 8
/* State entries per channel the scan kernels are written for (all released
 * and fixture models). */
#define BMC_D_STATE 16
#define BMC_MAX_CONV 8

/* Where entry n of channel c lies in a layer's ssm state on the device:
 * four planes of float4, plane q holding entries 4q..4q+3 of every channel
 * in channel order. The scan kernels give each lane a channel, so a warp's
 * float4 of one plane is 512 contiguous bytes instead of 32 pieces 64 bytes
 * apart (the canonical [di][16] layout), a quarter of the L1 wavefronts.
 * Everything outside the device (the CPU backend, saved files) keeps the
 * canonical layout: state download and upload convert (bmc_ssm_layout). */
__host__ __device__ static inline size_t bmc_ssm_index(int di, int c, int n) {
    return ((size_t)(n >> 2) * (size_t)di + (size_t)c) * 4 + (size_t)(n & 3);
}
/* One layer's ssm state [di][BMC_D_STATE] from the canonical layout into
 * the device's (to_device) or back; dst and src do not overlap. Host code. */
static inline void bmc_ssm_layout(float *dst, const float *src, int di, int to_device) {
    for (int c = 0; c < di; c++)
        for (int n = 0; n < BMC_D_STATE; n++) {
            const size_t canonical = (size_t)c * BMC_D_STATE + n, device = bmc_ssm_index(di, c, n);
            dst[to_device ? device : canonical] = src[to_device ? canonical : device];
        }
}

/* ---- embedding.cu ---------------------------------------------------------- */
/* h[r] = E[tokens[r]] (f32) for r < rows; if res_zero, res[r] = 0 (the
 * residual stream starts empty). */
cudaError_t bmc_embed(const int32_t *tokens, int rows, const void *E, int wtype, int d, float *h, float *res_zero,
                      cudaStream_t stream, int pdl);

/* ---- add_rmsnorm.cu -------------------------------------------------------- */
/* For each row: if add, res += h; then up to two RMSNorms of res (weights
 * w_a, w_b; NULL skips) written as f32 and/or 16-bit (any output NULL is
 * skipped). Prefill and the decode row path (pdl there: each block waits
 * before it reads *n_dev, res or h; with routing the router weights are
 * fetched into L2 before the wait); the GEMV decode path fuses this into
 * the projection kernels. */
/* The forms in which h may hold the last block's output (h_form): the
 * decode row path leaves two GEMM outputs unfinished and the norm finishes
 * them as it reads them, with row_outputs.cuh's operations in their order,
 * so res gets the same f32 sums as after the launch each form replaces. */
#define BMC_H_ROWS 0   /* h[r] */
#define BMC_H_HALVES 1 /* h[r] + h[r + h_lo_rows] + h_bias (NULL: 0), as bmc_fold_rows stores it: out_proj */
/* The MoE layer's fc2 slices, as bmc_scatter_parts leaves h: a live row r
 * (below *n_dev) at sorted position p = parts_pos[r] takes parts_gate[r] *
 * (sum over the slices s, in order, of parts[s * part_stride + p * d] +
 * parts_bias[parts_expert[r]]), plus h[r] when parts_add (a parallel layer:
 * the Mamba branch is in h); a padding row takes h[r]. */
#define BMC_H_PARTS 2
typedef struct bmc_norm_args {
    float *res;
    const float *h;
    int add, rows, d;
    float eps;
    const float *w_a;
    float *out_a_f32;
    void *out_a_16;
    const float *w_b;
    float *out_b_f32;
    void *out_b_16;
    int act_type; /* 16-bit output type: BMC_BF16 or BMC_F16 */
    /* > 0: each 16-bit output also gets the rounding remainder, bf16(y - hi),
     * lo_rows rows further on (f32-grade inputs for the decode row path's
     * GEMMs, which multiply both halves) */
    int lo_rows;
    const int *n_dev; /* the live rows (NULL: all): routing and BMC_H_PARTS leave the others out */
    /* h's form (BMC_H_ROWS unless the decode row path says otherwise; any
     * other form needs add) and what it reads */
    int h_form;
    int h_lo_rows;       /* HALVES */
    const float *h_bias; /* HALVES: [d] or NULL */
    const float *parts;  /* PARTS: [n_parts] slices part_stride floats apart, rows of d at the sorted positions */
    int n_parts;
    long long part_stride;
    const int *parts_pos, *parts_expert; /* PARTS: [rows]; parts_expert NULL: expert 0 */
    const float *parts_gate;             /* PARTS: [rows] or NULL (1) */
    const float *parts_bias;             /* PARTS: [E, d] or NULL */
    int parts_add;
    /* Optional (route_w NULL: none): the top-1 routing of the b-norm's rows,
     * as bmc_route_rows does it, in the same launch (the decode row path's
     * MoE layers: no second launch, no router reloads). Each row's E logits
     * come from its f32 b-norm (what out_b_f32 gets); expert_of and gate
     * (sigmoid of the best logit, lowest index on ties) are written for the
     * live rows only. The grouping by expert is bmc_group_rows' (moe_rows.cu),
     * launched after. The PARTS inputs may be these same arrays (the previous
     * MoE layer's routing): a block reads its own row's before it writes it. */
    const float *route_w, *route_b; /* f32 [E, d], [E] */
    int n_experts;                  /* 2..64 */
    int *expert_of;
    float *gate;
} bmc_norm_args;
cudaError_t bmc_add_rmsnorm(const bmc_norm_args *a, cudaStream_t stream, int pdl);

/* ---- final_norm.cu --------------------------------------------------------- */
/* out[i] = LayerNorm(res[r0 + i] + h[r0 + i]; w, b) for i < rows, as 16-bit. */
cudaError_t bmc_add_layernorm(const float *res, const float *h, int r0, int rows, int d, const float *w,
                              const float *b, float eps, void *out, int act_type, cudaStream_t stream, int pdl);

/* ---- gemm.cu --------------------------------------------------------------- */
/* y[t, n] = sum_k x[t, k] * W[n, k] (+ bias[n]) for t < m, n < n_out through
 * cuBLASLt: 16-bit x and W with f32 accumulation (x_type = BMC_BF16/F16), or
 * f32 x and W in TF32 (x_type = BMC_GEMM_F32). y is f32 or 16-bit. The
 * heuristic's choice is cached per shape in `cache`. */
#define BMC_GEMM_F32 2
#define BMC_GEMM_OUT_F32 0
#define BMC_GEMM_OUT_16 1
typedef struct bmc_gemm_cache bmc_gemm_cache;
bmc_gemm_cache *bmc_gemm_cache_new(void);
void bmc_gemm_cache_free(bmc_gemm_cache *c);
typedef struct bmc_gemm_args {
    int m, n_out, k;
    const void *x;
    int ldx;
    int x_type;
    const void *W; /* [n_out, ldw] row-major, same type as x */
    int ldw;
    void *y;
    int ldy;
    int y_kind; /* BMC_GEMM_OUT_F32 or BMC_GEMM_OUT_16 (same 16-bit type as x) */
} bmc_gemm_args;
/* Returns a cuBLAS status (0 = success) and fills *what with the call that failed. */
int bmc_gemm(void *lt_handle, bmc_gemm_cache *cache, void *workspace, size_t workspace_bytes, const bmc_gemm_args *a,
             cudaStream_t stream, const char **what);

/* ---- fold_rows.cu ----------------------------------------------------------- */
/* y[r, j] += y[r + lo_rows, j] (+ bias[j]) for r < rows, j < n (f32, stride
 * ldy): the decode row path's GEMMs multiply the hi and lo halves of their
 * inputs as separate rows; this adds the two partial products. */
cudaError_t bmc_fold_rows(float *y, int rows, int n, int ldy, int lo_rows, const float *bias, cudaStream_t stream,
                          int pdl);

/* ---- bias.cu --------------------------------------------------------------- */
/* y[t, j] += bias[j] for t < rows, j < n (f32 y with row stride ldy). */
cudaError_t bmc_add_bias(float *y, int rows, int n, int ldy, const float *bias, cudaStream_t stream, int pdl);

/* ---- gemv.cu: the decode projections --------------------------------------- */
enum {
    BMC_PRO_LOAD = 0,
    BMC_PRO_ADD_RMSNORM = 1,
    BMC_PRO_ADD_LAYERNORM = 2,
    BMC_PRO_SCALED = 3 /* x = x_src * scales[row] * norm_w: an RMSNorm whose scale an earlier kernel found */
};
enum {
    BMC_EPI_STORE = 0,     /* y = acc + bias */
    BMC_EPI_CONV_SILU = 1, /* in_proj: rows < di become u = SiLU(conv(...)) and advance the conv state; rows >= di (z) stored */
    BMC_EPI_GATED = 2,     /* fc1 with swiglu: rows f and F+f give act(a_f) * a_{F+f}, stored at f */
    BMC_EPI_ACT = 3,       /* fc1 without swiglu: act(acc) */
    BMC_EPI_SCALE_STORE = 4, /* fc2: y = gate * acc */
    BMC_EPI_SCALE_ADD = 5,   /* fc2 of a parallel layer: y += gate * acc */
    /* out_proj before an MoE layer: y = acc (+ bias) is the block output h;
     * v = res_in + h goes to res_out, and the routing of the next layer is
     * done here: each block sums v^2 and route_w . v over its rows, and the
     * last block to finish adds the blocks' sums in a fixed order, takes
     * scale = rsqrt(mean v^2 + eps), logits = scale * (route_w . v) + bias,
     * top-1 and gate, and groups the rows by expert (as bmc_router_step).
     * It removes the router launch and its serial work from the chain. */
    BMC_EPI_STORE_ROUTE = 6
};
typedef struct bmc_gemv_args {
    const void *W;           /* [rows, K] (of expert 0 when slot_expert is set) */
    long long expert_stride; /* elements from one expert's matrix to the next */
    int rows, K;
    int nb;                  /* batch rows, <= BMC_MAX_STEP_ROWS */
    /* MoE: slot j (blockIdx.y) computes expert slot_expert[j] for the
     * slot_count[j] batch rows slot_rows[j * BMC_MAX_STEP_ROWS + i]. NULL:
     * one slot holding rows 0..nb-1. */
    const int *slot_expert, *slot_count, *slot_rows;
    int n_slots;
    int prologue;
    const float *x;          /* LOAD: input rows, stride ldx */
    int ldx;
    const float *res_in, *h_in; /* ADD_*: the residual and the last block's output, [nb, K] */
    float *res_out;          /* ADD_*: their sum, written once */
    const float *norm_w, *norm_b;
    float eps;
    int epilogue;
    float *y;
    int ldy;
    const float *bias;       /* [rows] (of expert 0; stride rows per expert) or NULL */
    const float *gates;      /* SCALE_*: [nb] */
    int act;                 /* BM_ACTIVATION_GELU / SILU for GATED and ACT */
    /* CONV_SILU */
    float *const *state_ptrs; /* [nb] device pointers to each stream's state */
    long long conv_offset;   /* floats from a state's start to this layer's conv state */
    const float *conv_w, *conv_b;
    int d_conv, di;
    /* SCALED prologue: per batch row scale */
    const float *scales;
    /* STORE_ROUTE (res_in, res_out and eps above; gates and slots out) */
    const float *route_w;    /* [E, rows]: router weights times the next norm's weights, f32 */
    const float *route_b;    /* [E] */
    int n_experts;           /* 1..BMC_MAX_FUSED_EXPERTS; 1 = dense MLP */
    float *route_partials;   /* blocks * nb * (1 + E) floats */
    unsigned *route_counter; /* zero before the launch; the last block leaves it zero */
    float *scales_out, *gates_out; /* [nb] */
    int *slot_expert_out, *slot_count_out, *slot_rows_out;
    /* L2 prefetch of weights later kernels read (bmc_prefetch_l2): two fixed
     * regions, and one per expert this step uses (expert_base + e * stride) */
    const void *prefetch[2];
    size_t prefetch_bytes[2];
    const void *prefetch_expert_base;
    size_t prefetch_expert_stride, prefetch_expert_bytes;
} bmc_gemv_args;
#define BMC_MAX_FUSED_EXPERTS 16
/* Blocks bmc_gemv may launch for `rows` outputs (to size route_partials). */
int bmc_gemv_max_blocks(int rows);
/* ksplit: warps sharing one pair of rows (1, 2, 4 or 8); sm_count sizes it when 0. */
cudaError_t bmc_gemv(const bmc_gemv_args *a, int wtype, int ksplit, int sm_count, cudaStream_t stream, int pdl);

/* ---- conv_prefill.cu ------------------------------------------------------- */
/* u[t, c] = SiLU(b[c] + sum_k w[c, k] x[t-K+1+k, c]), x[t, c] = xz[t * ldxz + c],
 * earlier x from the conv state (oldest first). Writes u as f32 and 16-bit.
 * The conv state is not changed here (bmc_scan_prefill advances it). */
cudaError_t bmc_conv_prefill(const float *xz, int ldxz, int T, int di, int K, const float *conv_state, const float *w,
                             const float *b, float *u, void *u16, int act_type, cudaStream_t stream);

/* ---- scan_prefill.cu ------------------------------------------------------- */
typedef struct bmc_scan_args {
    int T, di, R, N, K;
    const float *delta_raw; /* [T, di] dt_proj output before bias and softplus */
    const float *dt_bias;   /* [di] */
    const float *u;         /* [T, di] */
    const float *xdbl;      /* [T, ldxdbl]: dt, B, C */
    int ldxdbl;
    const float *xz;        /* [T, ldxz]: x (pre-conv, for the conv state) then z */
    int ldxz;
    const float *A, *D;     /* [di, N], [di] */
    float *conv_state;      /* [di, K-1] in/out */
    float *ssm_state;       /* [di, N] in/out, device layout (bmc_ssm_index) */
    void *y16;              /* [T, di] out: y * SiLU(z), 16-bit */
    int act_type;
    float *chunk_scratch;   /* bmc_scan_prefill_scratch_floats(T, di, N) floats */
} bmc_scan_args;
size_t bmc_scan_prefill_scratch_floats(int T, int di, int N);
/* The selective scan over T tokens of one stream, chunked in time: each
 * chunk runs from a zero state, a short pass carries the true state across
 * chunk boundaries (and writes the final state and conv state), and each
 * chunk reruns from its true start state to produce y. */
cudaError_t bmc_scan_prefill(const bmc_scan_args *a, cudaStream_t stream);

/* ---- scan_step.cu ---------------------------------------------------------- */
typedef struct bmc_step_scan_args {
    int nb, di, R, N;
    const float *xz;        /* [nb, 2*di]: u (already convolved) then z */
    const float *xdbl;      /* [nb, ldxdbl]: dt (R), B (N), C (N) */
    int ldxdbl;
    const void *dt_proj;    /* [di, R] 16-bit */
    const float *dt_bias, *A, *D;
    float *const *state_ptrs; /* [nb]; each state 16-byte aligned (cudaMalloc) */
    long long ssm_offset;   /* floats from a state's start to this layer's ssm state; a multiple of 4 */
    /* GEMV path (batch up to BMC_MAX_STEP_ROWS): y f32 [nb, di], PDL and an
     * L2 prefetch of weights a later kernel reads */
    float *y;
    const void *prefetch;
    size_t prefetch_bytes;
    /* Row path (many streams; set y16, leave y NULL): y as 16-bit (act_type,
     * the weights' type) for the out_proj GEMM, with y_lo_rows > 0 the
     * remainder, 16-bit (y - hi), at row b + y_lo_rows. A row whose state pointer
     * is NULL is padding: its state is not touched and its y is zero (both
     * halves). No PDL. */
    void *y16;
    int act_type;
    int y_lo_rows;
} bmc_step_scan_args;
/* One token per stream: delta = softplus(dt_proj . dt + bias), the state
 * update s = exp(delta A) s + delta u B, y = C . s + D u, gated by SiLU(z);
 * each state entry read and written once. GEMV path: 16 lanes per channel,
 * one per state entry, one block row per stream. Row path: one thread per
 * (stream, channel) holding the channel's 16 state entries (a warp moves
 * 32 x 64 contiguous bytes of one stream's state), a block's dt_proj rows
 * and its streams' dt, B, C in shared memory. */
cudaError_t bmc_scan_step(const bmc_step_scan_args *a, int wtype, cudaStream_t stream, int pdl);

/* ---- x_proj_rows.cu -------------------------------------------------------- */
/* Row path: y[b, j] = sum_k W[j, k] u[b, k] for b < rows, j < n_out, k < K:
 * f32 u (row stride ldu, 16-byte aligned rows: ldu % 4 == 0) times the
 * 16-bit W [n_out, K] (wtype; 16-byte aligned, K % 8 == 0), f32 y (row
 * stride ldy), in a fixed order (the same bits every run), one launch, no
 * scratch. Variants 1 .. 7: CUDA-core tiles, f32 products and sums, each
 * block over all of K. Variants 8 .. BMC_X_PROJ_VARIANTS: tensor cores
 * (bf16 W, sm_90 only; cudaErrorNotSupported otherwise), u as two bf16
 * halves (hi, lo: |u - hi - lo| <= 2^-16 |u|) with f32 accumulation, K split
 * over a cluster whose blocks sum their partial tiles in distributed shared
 * memory; (BM rows a tile, CS blocks a cluster) = 8: (32, 8), 9: (32, 16),
 * 10: (64, 8), 11: (64, 16), 12: (64, 4). variant 0 lets the function
 * choose from the rows, the weight type and the device (x_proj_rows.cu). */
#define BMC_X_PROJ_VARIANTS 12
cudaError_t bmc_x_proj_rows(const float *u, int ldu, int rows, int K, const void *W, int wtype, int n_out, float *y,
                            int ldy, int variant, cudaStream_t stream, int pdl);
/* The variant bmc_x_proj_rows runs for `variant` (0: its choice for these
 * rows and wtype on the current device); *bm, *cs: a tensor-core variant's
 * BM and CS, 0 for a CUDA-core one (harness). */
int bmc_x_proj_rows_variant(int variant, int rows, int wtype, int *bm, int *cs);

/* ---- conv_step.cu ---------------------------------------------------------- */
/* Row path: the causal conv of one token per stream. For row b < nb and
 * channel c < di: x = xz[b * ldxz + c] (in_proj output, bias included),
 * u = SiLU(conv_b[c] + sum_k w[c, k] hist[k] + w[c, K-1] x) with the
 * stream's conv history (state_ptrs[b] + conv_offset, [di, K-1] oldest
 * first), which then shifts in x. u replaces x in xz (f32, for x_proj and
 * the scan). NULL state pointer: padding, u = 0, no state touched. */
typedef struct bmc_conv_step_args {
    int nb, di, K;
    float *xz;
    int ldxz;
    /* > 0: xz holds two partial products (the in_proj GEMM of the hi and lo
     * halves of its input), row b and row b + lo_rows: both x and z are
     * summed into row b first */
    int lo_rows;
    float *const *state_ptrs;
    long long conv_offset;
    const float *conv_w, *conv_b;
} bmc_conv_step_args;
cudaError_t bmc_conv_step(const bmc_conv_step_args *a, cudaStream_t stream, int pdl);

/* ---- moe_gemm.cu ------------------------------------------------------------- */
/* Row path MoE: a grouped GEMM over rows sorted by expert. Rows
 * [expert_start[e], expert_start[e+1]) of the sorted order use expert e
 * (expert_start on the device, E+1 ints: no host round trip). Sorted row r
 * reads its input from X[r * ldx]: the rows come already in that order
 * (bmc_group_rows, bmc_gather_rows_planes). Tensor cores (16-bit
 * operands, f32 accumulation); each block computes one tile of rows of one
 * expert against a tile of that expert's output features, so an expert's
 * weights are streamed once per tile of rows (once per step below 64 rows).
 * expert_start NULL: a dense MLP, all max_rows rows with "expert" 0.
 * x_lo_rows > 0: the input is f32 split in two 16-bit halves, hi + lo, the
 * lo row x_lo_rows rows after the hi row; both are multiplied (f32-grade
 * activations, weights read once). y_lo_rows > 0: 16-bit outputs are
 * written the same way.
 * Epilogues:
 *  - BMC_MOE_GATED (fc1, swiglu): W has 2*N rows; y16[r, f] = act(a_f + b_f) * (a_{N+f} + b_{N+f});
 *  - BMC_MOE_ACT (fc1): y16[r, n] = act(a_n + b_n);
 *  - BMC_MOE_SCATTER (fc2): t = y_rows[r] (NULL: r), y[t, n] (+)= gates[t] (NULL: 1) * (a_n + b_n), f32.
 * bias: NULL or per expert (bias_stride floats apart). */
#define BMC_MOE_GATED 0
#define BMC_MOE_ACT 1
#define BMC_MOE_SCATTER 2
#define BMC_MOE_PARTIAL 3 /* split K over k_split slices: y f32 [k_split][max_rows][N] at the sorted rows, no bias or gate
                             (bmc_scatter_parts finishes) */
typedef struct bmc_moe_gemm_args {
    int mode, N, K, E;
    int max_rows;            /* rows in the sorted order at most (sizes the grid) */
    const void *X;
    int ldx;
    int x_lo_rows, y_lo_rows;
    const void *W;           /* expert 0; experts expert_stride elements apart, each [rows_w, K] */
    long long expert_stride;
    const int *expert_start;
    const float *bias;
    long long bias_stride;
    int act;                 /* BM_ACTIVATION_GELU / SILU */
    void *y;                 /* y16 (GATED, ACT) or f32 (SCATTER) */
    int ldy;
    const int *y_rows;       /* SCATTER */
    const float *gates;      /* SCATTER */
    int add;                 /* SCATTER: add to y (parallel layers) */
    int variant;             /* 0: chosen from the rows per expert; 1..9: a forced tile shape, 10: the streaming
                                kernel, 11: its weight traffic alone (a measurement; junk output), 12: the direct
                                streaming kernel (weights straight into registers), 13: its weight loads alone
                                (junk output) (harness), 14: the TMA + wgmma kernel (moe_gemm_sm90.cu; sm_90a
                                builds on an sm_90 device only, else cudaErrorNotSupported) */
    int k_split;             /* PARTIAL: slices of K (grid z), >= 1 */
    int pdl;                 /* the launch's `pdl` (above), for the GEMM kernel and the wgmma path's gather */
} bmc_moe_gemm_args;
cudaError_t bmc_moe_gemm(const bmc_moe_gemm_args *a, int wtype, cudaStream_t stream);
/* moe_gemm_sm90.cu: the same GEMM on the TMA + wgmma path (variant 14).
 * cudaErrorNotSupported where it cannot run: not an sm_90 device, a build
 * without sm_90a code, bmc_moe_sm90_probe not yet run on this device, or
 * shapes TMA cannot address (K or the features not a multiple of 8,
 * misaligned pointers). */
cudaError_t bmc_moe_gemm_sm90(const bmc_moe_gemm_args *a, int wtype, cudaStream_t stream);
/* fc1 then fc2 of the same routing (fc2's input: fc1's output, the same
 * expert_start, E >= 2) in one launch of the same kernel: one list of units,
 * fc1's first, dealt round robin, so the blocks that run out of fc1 units
 * go on to fc2's instead of idling at the end of an fc1 launch. A producer
 * starts an fc2 unit of expert e once done[e] counts every consumer warp of
 * every fc1 unit of e (each counts itself after its outputs, with release
 * semantics; the producer reads with acquire). done: E ints, zero at the
 * launch (the decode row path's grouping zeroes them), left nonzero.
 * The same bits as the two launches. cudaErrorNotSupported where either
 * launch would not run on this path, their ring stages differ or the
 * arguments do not chain; the caller then launches them one after the
 * other. Uses fc1->pdl. */
cudaError_t bmc_moe_chain_sm90(const bmc_moe_gemm_args *fc1, const bmc_moe_gemm_args *fc2, int *done, int wtype,
                               cudaStream_t stream);
/* Whether the wgmma kernel runs on the current device: runs a one-thread
 * kernel the first time for each device (synchronising with it: not during
 * stream capture), cached after. 1 yes, 0 no. */
int bmc_moe_sm90_probe(void);
/* The cached answer of bmc_moe_sm90_probe for the current device (0 before
 * the probe ran); never launches anything. */
int bmc_moe_sm90_ready(void);
/* fc1 then fc2 (bmc_moe_gemm each, variant 0): chained in one launch
 * (bmc_moe_chain_sm90, done: its counters, zero) where both take the wgmma
 * path and chain, unless BM_CUDA_MOE_CHAIN=0; else two launches. */
cudaError_t bmc_moe_mlp(const bmc_moe_gemm_args *fc1, const bmc_moe_gemm_args *fc2, int *done, int wtype,
                        cudaStream_t stream);
/* The K slices for fc2 chained after fc1 over `sms` blocks (gated fc1 of
 * F features from d, fc2 back to d): the split (1 .. 8) whose units, dealt
 * round robin for an even routing, leave the fullest block the fewest
 * weight bytes, with a small cost per slice. */
int bmc_moe_chain_split(int rows, int E, int d, int F, int gated, int sms);
/* The K slices for fc2 after fc1 in bmc_moe_mlp: bmc_moe_chain_split where
 * the two chain, else bmc_moe_fc2_split (BM_CUDA_FC2_SPLIT=n forces n). */
int bmc_moe_mlp_split(int rows, int E, int d, int F, int gated);
/* The K slices (PARTIAL) in which the decode row path runs fc2 for `rows`
 * rows: enough units of work for every SM; never more than 8. */
int bmc_moe_fc2_split(int rows);

/* ---- router_step.cu -------------------------------------------------------- */
typedef struct bmc_router_step_args {
    int nb, d, n_experts; /* n_experts 1: dense MLP (expert 0, gate 1) */
    int add;              /* 1: res_out = res_in + h; 0: normalise res_in as is (parallel branch) */
    const float *res_in, *h_in;
    float *res_out;
    const float *norm_w;
    float eps;
    float *normed;        /* [nb, d] out */
    const float *router_w, *router_b; /* f32 [E, d], [E] */
    float *gates;         /* [nb] out */
    int *slot_expert, *slot_count, *slot_rows; /* out, BMC_MAX_STEP_ROWS slots */
    /* each chosen expert's weights (base + e * stride, bytes), fetched into L2 */
    const void *prefetch_expert_base;
    size_t prefetch_expert_stride, prefetch_expert_bytes;
} bmc_router_step_args;
/* Residual add, RMSNorm, router logits, top-1 and sigmoid gate, and the
 * grouping of the batch rows by expert (slots in increasing expert order),
 * all in one block: no host round trip. */
cudaError_t bmc_router_step(const bmc_router_step_args *a, cudaStream_t stream, int pdl);

/* ---- route_prefill.cu ------------------------------------------------------ */
/* Top-1 routing of T rows (f32 normed [T, d], f32 router [E, d] + bias):
 * expert_of[t], gate[t] = sigmoid(best logit), and a stable grouping by
 * expert: order[i] = the token at sorted position i, expert_start[E+1]. The
 * starts are also copied to host_starts (pinned, E+1 ints): the host sizes
 * each expert's GEMM from them, so the caller synchronises before reading. */
cudaError_t bmc_route_prefill(const float *normed, int T, int d, const float *router_w, const float *router_b, int E,
                              int *expert_of, float *gate, int *order, int *expert_start, int *host_starts,
                              cudaStream_t stream);
/* The same with the live row count on the device: only the first *n_dev of
 * T rows (the rest are padding) are routed and grouped; order[i] = i for the
 * padding positions i >= *n_dev, expert_start[E] = *n_dev. Nothing is copied
 * to the host. The decode row path now routes inside bmc_add_rmsnorm and
 * groups with bmc_group_rows; this stays as the reference and the baseline
 * of their harness (cuda/dev/norm_route.cu). */
cudaError_t bmc_route_rows(const float *normed, int T, const int *n_dev, int d, const float *router_w,
                           const float *router_b, int E, int *expert_of, float *gate, int *order, int *expert_start,
                           cudaStream_t stream);

/* ---- moe_rows.cu ----------------------------------------------------------- */
/* The decode row path's grouping of its rows by expert after the routing
 * norm, and optionally the gather of their 16-bit rows in that order, in one
 * launch (one block per row, none waiting on another; pdl: each block waits
 * before it reads anything). The stable counting sort of the live rows (below
 * *n_dev; n_dev NULL: all rows) by expert_of: order[i] = the row at sorted
 * position i, ascending expert and ties by row index, order[i] = i for the
 * padding positions i >= *n_dev; pos_of its inverse (pos_of[order[i]] = i);
 * expert_start[E+1] the exclusive prefix of the experts' live rows, with
 * expert_start[E] = *n_dev. The padding rows' expert_of is not read. With
 * dst, as bmc_gather_rows_planes through that order: dst[p * plane_rows + i]
 * = src[p * plane_rows + order[i]] for i < rows, p < planes. */
typedef struct bmc_group_args {
    int rows;                           /* the bucket, padding rows included */
    const int *n_dev;                   /* the live rows, on the device (NULL: all) */
    int E;                              /* 2..64 */
    const int *expert_of;               /* [rows] */
    int *order, *pos_of, *expert_start; /* out: [rows], [rows], [E+1] */
    const void *src;                    /* 16-bit rows of d; planes blocks of plane_rows (>= rows) rows */
    int d, planes, plane_rows;
    void *dst;                          /* NULL: no gather */
    int *zero, n_zero;                  /* zero[0 .. n_zero) set to 0 (bmc_moe_chain_sm90's counters); NULL: none */
} bmc_group_args;
cudaError_t bmc_group_rows(const bmc_group_args *a, cudaStream_t stream, int pdl);
/* dst[i] = src[order[i]] for i < rows (16-bit rows of d). */
cudaError_t bmc_gather_rows(const void *src, const int *order, int rows, int d, void *dst, cudaStream_t stream);
/* The same for `planes` blocks of rows plane_rows apart, each gathered by
 * the same order: dst[p * plane_rows + i] = src[p * plane_rows + order[i]]
 * (the hi and lo halves of the row path's 16-bit inputs). */
cudaError_t bmc_gather_rows_planes(const void *src, const int *order, int rows, int d, int planes, int plane_rows,
                                   void *dst, cudaStream_t stream);

/* ---- gated_act.cu ---------------------------------------------------------- */
/* m[i, f] = act(a[i, f] + b1) * (a[i, F + f] + b2) (swiglu) or act(a[i, f] + b)
 * for 16-bit a [rows, g*F] and m [rows, F]. bias: NULL or per expert [E, g*F],
 * the expert of row i being expert_of[order[i]]. */
cudaError_t bmc_gated_act(const void *a, int rows, int F, int swiglu, int act, const float *bias, const int *order,
                          const int *expert_of, void *m, int act_type, cudaStream_t stream);

/* ---- moe_scatter.cu -------------------------------------------------------- */
/* h[t] (+)= gate[t] * (y[i] + bias[e]) with t = order[i] (NULL: t = i),
 * gate NULL = 1, bias NULL = 0 (per expert [E, d], e = expert_of[t]). */
cudaError_t bmc_scatter_rows(const float *y, const int *order, const float *gate, const float *bias,
                             const int *expert_of, int rows, int d, int add, float *h, cudaStream_t stream);
/* The same over the sum of `parts` partial results part_stride floats apart
 * (a split-K GEMM's, summed in order), for the rows i < *n_dev when n_dev is
 * set (the decode row path's live rows). */
cudaError_t bmc_scatter_parts(const float *y, int parts, long long part_stride, const int *n_dev, const int *order,
                              const float *gate, const float *bias, const int *expert_of, int rows, int d, int add,
                              float *h, cudaStream_t stream, int pdl);

/* ---- sample.cu ------------------------------------------------------------- */
/* bm_sample on the device (blackmamba.h, Sampling), one block per row of
 * logits, for greedy or at most BMC_SAMPLE_MAX_K candidates (top_k, or a
 * vocabulary that small). recent: device array of n_recent ids penalised in
 * every row (any order, repeats allowed). The draws u are made by the host
 * (it advances the generators). Writes each row's token, or -1 when the row
 * has no candidate, or -2 when the row needs more room than the kernel has
 * (the caller then samples that row on the host). */
#define BMC_SAMPLE_MAX_K 1024
#define BMC_SAMPLE_MAX_RECENT 1024
typedef struct bmc_sample_args {
    const float *logits;
    long long ld;          /* floats from one row to the next */
    int rows;              /* <= BMC_MAX_STEP_ROWS */
    int n_valid;           /* ids below this are candidates */
    float temperature, top_p, min_p, repeat_penalty;
    int top_k;
    const int32_t *recent;
    int n_recent;
    double u[BMC_MAX_STEP_ROWS];
    const double *u_dev;   /* NULL: u above (rows <= BMC_MAX_STEP_ROWS); else [rows] on the device, any rows */
    int32_t *tokens;       /* [rows] */
} bmc_sample_args;
cudaError_t bmc_sample(const bmc_sample_args *a, cudaStream_t stream);

/* ---- decode_fused.cu ------------------------------------------------------- */
/* One decode step of one stream through every layer in one persistent,
 * cooperative kernel (sm_90): weights streamed into shared memory ahead of
 * the computation, phases separated by grid barriers. Layers must be plain
 * Mamba ("r") or plain MLP/MoE ("1", "N"); parallel layers take the kernel
 * chain. Leaves the residual in res0 (even layer count) or res1 (odd) and
 * the last block's output in h, as the chain does, for the LM head. */
typedef struct bmc_fused_layer {
    int mamba;                 /* 1: Mamba layer; 0: MLP/MoE layer */
    int n_experts;             /* MLP/MoE: 1 (dense) or the expert count */
    const float *norm;         /* RMSNorm weight [d] */
    const void *in_proj, *x_proj, *dt_proj, *out_proj;
    const float *in_proj_bias, *conv_w, *conv_b, *dt_bias, *A, *D, *out_proj_bias;
    long long conv_offset, ssm_offset; /* floats into the state (bmi_state_*_offset) */
    const float *router_w, *router_b;  /* f32 [E, d], [E]; NULL when dense */
    const void *fc1, *fc2;             /* experts back to back */
    const float *fc1_bias, *fc2_bias;  /* [E, g*F], [E, d] or NULL */
} bmc_fused_layer;

typedef struct bmc_fused_step_args {
    const bmc_fused_layer *layers; /* device array [n_layers] */
    int n_layers, d, di, R, K, F, swiglu, act, wtype;
    float eps;
    const int32_t *token;          /* device: the stream's input token */
    const void *embedding;
    float *const *state_ptrs;      /* device: [0] is the stream's state */
    float *res0, *res1, *h, *xz, *xdbl, *yg, *m; /* decode scratch, one row each */
    unsigned *barrier;             /* one counter, zeroed by bmc_fused_step before the launch */
    /* NULL, or per block [2 * barriers + 4] u64 (a measurement aid, see
     * bmc_fused_trace_print): %globaltimer at each barrier's arrival and
     * release; then 8 u64 of clock cycles (see bmc_fused_trace_print), ns the
     * consumers waited for tiles, ns the producer waited for a free slot, ns
     * it waited for the router, tiles taken */
    unsigned long long *trace;
    int trace_words;               /* u64 per block of trace (bmc_fused_trace_words) */
    int debug_flags;               /* 0; measurement only (wrong results): 1 skips the dot products,
                                      2 reads no matrix weights at all */
    /* filled by bmc_fused_step_plan */
    int grid, slots, smem_bytes;
    int tr_in, tr_x, tc_scan, tr_out, tr_router, tr_fc1, tr_fc2;
    int max_conv_rows, max_scan_ch;
} bmc_fused_step_args;

/* Chooses the tiling, ring size and grid for `device` and sets the kernel's
 * shared-memory limit. cudaErrorNotSupported: the device (before sm_90, no
 * cooperative launch) or the sizes are outside what the kernel does. */
cudaError_t bmc_fused_step_plan(bmc_fused_step_args *a, int device);
/* Enqueues the counter reset and the kernel (capturable). */
cudaError_t bmc_fused_step(const bmc_fused_step_args *a, cudaStream_t stream);
/* u64 per block of a->trace, and a summary of one step's trace (host copy)
 * per phase kind to `f` (BM_CUDA_FUSED_TRACE=1 in bm-bench and the like). */
size_t bmc_fused_trace_words(const bmc_fused_step_args *a, const int *layer_mamba);
void bmc_fused_trace_print(const bmc_fused_step_args *a, const int *layer_mamba, const unsigned long long *trace,
                           void *f);

#endif
