#!/bin/sh
# Makes the fuzz seed corpora from the fixtures, at test time (the fixtures
# are never copied into the repository).
#
#   sh test/fuzz/make_corpus.sh SHARED OUT [BUILD]
#
# SHARED is the fixture tree (../shared), OUT receives one directory per fuzz
# target (OUT/safetensors, OUT/torch, OUT/config, OUT/state, OUT/tokenizer_json,
# OUT/tokenize, OUT/weights), BUILD is a build directory holding bm-mkmodel and
# bm-generate (default build). Seeds that need something missing (a fixture,
# a tool, python3) are skipped with a note on stderr; the committed corpora in
# test/fuzz/corpus/ are used either way.
#
# Seeds:
#   safetensors     the fixtures' model.safetensors and golden.safetensors, and
#                   three micro models (a few KB: fast to fuzz) from bm-mkmodel
#   torch           the fixtures' pytorch_model.bin and the micro models'
#   config          the fixtures' and micro models' config.json
#   weights         micro models 1 and 2 in both formats, each behind the byte
#                   that makes fuzz_weights use its configuration
#   state           states saved by bm-generate from both fixtures (the
#                   tiny-bf16 ones are another model's: the mismatch paths)
#   tokenizer_json  the real tokenizer.json and two cut-down copies of it (a
#                   few hundred vocabulary entries and merges, python3)
#   tokenize        the tokenizer golden texts
set -u
shared=${1:?usage: make_corpus.sh SHARED OUT [BUILD]}
out=${2:?usage: make_corpus.sh SHARED OUT [BUILD]}
build=${3:-build}
note() { echo "make_corpus: $*" >&2; }

for t in safetensors torch config state tokenizer_json tokenize weights; do
    rm -rf "$out/$t"
    mkdir -p "$out/$t"
done

for fx in tiny-f32 tiny-bf16; do
    d=$shared/fixtures/$fx
    if [ ! -d "$d" ]; then note "no $d: fixture seeds skipped"; continue; fi
    cp "$d/model.safetensors" "$out/safetensors/$fx-model.safetensors"
    cp "$d/golden.safetensors" "$out/safetensors/$fx-golden.safetensors"
    cp "$d/pytorch_model.bin" "$out/torch/$fx-pytorch_model.bin"
    cp "$d/config.json" "$out/config/$fx-config.json"
    if [ -x "$build/bm-generate" ]; then
        # A fresh-looking state (one token) and one after a few generated tokens.
        "$build/bm-generate" -m "$d" --backend cpu --threads 1 --ids -p "1" -n 1 --temp 0 -q \
            --state-out "$out/state/$fx-1.state" >/dev/null 2>&1 || note "bm-generate failed on $fx"
        "$build/bm-generate" -m "$d" --backend cpu --threads 1 --ids -p "5 17 42 7" -n 4 --seed 3 -q \
            --state-out "$out/state/$fx-8.state" >/dev/null 2>&1 || note "bm-generate failed on $fx"
    else
        note "no $build/bm-generate: state seeds skipped"
    fi
done

# Micro models: every layer kind, both formats, f16/bf16/f32, biases and the
# ungated MLP, so the fuzzer mutates kilobytes rather than megabytes.
if [ -x "$build/bm-mkmodel" ]; then
    tmp=$(mktemp -d)
    i=0
    for args in "--d-model 8 --layers r,2,1,r1 --ffn 8 --vocab 16 --state 2 --conv 2 --expand 1 --dtype f16" \
                "--d-model 4 --layers r,3 --ffn 4 --vocab 8 --state 1 --conv 1 --expand 1 --dtype bf16 --bias --no-swiglu" \
                "--d-model 4 --layers r --vocab 4 --state 1 --conv 2 --expand 2 --dtype f32"; do
        i=$((i + 1))
        # shellcheck disable=SC2086
        if "$build/bm-mkmodel" "$tmp/m$i" $args --format both --seed $i --quiet >/dev/null 2>&1; then
            cp "$tmp/m$i/model.safetensors" "$out/safetensors/micro$i.safetensors"
            cp "$tmp/m$i/pytorch_model.bin" "$out/torch/micro$i.bin"
            cp "$tmp/m$i/config.json" "$out/config/micro$i.json"
            # fuzz_weights: a byte choosing the configuration, then the file.
            if [ $i -le 2 ]; then
                sel=$(printf '\\%03o' $((i - 1)))
                { printf "$sel"; cat "$tmp/m$i/model.safetensors"; } >"$out/weights/micro$i-safetensors"
                { printf "$sel"; cat "$tmp/m$i/pytorch_model.bin"; } >"$out/weights/micro$i-torch"
            fi
        else
            note "bm-mkmodel $args failed"
        fi
    done
    rm -rf "$tmp"
else
    note "no $build/bm-mkmodel: micro model seeds skipped"
fi

tok=$shared/tokenizer/20B_tokenizer.json
if [ -f "$tok" ]; then
    cp "$tok" "$out/tokenizer_json/20B_tokenizer.json"
    if command -v python3 >/dev/null 2>&1; then
        python3 - "$tok" "$out/tokenizer_json" <<'EOF' || note "cutting tokenizer.json failed"
import json, sys
src, dst = sys.argv[1], sys.argv[2]
full = json.load(open(src, encoding="utf-8"))
for keep in (300, 1200):
    t = json.loads(json.dumps(full))
    vocab = {k: v for k, v in t["model"]["vocab"].items() if v < keep}
    t["model"]["vocab"] = vocab
    merges = []
    for m in t["model"]["merges"]:
        a, b = m.split(" ", 1) if isinstance(m, str) else m
        if a in vocab and b in vocab and a + b in vocab:
            merges.append(m)
    t["model"]["merges"] = merges
    t["added_tokens"] = [a for a in t["added_tokens"] if a["id"] < keep]
    with open("%s/cut%d.json" % (dst, keep), "w", encoding="utf-8") as f:
        json.dump(t, f, ensure_ascii=False, indent=1)
EOF
    else
        note "no python3: cut-down tokenizer seeds skipped"
    fi
else
    note "no $tok: tokenizer seeds skipped"
fi

for f in "$shared"/tokenizer/golden/*.txt; do
    [ -f "$f" ] && cp "$f" "$out/tokenize/golden-$(basename "$f")"
done
exit 0
