package blackmamba_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	bm "github.com/libblackmamba/libblackmamba/bindings/go/blackmamba"
)

func wantErr(t *testing.T, err error, sentinel error, what string) *bm.Error {
	t.Helper()
	if !errors.Is(err, sentinel) {
		t.Fatalf("%s: got %v, want %v", what, err, sentinel)
	}
	var e *bm.Error
	if !errors.As(err, &e) || e.Message == "" {
		t.Fatalf("%s: %v is not an *Error with a message", what, err)
	}
	return e
}

func TestMissingFile(t *testing.T) {
	defer catch(t)
	_, err := bm.Load(filepath.Join(fixture("tiny-f32"), "no-such-file.safetensors"), bm.Options{})
	e := wantErr(t, err, bm.ErrIO, "missing file")
	if e.Status != bm.StatusIO || e.Func != "bm_model_load" || !strings.Contains(e.Error(), "no-such-file") {
		t.Errorf("error %#v", e)
	}
	if errors.Is(err, bm.ErrFormat) {
		t.Errorf("an IO error matched ErrFormat")
	}
	if bm.StatusIO.String() == "" {
		t.Errorf("no status name")
	}
}

func TestBadFileIsFormatError(t *testing.T) {
	defer catch(t)
	d := t.TempDir()
	cfg := must(os.ReadFile(filepath.Join(fixture("tiny-f32"), "config.json")))
	ok(t, os.WriteFile(filepath.Join(d, "config.json"), cfg, 0o644))
	ok(t, os.WriteFile(filepath.Join(d, "model.safetensors"), []byte("\x10\x00\x00\x00\x00\x00\x00\x00{not json at all"), 0o644))
	_, err := bm.Load(d, bm.Options{})
	wantErr(t, err, bm.ErrFormat, "bad file")
	if _, err := bm.ParseBackend("tpu"); !errors.Is(err, bm.ErrInvalidArgument) {
		t.Errorf("ParseBackend: %v", err)
	}
}

func TestBadTokens(t *testing.T) {
	defer catch(t)
	m := load(t, fixture("tiny-f32"))
	defer m.Close()
	s := must(m.NewSession(bm.SessionOptions{}))
	defer s.Close()
	st := must(m.NewState())
	defer st.Close()
	v := int32(m.VocabSize())
	for _, bad := range []int32{v, -1, 1 << 30} {
		_, err := s.Step(st, bad)
		wantErr(t, err, bm.ErrInvalidArgument, "bad token")
	}
	_, err := s.Prefill(st, []int32{1, 2, v})
	wantErr(t, err, bm.ErrInvalidArgument, "bad token in prompt")
	_, err = s.Prefill(st, nil)
	wantErr(t, err, bm.ErrInvalidArgument, "empty prompt")
	_, err = s.StepBatch([]*bm.State{st}, []int32{1, 2})
	wantErr(t, err, bm.ErrInvalidArgument, "length mismatch")
	_, err = s.StepBatch([]*bm.State{st, st}, []int32{1, 2})
	wantErr(t, err, bm.ErrInvalidArgument, "same state twice")
	err = s.PrefillInto(st, []int32{1}, make([]float32, 3))
	wantErr(t, err, bm.ErrInvalidArgument, "small logits buffer")
	if st.NTokens() != 0 {
		t.Errorf("failed calls changed the state: %d tokens", st.NTokens())
	}
}

func TestForeignState(t *testing.T) {
	defer catch(t)
	m := load(t, fixture("tiny-f32"))
	defer m.Close()
	other := load(t, fixture("tiny-bf16"))
	defer other.Close()
	s := must(m.NewSession(bm.SessionOptions{}))
	defer s.Close()
	foreign := must(other.NewState())
	defer foreign.Close()
	mine := must(m.NewState())
	defer mine.Close()
	_, err := s.Step(foreign, 1)
	wantErr(t, err, bm.ErrMismatch, "Step")
	_, err = s.Prefill(foreign, []int32{1, 2})
	wantErr(t, err, bm.ErrMismatch, "Prefill")
	_, err = s.StepBatch([]*bm.State{mine, foreign}, []int32{1, 2})
	wantErr(t, err, bm.ErrMismatch, "StepBatch")
	wantErr(t, mine.CopyFrom(foreign), bm.ErrMismatch, "CopyFrom")
	wantErr(t, mine.Load(must(foreign.Save())), bm.ErrMismatch, "Load")
	if mine.NTokens() != 0 {
		t.Errorf("mine changed")
	}
}

func TestCorruptStateBytes(t *testing.T) {
	defer catch(t)
	m := load(t, fixture("tiny-f32"))
	defer m.Close()
	s := must(m.NewSession(bm.SessionOptions{}))
	defer s.Close()
	st := must(m.NewState())
	ok(t, s.PrefillInto(st, []int32{1, 2, 3}, nil))
	good := must(st.Save())
	fresh := must(m.NewState())
	wantErr(t, fresh.Load(good[:len(good)/2]), bm.ErrFormat, "truncated")
	flipped := append([]byte(nil), good...)
	flipped[len(flipped)-5] ^= 0x40
	wantErr(t, fresh.Load(flipped), bm.ErrFormat, "corrupt")
	if err := fresh.Load(nil); !errors.Is(err, bm.ErrFormat) && !errors.Is(err, bm.ErrInvalidArgument) {
		t.Errorf("empty: %v", err)
	}
	ok(t, fresh.Load(good))
	if fresh.NTokens() != 3 {
		t.Errorf("NTokens %d", fresh.NTokens())
	}
}

