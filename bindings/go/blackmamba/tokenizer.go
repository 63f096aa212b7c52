package blackmamba

/*
#include "shim.h"
*/
import "C"

import (
	"runtime"
	"unsafe"
)

// Tokenizer is the GPT-NeoX byte-level BPE tokenizer of BlackMamba, loaded
// from a Hugging Face tokenizer.json. Safe for concurrent use.
type Tokenizer struct {
	ptr   *C.bm_tokenizer
	life  life  // for a tokenizer loaded by LoadTokenizer
	owner *life // what keeps ptr valid: &t.life, or the model's life
}

// LoadTokenizer loads a tokenizer.json. Close it when done.
func LoadTokenizer(path string) (*Tokenizer, error) {
	if err := checkVersion(); err != nil {
		return nil, err
	}
	cpath := C.CString(path)
	defer C.free(unsafe.Pointer(cpath))
	var out *C.bm_tokenizer
	if err := call("bm_tokenizer_load", func() C.bm_status { return C.bmgo_tokenizer_load(cpath, &out) }); err != nil {
		return nil, err
	}
	t := &Tokenizer{ptr: out}
	t.life = life{kind: "Tokenizer", free: func() { C.bmgo_tokenizer_free(out) }}
	t.owner = &t.life
	runtime.SetFinalizer(t, func(t *Tokenizer) { t.Close() })
	return t, nil
}

// Close frees a tokenizer made by LoadTokenizer (deferred while detokenizers
// or calls use it). A model's own tokenizer is freed with the model: Close
// does nothing to it. Returns nil.
func (t *Tokenizer) Close() error {
	if t.owner == &t.life {
		t.life.close()
	}
	return nil
}

func (t *Tokenizer) enter() error {
	if t == nil {
		return invalid("nil Tokenizer")
	}
	if err := t.owner.hold(false); err != nil {
		return err
	}
	return nil
}

func (t *Tokenizer) leave() { t.owner.release(false); runtime.KeepAlive(t) }

// Encode returns the token ids of text as Hugging Face's tokenizer does for
// the same tokenizer.json (no BOS added). Invalid UTF-8 is ErrInvalidArgument.
func (t *Tokenizer) Encode(text string) ([]int32, error) {
	return t.EncodeBytes([]byte(text))
}

// EncodeBytes is Encode of UTF-8 bytes.
func (t *Tokenizer) EncodeBytes(text []byte) ([]int32, error) {
	if err := t.enter(); err != nil {
		return nil, err
	}
	defer t.leave()
	var tp *C.char
	if len(text) > 0 {
		tp = (*C.char)(unsafe.Pointer(&text[0]))
	}
	ids := make([]int32, len(text)+8) // byte-level BPE makes at most one id per byte
	var n C.size_t
	for {
		err := call("bm_tokenize", func() C.bm_status {
			return C.bmgo_tokenize(t.ptr, tp, C.size_t(len(text)), idsPtr(ids), C.size_t(len(ids)), &n)
		})
		if err != nil {
			if e, ok := err.(*Error); ok && e.Status == StatusBufferTooSmall && int(n) > len(ids) {
				ids = make([]int32, int(n))
				continue
			}
			return nil, err
		}
		return ids[:n:n], nil
	}
}

// Decode returns the text of ids (special tokens included); bytes that do
// not form a character become U+FFFD.
func (t *Tokenizer) Decode(ids []int32) (string, error) {
	b, err := t.DecodeBytes(ids)
	return string(b), err
}

// DecodeBytes is Decode returning the UTF-8 bytes.
func (t *Tokenizer) DecodeBytes(ids []int32) ([]byte, error) {
	if err := t.enter(); err != nil {
		return nil, err
	}
	defer t.leave()
	var need C.size_t
	if err := call("bm_detokenize", func() C.bm_status {
		return C.bmgo_detokenize(t.ptr, idsPtr(ids), C.size_t(len(ids)), nil, 0, &need)
	}); err != nil {
		return nil, err
	}
	buf := make([]byte, int(need)+1)
	var got C.size_t
	if err := call("bm_detokenize", func() C.bm_status {
		return C.bmgo_detokenize(t.ptr, idsPtr(ids), C.size_t(len(ids)), (*C.char)(unsafe.Pointer(&buf[0])),
			C.size_t(len(buf)), &got)
	}); err != nil {
		return nil, err
	}
	return buf[:got:got], nil
}

// VocabSize is the number of ids, added tokens included (0 if closed).
func (t *Tokenizer) VocabSize() int {
	if t.enter() != nil {
		return 0
	}
	defer t.leave()
	return int(C.bmgo_tokenizer_vocab_size(t.ptr))
}

// EOS is the id of "<|endoftext|>", or -1 when there is none.
func (t *Tokenizer) EOS() int32 {
	if t.enter() != nil {
		return -1
	}
	defer t.leave()
	return int32(C.bmgo_tokenizer_eos(t.ptr))
}

