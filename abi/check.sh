#!/bin/sh
# The ABI check of CI (docs/ABI.md): compares a freshly built shared library
# with the committed baseline abi/libblackmamba.abi and the status values with
# abi/constants.txt.
#
#   sh abi/check.sh BUILD_DIR
#
# BUILD_DIR holds libblackmamba.so.<version> built with -g (CI uses a CUDA=0
# -O0 -g build). Fails on anything abidiff (Debian abigail-tools) reports
# except added functions: a removed or changed function, a public struct or
# enum that changed, a changed SONAME or symbol version. Also fails when a
# status code (#define BM_OK / BM_ERR_*) of the baseline is missing or has
# another value.
set -u
build=${1:?usage: abi/check.sh BUILD_DIR}
here=$(dirname "$0")
lib=$(ls "$build"/libblackmamba.so.*.*.* 2>/dev/null | head -n 1)
[ -n "$lib" ] || { echo "abi check: no $build/libblackmamba.so.X.Y.Z"; exit 1; }
command -v abidiff >/dev/null || { echo "abi check: abidiff missing (apt-get install abigail-tools)"; exit 1; }
fail=0

# abidiff's exit status is a bit mask: 1 error, 2 usage, 4 ABI change,
# 8 incompatible change (a removed symbol). Added functions are ABI changes
# (4) too, so a 4 is looked at again with added symbols ignored.
abidiff --headers-dir2 include --drop-private-types "$here/libblackmamba.abi" "$lib" >"$build/abidiff.txt" 2>&1
rc=$?
if [ $rc -eq 4 ]; then
    abidiff --no-added-syms --headers-dir2 include --drop-private-types "$here/libblackmamba.abi" "$lib" \
        >"$build/abidiff-incompatible.txt" 2>&1
    rc2=$?
    if [ $rc2 -ne 0 ]; then
        echo "abi check: incompatible change against abi/libblackmamba.abi:"
        cat "$build/abidiff-incompatible.txt"
        fail=1
    else
        echo "abi check: compatible additions only:"
        grep -E '^\s+\[A\]' "$build/abidiff.txt"
    fi
elif [ $rc -ne 0 ]; then
    echo "abi check: abidiff exit status $rc against abi/libblackmamba.abi:"
    cat "$build/abidiff.txt"
    fail=1
fi

# Status values never change (they are macros: invisible to abidiff).
current=$(sh "$here/constants.sh" include/blackmamba.h)
while IFS= read -r line; do
    case $line in ''|'#'*) continue ;; esac
    printf '%s\n' "$current" | grep -qxF "$line" || { echo "abi check: status value changed or removed: $line"; fail=1; }
done <"$here/constants.txt"

n=$(grep -c "<elf-symbol name='bm_" "$here/libblackmamba.abi")
if [ $fail -eq 0 ]; then
    echo "abi check: compatible with the baseline ($n functions) and its status values"
    echo "check_abi: 2 passed, 0 failed"
else
    echo "check_abi: 0 passed, 1 failed"
fi
exit $fail
