"""Models, states and sessions: running BlackMamba."""
from __future__ import annotations

import ctypes
import enum
import os
import queue
import threading
import weakref
from ctypes import byref, c_char_p, c_size_t, c_uint64, c_void_p
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, List, Optional, Sequence, Union

from . import _buffers, _native
from ._handle import Claim, Handle, check, need
from .errors import InvalidArgumentError
from .sampling import _U64, random_seed, sampler_params
from .tokenizer import Tokenizer

PathLike = Union[str, bytes, "os.PathLike[str]"]


class Backend(enum.IntEnum):
    """Where a model computes (bm_backend)."""
    AUTO = 0
    CPU = 1
    CUDA = 2


class Activation(enum.IntEnum):
    """The MLP gate activation (bm_activation)."""
    GELU = 0
    SILU = 1


class StopReason(enum.IntEnum):
    """Why a generation ended (bm_stop_reason)."""
    NONE = 0
    EOS = 1
    STRING = 2
    MAX_TOKENS = 3
    CALLBACK = 4


def _enum(cls: Any, value: Any, what: str) -> Any:
    if isinstance(value, str):
        try:
            return cls[value.upper()]
        except KeyError:
            names = ", ".join(repr(m.name.lower()) for m in cls)
            raise InvalidArgumentError(f"unknown {what} {value!r}; use one of {names}") from None
    try:
        return cls(value)
    except ValueError:
        raise InvalidArgumentError(f"unknown {what} {value!r}") from None


@dataclass(frozen=True)
class ModelInfo:
    """What bm_model_get_info reports about a loaded model (same field names)."""
    vocab_size: int
    d_model: int
    n_layers: int
    n_mamba_layers: int
    d_inner: int
    d_state: int
    d_conv: int
    dt_rank: int
    ffn_hidden: int
    max_experts: int
    backend: Backend
    activation: Activation
    weight_dtype: int
    n_params: int
    n_active_params: int
    state_bytes: int
    weight_bytes: int
    layer_kinds: str

    @property
    def weight_dtype_name(self) -> str:
        """"f32", "bf16" or "f16"."""
        return {0: "f32", 1: "bf16", 2: "f16"}.get(self.weight_dtype, f"dtype{self.weight_dtype}")


@dataclass(frozen=True)
class GenerateResult:
    """The outcome of a generation (bm_generate_result), plus its text and the
    generator state to continue from."""
    stop: StopReason
    n_prompt_tokens: int
    n_generated: int
    prompt_seconds: float
    generate_seconds: float
    rng_state: int
    text: str


