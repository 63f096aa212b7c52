/* The vector paths (kernels_avx2.c, kernels_avx512.c) exist on x86-64 with
 * GCC or clang, which can compile functions for instruction sets the rest of
 * the build does not assume (target attributes) and check the running CPU
 * (__builtin_cpu_supports). Elsewhere only the portable path exists. */
#ifndef BM_CPU_KERNELS_SIMD_H
#define BM_CPU_KERNELS_SIMD_H

#include "kernels.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define BMI_CPU_X86 1
extern const bmi_cpu_path bmi_cpu_path_avx2;
extern const bmi_cpu_path bmi_cpu_path_avx512;
#else
#define BMI_CPU_X86 0
#endif

#endif
