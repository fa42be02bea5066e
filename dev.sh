#!/usr/bin/env bash
# The project's one entry point for people and CI:
#   ./dev.sh demo    render a handful of jobs through the embedded farm (no servers needed)
#   ./dev.sh test    lint, type-check and run the whole test suite (starts PostgreSQL and Redis)
#   ./dev.sh setup   only create .venv and install the Python packages (and chromium for the browser tests)
#   ./dev.sh bench   run the benchmarks (quick mode; --full for the long one)
# Each sets up what it needs and does nothing twice when run again.
set -euo pipefail
cd "$(dirname "$0")"

VENV=.venv
STAMP="$VENV/.installed"
TORCH_SPEC="${RENDERFARM_TORCH_SPEC:-torch==2.13.0}"  # pinned: an unpinned torch pulls the CUDA build

log() { printf '[dev] %s\n' "$*"; }

find_python() {
    local candidate
    for candidate in "${PYTHON:-}" python3 python3.13 python3.12 python3.11; do
        [[ -n "$candidate" ]] || continue
        if command -v "$candidate" >/dev/null &&
            "$candidate" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            echo "$candidate"
            return
        fi
    done
    return 1
}

ensure_python() {
    if find_python >/dev/null; then return; fi
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
        log "installing python3 and python3-venv with apt-get"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv python3-dev gcc >/dev/null
    fi
    find_python >/dev/null || { log "renderfarm needs Python 3.11 or newer with venv"; exit 1; }
}

SAMPLER_ORACLE="k-diffusion==0.1.1.post1 torchdiffeq==0.2.5"

setup() {
    # The stamp holds the hash of what was installed; the same pyproject.toml installs nothing again.
    local want
    want="$(sha256sum pyproject.toml | cut -d' ' -f1) $TORCH_SPEC $SAMPLER_ORACLE"
    if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]]; then return; fi
    ensure_python
    local python
    python=$(find_python)
    [[ -x "$VENV/bin/python" ]] || { log "creating $VENV with $python"; "$python" -m venv "$VENV"; }
    log "installing Python packages into $VENV"
    # pip's own notes (a newer pip, running as root) are not the project's lines: `./dev.sh demo` prints only those.
    export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
    "$VENV/bin/python" -m pip install -q --upgrade pip
    # torch first, pinned; RENDERFARM_TORCH_INDEX (e.g. PyTorch's CPU index) chooses where it comes from.
    "$VENV/bin/python" -m pip install -q ${RENDERFARM_TORCH_INDEX:+--index-url "$RENDERFARM_TORCH_INDEX"} "$TORCH_SPEC"
    "$VENV/bin/python" -m pip install -q -e '.[server,worker,dev]'
    # The samplers' test oracle (tests/unit/test_sampling_kdiffusion_parity.py), without its training dependencies
    # (wandb, clean-fid, kornia, torchvision...): the tests load only its sampling.py. Never imported by the farm.
    # shellcheck disable=SC2086
    "$VENV/bin/python" -m pip install -q --no-deps $SAMPLER_ORACLE
    echo "$want" >"$STAMP"
}

run_tests() {
    setup
    bash scripts/ensure-services.sh
    # The dashboard's browser tests drive Debian's chromium (tests/ui); installed when missing, a no-op after.
    bash scripts/ensure-browser.sh
    log "ruff"
    "$VENV/bin/ruff" check .
    "$VENV/bin/ruff" format --check .
    log "mypy"
    "$VENV/bin/mypy"
    log "pytest"
    "$VENV/bin/pytest" "$@"
}

command=${1:-help}
shift || true
case "$command" in
    setup) setup && bash scripts/ensure-browser.sh ;;
    test) run_tests "$@" ;;
    demo) setup && "$VENV/bin/renderfarm" demo "$@" ;;
    bench) setup && bash scripts/ensure-services.sh && "$VENV/bin/python" -m bench "$@" ;;
    *) sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'; [[ "$command" == help ]] ;;
esac
