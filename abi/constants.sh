#!/bin/sh
# Prints the status values of the public header, one "NAME VALUE" per line
# (abi/constants.txt is this output at the baseline).
sed -n 's/^#define \(BM_OK\|BM_ERR_[A-Z_]*\) *\(([^)]*)\|[0-9-][0-9]*\).*/\1 \2/p' "${1:-include/blackmamba.h}"
