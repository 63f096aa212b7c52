/* MoE: the rows in expert order, so each expert's GEMM reads one contiguous
 * block of rows.
 *
 * bmc_group_rows (the decode row path, after the routing norm): the stable
 * grouping of the rows by expert and the gather of their 16-bit halves in
 * one launch, one block per row. Every block reads all the live rows'
 * experts (a few KB, from L2) and counts its own row's sorted position, so
 * no block waits on another: the position of a live row t of expert e is
 * #{live t' : expert_of[t'] < e} + #{t' < t : expert_of[t'] == e}, what a
 * stable counting sort gives it. The block loads its row before it knows
 * that position and stores it there after.
 *
 * bmc_gather_rows(_planes): the gather alone through a given order (prefill). */
#include "device_util.cuh"
#include "kernels.cuh"

#define GROUP_THREADS 128
#define GROUP_WARPS (GROUP_THREADS / 32)
#define GROUP_MAX_EXPERTS 64
/* Experts each thread has in flight at once in the counting pass (1024 rows
 * in one go) */
#define GROUP_CHUNK 8
/* Vectors of its row each thread holds in registers while the position is
 * counted (two planes of 2048 bf16 in one go at GROUP_THREADS) */
#define GROUP_HOLD 4

/* One block's copy of one row in `planes` planes of w vectors each, plane p
 * at p * stride vectors: load() fetches each thread's first GROUP_HOLD
 * vectors into registers (from L2: an earlier kernel wrote them), store()
 * writes them to dst (laid out as src) and copies the rest. */
template <typename V> struct row_copy {
    const V *src;
    int w, n;
    size_t stride;
    V held[GROUP_HOLD];
    __device__ size_t at(int v) const { /* plane by subtraction: a division is ~20 instructions at each use */
        size_t p0 = 0;
        for (; v >= w; v -= w) p0 += stride;
        return p0 + v;
    }
    __device__ void load() {
#pragma unroll
        for (int j = 0; j < GROUP_HOLD; j++) {
            const int v = threadIdx.x + j * blockDim.x;
            if (v < n) held[j] = __ldcg(src + at(v));
        }
    }
    __device__ void store(V *dst) const {
#pragma unroll
        for (int j = 0; j < GROUP_HOLD; j++) {
            const int v = threadIdx.x + j * blockDim.x;
            if (v < n) dst[at(v)] = held[j];
        }
        for (int v = threadIdx.x + GROUP_HOLD * blockDim.x; v < n; v += blockDim.x) dst[at(v)] = __ldcg(src + at(v));
    }
};

/* 16-byte vectors where the rows allow them, else single elements. */
static bool rows_vectorised(const void *src, const void *dst, int d) {
    return d % 8 == 0 && ((uintptr_t)src & 15) == 0 && ((uintptr_t)dst & 15) == 0;
}

/* One block per sorted position i and plane (grid y). */
template <typename V>
__global__ void gather_rows_kernel(const V *src, const int *order, int w, int plane_rows, V *dst) {
    const size_t plane = (size_t)blockIdx.y * plane_rows;
    row_copy<V> row{src + (plane + order[blockIdx.x]) * w, w, w, 0};
    row.load();
    row.store(dst + (plane + blockIdx.x) * w);
}

cudaError_t bmc_gather_rows(const void *src, const int *order, int rows, int d, void *dst, cudaStream_t stream) {
    return bmc_gather_rows_planes(src, order, rows, d, 1, 0, dst, stream);
}

cudaError_t bmc_gather_rows_planes(const void *src, const int *order, int rows, int d, int planes, int plane_rows,
                                   void *dst, cudaStream_t stream) {
    if (rows <= 0 || planes <= 0) return cudaSuccess;
    const dim3 grid((unsigned)rows, (unsigned)planes);
    if (rows_vectorised(src, dst, d))
        return bmc_launch(gather_rows_kernel<uint4>, grid, dim3(128), 0, stream, 0, (const uint4 *)src, order, d / 8,
                          plane_rows, (uint4 *)dst);
    return bmc_launch(gather_rows_kernel<uint16_t>, grid, dim3(128), 0, stream, 0, (const uint16_t *)src, order, d,
                      plane_rows, (uint16_t *)dst);
}

/* Block t: row t's sorted position, and with a gather its row moved there
 * (w vectors of V per plane row). Block 0 also writes the expert starts. */
