"""Session.generate / generate_text against the golden greedy tokens, and
the streaming, stopping and error behaviour of the Python generator.
Skipped, with a message, when the library does not export bm_generate yet."""
import gc
import os
import shutil
import weakref
import tempfile
import unittest

from support import TOKENIZER_JSON, TOL, fixture, golden, has, rel_error

import blackmamba as bm


def key(r):
    """A GenerateResult without its timings."""
    return (r.stop, r.n_prompt_tokens, r.n_generated, r.rng_state, r.text)


@unittest.skipUnless(has("bm_generate") and has("bm_generate_ids") and has("bm_tokenizer_load"),
                     "libblackmamba does not export bm_generate yet")
class GenerateTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tok = bm.Tokenizer(TOKENIZER_JSON)
        cls.m = bm.Model(fixture("tiny-f32"), backend="cpu")
        cls.s = cls.m.new_session()
        cls.vocab, cls.prompts = golden("tiny-f32")

    @classmethod
    def tearDownClass(cls):
        cls.s.close()
        cls.m.close()
        cls.tok.close()

    def greedy(self, **kw):
        return dict(temperature=0, repeat_penalty=1.0, tokenizer=self.tok, **kw)

    def test_greedy_matches_golden_tokens(self):
        for k, p in enumerate(self.prompts):
            with self.subTest(prompt=k):
                st = self.m.new_state()
                r = self.s.generate_text(st, p.prompt, max_tokens=len(p.decode_tokens), **self.greedy())
                want = p.decode_tokens
                if self.tok.eos in want:
                    want = want[:want.index(self.tok.eos) + 1]
                    self.assertEqual(r.stop, bm.StopReason.EOS)
                else:
                    self.assertEqual(r.stop, bm.StopReason.MAX_TOKENS)
                self.assertEqual(r.n_prompt_tokens, len(p.prompt))
                self.assertEqual(r.n_generated, len(want))
                self.assertEqual(st.n_tokens, len(p.prompt) + len(want))
                ref = self.m.new_state()
                self.s.prefill(ref, p.prompt, logits=False)
                for t in want:
                    self.s.step(ref, t, logits=False)
                # the state saw the prompt and every sampled token (to rounding)
                self.assertEqual(st.n_tokens, ref.n_tokens)
                self.assertLessEqual(rel_error(self.s.step(st, 1), self.s.step(ref, 1)), TOL)
                self.assertEqual(r.text, self.tok.decode(want))
                self.assertGreaterEqual(r.prompt_seconds, 0)
                self.assertGreaterEqual(r.generate_seconds, 0)

    def test_iterator_equals_generate_text(self):
        st1, st2 = self.m.new_state(), self.m.new_state()
        r = self.s.generate_text(st1, [5, 6, 7], max_tokens=20, seed=11, tokenizer=self.tok)
        g = self.s.generate(st2, [5, 6, 7], max_tokens=20, seed=11, tokenizer=self.tok)
        self.assertIsNone(g.result)
        pieces = list(g)
        self.assertEqual("".join(pieces), r.text)
        self.assertEqual(g.text, r.text)
        self.assertEqual(len(g.tokens), len(pieces))
        self.assertEqual(key(g.result), key(r))
        self.assertEqual(st1.save(), st2.save())
        self.assertEqual(list(g), [])  # exhausted

    def test_text_prompt_and_seeds(self):
        a = self.s.generate_text(self.m.new_state(), "a b", max_tokens=15, seed=3, tokenizer=self.tok)
        b = self.s.generate_text(self.m.new_state(), "a b", max_tokens=15, seed=3, tokenizer=self.tok)
        self.assertEqual(key(a), key(b))
        self.assertEqual(a.n_prompt_tokens, len(self.tok.encode("a b")))
        # continuing from rng_state is deterministic too
        st = self.m.new_state()
        first = self.s.generate_text(st, "a", max_tokens=5, seed=9, tokenizer=self.tok)
        second = self.s.generate_text(st, " b", max_tokens=5, seed=first.rng_state, tokenizer=self.tok)
        st2 = self.m.new_state()
        self.s.generate_text(st2, "a", max_tokens=5, seed=9, tokenizer=self.tok)
        again = self.s.generate_text(st2, " b", max_tokens=5, seed=first.rng_state, tokenizer=self.tok)
        self.assertEqual(key(second), key(again))
        self.assertEqual(st.save(), st2.save())

    def test_early_close_keeps_state_consistent(self):
        st = self.m.new_state()
        with self.s.generate(st, [5, 6, 7], max_tokens=50, tokenizer=self.tok, **self.greedy_no_tok()) as g:
            next(g)
            next(g)
            with self.assertRaises(bm.InvalidArgumentError):  # busy while the generation runs
                st.save()
            with self.assertRaises(bm.InvalidArgumentError):
                self.s.step(self.m.new_state(), 1)
        self.assertEqual(g.result.stop, bm.StopReason.CALLBACK)
        self.assertEqual(st.n_tokens, 3 + g.result.n_generated)
        st.save()  # usable again
        # dropping an unfinished generation closes it too
        st2 = self.m.new_state()
        g = self.s.generate(st2, [5, 6, 7], max_tokens=50, tokenizer=self.tok)
        next(g)
        del g
        self.assertGreater(st2.n_tokens, 3)
        self.s.step(st2, 1)
        # a generation never started changes nothing
        st3 = self.m.new_state()
        g = self.s.generate(st3, [5, 6, 7], tokenizer=self.tok)
        g.close()
        self.assertEqual(st3.n_tokens, 0)
        self.assertEqual(list(g), [])

    def greedy_no_tok(self):
        return dict(temperature=0, repeat_penalty=1.0)

    def test_callbacks(self):
        seen = []

        def stop_after_two(text, token):
            seen.append((text, token))
            return len(seen) >= 2

        r = self.s.generate_text(self.m.new_state(), [5, 6, 7], on_piece=stop_after_two, max_tokens=40,
                                 tokenizer=self.tok)
        self.assertEqual(r.stop, bm.StopReason.CALLBACK)
        self.assertEqual(len(seen), 2)
        self.assertEqual(r.text, "".join(t for t, _ in seen))

        # the callback cannot reenter the session or touch the state
        st = self.m.new_state()
        errors = []

        def reenter(text, token):
            for call in (lambda: self.s.step(st, 1), lambda: st.save(), lambda: self.s.step(self.m.new_state(), 1)):
                try:
                    call()
                except bm.InvalidArgumentError as e:
                    errors.append(e)
            return True

        self.s.generate_text(st, [5, 6, 7], on_piece=reenter, max_tokens=5, tokenizer=self.tok)
        self.assertEqual(len(errors), 3)
        self.assertIn("in use", str(errors[0]))

        class Boom(Exception):
            pass

        def boom(text, token):
            raise Boom(text)

        st = self.m.new_state()
        with self.assertRaises(Boom):
            self.s.generate_text(st, [5, 6, 7], on_piece=boom, max_tokens=40, tokenizer=self.tok)
        self.assertGreater(st.n_tokens, 3)  # stopped at the first piece, state consistent
        self.s.step(st, 1)

    def test_stop_strings(self):
        base = self.s.generate_text(self.m.new_state(), [5, 6, 7], max_tokens=40, **self.greedy())
        if len(base.text) < 6:
            self.skipTest("greedy text too short for a stop string")
        stop = base.text[3:5]
        cut = base.text[:base.text.index(stop)]
        r = self.s.generate_text(self.m.new_state(), [5, 6, 7], max_tokens=40, stop=[stop, "\x00never"],
                                 **self.greedy())
        self.assertEqual(r.stop, bm.StopReason.STRING)
        self.assertEqual(r.text, cut)
        g = self.s.generate(self.m.new_state(), [5, 6, 7], max_tokens=40, stop=[stop], **self.greedy())
        self.assertEqual("".join(g), cut)
        self.assertEqual(g.result.stop, bm.StopReason.STRING)
        with self.assertRaises(bm.InvalidArgumentError):
            self.s.generate(self.m.new_state(), [5], stop="x", tokenizer=self.tok)

    def test_errors(self):
        st = self.m.new_state()
        with self.assertRaises(bm.InvalidArgumentError):  # the tiny model has no tokenizer.json
            self.s.generate(st, "hello")
        g = self.s.generate(st, [self.vocab + 5], tokenizer=self.tok)
        with self.assertRaises(bm.InvalidArgumentError) as cm:
            next(g)
        self.assertTrue(cm.exception.message)
        self.assertEqual(st.n_tokens, 0)
        with self.assertRaises(bm.InvalidArgumentError):
            self.s.generate_text(st, "", tokenizer=self.tok)
        self.assertEqual(st.n_tokens, 0)
        with self.assertRaises(bm.InvalidArgumentError):
            self.s.generate_text(self.m.new_state(), [1, 2], temperature=-1, tokenizer=self.tok)
        # text whose ids exceed the tiny model's vocabulary
        with self.assertRaises(bm.InvalidArgumentError):
            self.s.generate_text(st, "Hello world", tokenizer=self.tok)
        with bm.Model(fixture("tiny-bf16"), backend="cpu") as other:
            with self.assertRaises(bm.MismatchError):
                self.s.generate_text(other.new_state(), [1, 2], tokenizer=self.tok)

    @unittest.skipUnless(has("bm_model_tokenizer"), "libblackmamba does not export bm_model_tokenizer yet")
    def test_model_tokenizer_beside_weights(self):
        with tempfile.TemporaryDirectory() as d:
            src = fixture("tiny-f32")
            for name in ("config.json", "model.safetensors"):
                shutil.copyfile(os.path.join(src, name), os.path.join(d, name))
            shutil.copyfile(TOKENIZER_JSON, os.path.join(d, "tokenizer.json"))
            m = bm.Model(d, backend="cpu")
            t = m.tokenizer
            self.assertIsNotNone(t)
            self.assertIs(m.tokenizer, t)
            self.assertEqual(t.vocab_size, 50277)
            self.assertEqual(t.encode("a"), self.tok.encode("a"))
            st, s = m.new_state(), m.new_session()
            r = s.generate_text(st, "a", max_tokens=6, seed=1)  # uses the model's tokenizer
            r2 = self.s.generate_text(self.m.new_state(), "a", max_tokens=6, seed=1, tokenizer=self.tok)
            self.assertEqual(key(r), key(r2))
            self.assertIs(m.tokenizer.__class__, bm.Tokenizer)
            t.close()  # does nothing: it belongs to the model
            self.assertEqual(t.encode("a"), [66])
            # the tokenizer keeps its model object alive, with no reference cycle
            ref = weakref.ref(m)
            gc.disable()
            try:
                del m
                self.assertIsNotNone(ref())
                self.assertEqual(t.encode("a"), [66])
                m = ref()
            finally:
                gc.enable()
            st.close()
            s.close()
            m.close()
            with self.assertRaises(bm.InvalidArgumentError):  # its model is gone
                t.encode("a")
        self.assertIsNone(self.m.tokenizer)


if __name__ == "__main__":
    unittest.main()
