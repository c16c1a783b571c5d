#!/usr/bin/env bash
# README's test command: installs what the suite needs on a fresh machine that has only the
# Rust toolchain, then runs the whole suite. Safe to run again: each step is skipped when its
# tool is already there.
#
#   tests/run.sh                 # everything
#   tests/run.sh --test it flex  # arguments go to `cargo test`
#
# What it sets up, and why:
# - The Python clients we did not write (tests/sdk/requirements.txt: the official Volcengine
#   and BytePlus Ark SDKs, LiteLLM, the openai SDK) in a private venv under target/test-tools,
#   so the simulator's wire-compatibility tests run against them without touching the system
#   Python. Reinstalled when requirements.txt changes.
# - Node.js and npm (Debian's `nodejs`, `npm`) when `node` or `npm` is absent, and the Vercel AI
#   SDK with its ByteDance provider (tests/sdk/node/package-lock.json, exact versions) under
#   target/test-tools/node with `npm ci`, for tests/it/clients.rs.
# - systemd-analyze (the unit file test) and kill(1) (signal tests), from Debian packages.
# - The third-party `seedance` CLI (crates.io 0.3.0, a BytePlus ModelArk client) under
#   target/test-tools/bin, so tests/it/validation.rs can check the simulator and validation
#   accept what a client we did not write sends (its defaults, its dreamina- model ids).
# - chromium and chromium-driver (the dashboard's browser tests, `--test browser`).
# - PostgreSQL's server binaries (Debian's `postgresql`), when no /usr/lib/postgresql/*/bin/initdb
#   exists: the PostgreSQL store tests start their own throwaway cluster with initdb + pg_ctl
#   (crates/seedq-pgscratch/src/lib.rs) on a random loopback port. No service is started by the install (a
#   policy-rc.d says no), and SEEDQ_PG_BIN is exported for the newest version found.
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
# The Vercel AI SDK test client (tests/sdk/vercel_check.mjs). Debian 12's nodejs is 18, which
# `ai` 6 supports (`ai` 7 needs Node 22).
command -v node >/dev/null || need+=(nodejs)
command -v npm >/dev/null || need+=(npm)
# The dashboard's browser tests (tests/browser) drive headless Chromium over WebDriver.
command -v chromium >/dev/null || need+=(chromium)
command -v chromedriver >/dev/null || need+=(chromium-driver)
# PostgreSQL's server binaries (initdb, pg_ctl); the tests run their own cluster, not the
# package's.
pg_initdb() { compgen -G '/usr/lib/postgresql/*/bin/initdb' | sort -V | tail -n 1; }
[[ -n "$(pg_initdb)" ]] || need+=(postgresql)
if ((${#need[@]})); then
    echo "tests/run.sh: installing ${need[*]}" >&2
    # postgresql's postinst creates a "main" cluster and starts it through invoke-rc.d (or
    # deb-systemd-invoke): in a container without an init system that can fail the install, and
    # where it works it leaves a server we do not want on port 5432. Both ask policy-rc.d
    # first, and exit code 101 means "action forbidden": the package installs, nothing starts.
    # Docker's Debian images ship such a file; a fresh VM does not, so write one for the
    # install only and remove just the one we wrote.
    policy=/usr/sbin/policy-rc.d
    if [[ ! -e "$policy" ]]; then
        printf '#!/bin/sh\n# tests/run.sh: no services during its package install\nexit 101\n' |
            $sudo tee "$policy" >/dev/null
        $sudo chmod 755 "$policy"
        trap '$sudo rm -f "$policy"' EXIT
        apt_install "${need[@]}"
        $sudo rm -f "$policy"
        trap - EXIT
    else
        apt_install "${need[@]}"
    fi
fi
if [[ -z "${SEEDQ_PG_BIN:-}" ]] && initdb="$(pg_initdb)" && [[ -n "$initdb" ]]; then
    export SEEDQ_PG_BIN="${initdb%/initdb}"
fi

# --- The Python clients, in a venv ---------------------------------------------------------
venv="$tools/venv"
# The stamp is the requirements file that was installed: a changed pin reinstalls. The
# modules are looked up, not imported (importing LiteLLM takes seconds).
if ! cmp -s tests/sdk/requirements.txt "$venv/requirements.installed" ||
    ! "$venv/bin/python" -c "import importlib.util as u, sys; sys.exit(any(u.find_spec(m) is None
        for m in ['volcenginesdkarkruntime', 'byteplussdkarkruntime', 'litellm', 'openai']))" \
        2>/dev/null; then
    echo "tests/run.sh: installing the Python test clients into $venv" >&2
    if ! python3 -m venv "$venv" 2>/dev/null; then
        # Debian's python3 keeps venv in a package of its own.
        apt_install python3-venv
        python3 -m venv "$venv"
    fi
    # Byte-compiled afterwards, in parallel, and without the ~60 BytePlus service SDKs that
    # byteplus-python-sdk-v2 brings along unused: pip's own serial compile of all of them took
    # twice as long. Compiled files matter: with PYTHONDONTWRITEBYTECODE set, every test run
    # would compile LiteLLM again.
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-compile \
        -r tests/sdk/requirements.txt
    "$venv/bin/python" -m compileall -q -j0 -x '/byteplussdk(?!arkruntime/|core/)' \
        "$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')" \
        >/dev/null
    cp tests/sdk/requirements.txt "$venv/requirements.installed"
fi
export SEEDQ_TEST_PYTHON="$venv/bin/python"

# --- The Node.js clients ------------------------------------------------------------------
node_dir="$tools/node"
if ! cmp -s tests/sdk/node/package-lock.json "$node_dir/package-lock.installed" ||
    [[ ! -d "$node_dir/node_modules/@ai-sdk/bytedance" ]]; then
    echo "tests/run.sh: installing the Vercel AI SDK clients into $node_dir" >&2
    mkdir -p "$node_dir"
    cp tests/sdk/node/package.json tests/sdk/node/package-lock.json "$node_dir/"
    (cd "$node_dir" && npm ci --no-audit --no-fund --loglevel=error)
    cp tests/sdk/node/package-lock.json "$node_dir/package-lock.installed"
fi
SEEDQ_TEST_NODE="$(command -v node)"
export SEEDQ_TEST_NODE
export SEEDQ_TEST_NODE_DIR="$node_dir"

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
# The store's unit tests run on both backends by themselves. The integration suite then runs a
# second time with every job on PostgreSQL (SEEDQ_TEST_STORE=postgres; tests about the SQLite
# file itself stay on SQLite). SEEDQ_TEST_BACKENDS=sqlite skips that second pass.
status=0
cargo test --no-fail-fast "$@" || status=$?
if [[ "${SEEDQ_TEST_BACKENDS:-sqlite postgres}" == *postgres* ]]; then
    echo "tests/run.sh: the integration suite again, on PostgreSQL" >&2
    if (($#)); then
        SEEDQ_TEST_STORE=postgres cargo test --no-fail-fast "$@" || status=$?
    else
        # tests/it/clients.rs drives third-party clients against the sim alone, with no store:
        # the second pass would only run them again.
        SEEDQ_TEST_STORE=postgres cargo test --no-fail-fast --test it -- --skip clients:: ||
            status=$?
    fi
fi
exit "$status"
