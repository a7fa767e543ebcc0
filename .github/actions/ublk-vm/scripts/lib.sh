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