class Model(Handle):
    """A loaded BlackMamba model: config and weights, immutable, thread-safe.

    ``path`` is a model directory (config.json and model.safetensors or
    pytorch_model.bin) or a weights file with config.json beside it.
    ``backend`` is "auto", "cpu" or "cuda" (or a :class:`Backend`);
    ``threads`` the CPU threads of sessions that do not choose their own (None:
    every online processor); ``activation`` "gelu" (the released reference
    code) or "silu"; ``device`` the CUDA device ordinal.

    Closing: ``close()`` (or leaving a ``with`` block) frees the model at once
    if no State, Session, Detokenizer of its tokenizer, or running generation
    is alive; otherwise it is marked closed (no new State or Session can be made
    from it, ``State.copy()`` included, and its tokenizer stops working) and freed when the last of them is
    closed or collected. Closing in any order therefore never crashes.

    >>> with Model("fixtures/tiny-f32", backend="cpu") as m:
    ...     st, sess = m.new_state(), m.new_session()
    ...     logits = sess.prefill(st, [1, 2, 3])
    """

    _kind = "Model"

    def __init__(self, path: PathLike, backend: Union[str, int] = "auto", threads: Optional[int] = None,
                 activation: Union[str, int] = "gelu", device: int = 0) -> None:
        L = _native.lib()
        p = _native.init_struct(_native.ModelParams, L.bm_model_params_init)
        p.backend = _enum(Backend, backend, "backend")
        p.activation = _enum(Activation, activation, "activation")
        p.n_threads = 0 if threads is None else _buffers.one_id(threads, "threads")
        p.device = _buffers.one_id(device, "device")
        out = c_void_p()
        check(L.bm_model_load(os.fsencode(path), byref(p), byref(out)), "bm_model_load")
        super().__init__(out.value, L.bm_model_free)
        self.path = os.fsdecode(path)
        try:
            self.info = self._read_info()
        except BaseException:
            self.close()
            raise
        # The tokenizer wrapper holds the model; the model only a weak
        # reference back, so that no reference cycle delays freeing.
        self._tokenizer_ref: Optional["weakref.ref[Tokenizer]"] = None
        self._has_tokenizer: Optional[bool] = None

    def _read_info(self) -> ModelInfo:
        c = _native.ModelInfoC()
        c.size = ctypes.sizeof(c)
        check(_native.lib().bm_model_get_info(self._h(), byref(c)), "bm_model_get_info")
        return ModelInfo(
            vocab_size=c.vocab_size, d_model=c.d_model, n_layers=c.n_layers, n_mamba_layers=c.n_mamba_layers,
            d_inner=c.d_inner, d_state=c.d_state, d_conv=c.d_conv, dt_rank=c.dt_rank, ffn_hidden=c.ffn_hidden,
            max_experts=c.max_experts, backend=Backend(c.backend), activation=Activation(c.activation),
            weight_dtype=c.weight_dtype, n_params=c.n_params, n_active_params=c.n_active_params,
            state_bytes=c.state_bytes, weight_bytes=c.weight_bytes,
            layer_kinds=(c.layer_kinds or b"").decode("utf-8", "replace"))

    @property
    def vocab_size(self) -> int:
        """Logit rows per token (``info.vocab_size``)."""
        return self.info.vocab_size

    @property
    def tokenizer(self) -> Optional[Tokenizer]:
        """The tokenizer found beside the weights (tokenizer.json), or None.
        It belongs to the model. None also when the library has no
        bm_model_tokenizer."""
        h = self._h()
        if self._has_tokenizer is False:
            return None
        tok = self._tokenizer_ref() if self._tokenizer_ref is not None else None
        if tok is None:
            fn = getattr(_native.lib(), "bm_model_tokenizer", None)
            t = fn(h) if fn is not None else None
            self._has_tokenizer = bool(t)
            if not t:
                return None
            tok = Tokenizer._borrowed(self, t)
            self._tokenizer_ref = weakref.ref(tok)
        return tok

    def new_state(self) -> "State":
        """A zero state (no tokens seen) for one stream of this model."""
        return State(self)

    def new_session(self, threads: Optional[int] = None, cancel: Optional[Callable[[], Any]] = None) -> "Session":
        """An execution context (scratch, threads). Use one per thread.

        ``threads``: CPU threads (None: the model's). ``cancel``: a callable
        polled between chunks of a long prefill and between generated tokens;
        a true result stops the running call with CancelledError. If it
        raises, the call stops and that exception is re-raised instead."""
        return Session(self, threads, cancel)

    def __repr__(self) -> str:
        if self.closed:
            return "<blackmamba.Model closed>"
        i = self.info
        return (f"<blackmamba.Model {self.path!r} {i.backend.name.lower()} {i.weight_dtype_name} "
                f"layers={i.n_layers} d_model={i.d_model} vocab={i.vocab_size}>")


