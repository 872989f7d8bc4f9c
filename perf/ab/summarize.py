#!/usr/bin/env python3
"""Markdown table of a per_io_ab.py run: per row and binary, median IOPS and target CPU µs per
I/O, and the per-round ratios against the first binary named (rounds pair runs made minutes
apart, so the ratio of a round cancels most of the slow drift in machine load).
Usage: summarize.py RESULTS.jsonl"""
import json, sys, collections, statistics as st

runs = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
kinds = list(dict.fromkeys(r["kind"] for r in runs))
base = kinds[0]
by = collections.defaultdict(dict)
for r in runs:
    by[(r["row"], r["round"])][r["kind"]] = r
rows = list(dict.fromkeys(r["row"] for r in runs))
hdr = ["row"] + [f"{k} IOPS (median)" for k in kinds] + [f"{k}/{base} IOPS per round (median; min-max)" for k in kinds[1:]] \
    + [f"{k} CPU µs/IO" for k in kinds] + [f"{k}/{base} CPU/IO" for k in kinds[1:]] + ["rounds"]
print("| " + " | ".join(hdr) + " |")
print("|" + "---|" * len(hdr))
for row in rows:
    rounds = [by[k] for k in by if k[0] == row and all(x in by[k] for x in kinds)]
    cells = [row]
    med = lambda k, f: st.median(r[k][f] for r in rounds)
    cells += [f"{med(k, 'iops'):.0f}" for k in kinds]
    for k in kinds[1:]:
        q = [r[k]["iops"] / r[base]["iops"] for r in rounds if r[base]["iops"]]
        cells.append(f"{st.median(q):.2f} ({min(q):.2f}-{max(q):.2f})")
    cells += [f"{med(k, 'cpu_us_per_io'):.2f}" for k in kinds]
    cells += [f"{med(k, 'cpu_us_per_io') / med(base, 'cpu_us_per_io'):.2f}" for k in kinds[1:]]
    cells.append(str(len(rounds)))
    print("| " + " | ".join(cells) + " |")
