#!/bin/sh
# Refreshes the ABI baseline (docs/ABI.md says when: at a release, never to
# make abi/check.sh pass). Builds a CUDA=0 debug library in build-abi and
# writes abi/libblackmamba.abi and abi/constants.txt from it.
#
#   sh abi/update.sh [BUILD_DIR]
set -eu
build=${1:-build-abi}
make BUILD="$build" CUDA=0 CFLAGS="-O0 -g" lib >/dev/null
lib=$(ls "$build"/libblackmamba.so.*.*.* | head -n 1)
abidw --exported-interfaces-only --headers-dir include --drop-private-types --no-corpus-path \
      --out-file abi/libblackmamba.abi "$lib"
{
    echo "# Status values of include/blackmamba.h: they never change (abi/check.sh)."
    sh abi/constants.sh include/blackmamba.h
} >abi/constants.txt
echo "abi baseline: $(grep -c "<elf-symbol name='bm_" abi/libblackmamba.abi) functions from $lib"
