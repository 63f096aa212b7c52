"""blackmamba: run BlackMamba language models from Python (ctypes bindings to libblackmamba).

Quick start::

    import blackmamba as bm

    with bm.Model("path/to/model", backend="auto") as model:
        state = model.new_state()
        session = model.new_session()
        for piece in session.generate(state, "The meaning of life is", max_tokens=64, seed=1):
            print(piece, end="", flush=True)

The library is found through the environment variable ``BLACKMAMBA_LIB``,
next to this package, or by the system loader (see :func:`load_library`).

Logits are numpy float32 arrays when numpy can be imported (shape (V,) for
one position, (n, V) for several), else ``array.array('f')`` for one row
and a list of ``array('f')`` rows for several. Set ``BLACKMAMBA_NO_NUMPY=1``
to get the array forms even with numpy installed. :data:`HAVE_NUMPY` says
which is in use.

Objects free their C memory on ``close()`` or at the end of a ``with``
block (``__del__`` is only a safety net). States and sessions keep their
model alive; closing a model that still has live states or sessions defers
the free until they are closed (see :class:`Model`).
"""
from __future__ import annotations

from . import _native
from ._buffers import HAVE_NUMPY
from ._native import EXPECTED_MAJOR, LibraryNotFoundError, LibraryVersionError, library_path, load_library
from .errors import (BMIOError, BufferTooSmallError, CancelledError, DeviceError, Error, FormatError,
                     InvalidArgumentError, MismatchError, OutOfMemoryError, UnsupportedError)
from .model import (Activation, Backend, GenerateResult, Generation, Model, ModelInfo, Session, State,
                    StopReason)
from .sampling import Sampler, sample
from .tokenizer import Detokenizer, Tokenizer

__version__ = "0.1.0"

__all__ = [
    "Model", "ModelInfo", "State", "Session", "Generation", "GenerateResult", "StopReason", "Backend",
    "Activation", "Tokenizer", "Detokenizer", "Sampler", "sample", "Error", "InvalidArgumentError",
    "BMIOError", "FormatError", "UnsupportedError", "OutOfMemoryError", "DeviceError", "CancelledError",
    "MismatchError", "BufferTooSmallError", "LibraryNotFoundError", "LibraryVersionError", "load_library",
    "library_path", "library_version", "has_symbol", "HAVE_NUMPY", "EXPECTED_MAJOR",
]


def library_version() -> str:
    """The version of the loaded libblackmamba, e.g. "0.1.0" (loads it if needed)."""
    v = _native.lib().bm_version()
    return f"{v >> 16}.{(v >> 8) & 0xFF}.{v & 0xFF}"


def has_symbol(name: str) -> bool:
    """Whether the loaded libblackmamba exports the C function ``name``
    (e.g. "bm_generate"); features whose function is missing raise
    UnsupportedError."""
    return _native.has(name)
