#!/bin/bash
# vm-test fixture: fails with a message and exit status 3.
echo "starting"
echo "the device never appeared" >&2
exit 3
