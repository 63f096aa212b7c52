"""The Python bindings against the golden fixtures: prefill, decode, greedy
tokens, state save/load/copy, step_batch."""
import os
import unittest

from support import FIXTURES, TOL, argmax, as_rows, fixture, golden, rel_error

import blackmamba as bm


class GoldenTest(unittest.TestCase):
    def check_model(self, name: str, path: str) -> None:
        vocab, prompts = golden(name)
        with bm.Model(path, backend="cpu") as m:
            self.assertEqual(m.info.vocab_size, vocab)
            self.assertEqual(m.info.backend, bm.Backend.CPU)
            with m.new_session() as s, m.new_state() as st:
                for k, p in enumerate(prompts):
                    with self.subTest(fixture=name, path=os.path.basename(path), prompt=k):
                        st.reset()
                        rows = as_rows(s.prefill_all(st, p.prompt))
                        self.assertEqual(len(rows), len(p.prompt))
                        self.assertEqual(st.n_tokens, len(p.prompt))
                        if p.prefill_logits is not None:
                            worst = max(rel_error(a, b) for a, b in zip(rows, p.prefill_logits))
                            self.assertLessEqual(worst, TOL, "prefill_all vs golden")
                        self.assertLessEqual(rel_error(rows[-1], p.decode_logits[0]), TOL)
                        st.reset()
                        logits = s.prefill(st, p.prompt)
                        self.assertEqual(len(logits), vocab)
                        for i, want in enumerate(p.decode_logits):
                            if i:
                                logits = s.step(st, p.decode_tokens[i - 1])
                            self.assertLessEqual(rel_error(logits, want), TOL, f"decode step {i}")
                            self.assertEqual(argmax(logits), p.decode_tokens[i], f"greedy token {i}")
                            tok, _ = bm.sample(logits, temperature=0)
                            self.assertEqual(tok, p.decode_tokens[i])
                        self.assertEqual(st.n_tokens, len(p.prompt) + len(p.decode_tokens) - 1)

    def test_fixtures_all_formats(self):
        for name in FIXTURES:
            d = fixture(name)
            for path in (d, os.path.join(d, "model.safetensors"), os.path.join(d, "pytorch_model.bin")):
                self.check_model(name, path)

    def test_state_save_load_copy_continue_identically(self):
        for name in FIXTURES:
            vocab, prompts = golden(name)
            p = prompts[-1]
            with bm.Model(fixture(name), backend="cpu") as m, m.new_session() as s:
                a = m.new_state()
                s.prefill(a, p.prompt, logits=False)
                saved = a.save()
                self.assertIsInstance(saved, bytes)
                b = a.copy()
                c = m.new_state()
                c.load(saved)
                d = m.new_state()
                d.load(bytearray(saved))
                e = m.new_state()
                e.copy_from(a)
                for st in (b, c, d, e):
                    self.assertEqual(st.n_tokens, a.n_tokens)
                outs = {id(st): [] for st in (a, b, c, d, e)}
                for t in p.decode_tokens[:6]:
                    for st in (a, b, c, d, e):
                        outs[id(st)].append(list(s.step(st, t)))
                ref = outs[id(a)]
                for st in (b, c, d, e):
                    self.assertEqual(outs[id(st)], ref)
                self.assertEqual(a.save(), c.save())
                # the golden decode continues from the reloaded state
                c.load(saved)
                logits = s.step(c, p.decode_tokens[0])
                self.assertLessEqual(rel_error(logits, p.decode_logits[1]), TOL)
                # reset gives zero tokens and the same logits as a new state
                a.reset()
                self.assertEqual(a.n_tokens, 0)
                self.assertEqual(list(s.prefill(a, p.prompt[:3])), list(s.prefill(m.new_state(), p.prompt[:3])))

    def test_step_batch_equals_steps(self):
        for name in FIXTURES:
            vocab, prompts = golden(name)
            with bm.Model(fixture(name), backend="cpu") as m, m.new_session() as s:
                batch = [m.new_state() for _ in prompts]
                single = [m.new_state() for _ in prompts]
                for st, st2, p in zip(batch, single, prompts):
                    s.prefill(st, p.prompt, logits=False)
                    s.prefill(st2, p.prompt, logits=False)
                for r in range(4):
                    toks = [p.decode_tokens[r] for p in prompts]
                    rows = as_rows(s.step_batch(batch, toks))
                    self.assertEqual(len(rows), len(prompts))
                    for k, (st2, t) in enumerate(zip(single, toks)):
                        one = s.step(st2, t)
                        self.assertLessEqual(rel_error(rows[k], one), 1e-6)
                        self.assertLessEqual(rel_error(rows[k], prompts[k].decode_logits[r + 1]), TOL)
                self.assertIsNone(s.step_batch(batch, [1] * len(batch), logits=False))
                for st in batch:
                    self.assertEqual(st.n_tokens, len(prompts[batch.index(st)].prompt) + 5)

    def test_prefill_equals_steps(self):
        vocab, prompts = golden("tiny-f32")
        p = prompts[-1]
        with bm.Model(fixture("tiny-f32"), backend="cpu") as m, m.new_session() as s:
            a, b = m.new_state(), m.new_state()
            la = s.prefill(a, p.prompt)
            lb = None
            for t in p.prompt:
                lb = s.step(b, t)
            self.assertLessEqual(rel_error(la, lb), 1e-5)
            self.assertIsNone(s.prefill(a, [1], logits=False))
            self.assertIsNone(s.step(a, 1, logits=False))

    def test_ids_accept_many_forms(self):
        with bm.Model(fixture("tiny-f32"), backend="cpu") as m, m.new_session() as s:
            from array import array
            ref = list(s.prefill(m.new_state(), [3, 4, 5]))
            for ids in ((3, 4, 5), array("i", [3, 4, 5]), array("l", [3, 4, 5]), range(3, 6), iter([3, 4, 5])):
                self.assertEqual(list(s.prefill(m.new_state(), ids)), ref)
            if bm.HAVE_NUMPY:
                import numpy as np
                for dt in (np.int32, np.int64, np.uint16):
                    self.assertEqual(list(s.prefill(m.new_state(), np.array([3, 4, 5], dtype=dt))), ref)

    def test_info(self):
        with bm.Model(fixture("tiny-bf16"), backend="cpu", threads=1) as m:
            i = m.info
            self.assertEqual(i.weight_dtype_name, "bf16")
            self.assertGreater(i.n_params, i.n_active_params)
            self.assertGreater(i.state_bytes, 0)
            self.assertIn(",", i.layer_kinds)
            self.assertEqual(i.activation, bm.Activation.GELU)
            self.assertEqual(m.vocab_size, i.vocab_size)
            self.assertIn("Model", repr(m))


if __name__ == "__main__":
    unittest.main()
