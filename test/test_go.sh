#!/bin/sh
# The Go bindings' tests (bindings/go: go vet and go test ./...), built
# against the library of $BM_BUILD (default build) through a pkg-config file
# generated for the build tree, offline (GOPROXY=off) with a private GOCACHE.
# Prints "test_go: N passed, N failed" (one per top-level Go test).
cd "$(dirname "$0")/.." || exit 1
ROOT=$(pwd)
BUILD=${BM_BUILD:-build}
SHARED=${BM_SHARED:-../shared}
case $BUILD in /*) ;; *) BUILD=$ROOT/$BUILD ;; esac
case $SHARED in /*) ;; *) SHARED=$ROOT/$SHARED ;; esac
LIB=$BUILD/libblackmamba.so.0
name=test_go

skip() { echo "$name: SKIP: $*"; echo "$name: 0 passed, 0 failed"; exit 0; }
command -v go >/dev/null 2>&1 || skip "go not found (Debian: apt-get install golang-go)"
command -v pkg-config >/dev/null 2>&1 || skip "pkg-config not found"
[ -e "$LIB" ] || { echo "$name: $LIB not built"; echo "$name: 0 passed, 1 failed"; exit 1; }
if nm -D "$LIB" 2>/dev/null | grep -q '__asan_\|__ubsan_\|__tsan_'; then
    skip "$LIB is a sanitizer build; the bindings are tested against the normal build"
fi

TMP=$(mktemp -d)
trap 'chmod -R u+w "$TMP" 2>/dev/null; rm -rf "$TMP"' EXIT
cat >"$TMP/blackmamba.pc" <<PC
libdir=$BUILD
includedir=$ROOT/include

Name: blackmamba
Description: libblackmamba of the build tree $BUILD
Version: 0.1.0
Libs: -L\${libdir} -Wl,-rpath,\${libdir} -lblackmamba
Cflags: -I\${includedir}
PC
export PKG_CONFIG_PATH="$TMP" GOCACHE="$TMP/cache" GOPATH="$TMP/gopath" GOFLAGS=-mod=mod GOPROXY=off \
       GO111MODULE=on CGO_ENABLED=1 BM_SHARED="$SHARED" LD_LIBRARY_PATH="$BUILD${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
cd bindings/go || exit 1
out=$(go vet ./... 2>&1 && go test -count=1 -timeout 300s -v ./... 2>&1); rc=$?
passed=$(printf '%s\n' "$out" | grep -c '^--- PASS')
failed=$(printf '%s\n' "$out" | grep -c '^--- FAIL')
printf '%s\n' "$out" | grep -B1 '^--- SKIP' | grep -v '^--' | sed -E "s/^ */$name: /"
if [ $rc -ne 0 ]; then
    printf '%s\n' "$out" | grep -v '^=== \|^--- PASS' | tail -n 80
    [ "$failed" -eq 0 ] && failed=1
fi
echo "$name: $passed passed, $failed failed"
[ $rc -eq 0 ]
