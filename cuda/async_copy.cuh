/* Shared-memory barriers (mbarrier) and asynchronous copies into shared
 * memory for the sm_90 kernels that stream weights through a ring of
 * slots (decode_fused.cu, moe_gemm_sm90.cu). Header only, sm_90 device code
 * only: include it inside `#if __CUDA_ARCH__ >= 900`. */
#ifndef BM_CUDA_ASYNC_COPY_CUH
#define BM_CUDA_ASYNC_COPY_CUH

#include <stdint.h>

__device__ __forceinline__ unsigned smem_addr(const void *p) { return (unsigned)__cvta_generic_to_shared(p); }

/* A barrier that completes a phase after `count` arrivals (and, with
 * expect_tx, once the announced bytes have landed). */
__device__ __forceinline__ void mbar_init(uint64_t *b, unsigned count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(smem_addr(b)), "r"(count) : "memory");
}
/* Makes the initialised barriers visible to the async proxy (TMA). */
__device__ __forceinline__ void mbar_init_fence() { asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory"); }
/* One arrival that also announces `bytes` still to come from async copies. */
__device__ __forceinline__ void mbar_expect_tx(uint64_t *b, unsigned bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smem_addr(b)), "r"(bytes) : "memory");
}
__device__ __forceinline__ void mbar_arrive(uint64_t *b) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(smem_addr(b)) : "memory");
}
/* An arrival made once all of this thread's earlier cp.async copies have
 * landed; not counted in advance (the barrier's count includes it). */
__device__ __forceinline__ void mbar_arrive_cp_async(uint64_t *b) {
    asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];" ::"r"(smem_addr(b)) : "memory");
}
/* Waits until the phase of the given parity (0 first, then 1, 0, ...) has completed. */
__device__ __forceinline__ void mbar_wait(uint64_t *b, unsigned parity) {
    const unsigned a = smem_addr(b);
    unsigned done = 0;
    while (!done) {
        asm volatile("{\n\t.reg .pred p;\n\t"
                     "mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n\t"
                     "selp.u32 %0, 1, 0, p;\n\t}"
                     : "=r"(done)
                     : "r"(a), "r"(parity)
                     : "memory");
    }
}
/* TMA: `bytes` contiguous bytes from global memory, completion on bar. */
__device__ __forceinline__ void bulk_copy(void *dst, const void *src, unsigned bytes, uint64_t *bar) {
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(
                     smem_addr(dst)),
                 "l"(src), "r"(bytes), "r"(smem_addr(bar))
                 : "memory");
}
/* 16 bytes through cp.async (L2 only); bytes beyond src_bytes (0 or 16) are zero. */
__device__ __forceinline__ void cp_async16_zfill(void *dst, const void *src, unsigned src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(smem_addr(dst)), "l"(src), "r"(src_bytes)
                 : "memory");
}

#endif
