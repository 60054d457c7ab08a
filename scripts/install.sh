#!/usr/bin/env bash
# Set up talkfast on a fresh machine: system packages (Debian), a virtualenv in .venv with the
# CPU build of torch 2.13.0 and everything else, talkfast itself (editable) with test extras.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
# System packages, all optional for generation, so a failure only warns:
#   espeak-ng speaks the synthetic corpus ('talkfast data');
#   chromium is the browser the web demo's test drives headless (Playwright never downloads one).
missing=()
command -v espeak-ng >/dev/null 2>&1 || missing+=(espeak-ng)
command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ] || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null) \
      || echo "warning: could not install ${missing[*]} (espeak-ng: 'talkfast data'; chromium: the demo's browser test)" >&2
  else
    echo "warning: ${missing[*]} missing; install with your package manager" \
         "(espeak-ng: 'talkfast data'; chromium: the demo's browser test)" >&2
  fi
fi

[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch first and pinned: a bare 'torch' would pull a multi-GB CUDA build.
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[test]"
.venv/bin/python -m pip check
echo "talkfast installed in .venv — try: .venv/bin/talkfast doctor"
