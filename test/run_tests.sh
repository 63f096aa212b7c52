#!/bin/sh
# Runs each test program given, sums their "N passed, N failed" lines and
# ends with one such line for the whole run. Exits non-zero if any failed.
passed=0; failed=0; broken=0
for t in "$@"; do
    out=$("$t" 2>&1); rc=$?
    line=$(printf '%s\n' "$out" | grep -E '^[A-Za-z0-9_./-]+: [0-9]+ passed, [0-9]+ failed$' | tail -n 1)
    if [ -z "$line" ] || [ $rc -ne 0 ]; then
        printf '%s\n' "$out" | tail -n 40
    fi
    if [ -z "$line" ]; then
        echo "$t: exited $rc without a summary"; broken=$((broken + 1)); continue
    fi
    echo "$line"
    p=$(echo "$line" | sed -E 's/.*: ([0-9]+) passed, ([0-9]+) failed/\1/')
    f=$(echo "$line" | sed -E 's/.*: ([0-9]+) passed, ([0-9]+) failed/\2/')
    passed=$((passed + p)); failed=$((failed + f))
    [ $rc -ne 0 ] && [ "$f" -eq 0 ] && broken=$((broken + 1))
done
failed=$((failed + broken))
echo "tests: $passed passed, $failed failed"
[ $failed -eq 0 ]
