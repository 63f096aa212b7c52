package blackmamba_test

import (
	"math"
	"testing"

	bm "github.com/libblackmamba/libblackmamba/bindings/go/blackmamba"
)

func splitmix(state uint64) (uint64, float64) {
	state += 0x9E3779B97F4A7C15
	z := state
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
	z = (z ^ (z >> 27)) * 0x94D049BB133111EB
	z ^= z >> 31
	return state, float64(z>>11) * (1.0 / (1 << 53))
}

func TestSampleMatchesDocumentedAlgorithm(t *testing.T) {
	defer catch(t)
	logits := []float32{0.5, 2.0, -1.0, 1.9, 0.0, 1.0}
	p := bm.SamplerParams{Temperature: 0.7, TopK: 0, TopP: 1, MinP: 0, RepeatPenalty: 1}
	rng, ref := uint64(12345), uint64(12345)
	for i := 0; i < 200; i++ {
		tok := must(bm.Sample(logits, p, &rng, nil))
		var u float64
		ref, u = splitmix(ref)
		mx := 2.0
		var w []float64
		total := 0.0
		for _, l := range logits {
			x := math.Exp((float64(l) - mx) / 0.7)
			w = append(w, x)
			total += x
		}
		want, acc := len(w)-1, 0.0
		for j, x := range w {
			acc += x
			if acc > u*total {
				want = j
				break
			}
		}
		if int(tok) != want || rng != ref {
			t.Fatalf("draw %d: token %d rng %d, want %d %d", i, tok, rng, want, ref)
		}
	}
}

func TestSampleGreedyAndPenalty(t *testing.T) {
	defer catch(t)
	var rng uint64
	if tok := must(bm.Sample([]float32{0.5, 2, 1.9}, bm.Greedy(), &rng, nil)); tok != 1 || rng != 0x9E3779B97F4A7C15 {
		t.Errorf("greedy: %d, rng %x", tok, rng)
	}
	p := bm.Greedy()
	p.RepeatPenalty = 1.1
	if tok := must(bm.Sample([]float32{1, 1.05}, p, &rng, []int32{1})); tok != 0 {
		t.Errorf("penalised: %d", tok)
	}
	d := bm.DefaultSamplerParams()
	if math.Abs(float64(d.Temperature)-0.8) > 1e-6 || d.TopK != 40 {
		t.Errorf("defaults %+v", d)
	}
	s := bm.NewSampler(5)
	s.Params.TopK = 3
	ref := uint64(5)
	for i := 0; i < 20; i++ {
		want := must(bm.Sample([]float32{0.5, 2, -1, 1.9}, s.Params, &ref, nil))
		if got := must(s.Sample([]float32{0.5, 2, -1, 1.9}, nil)); got != want || s.RNG != ref {
			t.Fatalf("Sampler differs from Sample")
		}
	}
}
