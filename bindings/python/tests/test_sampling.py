"""bm_sample through the bindings, checked against the algorithm the header
documents (SplitMix64 draw, softmax in double, walk in id order)."""
import math
import unittest
from array import array

from support import fixture

import blackmamba as bm

M64 = (1 << 64) - 1


def splitmix(state):
    state = (state + 0x9E3779B97F4A7C15) & M64
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    z ^= z >> 31
    return state, (z >> 11) * 2.0 ** -53


def reference_sample(logits, temperature, rng):
    """Plain temperature sampling (all filters off), as the header specifies."""
    rng, u = splitmix(rng)
    mx = max(logits)
    w = [math.exp((x - mx) / temperature) for x in logits]
    total = sum(w)
    acc = 0.0
    for i, x in enumerate(w):
        acc += x
        if acc > u * total:
            return i, rng
    return len(w) - 1, rng


class SamplingTest(unittest.TestCase):
    logits = [0.5, 2.0, -1.0, 1.9, 0.0, 1.0]

    def test_greedy(self):
        tok, rng = bm.sample(self.logits, temperature=0, rng_state=0)
        self.assertEqual(tok, 1)
        self.assertEqual(rng, 0x9E3779B97F4A7C15, "one draw per call, also when greedy")
        tok, rng = bm.sample(self.logits, temperature=0, rng_state=M64)
        self.assertEqual(rng, (M64 + 0x9E3779B97F4A7C15) & M64)
        self.assertEqual(bm.sample([1.0, 1.0, 0.5], temperature=0)[0], 0, "lowest id on ties")

    def test_matches_documented_algorithm(self):
        rng = 12345
        ref_rng = rng
        for _ in range(200):
            tok, rng = bm.sample(self.logits, temperature=0.7, top_k=0, top_p=1.0, min_p=0.0, repeat_penalty=1.0,
                                 rng_state=rng)
            want, ref_rng = reference_sample(self.logits, 0.7, ref_rng)
            self.assertEqual(tok, want)
            self.assertEqual(rng, ref_rng)

    def test_filters_and_penalty(self):
        self.assertEqual(bm.sample([1.0, 1.05], temperature=0, repeat_penalty=1.1, recent=[1])[0], 0)
        self.assertEqual(bm.sample([1.0, 1.05], temperature=0, repeat_penalty=1.0, recent=[1])[0], 1)
        self.assertEqual(bm.sample(self.logits, temperature=0, n_vocab_valid=1)[0], 0)
        for seed in range(50):  # top_k=1 is greedy whatever the draw
            self.assertEqual(bm.sample(self.logits, temperature=1.5, top_k=1, rng_state=seed)[0], 1)

    def test_input_forms(self):
        ref = bm.sample(self.logits, rng_state=7)
        self.assertEqual(bm.sample(array("f", self.logits), rng_state=7), ref)
        self.assertEqual(bm.sample(tuple(self.logits), rng_state=7), ref)
        if bm.HAVE_NUMPY:
            import numpy as np
            self.assertEqual(bm.sample(np.array(self.logits, dtype=np.float64), rng_state=7), ref)
            self.assertEqual(bm.sample(np.array([self.logits], dtype=np.float32), rng_state=7), ref)

    def test_sampler_class(self):
        s = bm.Sampler(seed=5, temperature=0.9, top_k=3)
        rng = 5
        for _ in range(20):
            want, rng = bm.sample(self.logits, temperature=0.9, top_k=3, rng_state=rng)
            self.assertEqual(s.sample(self.logits), want)
            self.assertEqual(s.rng_state, rng)
        d = bm.Sampler()
        self.assertAlmostEqual(d.temperature, 0.8, places=6)  # the library's defaults
        self.assertEqual(d.top_k, 40)
        self.assertIn("Sampler(", repr(d))

    def test_on_model_logits(self):
        with bm.Model(fixture("tiny-f32"), backend="cpu") as m, m.new_session() as s:
            logits = s.prefill(m.new_state(), [1, 2, 3])
            tok, _ = bm.sample(logits, temperature=0)
            self.assertEqual(tok, max(range(len(logits)), key=lambda i: (logits[i], -i)))


if __name__ == "__main__":
    unittest.main()
