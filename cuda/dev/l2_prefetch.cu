/* Harness for bmc_prefetch_l2 (device_util.cuh): does asking L2 for a range
 * ahead of time make a later read of it faster, and by how much? The decode
 * row path asks L2 for weights during short kernels (the routing norm for
 * fc1's first units); this measures the mechanism alone, on fresh random
 * data: a range of 8 to 40 MB, L2 emptied (a 256 MB write elsewhere), then
 * one of
 *   - nothing (cold),
 *   - bmc_prefetch_l2 from G blocks (one bulk prefetch of up to 1 MB each),
 *   - the same in 64 KB pieces,
 *   - a prefetch.global.L2 per 128-byte line, each by the block (index)
 *     that will read it, or by another block (half the grid further),
 *   - a plain read of the range (a warm L2: the best a prefetch can do), by
 *     the same blocks as the timed read or by others,
 * then a pause (a spinning kernel, so the fetches can finish), then the
 * timed read: every 16 bytes summed as 32-bit words, checked against the
 * CPU's sum. Per case: the read's time and the rate it implies. */
#include "dev.cuh"
#include "device_util.cuh"

#define LP_THREADS 256

__global__ void lp_bulk(const void *base, size_t bytes, size_t piece) {
    if (threadIdx.x) return;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    if (piece >= ((size_t)1 << 20)) {
        bmc_prefetch_l2(base, bytes, blockIdx.x, gridDim.x);
        return;
    }
    const size_t per = ((bytes + gridDim.x - 1) / gridDim.x + 15) & ~(size_t)15;
    for (size_t off = per * blockIdx.x; off < per * (blockIdx.x + 1) && off < bytes; off += piece) {
        const size_t n = min(piece, bytes - off) & ~(size_t)15;
        asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"((const char *)base + off), "r"((unsigned)n)
                     : "memory");
    }
#endif
}

/* shift: the block that prefetches what block b of the read reads is b + shift (mod the grid) */
__global__ void lp_lines(const char *base, size_t bytes, int shift) {
    const int b = (blockIdx.x + gridDim.x - shift) % gridDim.x;
    for (size_t off = ((size_t)b * blockDim.x + threadIdx.x) * 16; off < bytes; off += (size_t)gridDim.x * blockDim.x * 16)
        if ((off & 127) == 0) asm volatile("prefetch.global.L2 [%0];" ::"l"(base + off));
}

/* sums[block] = sum of the block's 32-bit words (wrapping), read 16 bytes a thread */
__global__ void lp_read(const uint4 *p, size_t n16, unsigned *sums, int shift = 0) {
    unsigned s = 0;
    const int b = (blockIdx.x + gridDim.x - shift) % gridDim.x;
    for (size_t i = (size_t)b * blockDim.x + threadIdx.x; i < n16; i += (size_t)gridDim.x * blockDim.x) {
        const uint4 v = p[i];
        s += v.x + v.y + v.z + v.w;
    }
    for (int o = 16; o; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    __shared__ unsigned w[LP_THREADS / 32];
    if ((threadIdx.x & 31) == 0) w[threadIdx.x >> 5] = s;
    __syncthreads();
    if (threadIdx.x == 0) {
        unsigned t = 0;
        for (int i = 0; i < LP_THREADS / 32; i++) t += w[i];
        sums[b] = t;
    }
}

__global__ void lp_spin(long long cycles) {
    const long long t0 = clock64();
    while (clock64() - t0 < cycles) {
    }
}

__global__ void lp_flush(uint4 *p, size_t n16, unsigned salt) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n16; i += (size_t)gridDim.x * blockDim.x)
        p[i] = make_uint4((unsigned)i, salt, (unsigned)i ^ salt, 0);
}

