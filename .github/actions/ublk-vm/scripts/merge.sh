#!/usr/bin/env bash
# Every shard's report (directories holding summary.json, e.g. downloaded artifacts) into
# one: summary.json, junit.xml, summary.md (appended to $GITHUB_STEP_SUMMARY when set) and
# the evidence of the runs that did not pass. Exits with the merged verdict: 0 pass, 1 a run
# failed or timed out, 2 the reports were refused (not summaries, hostile, of different
# commits), 125 nothing failed but something could not be tested (an infra error, a missing
# shard). The artifacts are other jobs' output: `report merge` reads nothing outside them
# and writes nothing outside OUT (see README.md, "What merge trusts").
#
# Usage: merge.sh OUT DIR...
set -euo pipefail

# shellcheck source=SCRIPTDIR/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

if [ $# -lt 2 ]; then
    echo "usage: merge.sh OUT DIR..." >&2
    exit 2
fi
root="$(platform_root)"
out="$(mkdir -p "$1" && cd "$1" && pwd)"
shift
dirs=()
for d in "$@"; do
    dirs+=("$(cd "$d" && pwd)")
done
code=0
(cd "$root" && xtask report merge "${dirs[@]}" --out "$out" --evidence) || code=$?
if [ -f "$out/summary.md" ] && [ -n "${GITHUB_STEP_SUMMARY:-}" ]; then
    cat "$out/summary.md" >>"$GITHUB_STEP_SUMMARY"
fi
exit "$code"
