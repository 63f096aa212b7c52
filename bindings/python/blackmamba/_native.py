"""Finding and loading libblackmamba, and the ctypes mirror of blackmamba.h.

Everything here is private: the public classes live in the other modules.
The structs below mirror include/blackmamba.h field by field; their ``size``
fields are always set by the library's own ``*_init`` functions, and a size
that differs from the mirror's is refused (see :func:`init_struct`).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
import threading
from ctypes import (CFUNCTYPE, POINTER, Structure, c_char, c_char_p, c_double, c_float, c_int, c_int32,
                    c_size_t, c_uint32, c_uint64, c_void_p)
from typing import List, Optional

#: The major version of the C API these bindings speak. A library whose
#: bm_version() has another major is refused.
EXPECTED_MAJOR = 0


class LibraryNotFoundError(ImportError):
    """libblackmamba could not be found or loaded."""


class LibraryVersionError(ImportError):
    """The libblackmamba found is not one these bindings can use."""


# ---------------------------------------------------------------------------
# Structs (mirrors of blackmamba.h)
# ---------------------------------------------------------------------------

# C enums are int-sized on every ABI the library supports.
c_enum = c_int


class ModelParams(Structure):
    _fields_ = [
        ("size", c_uint32),
        ("backend", c_enum),
        ("device", c_int32),
        ("n_threads", c_int32),
        ("activation", c_enum),
        ("reserved", c_uint32 * 8),
    ]


class ModelInfoC(Structure):
    _fields_ = [
        ("size", c_uint32),
        ("vocab_size", c_int32),
        ("d_model", c_int32),
        ("n_layers", c_int32),
        ("n_mamba_layers", c_int32),
        ("d_inner", c_int32),
        ("d_state", c_int32),
        ("d_conv", c_int32),
        ("dt_rank", c_int32),
        ("ffn_hidden", c_int32),
        ("max_experts", c_int32),
        ("backend", c_enum),
        ("activation", c_enum),
        ("weight_dtype", c_int32),
        ("n_params", c_uint64),
        ("n_active_params", c_uint64),
        ("state_bytes", c_uint64),
        ("weight_bytes", c_uint64),
        ("layer_kinds", c_char_p),
        ("reserved", c_uint32 * 8),
    ]


CANCEL_FN = CFUNCTYPE(c_int, c_void_p)


class SessionParams(Structure):
    _fields_ = [
        ("size", c_uint32),
        ("n_threads", c_int32),
        ("cancel", CANCEL_FN),
        ("cancel_data", c_void_p),
        ("reserved", c_uint32 * 8),
    ]


class SamplerParamsC(Structure):
    _fields_ = [
        ("size", c_uint32),
        ("temperature", c_float),
        ("top_k", c_int32),
        ("top_p", c_float),
        ("min_p", c_float),
        ("repeat_penalty", c_float),
        ("n_vocab_valid", c_int32),
        ("reserved", c_uint32 * 8),
    ]


# The piece is declared as POINTER(c_char), not c_char_p: it is not
# NUL-terminated and ctypes would otherwise read past its end.
PIECE_FN = CFUNCTYPE(c_int, POINTER(c_char), c_size_t, c_int32, c_void_p)


class GenerateParams(Structure):
    _fields_ = [
        ("size", c_uint32),
        ("sampler", SamplerParamsC),
        ("max_tokens", c_int32),
        ("repeat_window", c_int32),
        ("stop_strings", POINTER(c_char_p)),
        ("n_stop_strings", c_size_t),
        ("on_piece", PIECE_FN),
        ("user_data", c_void_p),
        ("reserved", c_uint32 * 8),
    ]


class GenerateResultC(Structure):
    _fields_ = [
        ("size", c_uint32),
        ("stop", c_enum),
        ("n_prompt_tokens", c_int32),
        ("n_generated", c_int32),
        ("prompt_seconds", c_double),
        ("generate_seconds", c_double),
        ("reserved", c_uint32 * 8),
    ]


# ---------------------------------------------------------------------------
# Function prototypes
# ---------------------------------------------------------------------------

_vp = c_void_p
_status = c_int32
_pvp = POINTER(c_void_p)
_pf = POINTER(c_float)
_pi32 = POINTER(c_int32)
_psize = POINTER(c_size_t)

# name: (restype, argtypes, required). Required symbols are the core of API
# 0.1; the others (text and generation) are looked up at run time, so these
# bindings also work with a library that does not export them yet.
_PROTOTYPES = {
    "bm_version": (c_uint32, [], True),
    "bm_status_string": (c_char_p, [_status], True),
    "bm_last_error": (c_char_p, [], True),
    "bm_model_params_init": (None, [POINTER(ModelParams)], True),
    "bm_model_load": (_status, [c_char_p, POINTER(ModelParams), _pvp], True),
    "bm_model_free": (None, [_vp], True),
    "bm_model_get_info": (_status, [_vp, POINTER(ModelInfoC)], True),
    "bm_model_tokenizer": (_vp, [_vp], False),
    "bm_state_new": (_status, [_vp, _pvp], True),
    "bm_state_free": (None, [_vp], True),
    "bm_state_reset": (_status, [_vp], True),
    "bm_state_copy": (_status, [_vp, _vp], True),
    "bm_state_n_tokens": (c_uint64, [_vp], True),
    "bm_state_save": (_status, [_vp, _vp, c_size_t, _psize], True),
    "bm_state_load": (_status, [_vp, c_char_p, c_size_t], True),
    "bm_session_params_init": (None, [POINTER(SessionParams)], True),
    "bm_session_new": (_status, [_vp, POINTER(SessionParams), _pvp], True),
    "bm_session_free": (None, [_vp], True),
    "bm_prefill": (_status, [_vp, _vp, _pi32, c_size_t, _pf], True),
    "bm_prefill_all": (_status, [_vp, _vp, _pi32, c_size_t, _pf], True),
    "bm_step": (_status, [_vp, _vp, c_int32, _pf], True),
    "bm_step_batch": (_status, [_vp, _pvp, _pi32, c_size_t, _pf], True),
    "bm_prefill_batch": (_status, [_vp, _pvp, POINTER(_pi32), _psize, c_size_t, _pf], False),
    "bm_step_batch_sample": (_status, [_vp, _pvp, _pi32, c_size_t, POINTER(SamplerParamsC), POINTER(c_uint64), _pi32],
                             False),
    "bm_sampler_params_init": (None, [POINTER(SamplerParamsC)], True),
    "bm_sample": (_status, [_pf, c_size_t, POINTER(SamplerParamsC), POINTER(c_uint64), _pi32, c_size_t, _pi32],
                  True),
    "bm_tokenizer_load": (_status, [c_char_p, _pvp], False),
    "bm_tokenizer_free": (None, [_vp], False),
    "bm_tokenize": (_status, [_vp, c_char_p, c_size_t, _pi32, c_size_t, _psize], False),
    "bm_detokenize": (_status, [_vp, _pi32, c_size_t, _vp, c_size_t, _psize], False),
    "bm_tokenizer_vocab_size": (c_int32, [_vp], False),
    "bm_tokenizer_eos": (c_int32, [_vp], False),
    "bm_tokenizer_is_special": (c_int, [_vp, c_int32], False),
    "bm_tokenizer_token_to_id": (c_int32, [_vp, c_char_p, c_size_t], False),
    "bm_tokenizer_id_to_piece": (_status, [_vp, c_int32, POINTER(POINTER(c_char)), _psize], False),
    "bm_tokenizer_max_token_bytes": (c_size_t, [_vp], False),
    "bm_detokenizer_new": (_status, [_vp, _pvp], False),
    "bm_detokenizer_free": (None, [_vp], False),
    "bm_detokenizer_push": (_status, [_vp, c_int32, _vp, c_size_t, _psize], False),
    "bm_detokenizer_flush": (_status, [_vp, _vp, c_size_t, _psize], False),
    "bm_detokenizer_reset": (None, [_vp], False),
    "bm_generate_params_init": (None, [POINTER(GenerateParams)], False),
    "bm_generate": (_status, [_vp, _vp, _vp, c_char_p, c_size_t, POINTER(GenerateParams), POINTER(c_uint64),
                              POINTER(GenerateResultC)], False),
    "bm_generate_ids": (_status, [_vp, _vp, _vp, _pi32, c_size_t, POINTER(GenerateParams), POINTER(c_uint64),
                                  POINTER(GenerateResultC)], False),
}


# ---------------------------------------------------------------------------
# Finding the library
# ---------------------------------------------------------------------------

if sys.platform == "darwin":
    _NAMES = ["libblackmamba.0.dylib", "libblackmamba.dylib"]
else:
    _NAMES = ["libblackmamba.so.0", "libblackmamba.so"]

_lock = threading.Lock()
_lib: Optional[ctypes.CDLL] = None
_lib_path: Optional[str] = None


def _candidates() -> List[str]:
    env = os.environ.get("BLACKMAMBA_LIB")
    if env:
        # An explicit choice is never silently replaced by another library.
        if os.path.isdir(env):
            return [os.path.join(env, n) for n in _NAMES]
        return [env]
    out = []
    here = os.path.dirname(os.path.abspath(__file__))
    for d in (here, os.path.dirname(here)):
        out.extend(os.path.join(d, n) for n in _NAMES)
    out.extend(_NAMES)  # the system loader: LD_LIBRARY_PATH, ld.so.cache, default paths
    found = ctypes.util.find_library("blackmamba")
    if found:
        out.append(found)
    return out


def _bind(lib: ctypes.CDLL, path: str) -> None:
    for name, (restype, argtypes, required) in _PROTOTYPES.items():
        try:
            fn = getattr(lib, name)
        except AttributeError:
            if required:
                raise LibraryVersionError(
                    f"{path} does not export {name}: it is not a libblackmamba these bindings can use") from None
            continue
        fn.restype = restype
        fn.argtypes = argtypes


def load_library(path: Optional[str] = None) -> ctypes.CDLL:
    """Load libblackmamba (once per process) and return the ctypes handle.

    With ``path``, exactly that file is loaded. Otherwise the search order
    is: the file (or directory) named by the environment variable
    ``BLACKMAMBA_LIB``; ``libblackmamba.so.0`` next to this package (in the
    package directory or its parent); then the system loader
    (``LD_LIBRARY_PATH``, the ld.so cache, ``ctypes.util.find_library``).
    The library's ``bm_version()`` major must equal :data:`EXPECTED_MAJOR`.

    Raises :class:`LibraryNotFoundError` or :class:`LibraryVersionError`
    (both subclasses of ImportError). Calling it again returns the library
    already loaded; a different ``path`` after that is an error.
    """
    global _lib, _lib_path
    with _lock:
        if _lib is not None:
            if path is not None and os.path.realpath(path) != os.path.realpath(_lib_path or ""):
                raise LibraryVersionError(f"libblackmamba is already loaded from {_lib_path}")
            return _lib
        tried = []
        lib = None
        for cand in ([path] if path is not None else _candidates()):
            if os.sep in cand and not os.path.exists(cand):
                tried.append(f"{cand} (no such file)")
                continue
            try:
                lib = ctypes.CDLL(cand)
            except OSError as e:
                tried.append(f"{cand} ({e})")
                continue
            found = cand
            break
        if lib is None:
            raise LibraryNotFoundError(
                "cannot load libblackmamba; set BLACKMAMBA_LIB to the path of libblackmamba.so.0, "
                "or install the library (make install) where the system loader finds it. Tried: "
                + "; ".join(tried))
        if not hasattr(lib, "bm_version"):
            raise LibraryVersionError(f"{found} does not export bm_version: it is not libblackmamba")
        lib.bm_version.restype = c_uint32
        lib.bm_version.argtypes = []
        v = lib.bm_version()
        major = v >> 16
        if major != EXPECTED_MAJOR:
            raise LibraryVersionError(
                f"{found} is libblackmamba {major}.{(v >> 8) & 0xFF}.{v & 0xFF}, but these bindings "
                f"speak API version {EXPECTED_MAJOR}.x; install matching bindings and library")
        _bind(lib, found)
        _lib, _lib_path = lib, found
        return lib


def lib() -> ctypes.CDLL:
    """The loaded library (loading it on first use)."""
    return _lib if _lib is not None else load_library()


def library_path() -> Optional[str]:
    """Where the library was loaded from, or None before it is loaded."""
    return _lib_path


def has(name: str) -> bool:
    """Whether the loaded library exports the C function ``name``."""
    return hasattr(lib(), name)


def init_struct(cls, init_fn):
    """Make a ``cls`` filled by the library's ``init_fn`` (which sets size).

    The struct lives in a buffer larger than the mirror, so a library whose
    struct grew cannot write past it; its size must then equal the mirror's."""
    buf = ctypes.create_string_buffer(ctypes.sizeof(cls) + 512)
    s = cls.from_buffer(buf)
    init_fn(ctypes.byref(s))
    if s.size != ctypes.sizeof(cls):
        raise LibraryVersionError(
            f"the library's {cls.__name__} is {s.size} bytes, these bindings expect {ctypes.sizeof(cls)}")
    return s