// IsSpecial reports whether id is a special added token such as <|endoftext|>.
func (t *Tokenizer) IsSpecial(id int32) bool {
	if t.enter() != nil {
		return false
	}
	defer t.leave()
	return C.bmgo_tokenizer_is_special(t.ptr, C.int32_t(id)) != 0
}

// TokenToID is the id of a token spelled as in tokenizer.json (the
// byte-level form, "\u0120the" for " the", or an added token's content).
func (t *Tokenizer) TokenToID(token string) (int32, bool) {
	if t.enter() != nil {
		return -1, false
	}
	defer t.leave()
	b := []byte(token)
	var p *C.char
	if len(b) > 0 {
		p = (*C.char)(unsafe.Pointer(&b[0]))
	}
	id := int32(C.bmgo_tokenizer_token_to_id(t.ptr, p, C.size_t(len(b))))
	return id, id >= 0
}

// IDToPiece is the bytes id decodes to (possibly part of a UTF-8 character).
func (t *Tokenizer) IDToPiece(id int32) ([]byte, error) {
	if err := t.enter(); err != nil {
		return nil, err
	}
	defer t.leave()
	var p *C.char
	var n C.size_t
	if err := call("bm_tokenizer_id_to_piece", func() C.bm_status {
		return C.bmgo_tokenizer_id_to_piece(t.ptr, C.int32_t(id), &p, &n)
	}); err != nil {
		return nil, err
	}
	return C.GoBytes(unsafe.Pointer(p), C.int(n)), nil
}

// MaxTokenBytes is the most bytes any one id decodes to.
func (t *Tokenizer) MaxTokenBytes() int {
	if t.enter() != nil {
		return 0
	}
	defer t.leave()
	return int(C.bmgo_tokenizer_max_token_bytes(t.ptr))
}

// Detokenizer decodes ids one at a time, emitting only whole characters
// (the bytes of a character a later id completes are held back). Pushing
// ids and then calling Flush yields, concatenated, exactly Decode of those
// ids. One goroutine at a time.
type Detokenizer struct {
	ptr  *C.bm_detokenizer
	life life
	tok  *Tokenizer
	buf  []byte
}

// NewDetokenizer makes a streaming decoder. Close it when done.
func (t *Tokenizer) NewDetokenizer() (*Detokenizer, error) {
	if err := t.enter(); err != nil {
		return nil, err
	}
	defer t.leave()
	if err := t.owner.hold(false); err != nil { // released when the detokenizer is freed
		return nil, err
	}
	var out *C.bm_detokenizer
	if err := call("bm_detokenizer_new", func() C.bm_status { return C.bmgo_detokenizer_new(t.ptr, &out) }); err != nil {
		t.owner.release(false)
		return nil, err
	}
	d := &Detokenizer{ptr: out, tok: t, buf: make([]byte, 3*(int(C.bmgo_tokenizer_max_token_bytes(t.ptr))+3))}
	d.life = life{kind: "Detokenizer", parent: t.owner, free: func() { C.bmgo_detokenizer_free(out) }}
	runtime.SetFinalizer(d, func(d *Detokenizer) { d.Close() })
	return d, nil
}

// Push feeds one id and returns the newly completed text (possibly "").
func (d *Detokenizer) Push(id int32) (string, error) {
	if err := d.life.hold(true); err != nil {
		return "", err
	}
	defer d.life.release(true)
	var n C.size_t
	err := call("bm_detokenizer_push", func() C.bm_status {
		return C.bmgo_detokenizer_push(d.ptr, C.int32_t(id), (*C.char)(unsafe.Pointer(&d.buf[0])), C.size_t(len(d.buf)), &n)
	})
	if err != nil {
		return "", err
	}
	return string(d.buf[:n]), nil
}

// Flush ends the stream: held bytes come out as U+FFFD. The detokenizer is
// then empty.
func (d *Detokenizer) Flush() (string, error) {
	if err := d.life.hold(true); err != nil {
		return "", err
	}
	defer d.life.release(true)
	var n C.size_t
	err := call("bm_detokenizer_flush", func() C.bm_status {
		return C.bmgo_detokenizer_flush(d.ptr, (*C.char)(unsafe.Pointer(&d.buf[0])), C.size_t(len(d.buf)), &n)
	})
	if err != nil {
		return "", err
	}
	return string(d.buf[:n]), nil
}

// Reset drops held bytes and starts a new stream.
func (d *Detokenizer) Reset() {
	if d.life.hold(true) != nil {
		return
	}
	defer d.life.release(true)
	C.bmgo_detokenizer_reset(d.ptr)
}

// Close frees the detokenizer. Idempotent; returns nil.
func (d *Detokenizer) Close() error {
	d.life.close()
	return nil
}