template <typename V> __global__ void __launch_bounds__(GROUP_THREADS) group_rows_kernel(bmc_group_args a, int w) {
    __shared__ int count[GROUP_MAX_EXPERTS], warp_sum[GROUP_WARPS];
    const int t = blockIdx.x, lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    bmc_grid_trigger();
    if (t == 0) { /* block uniform, as every barrier's condition below */
        for (int e = threadIdx.x; e < a.E; e += GROUP_THREADS) count[e] = 0;
        __syncthreads();
    }
    /* PDL: the live count, the experts and the rows come from the norm before
     * (nothing here reads weights: nothing to start before the wait) */
    bmc_grid_wait();
    if (t == 0 && a.zero)
        for (int e = threadIdx.x; e < a.n_zero; e += GROUP_THREADS) a.zero[e] = 0;
    row_copy<V> row{a.dst ? (const V *)a.src + (size_t)t * w : nullptr, w, a.dst ? a.planes * w : 0,
                    (size_t)a.plane_rows * w};
    row.load(); /* where it goes comes after; the loads are in flight meanwhile */
    const int n = a.n_dev ? min(max(__ldcg(a.n_dev), 0), a.rows) : a.rows;
    int pos = t; /* a padding row stays in place */
    if (t < n) {
        const int e = __ldcg(a.expert_of + t);
        /* this thread's share of #{t' < n : x < e} + #{t' < t : x == e} */
        int mine = 0;
        for (int base = 0; base < n; base += GROUP_THREADS * GROUP_CHUNK) {
            int x[GROUP_CHUNK];
#pragma unroll
            for (int j = 0; j < GROUP_CHUNK; j++) {
                const int i = base + threadIdx.x + j * GROUP_THREADS;
                x[j] = i < n ? __ldcg(a.expert_of + i) : GROUP_MAX_EXPERTS;
            }
#pragma unroll
            for (int j = 0; j < GROUP_CHUNK; j++) {
                const int i = base + threadIdx.x + j * GROUP_THREADS;
                mine += (x[j] < e) + (x[j] == e && i < t);
                if (t == 0 && x[j] >= 0 && x[j] < a.E) atomicAdd(&count[x[j]], 1);
            }
        }
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) mine += __shfl_xor_sync(0xffffffffu, mine, o);
        if (lane == 0) warp_sum[warp] = mine;
        __syncthreads(); /* also: block 0's counts complete */
        pos = 0;
#pragma unroll
        for (int k = 0; k < GROUP_WARPS; k++) pos += warp_sum[k];
    }
    if (t == 0 && warp == 0) { /* expert_start: the exclusive scan of the counts */
        int run = 0;
        for (int e0 = 0; e0 < a.E; e0 += 32) {
            const int e = e0 + lane, c = e < a.E ? count[e] : 0;
            int incl = c;
#pragma unroll
            for (int o = 1; o < 32; o <<= 1) {
                const int u = __shfl_up_sync(0xffffffffu, incl, o);
                if (lane >= o) incl += u;
            }
            if (e < a.E) a.expert_start[e] = run + incl - c;
            run += __shfl_sync(0xffffffffu, incl, 31);
        }
        if (lane == 0) a.expert_start[a.E] = n;
    }
    if (threadIdx.x == 0) {
        a.pos_of[t] = pos;
        a.order[pos] = t;
    }
    if (a.dst) row.store((V *)a.dst + (size_t)pos * w);
}

cudaError_t bmc_group_rows(const bmc_group_args *a, cudaStream_t stream, int pdl) {
    if (a->E < 2 || a->E > GROUP_MAX_EXPERTS || !a->expert_of || !a->order || !a->pos_of || !a->expert_start)
        return cudaErrorInvalidValue;
    if (a->dst && (!a->src || a->d <= 0 || a->planes <= 0 || (a->planes > 1 && a->plane_rows < a->rows)))
        return cudaErrorInvalidValue;
    if (a->rows <= 0) return cudaSuccess;
    if (!a->dst || rows_vectorised(a->src, a->dst, a->d))
        return bmc_launch(group_rows_kernel<uint4>, dim3((unsigned)a->rows), dim3(GROUP_THREADS), 0, stream, pdl, *a,
                          a->d / 8);
    return bmc_launch(group_rows_kernel<uint16_t>, dim3((unsigned)a->rows), dim3(GROUP_THREADS), 0, stream, pdl, *a,
                      a->d);
}
