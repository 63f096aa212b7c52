// Command generate generates text with a BlackMamba model.
//
//	go run ./examples/generate -model MODEL_DIR -prompt "Once upon a time" [-n 100] [-temp 0.8] [-seed 1]
//	                           [-tokenizer tokenizer.json] [-backend auto|cpu|cuda] [-ids]
//
// The tokenizer is the model's own (tokenizer.json beside the weights) unless
// -tokenizer names one. With -ids the prompt is token ids ("1 2 3").
package main

import (
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"

	bm "github.com/libblackmamba/libblackmamba/bindings/go/blackmamba"
)

func main() {
	model := flag.String("model", "", "model directory or weights file (required)")
	prompt := flag.String("prompt", "", "the prompt (required)")
	n := flag.Int("n", 100, "most tokens to generate")
	temp := flag.Float64("temp", -1, "temperature (0 = greedy; default: the library's 0.8)")
	topK := flag.Int("top-k", -1, "top-k (default: the library's)")
	seed := flag.Uint64("seed", 0, "random seed")
	tokPath := flag.String("tokenizer", "", "tokenizer.json (default: the model's)")
	backend := flag.String("backend", "auto", "auto, cpu or cuda")
	ids := flag.Bool("ids", false, "the prompt is token ids")
	var stops multiFlag
	flag.Var(&stops, "stop", "stop string (repeatable)")
	flag.Parse()
	if *model == "" || *prompt == "" {
		flag.Usage()
		os.Exit(2)
	}
	if err := run(*model, *prompt, *n, *temp, *topK, *seed, *tokPath, *backend, *ids, stops); err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
}

func run(modelPath, prompt string, n int, temp float64, topK int, seed uint64, tokPath, backend string,
	ids bool, stops []string) error {
	b, err := bm.ParseBackend(backend)
	if err != nil {
		return err
	}
	m, err := bm.Load(modelPath, bm.Options{Backend: b})
	if err != nil {
		return err
	}
	defer m.Close()
	tok := m.Tokenizer()
	if tokPath != "" {
		if tok, err = bm.LoadTokenizer(tokPath); err != nil {
			return err
		}
		defer tok.Close()
	}
	if tok == nil {
		return fmt.Errorf("the model has no tokenizer.json; pass -tokenizer")
	}
	st, err := m.NewState()
	if err != nil {
		return err
	}
	defer st.Close()
	sess, err := m.NewSession(bm.SessionOptions{})
	if err != nil {
		return err
	}
	defer sess.Close()

	sp := bm.DefaultSamplerParams()
	if temp >= 0 {
		sp.Temperature = float32(temp)
	}
	if topK >= 0 {
		sp.TopK = topK
	}
	opts := bm.GenerateOptions{Sampler: &sp, MaxTokens: n, Seed: seed, Stop: stops, Tokenizer: tok}
	print := func(piece string, _ int32) bool { fmt.Print(piece); return true }
	var res bm.GenerateResult
	if ids {
		var p []int32
		for _, f := range strings.Fields(prompt) {
			v, err := strconv.ParseInt(f, 10, 32)
			if err != nil {
				return fmt.Errorf("bad token id %q", f)
			}
			p = append(p, int32(v))
		}
		res, err = sess.GenerateIDs(st, p, opts, print)
	} else {
		res, err = sess.Generate(st, prompt, opts, print)
	}
	fmt.Println()
	if err != nil {
		return err
	}
	rate := float64(res.NGenerated) / res.GenerateTime.Seconds()
	fmt.Fprintf(os.Stderr, "[%d prompt tokens, %d generated, stop: %v, %.1f tokens/s]\n",
		res.NPromptTokens, res.NGenerated, res.Stop, rate)
	return nil
}

type multiFlag []string

func (f *multiFlag) String() string     { return strings.Join(*f, ",") }
func (f *multiFlag) Set(v string) error { *f = append(*f, v); return nil }
