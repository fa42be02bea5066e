#!/usr/bin/env bash
# Make sure a Chromium the dashboard's browser tests (tests/ui) can drive is installed: Debian's `chromium`,
# installed with apt-get (as root, on Debian/Ubuntu) when missing. Playwright drives it through `executable_path`;
# its own browser download is never used. Safe to run again: it does nothing when the browser is there.
set -euo pipefail

log() { printf '[browser] %s\n' "$*"; }

if [[ -n "${RENDERFARM_TEST_CHROMIUM:-}" ]] || command -v chromium >/dev/null || command -v chromium-browser >/dev/null; then
    exit 0
fi
if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null; then
    log "chromium is missing and this is not a Debian machine run as root: install Chromium yourself (or set"
    log "RENDERFARM_TEST_CHROMIUM to its executable), then run again"
    exit 1
fi
log "installing chromium with apt-get"
DEBIAN_FRONTEND=noninteractive apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
command -v chromium >/dev/null || { log "apt-get installed no chromium executable"; exit 1; }
