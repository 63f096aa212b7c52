#!/bin/sh
# The shared library exports only bm_* symbols and carries the right SONAME.
lib=$1; soname=$2; fail=0
bad=$(nm -D --defined-only "$lib" | awk '{print $3}' | grep -v '^bm_' | grep -v '^BLACKMAMBA_' | grep -v '^$')
if [ -n "$bad" ]; then echo "exported symbols outside bm_*:"; echo "$bad"; fail=1; fi
got=$(readelf -d "$lib" | sed -n 's/.*Library soname: \[\(.*\)\]/\1/p')
if [ "$got" != "$soname" ]; then echo "SONAME is '$got', expected '$soname'"; fail=1; fi
n=$(nm -D --defined-only "$lib" | awk '{print $3}' | grep -c '^bm_')
echo "exports: $n bm_* symbols, SONAME $got"
if [ $fail -eq 0 ]; then echo "check_exports: 2 passed, 0 failed"; else echo "check_exports: 0 passed, 1 failed"; fi
exit $fail
