#!/bin/sh
# On the GPU machine, from the repository root, with .carry/ from
# prepare_carry.sh: the GPU tests (what `make test-cuda` runs), the
# per-kernel harnesses, compute-sanitizer memcheck on small models, and
# bm-bench at both released sizes. Full logs go to $OUT; a short table is
# printed last. Steps are bounded by timeouts so one hang cannot eat the call.
# Usage: sh cuda/dev/device_run.sh [fused] [trace] [tests] [memcheck] [bench] [cross] [prof] [ncu] [ab] [skip] [cpu]
#        (default: tests memcheck bench). BM_DEADLINE (seconds, default 570):
# steps that would start after it are skipped, and each step's timeout is cut
# to what is left, so the script ends inside one device call.
set -u
START=$(date +%s)
DEADLINE=${BM_DEADLINE:-570}
# seconds left before the deadline, at most $1
left() { l=$((DEADLINE - ($(date +%s) - START))); [ "$l" -gt "$1" ] && l=$1; echo $l; }
enough() { [ "$(left 100000)" -gt "${1:-20}" ]; }
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

if has fused; then
    # batch-1 decode with the persistent step kernel (=1), and its measurement
    # modes (DEBUG=1: no dot products, DEBUG=2: no weights), and the chain (=0)
    for dims in 2.8B 1.5B; do
        for v in 1 "1 BM_CUDA_FUSED_DEBUG=1" "1 BM_CUDA_FUSED_DEBUG=2" 0; do
            enough 30 || continue
            env BM_CUDA_FUSED_STEP=$v timeout $(left 90) "$B/bm-bench" --dims $dims --batch 1 --prompt 16 --prefill-batch 0 \
                > "$OUT/one.log" 2>&1
            echo "$dims BM_CUDA_FUSED_STEP=$v rc $?: $(grep 'decode batch    1' "$OUT/one.log" | tr '\n' ' ')" >> "$summary"
            { echo "==== BM_CUDA_FUSED_STEP=$v bm-bench --dims $dims --batch 1"; cat "$OUT/one.log"; } >> "$OUT/bench.log"
        done
    done
fi
if has trace; then
    # where the persistent step kernel's time goes, per phase (stderr summary)
    for v in 0 2; do
        enough 30 || continue
        BM_CUDA_FUSED_STEP=1 BM_CUDA_FUSED_TRACE=1 BM_CUDA_FUSED_DEBUG=$v timeout $(left 90) "$B/bm-bench" --dims 2.8B \
            --batch 1 --prompt 16 --prefill-batch 0 > "$OUT/one.log" 2>&1
        echo "fused step trace, 2.8B, BM_CUDA_FUSED_DEBUG=$v:" >> "$summary"
        grep -E "^  |decode batch    1" "$OUT/one.log" >> "$summary"
    done
