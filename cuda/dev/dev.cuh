/* Shared helpers of the per-kernel harnesses (llm.c dev/cuda style): each
 * harness draws fresh random inputs every run (never zeros), poisons the
 * outputs (NaN bytes) before running, checks one kernel against a plain CPU
 * version in double, times its variants with events (median of repeats,
 * inputs rotated where they would fit in L2) and ends with the
 * "NAME: N passed, N failed" line test/run_tests.sh counts. */
#ifndef BM_CUDA_DEV_CUH
#define BM_CUDA_DEV_CUH

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kernels.cuh"

static int dev_passed, dev_failed;

#define DEV_CUDA(call)                                                                                        \
    do {                                                                                                      \
        cudaError_t e_ = (call);                                                                              \
        if (e_ != cudaSuccess) {                                                                              \
            fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(e_));            \
            exit(2);                                                                                          \
        }                                                                                                     \
    } while (0)

#define DEV_CHECK(cond, ...)                                                                                  \
    do {                                                                                                      \
        if (cond) {                                                                                           \
            dev_passed++;                                                                                     \
        } else {                                                                                              \
            dev_failed++;                                                                                     \
            fprintf(stderr, "%s:%d: CHECK failed: %s: ", __FILE__, __LINE__, #cond);                          \
            fprintf(stderr, __VA_ARGS__);                                                                     \
            fputc('\n', stderr);                                                                              \
        }                                                                                                     \
    } while (0)

static int dev_summary(const char *name) {
    printf("%s: %d passed, %d failed\n", name, dev_passed, dev_failed);
    return dev_failed ? 1 : 0;
}

/* Returns 1 (and prints why) when there is no GPU: the harness then passes vacuously. */
/* DEV_PROFILE=1: a harness runs only its timed launches (a short program
 * for ncu), none of its checks. */
static bool dev_profiling(void) {
    const char *v = getenv("DEV_PROFILE");
    return v && v[0] == '1';
}

static int dev_no_gpu(const char *name) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
        cudaGetLastError();
        printf("%s: no GPU, nothing to run\n", name);
        return 1;
    }
    return 0;
}

static uint64_t dev_rng_state;
static void dev_seed(void) {
    dev_rng_state = (uint64_t)time(NULL) * 6364136223846793005ull + (uint64_t)clock() + 1442695040888963407ull;
}
static double dev_uniform(void) { /* in [-1, 1) */
    dev_rng_state ^= dev_rng_state << 13;
    dev_rng_state ^= dev_rng_state >> 7;
    dev_rng_state ^= dev_rng_state << 17;
    return (double)(dev_rng_state >> 11) * 0x1.0p-52 - 1.0;
}
static void dev_fill(float *x, size_t n, double scale, double offset) {
    for (size_t i = 0; i < n; i++) x[i] = (float)(offset + scale * dev_uniform());
}

static uint16_t dev_bf16(float f) { /* round to nearest even */
    uint32_t u;
    memcpy(&u, &f, 4);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}
static float dev_from_bf16(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* The 16-bit type `act` (BMC_BF16 or BMC_F16), round to nearest even. */
static float dev_from16(uint16_t h, int act) {
    if (act != BMC_F16) return dev_from_bf16(h);
    __half_raw raw;
    raw.x = h;
    return __half2float(__half(raw));
}
static uint16_t dev_to16(float f, int act) {
    if (act != BMC_F16) return dev_bf16(f);
    __half_raw raw = __float2half_rn(f);
    return raw.x;
}

template <typename T> static T *dev_upload(const T *host, size_t n) {
    T *d = NULL;
    DEV_CUDA(cudaMalloc((void **)&d, n * sizeof(T) + 16));
    DEV_CUDA(cudaMemcpy(d, host, n * sizeof(T), cudaMemcpyHostToDevice));
    return d;
}
template <typename T> static T *dev_alloc_poisoned(size_t n) {
    T *d = NULL;
    DEV_CUDA(cudaMalloc((void **)&d, n * sizeof(T) + 16));
    DEV_CUDA(cudaMemset(d, 0xff, n * sizeof(T) + 16)); /* NaN as f32, NaN as bf16 */
    return d;
}
template <typename T> static void dev_download(T *host, const T *d, size_t n) {
    DEV_CUDA(cudaMemcpy(host, d, n * sizeof(T), cudaMemcpyDeviceToHost));
}

/* ||got - ref|| / ||ref||; infinite when anything is NaN (an unwritten output). */
static double dev_rel_error(const float *got, const double *ref, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        if (!(got[i] == got[i])) return INFINITY;
        num += (got[i] - ref[i]) * (got[i] - ref[i]);
        den += ref[i] * ref[i];
    }
    return sqrt(num / (den > 0 ? den : 1));
}

static int dev_cmp_float(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

/* Median time in microseconds of `reps` runs of `run(i)` (after 3 warm-ups). */
template <typename F> static double dev_time_us(int reps, F run) {
    cudaEvent_t a, b;
    DEV_CUDA(cudaEventCreate(&a));
    DEV_CUDA(cudaEventCreate(&b));
    for (int i = 0; i < 3; i++) run(i);
    float t[512];
    if (reps > 512) reps = 512;
    for (int i = 0; i < reps; i++) {
        DEV_CUDA(cudaEventRecord(a));
        run(i);
        DEV_CUDA(cudaEventRecord(b));
        DEV_CUDA(cudaEventSynchronize(b));
        DEV_CUDA(cudaEventElapsedTime(&t[i], a, b));
    }
    DEV_CUDA(cudaGetLastError());
    qsort(t, (size_t)reps, sizeof t[0], dev_cmp_float);
    cudaEventDestroy(a);
    cudaEventDestroy(b);
    return 1000.0 * t[reps / 2];
}

/* Microseconds per run when `per` runs of `run(i)` go back to back between
 * one pair of events (each launch queued behind the last, so launch latency
 * hides as it does in a graph): the median over `reps` such groups, after
 * one group of warm-up. i counts every run (for rotating inputs). */
template <typename F> static double dev_time_loop_us(int reps, int per, F run) {
    cudaEvent_t a, b;
    DEV_CUDA(cudaEventCreate(&a));
    DEV_CUDA(cudaEventCreate(&b));
    int i = 0;
    for (int k = 0; k < per; k++) run(i++);
    float t[512];
    if (reps > 512) reps = 512;
    for (int r = 0; r < reps; r++) {
        DEV_CUDA(cudaEventRecord(a));
        for (int k = 0; k < per; k++) run(i++);
        DEV_CUDA(cudaEventRecord(b));
        DEV_CUDA(cudaEventSynchronize(b));
        DEV_CUDA(cudaEventElapsedTime(&t[r], a, b));
    }
    DEV_CUDA(cudaGetLastError());
    qsort(t, (size_t)reps, sizeof t[0], dev_cmp_float);
    cudaEventDestroy(a);
    cudaEventDestroy(b);
    return 1000.0 * t[reps / 2] / per;
}

#endif
