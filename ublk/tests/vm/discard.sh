# Discard and write-zeroes read back as zeroes; the data around them is untouched.
. /tmp/lib.sh
start_daemon --size 64MiB --queues 1 --depth 32 --block-size 512
blkio write --dev $D --seed 7 --pattern sequential --bytes 16MiB --span 16MiB || fail "write"
blkio discard --dev $D --offset 4MiB --len 2MiB || fail "discard"
blkio zeroes --dev $D --offset 4MiB --len 2MiB || fail "discarded range not zero"
blkio discard --zeroout --dev $D --offset 8MiB --len 1MiB || fail "write zeroes"
blkio zeroes --dev $D --offset 8MiB --len 1MiB || fail "write-zeroes range not zero"
blkio verify --dev $D --offset 0 --len 4MiB || fail "data before the discarded range changed"
blkio verify --dev $D --offset 6MiB --len 2MiB || fail "data between the ranges changed"
blkio verify --dev $D --offset 9MiB --len 7MiB || fail "data after the zeroed range changed"
stop_daemon
echo PASS
