#!/bin/sh
# Runs one libFuzzer target (built by `make fuzz`) for a budget of CPU time,
# not wall time, at the lowest priority, so it can share a busy machine.
#
#   sh test/fuzz/run_fuzz.sh NAME CPU_SECONDS [FUZZ_BUILD] [SEEDS]
#
# NAME is a target (config, safetensors, state, tokenize, tokenizer_json,
# torch, weights). FUZZ_BUILD (default build-fuzz) holds fuzz_NAME; the growing corpus
# goes to FUZZ_BUILD/corpus/NAME, crashes to FUZZ_BUILD/artifacts/NAME/, the
# log to FUZZ_BUILD/NAME.log. It starts from that corpus, the committed
# test/fuzz/corpus/NAME and SEEDS/NAME (default FUZZ_BUILD/seeds, made by
# test/fuzz/make_corpus.sh from ../shared if missing). When the target's CPU
# time reaches the budget it is interrupted, and the last status line
# (executions, cov, ft, corpus) is printed. A crash ends the run early, exit 1.
# Then merge what is worth keeping into the committed corpus:
#   FUZZ_BUILD/fuzz_NAME -merge=1 test/fuzz/corpus/NAME FUZZ_BUILD/corpus/NAME
set -u
name=${1:?usage: run_fuzz.sh NAME CPU_SECONDS [FUZZ_BUILD] [SEEDS]}
budget=${2:?usage: run_fuzz.sh NAME CPU_SECONDS [FUZZ_BUILD] [SEEDS]}
fb=${3:-build-fuzz}
seeds=${4:-$fb/seeds}
shared=${BM_SHARED:-../shared}
export BM_SHARED=$shared
bin=$fb/fuzz_$name
[ -x "$bin" ] || { echo "run_fuzz: no $bin (run make fuzz)" >&2; exit 2; }
[ -d "$seeds" ] || sh test/fuzz/make_corpus.sh "$shared" "$seeds" "${BM_BUILD:-build}"
mkdir -p "$fb/corpus/$name" "$fb/artifacts/$name" "test/fuzz/corpus/$name"

case $name in
    config) max_len=4096 ;;
    tokenize) max_len=16384 ;;
    *) max_len=65536 ;;
esac
dict=""
[ -f "test/fuzz/dict/$name.dict" ] && dict="-dict=test/fuzz/dict/$name.dict"
log=$fb/$name.log

# shellcheck disable=SC2086
nice -n 19 "$bin" -max_len=$max_len -timeout=30 -rss_limit_mb=4096 -print_final_stats=1 $dict \
    -artifact_prefix="$fb/artifacts/$name/" "$fb/corpus/$name" "test/fuzz/corpus/$name" "$seeds/$name" \
    >"$log" 2>&1 &
pid=$!
tck=$(getconf CLK_TCK)
cpu=0
while kill -0 $pid 2>/dev/null; do
    if [ -r /proc/$pid/stat ]; then
        # utime + stime (fields 14, 15; the command name in field 2 has no spaces here)
        t=$(awk '{print $14 + $15}' /proc/$pid/stat 2>/dev/null || echo 0)
        [ -n "$t" ] && cpu=$((t / tck))
        if [ "$cpu" -ge "$budget" ]; then
            kill -INT $pid 2>/dev/null
            break
        fi
    fi
    sleep 5
done
wait $pid
rc=$?
last=$(grep -E '^#[0-9]+' "$log" | tail -n 1)
crashed=$(grep -c -E 'ERROR: (libFuzzer|AddressSanitizer|LeakSanitizer|UndefinedBehaviorSanitizer)|runtime error:|==[0-9]+== ?ERROR' "$log")
echo "fuzz_$name: cpu ${cpu}s, rc $rc, last: $last"
grep -E '^stat::' "$log" | tr '\n' ' '
echo
if [ "$crashed" -gt 0 ]; then
    echo "fuzz_$name: FOUND A PROBLEM, see $log and $fb/artifacts/$name/"
    exit 1
fi
exit 0
