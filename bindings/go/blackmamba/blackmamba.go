// Package blackmamba runs BlackMamba language models (Mamba selective
// state-space blocks alternating with mixture-of-experts MLPs) through
// libblackmamba, on CPUs and NVIDIA GPUs.
//
// The concepts are those of the C API (include/blackmamba.h):
//
//   - a Model (Load) holds config and weights; it is immutable and may be
//     used from any number of goroutines;
//   - a State is one stream's recurrent memory: small, fixed size, and can be
//     saved to bytes, loaded, copied and reset;
//   - a Session is an execution context (scratch buffers, threads); use one
//     per goroutine;
//   - a Tokenizer turns text into token ids and back.
//
// A minimal program:
//
//	m, err := blackmamba.Load("path/to/model", blackmamba.Options{})
//	if err != nil { ... }
//	defer m.Close()
//	st, _ := m.NewState()
//	defer st.Close()
//	sess, _ := m.NewSession(blackmamba.SessionOptions{})
//	defer sess.Close()
//	res, err := sess.Generate(st, "The meaning of life is", blackmamba.GenerateOptions{MaxTokens: 64},
//		func(piece string, token int32) bool { fmt.Print(piece); return true })
//
// Errors are values: every failure of the library is an *Error carrying the
// C status and the library's message; compare with errors.Is against the
// sentinels (ErrInvalidArgument, ErrIO, ErrMismatch, ...).
//
// Freeing: call Close on what you made (finalizers are only a safety net).
// States and sessions keep their model alive, and every call holds the
// objects it uses, so closing in any order, or from another goroutine, never
// frees memory in use: a Model closed while states or sessions of it are
// open is freed when the last of them is closed.
package blackmamba

/*
#cgo pkg-config: blackmamba
#cgo LDFLAGS: -ldl
#include "shim.h"
*/
import "C"

import (
	"errors"
	"fmt"
	"runtime"
	"sync"
	"unsafe"
)

// APIMajor is the major version of the C API this package speaks. Load fails
// with ErrUnsupported when the library's major version differs.
const APIMajor = 0

// Version reports the version of the libblackmamba in use.
func Version() (major, minor, patch int) {
	v := uint32(C.bm_version())
	return int(v >> 16), int(v>>8) & 0xFF, int(v) & 0xFF
}

// VersionString is Version as "major.minor.patch".
func VersionString() string {
	a, b, c := Version()
	return fmt.Sprintf("%d.%d.%d", a, b, c)
}

// Has reports whether the library in use exports the C function name (e.g.
// "bm_generate"). Calls whose function is missing fail with ErrUnsupported.
func Has(name string) bool {
	cs := C.CString(name)
	defer C.free(unsafe.Pointer(cs))
	return C.bmgo_has(cs) != 0
}

func checkVersion() error {
	major, _, _ := Version()
	if major != APIMajor {
		return &Error{Status: StatusUnsupported, Func: "bm_version", Message: fmt.Sprintf(
			"libblackmamba %s is not API version %d.x, which this package speaks", VersionString(), APIMajor)}
	}
	return nil
}

// ---------------------------------------------------------------------------
// Errors

// Status is a C status code (BM_OK or a negative BM_ERR_* value).
type Status int32

// The status codes of blackmamba.h; the values never change.
const (
	StatusOK              Status = 0
	StatusInvalidArgument Status = -1
	StatusIO              Status = -2
	StatusFormat          Status = -3
	StatusUnsupported     Status = -4
	StatusOutOfMemory     Status = -5
	StatusDevice          Status = -6
	StatusCancelled       Status = -7
	StatusMismatch        Status = -8
	StatusBufferTooSmall  Status = -9
	statusMissingFunction Status = C.BMGO_MISSING
)

// String is the library's short name for the status ("invalid argument", ...).
func (s Status) String() string {
	return C.GoString(C.bm_status_string(C.bm_status(s)))
}

// Error is a failed library call.
type Error struct {
	Status  Status // the C status code
	Message string // what went wrong, from bm_last_error (or the binding)
	Func    string // the C function that failed, when known
	cause   error
}

