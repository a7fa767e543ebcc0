#!/usr/bin/env bash
# The action's first step: checks the inputs every mode uses and names where things are —
# the platform's checkout, a digest of its locks (the cache key), the report directory and
# this job's artifact name — printed and written to $GITHUB_OUTPUT (delimiter form).
#
# Environment (the action's inputs): MODE (run|merge), SHARD (K/N), KERNELS, SERVER, SUITE,
# PREFIX (artifact-prefix). The artifact is named by the server, else by the suite (scenarios
# run ublk-mem by default; the other suites start their own servers). Exit 2 on bad input, with one line naming it.
set -euo pipefail

# shellcheck source=SCRIPTDIR/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

mode="${MODE:-run}"
shard="${SHARD:-1/1}"
kernels="${KERNELS:-}"
server="${SERVER:-}"
suite="${SUITE:-scenarios}"
prefix="${PREFIX:-ublk-vm}"
check_input mode "$mode" '^(run|merge)$' "run or merge"
check_input shard "$shard" '^[0-9]{1,4}/[0-9]{1,4}$' "K/N (e.g. 2/3)"
check_input kernels "$kernels" '^[A-Za-z0-9._/+,-]{0,512}$' "comma-separated kernel names or paths"
check_input artifact-prefix "$prefix" '^[A-Za-z0-9._-]{1,64}$' "1 to 64 letters, digits, '.', '_' or '-'"
check_input server "$server" '^[^[:cntrl:]]{0,1024}$' "a profile name or path (no control characters)"
check_input suite "$suite" '^(scenarios|cargo|go|exec|blktests)$' "scenarios, cargo, go, exec or blktests"
if [ -z "$server" ]; then
    if [ "$suite" = scenarios ]; then server=ublk-mem; else server="$suite"; fi
fi

platform="$(platform_root)"
name="$(basename -- "$server")"
name="${name%.yaml}"
tag="$(printf '%s-%s-%s' "$name" "${kernels:-default}" "${shard/\//-of-}" | tr -c 'A-Za-z0-9._-' '-')"
locks="$(cat "$platform"/vm-images/*.lock "$platform"/vm-images/recipe.yaml | sha256sum | cut -c1-16)"
out="${RUNNER_TEMP:-${TMPDIR:-/tmp}}/ublk-vm-$mode"
artifact="$prefix-shard-${tag:0:160}"
for kv in "platform=$platform" "locks=$locks" "out=$out" "artifact=$artifact"; do
    echo "where.sh: $kv"
    gh_output "${kv%%=*}" "${kv#*=}"
done
