#!/usr/bin/env bash
# Syscalls and CPU per I/O of the data plane under fio (libiscsi engine), for A/B runs of
# socket I/O paths and builds. Counts come from `perf stat` on the data plane's pid:
# syscall counts per I/O do not depend on how loaded the machine is; CPU per I/O (task-clock)
# and IOPS do, so compare variants only within interleaved rounds.
#
#   perf/uring-syscalls.sh ROUNDS SECS VARIANT...
#   VARIANT = label=binary[:extra data plane args, comma separated]
#   e.g. perf/uring-syscalls.sh 3 5 old=/tmp/dp-old new-sys=target/release/tandem-dataplane \
#            new-uring=target/release/tandem-dataplane:--socket-io,uring
#
# Env: WORKLOADS (default "randwrite randread"), BACKING (file|ram, default file), IMG.
# Prints one line per (round, workload, variant): IOPS, I/Os, syscalls/IO (total and by kind),
# task-clock µs per I/O.
set -euo pipefail
rounds=$1 secs=$2
shift 2
FIO=${FIO:-/var/cache/tandem-perf/fio-libiscsi}
WORKLOADS=${WORKLOADS:-randwrite randread}
BACKING=${BACKING:-file}
IMG=${IMG:-/var/tmp/tandem-uring-ab.img}
PORT=${PORT:-3391}
IQN=iqn.2026-11.io.tandem:tandem-disk0
events=task-clock,raw_syscalls:sys_enter,syscalls:sys_enter_io_uring_enter,syscalls:sys_enter_recvfrom,syscalls:sys_enter_writev,syscalls:sys_enter_epoll_wait,syscalls:sys_enter_sched_yield,syscalls:sys_enter_read

if [[ $BACKING == file && ! -s $IMG ]]; then
    # Written, not fallocated: reads of never-written extents would skip the disk.
    dd if=/dev/urandom of="$IMG" bs=1M count=256 status=none
fi
dp_pid=
cleanup() { [[ -n $dp_pid ]] && kill "$dp_pid" 2>/dev/null && wait "$dp_pid" 2>/dev/null; true; }
trap cleanup EXIT

run_one() { # label binary extra workload
    local label=$1 bin=$2 extra=$3 wl=$4
    local backing=(--file "$IMG")
    [[ $BACKING == ram ]] && backing=(--ram 256MiB)
    local args=(serve --portal "127.0.0.1:$PORT" "${backing[@]}" --cores 0)
    [[ -n $extra ]] && IFS=, read -ra more <<<"$extra" && args+=("${more[@]}")
    "$bin" "${args[@]}" >/tmp/uring-ab-dp.log 2>&1 &
    dp_pid=$!
    for _ in $(seq 100); do
        (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break
        sleep 0.1
    done
    local out=/tmp/uring-ab-fio.json stat=/tmp/uring-ab-perf.txt
    perf stat -x, -e "$events" -p "$dp_pid" -o "$stat" &
    local perf_pid=$!
    "$FIO" --name=ab --ioengine=libiscsi \
        --filename="iscsi\\://127.0.0.1\\:$PORT/${IQN//:/\\:}/0" \
        --rw="$wl" --bs=4k --iodepth=32 --time_based --runtime="$secs" \
        --output-format=json >"$out" 2>/dev/null
    kill -INT "$perf_pid"
    wait "$perf_pid" 2>/dev/null || true
    kill "$dp_pid"
    wait "$dp_pid" 2>/dev/null || true
    dp_pid=
    python3 - "$label" "$wl" "$out" "$stat" <<'EOF'
import json, sys
label, wl, out, stat = sys.argv[1:]
txt = open(out).read()
j = json.loads(txt[txt.index("{"):])["jobs"][0]
ios = j["read"]["total_ios"] + j["write"]["total_ios"]
iops = j["read"]["iops"] + j["write"]["iops"]
c = {}
for line in open(stat):
    f = line.strip().split(",")
    if len(f) > 2 and f[0] and f[0][0].isdigit():
        c[f[2]] = float(f[0])
per = lambda k: c.get(k, 0) / max(ios, 1)
short = {"syscalls:sys_enter_io_uring_enter": "uring_enter", "syscalls:sys_enter_recvfrom": "recvfrom",
         "syscalls:sys_enter_writev": "writev", "syscalls:sys_enter_epoll_wait": "epoll_wait",
         "syscalls:sys_enter_sched_yield": "yield", "syscalls:sys_enter_read": "read"}
kinds = " ".join(f"{v}={per(k):.3f}" for k, v in short.items())
print(f"{label:10} {wl:9} iops={iops:8.0f} ios={ios:8d} syscalls/io={per('raw_syscalls:sys_enter'):.3f} "
      f"{kinds} cpu_us/io={c.get('task-clock', 0) * 1000 / max(ios, 1):.2f}", flush=True)
EOF
}

for r in $(seq "$rounds"); do
    for wl in $WORKLOADS; do
        # Interleaved, order rotated every round.
        vs=("$@")
        n=${#vs[@]}
        for i in $(seq 0 $((n - 1))); do
            v=${vs[$(((i + r) % n))]}
            label=${v%%=*} rest=${v#*=}
            bin=${rest%%:*} extra=
            [[ $rest == *:* ]] && extra=${rest#*:}
            echo -n "round $r: "
            run_one "$label" "$bin" "$extra" "$wl"
        done
    done
done
