#!/bin/bash
# vm-test fixture: waits forever in interruptible sleep (nothing in D state, no stuck tag):
# the freeze-frame must still say where it waits.
sleep 100000
