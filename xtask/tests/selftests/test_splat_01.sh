#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# Test fixture for vm-selftests (not part of the kernel's suite): exits 0 after a warning
# lands in the kernel log. The harness must fail it for the splat, unless told to expect it.
echo "WARNING: CPU: 0 PID: 1 at fixture/splat.c:1 vm_selftests_fixture" > /dev/kmsg
exit 0
