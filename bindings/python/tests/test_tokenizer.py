"""The tokenizer goldens (ids.json made by Hugging Face tokenizers) and the
streaming detokenizer. Skipped, with a message, when the library does not
export the tokenizer yet."""
import json
import os
import unittest

from support import TOKENIZER_GOLDEN, TOKENIZER_JSON, fixture, has

import blackmamba as bm


def tokenizer_available():
    return has("bm_tokenizer_load") and has("bm_tokenize") and has("bm_detokenize")


@unittest.skipUnless(tokenizer_available(), "libblackmamba does not export the tokenizer functions yet")
class TokenizerTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tok = bm.Tokenizer(TOKENIZER_JSON)
        with open(os.path.join(TOKENIZER_GOLDEN, "ids.json"), encoding="utf-8") as f:
            cls.golden = json.load(f)

    @classmethod
    def tearDownClass(cls):
        cls.tok.close()

    def texts(self):
        for name, ids in sorted(self.golden.items()):
            with open(os.path.join(TOKENIZER_GOLDEN, name), "rb") as f:
                yield name, f.read().decode("utf-8"), ids

    def test_encode_goldens(self):
        n = 0
        for name, text, ids in self.texts():
            with self.subTest(text=name):
                self.assertEqual(self.tok.encode(text), ids)
                self.assertEqual(self.tok.encode(text.encode("utf-8")), ids)
                n += 1
        self.assertGreater(n, 0)

    def test_decode_goldens(self):
        for name, text, ids in self.texts():
            with self.subTest(text=name):
                self.assertEqual(self.tok.decode(ids), text)
                self.assertEqual(self.tok.decode_bytes(ids), text.encode("utf-8"))

    def test_streaming_equals_decode(self):
        for name, text, ids in self.texts():
            with self.subTest(text=name), self.tok.detokenizer() as d:
                out = "".join(d.push(i) for i in ids) + d.flush()
                self.assertEqual(out, text)
        # a character split across ids is held back until complete
        ids = self.tok.encode("héllo 世界 🙂")
        with self.tok.detokenizer() as d:
            pieces = [d.push(i) for i in ids]
            self.assertEqual("".join(pieces) + d.flush(), "héllo 世界 🙂")
            for p in pieces:
                self.assertNotIn("\ufffd", p)
            d.push(ids[-1])  # maybe only part of the emoji
            d.reset()
            self.assertEqual(d.flush(), "")

    def test_vocabulary(self):
        t = self.tok
        self.assertEqual(t.vocab_size, 50277)
        self.assertEqual(len(t), 50277)
        self.assertEqual(t.eos, 0)
        self.assertTrue(t.is_special(0))
        self.assertFalse(t.is_special(t.encode("hello")[0]))
        self.assertEqual(t.token_to_id("<|endoftext|>"), 0)
        self.assertEqual(t.token_to_id("\u0120the"), t.encode(" the")[0])
        self.assertIsNone(t.token_to_id("definitely not a token \u2603"))
        self.assertEqual(t.id_to_piece(t.encode(" the")[0]), b" the")
        self.assertGreater(t.max_token_bytes, 0)
        self.assertEqual(t.encode(""), [])
        self.assertEqual(t.decode([]), "")
        self.assertIn("Tokenizer", repr(t))

    def test_errors(self):
        with self.assertRaises(bm.BMIOError) as cm:
            bm.Tokenizer(os.path.join(TOKENIZER_GOLDEN, "no-such-tokenizer.json"))
        self.assertTrue(cm.exception.message)
        with self.assertRaises(bm.Error) as cm:  # not a tokenizer.json
            bm.Tokenizer(os.path.join(fixture("tiny-f32"), "config.json"))
        self.assertIn(cm.exception.status, (-3, -4))
        with self.assertRaises(bm.InvalidArgumentError) as cm:
            self.tok.encode(b"abc\xff\xfe")
        self.assertTrue(cm.exception.message)
        with self.assertRaises(bm.InvalidArgumentError):
            self.tok.decode([self.tok.vocab_size])
        with self.assertRaises(bm.InvalidArgumentError):
            self.tok.decode([-1])
        with self.assertRaises(bm.InvalidArgumentError):
            self.tok.id_to_piece(10 ** 6)
        with self.tok.detokenizer() as d, self.assertRaises(bm.InvalidArgumentError):
            d.push(-5)

    def test_close_with_live_detokenizer_is_deferred(self):
        t = bm.Tokenizer(TOKENIZER_JSON)
        d = t.detokenizer()
        t.close()
        self.assertTrue(t.closed)
        with self.assertRaises(bm.InvalidArgumentError):
            t.encode("x")
        self.assertEqual(d.push(12092), "Hello")  # still alive for the detokenizer
        d.close()
        self.assertIsNone(t._handle)


if __name__ == "__main__":
    unittest.main()
