"""Shared helpers for the binding tests: where things are, a tiny
safetensors reader, and logit comparisons that work without numpy."""
from __future__ import annotations

import json
import math
import os
import struct
import sys
from array import array
from typing import Dict, List, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
sys.path.insert(0, os.path.dirname(HERE))  # the in-tree package wins over an installed one

if not os.environ.get("BLACKMAMBA_LIB"):
    build = os.environ.get("BM_BUILD", "build")
    cand = os.path.join(REPO if not os.path.isabs(build) else "", build, "libblackmamba.so.0")
    if os.path.exists(cand):
        os.environ["BLACKMAMBA_LIB"] = cand

import blackmamba  # noqa: E402


def shared_dir() -> str:
    s = os.environ.get("BM_SHARED") or "../shared"
    return s if os.path.isabs(s) else os.path.normpath(os.path.join(REPO, s))


def fixture(name: str) -> str:
    return os.path.join(shared_dir(), "fixtures", name)


FIXTURES = ["tiny-f32", "tiny-bf16"]
TOKENIZER_JSON = os.path.join(shared_dir(), "tokenizer", "20B_tokenizer.json")
TOKENIZER_GOLDEN = os.path.join(shared_dir(), "tokenizer", "golden")


def read_safetensors(path: str) -> Dict[str, Tuple[List[int], array]]:
    """name -> (shape, flat array('f' or 'i')) for F32 and I32 tensors."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack_from("<Q", data, 0)
    header = json.loads(data[8:8 + n].decode("utf-8"))
    base = 8 + n
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        code = {"F32": "f", "I32": "i"}[t["dtype"]]
        a = array(code)
        lo, hi = t["data_offsets"]
        a.frombytes(data[base + lo:base + hi])
        if sys.byteorder != "little":
            a.byteswap()
        out[name] = (list(t["shape"]), a)
    return out


class Prompt:
    def __init__(self, g: Dict, k: int, vocab: int) -> None:
        self.prompt = list(g[f"p{k}.prompt"][1])
        self.decode_tokens = list(g[f"p{k}.decode_tokens"][1])
        dl = g[f"p{k}.decode_logits"][1]
        self.decode_logits = [dl[i * vocab:(i + 1) * vocab] for i in range(len(self.decode_tokens))]
        pl = g.get(f"p{k}.prefill_logits")
        self.prefill_logits = None
        if pl is not None:
            self.prefill_logits = [pl[1][i * vocab:(i + 1) * vocab] for i in range(len(self.prompt))]


def golden(name: str) -> Tuple[int, List[Prompt]]:
    g = read_safetensors(os.path.join(fixture(name), "golden.safetensors"))
    vocab = g["p0.decode_logits"][0][1]
    prompts = []
    k = 0
    while f"p{k}.prompt" in g:
        prompts.append(Prompt(g, k, vocab))
        k += 1
    return vocab, prompts


def rel_error(a, b) -> float:
    """||a - b|| / ||b|| for two rows (numpy arrays, array('f') or lists)."""
    num = den = 0.0
    for x, y in zip(list(a), list(b)):
        num += (float(x) - float(y)) ** 2
        den += float(y) ** 2
    if len(list(a)) != len(list(b)):
        return math.inf
    return math.sqrt(num) / math.sqrt(den) if den else (0.0 if num == 0 else math.inf)


def argmax(row) -> int:
    row = list(row)
    best = 0
    for i, v in enumerate(row):
        if v > row[best]:
            best = i
    return best


def as_rows(x) -> list:
    """A 2-D result as a list of rows, whichever form it came in."""
    return [x[i] for i in range(len(x))]


def has(name: str) -> bool:
    return blackmamba.has_symbol(name)


TOL = 1e-4
