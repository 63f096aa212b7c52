#!/bin/sh
# Here (the build machine): gather what cuda/dev/device_run.sh needs on the
# GPU machine into .carry/ (ignored by git): the GPU test programs, the
# harnesses and bm-bench from BUILD (stripped), the shared libraries the
# library links that the GPU machine lacks, and the fixtures.
# Usage: sh cuda/dev/prepare_carry.sh [BUILD] [SHARED]
set -eu
BUILD=${1:-build-cuda}
SHARED=${2:-../shared}
rm -rf .carry/bin .carry/lib .carry/fixtures
mkdir -p .carry/bin/dev .carry/lib .carry/fixtures
for f in test_cuda_backend test_cuda_batch test_cuda_sample test_cuda_oom bm-bench; do strip -o .carry/bin/$f "$BUILD/$f"; done
# only harnesses whose source is still here: a BUILD made before one was
# removed or merged keeps its binary, which device_run.sh would run
for f in "$BUILD"/dev/*; do
    if [ -f "cuda/dev/$(basename "$f").cu" ]; then strip -o .carry/bin/dev/$(basename "$f") "$f"; fi
done
for l in libyaml-0.so.2 libjansson.so.4 libutf8proc.so.2; do
    cp -L "$(ldconfig -p | awk -v l=$l '$1 == l { print $NF; exit }')" .carry/lib/
done
for fx in tiny-f32 tiny-bf16; do
    mkdir -p .carry/fixtures/$fx
    cp "$SHARED/fixtures/$fx/config.json" "$SHARED/fixtures/$fx/model.safetensors" \
       "$SHARED/fixtures/$fx/golden.safetensors" .carry/fixtures/$fx/
done
du -sh .carry
