#!/bin/sh
# On the GPU machine, from the repository root, with .carry/ from
# prepare_carry.sh: the GPU tests (what `make test-cuda` runs), the
# per-kernel harnesses, compute-sanitizer memcheck on small models, and
# bm-bench at both released sizes. Full logs go to $OUT; a short table is
# printed last. Steps are bounded by timeouts so one hang cannot eat the call.
# Usage: sh cuda/dev/device_run.sh [tests] [memcheck] [bench] [cpu]   (default: all but cpu)
set -u
OUT=${OUT:-/tmp/bm-out}
mkdir -p "$OUT"
C=$(pwd)/.carry
STEPS=${*:-tests memcheck bench}
export LD_LIBRARY_PATH="$C/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
if ! ldconfig -p | grep -q libcublasLt.so.13 && [ ! -e /usr/local/cuda/lib64/libcublasLt.so.13 ]; then
    lt=$(find / -name 'libcublasLt.so.13*' -not -path '*/proc/*' 2>/dev/null | head -n 1)
    [ -n "$lt" ] && export LD_LIBRARY_PATH="$(dirname "$lt"):$LD_LIBRARY_PATH"
fi
export BM_SHARED="$C"
B="$C/bin"
{
    date -u
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
} > "$OUT/gpu.txt" 2>&1
cat "$OUT/gpu.txt"
summary="$OUT/summary.txt"
: > "$summary"
has() { case " $STEPS " in *" $1 "*) return 0 ;; esac; return 1; }

if has tests; then
    : > "$OUT/tests.log"
    # The CPU reference runs its portable path: the SIMD paths are the CPU
    # backend's business, and a bug there must not read as a GPU error.
    for t in "$B/test_cuda_sample" "$B"/dev/* "$B/test_cuda_backend"; do
        echo "==== $t" >> "$OUT/tests.log"
        BM_CPU_PATH=portable timeout 400 "$t" >> "$OUT/tests.log" 2>&1
        echo "$(basename "$t") rc $?" >> "$summary"
    done
    if [ -n "${BM_ALSO_DEFAULT_CPU:-}" ]; then
        echo "==== test_cuda_backend against the CPU's default (SIMD) path" >> "$OUT/tests.log"
        timeout 300 "$B/test_cuda_backend" >> "$OUT/tests.log" 2>&1
        echo "test_cuda_backend vs default CPU path rc $?" >> "$summary"
    fi
    grep -vE "^\s*$" "$OUT/tests.log" | head -n 160
    grep -E "passed, [0-9]+ failed$" "$OUT/tests.log" >> "$summary"
fi
if has bench; then
    for dims in 2.8B 1.5B; do
        timeout 200 "$B/bm-bench" --dims $dims --batch 1,8 --prompt 512,2048 > "$OUT/bench-$dims.log" 2>&1
        echo "bench $dims rc $?" >> "$summary"
        grep -E "^\|" "$OUT/bench-$dims.log" >> "$summary"
    done
    for v in BM_CUDA_PDL=0 BM_CUDA_L2_PREFETCH=1 BM_CUDA_FUSED_ROUTE=1; do
        env $v timeout 120 "$B/bm-bench" --dims 2.8B --batch 1 --prompt 16 > "$OUT/bench-ab.log" 2>&1
        echo "2.8B with $v: $(grep 'decode batch   1' "$OUT/bench-ab.log" | tr '\n' ' ')" >> "$summary"
    done
fi
if has memcheck; then
    BM_CUDA_TEST_SMALL=1 timeout 300 compute-sanitizer --tool memcheck --error-exitcode 9 "$B/test_cuda_backend" \
        > "$OUT/memcheck.log" 2>&1
    echo "memcheck rc $? ($(grep -c 'Invalid\|ERROR SUMMARY' "$OUT/memcheck.log") report lines; $(grep 'ERROR SUMMARY' "$OUT/memcheck.log"))" >> "$summary"
    tail -n 5 "$OUT/memcheck.log"
fi
if has cpu; then
    for dims in 1.5B 2.8B; do
        timeout 240 "$B/bm-bench" --dims $dims --backend cpu --steps 8 --prompt 512 > "$OUT/cpu-$dims.log" 2>&1
        echo "cpu bench $dims rc $?" >> "$summary"
        grep -E "^\|" "$OUT/cpu-$dims.log" >> "$summary"
    done
fi
echo
echo "==== summary ===="
cat "$summary"
