#!/bin/bash
# Runs inside the lab guest as PID 1 (exec'd by /sbin/lab-init from the
# read-only 9p share). Brings up what every scenario needs, runs the scenario
# named by lab.scenario= on the kernel command line, stores its output and
# exit code in the output share and powers the guest off.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export LAB=/lab/tests/lab
# devtmpfs has no /dev/fd; bash process substitution needs it.
[ -e /dev/fd ] || ln -s /proc/self/fd /dev/fd
scenario=
for arg in $(cat /proc/cmdline); do
    case $arg in lab.scenario=*) scenario=${arg#lab.scenario=} ;; esac
done

finish() {
    local rc=$1
    echo "$rc" > /out/rc.tmp && mv /out/rc.tmp /out/rc
    echo "LAB-RESULT scenario=$scenario rc=$rc"
    sync
    echo o > /proc/sysrq-trigger
    sleep 30
}

echo "LAB-BOOTED uptime=$(cut -d' ' -f1 /proc/uptime)s scenario=$scenario"
script=$LAB/scenarios/$scenario.sh
if [ -z "$scenario" ] || [ ! -f "$script" ]; then
    echo "LAB-ERROR: no scenario '$scenario' ($script)"
    finish 2
fi
mkdir -p /out/ctl
# shellcheck disable=SC2094
bash "$script" 2>&1 | tee /out/output.log
finish "${PIPESTATUS[0]}"
