"""Choosing the next token from logits (bm_sample)."""
from __future__ import annotations

import os
from ctypes import byref, c_int32, c_uint64
from typing import Any, Iterable, Optional, Tuple

from . import _buffers, _native
from ._handle import check

_U64 = (1 << 64) - 1


def sampler_params(temperature: Optional[float] = None, top_k: Optional[int] = None, top_p: Optional[float] = None,
                   min_p: Optional[float] = None, repeat_penalty: Optional[float] = None,
                   n_vocab_valid: Optional[int] = None, into: Any = None) -> Any:
    """A bm_sampler_params with the library's defaults, overridden where not None."""
    p = into if into is not None else _native.init_struct(_native.SamplerParamsC, _native.lib().bm_sampler_params_init)
    if temperature is not None:
        p.temperature = float(temperature)
    if top_k is not None:
        p.top_k = _buffers.one_id(top_k, "top_k")
    if top_p is not None:
        p.top_p = float(top_p)
    if min_p is not None:
        p.min_p = float(min_p)
    if repeat_penalty is not None:
        p.repeat_penalty = float(repeat_penalty)
    if n_vocab_valid is not None:
        p.n_vocab_valid = _buffers.one_id(n_vocab_valid, "n_vocab_valid")
    return p


def random_seed() -> int:
    """A fresh 64-bit seed from the operating system."""
    return int.from_bytes(os.urandom(8), "little")


def sample(logits: Any, *, temperature: Optional[float] = None, top_k: Optional[int] = None,
           top_p: Optional[float] = None, min_p: Optional[float] = None, repeat_penalty: Optional[float] = None,
           n_vocab_valid: Optional[int] = None, recent: Iterable[int] = (), rng_state: int = 0) -> Tuple[int, int]:
    """Choose a token from ``logits`` (numpy array, array('f') or sequence of floats).

    Parameters left as None take the library's defaults (temperature 0.8,
    top_k 40, top_p 0.95, min_p 0.05, repeat_penalty 1.1; temperature 0 is
    greedy). ``recent`` are the ids the repetition penalty applies to.
    ``rng_state`` is the 64-bit generator state (any int; taken mod 2**64).

    Returns ``(token, new_rng_state)``: pass the new state to the next call
    for a reproducible sequence. Exactly one draw is made per call. Raises
    InvalidArgumentError for bad parameters or logits with no candidate.
    """
    p = sampler_params(temperature, top_k, top_p, min_p, repeat_penalty, n_vocab_valid)
    keep_l, pl, n = _buffers.floats_in(logits)
    keep_r, pr, nr = _buffers.ids_in(recent, "recent")
    rng = c_uint64(int(rng_state) & _U64)
    tok = c_int32(0)
    check(_native.lib().bm_sample(pl, n, byref(p), byref(rng), pr, nr, byref(tok)), "bm_sample")
    return tok.value, rng.value


class Sampler:
    """Sampling parameters plus the generator state they draw from.

    >>> s = Sampler(seed=42, temperature=0.7, top_k=50)
    >>> token = s.sample(logits)            # advances s.rng_state

    Attributes ``temperature``, ``top_k``, ``top_p``, ``min_p``,
    ``repeat_penalty``, ``n_vocab_valid`` may be changed between calls. A
    seed of None draws one from the operating system.
    """

    def __init__(self, seed: Optional[int] = None, *, temperature: Optional[float] = None,
                 top_k: Optional[int] = None, top_p: Optional[float] = None, min_p: Optional[float] = None,
                 repeat_penalty: Optional[float] = None, n_vocab_valid: Optional[int] = None) -> None:
        p = sampler_params(temperature, top_k, top_p, min_p, repeat_penalty, n_vocab_valid)
        self.temperature: float = p.temperature
        self.top_k: int = p.top_k
        self.top_p: float = p.top_p
        self.min_p: float = p.min_p
        self.repeat_penalty: float = p.repeat_penalty
        self.n_vocab_valid: int = p.n_vocab_valid
        self.rng_state: int = (random_seed() if seed is None else int(seed)) & _U64

    def sample(self, logits: Any, recent: Iterable[int] = ()) -> int:
        """Choose a token and advance ``rng_state``."""
        tok, self.rng_state = sample(logits, temperature=self.temperature, top_k=self.top_k, top_p=self.top_p,
                                     min_p=self.min_p, repeat_penalty=self.repeat_penalty,
                                     n_vocab_valid=self.n_vocab_valid, recent=recent, rng_state=self.rng_state)
        return tok

    def __repr__(self) -> str:
        return (f"Sampler(temperature={self.temperature:g}, top_k={self.top_k}, top_p={self.top_p:g}, "
                f"min_p={self.min_p:g}, repeat_penalty={self.repeat_penalty:g}, n_vocab_valid={self.n_vocab_valid}, "
                f"rng_state={self.rng_state})")