// Unwrap gives ErrClosed for errors from using a closed object.
func (e *Error) Unwrap() error { return e.cause }

func (e *Error) Error() string {
	msg := e.Message
	if msg == "" {
		msg = e.Status.String()
	}
	return "blackmamba: " + msg
}

// Is makes errors.Is(err, ErrMismatch) and friends work: an *Error matches a
// sentinel (an *Error without message) of the same status.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Message == "" && t.Func == "" && t.Status == e.Status
}

// Sentinels for errors.Is.
var (
	ErrInvalidArgument = &Error{Status: StatusInvalidArgument}
	ErrIO              = &Error{Status: StatusIO}
	ErrFormat          = &Error{Status: StatusFormat}
	ErrUnsupported     = &Error{Status: StatusUnsupported}
	ErrOutOfMemory     = &Error{Status: StatusOutOfMemory}
	ErrDevice          = &Error{Status: StatusDevice}
	ErrCancelled       = &Error{Status: StatusCancelled}
	ErrMismatch        = &Error{Status: StatusMismatch}
	ErrBufferTooSmall  = &Error{Status: StatusBufferTooSmall}
	// ErrClosed is matched (besides ErrInvalidArgument) by errors from using
	// an object after Close.
	ErrClosed = errors.New("blackmamba: use of a closed object")
)

func errClosed(kind string) error {
	return &Error{Status: StatusInvalidArgument, Message: kind + " is closed", cause: ErrClosed}
}

func invalid(format string, args ...interface{}) error {
	return &Error{Status: StatusInvalidArgument, Message: fmt.Sprintf(format, args...)}
}

func missing(fn string) error {
	return &Error{Status: StatusUnsupported, Func: fn, Message: fmt.Sprintf(
		"this libblackmamba (%s) does not provide %s", VersionString(), fn)}
}

// call runs f, which makes one library call, on a locked OS thread so that
// a failure's bm_last_error (per thread) is read where it was set.
func call(fn string, f func() C.bm_status) error {
	runtime.LockOSThread()
	st := f()
	var err error
	if st != 0 {
		if Status(st) == statusMissingFunction {
			err = missing(fn)
		} else {
			err = &Error{Status: Status(st), Func: fn, Message: C.GoString(C.bm_last_error())}
		}
	}
	runtime.UnlockOSThread()
	return err
}

// ---------------------------------------------------------------------------
// Lifetimes

// life tracks one C object: who holds it (calls in flight, children) and
// whether Close was asked for. The free runs when closed and unheld.
type life struct {
	mu        sync.Mutex
	kind      string
	holds     int
	closing   bool
	freed     bool
	exclusive bool // a State or Session in a call (one at a time)
	free      func()
	parent    *life
}

// hold keeps the object alive (not closed) until release; exclusive also
// claims it for one call at a time.
func (l *life) hold(exclusive bool) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closing || l.freed {
		return errClosed(l.kind)
	}
	if exclusive {
		if l.exclusive {
			return invalid("%s is in use by another call (use it from one goroutine at a time)", l.kind)
		}
		l.exclusive = true
	}
	l.holds++
	return nil
}

func (l *life) release(exclusive bool) {
	l.mu.Lock()
	if exclusive {
		l.exclusive = false
	}
	l.holds--
	doFree := l.closing && l.holds == 0 && !l.freed
	if doFree {
		l.freed = true
	}
	l.mu.Unlock()
	if doFree {
		l.doFree()
	}
}

func (l *life) close() {
	l.mu.Lock()
	if l.closing || l.freed {
		l.mu.Unlock()
		return
	}
	l.closing = true
	doFree := l.holds == 0
	if doFree {
		l.freed = true
	}
	l.mu.Unlock()
	if doFree {
		l.doFree()
	}
}

func (l *life) doFree() {
	if l.free != nil {
		l.free()
	}
	if l.parent != nil {
		l.parent.release(false)
	}
}

func (l *life) isClosed() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.closing || l.freed
}
