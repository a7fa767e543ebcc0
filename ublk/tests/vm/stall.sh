# Fault injection: with depth 1 every request uses tag 0, which stalls after 20 requests
# (the partition scan uses a few). A read then hangs; the SIGUSR1 state dump names the tag;
# SIGTERM still shuts down cleanly within 2 s; the trace records the stall and its release.
. /tmp/lib.sh
start_daemon --size 16MiB --queues 1 --depth 1 --fault stall-tag=0:0:after=20 --state-file /tmp/state.json --trace /tmp/trace
hung=
for i in $(seq 40); do
    dd if=$D of=/dev/null bs=4k count=1 skip=$i iflag=direct 2>/dev/null &
    DD=$!
    for j in $(seq 20); do kill -0 $DD 2>/dev/null || break; sleep 0.05; done
    if kill -0 $DD 2>/dev/null; then hung=$i; break; fi
done
[ -n "$hung" ] || fail "no read hung although tag 0 stalls after 20 requests"
echo "read $hung hung, as injected"
kill -USR1 $P
for i in $(seq 50); do [ -s /tmp/state.json ] && break; sleep 0.02; done
tr -d ' \n' < /tmp/state.json | grep -q '"serving_tags":\[0\]' || { cat /tmp/state.json; fail "state dump does not name tag 0 as serving"; }
grep -q '"op": "read"' /tmp/state.json || fail "state dump lacks the stuck read"
stop_daemon
wait $DD
grep -q '^S 0$' /tmp/trace.q0 || fail "trace lacks the stall"
grep -q '^C 0 -5$' /tmp/trace.q0 || fail "trace lacks the -EIO release at shutdown"
echo PASS
