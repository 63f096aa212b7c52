"""The GPT-NeoX byte-level BPE tokenizer of BlackMamba (bm_tokenizer)."""
from __future__ import annotations

import ctypes
import os
from ctypes import POINTER, byref, c_char, c_size_t, c_void_p
from typing import TYPE_CHECKING, Iterable, List, Optional, Union

from . import _buffers, _native
from ._handle import Handle, check, need
from .errors import ERR_BUFFER_TOO_SMALL, InvalidArgumentError

if TYPE_CHECKING:
    from .model import Model

PathLike = Union[str, bytes, "os.PathLike[str]"]


class Tokenizer(Handle):
    """A tokenizer loaded from a Hugging Face ``tokenizer.json``.

    ``Tokenizer(path)`` loads and owns one; ``Model.tokenizer`` returns the one a
    model found beside its weights, which belongs to the model (``close()`` on it
    does nothing; it stops working once its model is freed). Thread-safe: one
    tokenizer may be used from many threads at once.

    >>> tok = Tokenizer("20B_tokenizer.json")
    >>> tok.decode(tok.encode("Hello world"))
    'Hello world'
    """

    _kind = "Tokenizer"

    def __init__(self, path: PathLike) -> None:
        load = need("bm_tokenizer_load")
        free = need("bm_tokenizer_free")
        out = c_void_p()
        check(load(os.fsencode(path), byref(out)), "bm_tokenizer_load")
        super().__init__(out.value, free)
        self._owner: Handle = self  # what must stay alive for the C tokenizer to be valid
        self.path = os.fsdecode(path)

    @classmethod
    def _borrowed(cls, model: "Model", handle: int) -> "Tokenizer":
        self = cls.__new__(cls)
        Handle.__init__(self, handle, lambda h: None)
        self._owner = model
        self.path = None
        return self

    def close(self) -> None:
        """Free the tokenizer (deferred while detokenizers or generations use it).
        A model's own tokenizer is freed with the model; closing it does nothing."""
        if self._owner is self:
            super().close()

    def _t(self) -> int:
        if self._owner is not self:
            self._owner._h()  # raises once the model is closed
            return self._handle  # type: ignore[return-value]
        return self._h()

    # -- encoding ---------------------------------------------------------
    def encode(self, text: Union[str, bytes]) -> List[int]:
        """Token ids of ``text`` (str, or UTF-8 bytes), as Hugging Face's tokenizer
        gives them for the same tokenizer.json. No BOS is added. Invalid UTF-8
        bytes raise InvalidArgumentError."""
        b = text.encode("utf-8") if isinstance(text, str) else bytes(text)
        fn = _native.lib().bm_tokenize
        t = self._t()
        n = c_size_t(0)
        cap = len(b) + 8  # byte-level BPE never makes more ids than bytes
        while True:
            buf = (ctypes.c_int32 * cap)()
            st = fn(t, b, len(b), buf, cap, byref(n))
            if st == ERR_BUFFER_TOO_SMALL and n.value > cap:
                cap = n.value
                continue
            check(st, "bm_tokenize")
            return list(buf[:n.value])

    def decode(self, ids: Iterable[int]) -> str:
        """The text of ``ids`` (special tokens included). Bytes that do not form
        a character become U+FFFD, as in Hugging Face's decode."""
        return self.decode_bytes(ids).decode("utf-8", "replace")

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """As decode, but the UTF-8 bytes."""
        keep, p, n = _buffers.ids_in(ids)
        fn = _native.lib().bm_detokenize
        t = self._t()
        need_len = c_size_t(0)
        check(fn(t, p, n, None, 0, byref(need_len)), "bm_detokenize")
        buf = ctypes.create_string_buffer(max(need_len.value, 1))
        got = c_size_t(0)
        check(fn(t, p, n, buf, need_len.value, byref(got)), "bm_detokenize")
        return buf.raw[:got.value]

    # -- vocabulary -------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        """Number of ids, added tokens included (50277 for BlackMamba)."""
        return int(_native.lib().bm_tokenizer_vocab_size(self._t()))

    @property
    def eos(self) -> Optional[int]:
        """The id of "<|endoftext|>", or None when the tokenizer has none."""
        e = int(_native.lib().bm_tokenizer_eos(self._t()))
        return None if e < 0 else e

    @property
    def max_token_bytes(self) -> int:
        """The most bytes any one id decodes to."""
        return int(_native.lib().bm_tokenizer_max_token_bytes(self._t()))

    def is_special(self, token: int) -> bool:
        """Whether ``token`` is a special added token such as <|endoftext|>."""
        return bool(_native.lib().bm_tokenizer_is_special(self._t(), _buffers.one_id(token)))

    def token_to_id(self, token: str) -> Optional[int]:
        """The id of a token spelled as in tokenizer.json (byte-level form, e.g.
        "\u0120the" for " the", or an added token's content), or None."""
        b = token.encode("utf-8")
        i = int(_native.lib().bm_tokenizer_token_to_id(self._t(), b, len(b)))
        return None if i < 0 else i

    def id_to_piece(self, token: int) -> bytes:
        """The bytes ``token`` decodes to (may be part of a UTF-8 character)."""
        piece = POINTER(c_char)()
        n = c_size_t(0)
        check(_native.lib().bm_tokenizer_id_to_piece(self._t(), _buffers.one_id(token), byref(piece), byref(n)),
              "bm_tokenizer_id_to_piece")
        return ctypes.string_at(piece, n.value) if n.value else b""

    def detokenizer(self) -> "Detokenizer":
        """A streaming decoder that turns ids into text one at a time."""
        return Detokenizer(self)

    def __len__(self) -> int:
        return self.vocab_size

    def __repr__(self) -> str:
        if self.closed:
            return "<blackmamba.Tokenizer closed>"
        return f"<blackmamba.Tokenizer vocab_size={self.vocab_size}{' path=' + repr(self.path) if self.path else ''}>"


