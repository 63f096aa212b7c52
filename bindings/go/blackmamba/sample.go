package blackmamba

/*
#include "shim.h"
*/
import "C"

// SamplerParams choose how the next token is drawn (bm_sampler_params).
// Start from DefaultSamplerParams: the zero value means greedy (temperature
// 0) with every filter off and a repetition penalty of 0, which is invalid.
type SamplerParams struct {
	Temperature   float32 // 0 = greedy (argmax, lowest id on ties); default 0.8
	TopK          int     // keep the k most likely; <= 0 = off; default 40
	TopP          float32 // nucleus; >= 1 = off; default 0.95
	MinP          float32 // drop below MinP * p(most likely); <= 0 = off; default 0.05
	RepeatPenalty float32 // over the recent tokens; 1 = off; default 1.1
	NVocabValid   int     // only ids below this are sampled; 0 = all
}

// DefaultSamplerParams are the library's defaults.
func DefaultSamplerParams() SamplerParams {
	var p C.bm_sampler_params
	C.bm_sampler_params_init(&p)
	return samplerFromC(&p)
}

// Greedy are parameters that always pick the most likely token.
func Greedy() SamplerParams {
	p := DefaultSamplerParams()
	p.Temperature = 0
	p.RepeatPenalty = 1
	return p
}

func samplerFromC(p *C.bm_sampler_params) SamplerParams {
	return SamplerParams{
		Temperature: float32(p.temperature), TopK: int(p.top_k), TopP: float32(p.top_p), MinP: float32(p.min_p),
		RepeatPenalty: float32(p.repeat_penalty), NVocabValid: int(p.n_vocab_valid),
	}
}

func (sp SamplerParams) fill(p *C.bm_sampler_params) {
	p.temperature = C.float(sp.Temperature)
	p.top_k = C.int32_t(sp.TopK)
	p.top_p = C.float(sp.TopP)
	p.min_p = C.float(sp.MinP)
	p.repeat_penalty = C.float(sp.RepeatPenalty)
	p.n_vocab_valid = C.int32_t(sp.NVocabValid)
}

func (sp SamplerParams) c() C.bm_sampler_params {
	var p C.bm_sampler_params
	C.bm_sampler_params_init(&p)
	sp.fill(&p)
	return p
}

// Sample chooses a token from logits with the documented bm_sample
// algorithm. rng is the caller's 64-bit generator state (any value is a
// valid seed), advanced by exactly one draw on success. recent are the ids
// the repetition penalty applies to. Deterministic: the same inputs give the
// same token on any backend and host.
func Sample(logits []float32, p SamplerParams, rng *uint64, recent []int32) (int32, error) {
	if rng == nil {
		return 0, invalid("Sample: rng is nil")
	}
	cp := p.c()
	var tok C.int32_t
	r := C.uint64_t(*rng)
	err := call("bm_sample", func() C.bm_status {
		return C.bm_sample(floatsPtr(logits), C.size_t(len(logits)), &cp, &r, idsPtr(recent),
			C.size_t(len(recent)), &tok)
	})
	if err != nil {
		return 0, err
	}
	*rng = uint64(r)
	return int32(tok), nil
}

// Sampler bundles parameters with the generator state they draw from.
type Sampler struct {
	Params SamplerParams
	RNG    uint64
}

// NewSampler makes a sampler with the library's default parameters.
func NewSampler(seed uint64) *Sampler {
	return &Sampler{Params: DefaultSamplerParams(), RNG: seed}
}

// Sample chooses a token and advances s.RNG.
func (s *Sampler) Sample(logits []float32, recent []int32) (int32, error) {
	return Sample(logits, s.Params, &s.RNG, recent)
}
