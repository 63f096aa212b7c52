package blackmamba_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	bm "github.com/libblackmamba/libblackmamba/bindings/go/blackmamba"
)

func needGenerate(t *testing.T) {
	t.Helper()
	needTokenizer(t)
	for _, f := range []string{"bm_generate", "bm_generate_ids", "bm_generate_params_init"} {
		if !bm.Has(f) {
			t.Skipf("SKIP: libblackmamba does not export %s yet", f)
		}
	}
}

type genEnv struct {
	tok *bm.Tokenizer
	m   *bm.Model
	s   *bm.Session
}

func newGenEnv(t *testing.T) *genEnv {
	t.Helper()
	e := &genEnv{tok: must(bm.LoadTokenizer(tokenizerJSON())), m: load(t, fixture("tiny-f32"))}
	e.s = must(e.m.NewSession(bm.SessionOptions{}))
	return e
}

func (e *genEnv) close() { e.s.Close(); e.m.Close(); e.tok.Close() }

func sameResult(a, b bm.GenerateResult) bool {
	return a.Stop == b.Stop && a.NPromptTokens == b.NPromptTokens && a.NGenerated == b.NGenerated &&
		a.NextSeed == b.NextSeed && a.Text == b.Text
}

func TestGenerateGreedyMatchesGolden(t *testing.T) {
	defer catch(t)
	needGenerate(t)
	e := newGenEnv(t)
	defer e.close()
	_, prompts := golden(t, "tiny-f32")
	greedy := bm.Greedy()
	for k, p := range prompts {
		st := must(e.m.NewState())
		res := must(e.s.GenerateIDs(st, p.ids, bm.GenerateOptions{Sampler: &greedy, MaxTokens: len(p.decodeTokens),
			Tokenizer: e.tok}, nil))
		want := p.decodeTokens
		wantStop := bm.StopMaxTokens
		for i, tk := range want {
			if tk == e.tok.EOS() {
				want, wantStop = want[:i+1], bm.StopEOS
				break
			}
		}
		if res.Stop != wantStop || res.NGenerated != len(want) || res.NPromptTokens != len(p.ids) {
			t.Errorf("p%d: %+v", k, res)
		}
		ref := must(e.m.NewState())
		ok(t, e.s.PrefillInto(ref, p.ids, nil))
		for _, tk := range want {
			ok(t, e.s.StepInto(ref, tk, nil))
		}
		// the state saw the prompt and every sampled token (to rounding)
		if st.NTokens() != ref.NTokens() {
			t.Errorf("p%d: %d tokens, want %d", k, st.NTokens(), ref.NTokens())
		}
		if re := relError(must(e.s.Step(st, 1)), must(e.s.Step(ref, 1))); re > tol {
			t.Errorf("p%d: the state continues differently (rel error %g)", k, re)
		}
		if text := must(e.tok.Decode(want)); res.Text != text {
			t.Errorf("p%d: text %q, want %q", k, res.Text, text)
		}
		st.Close()
		ref.Close()
	}
}

func TestGenerateStreamingAndSeeds(t *testing.T) {
	defer catch(t)
	needGenerate(t)
	e := newGenEnv(t)
	defer e.close()
	var pieces []string
	var tokens []int32
	st := must(e.m.NewState())
	res := must(e.s.Generate(st, "a b", bm.GenerateOptions{MaxTokens: 15, Seed: 3, Tokenizer: e.tok},
		func(piece string, token int32) bool {
			pieces = append(pieces, piece)
			tokens = append(tokens, token)
			return true
		}))
	if strings.Join(pieces, "") != res.Text || len(pieces) == 0 || res.NPromptTokens != len(must(e.tok.Encode("a b"))) {
		t.Errorf("pieces %q result %+v", pieces, res)
	}
	again := must(e.s.Generate(must(e.m.NewState()), "a b", bm.GenerateOptions{MaxTokens: 15, Seed: 3, Tokenizer: e.tok}, nil))
	if !sameResult(res, again) {
		t.Errorf("same seed, different result: %+v vs %+v", res, again)
	}
	if st.NTokens() != uint64(res.NPromptTokens+res.NGenerated) {
		t.Errorf("NTokens %d", st.NTokens())
	}
	// continuing a conversation from NextSeed is deterministic
	st2 := must(e.m.NewState())
	must(e.s.Generate(st2, "a b", bm.GenerateOptions{MaxTokens: 15, Seed: 3, Tokenizer: e.tok}, nil))
	c1 := must(e.s.Generate(st, " c", bm.GenerateOptions{MaxTokens: 5, Seed: res.NextSeed, Tokenizer: e.tok}, nil))
	c2 := must(e.s.Generate(st2, " c", bm.GenerateOptions{MaxTokens: 5, Seed: res.NextSeed, Tokenizer: e.tok}, nil))
	if !sameResult(c1, c2) || !equalBytes(must(st.Save()), must(st2.Save())) {
		t.Errorf("continuations differ")
	}
}

