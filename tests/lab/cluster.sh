# A two-node Tandem cluster and a witness for the host lab (LAB_CLUSTER=1,
# scenario ha-host). Sourced by run-scenario.sh after lib.sh.
# shellcheck shell=bash
#
# Namespaces (PREFIX = tlab-<pid>):
#   PREFIX          the storage network: the guest's TAPs, one bridge per
#                   portal link, and the management switch brm
#   PREFIX-node1    node1: tandem-control + tandem-dataplane
#   PREFIX-node2    node2: tandem-control + tandem-dataplane
#   PREFIX-wit      witness: tandem-control --role witness (no data plane)
# Links (veth pairs, every address only inside these namespaces):
#   guest eth0 -- tap0/br0/sw0 -- node1 portal0 10.77.0.1  (node1's iSCSI portal)
#   guest eth1 -- tap1/br1/sw1 -- node2 portal0 10.77.1.1  (node2's iSCSI portal)
#   node1 sync0/sync1/hb0 -- node2 (10.78.0-2.x): device "hb"'s links
#   node1 sync2/hb1       -- node2 (10.78.3-4.x): device "nm"'s links
#   mgmt 10.79.0.1 / .2 / .3 (node1, node2, witness) on bridge brm: APIs,
#   authority requests
# Devices, both replicated node1 <-> node2 and created --init zeroed:
#   hb  --failover heartbeat --priority first (node1 first)
#   nm  --failover node-majority --witness witness
# Each device has links of its own, so cutting one device's links leaves the
# other device alone (a total partition of a heartbeat device is the split
# brain that strategy permits; the scenario does not want one by accident).

CL_API_PORT=7000
CL_SYNC_PORT=7100
CL_HB_PORT=7200
CL_DEVICES="hb nm"

cl_ns() { echo "$CL_PREFIX-$1"; }
cl_mgmt_ip() { case $1 in node1) echo 10.79.0.1 ;; node2) echo 10.79.0.2 ;; witness) echo 10.79.0.3 ;; esac; }
cl_node_ns() { case $1 in witness) cl_ns wit ;; *) cl_ns "$1" ;; esac; }

# cl_cli NODE ARGS...: the tandem CLI against NODE's API, run in NODE's
# namespace (an administrator logged in on that node).
cl_cli() {
    local node=$1; shift
    ip netns exec "$(cl_node_ns "$node")" "$CL_BIN/tandem" \
        --api "http://$(cl_mgmt_ip "$node"):$CL_API_PORT" --token-file "$CL_RUN/$node/token" "$@"
}

cl_veth() { # NAME NS_A ADDR_A NS_B ADDR_B
    ip link add "$1" netns "$2" type veth peer name "$1" netns "$4"
    ip -n "$2" addr add "$3/24" dev "$1"
    ip -n "$4" addr add "$5/24" dev "$1"
    ip -n "$2" link set "$1" up
    ip -n "$4" link set "$1" up
}

# cluster_topology PREFIX: namespaces and links (no processes).
cluster_topology() {
    CL_PREFIX=$1
    local n
    for n in "$CL_PREFIX" "$(cl_ns node1)" "$(cl_ns node2)" "$(cl_ns wit)"; do
        ip netns add "$n"
        ip -n "$n" link set lo up
        ip netns exec "$n" sysctl -q -w net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
    done
    # Portal links: guest ethI -> tapI -> brI -> swI -> nodeI+1's portal0.
    local i node
    for i in 0 1; do
        node=$(cl_ns "node$((i + 1))")
        ip -n "$CL_PREFIX" link add "br$i" type bridge forward_delay 0
        ip -n "$CL_PREFIX" tuntap add dev "tap$i" mode tap
        ip -n "$CL_PREFIX" link add "sw$i" type veth peer name portal0 netns "$node"
        ip -n "$CL_PREFIX" link set "tap$i" master "br$i"
        ip -n "$CL_PREFIX" link set "sw$i" master "br$i"
        ip -n "$node" addr add "10.77.$i.1/24" dev portal0
        for dev in "br$i" "tap$i" "sw$i"; do ip -n "$CL_PREFIX" link set "$dev" up; done
        ip -n "$node" link set portal0 up
    done
    # Node-to-node links.
    local name net=0
    for name in sync0 sync1 hb0 sync2 hb1; do
        cl_veth "$name" "$(cl_ns node1)" "10.78.$net.1" "$(cl_ns node2)" "10.78.$net.2"
        net=$((net + 1))
    done
    # Management switch.
    ip -n "$CL_PREFIX" link add brm type bridge forward_delay 0
    ip -n "$CL_PREFIX" link set brm up
    for node in node1 node2 witness; do
        ip -n "$CL_PREFIX" link add "m-$node" type veth peer name mgmt netns "$(cl_node_ns "$node")"
        ip -n "$CL_PREFIX" link set "m-$node" master brm
        ip -n "$CL_PREFIX" link set "m-$node" up
        ip -n "$(cl_node_ns "$node")" addr add "$(cl_mgmt_ip "$node")/24" dev mgmt
        ip -n "$(cl_node_ns "$node")" link set mgmt up
    done
}

