#!/bin/sh
# The Python bindings' tests (bindings/python/tests), run twice: with numpy
# (when it can be imported) and with numpy hidden (BLACKMAMBA_NO_NUMPY=1).
# Uses the library of $BM_BUILD (default build) and fixtures of $BM_SHARED.
# Prints per-run lines, then "test_python: N passed, N failed".
cd "$(dirname "$0")/.." || exit 1
BUILD=${BM_BUILD:-build}
SHARED=${BM_SHARED:-../shared}
PY=${PYTHON:-python3}
case $BUILD in /*) ;; *) BUILD=$(pwd)/$BUILD ;; esac
case $SHARED in /*) ;; *) SHARED=$(pwd)/$SHARED ;; esac
LIB=$BUILD/libblackmamba.so.0
name=test_python

skip() { echo "$name: SKIP: $*"; echo "$name: 0 passed, 0 failed"; exit 0; }
command -v "$PY" >/dev/null 2>&1 || skip "$PY not found"
[ -e "$LIB" ] || { echo "$name: $LIB not built"; echo "$name: 0 passed, 1 failed"; exit 1; }
# A sanitizer build cannot be loaded into an ordinary python process.
if nm -D "$LIB" 2>/dev/null | grep -q '__asan_\|__ubsan_\|__tsan_'; then
    skip "$LIB is a sanitizer build; the bindings are tested against the normal build"
fi

passed=0; failed=0
run() {
    label=$1; shift
    out=$(env "$@" BLACKMAMBA_LIB="$LIB" BM_SHARED="$SHARED" "$PY" bindings/python/tests/run.py "$label" 2>&1)
    rc=$?
    line=$(printf '%s\n' "$out" | grep -E "^$label: [0-9]+ passed, [0-9]+ failed\$" | tail -n 1)
    if [ -z "$line" ] || [ $rc -ne 0 ]; then printf '%s\n' "$out" | tail -n 80; fi
    printf '%s\n' "$out" | grep '^SKIP ' | sed "s/^/$label: /"
    if [ -z "$line" ]; then
        echo "$label: exited $rc without a summary"; failed=$((failed + 1)); return
    fi
    echo "$line"
    p=$(echo "$line" | sed -E 's/.*: ([0-9]+) passed, ([0-9]+) failed/\1/')
    f=$(echo "$line" | sed -E 's/.*: ([0-9]+) passed, ([0-9]+) failed/\2/')
    passed=$((passed + p)); failed=$((failed + f))
    [ $rc -ne 0 ] && [ "$f" -eq 0 ] && failed=$((failed + 1))
}

if "$PY" -c "import numpy" >/dev/null 2>&1; then
    run test_python_numpy
else
    echo "$name: SKIP: the numpy run: numpy cannot be imported by $PY (Debian: apt-get install python3-numpy)"
fi
run test_python_nonumpy BLACKMAMBA_NO_NUMPY=1
echo "$name: $passed passed, $failed failed"
[ $failed -eq 0 ]
