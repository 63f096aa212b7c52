package blackmamba

/*
#include "shim.h"
*/
import "C"

import (
	"fmt"
	"runtime"
	"runtime/cgo"
	"unsafe"
)

// SessionOptions configure a session. The zero value is the defaults.
type SessionOptions struct {
	// Threads is the number of CPU threads; 0 uses the model's.
	Threads int
	// Cancel, if set, is polled before every run call and between the chunks
	// of a long prefill; returning true stops the call with ErrCancelled (a
	// prefill stopped between chunks keeps the whole chunks it finished). It
	// runs on the calling goroutine. A panic in it stops the call and is
	// re-raised after the call returns.
	Cancel func() bool
}

type cancelState struct {
	fn       func() bool
	panicked interface{}
}

// Session is an execution context of one model: scratch buffers, worker
// threads, the device stream. Use it from one goroutine at a time (make one
// per goroutine). It keeps its model alive.
type Session struct {
	ptr    *C.bm_session
	life   life
	model  *Model
	vocab  int
	cancel *cancelState
}

// NewSession makes an execution context for the model.
func (m *Model) NewSession(opts SessionOptions) (*Session, error) {
	if err := m.life.hold(false); err != nil {
		return nil, err
	}
	var handle cgo.Handle
	var cs *cancelState
	if opts.Cancel != nil {
		cs = &cancelState{fn: opts.Cancel}
		handle = cgo.NewHandle(cs)
	}
	var out *C.bm_session
	err := call("bm_session_new", func() C.bm_status {
		return C.bmgo_session_new(m.ptr, C.int32_t(opts.Threads), C.uintptr_t(handle), &out)
	})
	if err != nil {
		if handle != 0 {
			handle.Delete()
		}
		m.life.release(false)
		return nil, err
	}
	s := &Session{ptr: out, model: m, vocab: m.info.VocabSize, cancel: cs}
	s.life = life{kind: "Session", parent: &m.life, free: func() {
		C.bm_session_free(out)
		if handle != 0 {
			handle.Delete()
		}
	}}
	runtime.SetFinalizer(s, func(s *Session) { s.Close() })
	return s, nil
}

//export bmgoCancel
func bmgoCancel(h C.uintptr_t) (stop C.int) {
	cs := cgo.Handle(h).Value().(*cancelState)
	defer func() {
		if r := recover(); r != nil {
			cs.panicked = r
			stop = 1
		}
	}()
	if cs.fn() {
		return 1
	}
	return 0
}

// Model is the session's model.
func (s *Session) Model() *Model { return s.model }

// Close frees the session (deferred while a call uses it). Idempotent; returns nil.
func (s *Session) Close() error {
	s.life.close()
	return nil
}

// run holds the session and states exclusively around one library call.
func (s *Session) run(fn string, states []*State, f func() C.bm_status) error {
	if err := s.life.hold(true); err != nil {
		return err
	}
	defer s.life.release(true)
	for i, st := range states {
		if st == nil {
			return invalid("%s: state %d is nil", fn, i)
		}
		if err := st.enter(); err != nil {
			for _, prev := range states[:i] {
				prev.leave()
			}
			return err
		}
	}
	defer func() {
		for _, st := range states {
			st.leave()
		}
	}()
	err := call(fn, f)
	if s.cancel != nil && s.cancel.panicked != nil {
		p := s.cancel.panicked
		s.cancel.panicked = nil
		panic(p)
	}
	runtime.KeepAlive(s)
	return err
}

func idsPtr(ids []int32) *C.int32_t {
	if len(ids) == 0 {
		return nil
	}
	return (*C.int32_t)(unsafe.Pointer(&ids[0]))
}

func floatsPtr(x []float32) *C.float {
	if len(x) == 0 {
		return nil
	}
	return (*C.float)(unsafe.Pointer(&x[0]))
}

