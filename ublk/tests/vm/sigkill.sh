# SIGKILL of the daemon under I/O: pending I/O fails (no hang) within 30 s; the dead device
# can be deleted.
. /tmp/lib.sh
start_daemon --size 256MiB --queues 2 --depth 64
blkio bench --dev $D --rw randwrite --qd 32 --seconds 120 --timeout 30 > /tmp/bench.out 2>&1 &
B=$!
sleep 1
kill -0 $B || { cat /tmp/bench.out; fail "bench ended before the kill"; }
T0=$(now)
kill -KILL $P
wait $B; rc=$?
T1=$(now)
cat /tmp/bench.out
echo "sigkill: I/O ended with exit $rc after $(awk "BEGIN{print $T1-$T0}") s"
[ $rc != 0 ] || fail "I/O kept succeeding after the daemon was killed"
grep -q "I/O hang" /tmp/bench.out && fail "I/O hung instead of failing"
grep -q "Input/output error" /tmp/bench.out || fail "expected EIO"
ublk-mem del --all || fail "deleting the dead device"
ls /dev/ublkb* 2>/dev/null && fail "device still present after del"
echo PASS