fi
if has tests; then
    : > "$OUT/tests.log"
    # The CPU reference runs its portable path: the SIMD paths are the CPU
    # backend's business, and a bug there must not read as a GPU error.
    for t in "$B/test_cuda_sample" "$B"/dev/* "$B/test_cuda_batch" "$B/test_cuda_backend" "$B/test_cuda_oom"; do
        enough 30 || { echo "$(basename "$t") skipped (deadline)" >> "$summary"; continue; }
        echo "==== $t" >> "$OUT/tests.log"
        t0=$(date +%s)
        BM_CPU_PATH=portable timeout $(left 400) "$t" >> "$OUT/tests.log" 2>&1
        echo "$(basename "$t") rc $? ($(( $(date +%s) - t0 )) s)" >> "$summary"
    done
    # the opt-in persistent batch-1 step kernel (decode_fused.cu) against the CPU
    for t in test_cuda_backend test_cuda_batch; do
        enough 40 || { echo "$t with BM_CUDA_FUSED_STEP=1 skipped (deadline)" >> "$summary"; continue; }
        echo "==== $t with BM_CUDA_FUSED_STEP=1" >> "$OUT/tests.log"
        BM_CUDA_FUSED_STEP=1 BM_CPU_PATH=portable timeout $(left 300) "$B/$t" > "$OUT/one.log" 2>&1
        echo "$t with BM_CUDA_FUSED_STEP=1 rc $? ($(grep -E 'passed, [0-9]+ failed' "$OUT/one.log"))" >> "$summary"
        cat "$OUT/one.log" >> "$OUT/tests.log"
    done
    if [ -n "${BM_ALSO_DEFAULT_CPU:-}" ]; then
        echo "==== test_cuda_backend against the CPU's default (SIMD) path" >> "$OUT/tests.log"
        timeout 300 "$B/test_cuda_backend" >> "$OUT/tests.log" 2>&1
        echo "test_cuda_backend vs default CPU path rc $?" >> "$summary"
    fi
    # failures first, then the batch test's comparisons
    grep -E "CHECK failed|FAIL|rror" "$OUT/tests.log" | head -n 30
    sed -n '/test_cuda_batch$/,/^====/p' "$OUT/tests.log" | grep -vE "^\s*$" | head -n 90
    grep -E "passed, [0-9]+ failed$" "$OUT/tests.log" >> "$summary"
fi
if has bench; then
    for dims in 2.8B 1.5B; do
        enough 60 || { echo "bench $dims skipped (deadline)" >> "$summary"; continue; }
        timeout $(left 200) "$B/bm-bench" --dims $dims --prompt 2048 > "$OUT/one.log" 2>&1
        echo "bench $dims rc $?" >> "$summary"
        grep -E "^\|" "$OUT/one.log" >> "$summary"
        { echo "==== bm-bench --dims $dims --prompt 2048"; cat "$OUT/one.log"; } >> "$OUT/bench.log"
    done
fi
if has cross; then
    # the crossover between the GEMV path and the row path, small batches, 2.8B
    for v in 1 1000000000; do
        enough 40 || continue
        BM_CUDA_ROWS_MIN=$v timeout $(left 100) "$B/bm-bench" --dims 2.8B --batch 1,2,3,4,6,8,12,16 --prompt 0 \
            --prefill-batch 0 --steps 100 > "$OUT/one.log" 2>&1
        echo "crossover, BM_CUDA_ROWS_MIN=$v: rc $?" >> "$summary"
        grep -E "^\| +[0-9]+ \|" "$OUT/one.log" >> "$summary"
        { echo "==== BM_CUDA_ROWS_MIN=$v bm-bench --dims 2.8B --batch 1,2,3,4,6,8,12,16"; cat "$OUT/one.log"; } >> "$OUT/bench.log"
    done
fi
if has prof; then
    # time per kind of operation of the row path (eager steps with events)
    for dims in 2.8B; do
        enough 40 || continue
        BM_CUDA_ROWS_PROFILE=1 timeout $(left 120) "$B/bm-bench" --dims $dims --batch 8,16,64,256,1024 --prompt 0 \
            --prefill-batch 0 --steps 20 > "$OUT/one.log" 2>&1
        echo "row path profile $dims: rc $?" >> "$summary"
        grep -E "^row path profile" "$OUT/one.log" | sed 's/ms\/step://' >> "$summary"
        { echo "==== BM_CUDA_ROWS_PROFILE=1 bm-bench --dims $dims"; cat "$OUT/one.log"; } >> "$OUT/bench.log"
    done
fi
if has ncu; then
    # every kernel of one 64-stream 2.8B step under Nsight Compute (durations and DRAM bytes, each
    # kernel alone with caches flushed); cuda/dev/ncu_breakdown.py sums the last step by kernel
    if enough 300 && [ -x /usr/local/cuda/bin/ncu ]; then
        timeout $(left 280) /usr/local/cuda/bin/ncu --metrics gpu__time_duration.sum,dram__bytes_read.sum --csv \
            --print-units base "$B/bm-bench" --dims 2.8B --batch 64 --prompt 0 --prefill-batch 0 --steps 1 \
            > "$OUT/ncu64.csv" 2> "$OUT/ncu64.err"
        echo "ncu 64-stream step: rc $? ($(wc -l < "$OUT/ncu64.csv") lines in ncu64.csv)" >> "$summary"
    else
        echo "ncu skipped (deadline or no ncu)" >> "$summary"
    fi
fi
if has ab; then
    for v in BM_CUDA_PDL=0 BM_CUDA_L2_PREFETCH=1 BM_CUDA_FUSED_ROUTE=1; do
        enough 30 || continue
        env $v timeout $(left 120) "$B/bm-bench" --dims 2.8B --batch 1 --prompt 16 --prefill-batch 0 > "$OUT/one.log" 2>&1
        echo "2.8B with $v: $(grep 'decode batch    1' "$OUT/one.log" | tr '\n' ' ')" >> "$summary"
        { echo "==== $v bm-bench --dims 2.8B --batch 1"; cat "$OUT/one.log"; } >> "$OUT/bench.log"
    done
fi
if has skip; then
    # what each batch-1 decode kernel costs inside the step graph: the step with that kind
    # left out (BM_CUDA_DEBUG_SKIP; the output is wrong, the time saved is the kernel's share)
    for v in none in_proj x_proj scan out_proj router fc1 fc2 head x_proj,scan router,fc1,fc2 \
        in_proj,x_proj,scan,out_proj,router,fc1,fc2; do
        enough 25 || continue
        BM_CUDA_DEBUG_SKIP=$v timeout $(left 60) "$B/bm-bench" --dims 2.8B --batch 1 --prompt 0 --prefill-batch 0 \
            --steps 300 > "$OUT/one.log" 2>&1
        echo "2.8B batch 1, skip $v: $(grep -E '^\| +1 \|' "$OUT/one.log" | tr '\n' ' ')" >> "$summary"
        { echo "==== BM_CUDA_DEBUG_SKIP=$v"; cat "$OUT/one.log"; } >> "$OUT/bench.log"
    done
fi
if has memcheck; then
    enough 60 && {
        BM_CUDA_FUSED_STEP=1 BM_CUDA_TEST_SMALL=1 timeout $(left 200) compute-sanitizer --tool memcheck --error-exitcode 9 \
            "$B/test_cuda_backend" > "$OUT/one.log" 2>&1
        echo "memcheck test_cuda_backend with BM_CUDA_FUSED_STEP=1 rc $? ($(grep 'ERROR SUMMARY' "$OUT/one.log"); $(grep -E 'passed, [0-9]+ failed' "$OUT/one.log"))" >> "$summary"
        { echo "==== memcheck test_cuda_backend with BM_CUDA_FUSED_STEP=1"; cat "$OUT/one.log"; } >> "$OUT/memcheck.log"
    }
    for t in test_cuda_batch test_cuda_backend; do
        enough 60 || { echo "memcheck $t skipped (deadline)" >> "$summary"; continue; }
        BM_CUDA_TEST_SMALL=1 timeout $(left 300) compute-sanitizer --tool memcheck --error-exitcode 9 "$B/$t" \
            > "$OUT/one.log" 2>&1
        echo "memcheck $t rc $? ($(grep -c 'Invalid' "$OUT/one.log") invalid-access lines; $(grep 'ERROR SUMMARY' "$OUT/one.log"); $(grep -E 'passed, [0-9]+ failed' "$OUT/one.log"))" >> "$summary"
        grep -m 5 -A 8 'Invalid' "$OUT/one.log"
        { echo "==== memcheck $t"; cat "$OUT/one.log"; } >> "$OUT/memcheck.log"
    done
fi
if has cpu; then
    for dims in 1.5B 2.8B; do
        enough 60 || continue
        timeout $(left 240) "$B/bm-bench" --dims $dims --backend cpu --steps 8 --prompt 512 > "$OUT/one.log" 2>&1
        echo "cpu bench $dims rc $?" >> "$summary"
        grep -E "^\|" "$OUT/one.log" >> "$summary"
        { echo "==== cpu bench $dims"; cat "$OUT/one.log"; } >> "$OUT/bench.log"
    done
fi
rm -f "$OUT/one.log"
echo
echo "==== summary ===="
cat "$summary"
