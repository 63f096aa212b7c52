package blackmamba_test

import (
	"path/filepath"
	"testing"

	bm "github.com/libblackmamba/libblackmamba/bindings/go/blackmamba"
)

func TestGoldenFixtures(t *testing.T) {
	defer catch(t)
	for _, name := range fixtures {
		v, prompts := golden(t, name)
		dir := fixture(name)
		for _, path := range []string{dir, filepath.Join(dir, "model.safetensors"), filepath.Join(dir, "pytorch_model.bin")} {
			m := load(t, path)
			if m.VocabSize() != v || m.Info().Backend != bm.BackendCPU {
				t.Fatalf("%s: vocab %d backend %v", path, m.VocabSize(), m.Info().Backend)
			}
			s := must(m.NewSession(bm.SessionOptions{}))
			st := must(m.NewState())
			for k, p := range prompts {
				ok(t, st.Reset())
				all := must(s.PrefillAll(st, p.ids))
				if len(all) != len(p.ids) || st.NTokens() != uint64(len(p.ids)) {
					t.Fatalf("%s p%d: %d rows, %d tokens", path, k, len(all), st.NTokens())
				}
				if p.prefillLogits != nil {
					for i := range all {
						if e := relError(all[i], p.prefillLogits[i]); e > tol {
							t.Errorf("%s p%d prefill row %d rel error %g", path, k, i, e)
						}
					}
				}
				if e := relError(all[len(all)-1], p.decodeLogits[0]); e > tol {
					t.Errorf("%s p%d last prefill row rel error %g", path, k, e)
				}
				ok(t, st.Reset())
				logits := must(s.Prefill(st, p.ids))
				for i, want := range p.decodeLogits {
					if i > 0 {
						logits = must(s.Step(st, p.decodeTokens[i-1]))
					}
					if e := relError(logits, want); e > tol {
						t.Errorf("%s p%d decode %d rel error %g", path, k, i, e)
					}
					if argmax(logits) != p.decodeTokens[i] {
						t.Errorf("%s p%d greedy token %d: %d, want %d", path, k, i, argmax(logits), p.decodeTokens[i])
					}
					var rng uint64
					tok := must(bm.Sample(logits, bm.Greedy(), &rng, nil))
					if tok != p.decodeTokens[i] {
						t.Errorf("%s p%d greedy Sample %d, want %d", path, k, tok, p.decodeTokens[i])
					}
				}
				if st.NTokens() != uint64(len(p.ids)+len(p.decodeTokens)-1) {
					t.Errorf("NTokens %d", st.NTokens())
				}
			}
			st.Close()
			s.Close()
			m.Close()
		}
	}
}

func TestStateSaveLoadCopy(t *testing.T) {
	defer catch(t)
	for _, name := range fixtures {
		_, prompts := golden(t, name)
		p := prompts[len(prompts)-1]
		m := load(t, fixture(name))
		defer m.Close()
		s := must(m.NewSession(bm.SessionOptions{}))
		defer s.Close()
		a := must(m.NewState())
		ok(t, s.PrefillInto(a, p.ids, nil))
		saved := must(a.Save())
		b := must(a.Copy())
		c := must(m.NewState())
		ok(t, c.Load(saved))
		d := must(m.NewState())
		ok(t, d.CopyFrom(a))
		for _, st := range []*bm.State{b, c, d} {
			if st.NTokens() != a.NTokens() {
				t.Fatalf("NTokens %d != %d", st.NTokens(), a.NTokens())
			}
		}
		for _, tok := range p.decodeTokens[:6] {
			ref := must(s.Step(a, tok))
			for _, st := range []*bm.State{b, c, d} {
				got := must(s.Step(st, tok))
				for i := range ref {
					if got[i] != ref[i] {
						t.Fatalf("%s: copied/reloaded state diverged", name)
					}
				}
			}
		}
		if !equalBytes(must(a.Save()), must(c.Save())) {
			t.Errorf("saved bytes differ")
		}
		ok(t, c.Load(saved))
		l := must(s.Step(c, p.decodeTokens[0]))
		if e := relError(l, p.decodeLogits[1]); e > tol {
			t.Errorf("reloaded decode rel error %g", e)
		}
		ok(t, a.Reset())
		if a.NTokens() != 0 {
			t.Errorf("reset: %d tokens", a.NTokens())
		}
		for _, st := range []*bm.State{a, b, c, d} {
			st.Close()
		}
	}
}

