"""Run the binding tests and print one summary line "NAME: N passed, N failed".

    python3 bindings/python/tests/run.py [NAME]

NAME defaults to "test_python". Skipped tests are listed and counted as
neither passed nor failed. Set BLACKMAMBA_NO_NUMPY=1 to test the array forms.
"""
import os
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import support  # noqa: E402,F401  (sets BLACKMAMBA_LIB and sys.path)


def main() -> int:
    name = sys.argv[1] if len(sys.argv) > 1 else "test_python"
    suite = unittest.defaultTestLoader.discover(HERE, pattern="test_*.py", top_level_dir=HERE)
    result = unittest.TextTestRunner(stream=sys.stdout, verbosity=1).run(suite)
    for test, reason in result.skipped:
        print(f"SKIP {test.id()}: {reason}")
    failed = len(result.failures) + len(result.errors) + len(result.unexpectedSuccesses)
    passed = result.testsRun - failed - len(result.skipped)
    import blackmamba
    print(f"# numpy: {'yes' if blackmamba.HAVE_NUMPY else 'no'}; library: {blackmamba.library_path()}")
    print(f"{name}: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