func TestGenerateStops(t *testing.T) {
	defer catch(t)
	needGenerate(t)
	e := newGenEnv(t)
	defer e.close()
	greedy := bm.Greedy()
	// the callback stops after two pieces; the state stays consistent
	st := must(e.m.NewState())
	n := 0
	res := must(e.s.GenerateIDs(st, []int32{5, 6, 7}, bm.GenerateOptions{MaxTokens: 40, Tokenizer: e.tok},
		func(string, int32) bool {
			n++
			_, err := st.Save() // the state is busy during the call
			if !errors.Is(err, bm.ErrInvalidArgument) {
				t.Errorf("Save during Generate: %v", err)
			}
			return n < 2
		}))
	if res.Stop != bm.StopCallback || n != 2 || st.NTokens() != uint64(3+res.NGenerated) {
		t.Errorf("callback stop: %+v, %d calls, %d tokens", res, n, st.NTokens())
	}
	// stop strings
	base := must(e.s.GenerateIDs(must(e.m.NewState()), []int32{5, 6, 7},
		bm.GenerateOptions{Sampler: &greedy, MaxTokens: 40, Tokenizer: e.tok}, nil))
	if len(base.Text) < 6 {
		t.Skip("greedy text too short for a stop string")
	}
	stop := base.Text[3:5]
	cut := base.Text[:strings.Index(base.Text, stop)]
	r := must(e.s.GenerateIDs(must(e.m.NewState()), []int32{5, 6, 7},
		bm.GenerateOptions{Sampler: &greedy, MaxTokens: 40, Tokenizer: e.tok, Stop: []string{stop, "never\x01"}}, nil))
	if r.Stop != bm.StopString || r.Text != cut {
		t.Errorf("stop string %q: %+v, want text %q", stop, r, cut)
	}
}

func TestGeneratePanicIsReraised(t *testing.T) {
	defer catch(t)
	needGenerate(t)
	e := newGenEnv(t)
	defer e.close()
	st := must(e.m.NewState())
	func() {
		defer func() {
			if r := recover(); r != "boom" {
				t.Errorf("recovered %v", r)
			}
		}()
		e.s.GenerateIDs(st, []int32{5, 6, 7}, bm.GenerateOptions{MaxTokens: 40, Tokenizer: e.tok},
			func(string, int32) bool { panic("boom") })
		t.Errorf("no panic")
	}()
	if st.NTokens() <= 3 {
		t.Errorf("the state should hold the prompt and the stopping token: %d", st.NTokens())
	}
	ok(t, e.s.StepInto(st, 1, nil)) // not left busy
}

func TestGenerateErrors(t *testing.T) {
	defer catch(t)
	needGenerate(t)
	e := newGenEnv(t)
	defer e.close()
	st := must(e.m.NewState())
	_, err := e.s.Generate(st, "hello", bm.GenerateOptions{}, nil)
	wantErr(t, err, bm.ErrInvalidArgument, "no tokenizer")
	_, err = e.s.GenerateIDs(st, []int32{int32(e.m.VocabSize()) + 5}, bm.GenerateOptions{Tokenizer: e.tok}, nil)
	wantErr(t, err, bm.ErrInvalidArgument, "bad prompt id")
	_, err = e.s.Generate(st, "", bm.GenerateOptions{Tokenizer: e.tok}, nil)
	wantErr(t, err, bm.ErrInvalidArgument, "empty prompt")
	if st.NTokens() != 0 {
		t.Errorf("failed generations changed the state")
	}
	_, err = e.s.Generate(st, "Hello world", bm.GenerateOptions{Tokenizer: e.tok}, nil) // ids beyond the tiny vocab
	wantErr(t, err, bm.ErrInvalidArgument, "ids beyond the vocabulary")
	other := load(t, fixture("tiny-bf16"))
	defer other.Close()
	_, err = e.s.GenerateIDs(must(other.NewState()), []int32{1, 2}, bm.GenerateOptions{Tokenizer: e.tok}, nil)
	wantErr(t, err, bm.ErrMismatch, "foreign state")
}

func TestModelTokenizerBesideWeights(t *testing.T) {
	defer catch(t)
	needGenerate(t)
	if !bm.Has("bm_model_tokenizer") {
		t.Skip("SKIP: libblackmamba does not export bm_model_tokenizer yet")
	}
	d := t.TempDir()
	for _, f := range []string{"config.json", "model.safetensors"} {
		ok(t, os.WriteFile(filepath.Join(d, f), must(os.ReadFile(filepath.Join(fixture("tiny-f32"), f))), 0o644))
	}
	ok(t, os.WriteFile(filepath.Join(d, "tokenizer.json"), must(os.ReadFile(tokenizerJSON())), 0o644))
	m := load(t, d)
	tok := m.Tokenizer()
	if tok == nil {
		t.Fatal("no tokenizer found beside the weights")
	}
	if tok.VocabSize() != 50277 {
		t.Errorf("vocab %d", tok.VocabSize())
	}
	s := must(m.NewSession(bm.SessionOptions{}))
	st := must(m.NewState())
	r := must(s.Generate(st, "a", bm.GenerateOptions{MaxTokens: 6, Seed: 1}, nil)) // the model's tokenizer
	e := newGenEnv(t)
	defer e.close()
	r2 := must(e.s.Generate(must(e.m.NewState()), "a", bm.GenerateOptions{MaxTokens: 6, Seed: 1, Tokenizer: e.tok}, nil))
	if !sameResult(r, r2) {
		t.Errorf("model tokenizer %+v vs loaded %+v", r, r2)
	}
	tok.Close() // does nothing: the model owns it
	if ids := must(tok.Encode("a")); len(ids) != 1 {
		t.Errorf("Encode %v", ids)
	}
	st.Close()
	s.Close()
	m.Close()
	if _, err := tok.Encode("a"); !errors.Is(err, bm.ErrClosed) {
		t.Errorf("the model's tokenizer after the model's Close: %v", err)
	}
}
