# Starting and stopping the iSCSI target under test inside a namespace.
# Sourced by run-scenario.sh.  LAB_TARGET selects it:
#   tandem (default)  target/release/tandem-dataplane serve (built if needed)
#   tgt               Linux tgtd + tgtadm, the reference target
# shellcheck shell=bash

# target_start NS RUNDIR IQN PORTAL...   (sets TARGET_PID)
target_start() {
    local ns=$1 run=$2 iqn=$3; shift 3
    case ${LAB_TARGET:-tandem} in
    tandem)
        local bin=${LAB_TANDEM_BIN:-$REPO_DIR/target/release/tandem-dataplane}
        case $bin in /*) ;; *) bin=$PWD/$bin ;; esac
        if [ -z "${LAB_TANDEM_BIN:-}" ]; then
            log "building tandem-dataplane (cargo build --release -p tandem-dataplane)"
            (cd "$REPO_DIR" && cargo build --release -q -p tandem-dataplane) >&2 || die "cargo build failed"
        fi
        [ -x "$bin" ] || die "no target binary $bin"
        # shellcheck disable=SC2206 # LAB_TANDEM_ARGS is a word list on purpose
        local args=(serve --ram 256MiB --iqn "$iqn" ${LAB_TANDEM_ARGS:-}) p
        for p in "$@"; do args+=(--portal "$p"); done
        log "target: $bin ${args[*]}"
        ip netns exec "$ns" "$bin" "${args[@]}" > "$run/target.log" 2>&1 &
        TARGET_PID=$!
        ;;
    tgt)
        command -v tgtd >/dev/null || die "tgtd missing: tests/lab/install-deps.sh"
        TGT_PORT=$(( 20000 + $$ % 10000 ))
        local portals="" p
        for p in "$@"; do portals+="${portals:+,}portal=$p"; done
        ip netns exec "$ns" tgtd -f -C "$TGT_PORT" --iscsi "$portals" > "$run/target.log" 2>&1 &
        TARGET_PID=$!
        local i=0
        until tgtadm -C "$TGT_PORT" --lld iscsi --op show --mode target >/dev/null 2>&1; do
            i=$((i + 1)); [ $i -lt 50 ] || die "tgtd did not start: $(cat "$run/target.log")"
            sleep 0.1
        done
        truncate -s 256M "$run/disk.img"
        tgtadm -C "$TGT_PORT" --lld iscsi --op new --mode target --tid 1 -T "$iqn"
        tgtadm -C "$TGT_PORT" --lld iscsi --op new --mode logicalunit --tid 1 --lun 1 -b "$run/disk.img"
        tgtadm -C "$TGT_PORT" --lld iscsi --op update --mode logicalunit --tid 1 --lun 1 \
            --params vendor_id=TANDEM,product_id=TANDEM-DISK
        tgtadm -C "$TGT_PORT" --lld iscsi --op bind --mode target --tid 1 -I ALL
        log "target: tgtd (control port $TGT_PORT) on $portals"
        ;;
    *) die "unknown LAB_TARGET=${LAB_TARGET} (tandem|tgt)" ;;
    esac
    # Wait until every portal listens.
    local i=0 port
    for p in "$@"; do
        port=${p##*:}
        until ip netns exec "$ns" ss -Hltn | awk '{print $4}' |
              grep -qxF -e "$p" -e "0.0.0.0:$port" -e "*:$port" -e "[::]:$port"; do
            i=$((i + 1)); [ $i -lt 300 ] || die "target does not listen on $p: $(tail -n 20 "$run/target.log")"
            kill -0 "$TARGET_PID" 2>/dev/null || die "target exited: $(tail -n 20 "$run/target.log")"
            sleep 0.1
        done
    done
}

target_stop() {
    [ -n "${TARGET_PID:-}" ] || return 0
    if [ "${LAB_TARGET:-tandem}" = tgt ] && [ -n "${TGT_PORT:-}" ]; then
        tgtadm -C "$TGT_PORT" --op update --mode sys --name State -v offline >/dev/null 2>&1 || true
        tgtadm -C "$TGT_PORT" --lld iscsi --op delete --mode system >/dev/null 2>&1 || true
    fi
    kill "$TARGET_PID" 2>/dev/null || true
    local i=0
    while kill -0 "$TARGET_PID" 2>/dev/null && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
    kill -9 "$TARGET_PID" 2>/dev/null || true
    wait "$TARGET_PID" 2>/dev/null || true
    TARGET_PID=
}