# cl_start_node NODE: its tandem-control (which starts its data plane); waits
# for the API (and the data plane and portal of a data node).
cl_start_node() {
    local node=$1 ns args
    ns=$(cl_node_ns "$node")
    mkdir -p "$CL_RUN/$node"
    args=(--data-dir "$CL_RUN/$node" --api "$(cl_mgmt_ip "$node"):$CL_API_PORT" --node-name "$node")
    case $node in
        witness) args+=(--role witness) ;;
        node1) args+=(--dataplane-bin "$CL_BIN/tandem-dataplane" --portal 10.77.0.1:3260) ;;
        node2) args+=(--dataplane-bin "$CL_BIN/tandem-dataplane" --portal 10.77.1.1:3260) ;;
    esac
    # shellcheck disable=SC2206 # extra flags are a word list on purpose
    args+=(${LAB_CONTROL_ARGS:-})
    log "$node: tandem-control ${args[*]}"
    ip netns exec "$ns" "$CL_BIN/tandem-control" "${args[@]}" >> "$CL_RUN/$node.log" 2>&1 &
    eval "CL_PID_$node=$!"
    local i=0
    until cl_cli "$node" --json status 2>/dev/null | python3 -c '
import json, sys
s = json.load(sys.stdin)
sys.exit(0 if sys.argv[1] == "witness" or s.get("dataplane", {}).get("state") == "running" else 1)' "$node" 2>/dev/null; do
        i=$((i + 1)); [ $i -lt 400 ] || die "$node did not start: $(tail -n 20 "$CL_RUN/$node.log")"
        sleep 0.2
    done
    log "$node: up after $((i / 5)) s"
}

# cl_synchronized DEVICE: both nodes serve DEVICE with both replicas
# synchronized and every sync link up.
cl_synchronized() {
    local node
    for node in node1 node2; do
        cl_cli "$node" --json replica list "$1" 2>/dev/null | python3 -c '
import json, sys
rs = json.load(sys.stdin)["replicas"]
ok = len(rs) == 2 and all(
    r["state"] == "synchronized" and (not r["local"] or r["serving"])
    and all(l["state"] == "up" for l in r["links"] if l["kind"] == "sync")
    for r in rs)
sys.exit(0 if ok else 1)' || return 1
    done
}