func TestSamplerErrors(t *testing.T) {
	defer catch(t)
	logits := []float32{0, 1, 2}
	var rng uint64
	for _, mod := range []func(*bm.SamplerParams){
		func(p *bm.SamplerParams) { p.Temperature = -1 },
		func(p *bm.SamplerParams) { p.RepeatPenalty = 0 },
		func(p *bm.SamplerParams) { p.MinP = 2 },
		func(p *bm.SamplerParams) { p.NVocabValid = 5 },
	} {
		p := bm.DefaultSamplerParams()
		mod(&p)
		_, err := bm.Sample(logits, p, &rng, nil)
		wantErr(t, err, bm.ErrInvalidArgument, "bad params")
	}
	_, err := bm.Sample(logits, bm.DefaultSamplerParams(), &rng, []int32{7})
	wantErr(t, err, bm.ErrInvalidArgument, "recent out of range")
	_, err = bm.Sample(nil, bm.DefaultSamplerParams(), &rng, nil)
	wantErr(t, err, bm.ErrInvalidArgument, "no logits")
	if rng != 0 {
		t.Errorf("failed calls advanced the rng")
	}
}

func TestCancel(t *testing.T) {
	defer catch(t)
	m := load(t, fixture("tiny-f32"))
	defer m.Close()
	calls := 0
	s := must(m.NewSession(bm.SessionOptions{Cancel: func() bool { calls++; return true }}))
	defer s.Close()
	st := must(m.NewState())
	defer st.Close()
	_, err := s.Step(st, 1)
	wantErr(t, err, bm.ErrCancelled, "Step")
	_, err = s.Prefill(st, []int32{1, 2, 3})
	wantErr(t, err, bm.ErrCancelled, "Prefill")
	if calls == 0 || st.NTokens() != 0 {
		t.Errorf("calls %d, tokens %d", calls, st.NTokens())
	}

	// Cancelled between chunks: the state keeps a whole-chunk prefix.
	n := 0
	s2 := must(m.NewSession(bm.SessionOptions{Cancel: func() bool { n++; return n > 1 }}))
	defer s2.Close()
	long := make([]int32, 4000)
	for i := range long {
		long[i] = int32(1 + i%199)
	}
	st2 := must(m.NewState())
	_, err = s2.Prefill(st2, long)
	wantErr(t, err, bm.ErrCancelled, "long prefill")
	if k := st2.NTokens(); k >= uint64(len(long)) {
		t.Errorf("cancelled prefill consumed %d tokens", k)
	} else if k > 0 {
		s3 := must(m.NewSession(bm.SessionOptions{}))
		ref := must(m.NewState())
		ok(t, s3.PrefillInto(ref, long[:k], nil))
		if !equalBytes(must(ref.Save()), must(st2.Save())) {
			t.Errorf("the cancelled state is not the prefix state")
		}
		s3.Close()
	}
}

func TestCancelPanicIsReraised(t *testing.T) {
	defer catch(t)
	m := load(t, fixture("tiny-f32"))
	defer m.Close()
	boom := true
	s := must(m.NewSession(bm.SessionOptions{Cancel: func() bool {
		if boom {
			panic("boom")
		}
		return false
	}}))
	defer s.Close()
	st := must(m.NewState())
	defer st.Close()
	func() {
		defer func() {
			if r := recover(); r != "boom" {
				t.Errorf("recovered %v", r)
			}
		}()
		s.Step(st, 1)
		t.Errorf("no panic")
	}()
	if st.NTokens() != 0 {
		t.Errorf("state changed")
	}
	boom = false // the session and state are not left "in use"
	_ = must(s.Step(st, 1))
}

func TestClosedObjects(t *testing.T) {
	defer catch(t)
	m := load(t, fixture("tiny-f32"))
	s := must(m.NewSession(bm.SessionOptions{}))
	st := must(m.NewState())
	ok(t, st.Close())
	ok(t, st.Close()) // idempotent
	_, err := st.Save()
	if !errors.Is(err, bm.ErrClosed) || !errors.Is(err, bm.ErrInvalidArgument) {
		t.Errorf("Save after Close: %v", err)
	}
	_, err = s.Step(st, 1)
	if !errors.Is(err, bm.ErrClosed) {
		t.Errorf("Step on a closed state: %v", err)
	}
	s.Close()
	m.Close()
	if _, err := m.NewState(); !errors.Is(err, bm.ErrClosed) {
		t.Errorf("NewState after Close: %v", err)
	}
}

func TestCUDAWhenUnavailable(t *testing.T) {
	defer catch(t)
	m, err := bm.Load(fixture("tiny-f32"), bm.Options{Backend: bm.BackendCUDA})
	if err == nil {
		if m.Info().Backend != bm.BackendCUDA {
			t.Errorf("backend %v", m.Info().Backend)
		}
		m.Close()
		return
	}
	if !errors.Is(err, bm.ErrUnsupported) && !errors.Is(err, bm.ErrDevice) {
		t.Errorf("CUDA load: %v", err)
	}
}
