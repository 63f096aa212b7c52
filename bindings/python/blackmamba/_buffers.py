"""Moving token ids and logits between Python and C.

Logits come back as numpy float32 arrays when numpy can be imported (and the
environment variable BLACKMAMBA_NO_NUMPY is not set to a non-empty value
other than "0"), else as ``array.array('f')``:

* one row (prefill, step): a 1-D numpy array of shape (V,), or one array('f') of V floats;
* several rows (prefill_all, step_batch): a 2-D numpy array of shape (n, V),
  or a list of n array('f') rows of V floats each.
"""
from __future__ import annotations

import ctypes
import operator
import os
from array import array
from ctypes import POINTER, c_float, c_int32
from typing import Any, Iterable, List, Tuple

from .errors import InvalidArgumentError

np: Any = None
if os.environ.get("BLACKMAMBA_NO_NUMPY", "") in ("", "0"):
    try:
        import numpy as np  # type: ignore[no-redef]
    except ImportError:  # numpy is optional
        np = None

#: True when results are numpy arrays.
HAVE_NUMPY = np is not None

_I32_MIN, _I32_MAX = -(2 ** 31), 2 ** 31 - 1
assert array("i").itemsize == 4 and array("f").itemsize == 4


def new_floats(n: int) -> Tuple[Any, Any]:
    """A zeroed buffer of n floats and a ``float *`` to it."""
    if np is not None:
        a = np.zeros(n, dtype=np.float32)
        return a, a.ctypes.data_as(POINTER(c_float))
    a = array("f", bytes(4 * n))
    return a, (c_float * n).from_buffer(a) if n else None


def rows(buf: Any, n: int, width: int) -> Any:
    """The n x width view of a buffer made by new_floats."""
    if np is not None:
        return buf.reshape(n, width)
    return [buf[i * width:(i + 1) * width] for i in range(n)]


def ids_in(ids: Iterable[int], what: str = "token ids") -> Tuple[Any, Any, int]:
    """(keepalive, int32_t * or None, count) for a sequence of ids."""
    if np is not None and isinstance(ids, np.ndarray):
        if ids.ndim != 1:
            raise InvalidArgumentError(f"{what} must be 1-D, not of shape {ids.shape}")
        if ids.dtype.kind not in "iu":
            raise InvalidArgumentError(f"{what} must be integers, not {ids.dtype}")
        if ids.size and ids.dtype != np.int32 and (int(ids.min()) < _I32_MIN or int(ids.max()) > _I32_MAX):
            raise InvalidArgumentError(f"{what}: a value is outside the int32 range")
        a = np.ascontiguousarray(ids, dtype=np.int32)
        return a, (a.ctypes.data_as(POINTER(c_int32)) if a.size else None), int(a.size)
    if isinstance(ids, (str, bytes)):
        raise InvalidArgumentError(f"{what} must be a sequence of ints, not {type(ids).__name__}")
    try:
        a = array("i", ids)
    except TypeError:
        try:
            a = array("i", [operator.index(x) for x in ids])
        except TypeError:
            raise InvalidArgumentError(f"{what} must be a sequence of ints") from None
        except OverflowError:
            raise InvalidArgumentError(f"{what}: a value is outside the int32 range") from None
    except OverflowError:
        raise InvalidArgumentError(f"{what}: a value is outside the int32 range") from None
    n = len(a)
    return a, ((c_int32 * n).from_buffer(a) if n else None), n


def one_id(token: int, what: str = "token") -> int:
    """A token id as a Python int in the int32 range."""
    try:
        t = operator.index(token)
    except TypeError:
        raise InvalidArgumentError(f"{what} must be an int, not {type(token).__name__}") from None
    if not _I32_MIN <= t <= _I32_MAX:
        raise InvalidArgumentError(f"{what} {t} is outside the int32 range")
    return t


def floats_in(x: Any) -> Tuple[Any, Any, int]:
    """(keepalive, const float *, count) for logits given as a numpy array,
    array('f'), or any sequence of numbers (copied)."""
    if np is not None and isinstance(x, np.ndarray):
        a = np.ascontiguousarray(x, dtype=np.float32).reshape(-1)
        return a, (a.ctypes.data_as(POINTER(c_float)) if a.size else None), int(a.size)
    if isinstance(x, array) and x.typecode == "f":
        n = len(x)
        return x, ((c_float * n).from_buffer(x) if n else None), n
    try:
        a = array("f", x)
    except TypeError:
        raise InvalidArgumentError("logits must be a sequence of floats") from None
    n = len(a)
    return a, ((c_float * n).from_buffer(a) if n else None), n


def to_list(ids_buf: Any, n: int) -> List[int]:
    return list(ids_buf[:n])


def byte_buffer(n: int) -> ctypes.Array:
    return ctypes.create_string_buffer(max(n, 1))
