#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# Test fixture for vm-selftests: like splat_01, but its warning is the one the test names with
# --expect-splat, so it must pass.
echo "WARNING: CPU: 0 PID: 1 at fixture/splat.c:2 known_fixture_warning" > /dev/kmsg
exit 0