func (s *Session) checkLogits(logits []float32, rows int) error {
	if logits != nil && len(logits) < rows*s.vocab {
		return invalid("logits buffer holds %d floats, %d needed", len(logits), rows*s.vocab)
	}
	return nil
}

func split(flat []float32, n, v int) [][]float32 {
	rows := make([][]float32, n)
	for i := range rows {
		rows[i] = flat[i*v : (i+1)*v : (i+1)*v]
	}
	return rows
}

// Prefill feeds ids (at least one) to st and returns the logits after the
// last one (VocabSize floats). On error the state is unchanged (except for
// a prefill cancelled between chunks; see SessionOptions.Cancel).
func (s *Session) Prefill(st *State, ids []int32) ([]float32, error) {
	logits := make([]float32, s.vocab)
	if err := s.PrefillInto(st, ids, logits); err != nil {
		return nil, err
	}
	return logits, nil
}

// PrefillInto is Prefill writing the logits into a caller's buffer of at
// least VocabSize floats, or computing none when logits is nil.
func (s *Session) PrefillInto(st *State, ids []int32, logits []float32) error {
	if err := s.checkLogits(logits, 1); err != nil {
		return err
	}
	return s.run("bm_prefill", []*State{st}, func() C.bm_status {
		return C.bm_prefill(s.ptr, st.ptr, idsPtr(ids), C.size_t(len(ids)), floatsPtr(logits))
	})
}

// PrefillAll is Prefill returning the logits after every position: row i is
// the logits after ids[0..i]. The rows share one backing array.
func (s *Session) PrefillAll(st *State, ids []int32) ([][]float32, error) {
	flat := make([]float32, len(ids)*s.vocab)
	err := s.run("bm_prefill_all", []*State{st}, func() C.bm_status {
		return C.bm_prefill_all(s.ptr, st.ptr, idsPtr(ids), C.size_t(len(ids)), floatsPtr(flat))
	})
	if err != nil {
		return nil, err
	}
	return split(flat, len(ids), s.vocab), nil
}

// Step feeds one token and returns the next logits.
func (s *Session) Step(st *State, token int32) ([]float32, error) {
	logits := make([]float32, s.vocab)
	if err := s.StepInto(st, token, logits); err != nil {
		return nil, err
	}
	return logits, nil
}

// StepInto is Step writing into a caller's buffer (nil: no logits, only the
// state advances).
func (s *Session) StepInto(st *State, token int32, logits []float32) error {
	if err := s.checkLogits(logits, 1); err != nil {
		return err
	}
	return s.run("bm_step", []*State{st}, func() C.bm_status {
		return C.bm_step(s.ptr, st.ptr, C.int32_t(token), floatsPtr(logits))
	})
}

func statePtrs(states []*State) ([]*C.bm_state, error) {
	ptrs := make([]*C.bm_state, len(states))
	for i, st := range states {
		if st == nil {
			return nil, invalid("state %d is nil", i)
		}
		ptrs[i] = st.ptr
	}
	return ptrs, nil
}

func distinct(states []*State) error {
	seen := make(map[*State]bool, len(states))
	for _, st := range states {
		if seen[st] {
			return invalid("the same state appears twice")
		}
		seen[st] = true
	}
	return nil
}

// StepBatch advances several streams by one token each (states[i] consumes
// tokens[i]) and returns their logits, row i for stream i. It equals
// len(states) calls of Step. States must be distinct. On error no state
// changes.
func (s *Session) StepBatch(states []*State, tokens []int32) ([][]float32, error) {
	flat := make([]float32, len(states)*s.vocab)
	if err := s.StepBatchInto(states, tokens, flat); err != nil {
		return nil, err
	}
	return split(flat, len(states), s.vocab), nil
}

