#!/bin/bash
# vm-test fixture: a kselftest skip (exit 4) with its reason.
echo "skipping: needs a zoned device"
exit 4
