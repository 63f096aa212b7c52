/* Decode projections: y = W x for a few token rows (one per stream), W in a
 * 16-bit type, f32 accumulation. At batch 1 this is pure weight streaming,
 * so the kernel is built around keeping 16-byte weight loads in flight:
 * each warp owns a pair of output rows (optionally shared by `ksplit` warps
 * that split K), the first loads are issued before waiting on the previous
 * kernel (PDL), and the inputs live in shared memory as f32.
 *
 * Fused at the ends so that a layer needs few launches:
 *  - prologue: the residual add + RMSNorm (in_proj) or + LayerNorm (LM
 *    head), computed by every block from L2-resident vectors;
 *  - epilogue: conv + SiLU with the conv-state update (in_proj), the gated
 *    activation (fc1: the warp's pair is rows f and F+f), the routing scale
 *    (fc2). MoE projections read the expert index from the device. */
#include "device_util.cuh"
#include "kernels.cuh"

#define GEMV_THREADS 256
#define GEMV_WARPS (GEMV_THREADS / 32)
#define GEMV_UNROLL 4

/* The STORE_ROUTE epilogue (kernels.cuh). Every thread of the block takes
 * part: the block's partial sums go through shared memory to a global slot
 * per block, and the last block reduces them in block order, so the routing
 * is the same on every run. */
template <int MAXB>
__device__ void store_and_route(const bmc_gemv_args &a, float (*red)[2][MAXB], int count, int pair, int kslice,
                                int ksplit, int row_a, int row_b, bool valid_a, bool valid_b) {
    constexpr int NP = 1 + BMC_MAX_FUSED_EXPERTS; /* v^2, then one dot per expert */
    __shared__ float part[GEMV_WARPS][MAXB][NP];
    __shared__ bool last;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, E = a.n_experts;
    for (int i = threadIdx.x; i < GEMV_WARPS * MAXB * NP; i += GEMV_THREADS) (&part[0][0][0])[i] = 0.0f;
    __syncthreads();
    if (kslice == 0 && lane < count) {
        const int b = lane;
        float t2[2] = {0.0f, 0.0f};
        for (int j = 0; j < ksplit; j++) {
            t2[0] += red[warp + j][0][b];
            t2[1] += red[warp + j][1][b];
        }
        const int rows2[2] = {row_a, row_b};
        const bool valid2[2] = {valid_a, valid_b};
        for (int i = 0; i < 2; i++) {
            if (!valid2[i]) continue;
            const int row = rows2[i];
            const float h = t2[i] + (a.bias ? a.bias[row] : 0.0f);
            const float v = a.res_in[(size_t)b * a.rows + row] + h;
            a.y[(size_t)b * a.ldy + row] = h;
            a.res_out[(size_t)b * a.rows + row] = v;
            part[warp][b][0] += v * v;
            for (int e = 0; e < (E >= 2 ? E : 0); e++) part[warp][b][1 + e] += a.route_w[(size_t)e * a.rows + row] * v;
        }
    }
    __syncthreads();
    const int blocks = gridDim.x * gridDim.y, block = blockIdx.y * gridDim.x + blockIdx.x;
    const int nb = a.nb, per_block = nb * (1 + E);
    for (int i = threadIdx.x; i < per_block; i += GEMV_THREADS) {
        const int b = i / (1 + E), j = i % (1 + E);
        float sum = 0.0f;
        for (int w = 0; w < GEMV_WARPS; w++) sum += part[w][b][j];
        a.route_partials[(size_t)block * per_block + i] = sum;
    }
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) last = atomicAdd(a.route_counter, 1u) == (unsigned)(blocks - 1);
    __syncthreads();
    if (!last) return;
    __threadfence(); /* see every other block's partials */
    __shared__ float total[BMC_MAX_STEP_ROWS * NP];
    for (int i = warp; i < per_block; i += GEMV_WARPS) {
        float sum = 0.0f;
        for (int blk = lane; blk < blocks; blk += 32) sum += __ldcg(&a.route_partials[(size_t)blk * per_block + i]);
        sum = bmc_warp_sum(sum);
        if (lane == 0) total[i] = sum;
    }
    __syncthreads();
    if (threadIdx.x != 0) return;
    int chosen[BMC_MAX_STEP_ROWS];
    for (int b = 0; b < nb; b++) {
        const float *tb = total + b * (1 + E);
        const float scale = rsqrtf(tb[0] / (float)a.rows + a.eps);
        int best = 0;
        float best_logit = 0.0f;
        for (int e = 0; e < E; e++) {
            const float l = scale * tb[1 + e] + a.route_b[e];
            if (e == 0 || l > best_logit) {
                best_logit = l;
                best = e;
            }
        }
        chosen[b] = E >= 2 ? best : 0;
        a.gates_out[b] = E >= 2 ? bmc_sigmoid(best_logit) : 1.0f;
        a.scales_out[b] = scale;
    }
    int slot = 0;
    for (int e = 0; e < E && slot < BMC_MAX_STEP_ROWS; e++) {
        int n = 0;
        for (int b = 0; b < nb; b++)
            if (chosen[b] == e) a.slot_rows_out[slot * BMC_MAX_STEP_ROWS + n++] = b;
        if (n == 0) continue;
        a.slot_expert_out[slot] = e;
        a.slot_count_out[slot] = n;
        slot++;
    }
    for (; slot < BMC_MAX_STEP_ROWS; slot++) {
        a.slot_expert_out[slot] = 0;
        a.slot_count_out[slot] = 0;
    }
    *a.route_counter = 0u; /* every block has counted: ready for the next launch */
}

