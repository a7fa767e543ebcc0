#!/bin/bash
# vm-test fixture: passes where ublk_drv is loaded (the platform's promise to a test).
test -c /dev/ublk-control || { echo "no /dev/ublk-control" >&2; exit 1; }
echo "ublk_drv is loaded on $(uname -r)"
