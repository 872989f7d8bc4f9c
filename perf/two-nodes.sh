# Sourced by the replicated benchmarks (replicated.sh, journal_cost.sh, resync_pacing.sh).
# start_two_nodes WORK: starts two tandem-control nodes, perf-a on $a_ip and perf-b on $b_ip
# (API :3261, portal :3260), with their data in WORK/na and WORK/nb and logs beside them;
# appends their pids to the caller's `pids` array and sets A and B to the `tandem` CLI aimed
# at each node. Needs $bin (the directory of the binaries).
start_two_nodes() {
  local work=$1 n
  mkdir -p "$work/na" "$work/nb"
  "$bin/tandem-control" --data-dir "$work/na" --api "$a_ip:3261" --portal "$a_ip:3260" \
    --node-name perf-a >"$work/na.log" 2>&1 &
  pids+=($!)
  "$bin/tandem-control" --data-dir "$work/nb" --api "$b_ip:3261" --portal "$b_ip:3260" \
    --node-name perf-b >"$work/nb.log" 2>&1 &
  pids+=($!)
  for n in na nb; do
    for _ in $(seq 100); do [[ -s "$work/$n/token" ]] && break; sleep 0.1; done
  done
  sleep 1
  A=("$bin/tandem" --api "http://$a_ip:3261" --token-file "$work/na/token")
  B=("$bin/tandem" --api "http://$b_ip:3261" --token-file "$work/nb/token")
}
