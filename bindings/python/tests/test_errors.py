"""Error paths: every failure raises the Error subclass of its status with
the library's message, and leaves objects usable."""
import os
import tempfile
import unittest

from support import fixture, golden

import blackmamba as bm


class ErrorsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.m = bm.Model(fixture("tiny-f32"), backend="cpu")
        cls.s = cls.m.new_session()

    @classmethod
    def tearDownClass(cls):
        cls.s.close()
        cls.m.close()

    def test_missing_file(self):
        with self.assertRaises(bm.BMIOError) as cm:
            bm.Model(os.path.join(fixture("tiny-f32"), "no-such-file.safetensors"))
        e = cm.exception
        self.assertEqual(e.status, -2)
        self.assertIsInstance(e, bm.Error)
        self.assertIsInstance(e, OSError)
        self.assertTrue(e.message)
        self.assertIn("no-such-file", str(e))
        self.assertEqual(e.function, "bm_model_load")
        self.assertEqual(e.status_name, "i/o error")

    def test_bad_file_is_format_error(self):
        with tempfile.TemporaryDirectory() as d:
            with open(os.path.join(fixture("tiny-f32"), "config.json"), "rb") as f:
                cfg = f.read()
            with open(os.path.join(d, "config.json"), "wb") as f:
                f.write(cfg)
            with open(os.path.join(d, "model.safetensors"), "wb") as f:
                f.write(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
            with self.assertRaises(bm.FormatError) as cm:
                bm.Model(d)
            self.assertEqual(cm.exception.status, -3)
            self.assertTrue(cm.exception.message)

    def test_bad_arguments(self):
        with self.assertRaises(bm.InvalidArgumentError):
            bm.Model(fixture("tiny-f32"), backend="tpu")
        with self.assertRaises(ValueError):  # InvalidArgumentError is a ValueError too
            bm.Model(fixture("tiny-f32"), activation="relu")

    def test_bad_token(self):
        st = self.m.new_state()
        V = self.m.info.vocab_size
        for bad in (V, -1, 10 ** 6):
            with self.assertRaises(bm.InvalidArgumentError) as cm:
                self.s.step(st, bad)
            self.assertEqual(cm.exception.status, -1)
            self.assertTrue(cm.exception.message)
        with self.assertRaises(bm.InvalidArgumentError):
            self.s.prefill(st, [1, 2, V])
        with self.assertRaises(bm.InvalidArgumentError):
            self.s.prefill(st, [])
        with self.assertRaises(bm.InvalidArgumentError):
            self.s.step(st, 2 ** 40)
        with self.assertRaises(bm.InvalidArgumentError):
            self.s.prefill(st, [1, 2 ** 33])
        with self.assertRaises(bm.InvalidArgumentError):
            self.s.prefill(st, "abc")
        with self.assertRaises(bm.InvalidArgumentError):
            self.s.step_batch([st], [1, 2])
        with self.assertRaises(bm.InvalidArgumentError):  # the same state twice
            self.s.step_batch([st, st], [1, 2])
        self.assertEqual(st.n_tokens, 0, "a failed call leaves the state unchanged")

    def test_foreign_state(self):
        with bm.Model(fixture("tiny-bf16"), backend="cpu") as other:
            foreign = other.new_state()
            with self.assertRaises(bm.MismatchError) as cm:
                self.s.step(foreign, 1)
            self.assertEqual(cm.exception.status, -8)
            self.assertTrue(cm.exception.message)
            with self.assertRaises(bm.MismatchError):
                self.s.prefill(foreign, [1, 2])
            mine = self.m.new_state()
            with self.assertRaises(bm.MismatchError):
                self.s.step_batch([mine, foreign], [1, 2])
            self.assertEqual(mine.n_tokens, 0)
            with self.assertRaises(bm.MismatchError):
                mine.copy_from(foreign)
            with self.assertRaises(bm.MismatchError):
                mine.load(foreign.save())
            foreign.close()

    def test_corrupt_state_bytes(self):
        st = self.m.new_state()
        self.s.prefill(st, [1, 2, 3], logits=False)
        good = st.save()
        fresh = self.m.new_state()
        with self.assertRaises(bm.FormatError):
            fresh.load(good[: len(good) // 2])
        flipped = bytearray(good)
        flipped[-5] ^= 0x40
        with self.assertRaises(bm.FormatError):
            fresh.load(flipped)
        self.assertEqual(fresh.n_tokens, 0)
        fresh.load(good)
        self.assertEqual(fresh.n_tokens, 3)

    def test_sampler_errors(self):
        logits = [0.0, 1.0, 2.0]
        for kw in (dict(temperature=-1.0), dict(temperature=float("nan")), dict(repeat_penalty=0.0),
                   dict(min_p=2.0), dict(n_vocab_valid=5)):
            with self.assertRaises(bm.InvalidArgumentError, msg=str(kw)):
                bm.sample(logits, **kw)
        with self.assertRaises(bm.InvalidArgumentError):
            bm.sample([float("nan")] * 3)
        with self.assertRaises(bm.InvalidArgumentError):
            bm.sample(logits, recent=[7])
        with self.assertRaises(bm.InvalidArgumentError):
            bm.sample([])

    def test_cancel(self):
        calls = []

        def cancel():
            calls.append(1)
            return True

        with self.m.new_session(cancel=cancel) as s:
            st = self.m.new_state()
            # polled before any work: the state is untouched
            with self.assertRaises(bm.CancelledError) as cm:
                s.step(st, 1)
            self.assertEqual(cm.exception.status, -7)
            self.assertTrue(cm.exception.message)
            with self.assertRaises(bm.CancelledError):
                s.prefill(st, [1, 2, 3])
            self.assertTrue(calls)
            self.assertEqual(st.n_tokens, 0)

    def test_cancel_between_chunks(self):
        calls = []

        def cancel():
            calls.append(1)
            return len(calls) > 1

        prompt = list(range(1, 200)) * 20
        with self.m.new_session(cancel=cancel) as s:
            st = self.m.new_state()
            with self.assertRaises(bm.CancelledError):
                s.prefill(st, prompt)
            # a prefill cancelled between chunks keeps whole chunks: a prefix
            n = st.n_tokens
            self.assertLess(n, len(prompt))
            ref = self.m.new_state()
            if n:
                self.s.prefill(ref, prompt[:n], logits=False)
                self.assertEqual(ref.save(), st.save())

    def test_cancel_callback_exception_is_reraised(self):
        class Boom(Exception):
            pass

        def cancel():
            raise Boom("from cancel")

        with self.m.new_session(cancel=cancel) as s:
            st = self.m.new_state()
            with self.assertRaises(Boom):
                s.prefill(st, list(range(1, 200)) * 20)
                s.step(st, 1)
        with self.assertRaises(bm.InvalidArgumentError):
            self.m.new_session(cancel=42)

    def test_cancel_callback_cannot_reenter(self):
        seen = []
        st = self.m.new_state()

        def cancel():
            try:
                s.step(st, 2)
            except bm.InvalidArgumentError as e:
                seen.append(e)
            return False

        with self.m.new_session(cancel=cancel) as s:
            s.step(st, 1)
        self.assertTrue(seen)
        self.assertEqual(st.n_tokens, 1)

    def test_closed_objects(self):
        st = self.m.new_state()
        st.close()
        st.close()  # idempotent
        self.assertTrue(st.closed)
        with self.assertRaises(bm.InvalidArgumentError):
            st.save()
        with self.assertRaises(bm.InvalidArgumentError):
            self.s.step(st, 1)

    def test_error_hierarchy(self):
        for cls, status in ((bm.InvalidArgumentError, -1), (bm.BMIOError, -2), (bm.FormatError, -3),
                            (bm.UnsupportedError, -4), (bm.OutOfMemoryError, -5), (bm.DeviceError, -6),
                            (bm.CancelledError, -7), (bm.MismatchError, -8), (bm.BufferTooSmallError, -9)):
            self.assertTrue(issubclass(cls, bm.Error))
            self.assertEqual(cls.status, status)
            e = cls("msg")
            self.assertEqual(e.status, status)
            self.assertEqual(str(e), "msg")

    def test_cuda_when_unavailable(self):
        # Either CUDA works, or the error is a clean UnsupportedError/DeviceError.
        try:
            with bm.Model(fixture("tiny-f32"), backend="cuda") as m:
                self.assertEqual(m.info.backend, bm.Backend.CUDA)
        except (bm.UnsupportedError, bm.DeviceError) as e:
            self.assertTrue(e.message)


if __name__ == "__main__":
    unittest.main()
