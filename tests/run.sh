#!/usr/bin/env bash
# README's test command: installs what the suite needs on a fresh machine that has only the
# Rust toolchain, then runs the whole suite. Safe to run again: each step is skipped when its
# tool is already there.
#
#   tests/run.sh                 # everything
#   tests/run.sh --test it flex  # arguments go to `cargo test`
#
# What it sets up, and why:
# - The official Ark Python SDK (tests/sdk/requirements.txt) in a private venv under
#   target/test-tools, so the simulator's wire-compatibility test runs against a client we did
#   not write, without touching the system Python.
# - systemd-analyze (the unit file test) and kill(1) (signal tests), from Debian packages.
# - The third-party `seedance` CLI (crates.io 0.3.0, a BytePlus ModelArk client) under
#   target/test-tools/bin, so tests/it/validation.rs can check the simulator and validation
#   accept what a client we did not write sends (its defaults, its dreamina- model ids).
# - chromium and chromium-driver (the dashboard's browser tests, `--test browser`).
set -euo pipefail
cd "$(dirname "$0")/.."

tools="${SEEDQ_TEST_TOOLS:-$PWD/target/test-tools}"
mkdir -p "$tools"

sudo=""
[[ "$(id -u)" -eq 0 ]] || sudo=sudo
apt_updated=""
apt_install() {
    if [[ -z "$apt_updated" ]]; then
        $sudo apt-get update -qq
        apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@"
}

# --- Debian packages ---------------------------------------------------------------------
need=()
command -v python3 >/dev/null || need+=(python3 python3-venv)
command -v systemd-analyze >/dev/null || need+=(systemd)
[[ -x /bin/kill ]] || need+=(procps)
# The dashboard's browser tests (tests/browser) drive headless Chromium over WebDriver.
command -v chromium >/dev/null || need+=(chromium)
command -v chromedriver >/dev/null || need+=(chromium-driver)
if ((${#need[@]})); then
    echo "tests/run.sh: installing ${need[*]}" >&2
    apt_install "${need[@]}"
fi

# --- The official Python SDK, in a venv ---------------------------------------------------
venv="$tools/venv"
if ! "$venv/bin/python" -c "import volcenginesdkarkruntime" 2>/dev/null; then
    echo "tests/run.sh: installing the Ark Python SDK into $venv" >&2
    if ! python3 -m venv "$venv" 2>/dev/null; then
        # Debian's python3 keeps venv in a package of its own.
        apt_install python3-venv
        python3 -m venv "$venv"
    fi
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        -r tests/sdk/requirements.txt
fi
export SEEDQ_TEST_PYTHON="$venv/bin/python"

# --- The third-party seedance CLI -----------------------------------------------------------
seedance="$tools/bin/seedance"
if [[ ! -x "$seedance" ]]; then
    echo "tests/run.sh: installing the seedance CLI 0.3.0 into $tools" >&2
    # --debug: it is a test client, and an unoptimised build takes a fraction of the time.
    cargo install --quiet --debug seedance --version 0.3.0 --locked --root "$tools"
fi
export SEEDQ_TEST_SEEDANCE="$seedance"

# --- The suite ----------------------------------------------------------------------------
# --no-fail-fast: a failing unit test must not hide the integration tests' results.
exec cargo test --no-fail-fast "$@"