class State(Handle):
    """One stream's recurrent memory: a fixed-size state that has consumed
    ``n_tokens`` tokens. Keeps its model alive. One thread at a time.

    ``save()``/``load()`` serialise it (the bytes are the same on every
    backend and host); ``copy()`` forks it."""

    _kind = "State"

    def __init__(self, model: Model) -> None:
        h = model._h()
        model._pin()
        try:
            out = c_void_p()
            check(_native.lib().bm_state_new(h, byref(out)), "bm_state_new")
        except BaseException:
            model._unpin()
            raise
        super().__init__(out.value, _native.lib().bm_state_free, parent=model)
        self.model = model

    @property
    def n_tokens(self) -> int:
        """Tokens consumed since the state was new or reset. Readable also
        while the state is in use (e.g. from a generation's callback)."""
        return int(_native.lib().bm_state_n_tokens(self._h(self._busy)))

    def reset(self) -> None:
        """Return to zero tokens seen."""
        check(_native.lib().bm_state_reset(self._h()), "bm_state_reset")

    def copy(self) -> "State":
        """A new, independent state equal to this one (fork the stream)."""
        s = State(self.model)
        try:
            s.copy_from(self)
        except BaseException:
            s.close()
            raise
        return s

    def copy_from(self, src: "State") -> None:
        """Make this state equal to ``src`` (MismatchError for another model's state)."""
        check(_native.lib().bm_state_copy(self._h(), src._h()), "bm_state_copy")

    def save(self) -> bytes:
        """The state as bytes (docs/STATE_FORMAT.md), loadable by ``load`` on
        either backend of the same model."""
        L = _native.lib()
        h = self._h()
        n = c_size_t(0)
        check(L.bm_state_save(h, None, 0, byref(n)), "bm_state_save")
        buf = ctypes.create_string_buffer(max(n.value, 1))
        check(L.bm_state_save(h, buf, n.value, byref(n)), "bm_state_save")
        return buf.raw[:n.value]

    def load(self, data: Union[bytes, bytearray, memoryview]) -> None:
        """Restore from bytes made by ``save``. FormatError if they are
        truncated or corrupt, MismatchError if they come from another model;
        the state is unchanged on error."""
        b = bytes(data)
        check(_native.lib().bm_state_load(self._h(), c_char_p(b), len(b)), "bm_state_load")

    def __repr__(self) -> str:
        if self.closed:
            return "<blackmamba.State closed>"
        return f"<blackmamba.State n_tokens={self.n_tokens}>"


class _CancelBox:
    def __init__(self, fn: Optional[Callable[[], Any]]) -> None:
        self.fn = fn
        self.exc: Optional[BaseException] = None

    def poll(self, _data: Any) -> int:
        # Called from C: must never raise.
        try:
            return 1 if self.fn() else 0  # type: ignore[misc]
        except BaseException as e:  # noqa: BLE001 - re-raised by Session._run
            self.exc = e
            return 1


