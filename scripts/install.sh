#!/usr/bin/env bash
# Install cmav on a fresh Debian/Ubuntu machine: the Debian packages the stand-in data builder
# needs (FluidSynth, the FluidR3 General MIDI soundfont, and TimGM6mb, the independent font that
# `cmav evaluate robustness` renders its cross-source copy from; TiMidity++ and freepats, a third
# sample set) and a Python (>= 3.11) virtual environment in .venv with cmav and its pinned
# dependencies (plus the test tools). Safe to run again: it skips what is already in place. With
# --test it also installs chromium and chromium-driver for the rating page's browser tests.
set -euo pipefail
cd "$(dirname "$0")/.."

# --test (or CMAV_INSTALL_TEST=1): also the browser the rating page's tests drive (`make test`).
with_test=${CMAV_INSTALL_TEST:-0}
for arg in "$@"; do
  case "$arg" in
    --test) with_test=1 ;;
    *) echo "usage: $0 [--test]" >&2; exit 2 ;;
  esac
done

sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"
# apt-get needs root: without sudo, say which packages to install instead of "sudo: command not found"
need_root() {
  if [ -n "$sudo" ] && ! command -v sudo >/dev/null 2>&1; then
    echo "cmav needs these Debian packages: $*; install them as root (apt-get install -y $*) or run $0 as root" >&2
    return 1
  fi
}
# apt-get install, with apt-get update first only where a package has no candidate yet (or the
# install fails on stale package lists)
apt_install() {
  need_root "$@" || return 1
  echo "installing Debian packages: $*"
  local updated=0 p
  for p in "$@"; do
    case "$(apt-cache policy "$p" 2>/dev/null)" in
      *"Candidate: (none)"* | "") $sudo apt-get update -qq; updated=1; break ;;
    esac
  done
  # env: sudo's env_reset would drop a DEBIAN_FRONTEND set before it
  if ! $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null; then
    [ "$updated" -eq 1 ] && return 1
    $sudo apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
  fi
}

need=()
command -v fluidsynth >/dev/null 2>&1 || need+=(fluidsynth)
[ -f /usr/share/sounds/sf2/FluidR3_GM.sf2 ] || need+=(fluid-soundfont-gm)
# TimGM6mb: other recordings than FluidR3's (MuseScore General reuses FluidR3's, so it would not do)
[ -f /usr/share/sounds/sf2/TimGM6mb.sf2 ] || need+=(timgm6mb-soundfont)
# TiMidity++ and freepats: a third sample set, recorded apart from both (datasets/freepats_orchestra.cfg)
command -v timidity >/dev/null 2>&1 || need+=(timidity)
[ -d /usr/share/midi/freepats ] || need+=(freepats)
if [ ${#need[@]} -gt 0 ]; then
  apt_install "${need[@]}"
fi
if [ "$with_test" = 1 ]; then
  # Debian's chromium and its chromedriver: Selenium drives the human-evaluation page with them.
  # Ubuntu ships chromium only as a snap (no use in a container): there the browser tests skip, said here.
  browser=()
  [ -x /usr/bin/chromium ] || browser+=(chromium)
  [ -x /usr/bin/chromedriver ] || browser+=(chromium-driver)
  if [ ${#browser[@]} -gt 0 ] && ! apt_install "${browser[@]}"; then
    echo "WARNING: could not install ${browser[*]} (Debian's packages); the rating page's browser tests will be skipped" >&2
  fi
fi

# Python >= 3.11 (diffusers and transformers need it): $PYTHON if set, else python3, else python3.11-3.13
new_enough() { "$1" -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1; }
pick_python() {
  local c
  if [ -n "${PYTHON:-}" ]; then
    if new_enough "$PYTHON"; then echo "$PYTHON"; fi
    return 0
  fi
  for c in python3 python3.11 python3.12 python3.13; do
    if command -v "$c" >/dev/null 2>&1 && new_enough "$c"; then echo "$c"; return 0; fi
  done
  return 0
}
stamp=.venv/.cmav-installed
# a .venv whose creation failed (no ensurepip) or made by an older Python is made again
if [ -e .venv ] && ! { new_enough .venv/bin/python && .venv/bin/python -m pip --version >/dev/null 2>&1; }; then
  echo "removing the unusable .venv (no pip, or Python older than 3.11); it is made again"
  rm -rf .venv
fi
if [ ! -x .venv/bin/python ]; then
  python=$(pick_python)
  if [ -z "$python" ] && [ -z "${PYTHON:-}" ]; then
    apt_install python3.11 python3.11-venv
    python=$(pick_python)
  fi
  if [ -z "$python" ]; then
    echo "cmav needs Python >= 3.11; ${PYTHON:-python3} is $(${PYTHON:-python3} --version 2>&1). Set PYTHON=/path/to/python3.11" >&2
    exit 1
  fi
  # Debian and Ubuntu keep venv's pip bootstrap (ensurepip) in the python3[.x]-venv package
  "$python" -c 'import ensurepip' >/dev/null 2>&1 || apt_install "$(basename "$python")-venv"
  echo "creating .venv with $($python --version)"
  "$python" -m venv .venv
fi
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "installing cmav and its Python dependencies into .venv (first time: a few minutes)"
  .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[dev]"
  # compile librosa's cached numba kernels now, in one process: two cmav runs filling a cold
  # cache at once can crash (numba#10128; cmav/features/numba_cache.py)
  .venv/bin/python -m cmav.features.numba_cache
  touch "$stamp"
fi
