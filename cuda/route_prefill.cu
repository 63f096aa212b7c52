/* Prefill: top-1 routing of every token and a stable grouping of the tokens
 * by expert (counting sort), so each expert's GEMMs read contiguous rows. */
#include "device_util.cuh"
#include "kernels.cuh"

#define ROUTE_THREADS 256
#define ROUTE_MAX_EXPERTS 64

/* One warp per token: E dot products with the f32 router, argmax (lowest
 * index on ties, as the CPU), sigmoid of the winner. The router weights are
 * read once per block into shared memory (when they fit) and shared by the
 * block's ROUTE_TOKENS_PER_BLOCK tokens. */
#define ROUTE_TOKENS_PER_BLOCK 16
#define ROUTE_SMEM_LIMIT (96 * 1024)
__global__ void __launch_bounds__(ROUTE_THREADS) route_kernel(const float *normed, int T, const int *n_dev, int d,
                                                              const float *W, const float *bias, int E, int *expert_of,
                                                              float *gate, int w_in_smem) {
    if (n_dev && blockIdx.x * ROUTE_TOKENS_PER_BLOCK >= *n_dev) return; /* only padding rows here */
    extern __shared__ float4 route_smem[];
    float *ws = reinterpret_cast<float *>(route_smem);
    if (w_in_smem) {
        for (int i = threadIdx.x; i < E * d / 4; i += ROUTE_THREADS)
            reinterpret_cast<float4 *>(ws)[i] = reinterpret_cast<const float4 *>(W)[i];
        __syncthreads();
        W = ws;
    }
    const int lane = threadIdx.x & 31;
    for (int t = blockIdx.x * ROUTE_TOKENS_PER_BLOCK + (threadIdx.x >> 5);
         t < T && t < (blockIdx.x + 1) * ROUTE_TOKENS_PER_BLOCK; t += ROUTE_THREADS / 32) {
        const float *x = normed + (size_t)t * d;
        float best_logit = 0.0f;
        int best = 0;
        for (int e = 0; e < E; e++) {
            const float *w = W + (size_t)e * d;
            float acc = 0.0f;
            for (int k = lane; k < d; k += 32) acc += w[k] * x[k];
            acc = bmc_warp_sum(acc) + bias[e];
            if (e == 0 || acc > best_logit) {
                best_logit = acc;
                best = e;
            }
        }
        if (lane == 0) {
            expert_of[t] = best;
            gate[t] = bmc_sigmoid(best_logit);
        }
    }
}

/* One warp: counts, exclusive scan, then a stable placement 32 tokens at a
 * time (tokens of one expert within a group ranked by lane). */
__global__ void group_kernel(const int *expert_of, int T_all, const int *n_dev, int E, int *order, int *expert_start) {
    __shared__ int count[ROUTE_MAX_EXPERTS + 1], next[ROUTE_MAX_EXPERTS];
    const int lane = threadIdx.x;
    /* the decode row path: rows from *n_dev on are padding, left in place after the grouped rows */
    const int T = n_dev ? min(max(*n_dev, 0), T_all) : T_all;
    for (int i = T + lane; i < T_all; i += 32) order[i] = i;
    for (int e = lane; e <= E; e += 32) count[e] = 0;
    __syncwarp();
    for (int t = lane; t < T; t += 32) atomicAdd(&count[expert_of[t]], 1);
    __syncwarp();
    if (lane == 0) {
        int run = 0;
        for (int e = 0; e < E; e++) {
            int c = count[e];
            expert_start[e] = run;
            next[e] = run;
            run += c;
        }
        expert_start[E] = run;
    }
    __syncwarp();
    const unsigned lower = (1u << lane) - 1u;
    for (int base = 0; base < T; base += 32) {
        const int t = base + lane;
        const int e = t < T ? expert_of[t] : -1;
        const unsigned same = __match_any_sync(0xffffffffu, e);
        const int at = e >= 0 ? next[e] + __popc(same & lower) : 0;
        __syncwarp();
        if (e >= 0) {
            order[at] = t;
            if ((same & lower) == 0) next[e] += __popc(same); /* the group's lowest lane advances it */
        }
        __syncwarp();
    }
}

static cudaError_t route(const float *normed, int T, const int *n_dev, int d, const float *router_w,
                         const float *router_b, int E, int *expert_of, float *gate, int *order, int *expert_start,
                         cudaStream_t stream) {
    if (E < 1 || E > ROUTE_MAX_EXPERTS) return cudaErrorInvalidValue;
    const size_t w_bytes = (size_t)E * d * sizeof(float);
    const int w_in_smem = d % 4 == 0 && w_bytes <= ROUTE_SMEM_LIMIT;
    if (w_in_smem && w_bytes > 48 * 1024) {
        cudaError_t e = cudaFuncSetAttribute(route_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)w_bytes);
        if (e != cudaSuccess) return e;
    }
    route_kernel<<<(T + ROUTE_TOKENS_PER_BLOCK - 1) / ROUTE_TOKENS_PER_BLOCK, ROUTE_THREADS, w_in_smem ? w_bytes : 0,
                   stream>>>(normed, T, n_dev, d, router_w, router_b, E, expert_of, gate, w_in_smem);
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) return e;
    group_kernel<<<1, 32, 0, stream>>>(expert_of, T, n_dev, E, order, expert_start);
    return cudaGetLastError();
}

cudaError_t bmc_route_prefill(const float *normed, int T, int d, const float *router_w, const float *router_b, int E,
                              int *expert_of, float *gate, int *order, int *expert_start, int *host_starts,
                              cudaStream_t stream) {
    if (T <= 0) return cudaSuccess;
    cudaError_t e = route(normed, T, NULL, d, router_w, router_b, E, expert_of, gate, order, expert_start, stream);
    if (e != cudaSuccess) return e;
    return cudaMemcpyAsync(host_starts, expert_start, (size_t)(E + 1) * sizeof(int), cudaMemcpyDeviceToHost, stream);
}

cudaError_t bmc_route_rows(const float *normed, int T, const int *n_dev, int d, const float *router_w,
                           const float *router_b, int E, int *expert_of, float *gate, int *order, int *expert_start,
                           cudaStream_t stream) {
    if (T <= 0) return cudaSuccess;
    return route(normed, T, n_dev, d, router_w, router_b, E, expert_of, gate, order, expert_start, stream);
}
