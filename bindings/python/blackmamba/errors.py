"""The exceptions raised by blackmamba.

Every failure of a library call raises a subclass of :class:`Error` chosen by
the C status code; the exception carries the status (``.status``, a negative
int equal to the ``BM_ERR_*`` constant), its short name (``.status_name``)
and the library's own message (``.message``, from ``bm_last_error()``).
Some subclasses also derive from the matching built-in exception, so
``except ValueError`` or ``except OSError`` catch them too.
"""
from __future__ import annotations

from typing import Dict, Optional, Type

OK = 0
ERR_INVALID_ARGUMENT = -1
ERR_IO = -2
ERR_FORMAT = -3
ERR_UNSUPPORTED = -4
ERR_OUT_OF_MEMORY = -5
ERR_DEVICE = -6
ERR_CANCELLED = -7
ERR_MISMATCH = -8
ERR_BUFFER_TOO_SMALL = -9

_NAMES = {
    ERR_INVALID_ARGUMENT: "invalid argument",
    ERR_IO: "i/o error",
    ERR_FORMAT: "format error",
    ERR_UNSUPPORTED: "unsupported",
    ERR_OUT_OF_MEMORY: "out of memory",
    ERR_DEVICE: "device error",
    ERR_CANCELLED: "cancelled",
    ERR_MISMATCH: "mismatch",
    ERR_BUFFER_TOO_SMALL: "buffer too small",
}


class Error(Exception):
    """A libblackmamba call failed.

    Attributes:
        status: the C status code (negative, one of the ``ERR_*`` constants).
        status_name: the library's short name for it ("invalid argument", ...).
        message: the library's message saying what went wrong.
        function: the C function that failed (e.g. "bm_model_load"), if known.
    """

    status: int = 0

    def __init__(self, message: str, status: Optional[int] = None, *, function: Optional[str] = None,
                 status_name: Optional[str] = None) -> None:
        if status is not None:
            self.status = status
        self.message = message
        self.function = function
        self.status_name = status_name or _NAMES.get(self.status, "unknown status")
        text = message or self.status_name
        if function and not text.startswith(function):
            text = f"{function}: {text}"
        super().__init__(text)

    def __reduce__(self):
        return (_rebuild, (type(self), self.message, self.status, self.function, self.status_name))


def _rebuild(cls, message, status, function, status_name):
    return cls(message, status, function=function, status_name=status_name)


class InvalidArgumentError(Error, ValueError):
    """BM_ERR_INVALID_ARGUMENT: a bad argument (token id out of range, bad params, a closed object...)."""
    status = ERR_INVALID_ARGUMENT


class BMIOError(Error, OSError):
    """BM_ERR_IO: a file could not be opened, read or mapped."""
    status = ERR_IO


class FormatError(Error):
    """BM_ERR_FORMAT: a file or buffer is malformed or inconsistent."""
    status = ERR_FORMAT


class UnsupportedError(Error):
    """BM_ERR_UNSUPPORTED: valid, but not something this build, backend or library version can do."""
    status = ERR_UNSUPPORTED


class OutOfMemoryError(Error, MemoryError):
    """BM_ERR_OUT_OF_MEMORY: a host or device allocation failed."""
    status = ERR_OUT_OF_MEMORY


class DeviceError(Error):
    """BM_ERR_DEVICE: the GPU or its driver reported an error."""
    status = ERR_DEVICE


class CancelledError(Error):
    """BM_ERR_CANCELLED: the session's cancel callback asked to stop."""
    status = ERR_CANCELLED


class MismatchError(Error):
    """BM_ERR_MISMATCH: objects of different models (e.g. a state of another model)."""
    status = ERR_MISMATCH


class BufferTooSmallError(Error):
    """BM_ERR_BUFFER_TOO_SMALL: a result did not fit (the bindings size buffers themselves, so rare)."""
    status = ERR_BUFFER_TOO_SMALL


_BY_STATUS: Dict[int, Type[Error]] = {
    cls.status: cls
    for cls in (InvalidArgumentError, BMIOError, FormatError, UnsupportedError, OutOfMemoryError, DeviceError,
                CancelledError, MismatchError, BufferTooSmallError)
}


def error_class(status: int) -> Type[Error]:
    """The exception class for a C status code (plain :class:`Error` for unknown codes)."""
    return _BY_STATUS.get(status, Error)


def make_error(status: int, message: str, function: Optional[str] = None,
               status_name: Optional[str] = None) -> Error:
    """An exception object for a failed call."""
    return error_class(status)(message, status, function=function, status_name=status_name)