int main(void) {
    if (dev_no_gpu("dev_l2_prefetch")) return 0;
    dev_seed();
    int dev = 0, sms = 0, major = 0;
    DEV_CUDA(cudaGetDevice(&dev));
    DEV_CUDA(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
    DEV_CUDA(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
    const size_t max_bytes = (size_t)40 << 20, flush_bytes = (size_t)256 << 20;
    uint32_t *host = (uint32_t *)malloc(max_bytes);
    for (size_t i = 0; i < max_bytes / 4; i++) host[i] = (uint32_t)(dev_uniform() * 2147483647.0);
    uint32_t *d_data = dev_upload(host, max_bytes / 4);
    uint4 *d_flush = nullptr;
    unsigned *d_sums = nullptr;
    const int read_blocks = 4 * sms;
    DEV_CUDA(cudaMalloc(&d_flush, flush_bytes));
    DEV_CUDA(cudaMalloc(&d_sums, read_blocks * sizeof(unsigned)));
    cudaEvent_t e0, e1;
    DEV_CUDA(cudaEventCreate(&e0));
    DEV_CUDA(cudaEventCreate(&e1));
    const char *names[7] = {"cold",        "bulk 1 MB pieces", "bulk 64 KB pieces", "lines, read's blocks",
                            "read (warm)", "lines, shifted",   "read, shifted"};
    const size_t sizes[4] = {(size_t)8 << 20, (size_t)24 << 20, (size_t)36 << 20, (size_t)40 << 20};
    unsigned *sums = (unsigned *)malloc(read_blocks * sizeof(unsigned));
    printf("read of a range after L2 was emptied, then one of the ways to fetch it ahead, then a 100 us pause\n");
    for (size_t bytes : sizes) {
        uint32_t want = 0;
        for (size_t i = 0; i < bytes / 4; i++) want += host[i];
        for (int way = 0; way < 7; way++) {
            if (major < 9 && (way == 1 || way == 2)) continue; /* bulk prefetch: sm_90 */
            float best = 1e30f;
            for (int rep = 0; rep < 5; rep++) {
                lp_flush<<<2 * sms, LP_THREADS>>>(d_flush, flush_bytes / 16, (unsigned)rep);
                if (way == 1) lp_bulk<<<sms, 32>>>(d_data, bytes, (size_t)1 << 20);
                if (way == 2) lp_bulk<<<sms, 32>>>(d_data, bytes, (size_t)64 << 10);
                if (way == 3 || way == 5)
                    lp_lines<<<read_blocks, LP_THREADS>>>((const char *)d_data, bytes, way == 5 ? read_blocks / 2 + 1 : 0);
                if (way == 4 || way == 6)
                    lp_read<<<read_blocks, LP_THREADS>>>((const uint4 *)d_data, bytes / 16, d_sums,
                                                         way == 6 ? read_blocks / 2 + 1 : 0);
                lp_spin<<<1, 1>>>(200000); /* ~100 us at 1.98 GHz */
                DEV_CUDA(cudaEventRecord(e0));
                lp_read<<<read_blocks, LP_THREADS>>>((const uint4 *)d_data, bytes / 16, d_sums);
                DEV_CUDA(cudaEventRecord(e1));
                DEV_CUDA(cudaEventSynchronize(e1));
                DEV_CUDA(cudaGetLastError());
                float ms = 0;
                DEV_CUDA(cudaEventElapsedTime(&ms, e0, e1));
                best = fminf(best, ms);
                dev_download(sums, d_sums, read_blocks);
                uint32_t got = 0;
                for (int b = 0; b < read_blocks; b++) got += sums[b];
                DEV_CHECK(got == want, "%zu MB, %s: sum %u, want %u", bytes >> 20, names[way], got, want);
            }
            printf("  %2zu MB  %-20s read %7.2f us  %6.0f GB/s\n", bytes >> 20, names[way], best * 1e3,
                   bytes / (best * 1e6));
        }
    }
    free(host);
    free(sums);
    cudaFree(d_data);
    cudaFree(d_flush);
    cudaFree(d_sums);
    return dev_summary("dev_l2_prefetch");
}
