#!/bin/bash
# vm-test fixture: exits 0 after a warning lands in the kernel log; the harness must fail it
# for the splat unless told to expect it.
echo "WARNING: CPU: 0 PID: 1 at fixture/vmtest.c:1 vm_test_fixture" > /dev/kmsg
exit 0
