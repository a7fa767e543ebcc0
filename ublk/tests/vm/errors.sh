# Clear errors for the usual mistakes.
. /tmp/lib.sh
expect_err() { # expect_err TEXT CMD...: CMD must fail and say TEXT
    text=$1; shift
    "$@" > /tmp/out 2>&1 && fail "$* succeeded"
    grep -q "$text" /tmp/out || { cat /tmp/out; fail "$* did not say '$text'"; }
    echo "ok: $* -> $(head -1 /tmp/out)"
}
expect_err "multiple of the block size" ublk-mem add --size 1000
expect_err "no ublk device with id 7" ublk-mem del --id 7
expect_err "does not offer BATCH_IO" ublk-mem add --size 16MiB --io-mode batch
expect_err "expected auto, per-tag or batch" ublk-mem add --size 16MiB --io-mode batched
start_daemon --size 16MiB --id 3
expect_err "already in use" ublk-mem add --size 16MiB --id 3
stop_daemon
rmmod ublk_drv || fail "rmmod"
expect_err "modprobe ublk_drv" ublk-mem add --size 16MiB
modprobe ublk_drv || fail "modprobe"
echo PASS
