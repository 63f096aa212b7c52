#!/usr/bin/env python3
"""The CPU backend against an independent numpy float64 reference of
SPEC.md (test/reference/spec_forward.py) on random-weight models of every
layer kind, with biases, without swiglu, with the SiLU option and in f32, f16
and bf16 storage. Models are written by bm-mkmodel; logits come through the
Python binding. Prints "test_reference: N passed, N failed"."""
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BUILD = os.environ.get("BM_BUILD", os.path.join(ROOT, "build"))
sys.path.insert(0, os.path.join(ROOT, "bindings", "python"))
sys.path.insert(0, os.path.join(HERE, "reference"))

passed = failed = 0


def check(cond, what):
    global passed, failed
    if cond:
        passed += 1
    else:
        failed += 1
        print(f"test_reference: FAILED: {what}", file=sys.stderr)


try:
    import numpy as np
except ImportError:
    print("test_reference: numpy is not installed: SKIP")
    print("test_reference: 0 passed, 0 failed")
    sys.exit(0)

os.environ.setdefault("BLACKMAMBA_LIB", os.path.join(BUILD, "libblackmamba.so"))
import blackmamba as bm  # noqa: E402
from spec_forward import Reference  # noqa: E402

CONFIGS = [
    # (layers, extra flags, dtype, activation)
    ("r,4,r,4", [], "f32", "gelu"),
    ("r,1,r2,r1", [], "f32", "gelu"),
    ("r3,1,r,3", ["--bias"], "f32", "gelu"),
    ("r,2,r1,3", ["--no-swiglu"], "f32", "gelu"),
    ("r2,r,1,4", ["--bias", "--no-swiglu"], "f32", "silu"),
    ("r,3,r,3", [], "f16", "gelu"),
    ("r,3,r4", [], "bf16", "silu"),
    ("", ["--n-layers", "3"], "f32", "gelu"),  # plain Mamba, empty layer list
]


def rel_err(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def run_config(tmp, k, layers, flags, dtype, activation):
    d = os.path.join(tmp, f"m{k}")
    cmd = [os.path.join(BUILD, "bm-mkmodel"), d, "--d-model", "48", "--ffn", "40", "--vocab", "97",
           "--layers", layers, "--dtype", dtype, "--format", "safetensors", "--seed", str(100 + k), "--quiet"] + flags
    subprocess.run(cmd, check=True)
    ref = Reference(d, activation)
    rng = np.random.default_rng(k)
    tokens = [int(t) for t in rng.integers(0, 97, size=11)]
    ref_states = ref.new_state()
    ref_logits = np.stack([ref.step(ref_states, t) for t in tokens])
    label = f"{layers or 'r*3'} {' '.join(flags)} {dtype} {activation}"
    with bm.Model(d, backend="cpu", threads=2, activation=activation) as model:
        state = model.new_state()
        session = model.new_session()
        got = np.asarray(session.prefill_all(state, tokens), dtype=np.float64)
        worst = max(rel_err(got[t], ref_logits[t]) for t in range(len(tokens)))
        check(worst <= 1e-4, f"{label}: prefill_all rel error {worst:.3g}")
        check(all(int(np.argmax(got[t])) == int(np.argmax(ref_logits[t])) for t in range(len(tokens))),
              f"{label}: greedy tokens differ")
        # decode steps after the prompt
        nxt = int(np.argmax(ref_logits[-1]))
        worst = 0.0
        for _ in range(5):
            g = np.asarray(session.step(state, nxt), dtype=np.float64)
            r = ref.step(ref_states, nxt)
            worst = max(worst, rel_err(g, r))
            nxt = int(np.argmax(r))
        check(worst <= 1e-4, f"{label}: decode rel error {worst:.3g}")
        session.close()
        state.close()


def sanitizer_build(lib):
    """A sanitizer build cannot be loaded into an ordinary python process."""
    try:
        out = subprocess.run(["nm", "-D", lib], capture_output=True, text=True).stdout
    except OSError:
        return False
    return any(tag in out for tag in ("__asan_", "__ubsan_", "__tsan_"))


def main():
    if sanitizer_build(os.environ["BLACKMAMBA_LIB"]):
        print("test_reference: SKIP: a sanitizer build; the reference runs against the normal build")
        print("test_reference: 0 passed, 0 failed")
        return 0
    if not os.path.exists(os.path.join(BUILD, "bm-mkmodel")):
        print(f"test_reference: {BUILD}/bm-mkmodel is missing (build first)", file=sys.stderr)
        check(False, "build")
    else:
        with tempfile.TemporaryDirectory() as tmp:
            for k, cfg in enumerate(CONFIGS):
                try:
                    run_config(tmp, k, *cfg)
                except Exception as e:  # a failure to load or run is a failed check, not a crash
                    check(False, f"{cfg}: {type(e).__name__}: {e}")
    print(f"test_reference: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
