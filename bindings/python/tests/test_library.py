"""Finding the library, the version check, and the ctypes struct layouts
against the C header (when a C compiler is available)."""
import ctypes
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import unittest

from support import HERE, REPO

import blackmamba as bm
from blackmamba import _native

PKG_PARENT = os.path.dirname(HERE)


def run_python(code, **env):
    e = dict(os.environ)
    e.update(env)
    e["PYTHONPATH"] = PKG_PARENT
    return subprocess.run([sys.executable, "-c", code], env=e, capture_output=True, text=True, timeout=120)


class LibraryTest(unittest.TestCase):
    def test_loaded_and_version(self):
        v = bm.library_version()
        self.assertEqual(int(v.split(".")[0]), bm.EXPECTED_MAJOR)
        self.assertTrue(os.path.exists(bm.library_path()))
        self.assertIs(bm.load_library(), bm.load_library())
        self.assertTrue(bm.has_symbol("bm_prefill"))
        self.assertFalse(bm.has_symbol("bm_no_such_function"))

    def test_missing_library_is_a_clear_error(self):
        r = run_python(textwrap.dedent("""
            import blackmamba as bm
            try:
                bm.Model("x")
            except bm.LibraryNotFoundError as e:
                print("OK", e)
            """), BLACKMAMBA_LIB="/nonexistent/libblackmamba.so.0")
        self.assertIn("OK", r.stdout, r.stderr)
        self.assertIn("BLACKMAMBA_LIB", r.stdout)
        self.assertIn("/nonexistent/libblackmamba.so.0", r.stdout)

    def test_import_without_library(self):
        # importing never needs the library; only using it does
        r = run_python("import blackmamba, sys; print('imported', blackmamba.library_path())",
                       BLACKMAMBA_LIB="/nonexistent/libblackmamba.so.0")
        self.assertIn("imported None", r.stdout, r.stderr)

    def test_found_next_to_package(self):
        with tempfile.TemporaryDirectory() as d:
            pkg = os.path.join(d, "blackmamba")
            shutil.copytree(os.path.join(PKG_PARENT, "blackmamba"), pkg,
                            ignore=shutil.ignore_patterns("__pycache__"))
            shutil.copyfile(bm.library_path(), os.path.join(pkg, "libblackmamba.so.0"))
            e = dict(os.environ)
            e.pop("BLACKMAMBA_LIB", None)
            e["PYTHONPATH"] = d
            r = subprocess.run([sys.executable, "-c", "import blackmamba as bm; bm.library_version(); "
                                "print(bm.library_path())"], env=e, capture_output=True, text=True, cwd=d)
            self.assertEqual(r.stdout.strip(), os.path.join(pkg, "libblackmamba.so.0"), r.stderr)

    @unittest.skipUnless(shutil.which("cc"), "no C compiler to build a fake library")
    def test_major_version_mismatch_is_refused(self):
        with tempfile.TemporaryDirectory() as d:
            src = os.path.join(d, "fake.c")
            with open(src, "w") as f:
                f.write("unsigned bm_version(void) { return (7u << 16) | (1u << 8); }\n")
            so = os.path.join(d, "libfake.so")
            subprocess.run(["cc", "-shared", "-fPIC", "-o", so, src], check=True)
            r = run_python(textwrap.dedent("""
                import blackmamba as bm
                try:
                    bm.library_version()
                except bm.LibraryVersionError as e:
                    print("OK", e)
                """), BLACKMAMBA_LIB=so)
            self.assertIn("OK", r.stdout, r.stderr)
            self.assertIn("7.1.0", r.stdout)

    @unittest.skipUnless(shutil.which("cc"), "no C compiler to check struct layouts")
    def test_struct_layouts_match_header(self):
        structs = {
            "bm_model_params": _native.ModelParams,
            "bm_model_info": _native.ModelInfoC,
            "bm_session_params": _native.SessionParams,
            "bm_sampler_params": _native.SamplerParamsC,
            "bm_generate_params": _native.GenerateParams,
            "bm_generate_result": _native.GenerateResultC,
        }
        lines = ["#include <stdio.h>", "#include <stddef.h>", '#include "blackmamba.h"', "int main(void) {"]
        for cname, cls in structs.items():
            lines.append(f'printf("{cname} =sizeof %zu\\n", sizeof({cname}));')
            for fname, _ in cls._fields_:
                lines.append(f'printf("{cname} {fname} %zu\\n", offsetof({cname}, {fname}));')
        lines.append("return 0; }")
        with tempfile.TemporaryDirectory() as d:
            src = os.path.join(d, "layout.c")
            with open(src, "w") as f:
                f.write("\n".join(lines))
            exe = os.path.join(d, "layout")
            subprocess.run(["cc", "-std=c11", "-I", os.path.join(REPO, "include"), "-o", exe, src], check=True)
            out = subprocess.run([exe], capture_output=True, text=True, check=True).stdout
        got = {}
        for line in out.splitlines():
            cname, what, value = line.split()
            got[(cname, what)] = int(value)
        for cname, cls in structs.items():
            self.assertEqual(ctypes.sizeof(cls), got[(cname, "=sizeof")], cname)
            for fname, _ in cls._fields_:
                self.assertEqual(getattr(cls, fname).offset, got[(cname, fname)], f"{cname}.{fname}")


if __name__ == "__main__":
    unittest.main()
