#!/usr/bin/env python3
"""Flat cpu-clock profile of two tandem-dataplane binaries under the same loadgen workload,
as target CPU time per I/O, per symbol and per group (kernel, libc mem*, Rust code).

  BEFORE=old-binary AFTER=new-binary perf/ab/per_io_profile.py ROUNDS SECS ram|file RW BS QD

Both targets run at once on core 1 (only one is loaded at a time), tandem-loadgen on core 0,
runs alternate (before/after, then after/before). The machine has no hardware counters, so
`perf record -e cpu-clock` samples time; dividing by the I/Os of the same window gives µs per
I/O, which is far less sensitive to load from other processes than IOPS. Calibrate with
BEFORE=AFTER (an A/A run) to see the noise of each group. RAM disks are filled first.
File-backed rows use WD/before.img and WD/after.img (512 MiB each)."""
import json, os, re, subprocess, sys, time, signal, collections
ROUNDS, SECS, BACK, RW, BS, QD = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6]
BINS = {"before": os.environ.get("BEFORE", "/var/tmp/park-perf/before-dataplane"), "after": os.environ.get("AFTER", "target/release/tandem-dataplane")}
LOADGEN = os.environ.get("LOADGEN", "target/release/tandem-loadgen")
WD = os.environ.get("WD", "/var/tmp/tandem-per-io")
os.makedirs(WD, exist_ok=True); F = 4999
PORTS = {"before": 3721, "after": 3722}
iqn = f"iqn.2026-11.io.tandem:perf-{BACK}"

def wait_port(port, secs=30):
    import socket
    end = time.time() + secs
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"port {port} never listened")
procs = {}
for k in ("before", "after"):
    args = ["taskset", "-c", "1", BINS[k], "serve", "--portal", f"127.0.0.1:{PORTS[k]}", "--iqn", iqn,
            "--cores", "1", "--poll-mode", "adaptive"]
    args += ["--ram", "512MiB"] if BACK == "ram" else ["--file", f"{WD}/{k}.img"]
    procs[k] = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
for k in procs: wait_port(PORTS[k])
if BACK == "ram":  # first-touch page faults of the RAM disk are not per-I/O work: fill it first
    for k in procs:
        subprocess.run([LOADGEN, "--portal", f"127.0.0.1:{PORTS[k]}", "--target", iqn, "--rw", "write", "--bs", "1m",
                        "--qd", "8", "--ops", "512"], capture_output=True)
tot = {k: collections.Counter() for k in procs}; ios = collections.Counter(); samples = collections.Counter()
try:
    for r in range(ROUNDS):
        for k in (("before", "after") if r % 2 == 0 else ("after", "before")):
            data = f"{WD}/prof-{k}-{r}.data"
            rec = subprocess.Popen(["perf", "record", "-q", "-e", "cpu-clock", "-F", str(F), "-p", str(procs[k].pid), "-o", data],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.3)
            out = subprocess.run(["taskset", "-c", "0", LOADGEN, "--portal", f"127.0.0.1:{PORTS[k]}", "--target", iqn,
                                  "--rw", RW, "--bs", BS, "--qd", QD, "--time", str(SECS)], capture_output=True, text=True).stdout
            rec.send_signal(signal.SIGINT); rec.wait()
            ios[k] += json.loads(out)["ops"]
            rep = subprocess.run(["perf", "report", "-i", data, "--stdio", "--no-children", "-n", "--sort", "sym", "-g", "none", "--percent-limit", "0"],
                                 capture_output=True, text=True).stdout
            for line in rep.splitlines():
                m = re.match(r"\s*([\d.]+)%\s+(\d+)\s+\[(.)\]\s+(.*)$", line)
                if m:
                    sym = re.sub(r"::h[0-9a-f]{16}$", "", m.group(4).strip())
                    if m.group(3) == "k": sym = "[k] " + sym
                    tot[k][sym] += int(m.group(2)); samples[k] += int(m.group(2))
finally:
    for p in procs.values(): p.terminate()
    for p in procs.values(): p.wait()
us = {k: {s: c / F / ios[k] * 1e6 for s, c in tot[k].items()} for k in tot}
print(f"{BACK} {RW} {BS} QD{QD}: ios before {ios['before']} after {ios['after']}; total µs/IO before {samples['before']/F/ios['before']*1e6:.3f} after {samples['after']/F/ios['after']*1e6:.3f}")
syms = set(us["before"]) | set(us["after"])
rows = sorted(syms, key=lambda s: -max(us["before"].get(s, 0), us["after"].get(s, 0)))
print(f"{'before':>8} {'after':>8} {'diff':>8}  symbol (µs per I/O, self time)")
for s in rows[:45]:
    b, a = us["before"].get(s, 0), us["after"].get(s, 0)
    print(f"{b:8.3f} {a:8.3f} {a-b:+8.3f}  {s[:110]}")
def group(s):
    if s.startswith("[k]"): return "kernel"
    if "memmove" in s or "memcpy" in s or "memset" in s: return "libc mem*"
    if "tandem" in s or "hashbrown" in s or s.startswith(("core::", "alloc::", "<", "std::", "parking_lot", "crossbeam")): return "Rust (tandem + std)"
    return "other user (libc, ...)"
g = {k: collections.Counter() for k in us}
for k in us:
    for s, v in us[k].items(): g[k][group(s)] += v
print("groups (µs per I/O):")
for name in sorted(set(g["before"]) | set(g["after"])):
    print(f"{g['before'][name]:8.3f} {g['after'][name]:8.3f} {g['after'][name]-g['before'][name]:+8.3f}  {name}")
json.dump({"ios": ios, "samples": {k: dict(v) for k, v in tot.items()}, "F": F}, open(f"{WD}/prof-{BACK}-{RW}-{BS}-{QD}.json", "w"))
print("largest increases:")
for s in sorted(syms, key=lambda s: -(us["after"].get(s, 0) - us["before"].get(s, 0)))[:15]:
    b, a = us["before"].get(s, 0), us["after"].get(s, 0)
    print(f"{b:8.3f} {a:8.3f} {a-b:+8.3f}  {s[:110]}")
