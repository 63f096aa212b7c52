package blackmamba_test

import (
	"errors"
	"runtime"
	"sync"
	"testing"

	bm "github.com/libblackmamba/libblackmamba/bindings/go/blackmamba"
)

func TestCloseModelWithLiveChildren(t *testing.T) {
	defer catch(t)
	m := load(t, fixture("tiny-f32"))
	st := must(m.NewState())
	s := must(m.NewSession(bm.SessionOptions{}))
	before := must(s.Prefill(st, []int32{1, 2, 3}))
	m.Close()
	if _, err := m.NewState(); !errors.Is(err, bm.ErrClosed) {
		t.Errorf("NewState after Close: %v", err)
	}
	if _, err := st.Copy(); !errors.Is(err, bm.ErrClosed) {
		t.Errorf("Copy after the model's Close: %v", err)
	}
	ok(t, st.Reset())
	after := must(s.Prefill(st, []int32{1, 2, 3})) // the model is still alive for them
	for i := range before {
		if before[i] != after[i] {
			t.Fatal("results changed after the model's Close")
		}
	}
	st.Close()
	s.Close() // the model is freed here
	m.Close()
}

func TestFinalizersFreeForgottenObjects(t *testing.T) {
	defer catch(t)
	for i := 0; i < 3; i++ {
		m := load(t, fixture("tiny-bf16"))
		for j := 0; j < 5; j++ {
			must(m.NewState())
		}
		must(m.NewSession(bm.SessionOptions{}))
		runtime.GC()
	}
	for i := 0; i < 5; i++ {
		runtime.GC()
	}
}

func TestConcurrentSessions(t *testing.T) {
	defer catch(t)
	m := load(t, fixture("tiny-f32"))
	defer m.Close()
	results := make([][]float32, 4)
	var wg sync.WaitGroup
	for g := range results {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			s, err := m.NewSession(bm.SessionOptions{Threads: 1})
			if err != nil {
				t.Error(err)
				return
			}
			defer s.Close()
			st, err := m.NewState()
			if err != nil {
				t.Error(err)
				return
			}
			defer st.Close()
			var out []float32
			for tok := int32(1); tok < 40; tok++ {
				if out, err = s.Step(st, tok); err != nil {
					t.Error(err)
					return
				}
			}
			results[g] = out
		}(g)
	}
	wg.Wait()
	for g := 1; g < len(results); g++ {
		if relError(results[g], results[0]) != 0 {
			t.Errorf("goroutine %d differs", g)
		}
	}
}

func TestStateInUseByAnotherCall(t *testing.T) {
	defer catch(t)
	m := load(t, fixture("tiny-f32"))
	defer m.Close()
	st := must(m.NewState())
	defer st.Close()
	entered := make(chan struct{})
	release := make(chan struct{})
	first := true
	s := must(m.NewSession(bm.SessionOptions{Cancel: func() bool {
		if first { // only the step's goroutine polls it
			first = false
			entered <- struct{}{}
			<-release
		}
		return false
	}}))
	defer s.Close()
	done := make(chan error)
	go func() { _, err := s.Step(st, 1); done <- err }()
	<-entered // the step is inside the library, holding st
	_, err := st.Save()
	if !errors.Is(err, bm.ErrInvalidArgument) {
		t.Errorf("Save during a Step: %v", err)
	}
	st.Close() // deferred until the step returns
	close(release)
	ok(t, <-done)
	if _, err := st.Save(); !errors.Is(err, bm.ErrClosed) {
		t.Errorf("Save after Close: %v", err)
	}
}

func TestVersion(t *testing.T) {
	major, _, _ := bm.Version()
	if major != bm.APIMajor || bm.VersionString() == "" || !bm.Has("bm_prefill") || bm.Has("bm_no_such_function") {
		t.Errorf("version %s", bm.VersionString())
	}
}