/* ROUTE: the STORE_ROUTE epilogue is compiled only into its own
 * instantiation, so the plain projections keep their register budget. */
/* PRO and EPI >= 0 compile the kernel for that prologue and epilogue only
 * (the batch-1 step's combinations: the code its blocks fetch from a cold
 * instruction cache stays short); -1 reads them from the arguments. */
template <typename T, int MAXB, bool ROUTE, int PRO, int EPI>
__global__ void __launch_bounds__(GEMV_THREADS) gemv_kernel(const bmc_gemv_args a, int ksplit, int gated) {
    const int prologue = PRO >= 0 ? PRO : a.prologue, epilogue = EPI >= 0 ? EPI : a.epilogue;
    extern __shared__ float4 gemv_smem[];
    float *xs = reinterpret_cast<float *>(gemv_smem); /* [count, K] inputs */
    __shared__ float red[GEMV_WARPS][2][MAXB];
    __shared__ float scratch[33];
    __shared__ int s_rows[MAXB];
    __shared__ int s_count, s_expert;

    bmc_grid_trigger();
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int pairs_per_block = GEMV_WARPS / ksplit;
    const int pair = blockIdx.x * pairs_per_block + warp / ksplit;
    const int kslice = warp % ksplit;
    const int K = a.K, nchunks = K / 8, step = ksplit * 32, c0 = kslice * 32 + lane;
    const int half_rows = a.rows / 2;
    int row_a, row_b;
    bool valid_a, valid_b;
    if (gated) {
        row_a = pair;
        row_b = pair + half_rows;
        valid_a = valid_b = pair < half_rows;
    } else {
        row_a = 2 * pair;
        row_b = 2 * pair + 1;
        valid_a = row_a < a.rows;
        valid_b = row_b < a.rows;
    }
    const bool moe = a.slot_expert != nullptr;
    const T *W = reinterpret_cast<const T *>(a.W);
    const uint4 *wa = nullptr, *wb = nullptr;
    uint4 va[GEMV_UNROLL], vb[GEMV_UNROLL];
    auto load = [&](int c) {
#pragma unroll
        for (int u = 0; u < GEMV_UNROLL; u++) {
            const int cc = c + u * step;
            va[u] = valid_a && cc < nchunks ? bmc_load_stream(wa + cc) : make_uint4(0, 0, 0, 0);
            vb[u] = valid_b && cc < nchunks ? bmc_load_stream(wb + cc) : make_uint4(0, 0, 0, 0);
        }
    };
    if (threadIdx.x == 0) {
        const unsigned part = blockIdx.y * gridDim.x + blockIdx.x, parts = gridDim.x * gridDim.y;
        bmc_prefetch_l2(a.prefetch[0], a.prefetch_bytes[0], part, parts);
        bmc_prefetch_l2(a.prefetch[1], a.prefetch_bytes[1], part, parts);
    }
    if (!moe) { /* the weights do not depend on the previous kernel: start fetching now */
        wa = reinterpret_cast<const uint4 *>(W + (size_t)row_a * K);
        wb = reinterpret_cast<const uint4 *>(W + (size_t)row_b * K);
        load(c0);
    }
    /* The batch-1 in_proj's conv history, for the epilogue's lane 0 (the
     * lane that finishes stream 0: this instantiation runs one stream and,
     * by gemv_for, no slot table): only this layer's in_proj writes it,
     * one step ago (an earlier graph launch), and the state pointers were
     * copied in before the step's first kernel. */
    constexpr bool HIST_EARLY = EPI == BMC_EPI_CONV_SILU && MAXB == 1;
    float hist_early[HIST_EARLY ? 2 : 1][HIST_EARLY ? BMC_MAX_CONV - 1 : 1];
    if constexpr (HIST_EARLY)
        if (kslice == 0 && lane == 0) {
            const int rows2[2] = {row_a, row_b};
            const bool valid2[2] = {valid_a, valid_b};
            const float *sp = a.state_ptrs[0];
            const int km1 = a.d_conv - 1;
#pragma unroll
            for (int i = 0; i < 2; i++)
#pragma unroll
                for (int k = 0; k < BMC_MAX_CONV - 1; k++)
                    hist_early[i][k] = sp && valid2[i] && rows2[i] < a.di && k < km1
                                           ? sp[a.conv_offset + (size_t)rows2[i] * km1 + k]
                                           : 0.0f;
        }
    bmc_grid_wait();
    if (threadIdx.x == 0) {
        if (moe) {
            s_count = a.slot_count[blockIdx.y];
            s_expert = a.slot_expert[blockIdx.y];
            for (int i = 0; i < s_count && i < MAXB; i++) s_rows[i] = a.slot_rows[blockIdx.y * BMC_MAX_STEP_ROWS + i];
        } else {
            s_count = a.nb;
            s_expert = 0;
            for (int i = 0; i < MAXB; i++) s_rows[i] = i;
        }
    }
    __syncthreads();
    const int count = s_count < MAXB ? s_count : MAXB;
    if (count == 0) return; /* a slot no expert needed this step */
    const int expert = s_expert;
    if (a.prefetch_expert_base && threadIdx.x == 0)
        bmc_prefetch_l2((const char *)a.prefetch_expert_base + (size_t)expert * a.prefetch_expert_stride,
                        a.prefetch_expert_bytes, blockIdx.x, gridDim.x);
    if (moe) {
        W += (size_t)expert * (size_t)a.expert_stride;
        wa = reinterpret_cast<const uint4 *>(W + (size_t)row_a * K);
        wb = reinterpret_cast<const uint4 *>(W + (size_t)row_b * K);
        load(c0);
    }

    /* ---- prologue: the inputs, as f32 in shared memory ---- */
    if (prologue == BMC_PRO_LOAD) {
        for (int b = 0; b < count; b++) {
            const float4 *src = reinterpret_cast<const float4 *>(a.x + (size_t)s_rows[b] * a.ldx);
            float4 *dst = reinterpret_cast<float4 *>(xs + (size_t)b * K);
            for (int k4 = threadIdx.x; k4 < K / 4; k4 += GEMV_THREADS) dst[k4] = src[k4];
        }
    } else if (prologue == BMC_PRO_SCALED) {
        for (int b = 0; b < count; b++) {
            const float *src = a.x + (size_t)s_rows[b] * a.ldx;
            const float scale = a.scales[s_rows[b]];
            float *dst = xs + (size_t)b * K;
            for (int k = threadIdx.x; k < K; k += GEMV_THREADS) dst[k] = src[k] * scale * a.norm_w[k];
        }
    } else {
        const bool writer = a.res_out && blockIdx.x == 0 && blockIdx.y == 0;
        for (int b = 0; b < count; b++) {
            float *x = xs + (size_t)b * K;
            const float *r = a.res_in + (size_t)b * K, *h = a.h_in + (size_t)b * K;
            float sum = 0.0f, ss = 0.0f;
            for (int k = threadIdx.x; k < K; k += GEMV_THREADS) {
                float v = r[k] + h[k];
                x[k] = v;
                if (writer) a.res_out[(size_t)b * K + k] = v;
                sum += v;
                ss += v * v;
            }
            if (prologue == BMC_PRO_ADD_RMSNORM) {
                const float scale = rsqrtf(bmc_block_sum(ss, scratch) / (float)K + a.eps);
                for (int k = threadIdx.x; k < K; k += GEMV_THREADS) x[k] = x[k] * scale * a.norm_w[k];
            } else {
                const float mean = bmc_block_sum(sum, scratch) / (float)K;
                float var = 0.0f;
                for (int k = threadIdx.x; k < K; k += GEMV_THREADS) var += (x[k] - mean) * (x[k] - mean);
                const float rstd = rsqrtf(bmc_block_sum(var, scratch) / (float)K + a.eps);
                for (int k = threadIdx.x; k < K; k += GEMV_THREADS)
                    x[k] = (x[k] - mean) * rstd * a.norm_w[k] + a.norm_b[k];
            }
        }
    }
    __syncthreads();

    /* ---- the products ---- */
    float acc_a[MAXB], acc_b[MAXB];
#pragma unroll
    for (int b = 0; b < MAXB; b++) acc_a[b] = acc_b[b] = 0.0f;
    for (int c = c0; c < nchunks; c += step * GEMV_UNROLL) {
        if (c != c0) load(c);
#pragma unroll
        for (int u = 0; u < GEMV_UNROLL; u++) {
            const int cc = c + u * step;
            if (cc >= nchunks) break;
            float fa[8], fb[8];
            bmc_unpack<T>::run(va[u], fa);
            bmc_unpack<T>::run(vb[u], fb);
#pragma unroll
            for (int b = 0; b < MAXB; b++) {
                if (b >= count) break;
                const float4 *xp = reinterpret_cast<const float4 *>(xs + (size_t)b * K + (size_t)cc * 8);
                const float4 x0 = xp[0], x1 = xp[1];
                acc_a[b] += fa[0] * x0.x + fa[1] * x0.y + fa[2] * x0.z + fa[3] * x0.w + fa[4] * x1.x + fa[5] * x1.y +
                            fa[6] * x1.z + fa[7] * x1.w;
                acc_b[b] += fb[0] * x0.x + fb[1] * x0.y + fb[2] * x0.z + fb[3] * x0.w + fb[4] * x1.x + fb[5] * x1.y +
                            fb[6] * x1.z + fb[7] * x1.w;
            }
        }
    }
#pragma unroll
    for (int b = 0; b < MAXB; b++) {
        acc_a[b] = bmc_warp_sum(acc_a[b]);
        acc_b[b] = bmc_warp_sum(acc_b[b]);
    }
    if (lane == 0) {
#pragma unroll
        for (int b = 0; b < MAXB; b++) {
            red[warp][0][b] = acc_a[b];
            red[warp][1][b] = acc_b[b];
        }
    }
    __syncthreads();
    if constexpr (ROUTE) {
        store_and_route<MAXB>(a, red, count, pair, kslice, ksplit, row_a, row_b, valid_a, valid_b);
        return;
    }
    if (kslice != 0 || lane >= count) return;

    /* ---- epilogue: lane b finishes batch row b ---- */
    const int b = lane;
    float ta = 0.0f, tb = 0.0f;
    for (int j = 0; j < ksplit; j++) {
        ta += red[warp + j][0][b];
        tb += red[warp + j][1][b];
    }
    const int rb = s_rows[b];
    const float *bias = a.bias ? a.bias + (size_t)expert * (size_t)a.rows : nullptr;
    if (bias) {
        if (valid_a) ta += bias[row_a];
        if (valid_b) tb += bias[row_b];
    }
    float *y = a.y + (size_t)rb * a.ldy;
    switch (epilogue) {
    case BMC_EPI_GATED:
        if (valid_a) y[row_a] = (a.act == 1 ? bmc_silu(ta) : bmc_gelu(ta)) * tb;
        break;
    case BMC_EPI_ACT:
        if (valid_a) y[row_a] = a.act == 1 ? bmc_silu(ta) : bmc_gelu(ta);
        if (valid_b) y[row_b] = a.act == 1 ? bmc_silu(tb) : bmc_gelu(tb);
        break;
    case BMC_EPI_SCALE_STORE:
    case BMC_EPI_SCALE_ADD: {
        const float g = a.gates[rb];
        const bool add = epilogue == BMC_EPI_SCALE_ADD;
        if (valid_a) y[row_a] = (add ? y[row_a] : 0.0f) + g * ta;
        if (valid_b) y[row_b] = (add ? y[row_b] : 0.0f) + g * tb;
        break;
    }
    case BMC_EPI_CONV_SILU: {
        const int rows2[2] = {row_a, row_b};
        const bool valid2[2] = {valid_a, valid_b};
        const float val2[2] = {ta, tb};
#pragma unroll
        for (int i = 0; i < 2; i++) {
            if (!valid2[i]) continue;
            const int row = rows2[i];
            if (row >= a.di) {
                y[row] = val2[i];
                continue;
            }
            const int km1 = a.d_conv - 1;
            float *hist = a.state_ptrs[rb] + a.conv_offset + (size_t)row * km1;
            const float *w = a.conv_w + (size_t)row * a.d_conv;
            float conv = a.conv_b[row] + w[km1] * val2[i];
            if constexpr (HIST_EARLY) {
#pragma unroll
                for (int k = 0; k < BMC_MAX_CONV - 1; k++)
                    if (k < km1) conv += w[k] * hist_early[i][k];
#pragma unroll
                for (int k = 0; k + 1 < BMC_MAX_CONV - 1; k++)
                    if (k + 1 < km1) hist[k] = hist_early[i][k + 1];
            } else {
                for (int k = 0; k < km1; k++) conv += w[k] * hist[k];
                for (int k = 0; k + 1 < km1; k++) hist[k] = hist[k + 1];
            }
            if (km1 > 0) hist[km1 - 1] = val2[i];
            y[row] = bmc_silu(conv);
        }
        break;
    }
    default:
        if (valid_a) y[row_a] = ta;
        if (valid_b) y[row_b] = tb;
        break;
    }
}

