#!/usr/bin/env bash
# Runs a command (a script of this action) in a fresh Debian container, or directly when the
# image is `none` (a Debian machine or a self-hosted runner). In the container the platform
# and the workspace keep their host paths (so profile paths resolve the same), /dev/kvm is
# passed when present, and the Rust toolchain is installed when missing.
#
# Usage: container.sh IMAGE|none COMMAND [ARG...]
set -euo pipefail

if [ $# -lt 2 ]; then
    echo "usage: container.sh IMAGE|none COMMAND [ARG...]" >&2
    exit 2
fi
image="$1"
shift
if [ "$image" = none ]; then
    exec "$@"
fi
# shellcheck source=SCRIPTDIR/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
root="$(platform_root)"
work="${GITHUB_WORKSPACE:-$PWD}"
vols=(-v "$root:$root" -v "$work:$work")
if [ -n "${RUNNER_TEMP:-}" ]; then
    vols+=(-v "$RUNNER_TEMP:$RUNNER_TEMP")
fi
devs=()
if [ -e /dev/kvm ]; then
    devs=(--device /dev/kvm)
fi
envs=()
while IFS='=' read -r name _; do
    envs+=(-e "$name")
done < <(env | grep -E '^(UBLK_VM_[A-Z_]+|GITHUB_[A-Z_]+|CI)=' || true)
# shellcheck disable=SC2016 # expanded inside the container
exec docker run --rm "${devs[@]}" "${vols[@]}" "${envs[@]}" -w "$work" "$image" bash -euc '
    if ! command -v cargo >/dev/null; then
        timeout 900 apt-get update -qq
        DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y -qq --no-install-recommends \
            ca-certificates curl gcc libc6-dev git >/dev/null
        curl -sSf --max-time 120 https://sh.rustup.rs | timeout 900 sh -s -- -y -q --profile minimal
        . "$HOME/.cargo/env"
    fi
    git config --global --add safe.directory "*"
    exec "$@"
' container.sh "$@"
