#!/bin/sh
# bm-generate end to end: help, error paths, determinism, a conversation
# resumed from a saved state, and text through the GPT-NeoX tokenizer.
BUILD=${BM_BUILD:-build}
SHARED=${BM_SHARED:-../shared}
GEN=$BUILD/bm-generate
FIX=$SHARED/fixtures/tiny-bf16
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
passed=0; failed=0
ok() { passed=$((passed + 1)); }
bad() { failed=$((failed + 1)); echo "test_cli: FAILED: $*" >&2; }
check() { if eval "$2"; then ok; else bad "$1"; fi; }

"$GEN" --help >"$TMP/help" 2>&1; rc=$?
check "--help exits 0" '[ $rc -eq 0 ]'
for flag in --model --prompt --n-tokens --temp --top-k --top-p --min-p --repeat-penalty --seed --backend \
            --threads --state-in --state-out --tokenizer --stop; do
    check "--help documents $flag" "grep -q -- '$flag' '$TMP/help'"
done

"$GEN" -m "$TMP/missing" -p hi >"$TMP/out" 2>"$TMP/err"; rc=$?
check "missing model exits non-zero" '[ $rc -ne 0 ]'
check "missing model says why" "grep -q 'cannot open model' '$TMP/err'"
"$GEN" -m "$FIX" --frobnicate >"$TMP/out" 2>"$TMP/err"; rc=$?
check "unknown flag exits 2" '[ $rc -eq 2 ]'
check "unknown flag is named" "grep -q frobnicate '$TMP/err'"
"$GEN" -m "$FIX" --temp hot -p 1 >"$TMP/out" 2>"$TMP/err"; rc=$?
check "bad number exits 2" '[ $rc -eq 2 ]'
"$GEN" -m "$FIX" --ids -p "1 2 999999" -q >"$TMP/out" 2>"$TMP/err"; rc=$?
check "out-of-range token fails" '[ $rc -ne 0 ] && grep -q "outside" "$TMP/err"'
"$GEN" -m "$FIX" --backend tpu -p 1 >"$TMP/out" 2>"$TMP/err"; rc=$?
check "unknown backend exits 2" '[ $rc -eq 2 ]'
"$GEN" -m "$FIX" -p "hello" -q >"$TMP/out" 2>"$TMP/err"; rc=$?
check "text without a tokenizer fails with advice" '[ $rc -ne 0 ] && grep -q -- "--tokenizer" "$TMP/err"'

# determinism: the same seed gives the same tokens; greedy ignores the seed
"$GEN" -m "$FIX" --ids -p "5 6 7" -n 12 --seed 3 -q >"$TMP/a" 2>/dev/null
"$GEN" -m "$FIX" --ids -p "5 6 7" -n 12 --seed 3 -q --threads 1 >"$TMP/b" 2>/dev/null
check "same seed, same tokens" 'cmp -s "$TMP/a" "$TMP/b" && [ -s "$TMP/a" ]'
check "12 tokens printed" '[ $(wc -w <"$TMP/a") -eq 12 ]'

# a conversation: (prompt, 4 tokens, save) then (resume, next prompt) equals one run over everything
"$GEN" -m "$FIX" --ids -p "5 6 7" -n 4 --temp 0 -q --state-out "$TMP/s.bin" >"$TMP/t1" 2>/dev/null
"$GEN" -m "$FIX" --ids -p "9" -n 6 --temp 0 -q --state-in "$TMP/s.bin" >"$TMP/t2" 2>/dev/null
"$GEN" -m "$FIX" --ids -p "5 6 7 $(cat "$TMP/t1") 9" -n 6 --temp 0 -q >"$TMP/t3" 2>/dev/null
check "resumed conversation continues exactly" 'cmp -s "$TMP/t2" "$TMP/t3" && [ -s "$TMP/t2" ]'
printf 'garbage' >"$TMP/bad.bin"
"$GEN" -m "$FIX" --ids -p "1" -q --state-in "$TMP/bad.bin" >"$TMP/out" 2>"$TMP/err"; rc=$?
check "corrupt state file fails" '[ $rc -ne 0 ] && grep -q "saved" "$TMP/err"'

# text: a random model with the released vocabulary rows and the GPT-NeoX tokenizer
if [ -f "$SHARED/tokenizer/20B_tokenizer.json" ]; then
    "$BUILD/bm-mkmodel" "$TMP/m" --dims tiny --vocab 50304 --seed 5 >/dev/null 2>&1
    cp "$SHARED/tokenizer/20B_tokenizer.json" "$TMP/m/tokenizer.json"
    "$GEN" -m "$TMP/m" -p "Once upon a time" -n 16 --seed 9 >"$TMP/text" 2>"$TMP/err"; rc=$?
    check "text generation runs" '[ $rc -eq 0 ] && [ -s "$TMP/text" ]'
    check "timings on stderr" "grep -q 'tokens/s' '$TMP/err'"
    echo "Once upon a time" | "$GEN" -m "$TMP/m" -n 16 --seed 9 >"$TMP/text2" 2>/dev/null
    check "prompt from stdin (with its newline) also generates" '[ -s "$TMP/text2" ]'
    "$GEN" -m "$TMP/m" -p "Once upon a time" -n 16 --seed 9 -q >"$TMP/text3" 2>/dev/null
    check "same seed, same text" 'cmp -s "$TMP/text" "$TMP/text3"'
fi
echo "test_cli: $passed passed, $failed failed"
[ $failed -eq 0 ]