/* The kernel for a's prologue and epilogue: specialised for the batch-1
 * step's combinations, the generic one otherwise. The conv epilogue's
 * specialisation reads its history before the wait for stream 0, so it
 * takes no slot table (in_proj has none). */
template <typename T, int MAXB, bool ROUTE> static void (*gemv_for(const bmc_gemv_args *a))(bmc_gemv_args, int, int) {
    if constexpr (MAXB == 1 && !ROUTE) {
#define GEMV_CASE(P, E)                                                                                                \
    if (a->prologue == (P) && a->epilogue == (E)) return gemv_kernel<T, 1, false, (P), (E)>;
        if (!a->slot_expert) GEMV_CASE(BMC_PRO_ADD_RMSNORM, BMC_EPI_CONV_SILU)
        GEMV_CASE(BMC_PRO_LOAD, BMC_EPI_STORE)
        GEMV_CASE(BMC_PRO_LOAD, BMC_EPI_GATED)
        GEMV_CASE(BMC_PRO_LOAD, BMC_EPI_ACT)
        GEMV_CASE(BMC_PRO_SCALED, BMC_EPI_GATED)
        GEMV_CASE(BMC_PRO_SCALED, BMC_EPI_ACT)
        GEMV_CASE(BMC_PRO_LOAD, BMC_EPI_SCALE_STORE)
        GEMV_CASE(BMC_PRO_LOAD, BMC_EPI_SCALE_ADD)
        GEMV_CASE(BMC_PRO_ADD_LAYERNORM, BMC_EPI_STORE)
#undef GEMV_CASE
    }
    return gemv_kernel<T, MAXB, ROUTE, -1, -1>;
}

