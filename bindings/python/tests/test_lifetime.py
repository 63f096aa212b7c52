"""Ownership: deterministic freeing, objects keep their model alive, closing
in any order never crashes, threads."""
import gc
import threading
import unittest
import weakref
from array import array

from support import fixture, has, TOKENIZER_JSON

import blackmamba as bm


class LifetimeTest(unittest.TestCase):
    def test_close_model_with_live_children_is_deferred(self):
        m = bm.Model(fixture("tiny-f32"), backend="cpu")
        st, s = m.new_state(), m.new_session()
        before = list(s.prefill(st, [1, 2, 3]))
        m.close()
        self.assertTrue(m.closed)
        self.assertIsNotNone(m._handle, "still alive for its state and session")
        with self.assertRaises(bm.InvalidArgumentError):
            m.new_state()
        with self.assertRaises(bm.InvalidArgumentError):
            m.new_session()
        st.reset()
        self.assertEqual(list(s.prefill(st, [1, 2, 3])), before)  # still works
        with self.assertRaises(bm.InvalidArgumentError):
            st.copy()  # a copy is a new state of the closed model
        st.close()
        self.assertIsNotNone(m._handle)
        s.close()
        self.assertIsNone(m._handle, "freed with the last child")
        m.close()  # idempotent

    def test_children_keep_model_alive(self):
        m = bm.Model(fixture("tiny-f32"), backend="cpu")
        ref = weakref.ref(m)
        st, s = m.new_state(), m.new_session()
        del m
        gc.collect()
        self.assertIsNotNone(ref())
        s.step(st, 1)
        del st, s
        gc.collect()
        self.assertIsNone(ref())

    def test_no_reference_cycles(self):
        # dropping the last reference frees at once, without the cycle collector
        gc.disable()
        try:
            m = bm.Model(fixture("tiny-f32"), backend="cpu")
            s = m.new_session(cancel=lambda: False)
            st = m.new_state()
            s.step(st, 1)
            m.tokenizer  # (None here; a tokenizer beside the weights is covered in test_generate)
            ref = weakref.ref(m)
            del m, s, st
            self.assertIsNone(ref())
        finally:
            gc.enable()

    def test_garbage_in_any_order(self):
        for _ in range(3):
            m = bm.Model(fixture("tiny-bf16"), backend="cpu")
            objs = [m.new_state() for _ in range(5)] + [m.new_session() for _ in range(2)]
            # a reference cycle through the model: collected by gc in arbitrary order
            m.cycle = objs
            objs.append(m)
            del m, objs
            gc.collect()

    def test_context_managers(self):
        with bm.Model(fixture("tiny-f32"), backend="cpu") as m:
            with m.new_state() as st, m.new_session() as s:
                s.step(st, 1)
            self.assertTrue(st.closed and s.closed)
        self.assertIsNone(m._handle)

    def test_threads_share_a_model(self):
        with bm.Model(fixture("tiny-f32"), backend="cpu", threads=1) as m:
            results = {}

            def run(i):
                with m.new_session(threads=1) as s, m.new_state() as st:
                    out = None
                    for t in range(1, 40):
                        out = s.step(st, t)
                    results[i] = list(out)

            ts = [threading.Thread(target=run, args=(i,)) for i in range(4)]
            for t in ts:
                t.start()
            for t in ts:
                t.join()
            self.assertEqual(len(results), 4)
            for i in range(1, 4):
                self.assertEqual(results[i], results[0])

    def test_result_types(self):
        with bm.Model(fixture("tiny-f32"), backend="cpu") as m, m.new_session() as s:
            st = m.new_state()
            V = m.info.vocab_size
            one = s.prefill(st, [1, 2])
            two = s.prefill_all(st, [1, 2])
            batch = s.step_batch([st, m.new_state()], [3, 4])
            if bm.HAVE_NUMPY:
                import numpy as np
                self.assertIsInstance(one, np.ndarray)
                self.assertEqual(one.dtype, np.float32)
                self.assertEqual(one.shape, (V,))
                self.assertEqual(two.shape, (2, V))
                self.assertEqual(batch.shape, (2, V))
            else:
                self.assertIsInstance(one, array)
                self.assertEqual(one.typecode, "f")
                self.assertEqual(len(one), V)
                self.assertIsInstance(two, list)
                self.assertEqual([len(r) for r in two], [V, V])
                self.assertTrue(all(isinstance(r, array) and r.typecode == "f" for r in batch))

    @unittest.skipUnless(has("bm_generate") and has("bm_tokenizer_load"), "no bm_generate in this library")
    def test_generation_pins_its_objects(self):
        tok = bm.Tokenizer(TOKENIZER_JSON)
        m = bm.Model(fixture("tiny-f32"), backend="cpu")
        st, s = m.new_state(), m.new_session()
        g = s.generate(st, [5, 6, 7], max_tokens=30, tokenizer=tok, seed=1)
        next(g)
        # closing everything mid-generation defers the frees
        st.close()
        s.close()
        tok.close()
        m.close()
        self.assertIsNotNone(m._handle)
        rest = list(g)
        self.assertIsNotNone(g.result)
        self.assertIsNone(st._handle)
        self.assertIsNone(s._handle)
        self.assertIsNone(tok._handle)
        self.assertIsNone(m._handle)
        self.assertIsInstance(rest, list)


if __name__ == "__main__":
    unittest.main()