class Session(Handle):
    """An execution context for one model: scratch buffers, worker threads,
    device stream. One thread at a time; make one per thread. Keeps its
    model alive.

    Logits are returned as described in the package docs: numpy float32
    arrays (shape (V,) or (n, V)) when numpy is available, else array('f')
    (one row) or a list of array('f') rows."""

    _kind = "Session"

    def __init__(self, model: Model, threads: Optional[int] = None, cancel: Optional[Callable[[], Any]] = None):
        L = _native.lib()
        h = model._h()
        p = _native.init_struct(_native.SessionParams, L.bm_session_params_init)
        p.n_threads = 0 if threads is None else _buffers.one_id(threads, "threads")
        # The C callback refers to this box, not to the session, so that no
        # reference cycle delays freeing the session.
        self._cancel = _CancelBox(cancel)
        self._cancel_cb = None
        if cancel is not None:
            if not callable(cancel):
                raise InvalidArgumentError("cancel must be callable")
            self._cancel_cb = _native.CANCEL_FN(self._cancel.poll)
            p.cancel = self._cancel_cb
        model._pin()
        try:
            out = c_void_p()
            check(L.bm_session_new(h, byref(p), byref(out)), "bm_session_new")
        except BaseException:
            model._unpin()
            raise
        super().__init__(out.value, L.bm_session_free, parent=model)
        self.model = model
        self._V = model.info.vocab_size

    def _run(self, status: int, function: str) -> None:
        exc, self._cancel.exc = self._cancel.exc, None
        if exc is not None and status != 0:
            raise exc
        check(status, function)

    # -- running the model --------------------------------------------------
    def prefill(self, state: State, ids: Iterable[int], *, logits: bool = True) -> Any:
        """Feed ``ids`` (at least one) to ``state``; return the logits after the
        last one (None with logits=False). On error the state is unchanged."""
        keep, p, n = _buffers.ids_in(ids)
        out, po = _buffers.new_floats(self._V) if logits else (None, None)
        with Claim(self, state) as (sh, sth):
            self._run(_native.lib().bm_prefill(sh, sth, p, n, po), "bm_prefill")
        return out

    def prefill_all(self, state: State, ids: Iterable[int]) -> Any:
        """As prefill, but the logits after every position: row i after ids[0..i]."""
        keep, p, n = _buffers.ids_in(ids)
        out, po = _buffers.new_floats(n * self._V)
        with Claim(self, state) as (sh, sth):
            self._run(_native.lib().bm_prefill_all(sh, sth, p, n, po), "bm_prefill_all")
        return _buffers.rows(out, n, self._V)

    def step(self, state: State, token: int, *, logits: bool = True) -> Any:
        """Feed one token; return the next logits (None with logits=False)."""
        t = _buffers.one_id(token)
        out, po = _buffers.new_floats(self._V) if logits else (None, None)
        with Claim(self, state) as (sh, sth):
            self._run(_native.lib().bm_step(sh, sth, t, po), "bm_step")
        return out

    def step_batch(self, states: Sequence[State], tokens: Iterable[int], *, logits: bool = True) -> Any:
        """Advance several streams by one token each (states[i] consumes
        tokens[i]); return their logits, row i for stream i (None with
        logits=False). Equal to len(states) calls of step. A state may not
        appear twice. On error no state changes."""
        states = list(states)
        keep, p, n = _buffers.ids_in(tokens)
        if n != len(states):
            raise InvalidArgumentError(f"{len(states)} states but {n} tokens")
        out, po = _buffers.new_floats(n * self._V) if logits else (None, None)
        with Claim(self, *states) as hs:
            handles = (c_void_p * max(n, 1))(*hs[1:])
            self._run(_native.lib().bm_step_batch(hs[0], handles, p, n, po), "bm_step_batch")
        return _buffers.rows(out, n, self._V) if logits else None

    def prefill_batch(self, states: Sequence[State], prompts: Sequence[Iterable[int]], *,
                      logits: bool = True) -> Any:
        """Feed several streams their own prompts in one call (packed, no
        padding work): states[i] consumes prompts[i] (at least one id each)
        and ends exactly as ``prefill(states[i], prompts[i])`` would leave it.
        Returns the logits after each prompt's last token, row i for stream i
        (None with logits=False). States must be distinct."""
        states = list(states)
        prompts = list(prompts)
        if len(prompts) != len(states):
            raise InvalidArgumentError(f"{len(states)} states but {len(prompts)} prompts")
        fn = need("bm_prefill_batch")
        n = len(states)
        bufs = [_buffers.ids_in(p, "prompt") for p in prompts]
        ptrs = (ctypes.POINTER(ctypes.c_int32) * max(n, 1))(*[b[1] for b in bufs])
        counts = (c_size_t * max(n, 1))(*[b[2] for b in bufs])
        out, po = _buffers.new_floats(n * self._V) if logits else (None, None)
        with Claim(self, *states) as hs:
            handles = (c_void_p * max(n, 1))(*hs[1:])
            self._run(fn(hs[0], handles, ptrs, counts, n, po), "bm_prefill_batch")
        return _buffers.rows(out, n, self._V) if logits else None

    def step_batch_sample(self, states: Sequence[State], tokens: Iterable[int], rng_states: Iterable[int], *,
                          temperature: Optional[float] = None, top_k: Optional[int] = None,
                          top_p: Optional[float] = None, min_p: Optional[float] = None,
                          n_vocab_valid: Optional[int] = None) -> "tuple[List[int], List[int]]":
        """Advance several streams by one token each (as step_batch) and
        sample each stream's next token from its new logits, stream i with
        generator state rng_states[i]. Returns ``(next_tokens,
        new_rng_states)``; the sampled tokens are not fed yet (pass them as
        ``tokens`` next time). A stream gives the same tokens whatever batch
        it runs in. Parameters left as None take the library defaults; no
        repetition penalty is applied here (use step_batch and sample)."""
        fn = need("bm_step_batch_sample")
        states = list(states)
        keep, p, n = _buffers.ids_in(tokens)
        rngs = [int(r) & _U64 for r in rng_states]
        if n != len(states) or len(rngs) != n:
            raise InvalidArgumentError(f"{len(states)} states, {n} tokens and {len(rngs)} rng states")
        sp = sampler_params(temperature, top_k, top_p, min_p, 1.0, n_vocab_valid)
        rng_arr = (c_uint64 * max(n, 1))(*rngs)
        out = (ctypes.c_int32 * max(n, 1))()
        with Claim(self, *states) as hs:
            handles = (c_void_p * max(n, 1))(*hs[1:])
            self._run(fn(hs[0], handles, p, n, byref(sp), rng_arr, out), "bm_step_batch_sample")
        return list(out[:n]), list(rng_arr[:n])

    # -- generation ---------------------------------------------------------
    def generate_text(self, state: State, prompt: Union[str, Sequence[int]], *,
                      on_piece: Optional[Callable[[str, int], Any]] = None, max_tokens: Optional[int] = None,
                      temperature: Optional[float] = None, top_k: Optional[int] = None,
                      top_p: Optional[float] = None, min_p: Optional[float] = None,
                      repeat_penalty: Optional[float] = None, repeat_window: Optional[int] = None,
                      seed: Optional[int] = None, stop: Iterable[str] = (),
                      tokenizer: Optional[Tokenizer] = None) -> GenerateResult:
        """Generate on the calling thread (bm_generate) and return the result,
        whose ``text`` is everything generated. ``on_piece(text, token)`` is
        called with each piece as it is produced; a true return value stops
        generation (StopReason.CALLBACK). If it raises, generation stops and
        the exception is re-raised here. Other parameters: see :meth:`generate`."""
        tok = self._tokenizer_for(tokenizer)
        pieces: List[str] = []
        failure: List[BaseException] = []

        def cb(piece: Any, n: int, token: int, _user: Any) -> int:
            # Called from C: must never raise.
            try:
                text = ctypes.string_at(piece, n).decode("utf-8", "replace") if n else ""
                pieces.append(text)
                if on_piece is not None and on_piece(text, token):
                    return 1
                return 0
            except BaseException as e:  # noqa: BLE001 - re-raised below
                failure.append(e)
                return 1

        return self._generate(state, prompt, tok, cb, pieces, failure, max_tokens, temperature, top_k, top_p, min_p,
                              repeat_penalty, repeat_window, seed, stop)

    def generate(self, state: State, prompt: Union[str, Sequence[int]], *, max_tokens: Optional[int] = None,
                 temperature: Optional[float] = None, top_k: Optional[int] = None, top_p: Optional[float] = None,
                 min_p: Optional[float] = None, repeat_penalty: Optional[float] = None,
                 repeat_window: Optional[int] = None, seed: Optional[int] = None, stop: Iterable[str] = (),
                 tokenizer: Optional[Tokenizer] = None) -> "Generation":
        """Feed ``prompt`` (a str, or a sequence of token ids) to ``state`` and
        sample a continuation, yielding its text piece by piece:

        >>> for piece in session.generate(state, "Once upon a time", max_tokens=50, seed=1):
        ...     print(piece, end="", flush=True)

        Stops at the end-of-text token, a ``stop`` string (never yielded),
        ``max_tokens`` (library default 256), or when the iteration is closed
        (``break`` then garbage collection, ``close()`` or a ``with`` block).
        Every sampled token is fed to the state, so the state afterwards has
        seen the prompt and the whole output and the next call continues the
        conversation.

        Sampling parameters left as None take the library's defaults
        (temperature 0.8, top_k 40, top_p 0.95, min_p 0.05, repeat_penalty
        1.1 over the last ``repeat_window`` = 64 tokens). ``seed`` seeds the
        64-bit generator (None: a random seed); the result reports the state
        to continue from. ``tokenizer`` defaults to the model's.

        The generation runs in a worker thread that waits while you consume
        each piece; until it finishes, ``state`` and this session are busy
        (using them raises) and are kept alive even if closed. Errors raise
        from the iteration. ``Generation.result`` holds the
        :class:`GenerateResult` once it has ended."""
        if isinstance(stop, (str, bytes)):
            raise InvalidArgumentError("stop must be a list of strings, not one string")
        tok = self._tokenizer_for(tokenizer)
        # Validate everything up front so errors raise here, not mid-iteration.
        self._h(), state._h(), tok._t()
        need("bm_generate")
        return Generation(self, state, prompt, tok, dict(
            max_tokens=max_tokens, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
            repeat_penalty=repeat_penalty, repeat_window=repeat_window, seed=seed, stop=list(stop)))

    def _tokenizer_for(self, tokenizer: Optional[Tokenizer]) -> Tokenizer:
        if tokenizer is not None:
            return tokenizer
        t = self.model.tokenizer
        if t is None:
            raise InvalidArgumentError(
                "the model has no tokenizer (no tokenizer.json beside its weights): pass tokenizer=")
        return t

    def _generate(self, state: State, prompt: Union[str, Sequence[int]], tok: Tokenizer, cb: Callable,
                  pieces: List[str], failure: List[BaseException], max_tokens: Optional[int],
                  temperature: Optional[float], top_k: Optional[int], top_p: Optional[float],
                  min_p: Optional[float], repeat_penalty: Optional[float], repeat_window: Optional[int],
                  seed: Optional[int], stop: Iterable[str], owner: Any = None) -> GenerateResult:
        L = _native.lib()
        p = _native.init_struct(_native.GenerateParams, need("bm_generate_params_init"))
        sampler_params(temperature, top_k, top_p, min_p, repeat_penalty, into=p.sampler)
        if max_tokens is not None:
            p.max_tokens = _buffers.one_id(max_tokens, "max_tokens")
        if repeat_window is not None:
            p.repeat_window = _buffers.one_id(repeat_window, "repeat_window")
        if isinstance(stop, (str, bytes)):
            raise InvalidArgumentError("stop must be a list of strings, not one string")
        stops = [s.encode("utf-8") if isinstance(s, str) else bytes(s) for s in stop]
        stop_arr = (c_char_p * max(len(stops), 1))(*stops)
        if stops:
            p.stop_strings = stop_arr
            p.n_stop_strings = len(stops)
        cfn = _native.PIECE_FN(cb)
        p.on_piece = cfn
        rng = c_uint64((random_seed() if seed is None else int(seed)) & _U64)
        res = _native.GenerateResultC()
        res.size = ctypes.sizeof(res)
        th = tok._t()
        if isinstance(prompt, (str, bytes)):
            fname = "bm_generate"
            b = prompt.encode("utf-8") if isinstance(prompt, str) else prompt
            args: tuple = (b, len(b))
        else:
            fname = "bm_generate_ids"
            keep, pi, n = _buffers.ids_in(prompt, "prompt")
            args = (pi, n)
        fn = need(fname)
        # A running Generation (owner) has already claimed session and state.
        claim = Claim(self, state) if owner is None else None
        sh, sth = claim.__enter__() if claim is not None else (self._h(owner), state._h(owner))
        try:
            st = fn(sh, sth, th, *args, byref(p), byref(rng), byref(res))
        finally:
            if claim is not None:
                claim.__exit__()
        if failure:
            self._cancel.exc = None
            raise failure[0]
        self._run(st, fname)
        return GenerateResult(stop=StopReason(res.stop), n_prompt_tokens=res.n_prompt_tokens,
                              n_generated=res.n_generated, prompt_seconds=res.prompt_seconds,
                              generate_seconds=res.generate_seconds, rng_state=rng.value, text="".join(pieces))

    def __repr__(self) -> str:
        return "<blackmamba.Session closed>" if self.closed else f"<blackmamba.Session of {self.model!r}>"


