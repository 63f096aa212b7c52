package blackmamba

/*
#include "shim.h"
*/
import "C"

import (
	"runtime/cgo"
	"strings"
	"time"
	"unsafe"
)

// StopReason says why a generation ended.
type StopReason int

// Stop reasons (bm_stop_reason).
const (
	StopNone      StopReason = C.BM_STOP_NONE       // not stopped (a failed call)
	StopEOS       StopReason = C.BM_STOP_EOS        // the end-of-text token was sampled
	StopString    StopReason = C.BM_STOP_STRING     // a stop string appeared
	StopMaxTokens StopReason = C.BM_STOP_MAX_TOKENS // MaxTokens were generated
	StopCallback  StopReason = C.BM_STOP_CALLBACK   // the piece callback returned false
)

func (r StopReason) String() string {
	switch r {
	case StopNone:
		return "none"
	case StopEOS:
		return "eos"
	case StopString:
		return "stop string"
	case StopMaxTokens:
		return "max tokens"
	case StopCallback:
		return "callback"
	}
	return "stop(" + itoa(int(r)) + ")"
}

// GenerateOptions configure Generate. The zero value gives the library's
// defaults with seed 0.
type GenerateOptions struct {
	Sampler      *SamplerParams // nil: DefaultSamplerParams()
	MaxTokens    int            // most tokens to generate; 0: the library default (256)
	RepeatWindow int            // recent tokens the repetition penalty sees; 0: the library default (64)
	Stop         []string       // generation stops before emitting any of these
	Seed         uint64         // the generator state to start from (see Sample)
	Tokenizer    *Tokenizer     // nil: the model's own tokenizer
}

// GenerateResult is the outcome of a generation.
type GenerateResult struct {
	Stop          StopReason
	NPromptTokens int           // tokens the prompt encoded to
	NGenerated    int           // tokens sampled (the stopping one included)
	PromptTime    time.Duration // prefill of the prompt
	GenerateTime  time.Duration // from the first sample to the end
	NextSeed      uint64        // the generator state to continue from
	Text          string        // everything passed to the callback, concatenated
}

type pieceState struct {
	fn       func(piece string, token int32) bool
	text     strings.Builder
	panicked interface{}
}

//export bmgoPiece
func bmgoPiece(piece *C.char, n C.size_t, token C.int32_t, h C.uintptr_t) (stop C.int) {
	ps := cgo.Handle(h).Value().(*pieceState)
	defer func() {
		if r := recover(); r != nil {
			ps.panicked = r
			stop = 1
		}
	}()
	s := C.GoStringN(piece, C.int(n))
	ps.text.WriteString(s)
	if ps.fn != nil && !ps.fn(s, int32(token)) {
		return 1
	}
	return 0
}

// Generate feeds prompt to st, then samples a continuation, calling onPiece
// with each new piece of text (whole UTF-8 characters) and the id of the
// token that completed it, until the end-of-text token, a stop string,
// MaxTokens, or onPiece returns false. onPiece may be nil. Every sampled
// token is fed to the state, so st has then seen the prompt and the whole
// output, and the next Generate continues the conversation. A panic in
// onPiece stops generation and is re-raised after the state is consistent.
func (s *Session) Generate(st *State, prompt string, opts GenerateOptions,
	onPiece func(piece string, token int32) bool) (GenerateResult, error) {
	if prompt == "" {
		return GenerateResult{}, invalid("Generate: empty prompt")
	}
	b := []byte(prompt)
	return s.generate("bm_generate", st, opts, onPiece, func(tok *C.bm_tokenizer, p *C.bm_generate_params,
		rng *C.uint64_t, out *C.bm_generate_result, h C.uintptr_t) C.bm_status {
		return C.bmgo_generate(s.ptr, st.ptr, tok, (*C.char)(unsafe.Pointer(&b[0])), C.size_t(len(b)), p, rng, out, h)
	})
}

// GenerateIDs is Generate with the prompt given as token ids.
func (s *Session) GenerateIDs(st *State, prompt []int32, opts GenerateOptions,
	onPiece func(piece string, token int32) bool) (GenerateResult, error) {
	return s.generate("bm_generate_ids", st, opts, onPiece, func(tok *C.bm_tokenizer, p *C.bm_generate_params,
		rng *C.uint64_t, out *C.bm_generate_result, h C.uintptr_t) C.bm_status {
		return C.bmgo_generate_ids(s.ptr, st.ptr, tok, idsPtr(prompt), C.size_t(len(prompt)), p, rng, out, h)
	})
}

func (s *Session) generate(fn string, st *State, opts GenerateOptions, onPiece func(string, int32) bool,
	do func(*C.bm_tokenizer, *C.bm_generate_params, *C.uint64_t, *C.bm_generate_result, C.uintptr_t) C.bm_status,
) (GenerateResult, error) {
	tok := opts.Tokenizer
	if tok == nil {
		tok = s.model.tok
		if tok == nil {
			return GenerateResult{}, invalid("%s: the model has no tokenizer (no tokenizer.json beside its "+
				"weights): set GenerateOptions.Tokenizer", fn)
		}
	}
	if err := tok.enter(); err != nil {
		return GenerateResult{}, err
	}
	defer tok.leave()

	var p C.bm_generate_params
	if C.bmgo_generate_params_init(&p) != 0 {
		return GenerateResult{}, missing("bm_generate_params_init")
	}
	if opts.Sampler != nil {
		opts.Sampler.fill(&p.sampler)
	}
	if opts.MaxTokens != 0 {
		p.max_tokens = C.int32_t(opts.MaxTokens)
	}
	if opts.RepeatWindow != 0 {
		p.repeat_window = C.int32_t(opts.RepeatWindow)
	}
	if len(opts.Stop) > 0 {
		arr := (*[1 << 27]*C.char)(C.malloc(C.size_t(8 * len(opts.Stop))))
		for i, str := range opts.Stop {
			arr[i] = C.CString(str)
		}
		defer func() {
			for i := range opts.Stop {
				C.free(unsafe.Pointer(arr[i]))
			}
			C.free(unsafe.Pointer(arr))
		}()
		p.stop_strings = &arr[0]
		p.n_stop_strings = C.size_t(len(opts.Stop))
	}
	ps := &pieceState{fn: onPiece}
	h := cgo.NewHandle(ps)
	defer h.Delete()
	rng := C.uint64_t(opts.Seed)
	var out C.bm_generate_result
	out.size = C.uint32_t(unsafe.Sizeof(out))
	err := s.run(fn, []*State{st}, func() C.bm_status { return do(tok.ptr, &p, &rng, &out, C.uintptr_t(h)) })
	if ps.panicked != nil {
		panic(ps.panicked)
	}
	res := GenerateResult{
		Stop: StopReason(out.stop), NPromptTokens: int(out.n_prompt_tokens), NGenerated: int(out.n_generated),
		PromptTime:   time.Duration(float64(out.prompt_seconds) * float64(time.Second)),
		GenerateTime: time.Duration(float64(out.generate_seconds) * float64(time.Second)),
		NextSeed:     uint64(rng), Text: ps.text.String(),
	}
	return res, err
}
