// Command conversation keeps a conversation on disk: each run feeds your
// message to the model state saved by the previous run, prints the reply and
// saves the state again, so the model remembers everything said so far
// without re-reading the history.
//
//	go run ./examples/conversation -model MODEL_DIR -state chat.state "Hello, who are you?"
//	go run ./examples/conversation -model MODEL_DIR -state chat.state "What did I just ask?"
//	go run ./examples/conversation -model MODEL_DIR -state chat.state -reset
//
// Beside the state file, STATE.seed keeps the random generator position, so
// a conversation replays identically.
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"

	bm "github.com/libblackmamba/libblackmamba/bindings/go/blackmamba"
)

func main() {
	model := flag.String("model", "", "model directory or weights file (required)")
	statePath := flag.String("state", "conversation.state", "state file")
	tokPath := flag.String("tokenizer", "", "tokenizer.json (default: the model's)")
	n := flag.Int("n", 120, "most tokens per reply")
	seed := flag.Uint64("seed", 1, "random seed of a new conversation")
	backend := flag.String("backend", "auto", "auto, cpu or cuda")
	raw := flag.Bool("raw", false, "feed the message as is, without User:/Assistant: turns")
	reset := flag.Bool("reset", false, "forget the conversation")
	flag.Parse()
	if *reset {
		os.Remove(*statePath)
		os.Remove(*statePath + ".seed")
		fmt.Println("conversation forgotten")
		return
	}
	if *model == "" || flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: conversation -model DIR [-state FILE] MESSAGE")
		os.Exit(2)
	}
	if err := run(*model, *statePath, *tokPath, *backend, flag.Arg(0), *n, *seed, *raw); err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
}

func run(modelPath, statePath, tokPath, backend, message string, n int, seed uint64, raw bool) error {
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

	if saved, err := os.ReadFile(statePath); err == nil {
		if err := st.Load(saved); err != nil {
			return fmt.Errorf("%s: %w", statePath, err)
		}
		if s, err := os.ReadFile(statePath + ".seed"); err == nil {
			if v, err := strconv.ParseUint(strings.TrimSpace(string(s)), 10, 64); err == nil {
				seed = v
			}
		}
		fmt.Fprintf(os.Stderr, "[resumed: the state has seen %d tokens]\n", st.NTokens())
	} else if !errors.Is(err, os.ErrNotExist) {
		return err
	}

	prompt, stop := message, []string(nil)
	if !raw {
		prompt = "User: " + message + "\nAssistant:"
		if st.NTokens() > 0 {
			prompt = "\n" + prompt
		}
		stop = []string{"\nUser:"}
	}
	res, err := sess.Generate(st, prompt, bm.GenerateOptions{MaxTokens: n, Seed: seed, Stop: stop, Tokenizer: tok},
		func(piece string, _ int32) bool { fmt.Print(piece); return true })
	fmt.Println()
	if err != nil {
		return err
	}
	data, err := st.Save()
	if err != nil {
		return err
	}
	if err := os.WriteFile(statePath+".tmp", data, 0o644); err != nil {
		return err
	}
	if err := os.Rename(statePath+".tmp", statePath); err != nil {
		return err
	}
	if err := os.WriteFile(statePath+".seed", []byte(strconv.FormatUint(res.NextSeed, 10)+"\n"), 0o644); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "[saved %d bytes of state to %s]\n", len(data), statePath)
	return nil
}