template <typename T, int MAXB, bool ROUTE>
static cudaError_t launch(const bmc_gemv_args *a, int ksplit, int sm_count, cudaStream_t stream, int pdl) {
    const int gated = a->epilogue == BMC_EPI_GATED;
    const int n_pairs = gated ? a->rows / 2 : (a->rows + 1) / 2;
    const int slots = a->slot_expert ? a->n_slots : 1;
    if (ksplit <= 0) {
        /* The fewest warps per row pair that still gives every SM a couple of
         * blocks: long rows over few outputs (out_proj, fc2) split K. */
        ksplit = 8;
        for (int k = 1; k <= 8; k *= 2) {
            int ppb = GEMV_WARPS / k;
            if ((long)((n_pairs + ppb - 1) / ppb) * slots >= 2L * (sm_count > 0 ? sm_count : 132)) {
                ksplit = k;
                break;
            }
        }
    }
    const int ppb = GEMV_WARPS / ksplit;
    const size_t smem = (size_t)(a->nb < MAXB ? a->nb : MAXB) * (size_t)a->K * sizeof(float);
    void (*kernel)(bmc_gemv_args, int, int) = gemv_for<T, MAXB, ROUTE>(a);
    if (smem > 32 * 1024) { /* static shared memory counts against the same 48 KB default */
        cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
        if (e != cudaSuccess) return e;
    }
    return bmc_launch(kernel, dim3((n_pairs + ppb - 1) / ppb, slots), dim3(GEMV_THREADS), smem, stream, pdl, *a, ksplit,
                      gated);
}