func TestStepBatchEqualsSteps(t *testing.T) {
	defer catch(t)
	for _, name := range fixtures {
		_, prompts := golden(t, name)
		m := load(t, fixture(name))
		s := must(m.NewSession(bm.SessionOptions{}))
		var batch, single []*bm.State
		for _, p := range prompts {
			a, b := must(m.NewState()), must(m.NewState())
			ok(t, s.PrefillInto(a, p.ids, nil))
			ok(t, s.PrefillInto(b, p.ids, nil))
			batch, single = append(batch, a), append(single, b)
		}
		for r := 0; r < 4; r++ {
			toks := make([]int32, len(prompts))
			for k, p := range prompts {
				toks[k] = p.decodeTokens[r]
			}
			out := must(s.StepBatch(batch, toks))
			for k := range prompts {
				one := must(s.Step(single[k], toks[k]))
				if e := relError(out[k], one); e > 1e-6 {
					t.Errorf("%s stream %d round %d: batch vs step rel error %g", name, k, r, e)
				}
				if e := relError(out[k], prompts[k].decodeLogits[r+1]); e > tol {
					t.Errorf("%s stream %d round %d: golden rel error %g", name, k, r, e)
				}
			}
		}
		ok(t, s.StepBatchInto(batch, make([]int32, len(batch)), nil))
		s.Close()
		m.Close() // deferred: the states are still open
		for _, st := range append(batch, single...) {
			st.Close()
		}
	}
}

func TestPrefillBatch(t *testing.T) {
	defer catch(t)
	if !bm.Has("bm_prefill_batch") {
		t.Skip("SKIP: libblackmamba does not export bm_prefill_batch yet")
	}
	for _, name := range fixtures {
		_, prompts := golden(t, name)
		m := load(t, fixture(name))
		s := must(m.NewSession(bm.SessionOptions{}))
		var states []*bm.State
		var ids [][]int32
		for _, p := range prompts {
			states = append(states, must(m.NewState()))
			ids = append(ids, p.ids)
		}
		out := must(s.PrefillBatch(states, ids))
		for k, p := range prompts {
			if e := relError(out[k], p.decodeLogits[0]); e > tol {
				t.Errorf("%s p%d rel error %g", name, k, e)
			}
			// the state continues like a lone prefill's (to rounding: other kernels may run)
			ref := must(m.NewState())
			ok(t, s.PrefillInto(ref, p.ids, nil))
			if ref.NTokens() != states[k].NTokens() {
				t.Errorf("%s p%d: %d tokens, want %d", name, k, states[k].NTokens(), ref.NTokens())
			}
			a, b := must(s.Step(states[k], p.decodeTokens[0])), must(s.Step(ref, p.decodeTokens[0]))
			if e := relError(a, b); e > tol {
				t.Errorf("%s p%d: batched state continues differently from a lone prefill (rel error %g)", name, k, e)
			}
			ref.Close()
		}
		if _, err := s.PrefillBatch(states[:2], [][]int32{{1}, {}}); !errorsIs(err, bm.ErrInvalidArgument) {
			t.Errorf("empty prompt: %v", err)
		}
		if _, err := s.PrefillBatch([]*bm.State{states[0], states[0]}, [][]int32{{1}, {2}}); !errorsIs(err, bm.ErrInvalidArgument) {
			t.Errorf("same state twice: %v", err)
		}
		s.Close()
		m.Close()
	}
}

func TestStepBatchSample(t *testing.T) {
	defer catch(t)
	if !bm.Has("bm_step_batch_sample") {
		t.Skip("SKIP: libblackmamba does not export bm_step_batch_sample yet")
	}
	m := load(t, fixture("tiny-f32"))
	defer m.Close()
	s := must(m.NewSession(bm.SessionOptions{}))
	defer s.Close()
	n := 4
	var a, b []*bm.State
	for i := 0; i < n; i++ {
		a = append(a, must(m.NewState()))
		b = append(b, must(m.NewState()))
	}
	p := bm.DefaultSamplerParams()
	p.RepeatPenalty = 1
	p.Temperature = 0.9
	toks := []int32{5, 6, 7, 8}
	rngs := []uint64{11, 22, 33, 44}
	refToks := append([]int32(nil), toks...)
	refRngs := append([]uint64(nil), rngs...)
	for r := 0; r < 6; r++ {
		toks = must(s.StepBatchSample(a, toks, p, rngs))
		for i := 0; i < n; i++ {
			l := must(s.Step(b[i], refToks[i]))
			refToks[i] = must(bm.Sample(l, p, &refRngs[i], nil))
		}
		for i := 0; i < n; i++ {
			if toks[i] != refToks[i] || rngs[i] != refRngs[i] {
				t.Fatalf("round %d stream %d: %d/%d vs %d/%d", r, i, toks[i], rngs[i], refToks[i], refRngs[i])
			}
		}
	}
	bad := p
	bad.RepeatPenalty = 1.1
	if _, err := s.StepBatchSample(a, toks, bad, rngs); !errorsIs(err, bm.ErrInvalidArgument) {
		t.Errorf("repeat penalty: %v", err)
	}
}

func TestModelInfo(t *testing.T) {
	defer catch(t)
	m := load(t, fixture("tiny-bf16"))
	defer m.Close()
	i := m.Info()
	if i.WeightDTypeName() != "bf16" || i.NParams <= i.NActiveParams || i.StateBytes == 0 || i.LayerKinds == "" ||
		i.Activation != bm.ActivationGELU || i.NLayers == 0 {
		t.Errorf("info %+v", i)
	}
	if m.Tokenizer() != nil {
		t.Errorf("the fixture has no tokenizer.json")
	}
}
