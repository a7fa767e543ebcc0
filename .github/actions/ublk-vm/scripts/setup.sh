#!/usr/bin/env bash
# Decides how the VMs will run: KVM when /dev/kvm is usable, else TCG (software emulation)
# with every scenario limit scaled. In GitHub Actions (and only there) it first opens /dev/kvm
# to the runner's user, the documented udev rule for hosted runners; elsewhere it changes
# nothing on the machine. Prints `accel=...` and `timeout-scale=...`, also to $GITHUB_OUTPUT.
#
# Environment: UBLK_VM_TCG_TIMEOUT_SCALE (default 2): the limit scale under TCG;
# UBLK_VM_KVM_DEVICE (default /dev/kvm): the device to look at.
set -euo pipefail

# shellcheck source=SCRIPTDIR/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

kvm="${UBLK_VM_KVM_DEVICE:-/dev/kvm}"
tcg_scale="${UBLK_VM_TCG_TIMEOUT_SCALE:-2}"
if ! [[ "$tcg_scale" =~ ^[0-9]+([.][0-9]+)?$ ]]; then
    echo "setup.sh: tcg-timeout-scale must be a number, got '$tcg_scale'" >&2
    exit 2
fi

if [ "${GITHUB_ACTIONS:-}" = true ] && [ -e "$kvm" ] && ! [ -w "$kvm" ]; then
    echo 'KERNEL=="kvm", GROUP="kvm", MODE="0666", OPTIONS+="static_node=kvm"' |
        sudo tee /etc/udev/rules.d/99-kvm4all.rules >/dev/null
    sudo udevadm control --reload-rules
    sudo udevadm trigger --name-match=kvm
    # udev applies the mode asynchronously; wait for it, bounded.
    for _ in $(seq 1 50); do
        [ -w "$kvm" ] && break
        sleep 0.1
    done
fi

if [ -e "$kvm" ] && [ -r "$kvm" ] && [ -w "$kvm" ]; then
    # Whether a guest really boots under KVM is proven by xtask itself (`--accel auto`
    # probes once and falls back to TCG); the limits stay as written for KVM then.
    accel=auto
    scale=1
    why="$kvm is usable: KVM if a guest boots under it (xtask proves it), else TCG"
else
    accel=tcg
    scale="$tcg_scale"
    why="no usable $kvm: TCG (software emulation), every limit x$scale"
fi
echo "setup.sh: $why"
if [ "${GITHUB_ACTIONS:-}" = true ] && [ "$accel" = tcg ]; then
    echo "::notice title=ublk-vm::$why"
fi
echo "accel=$accel"
echo "timeout-scale=$scale"
gh_output accel "$accel"
gh_output timeout-scale "$scale"
