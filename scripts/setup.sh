#!/usr/bin/env bash
# Idempotent setup: a virtual environment with torch named explicitly (so pip never pulls a
# multi-GB CUDA build by accident) and this package with its dependencies, in one pip resolve;
# meanwhile, in the background, the Debian packages the PDF needs that are missing, when this
# machine allows it.
#   PYTHON, TORCH_SPEC  the interpreter and the torch release of the new venv
#   PIN                 more requirements installed with the package (make test-stacks:
#                       transformers==4.57.6, the lowest tested)
#   WHEELS              a folder that keeps torch's wheels between runs (pip's own cache
#                       stays empty for the registry's CUDA wheels here)
set -euo pipefail
VENV="${1:-.venv}"
PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
PIN="${PIN:-}"
WHEELS="${WHEELS:-}"
say() { echo "[setup ${SECONDS}s] $*"; }
quiet() { "$@" 2>&1 | grep -v "^WARNING: Location" || true; }

# The Debian packages for the PDF download and install in the background while pip works
# (two registries, nothing fetched twice); their log is shown when setup ends.
APT_LOG="$(mktemp)"
apt_pid=""
need=()
command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 \
  || command -v google-chrome >/dev/null 2>&1 || need+=(chromium)
# (grep reads all of fc-list's output: with -q it would stop at the first match, fc-list
# would die of SIGPIPE, and pipefail would count the font as missing)
fc-list : family 2>/dev/null | grep -i "Noto Sans CJK" >/dev/null || need+=(fonts-noto-cjk)
command -v pdftotext >/dev/null 2>&1 || need+=(poppler-utils)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing Debian packages for the PDF in the background: ${need[*]}"
    (
      if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null; }; then
        say "apt-get failed: the report will be HTML only until ${need[*]} are installed"
      fi
    ) >"$APT_LOG" 2>&1 &
    apt_pid=$!
  else
    say "not root or no apt-get: install ${need[*]} yourself for the PDF (the HTML needs nothing more)"
  fi
fi

PY="$VENV/bin/python"
if [ ! -x "$PY" ]; then
  # A torch already importable here (a CUDA build, or torch + torch_npu on an Ascend host) is
  # kept: the venv then sees the system site-packages instead of installing its own torch.
  if "$PYTHON" -c "import torch" 2>/dev/null; then
    say "torch is importable from $PYTHON: creating $VENV with system site-packages"
    "$PYTHON" -m venv --system-site-packages "$VENV"
  else
    say "creating $VENV"
    "$PYTHON" -m venv "$VENV"
  fi
  quiet "$PY" -m pip install -q --upgrade pip  # once, in the new venv
fi
# the distribution was called `helpers` before: an old editable install of it would shadow this one
"$PY" -m pip show -q helpers >/dev/null 2>&1 && quiet "$PY" -m pip uninstall -q -y helpers
# shellcheck disable=SC2086  # PIN is a list of requirements
if "$PY" -c "import torch" 2>/dev/null; then
  say "torch $("$PY" -W ignore -c 'import torch; print(torch.__version__)') already importable: not reinstalling"
  say "installing the helpers package and its dependencies${PIN:+ with $PIN}"
  quiet "$PY" -m pip install -q -e ".[dev]" $PIN
elif [ -n "$WHEELS" ]; then  # fetch what the folder lacks, then install torch from it alone
  say "installing $TORCH_SPEC from $WHEELS, then the helpers package${PIN:+ with $PIN}"
  quiet "$PY" -m pip download -q -d "$WHEELS" "$TORCH_SPEC"
  quiet "$PY" -m pip install -q --no-index --find-links "$WHEELS" "$TORCH_SPEC"
  quiet "$PY" -m pip install -q -e ".[dev]" $PIN
else  # one resolve: torch named explicitly, then the package's dependencies around it
  say "installing $TORCH_SPEC and the helpers package with its dependencies${PIN:+ with $PIN}"
  # bytecode compiled here, once: where PYTHONDONTWRITEBYTECODE is set (as in many images)
  # Python never writes it later, and every run would compile torch and transformers again
  quiet "$PY" -m pip install -q "$TORCH_SPEC" -e ".[dev]" $PIN
fi
"$PY" -W ignore -c "import torch" || { say "torch did not install ($TORCH_SPEC); set TORCH_SPEC"; exit 1; }
"$PY" -c "import helpers.runner.pipeline, papermill, nbconvert, transformers" \
  || { say "the package did not install; see the pip output above"; exit 1; }
# librosa (the tests' independent mel oracle) compiles its numba kernels the first time its
# spectrum and util modules load, 13-16 s on 2 cores, and caches them beside its sources in this
# venv: compiled here, once per venv, as pip compiles bytecode, not by the first `make test`.
numba_pid=""
if "$PY" -c "import librosa" 2>/dev/null; then
  "$PY" -W ignore -c "import numpy, librosa; librosa.feature.melspectrogram(y=numpy.zeros(4096, 'float32'), sr=16000)" \
    >/dev/null 2>&1 &
  numba_pid=$!
fi
# The report's notebooks run in the kernel of this environment's Python.
"$PY" -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (report)" >/dev/null
[ -z "$numba_pid" ] || wait "$numba_pid" || say "librosa's numba kernels did not compile here: the first test that uses librosa compiles them"

if [ -n "$apt_pid" ]; then
  wait "$apt_pid" || true
  cat "$APT_LOG"
fi
rm -f "$APT_LOG"
say "done"
