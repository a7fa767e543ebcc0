# Helpers for the ublk-mem VM tests (busybox sh). Every wait is bounded.
fail() { echo "FAIL: $*"; exit 1; }
now() { cut -d' ' -f1 /proc/uptime; }
# start_daemon ARGS...: runs ublk-mem add in the background; sets P (pid) and D (block device).
start_daemon() {
    rm -f /tmp/ready
    ublk-mem add "$@" > /tmp/ready 2> /tmp/daemon.err &
    P=$!
    for i in $(seq 200); do [ -s /tmp/ready ] && break; kill -0 $P 2>/dev/null || break; sleep 0.05; done
    [ -s /tmp/ready ] || { cat /tmp/daemon.err; fail "ublk-mem did not become ready within 10 s"; }
    D=$(cat /tmp/ready)
    [ -b "$D" ] || fail "$D is not a block device"
}
# stop_daemon: SIGTERM, then require exit 0 within 2 s and no ublk block device left.
stop_daemon() {
    T0=$(now)
    kill -TERM $P
    for i in $(seq 100); do kill -0 $P 2>/dev/null || break; sleep 0.02; done
    kill -0 $P 2>/dev/null && fail "ublk-mem still running 2 s after SIGTERM"
    wait $P; rc=$?
    T1=$(now)
    echo "sigterm: exit $rc after $(awk "BEGIN{print $T1-$T0}") s"
    [ $rc = 0 ] || { cat /tmp/daemon.err; fail "ublk-mem exited $rc after SIGTERM"; }
    ls /dev/ublkb* 2>/dev/null && fail "a ublk block device is left after shutdown"
    true
}
# queue_policies: the scheduling policy (stat field 41: 0 normal, 3 batch) of every ublk-q*
# thread of $P, as "ublk-q0=3 ublk-q1=3".
queue_policies() {
    for t in /proc/$P/task/*; do
        c=$(cat $t/comm)
        case $c in ublk-q*) echo "$c=$(cut -d' ' -f41 $t/stat)" ;; esac
    done | sort | tr '\n' ' '
}