int bmc_gemv_max_blocks(int rows) { return (rows + 1) / 2; /* ksplit 8: one row pair per block */ }

cudaError_t bmc_gemv(const bmc_gemv_args *a, int wtype, int ksplit, int sm_count, cudaStream_t stream, int pdl) {
    if (a->nb <= 0 || a->rows <= 0) return cudaSuccess;
    if (a->K % 8 != 0 || a->nb > BMC_MAX_STEP_ROWS || (ksplit != 0 && (GEMV_WARPS % ksplit) != 0))
        return cudaErrorInvalidValue;
    if (a->epilogue == BMC_EPI_STORE_ROUTE &&
        (a->slot_expert || a->n_experts < 1 || a->n_experts > BMC_MAX_FUSED_EXPERTS || a->ldy != a->rows))
        return cudaErrorInvalidValue;
    const bool route = a->epilogue == BMC_EPI_STORE_ROUTE, one = a->nb == 1;
    if (wtype == BMC_F16) {
        if (route)
            return one ? launch<__half, 1, true>(a, ksplit, sm_count, stream, pdl)
                       : launch<__half, BMC_MAX_STEP_ROWS, true>(a, ksplit, sm_count, stream, pdl);
        return one ? launch<__half, 1, false>(a, ksplit, sm_count, stream, pdl)
                   : launch<__half, BMC_MAX_STEP_ROWS, false>(a, ksplit, sm_count, stream, pdl);
    }
    if (route)
        return one ? launch<__nv_bfloat16, 1, true>(a, ksplit, sm_count, stream, pdl)
                   : launch<__nv_bfloat16, BMC_MAX_STEP_ROWS, true>(a, ksplit, sm_count, stream, pdl);
    return one ? launch<__nv_bfloat16, 1, false>(a, ksplit, sm_count, stream, pdl)
               : launch<__nv_bfloat16, BMC_MAX_STEP_ROWS, false>(a, ksplit, sm_count, stream, pdl);
}
