"""prefill_batch and step_batch_sample (skipped when the library lacks them)."""
import unittest

from support import FIXTURES, TOL, as_rows, fixture, golden, has, rel_error

import blackmamba as bm


class BatchTest(unittest.TestCase):
    @unittest.skipUnless(has("bm_prefill_batch"), "libblackmamba does not export bm_prefill_batch yet")
    def test_prefill_batch_equals_prefill(self):
        for name in FIXTURES:
            vocab, prompts = golden(name)
            with bm.Model(fixture(name), backend="cpu") as m, m.new_session() as s:
                states = [m.new_state() for _ in prompts]
                rows = as_rows(s.prefill_batch(states, [p.prompt for p in prompts]))
                for st, row, p in zip(states, rows, prompts):
                    self.assertLessEqual(rel_error(row, p.decode_logits[0]), TOL)
                    # the state continues like a lone prefill's (to rounding: other kernels may run)
                    ref = m.new_state()
                    s.prefill(ref, p.prompt, logits=False)
                    self.assertEqual(st.n_tokens, ref.n_tokens)
                    self.assertLessEqual(rel_error(s.step(st, p.decode_tokens[0]), s.step(ref, p.decode_tokens[0])),
                                         TOL)
                self.assertIsNone(s.prefill_batch([m.new_state()], [[1, 2]], logits=False))
                with self.assertRaises(bm.InvalidArgumentError):
                    s.prefill_batch(states[:1], [[1], [2]])
                with self.assertRaises(bm.InvalidArgumentError):
                    s.prefill_batch([states[0], states[0]], [[1], [2]])
                with self.assertRaises(bm.InvalidArgumentError):
                    s.prefill_batch(states[:2], [[1], []])

    @unittest.skipUnless(has("bm_step_batch_sample"), "libblackmamba does not export bm_step_batch_sample yet")
    def test_step_batch_sample_equals_step_and_sample(self):
        with bm.Model(fixture("tiny-f32"), backend="cpu") as m, m.new_session() as s:
            n = 4
            a = [m.new_state() for _ in range(n)]
            b = [m.new_state() for _ in range(n)]
            toks = [5, 6, 7, 8]
            rngs = [11, 22, 33, 44]
            ref_toks, ref_rngs = list(toks), list(rngs)
            for _ in range(6):
                toks, rngs = s.step_batch_sample(a, toks, rngs, temperature=0.9, top_k=20)
                for i in range(n):
                    logits = s.step(b[i], ref_toks[i])
                    ref_toks[i], ref_rngs[i] = bm.sample(logits, temperature=0.9, top_k=20, repeat_penalty=1.0,
                                                         rng_state=ref_rngs[i])
                self.assertEqual(toks, ref_toks)
                self.assertEqual(rngs, ref_rngs)
            with self.assertRaises(bm.InvalidArgumentError):
                s.step_batch_sample(a, toks, rngs[:2])
            # greedy follows the golden tokens
            vocab, prompts = golden("tiny-f32")
            p = prompts[-1]
            st = m.new_state()
            s.prefill(st, p.prompt[:-1], logits=False)
            tok = p.prompt[-1]
            got = []
            for _ in range(5):
                (tok,), _ = s.step_batch_sample([st], [tok], [0], temperature=0)
                got.append(tok)
            self.assertEqual(got, p.decode_tokens[:5])


if __name__ == "__main__":
    unittest.main()
