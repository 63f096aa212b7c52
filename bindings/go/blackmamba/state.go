package blackmamba

/*
#include "shim.h"
*/
import "C"

import (
	"runtime"
	"unsafe"
)

// State is one stream's recurrent memory. It keeps its model alive. Use it
// from one goroutine at a time (a call made while another is running on the
// same state fails with ErrInvalidArgument).
type State struct {
	ptr   *C.bm_state
	life  life
	model *Model
}

// Model is the model the state belongs to.
func (s *State) Model() *Model { return s.model }

// Close frees the state (deferred while a call uses it). Idempotent; returns nil.
func (s *State) Close() error {
	s.life.close()
	return nil
}

func (s *State) enter() error { return s.life.hold(true) }
func (s *State) leave()       { s.life.release(true); runtime.KeepAlive(s) }

// NTokens is the number of tokens consumed since the state was new or reset
// (0 for a closed state).
func (s *State) NTokens() uint64 {
	if s.life.hold(false) != nil {
		return 0
	}
	defer s.life.release(false)
	return uint64(C.bm_state_n_tokens(s.ptr))
}

// Reset returns the state to zero tokens seen.
func (s *State) Reset() error {
	if err := s.enter(); err != nil {
		return err
	}
	defer s.leave()
	return call("bm_state_reset", func() C.bm_status { return C.bm_state_reset(s.ptr) })
}

// CopyFrom makes s equal to src; ErrMismatch if src belongs to another model.
func (s *State) CopyFrom(src *State) error {
	if s == src {
		return nil
	}
	if err := s.enter(); err != nil {
		return err
	}
	defer s.leave()
	if err := src.enter(); err != nil {
		return err
	}
	defer src.leave()
	return call("bm_state_copy", func() C.bm_status { return C.bm_state_copy(s.ptr, src.ptr) })
}

// Copy returns a new, independent state equal to s (fork the stream).
func (s *State) Copy() (*State, error) {
	c, err := s.model.NewState()
	if err != nil {
		return nil, err
	}
	if err := c.CopyFrom(s); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// Save serialises the state (docs/STATE_FORMAT.md); the bytes load on
// either backend of the same model.
func (s *State) Save() ([]byte, error) {
	if err := s.enter(); err != nil {
		return nil, err
	}
	defer s.leave()
	var n C.size_t
	if err := call("bm_state_save", func() C.bm_status { return C.bm_state_save(s.ptr, nil, 0, &n) }); err != nil {
		return nil, err
	}
	buf := make([]byte, int(n)+1)
	if err := call("bm_state_save", func() C.bm_status {
		return C.bm_state_save(s.ptr, unsafe.Pointer(&buf[0]), C.size_t(len(buf)), &n)
	}); err != nil {
		return nil, err
	}
	return buf[:n:n], nil
}

// Load restores the state from bytes made by Save. ErrFormat if they are
// truncated or corrupt, ErrMismatch if they come from another model; the
// state is unchanged on error.
func (s *State) Load(data []byte) error {
	if err := s.enter(); err != nil {
		return err
	}
	defer s.leave()
	var p unsafe.Pointer
	if len(data) > 0 {
		p = unsafe.Pointer(&data[0])
	}
	return call("bm_state_load", func() C.bm_status { return C.bm_state_load(s.ptr, p, C.size_t(len(data))) })
}
