# 256 MiB, 2 queues: 64 MiB of seeded data at scattered offsets in mixed sizes (4 KiB-512 KiB)
# with O_DIRECT, read back byte-exact (whole device, md5 against the model), clean SIGTERM.
. /tmp/lib.sh
start_daemon --size 256MiB --queues 2 --depth 64
blkio write --dev $D --seed 4242 --bytes 64MiB --min 4KiB --max 512KiB || fail "write"
blkio verify --dev $D --seed 4242 --bytes 64MiB --min 4KiB --max 512KiB --full || fail "verify"
stop_daemon
echo PASS
