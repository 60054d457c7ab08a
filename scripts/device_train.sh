#!/usr/bin/env bash
# Train the embedded model in ONE call of a lent GPU machine (its python has torch but not
# diffusers/soundfile/soxr: those travel as wheels). Prepare here, on the CPU machine:
#   echo /.whl/ >> .git/info/exclude; echo /.corpus/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#       -d .whl diffusers soundfile soxr
#   .venv/bin/talkfast data build --out .corpus --identities 40 --sentences 4 --seed 0   # espeak-ng lives here
# then run on the device (carry .whl and .corpus):
#   bash scripts/device_train.sh "$OUT" [VAE_STEPS] [NET_STEPS]
# It writes $OUT/model (net.safetensors, vae/, model.json) and the training logs.
# Dry run on a CPU: DEVICE=cpu bash scripts/device_train.sh /tmp/out 2 2
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?output folder}
VAE_STEPS=${2:-3000}
NET_STEPS=${3:-20000}
DEVICE=${DEVICE:-cuda}
MODEL=${MODEL:-small}
CORPUS=${CORPUS:-.corpus}
PY=${PY:-python3}
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD/src:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
mkdir -p "$OUT"
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
"$PY" -m talkfast train vae --data "$CORPUS" --out "$OUT/run" --model "$MODEL" --steps "$VAE_STEPS" --device "$DEVICE" 2>&1 | tee "$OUT/train_vae.log"
"$PY" -m talkfast train net --data "$CORPUS" --out "$OUT/run" --model "$MODEL" --steps "$NET_STEPS" --device "$DEVICE" 2>&1 | tee "$OUT/train_net.log"
"$PY" -m talkfast train export --out "$OUT/run" --model "$MODEL" --to "$OUT/model"
rm -f "$OUT/run/"*_ckpt.pt  # optimizer state stays behind: only the model comes back
