# 256 MiB, 2 queues: 64 MiB of seeded data at scattered offsets in mixed sizes (4 KiB-512 KiB)
# with O_DIRECT, spread over both queues, read back byte-exact (whole device, md5 against the
# reference model), clean SIGTERM. The queue threads run under SCHED_BATCH (--sched's default)
# and under the normal policy when told.
. /tmp/lib.sh
start_daemon --size 16MiB --queues 2 --depth 4 --sched normal
[ "$(queue_policies)" = "ublk-q0=0 ublk-q1=0 " ] || fail "--sched normal: $(queue_policies)"
stop_daemon
start_daemon --size 256MiB --queues 2 --depth 64
[ "$(queue_policies)" = "ublk-q0=3 ublk-q1=3 " ] || fail "default --sched batch: $(queue_policies)"
blkio write --dev $D --seed 4242 --bytes 64MiB --min 4KiB --max 512KiB --spread || fail "write"
blkio verify --dev $D --full || fail "verify"
stop_daemon
cat /tmp/daemon.err
for q in 0 1; do
    grep -q "queue $q: [0-9]* reads, [1-9][0-9]* writes" /tmp/daemon.err || fail "queue $q served no writes"
done
echo PASS
