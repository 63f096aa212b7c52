/* The library's one random number generator: SplitMix64 (Steele, Lea and
 * Flood, "Fast splittable pseudorandom number generators", 2014), exactly as
 * in Vigna's public reference splitmix64.c.
 *
 * The caller holds a 64-bit state s (any value is a valid seed, 0 included).
 * One draw is:
 *
 *     s += 0x9E3779B97F4A7C15;                  (the golden gamma, mod 2^64)
 *     z  = s;
 *     z  = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9;
 *     z  = (z ^ (z >> 27)) * 0x94D049BB133111EB;
 *     x  = z ^ (z >> 31);                       (the 64-bit output)
 *     u  = (double)(x >> 11) * 0x1.0p-53;       (uniform in [0, 1), 53 bits)
 *
 * Because the state only ever advances by the constant gamma, the n-th draw
 * (n = 0, 1, ...) from state s is mix(s + (n + 1) * gamma) and can be computed
 * without the n before it. That is what lets the CUDA sampler, bm_generate
 * and the CPU agree draw for draw: every one of them must use these functions
 * rather than a copy of the formula.
 *
 * Known answer (from the reference): seed 1234567 gives 6457827717110365317,
 * 3203168211198807973, 9817491932198370423, ... */
#ifndef BM_RNG_H
#define BM_RNG_H

#include <stdint.h>

#if defined(__CUDACC__)
#define BMI_RNG_FN static inline __host__ __device__
#else
#define BMI_RNG_FN static inline
#endif

#define BMI_RNG_GAMMA UINT64_C(0x9E3779B97F4A7C15)

/* The output function: a bijection of the 64-bit counter value. */
BMI_RNG_FN uint64_t bmi_rng_mix(uint64_t z) {
    z = (z ^ (z >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94D049BB133111EB);
    return z ^ (z >> 31);
}

/* The n-th draw (n = 0 first) from `state`, without advancing anything. */
BMI_RNG_FN uint64_t bmi_rng_u64_at(uint64_t state, uint64_t n) {
    return bmi_rng_mix(state + (n + 1) * BMI_RNG_GAMMA);
}

/* 53 random bits as a double in [0, 1); never 1. */
BMI_RNG_FN double bmi_rng_to_unit(uint64_t x) { return (double)(x >> 11) * 0x1.0p-53; }

/* Draw 64 bits and advance *state by one draw. */
BMI_RNG_FN uint64_t bmi_rng_next_u64(uint64_t *state) {
    *state += BMI_RNG_GAMMA;
    return bmi_rng_mix(*state);
}

/* Draw a uniform double in [0, 1) and advance *state by one draw. */
BMI_RNG_FN double bmi_rng_uniform(uint64_t *state) { return bmi_rng_to_unit(bmi_rng_next_u64(state)); }

#endif
