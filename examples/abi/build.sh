#!/bin/sh
# Builds examples/abi/hello.c (as C99 and C11) and hello.cpp (as C++11 and
# C++17) against an installed libblackmamba, using only the installed header
# and pkg-config, with -Wall -Wextra -Werror -pedantic, then runs each against
# a model (and tokenizer) with the installed shared library.
#
#   sh examples/abi/build.sh ROOT PREFIX OUT MODEL [TOKENIZER_JSON]
#
# ROOT is the DESTDIR of `make install` ("" for a real install), PREFIX its
# PREFIX (e.g. /usr), OUT a scratch directory for the programs.
set -eu
root=$1; prefix=$2; out=$3; model=$4; tok=${5:-}
here=$(dirname "$0")
mkdir -p "$out"
export PKG_CONFIG_PATH="$root$prefix/lib/pkgconfig"
[ -n "$root" ] && export PKG_CONFIG_SYSROOT_DIR="$root"
flags=$(pkg-config --cflags --libs blackmamba)
export LD_LIBRARY_PATH="$root$prefix/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
cc=${CC:-cc}; cxx=${CXX:-c++}
n=0
for std in c99 c11; do
    # shellcheck disable=SC2086
    $cc -std=$std -Wall -Wextra -Werror -pedantic "$here/hello.c" $flags -o "$out/hello_$std"
    "$out/hello_$std" "$model" $tok >"$out/hello_$std.out"
    n=$((n + 1))
done
for std in c++11 c++17; do
    # shellcheck disable=SC2086
    $cxx -std=$std -Wall -Wextra -Werror -pedantic "$here/hello.cpp" $flags -o "$out/hello_$std"
    "$out/hello_$std" "$model" $tok >"$out/hello_$std.out"
    n=$((n + 1))
done
# The C programs print the same tokens whatever the standard.
cmp -s "$out/hello_c99.out" "$out/hello_c11.out"
# They link the shared library by its SONAME, not the static one.
readelf -d "$out/hello_c11" | grep -q 'NEEDED.*libblackmamba\.so\.'
cat "$out/hello_c11.out"
echo "abi examples: $n built with -Werror -pedantic and run"
