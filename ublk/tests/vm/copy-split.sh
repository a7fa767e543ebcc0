#!/bin/sh
# Where a ublk-mem request's time goes in the guest kernel: the USER_COPY copy
# (ublk_ch_write_iter: a READ's data into the request) against the io command
# (ublk_ch_uring_cmd), per request size, from function_graph durations. README
# "Performance" runs it on both kernels:
#   cargo xtask vm-run --kernel debian-7.2 --tools fio \
#     --copy-in ublk/tests/vm/copy-split.sh:/tmp/copy-split.sh -- sh /tmp/copy-split.sh
set -u
T=/sys/kernel/tracing
[ -d $T/events ] || mount -t tracefs nodev $T || exit 125
ublk-mem add --size 128MiB --queues 1 --depth 8 --io-mode per-tag --json > /tmp/ready 2> /tmp/err &
i=0
while [ ! -s /tmp/ready ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
[ -s /tmp/ready ] || { cat /tmp/err; exit 125; }
fio --name=fill --filename=/dev/ublkb0 --rw=write --bs=1M --direct=1 --size=64M --ioengine=psync > /dev/null || exit 125
echo "kernel $(uname -r), cpu flags: $(grep -m1 -o -w 'erms\|fsrm' /proc/cpuinfo | tr '\n' ' ')"
echo 16384 > $T/buffer_size_kb
for bs in 4k 128k; do
    echo 0 > $T/tracing_on
    echo function_graph > $T/current_tracer
    echo 1 > $T/max_graph_depth
    echo ublk_ch_write_iter > $T/set_ftrace_filter
    echo ublk_ch_uring_cmd >> $T/set_ftrace_filter
    echo > $T/trace
    echo 1 > $T/tracing_on
    fio --name=r --filename=/dev/ublkb0 --rw=read --bs=$bs --iodepth=1 --direct=1 --size=64M \
        --runtime=2 --time_based --ioengine=psync --output-format=terse --terse-version=3 > /tmp/fio.txt
    echo 0 > $T/tracing_on
    echo "$bs reads, 1 in flight: $(cut -d';' -f8 /tmp/fio.txt) IOPS, mean latency $(cut -d';' -f40 /tmp/fio.txt | cut -d. -f1) us"
    for f in ublk_ch_write_iter ublk_ch_uring_cmd; do
        grep " $f " $T/trace | awk '{for (i = 1; i < NF; i++) if ($(i + 1) == "us") print $i}' | sort -n > /tmp/d.txt
        n=$(wc -l < /tmp/d.txt)
        [ "$n" -gt 0 ] || { echo "  $f: no calls traced"; continue; }
        echo "  $f: $n calls, median $(sed -n "$((n / 2 + 1))p" /tmp/d.txt) us"
    done
done
echo nop > $T/current_tracer
kill %1
wait
