/* Internal C entry points of the CUDA backend beyond the backend table: the
 * availability probe model.c calls, and the measurements and device
 * sampling that bm-bench and the GPU tests use. Only in builds with
 * BM_WITH_CUDA. Not public API. */
#ifndef BM_CUDA_BMCUDA_H
#define BM_CUDA_BMCUDA_H

#include <stddef.h>
#include <stdint.h>

#include "blackmamba.h"

#ifdef __cplusplus
extern "C" {
#endif

/* 1 when `device` is a usable GPU (compute capability 8.0 or later); 0
 * otherwise, also when there is no driver at all. Never aborts. */
int bmi_cuda_available(int device);

/* The GPU's name (as nvidia-smi shows it), free and total memory. */
bm_status bmi_cuda_device_info(int device, char *name, size_t cap, size_t *free_bytes, size_t *total_bytes);

/* A large device-to-device copy: bytes read plus bytes written per second
 * (median of `reps`). */
bm_status bmi_cuda_measure_copy(int device, size_t bytes, int reps, double *bytes_per_second);

/* A bf16 GEMM m x n x k through cuBLASLt on random data: FLOP/s (median). */
bm_status bmi_cuda_measure_gemm(int device, int m, int n, int k, int reps, double *flops_per_second);

/* Bytes the model's weights take on the device. */
size_t bmi_cuda_weight_bytes(const bm_model *m);

/* One step of one stream, then the next token chosen on the device with
 * bm_sample's semantics: only the token comes back. Parameters the device
 * sampler does not cover (top_k off or above 1024 with temperature > 0,
 * more than 1024 recent ids) fall back to copying the logits and calling
 * bm_sample. `p` NULL means the defaults. */
bm_status bmi_cuda_step_sample(bm_session *s, bm_state *st, int32_t token, const bm_sampler_params *p,
                               uint64_t *rng, const int32_t *recent, size_t n_recent, int32_t *next);

/* For bm-bench: what the session's last decode step read. *rows: streams
 * of the last row-path step (0 when it took the GEMV path). *pairs: the
 * (MoE layer, expert) pairs whose weights that step read, summed over the
 * layers; -1 after a GEMV-path step, which keeps no routing. Waits for the
 * device. */
bm_status bmi_cuda_last_step_experts(bm_session *s, int *pairs, int *rows);

/* For the sampler's tests: bm_sample's device version on `n` logits given
 * from the host. */
bm_status bmi_cuda_sample_logits(int device, const float *logits, size_t n, const bm_sampler_params *p,
                                 uint64_t *rng, const int32_t *recent, size_t n_recent, int32_t *token);

#ifdef __cplusplus
}
#endif

#endif