// StepBatchInto is StepBatch writing len(states)*VocabSize floats into
// logits (nil: none).
func (s *Session) StepBatchInto(states []*State, tokens []int32, logits []float32) error {
	if len(tokens) != len(states) {
		return invalid("%d states but %d tokens", len(states), len(tokens))
	}
	if err := distinct(states); err != nil {
		return err
	}
	if err := s.checkLogits(logits, len(states)); err != nil {
		return err
	}
	ptrs, err := statePtrs(states)
	if err != nil {
		return err
	}
	var pp **C.bm_state
	if len(ptrs) > 0 {
		pp = &ptrs[0]
	}
	return s.run("bm_step_batch", states, func() C.bm_status {
		return C.bm_step_batch(s.ptr, pp, idsPtr(tokens), C.size_t(len(tokens)), floatsPtr(logits))
	})
}

// PrefillBatch feeds several streams their own prompts in one call (packed,
// no padding work): states[i] consumes prompts[i] and ends exactly as
// Prefill(states[i], prompts[i]) would leave it. It returns the logits after
// each prompt's last token, row i for stream i. States must be distinct.
func (s *Session) PrefillBatch(states []*State, prompts [][]int32) ([][]float32, error) {
	if len(prompts) != len(states) {
		return nil, invalid("%d states but %d prompts", len(states), len(prompts))
	}
	if err := distinct(states); err != nil {
		return nil, err
	}
	ptrs, err := statePtrs(states)
	if err != nil {
		return nil, err
	}
	n := len(states)
	if n == 0 {
		return nil, invalid("bm_prefill_batch: no streams")
	}
	// The token arrays are copied into C memory: a C array may not hold Go pointers.
	total := 0
	for _, p := range prompts {
		total += len(p)
	}
	tokMem := (*[1 << 30]C.int32_t)(C.malloc(C.size_t(4 * (total + 1))))
	ptrMem := (*[1 << 27]*C.int32_t)(C.malloc(C.size_t(8 * n)))
	defer C.free(unsafe.Pointer(tokMem))
	defer C.free(unsafe.Pointer(ptrMem))
	counts := make([]C.size_t, n)
	off := 0
	for i, p := range prompts {
		ptrMem[i] = &tokMem[off]
		for _, t := range p {
			tokMem[off] = C.int32_t(t)
			off++
		}
		counts[i] = C.size_t(len(p))
	}
	flat := make([]float32, n*s.vocab)
	err = s.run("bm_prefill_batch", states, func() C.bm_status {
		return C.bmgo_prefill_batch(s.ptr, &ptrs[0], &ptrMem[0], &counts[0], C.size_t(n), floatsPtr(flat))
	})
	if err != nil {
		return nil, err
	}
	return split(flat, n, s.vocab), nil
}

// StepBatchSample advances several streams by one token each (as StepBatch)
// and samples each stream's next token from its new logits, stream i with
// generator state rngs[i] (advanced in place). The sampled tokens are
// returned, not fed: pass them as tokens of the next call. A stream gives
// the same tokens whatever batch it runs in. No repetition penalty is
// applied here: p.RepeatPenalty must be 1 (use StepBatch and Sample for it).
func (s *Session) StepBatchSample(states []*State, tokens []int32, p SamplerParams, rngs []uint64) ([]int32, error) {
	if len(tokens) != len(states) || len(rngs) != len(states) {
		return nil, invalid("%d states, %d tokens and %d rng states", len(states), len(tokens), len(rngs))
	}
	if err := distinct(states); err != nil {
		return nil, err
	}
	ptrs, err := statePtrs(states)
	if err != nil {
		return nil, err
	}
	if len(states) == 0 {
		return nil, invalid("bm_step_batch_sample: no streams")
	}
	cp := p.c()
	out := make([]int32, len(states))
	err = s.run("bm_step_batch_sample", states, func() C.bm_status {
		return C.bmgo_step_batch_sample(s.ptr, &ptrs[0], idsPtr(tokens), C.size_t(len(tokens)), &cp,
			(*C.uint64_t)(unsafe.Pointer(&rngs[0])), idsPtr(out))
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

func (s *Session) String() string {
	return fmt.Sprintf("blackmamba.Session(%s)", s.model.path)
}
