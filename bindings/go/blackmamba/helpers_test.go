package blackmamba_test

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sort"
	"testing"

	bm "github.com/libblackmamba/libblackmamba/bindings/go/blackmamba"
)

const tol = 1e-4

var fixtures = []string{"tiny-f32", "tiny-bf16"}

// sharedDir is $BM_SHARED (relative to the repository root) or ../shared.
func sharedDir() string {
	root, _ := filepath.Abs("../../..")
	s := os.Getenv("BM_SHARED")
	if s == "" {
		s = "../shared"
	}
	if !filepath.IsAbs(s) {
		s = filepath.Join(root, s)
	}
	return s
}

func fixture(name string) string { return filepath.Join(sharedDir(), "fixtures", name) }

func tokenizerJSON() string { return filepath.Join(sharedDir(), "tokenizer", "20B_tokenizer.json") }

type tensor struct {
	shape []int
	f32   []float32
	i32   []int32
}

// readSafetensors reads the F32 and I32 tensors of a safetensors file.
func readSafetensors(path string) (map[string]tensor, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if len(data) < 8 {
		return nil, fmt.Errorf("%s: too short", path)
	}
	n := binary.LittleEndian.Uint64(data)
	var header map[string]json.RawMessage
	if err := json.Unmarshal(data[8:8+n], &header); err != nil {
		return nil, err
	}
	base := 8 + int(n)
	out := map[string]tensor{}
	for name, raw := range header {
		if name == "__metadata__" {
			continue
		}
		var t struct {
			Dtype   string `json:"dtype"`
			Shape   []int  `json:"shape"`
			Offsets [2]int `json:"data_offsets"`
		}
		if err := json.Unmarshal(raw, &t); err != nil {
			return nil, err
		}
		b := data[base+t.Offsets[0] : base+t.Offsets[1]]
		tt := tensor{shape: t.Shape}
		switch t.Dtype {
		case "F32":
			tt.f32 = make([]float32, len(b)/4)
			for i := range tt.f32 {
				tt.f32[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
			}
		case "I32":
			tt.i32 = make([]int32, len(b)/4)
			for i := range tt.i32 {
				tt.i32[i] = int32(binary.LittleEndian.Uint32(b[4*i:]))
			}
		default:
			return nil, fmt.Errorf("%s: dtype %s", name, t.Dtype)
		}
		out[name] = tt
	}
	return out, nil
}

type prompt struct {
	ids           []int32
	prefillLogits [][]float32 // nil for short prompts
	decodeTokens  []int32
	decodeLogits  [][]float32
}

func rows(flat []float32, v int) [][]float32 {
	out := make([][]float32, len(flat)/v)
	for i := range out {
		out[i] = flat[i*v : (i+1)*v]
	}
	return out
}

func golden(t *testing.T, name string) (int, []prompt) {
	t.Helper()
	g, err := readSafetensors(filepath.Join(fixture(name), "golden.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	v := g["p0.decode_logits"].shape[1]
	var ps []prompt
	for k := 0; ; k++ {
		pr, ok := g[fmt.Sprintf("p%d.prompt", k)]
		if !ok {
			break
		}
		p := prompt{ids: pr.i32, decodeTokens: g[fmt.Sprintf("p%d.decode_tokens", k)].i32,
			decodeLogits: rows(g[fmt.Sprintf("p%d.decode_logits", k)].f32, v)}
		if pl, ok := g[fmt.Sprintf("p%d.prefill_logits", k)]; ok {
			p.prefillLogits = rows(pl.f32, v)
		}
		ps = append(ps, p)
	}
	if len(ps) == 0 {
		t.Fatal("no golden prompts")
	}
	return v, ps
}

func relError(a, b []float32) float64 {
	if len(a) != len(b) {
		return math.Inf(1)
	}
	var num, den float64
	for i := range a {
		d := float64(a[i]) - float64(b[i])
		num += d * d
		den += float64(b[i]) * float64(b[i])
	}
	if den == 0 {
		if num == 0 {
			return 0
		}
		return math.Inf(1)
	}
	return math.Sqrt(num) / math.Sqrt(den)
}

func argmax(x []float32) int32 {
	best := 0
	for i, v := range x {
		if v > x[best] {
			best = i
		}
	}
	return int32(best)
}

func load(t *testing.T, path string) *bm.Model {
	t.Helper()
	m, err := bm.Load(path, bm.Options{Backend: bm.BackendCPU})
	if err != nil {
		t.Fatalf("Load(%s): %v", path, err)
	}
	return m
}

type mustFailed struct{ err error }

// must returns v, or aborts the test (see catch) when err is not nil.
func must[T any](v T, err error) T {
	if err != nil {
		panic(mustFailed{err})
	}
	return v
}

// catch turns a failed must into t.Fatal; every test defers it first.
func catch(t *testing.T) {
	if r := recover(); r != nil {
		if f, isMust := r.(mustFailed); isMust {
			t.Fatalf("unexpected error: %v", f.err)
		}
		panic(r)
	}
}

func ok(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func equalBytes(a, b []byte) bool { return string(a) == string(b) }

func sortedKeys(m map[string][]int32) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

func errorsIs(err, target error) bool { return errors.Is(err, target) }
