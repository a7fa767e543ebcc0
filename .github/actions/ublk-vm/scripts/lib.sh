# shellcheck shell=bash
# Shared by the action's scripts (sourced, not run).

# The xtask to run: `cargo xtask` in the platform, or a built binary (UBLK_VM_XTASK).
xtask() {
    if [ -n "${UBLK_VM_XTASK:-}" ]; then
        "$UBLK_VM_XTASK" "$@"
    else
        cargo xtask "$@"
    fi
}

# The platform's checkout: four levels above this file.
platform_root() {
    cd "$(dirname "${BASH_SOURCE[0]}")/../../../.." && pwd
}

# Appends NAME=VALUE to $GITHUB_OUTPUT (when set) in the delimiter form, with a random
# delimiter the value does not hold: a value cannot add output lines of its own.
gh_output() {
    local name="$1" value="$2" delim
    if ! [[ "$name" =~ ^[a-z][a-z0-9-]*$ ]]; then
        echo "gh_output: bad output name '$name'" >&2
        return 2
    fi
    [ -n "${GITHUB_OUTPUT:-}" ] || return 0
    delim="ublk_vm_$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
    case "$value" in
    *"$delim"*)
        echo "gh_output: the value of $name holds its delimiter" >&2
        return 2
        ;;
    esac
    printf '%s<<%s\n%s\n%s\n' "$name" "$delim" "$value" "$delim" >>"$GITHUB_OUTPUT"
}

# Fails (exit 2, one line naming the input) unless VALUE matches the extended regex RE.
check_input() {
    local what="$1" value="$2" re="$3" hint="$4"
    if ! [[ "$value" =~ $re ]]; then
        printf '%s: %s must be %s, got %q\n' "$(basename -- "$0")" "$what" "$hint" "$value" >&2
        exit 2
    fi
}