class Detokenizer(Handle):
    """Streaming decoding: ``push(id)`` returns the text of every character
    completed so far (possibly ""), holding back the bytes of a character a
    later token completes; ``flush()`` ends the stream. The pieces joined equal
    ``Tokenizer.decode`` of the same ids. One thread at a time."""

    _kind = "Detokenizer"

    def __init__(self, tokenizer: Tokenizer) -> None:
        new = need("bm_detokenizer_new")
        t = tokenizer._t()
        owner = tokenizer._owner
        owner._pin()
        try:
            out = c_void_p()
            check(new(t, byref(out)), "bm_detokenizer_new")
        except BaseException:
            owner._unpin()
            raise
        super().__init__(out.value, _native.lib().bm_detokenizer_free, parent=owner)
        self.tokenizer = tokenizer
        self._cap = 3 * (tokenizer.max_token_bytes + 3)
        self._buf = ctypes.create_string_buffer(self._cap)

    def push(self, token: int) -> str:
        """Feed one id; returns the newly completed text (may be empty)."""
        n = c_size_t(0)
        check(_native.lib().bm_detokenizer_push(self._h(), _buffers.one_id(token), self._buf, self._cap, byref(n)),
              "bm_detokenizer_push")
        return self._buf.raw[:n.value].decode("utf-8", "replace")

    def flush(self) -> str:
        """End the stream: the held bytes as U+FFFD ("" if none). The detokenizer is then empty."""
        n = c_size_t(0)
        check(_native.lib().bm_detokenizer_flush(self._h(), self._buf, self._cap, byref(n)), "bm_detokenizer_flush")
        return self._buf.raw[:n.value].decode("utf-8", "replace")

    def reset(self) -> None:
        """Drop held bytes and start a new stream."""
        _native.lib().bm_detokenizer_reset(self._h())