class _Channel:
    """The hand-off between a Generation (consumer) and its worker thread.
    The worker never refers to the Generation, so dropping the Generation
    closes it."""

    def __init__(self) -> None:
        self.pieces: "queue.Queue[tuple]" = queue.Queue()
        self.replies: "queue.Queue[bool]" = queue.Queue()


def _worker(ch: _Channel, session: Session, state: State, prompt: Any, tok: Tokenizer, kw: dict) -> None:
    # session, state and tok's owner were pinned and marked busy (with ch as
    # owner) by Generation; they are released here, before "done" is sent.
    pieces: List[str] = []
    failure: List[BaseException] = []

    def cb(piece: Any, n: int, token: int, _user: Any) -> int:
        # Called from C: must never raise.
        try:
            text = ctypes.string_at(piece, n).decode("utf-8", "replace") if n else ""
            pieces.append(text)
            ch.pieces.put(("piece", text, token))
            return 0 if ch.replies.get() else 1
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            failure.append(e)
            return 1

    result: Optional[GenerateResult] = None
    error: Optional[BaseException] = None
    try:
        result = session._generate(state, prompt, tok, cb, pieces, failure, owner=ch, **kw)
    except BaseException as e:  # noqa: BLE001 - handed to the consumer
        error = e
    finally:
        session._unclaim(ch)
        state._unclaim(ch)
        for obj in (state, session, tok._owner):
            obj._unpin()
        ch.pieces.put(("done", result, error))


