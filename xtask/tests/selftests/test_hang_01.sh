#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# Test fixture for vm-selftests (not part of the kernel's suite): the server is stopped, then a
# read is sent to its device. The read can never complete; the harness must end the test as
# `timeout` within its limit, with a freeze-frame naming the stuck tag and the blocked task.

. "$(cd "$(dirname "$0")" && pwd)"/test_common.sh

_prep_test "null" "fixture: a stopped server and a read that waits forever"
dev_id=$(_add_ublk_dev -t null -q 1)
_check_add_dev "$TID" $?
for pid in $(pidof kublk); do
	kill -STOP "$pid"
done
dd if=/dev/ublkb"$dev_id" of=/dev/null bs=4k count=1 iflag=direct
echo "fixture: the read returned, which a stopped server cannot allow"
exit 1
