"""Ownership of C objects: deterministic freeing and keeping parents alive."""
from __future__ import annotations

import threading
from typing import Any, Callable, Optional

from . import _native
from .errors import InvalidArgumentError, UnsupportedError, make_error


def check(status: int, function: str) -> None:
    """Raise the Error for a failed status (reads bm_last_error on this thread)."""
    if status != 0:
        L = _native.lib()
        raise make_error(status, L.bm_last_error().decode("utf-8", "replace"), function,
                         L.bm_status_string(status).decode("utf-8", "replace"))


def need(name: str) -> Any:
    """The C function ``name``, or UnsupportedError if the library lacks it."""
    L = _native.lib()
    fn = getattr(L, name, None)
    if fn is None:
        v = L.bm_version()
        raise UnsupportedError(
            f"this libblackmamba ({v >> 16}.{(v >> 8) & 0xFF}.{v & 0xFF}, {_native.library_path()}) "
            f"does not provide {name}", function=name)
    return fn


class Handle:
    """A C object owned by Python.

    ``close()`` frees it deterministically (also via ``with``); ``__del__`` is
    only a safety net. An object may be *pinned* by others that need it to
    stay alive (a State pins its Model; a running generation pins its State,
    Session and Tokenizer). Closing a pinned object marks it closed at once
    (further use raises) and defers the free until the last pin goes away.
    """

    _kind = "object"

    def __init__(self, handle: int, free_fn: Callable[[int], None], parent: Optional["Handle"] = None) -> None:
        # parent must already be pinned by the caller on our behalf
        self._handle: Optional[int] = handle
        self._free_fn = free_fn
        self._parent = parent
        self._pins = 0
        self._closing = False
        self._busy: Any = None  # the call or generation using it, if any (see Claim)
        self._lock = threading.Lock()

    # -- lifetime ---------------------------------------------------------
    @property
    def closed(self) -> bool:
        """True once close() was called (the C object may still be alive if pinned)."""
        return self._closing or self._handle is None

    def close(self) -> None:
        """Free the C object now, or as soon as nothing pins it. Idempotent."""
        with self._lock:
            if self._closing or self._handle is None:
                return
            self._closing = True
            free_now = self._pins == 0
        if free_now:
            self._free()

    def _free(self) -> None:
        h, self._handle = self._handle, None
        if h is not None:
            self._free_fn(h)
        parent, self._parent = self._parent, None
        if parent is not None:
            parent._unpin()

    def _pin(self) -> None:
        with self._lock:
            if self._closing or self._handle is None:
                raise InvalidArgumentError(f"this {self._kind} is closed")
            self._pins += 1

    def _unpin(self) -> None:
        with self._lock:
            self._pins -= 1
            free_now = self._closing and self._pins == 0 and self._handle is not None
        if free_now:
            self._free()

    def _h(self, owner: Any = None) -> int:
        """The live C pointer, or InvalidArgumentError if closed, or busy with
        something other than ``owner`` (a running generation)."""
        h = self._handle
        if h is None or self._closing:
            raise InvalidArgumentError(f"this {self._kind} is closed")
        if self._busy is not None and self._busy is not owner:
            raise InvalidArgumentError(f"this {self._kind} is in use by a running generation")
        return h

    def _claim(self, owner: Any) -> int:
        """Mark the object in use by ``owner`` (one call at a time) and return
        its pointer; InvalidArgumentError if closed or already in use."""
        with self._lock:
            h = self._handle
            if h is None or self._closing:
                raise InvalidArgumentError(f"this {self._kind} is closed")
            if self._busy is not None:
                raise InvalidArgumentError(
                    f"this {self._kind} is in use by another call (the same one twice, another thread, "
                    f"a callback or a running generation)")
            self._busy = owner
            return h

    def _unclaim(self, owner: Any) -> None:
        with self._lock:
            if self._busy is owner:
                self._busy = None

    def __enter__(self):
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # never raise from a finalizer (e.g. at interpreter exit)
            pass


class Claim:
    """``with Claim(a, b) as (ha, hb):`` the objects' pointers, each marked in
    use for the duration (so callbacks and other threads cannot reenter)."""

    __slots__ = ("objs", "owner", "n")

    def __init__(self, *objs: Handle) -> None:
        self.objs = objs
        self.owner = object()
        self.n = 0

    def __enter__(self) -> list:
        out = []
        try:
            for o in self.objs:
                out.append(o._claim(self.owner))
                self.n += 1
        except BaseException:
            self.__exit__()
            raise
        return out

    def __exit__(self, *exc: Any) -> None:
        for o in self.objs[:self.n]:
            o._unclaim(self.owner)
        self.n = 0
