package blackmamba

/*
#include "shim.h"
*/
import "C"

import (
	"runtime"
	"unsafe"
)

// Backend is where a model computes.
type Backend int32

// Backends (bm_backend).
const (
	BackendAuto Backend = C.BM_BACKEND_AUTO // CUDA when built in and a GPU is present, else CPU
	BackendCPU  Backend = C.BM_BACKEND_CPU
	BackendCUDA Backend = C.BM_BACKEND_CUDA
)

func (b Backend) String() string {
	switch b {
	case BackendAuto:
		return "auto"
	case BackendCPU:
		return "cpu"
	case BackendCUDA:
		return "cuda"
	}
	return "backend(" + itoa(int(b)) + ")"
}

// ParseBackend reads "auto", "cpu" or "cuda".
func ParseBackend(s string) (Backend, error) {
	switch s {
	case "auto", "":
		return BackendAuto, nil
	case "cpu":
		return BackendCPU, nil
	case "cuda":
		return BackendCUDA, nil
	}
	return 0, invalid("unknown backend %q (use auto, cpu or cuda)", s)
}

// Activation is the MLP gate activation.
type Activation int32

// Activations (bm_activation).
const (
	ActivationGELU Activation = C.BM_ACTIVATION_GELU // the default: the released reference code
	ActivationSiLU Activation = C.BM_ACTIVATION_SILU
)

func (a Activation) String() string {
	switch a {
	case ActivationGELU:
		return "gelu"
	case ActivationSiLU:
		return "silu"
	}
	return "activation(" + itoa(int(a)) + ")"
}

// Options are the load options. The zero value is the library's defaults:
// automatic backend, device 0, every online processor, GELU.
type Options struct {
	Backend    Backend
	Device     int // CUDA device ordinal
	Threads    int // CPU threads of sessions that do not choose their own; 0 = every online processor
	Activation Activation
}

// ModelInfo describes a loaded model (bm_model_info).
type ModelInfo struct {
	VocabSize     int // logit rows
	DModel        int
	NLayers       int // all layers (Mamba and MLP/MoE)
	NMambaLayers  int // layers with recurrent state
	DInner        int
	DState        int
	DConv         int
	DtRank        int
	FFNHidden     int
	MaxExperts    int
	Backend       Backend // the backend in use (never BackendAuto)
	Activation    Activation
	WeightDType   int // 0 f32, 1 bf16, 2 f16
	NParams       uint64
	NActiveParams uint64
	StateBytes    uint64
	WeightBytes   uint64
	LayerKinds    string // e.g. "r,8,r,8"
}

// WeightDTypeName is "f32", "bf16" or "f16".
func (i ModelInfo) WeightDTypeName() string {
	switch i.WeightDType {
	case 0:
		return "f32"
	case 1:
		return "bf16"
	case 2:
		return "f16"
	}
	return "dtype" + itoa(i.WeightDType)
}

// Model is a loaded model: config and weights, immutable, safe for
// concurrent use.
type Model struct {
	ptr  *C.bm_model
	life life
	info ModelInfo
	path string
	tok  *Tokenizer
}

// Load loads a model from a directory (config.json and model.safetensors or
// pytorch_model.bin) or from a weights file with config.json beside it.
func Load(path string, opts Options) (*Model, error) {
	if err := checkVersion(); err != nil {
		return nil, err
	}
	var p C.bm_model_params
	C.bm_model_params_init(&p)
	p.backend = C.bm_backend(opts.Backend)
	p.device = C.int32_t(opts.Device)
	p.n_threads = C.int32_t(opts.Threads)
	p.activation = C.bm_activation(opts.Activation)
	cpath := C.CString(path)
	defer C.free(unsafe.Pointer(cpath))
	var out *C.bm_model
	if err := call("bm_model_load", func() C.bm_status { return C.bm_model_load(cpath, &p, &out) }); err != nil {
		return nil, err
	}
	m := &Model{ptr: out, path: path}
	m.life = life{kind: "Model", free: func() { C.bm_model_free(out) }}
	var ci C.bm_model_info
	ci.size = C.uint32_t(unsafe.Sizeof(ci))
	if err := call("bm_model_get_info", func() C.bm_status { return C.bm_model_get_info(out, &ci) }); err != nil {
		C.bm_model_free(out)
		return nil, err
	}
	m.info = ModelInfo{
		VocabSize: int(ci.vocab_size), DModel: int(ci.d_model), NLayers: int(ci.n_layers),
		NMambaLayers: int(ci.n_mamba_layers), DInner: int(ci.d_inner), DState: int(ci.d_state),
		DConv: int(ci.d_conv), DtRank: int(ci.dt_rank), FFNHidden: int(ci.ffn_hidden), MaxExperts: int(ci.max_experts),
		Backend: Backend(ci.backend), Activation: Activation(ci.activation), WeightDType: int(ci.weight_dtype),
		NParams: uint64(ci.n_params), NActiveParams: uint64(ci.n_active_params), StateBytes: uint64(ci.state_bytes),
		WeightBytes: uint64(ci.weight_bytes), LayerKinds: C.GoString(ci.layer_kinds),
	}
	var miss C.int
	if t := C.bmgo_model_tokenizer(out, &miss); t != nil {
		m.tok = &Tokenizer{ptr: (*C.bm_tokenizer)(unsafe.Pointer(t)), owner: &m.life}
	}
	runtime.SetFinalizer(m, func(m *Model) { m.Close() })
	return m, nil
}

// Info describes the model.
func (m *Model) Info() ModelInfo { return m.info }

// VocabSize is the number of logits per position.
func (m *Model) VocabSize() int { return m.info.VocabSize }

// Path is the path the model was loaded from.
func (m *Model) Path() string { return m.path }

// Tokenizer is the tokenizer found beside the weights (tokenizer.json), or
// nil. It belongs to the model: do not Close it; it stops working when the
// model is closed.
func (m *Model) Tokenizer() *Tokenizer { return m.tok }

// Close frees the model, at once or, if states, sessions or calls still use
// it, when the last of them is done. No new state or session can be made
// after Close. Close is idempotent and always returns nil.
func (m *Model) Close() error {
	m.life.close()
	return nil
}

// NewState makes a zero state (no tokens seen) for one stream of this model.
func (m *Model) NewState() (*State, error) {
	if err := m.life.hold(false); err != nil { // released when the state is freed
		return nil, err
	}
	var out *C.bm_state
	if err := call("bm_state_new", func() C.bm_status { return C.bm_state_new(m.ptr, &out) }); err != nil {
		m.life.release(false)
		return nil, err
	}
	s := &State{ptr: out, model: m}
	s.life = life{kind: "State", free: func() { C.bm_state_free(out) }, parent: &m.life}
	runtime.SetFinalizer(s, func(s *State) { s.Close() })
	return s, nil
}

func itoa(v int) string {
	if v == 0 {
		return "0"
	}
	neg := v < 0
	if neg {
		v = -v
	}
	var b [20]byte
	i := len(b)
	for v > 0 {
		i--
		b[i] = byte('0' + v%10)
		v /= 10
	}
	if neg {
		i--
		b[i] = '-'
	}
	return string(b[i:])
}
