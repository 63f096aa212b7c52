#!/usr/bin/env python3
"""Sum the kernels of the last decode step in an Nsight Compute CSV
(`ncu --metrics gpu__time_duration.sum,dram__bytes_read.sum --csv
--print-units base bm-bench ... --steps 1`, as `device_run.sh ncu` writes
it) by kernel: launches, microseconds, megabytes read from DRAM and the
rate. A step starts with the embedding kernel, so the last one found
opens the step that is summed.

Usage: python3 cuda/dev/ncu_breakdown.py ncu64.csv
"""
import csv
import re
import sys


def main(path):
    kernels, order, header = {}, [], None
    with open(path, newline="") as f:
        for row in csv.reader(f):
            if row and row[0] == "ID":
                header = row
                continue
            if not header or len(row) != len(header):
                continue  # ncu's and the program's own lines
            rec = dict(zip(header, row))
            kid = int(rec["ID"])
            if kid not in kernels:
                kernels[kid] = {"name": rec["Kernel Name"]}
                order.append(kid)
            kernels[kid][rec["Metric Name"]] = float(rec["Metric Value"].replace(",", ""))
    starts = [i for i, kid in enumerate(order) if "embed" in kernels[kid]["name"]]
    if not starts:
        sys.exit("no embedding kernel found: not a decode step profile")
    step = order[starts[-1]:]
    sums = {}
    for kid in step:
        name = re.sub(r"<.*?>", "<>", re.sub(r"\(.*", "", kernels[kid]["name"]))
        s = sums.setdefault(name, [0, 0.0, 0.0])
        s[0] += 1
        s[1] += kernels[kid].get("gpu__time_duration.sum", 0.0) / 1e3  # ns -> us
        s[2] += kernels[kid].get("dram__bytes_read.sum", 0.0) / 1e6  # bytes -> MB
    total_us = sum(s[1] for s in sums.values())
    total_mb = sum(s[2] for s in sums.values())
    print(f"{'kernel':60s} {'launches':>8s} {'us':>9s} {'MB read':>9s} {'TB/s':>6s} {'us each':>8s}")
    for name, (n, us, mb) in sorted(sums.items(), key=lambda kv: -kv[1][1]):
        print(f"{name[:60]:60s} {n:8d} {us:9.1f} {mb:9.1f} {mb / us if us else 0:6.2f} {us / n:8.1f}")
    print(f"{'all ' + str(len(step)) + ' kernels':60s} {'':8s} {total_us:9.1f} {total_mb:9.1f} "
          f"{total_mb / total_us if total_us else 0:6.2f}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
