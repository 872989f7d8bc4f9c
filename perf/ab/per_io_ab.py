#!/usr/bin/env python3
"""Interleaved A/B of several tandem-dataplane binaries on the issue-8 rows, with per-I/O
costs that hold up under load from other processes.

  perf/ab/per_io_ab.py ROUNDS SECS name=binary [name=binary ...] [row filter ...]

Run it from the repository root (or set LOADGEN); WD (default /var/tmp/tandem-per-io) holds
one 512 MiB image per binary for the file-backed rows.

All targets run at once on core 1 (only one is loaded at a time), the client (tandem-loadgen,
iscsi-perf or fio-libiscsi) on core 0. The order of the binaries rotates every round (and
reverses after a full rotation), so a drift in machine load hits each alike. Per run, one
JSON line: IOPS, target CPU µs per I/O (perf stat task-clock over the client's run),
syscalls and context switches per I/O. Note CPU per I/O includes the reactor's idle spin,
which dominates at QD1.
"""
import json, os, re, subprocess, sys, time, signal

ROUNDS, SECS = int(sys.argv[1]), int(sys.argv[2])
BINS = dict(a.split("=", 1) for a in sys.argv[3:] if "=" in a)
KINDS = list(BINS)
ONLY = [a for a in sys.argv[3:] if "=" not in a]
LOADGEN = os.environ.get("LOADGEN", "target/release/tandem-loadgen")
FIO = "/var/cache/tandem-perf/fio-libiscsi"
WD = os.environ.get("WD", "/var/tmp/tandem-per-io")
os.makedirs(WD, exist_ok=True)
SIZE_MIB = 512
PORTS = {}

for i, k in enumerate(KINDS):
    PORTS[(k, "ram")] = 3741 + 2 * i
    PORTS[(k, "file")] = 3742 + 2 * i
ROWS = [
    ("ram", "loadgen", "randwrite", 4096, 128),
    ("ram", "iscsi-perf", "read", 131072, 8),
    ("ram", "loadgen", "write", 131072, 8),
    ("file", "loadgen", "randwrite", 4096, 1),
    ("file", "loadgen", "read", 131072, 8),
    ("file", "fio", "read", 131072, 8),
]


def iqn(b):
    return f"iqn.2026-11.io.tandem:perf-{b}"



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

def start(kind, backing):
    port = PORTS[(kind, backing)]
    args = ["taskset", "-c", "1", BINS[kind], "serve", "--portal", f"127.0.0.1:{port}",
            "--iqn", iqn(backing), "--cores", "1", "--poll-mode", "adaptive"]
    if backing == "ram":
        args += ["--ram", f"{SIZE_MIB}MiB"]
    else:
        img = f"{WD}/{kind}.img"  # one image per binary
        if not os.path.exists(img):
            subprocess.run(["dd", "if=/dev/zero", f"of={img}", "bs=1M", f"count={SIZE_MIB}",
                            "conv=fsync", "status=none"], check=True)
        args += ["--file", img]
    log = open(f"{WD}/{kind}-{backing}.log", "w")
    p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=log)
    wait_port(port)
    return p


def client(backing, cl, rw, bs, qd, port, secs):
    portal = f"127.0.0.1:{port}"
    if cl == "loadgen":
        return [LOADGEN, "--portal", portal, "--target", iqn(backing), "--rw", rw, "--bs", str(bs),
                "--qd", str(qd), "--time", str(secs)]
    if cl == "iscsi-perf":
        return ["iscsi-perf", "-m", str(qd), "-b", str(bs // 512), "-t", str(secs),
                f"iscsi://{portal}/{iqn(backing)}/0"]
    fn = f"iscsi\\://127.0.0.1\\:{port}/{iqn(backing).replace(':', chr(92) + ':')}/0"
    return [FIO, "--name=lib", "--ioengine=libiscsi", f"--filename={fn}", f"--rw={rw}",
            f"--bs={bs}", f"--iodepth={qd}", "--time_based", f"--runtime={secs}",
            "--output-format=json"]


def ios_of(cl, out, secs):
    if cl == "loadgen":
        j = json.loads(out)
        return j["ops"], j["iops"]
    if cl == "iscsi-perf":
        # last "IOPS" figure printed
        m = re.findall(r"iops average\s+(\d+(?:\.\d+)?)", out.replace("\r", "\n"))
        iops = float(m[-1]) if m else 0.0
        return iops * secs, iops
    j = json.loads(out[out.index("{"):])
    jb = j["jobs"][0]
    side = jb["read"] if jb["read"]["total_ios"] else jb["write"]
    return side["total_ios"], side["iops"]


def measure(pid, cmd, cl, secs):
    st = subprocess.Popen(["perf", "stat", "-x", ",", "-e",
                           "task-clock,context-switches,raw_syscalls:sys_enter", "-p", str(pid)],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(0.2)
    out = subprocess.run(["taskset", "-c", "0"] + cmd, capture_output=True, text=True).stdout
    st.send_signal(signal.SIGINT)
    err = st.communicate()[1]
    vals = {}
    for line in err.splitlines():
        f = line.split(",")
        if len(f) > 3 and f[0] and f[0][0].isdigit():
            vals[f[2]] = float(f[0])
    ios, iops = ios_of(cl, out, secs)
    return iops, ios, vals


def main():
    procs = {}
    for b in ("ram", "file"):
        for k in KINDS:
            procs[(k, b)] = start(k, b)
    # fill the RAM disks first (their first-touch page faults are not per-I/O work)
    for k in KINDS:
        subprocess.run([LOADGEN, "--portal", f"127.0.0.1:{PORTS[(k, 'ram')]}", "--target", iqn("ram"),
                        "--rw", "write", "--bs", "1m", "--qd", "8", "--ops", str(SIZE_MIB)], capture_output=True)
    res = []
    try:
        for row in ROWS:
            name = " ".join(map(str, row))
            if ONLY and not any(o in name for o in ONLY):
                continue
            backing, cl, rw, bs, qd = row
            for r in range(ROUNDS):
                # rotate the order every round so a drift in machine load hits each binary alike
                order = KINDS[r % len(KINDS):] + KINDS[:r % len(KINDS)]
                if (r // len(KINDS)) % 2:
                    order = order[::-1]
                for k in order:
                    port = PORTS[(k, backing)]
                    iops, ios, v = measure(procs[(k, backing)].pid,
                                           client(backing, cl, rw, bs, qd, port, SECS), cl, SECS)
                    tc = v.get("task-clock", 0.0)  # msec
                    rec = dict(row=name, round=r, kind=k, iops=iops, ios=ios,
                               cpu_us_per_io=tc * 1000 / ios if ios else 0,
                               sys_per_io=v.get("raw_syscalls:sys_enter", 0) / ios if ios else 0,
                               cs_per_io=v.get("context-switches", 0) / ios if ios else 0,
                               load=os.getloadavg()[0])
                    res.append(rec)
                    print(json.dumps(rec), flush=True)
    finally:
        for p in procs.values():
            p.terminate()
        for p in procs.values():
            p.wait()


main()
