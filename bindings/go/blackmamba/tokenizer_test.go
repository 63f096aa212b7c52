package blackmamba_test

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	bm "github.com/libblackmamba/libblackmamba/bindings/go/blackmamba"
)

func needTokenizer(t *testing.T) {
	t.Helper()
	for _, f := range []string{"bm_tokenizer_load", "bm_tokenize", "bm_detokenize"} {
		if !bm.Has(f) {
			t.Skipf("SKIP: libblackmamba does not export %s yet", f)
		}
	}
}

func tokenizerGoldens(t *testing.T) (map[string][]int32, map[string]string) {
	t.Helper()
	dir := filepath.Join(sharedDir(), "tokenizer", "golden")
	var ids map[string][]int32
	ok(t, json.Unmarshal(must(os.ReadFile(filepath.Join(dir, "ids.json"))), &ids))
	texts := map[string]string{}
	for name := range ids {
		texts[name] = string(must(os.ReadFile(filepath.Join(dir, name))))
	}
	if len(ids) == 0 {
		t.Fatal("no tokenizer goldens")
	}
	return ids, texts
}

func TestTokenizerGoldens(t *testing.T) {
	defer catch(t)
	needTokenizer(t)
	tok := must(bm.LoadTokenizer(tokenizerJSON()))
	defer tok.Close()
	ids, texts := tokenizerGoldens(t)
	for _, name := range sortedKeys(ids) {
		got := must(tok.Encode(texts[name]))
		want := ids[name]
		if len(got) != len(want) {
			t.Errorf("%s: %d ids, want %d", name, len(got), len(want))
			continue
		}
		for i := range got {
			if got[i] != want[i] {
				t.Errorf("%s: id %d is %d, want %d", name, i, got[i], want[i])
				break
			}
		}
		if s := must(tok.Decode(want)); s != texts[name] {
			t.Errorf("%s: Decode differs", name)
		}
		d := must(tok.NewDetokenizer())
		var b strings.Builder
		for _, id := range want {
			b.WriteString(must(d.Push(id)))
		}
		b.WriteString(must(d.Flush()))
		if b.String() != texts[name] {
			t.Errorf("%s: streaming decode differs", name)
		}
		d.Close()
	}
}

func TestTokenizerVocabulary(t *testing.T) {
	defer catch(t)
	needTokenizer(t)
	tok := must(bm.LoadTokenizer(tokenizerJSON()))
	defer tok.Close()
	if tok.VocabSize() != 50277 || tok.EOS() != 0 || !tok.IsSpecial(0) || tok.MaxTokenBytes() <= 0 {
		t.Errorf("vocab %d eos %d special %v max %d", tok.VocabSize(), tok.EOS(), tok.IsSpecial(0), tok.MaxTokenBytes())
	}
	the := must(tok.Encode(" the"))
	if id, found := tok.TokenToID("\u0120the"); !found || len(the) != 1 || id != the[0] {
		t.Errorf("TokenToID: %d %v %v", id, found, the)
	}
	if _, found := tok.TokenToID("definitely not a token \u2603"); found {
		t.Errorf("found a non-token")
	}
	if p := must(tok.IDToPiece(the[0])); string(p) != " the" {
		t.Errorf("IDToPiece %q", p)
	}
	if ids := must(tok.Encode("")); len(ids) != 0 {
		t.Errorf("empty text: %v", ids)
	}
	// a character split across ids is held back until complete
	text := "héllo 世界 🙂"
	d := must(tok.NewDetokenizer())
	defer d.Close()
	var b strings.Builder
	for _, id := range must(tok.Encode(text)) {
		piece := must(d.Push(id))
		if strings.ContainsRune(piece, '\uFFFD') {
			t.Errorf("piece %q holds a replacement character", piece)
		}
		b.WriteString(piece)
	}
	b.WriteString(must(d.Flush()))
	if b.String() != text {
		t.Errorf("streamed %q", b.String())
	}
}

func TestTokenizerErrors(t *testing.T) {
	defer catch(t)
	needTokenizer(t)
	_, err := bm.LoadTokenizer(filepath.Join(sharedDir(), "tokenizer", "no-such.json"))
	wantErr(t, err, bm.ErrIO, "missing tokenizer")
	_, err = bm.LoadTokenizer(filepath.Join(fixture("tiny-f32"), "config.json"))
	if !errors.Is(err, bm.ErrFormat) && !errors.Is(err, bm.ErrUnsupported) {
		t.Errorf("not a tokenizer.json: %v", err)
	}
	tok := must(bm.LoadTokenizer(tokenizerJSON()))
	_, err = tok.EncodeBytes([]byte("abc\xff\xfe"))
	wantErr(t, err, bm.ErrInvalidArgument, "invalid UTF-8")
	_, err = tok.Decode([]int32{int32(tok.VocabSize())})
	wantErr(t, err, bm.ErrInvalidArgument, "id out of range")
	_, err = tok.IDToPiece(-1)
	wantErr(t, err, bm.ErrInvalidArgument, "IDToPiece out of range")
	d := must(tok.NewDetokenizer())
	_, err = d.Push(-5)
	wantErr(t, err, bm.ErrInvalidArgument, "Push out of range")
	// closing the tokenizer with a live detokenizer defers the free
	tok.Close()
	if _, err := tok.Encode("x"); !errors.Is(err, bm.ErrClosed) {
		t.Errorf("Encode after Close: %v", err)
	}
	if s := must(d.Push(12092)); s != "Hello" {
		t.Errorf("Push after the tokenizer's Close: %q", s)
	}
	d.Close()
}
