#!/usr/bin/env bash
# Install cmav on a fresh Debian/Ubuntu machine: the Debian packages the stand-in data builder
# needs (FluidSynth, the FluidR3 General MIDI soundfont, and TimGM6mb, the independent font that
# `cmav evaluate robustness` renders its cross-source copy from) and a Python virtual environment in .venv
# with cmav and its pinned dependencies (plus the test tools). Safe to run again: it skips what
# is already in place. With --test it also installs chromium and chromium-driver for the tests.
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
# apt-get install, with apt-get update first only where a package has no candidate yet (or the
# install fails on stale package lists)
apt_install() {
  echo "installing Debian packages: $*"
  local updated=0 p
  for p in "$@"; do
    case "$(apt-cache policy "$p" 2>/dev/null)" in
      *"Candidate: (none)"* | "") $sudo apt-get update -qq; updated=1; break ;;
    esac
  done
  if ! DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null; then
    [ "$updated" -eq 1 ] && return 1
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null
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
if [ "$with_test" = 1 ]; then
  # Debian's chromium and its chromedriver: Selenium drives the human-evaluation page with them
  [ -x /usr/bin/chromium ] || need+=(chromium)
  [ -x /usr/bin/chromedriver ] || need+=(chromium-driver)
fi
if [ ${#need[@]} -gt 0 ]; then
  apt_install "${need[@]}"
fi

python=${PYTHON:-python3}
stamp=.venv/.cmav-installed
if [ ! -x .venv/bin/python ]; then
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