class Generation(Iterator[str]):
    """The iterator returned by :meth:`Session.generate`: yields text pieces.

    ``tokens`` lists the id that completed each piece yielded so far and
    ``text`` their concatenation; ``result`` is the :class:`GenerateResult`
    once the generation has ended (None before, or if it failed).
    ``close()`` stops it early (the state keeps every token fed so far)."""

    def __init__(self, session: Session, state: State, prompt: Any, tok: Tokenizer, kw: dict) -> None:
        self._args = (session, state, prompt, tok, kw)
        self._ch: Optional[_Channel] = None
        self._thread: Optional[threading.Thread] = None
        self._finished = False
        self.result: Optional[GenerateResult] = None
        self.tokens: List[int] = []
        self._pieces: List[str] = []

    @property
    def text(self) -> str:
        """The text yielded so far."""
        return "".join(self._pieces)

    def __iter__(self) -> "Generation":
        return self

    def _start(self) -> None:
        session, state, prompt, tok, kw = self._args
        ch = _Channel()
        pinned: List[Handle] = []
        claim = Claim(session, state)
        claim.owner = ch
        try:
            for obj in (session, state, tok._owner):
                obj._pin()
                pinned.append(obj)
            tok._t()
            claim.__enter__()  # in use by this generation until the worker ends
        except BaseException:
            for obj in pinned:
                obj._unpin()
            raise
        self._ch = ch
        self._thread = threading.Thread(target=_worker, args=(ch, session, state, prompt, tok, kw),
                                        name="blackmamba-generate", daemon=True)
        self._args = None  # type: ignore[assignment]
        self._thread.start()

    def _take(self) -> str:
        assert self._ch is not None
        item = self._ch.pieces.get()
        if item[0] == "piece":
            self._pieces.append(item[1])
            self.tokens.append(item[2])
            return item[1]
        self._finished = True
        if self._thread is not None:
            self._thread.join()
        _, result, error = item
        self.result = result
        if error is not None:
            raise error
        raise StopIteration

    def __next__(self) -> str:
        if self._finished:
            raise StopIteration
        if self._ch is None:
            self._start()
        else:
            self._ch.replies.put(True)  # let the worker go on past the last piece
        return self._take()

    def close(self) -> None:
        """Stop the generation (if running) and wait for the worker to finish.
        An error the generation ended with is not raised here."""
        if self._finished:
            return
        if self._ch is None:
            self._finished = True
            self._args = None  # type: ignore[assignment]
            return
        self._ch.replies.put(False)
        while True:
            item = self._ch.pieces.get()
            if item[0] == "done":
                break
            self._ch.replies.put(False)
        self._finished = True
        if self._thread is not None:
            self._thread.join()
        self.result = item[1]

    def __enter__(self) -> "Generation":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass
