#!/usr/bin/env bash
# One shard of the suite against one server, then its report and the evidence of every run
# that did not pass, gathered into $UBLK_VM_OUT (what the action uploads).
#
# Environment (the action's inputs):
#   UBLK_VM_SERVER      built-in profile name or a profile path (default ublk-mem; suite
#                       blktests: none, its miniublk; a rublk profile drives it instead)
#   UBLK_VM_SCENARIOS   scenario names or paths, space-separated (default: all of scenarios/)
#   UBLK_VM_KERNELS     kernels, comma-separated (default: each scenario's, else debian)
#   UBLK_VM_REPEAT      runs of each scenario (default 1)
#   UBLK_VM_SHARD       K/N (default 1/1)
#   UBLK_VM_SEED        the seed, the same for every shard (required)
#   UBLK_VM_JOBS        VMs at once (default 2)
#   UBLK_VM_ACCEL       auto | kvm | tcg (default auto)
#   UBLK_VM_TIMEOUT_SCALE  every limit x this (default 1)
#   UBLK_VM_DURATIONS   optional summary.json (file or directory) that balances the shards
#   UBLK_VM_OUT         where the report and the evidence go (required)
#   UBLK_VM_SUITE       scenarios (default: vm-e2e) | cargo | go | exec | blktests (vm-test:
#                       your own tests)
#   UBLK_VM_TESTS       cargo: the package directory; go: the module directory; exec: test
#                       files; blktests: the checkout, then groups or tests (default ublk);
#                       space-separated (relative to the directory the script is started in)
#   UBLK_VM_PACKAGES    Debian packages the guest needs besides the tools layer, comma-separated
#   UBLK_VM_PACKAGE_LOCK  the project's lock of those packages (relative as UBLK_VM_TESTS)
#   UBLK_VM_EXPECT_SPLAT  a kernel-log substring that is known and not a failure
# Exit: 0 once the report is written, whatever the verdict (the merge decides; the verdict is
# in $UBLK_VM_OUT/exit-code); 2 on bad input (one line naming it, also when vm-e2e refuses
# an input); 125 if the suite could not start or no report was written.
set -euo pipefail

# shellcheck source=SCRIPTDIR/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

root="$(platform_root)"
: "${UBLK_VM_SEED:?set UBLK_VM_SEED: the same seed for every shard (e.g. the workflow run id)}"
: "${UBLK_VM_OUT:?set UBLK_VM_OUT: the directory for the report and the evidence}"
shard="${UBLK_VM_SHARD:-1/1}"
check_input shard "$shard" '^[0-9]{1,4}/[0-9]{1,4}$' "K/N (e.g. 2/3)"
check_input seed "$UBLK_VM_SEED" '^[0-9]{1,20}$' "a non-negative integer"
check_input repeat "${UBLK_VM_REPEAT:-1}" '^[0-9]{1,4}$' "a whole number of runs (1 to 1000)"
check_input jobs "${UBLK_VM_JOBS:-2}" '^[0-9]{1,2}$' "a whole number of VMs (1 to 64)"
check_input accel "${UBLK_VM_ACCEL:-auto}" '^(auto|kvm|tcg)$' "auto, kvm or tcg"
check_input timeout-scale "${UBLK_VM_TIMEOUT_SCALE:-1}" '^[0-9]{1,3}([.][0-9]{1,3})?$' "a number"
check_input kernels "${UBLK_VM_KERNELS:-}" '^[A-Za-z0-9._/+,-]{0,512}$' "comma-separated kernel names or paths"
check_input server "${UBLK_VM_SERVER:-ublk-mem}" '^[^[:cntrl:]]{1,1024}$' "a profile name or path"
check_input scenarios "${UBLK_VM_SCENARIOS:-}" '^[^[:cntrl:]]{0,4096}$' "scenario names or paths, space-separated"

suite="${UBLK_VM_SUITE:-scenarios}"
check_input suite "$suite" '^(scenarios|cargo|go|exec|blktests)$' "scenarios, cargo, go, exec or blktests"
check_input tests "${UBLK_VM_TESTS:-}" '^[^[:cntrl:]]{0,4096}$' "paths, space-separated"
check_input packages "${UBLK_VM_PACKAGES:-}" '^[a-z0-9+.,-]{0,2048}$' "Debian package names, comma-separated"
check_input package-lock "${UBLK_VM_PACKAGE_LOCK:-}" '^[^[:cntrl:]]{0,1024}$' "a path"
check_input expect-splat "${UBLK_VM_EXPECT_SPLAT:-}" '^[^[:cntrl:]]{0,512}$' "one line of text"
# Paths the caller gave, made absolute before the script moves to the platform's checkout.
absolute() { case "$1" in /*) printf '%s' "$1" ;; *) printf '%s/%s' "$PWD" "$1" ;; esac; }
read -r -a tests <<<"${UBLK_VM_TESTS:-}"
# blktests: the checkout is a path, what follows are its groups and tests (words, as given).
names=()
if [ "$suite" = blktests ] && [ "${#tests[@]}" -gt 1 ]; then
    names=("${tests[@]:1}")
    tests=("${tests[0]}")
fi
for i in "${!tests[@]}"; do tests[i]="$(absolute "${tests[i]}")"; done

common=(--shard "$shard" -j "${UBLK_VM_JOBS:-2}" --repeat "${UBLK_VM_REPEAT:-1}"
    --accel "${UBLK_VM_ACCEL:-auto}" --timeout-scale "${UBLK_VM_TIMEOUT_SCALE:-1}")
if [ -n "${UBLK_VM_KERNELS:-}" ]; then
    common+=(--kernel "$UBLK_VM_KERNELS")
fi
if [ -n "${UBLK_VM_DURATIONS:-}" ]; then
    common+=(--durations "$UBLK_VM_DURATIONS")
fi
if [ -n "${UBLK_VM_EXPECT_SPLAT:-}" ]; then
    common+=(--expect-splat "$UBLK_VM_EXPECT_SPLAT")
fi
case "$suite" in
scenarios)
    args=(vm-e2e --seed "$UBLK_VM_SEED" "${common[@]}" --server "${UBLK_VM_SERVER:-ublk-mem}")
    # Scenario names are words; paths may not contain spaces here. After `--`: a word that
    # looks like a flag (`--list`) is a scenario name, never an option.
    read -r -a scenarios <<<"${UBLK_VM_SCENARIOS:-}"
    args+=(-- "${scenarios[@]}")
    ;;
cargo | go | exec | blktests)
    [ "${#tests[@]}" -gt 0 ] || {
        case "$suite" in
        cargo) what="the package directory" ;;
        go) what="the module directory" ;;
        blktests) what="the blktests checkout" ;;
        *) what="the test files" ;;
        esac
        echo "run.sh: suite $suite needs tests (UBLK_VM_TESTS): $what" >&2
        exit 2
    }
    args=(vm-test "${common[@]}")
    if [ -n "${UBLK_VM_PACKAGES:-}" ]; then
        args+=(--package "$UBLK_VM_PACKAGES")
    fi
    if [ -n "${UBLK_VM_PACKAGE_LOCK:-}" ]; then
        args+=(--package-lock "$(absolute "$UBLK_VM_PACKAGE_LOCK")")
    fi
    case "$suite" in
    cargo | go)
        [ "${#tests[@]}" -eq 1 ] || {
            echo "run.sh: suite $suite takes one directory in tests, not ${#tests[@]} paths" >&2
            exit 2
        }
        args+=("--$suite" "${tests[0]}")
        ;;
    blktests)
        args+=(--blktests "${tests[0]}")
        if [ -n "${UBLK_VM_SERVER:-}" ]; then
            args+=(--server "$UBLK_VM_SERVER")
        fi
        # Group and test names are words; after `--` none is taken for an option.
        args+=(-- "${names[@]}")
        ;;
    *) args+=(--exec "${tests[@]}") ;;
    esac
    ;;
esac

if [ -e "$UBLK_VM_OUT" ] && [ -n "$(ls -A "$UBLK_VM_OUT")" ]; then
    echo "run.sh: $UBLK_VM_OUT exists and is not empty: give UBLK_VM_OUT a new directory" >&2
    exit 2
fi
mkdir -p "$UBLK_VM_OUT"
UBLK_VM_OUT="$(cd "$UBLK_VM_OUT" && pwd)"
# This shard's sessions only: a runs directory of its own (the report copies what it needs).
runs="$(mktemp -d "${RUNNER_TEMP:-${TMPDIR:-/tmp}}/ublk-vm-runs.XXXXXX")"
cd "$root"
echo "run.sh: xtask ${args[*]}"
code=0
export UBLK_VM_RUNS_DIR="$runs"
xtask "${args[@]}" || code=$?
case "$code" in
0 | 1 | 125) ;;
2)
    echo "run.sh: ${args[0]} refused its input (exit 2, see above)" >&2
    exit 2
    ;;
*)
    echo "run.sh: ${args[0]} exited $code before a verdict (see above)" >&2
    exit "$code"
    ;;
esac
# The shard's own report, with the evidence of the runs that did not pass beside it.
xtask report merge "$runs" --out "$UBLK_VM_OUT" --evidence || true
if ! [ -f "$UBLK_VM_OUT/summary.json" ]; then
    echo "run.sh: no report was written to $UBLK_VM_OUT" >&2
    exit 125
fi
echo "$code" >"$UBLK_VM_OUT/exit-code"
echo "run.sh: shard $shard verdict exit code $code; report in $UBLK_VM_OUT"
