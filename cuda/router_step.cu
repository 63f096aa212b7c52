/* Decode: the MoE block's front, in one block and no host round trip: the
 * residual add, RMSNorm, router logits (f32 weights, so the choice matches
 * the CPU), top-1 (lowest index on ties) with its sigmoid gate, and the
 * grouping of the batch rows by expert that lets the expert projections read
 * each chosen expert's weights once. The router weights are fetched into
 * shared memory before waiting on the previous kernel, so the serial part
 * after the wait touches only L2-resident activations. */
#include "device_util.cuh"
#include "kernels.cuh"

#define ROUTER_THREADS 512
#define ROUTER_MAX_EXPERTS 64
#define ROUTER_SMEM_LIMIT (96 * 1024)

__global__ void __launch_bounds__(ROUTER_THREADS) router_step_kernel(const bmc_router_step_args a, int w_in_smem) {
    extern __shared__ float4 router_smem[];
    __shared__ float scratch[33];
    __shared__ float logits[BMC_MAX_STEP_ROWS][ROUTER_MAX_EXPERTS];
    __shared__ int chosen[BMC_MAX_STEP_ROWS];
    bmc_grid_trigger();
    const int d = a.d, E = a.n_experts;
    float *xrow = reinterpret_cast<float *>(router_smem); /* [d] */
    float *wsm = xrow + ((d + 3) & ~3);                    /* [E, d] when w_in_smem */
    if (w_in_smem) {
        const int n4 = E * d / 4;
        const float4 *src = reinterpret_cast<const float4 *>(a.router_w);
        for (int i = threadIdx.x; i < n4; i += ROUTER_THREADS) reinterpret_cast<float4 *>(wsm)[i] = src[i];
    }
    const float *W = w_in_smem ? wsm : a.router_w;
    bmc_grid_wait();
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    for (int b = 0; b < a.nb; b++) {
        const float *r = a.res_in + (size_t)b * d, *h = a.h_in + (size_t)b * d;
        float ss = 0.0f;
        for (int k = threadIdx.x; k < d; k += ROUTER_THREADS) {
            float v = a.add ? r[k] + h[k] : r[k];
            if (a.add) a.res_out[(size_t)b * d + k] = v;
            xrow[k] = v;
            ss += v * v;
        }
        const float scale = rsqrtf(bmc_block_sum(ss, scratch) / (float)d + a.eps);
        for (int k = threadIdx.x; k < d; k += ROUTER_THREADS) {
            float v = xrow[k] * scale * a.norm_w[k];
            xrow[k] = v;
            a.normed[(size_t)b * d + k] = v;
        }
        __syncthreads();
        if (E >= 2) {
            for (int e = warp; e < E; e += ROUTER_THREADS / 32) {
                const float *w = W + (size_t)e * d;
                float acc = 0.0f;
                for (int k = lane; k < d; k += 32) acc += w[k] * xrow[k];
                acc = bmc_warp_sum(acc);
                if (lane == 0) logits[b][e] = acc + a.router_b[e];
            }
        }
        __syncthreads(); /* xrow is rewritten by the next row */
    }
    if (threadIdx.x != 0) return;
    for (int b = 0; b < a.nb; b++) {
        int best = 0;
        for (int e = 1; e < E; e++)
            if (logits[b][e] > logits[b][best]) best = e;
        bool first = true; /* each expert once */
        for (int b2 = 0; b2 < b; b2++) first = first && chosen[b2] != best;
        if (first && a.prefetch_expert_base)
            bmc_prefetch_l2((const char *)a.prefetch_expert_base + (size_t)best * a.prefetch_expert_stride,
                            a.prefetch_expert_bytes, 0, 1);
        chosen[b] = best;
    }
    for (int b = 0; b < a.nb; b++) {
        int best = 0;
        for (int e = 1; e < E; e++)
            if (logits[b][e] > logits[b][best]) best = e; /* sigmoid is monotonic */
        chosen[b] = best;
        a.gates[b] = E >= 2 ? bmc_sigmoid(logits[b][best]) : 1.0f;
    }
    int slot = 0;
    for (int e = 0; e < E && slot < BMC_MAX_STEP_ROWS; e++) {
        int count = 0;
        for (int b = 0; b < a.nb; b++)
            if (chosen[b] == e) a.slot_rows[slot * BMC_MAX_STEP_ROWS + count++] = b;
        if (count == 0) continue;
        a.slot_expert[slot] = e;
        a.slot_count[slot] = count;
        slot++;
    }
    for (; slot < BMC_MAX_STEP_ROWS; slot++) {
        a.slot_expert[slot] = 0;
        a.slot_count[slot] = 0;
    }
}

cudaError_t bmc_router_step(const bmc_router_step_args *a, cudaStream_t stream, int pdl) {
    if (a->nb <= 0) return cudaSuccess;
    if (a->nb > BMC_MAX_STEP_ROWS || a->n_experts < 1 || a->n_experts > ROUTER_MAX_EXPERTS) return cudaErrorInvalidValue;
    const size_t x_bytes = (size_t)((a->d + 3) & ~3) * sizeof(float);
    const size_t w_bytes = (size_t)a->n_experts * (size_t)a->d * sizeof(float);
    const int w_in_smem = a->n_experts >= 2 && a->d % 4 == 0 && x_bytes + w_bytes <= ROUTER_SMEM_LIMIT;
    const size_t smem = x_bytes + (w_in_smem ? w_bytes : 0);
    if (smem > 40 * 1024) { /* the static shared memory counts against the default 48 KB too */
        cudaError_t e = cudaFuncSetAttribute(router_step_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
        if (e != cudaSuccess) return e;
    }
    return bmc_launch(router_step_kernel, dim3(1), dim3(ROUTER_THREADS), smem, stream, pdl, *a, w_in_smem);
}