# cluster_start PREFIX RUNDIR: topology, three control services, the two
# replicated devices; returns when both devices are synchronized.
cluster_start() {
    CL_RUN=$2
    CL_BIN=${LAB_TANDEM_BIN_DIR:-$REPO_DIR/target/release}
    case $CL_BIN in /*) ;; *) CL_BIN=$PWD/$CL_BIN ;; esac
    if [ -z "${LAB_TANDEM_BIN_DIR:-}" ]; then
        log "building tandem-control and tandem-dataplane (cargo build --release)"
        (cd "$REPO_DIR" && cargo build --release -q -p tandem-control -p tandem-dataplane) >&2 ||
            die "cargo build failed"
    fi
    local b
    for b in tandem tandem-control tandem-dataplane; do
        [ -x "$CL_BIN/$b" ] || die "no binary $CL_BIN/$b"
    done
    command -v python3 >/dev/null || die "python3 missing (reads the CLI's JSON)"
    cluster_topology "$1"
    cl_start_node node1
    cl_start_node node2
    cl_start_node witness
    local dev
    for dev in $CL_DEVICES; do
        cl_cli node1 device create "$dev" --size "${LAB_DEVICE_SIZE:-128MiB}" >&2 || die "device create $dev"
    done
    cl_cli node1 server add node2 "10.79.0.2:$CL_API_PORT" --token-file "$CL_RUN/node2/token" >&2
    cl_cli node2 server add node1 "10.79.0.1:$CL_API_PORT" --token-file "$CL_RUN/node1/token" >&2
    cl_cli node1 server add witness "10.79.0.3:$CL_API_PORT" --token-file "$CL_RUN/witness/token" >&2
    cl_cli node2 server add witness "10.79.0.3:$CL_API_PORT" --token-file "$CL_RUN/witness/token" >&2
    cl_cli node1 replica add hb --partner node2 \
        --sync-link "10.78.0.1:$CL_SYNC_PORT=10.78.0.2:$CL_SYNC_PORT" \
        --sync-link "10.78.1.1:$CL_SYNC_PORT=10.78.1.2:$CL_SYNC_PORT" \
        --heartbeat-link "10.78.2.1:$CL_HB_PORT=10.78.2.2:$CL_HB_PORT" \
        --init zeroed --failover heartbeat --priority first >&2 || die "replica add hb"
    cl_cli node1 replica add nm --partner node2 \
        --sync-link "10.78.3.1:$CL_SYNC_PORT=10.78.3.2:$CL_SYNC_PORT" \
        --heartbeat-link "10.78.4.1:$CL_HB_PORT=10.78.4.2:$CL_HB_PORT" \
        --init zeroed --failover node-majority --witness witness >&2 || die "replica add nm"
    local i=0
    for dev in $CL_DEVICES; do
        until cl_synchronized "$dev"; do
            i=$((i + 1)); [ $i -lt 300 ] || die "device $dev not synchronized on both nodes"
            sleep 0.2
        done
    done
    for dev in $CL_DEVICES; do cl_cli node1 replica list "$dev" >&2; done
    CL_PORTALS="10.77.0.1:3260 10.77.1.1:3260"
    CL_GUEST_ADDRS="eth0=10.77.0.2/24 eth1=10.77.1.2/24"
}

cluster_stop() {
    [ -n "${CL_PREFIX:-}" ] || return 0
    local node pid
    for node in node1 node2 witness; do
        pid=$(eval echo "\${CL_PID_$node:-}")
        [ -n "$pid" ] && kill "$pid" 2>/dev/null
    done
    sleep 1
    for ns in "$(cl_ns node1)" "$(cl_ns node2)" "$(cl_ns wit)" "$CL_PREFIX"; do
        for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
        ip netns del "$ns" 2>/dev/null || true
    done
    CL_PREFIX=
}

# ---- failures the guest asks for (silent: nftables drop rules, no RST) ----

cl_drop() { # NODE TABLE MATCH_IN MATCH_OUT
    local ns; ns=$(cl_node_ns "$1")
    ip netns exec "$ns" nft delete table inet "$2" 2>/dev/null || true
    ip netns exec "$ns" nft -f - <<EOF
table inet $2 {
	chain in { type filter hook input priority -10; policy accept; $3 }
	chain out { type filter hook output priority -10; policy accept; $4 }
}
EOF
}

cl_undrop() { ip netns exec "$(cl_node_ns "$1")" nft delete table inet "$2" 2>/dev/null || true; }

cl_replica_summary() { # DEVICE: one line per node
    local node
    for node in node1 node2; do
        printf '%s: ' "$node"
        cl_cli "$node" --json replica list "$1" 2>/dev/null | python3 -c '
import json, sys
rs = json.load(sys.stdin)["replicas"]
print(" ".join("%s=%s%s" % (r["node"], r["state"], "/serving" if r.get("serving") else "") for r in rs))' 2>/dev/null || echo "?"
    done | tr '\n' ' '
}

# cluster_request ACTION [ARG]: one request of the guest; prints "ok [info]"
# or "err why".
cluster_request() {
    local action=$1 arg=${2:-}
    case $action in
        cut-sync)       # every sync link of device hb, silently, heartbeat hb0 alive
            cl_drop node1 lab_cut_sync 'iifname { "sync0", "sync1" } drop;' 'oifname { "sync0", "sync1" } drop;' &&
                echo ok || echo "err nft" ;;
        restore-sync)   cl_undrop node1 lab_cut_sync; echo ok ;;
        isolate)        # ARG from its partner (device nm's links) and the witness
            local nets='"sync2", "hb1"' peers="" n
            for n in node1 node2 witness; do
                [ "$n" = "$arg" ] || peers+="${peers:+, }$(cl_mgmt_ip "$n")"
            done
            cl_drop "$arg" lab_isolate \
                "iifname { $nets } drop; iifname \"mgmt\" ip saddr { $peers } drop;" \
                "oifname { $nets } drop; oifname \"mgmt\" ip daddr { $peers } drop;" &&
                echo ok || echo "err nft" ;;
        heal)           cl_undrop "$arg" lab_isolate; echo ok ;;
        kill-dataplane) # kill -9 of ARG's data plane (its control service restarts it)
            local pid
            pid=$(cat "$CL_RUN/$arg/dataplane.pid" 2>/dev/null)
            if [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null; then echo "ok pid $pid"; else echo "err no data plane pid"; fi ;;
        synced)         if cl_synchronized "$arg"; then echo "ok yes"; else echo "ok no $(cl_replica_summary "$arg")"; fi ;;
        replicas)       echo "ok $(cl_replica_summary "$arg")" ;;
        cmp)            # ARG's two image files, byte for byte
            local out
            if out=$(cmp "$CL_RUN/node1/$arg.img" "$CL_RUN/node2/$arg.img" 2>&1); then
                echo "ok identical $(stat -c %s "$CL_RUN/node1/$arg.img") bytes"
            else
                echo "err $out"
            fi ;;
        load)           echo "ok $(cut -d' ' -f1-3 /proc/loadavg)" ;;
        *)              echo "err unknown cluster request '$action'" ;;
    esac
}
