/* Device helpers shared by the kernels of cuda/: weight unpacking, warp and
 * block reductions, the activations in the exact form the CPU reference uses,
 * and the programmatic-dependent-launch (PDL) hooks. Header only: every .cu
 * file compiles its own copy, so nothing here needs relocatable device code. */
#ifndef BM_CUDA_DEVICE_UTIL_CUH
#define BM_CUDA_DEVICE_UTIL_CUH

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include <utility>

/* PDL: a kernel launched with programmatic stream serialization may start
 * while its predecessor drains. It must not read anything the predecessor
 * writes (or write anything the predecessor reads) before bmc_grid_wait();
 * immutable data (weights) may be fetched before. Every kernel waits in every
 * block that does work, so "my predecessor finished" implies "all earlier
 * kernels finished". On GPUs before sm_90 both are no-ops and launches are
 * made without the attribute. */
__device__ __forceinline__ void bmc_grid_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void bmc_grid_trigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

/* kernel<<<grid, block, smem, stream>>>(args...), with programmatic stream
 * serialization when pdl is set (the kernel then keeps the rules above) and,
 * when cluster > 1, in clusters of that many blocks along x (sm_90; gridDim.x
 * a multiple of it; above 8 the kernel needs
 * cudaFuncAttributeNonPortableClusterSizeAllowed). Both attributes go in one
 * cudaLaunchKernelEx, so they combine, and stream capture records them. */
template <typename... Params, typename... Args>
static inline cudaError_t bmc_launch_cluster(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem,
                                             cudaStream_t stream, int pdl, unsigned cluster, Args &&...args) {
    cudaLaunchAttribute attr[2];
    unsigned n = 0;
    if (pdl) {
        attr[n].id = cudaLaunchAttributeProgrammaticStreamSerialization;
        attr[n++].val.programmaticStreamSerializationAllowed = 1;
    }
    if (cluster > 1) {
        attr[n].id = cudaLaunchAttributeClusterDimension;
        attr[n].val.clusterDim.x = cluster;
        attr[n].val.clusterDim.y = 1;
        attr[n++].val.clusterDim.z = 1;
    }
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid;
    cfg.blockDim = block;
    cfg.dynamicSmemBytes = smem;
    cfg.stream = stream;
    cfg.attrs = n ? attr : nullptr;
    cfg.numAttrs = n;
    return cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...);
}
template <typename... Params, typename... Args>
static inline cudaError_t bmc_launch(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem,
                                     cudaStream_t stream, int pdl, Args &&...args) {
    return bmc_launch_cluster(kernel, grid, block, smem, stream, pdl, 1u, std::forward<Args>(args)...);
}

/* Ask L2 to fetch `bytes` of immutable data (weights a later kernel reads)
 * without waiting for them: share `part` of `parts` equal pieces. Keeps
 * DRAM busy across the small, serial kernels of a decode step, whose own
 * loads cannot start before their inputs exist. sm_90 (bulk prefetch);
 * elsewhere a no-op. */
__device__ __forceinline__ void bmc_prefetch_l2(const void *base, size_t bytes, unsigned part, unsigned parts) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    if (!base || bytes < 16 || parts == 0) return;
    const size_t per = ((bytes + parts - 1) / parts + 15) & ~(size_t)15;
    size_t off = per * part;
    const size_t end = off + per < bytes ? off + per : bytes;
    for (; off + 16 <= end; off += (size_t)1 << 20) {
        size_t n = end - off < ((size_t)1 << 20) ? end - off : ((size_t)1 << 20);
        n &= ~(size_t)15;
        asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"((const char *)base + off), "r"((unsigned)n)
                     : "memory");
    }
#endif
}

/* A 16-byte weight load that bypasses L1: weights are read once per step, so
 * keeping them out of L1 leaves it to the activations. */
__device__ __forceinline__ uint4 bmc_load_stream(const uint4 *p) {
    uint4 v;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(p));
    return v;
}

/* A 4-byte copy from global to shared memory that does not hold a register
 * (cp.async, sm_80 and later); !valid writes zero and reads nothing, but
 * gmem must still be a valid address. bmc_cp_async_wait_all waits for all
 * of the thread's copies (a __syncthreads after it shows them to the block). */
__device__ __forceinline__ void bmc_cp_async4(void *smem, const void *gmem, bool valid) {
    const unsigned s = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;" ::"r"(s), "l"(gmem), "r"(valid ? 4 : 0) : "memory");
}
__device__ __forceinline__ void bmc_cp_async_wait_all() { asm volatile("cp.async.wait_all;" ::: "memory"); }

/* Eight 16-bit weights packed in a uint4, as floats. */
template <typename T> struct bmc_unpack;
template <> struct bmc_unpack<__nv_bfloat16> {
    static __device__ __forceinline__ void run(const uint4 &v, float (&f)[8]) {
        const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
        for (int i = 0; i < 4; i++) {
            f[2 * i] = __uint_as_float(w[i] << 16);
            f[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
        }
    }
};
template <> struct bmc_unpack<__half> {
    static __device__ __forceinline__ void run(const uint4 &v, float (&f)[8]) {
        const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
        for (int i = 0; i < 4; i++) {
            __half2 h = *reinterpret_cast<const __half2 *>(&w[i]);
            float2 t = __half22float2(h);
            f[2 * i] = t.x;
            f[2 * i + 1] = t.y;
        }
    }
};

template <typename T> __device__ __forceinline__ float bmc_to_float(T v);
template <> __device__ __forceinline__ float bmc_to_float<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }
template <> __device__ __forceinline__ float bmc_to_float<__half>(__half v) { return __half2float(v); }
template <typename T> __device__ __forceinline__ T bmc_from_float(float v);
template <> __device__ __forceinline__ __nv_bfloat16 bmc_from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
template <> __device__ __forceinline__ __half bmc_from_float<__half>(float v) { return __float2half_rn(v); }

__device__ __forceinline__ float bmc_warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* Sum over the block; every thread gets the result. `scratch` holds 33
 * floats; the call ends with the scratch free for reuse. */
__device__ __forceinline__ float bmc_block_sum(float v, float *scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
    v = bmc_warp_sum(v);
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    if (warp == 0) {
        float t = lane < warps ? scratch[lane] : 0.0f;
        t = bmc_warp_sum(t);
        if (lane == 0) scratch[32] = t;
    }
    __syncthreads();
    float total = scratch[32];
    __syncthreads();
    return total;
}

/* The activations, written as the CPU reference (lib/cpu/kernels.c) writes them. */
__device__ __forceinline__ float bmc_silu(float x) { return x / (1.0f + expf(-x)); }
__device__ __forceinline__ float bmc_gelu(float x) { return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f)); }
__device__ __forceinline__ float bmc_softplus(float x) { return x > 20.0f ? x : log1pf(expf(x)); }
__device__ __forceinline__ float bmc_sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

#endif
