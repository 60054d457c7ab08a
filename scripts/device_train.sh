#!/usr/bin/env bash
# Train the embedded model in ONE call of a lent GPU machine (its python has torch but not
# diffusers/soundfile/soxr: those travel as wheels). Prepare here, on the CPU machine:
#   echo /.whl/ >> .git/info/exclude; echo /.corpus/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#       -d .whl diffusers soundfile soxr
#   .venv/bin/talkfast data build --out .corpus --identities 40 --sentences 4 --seed 0   # espeak-ng lives here
# then run on the device (carry .whl and .corpus):
#   bash scripts/device_train.sh "$OUT" [VAE_STEPS] [NET_STEPS] [DECODER_STEPS]
# Stages: autoencoder, decoder fine-tune on the frozen encoder (skipped with DECODER_STEPS=0),
# network (NET_ARGS: 16-frame clips, lip-region weight, motion-frame noise), export (fp16 net).
# It writes $OUT/model (net.safetensors, vae/, model.json, MODEL_CARD.md) and the training logs.
# Dry run on a CPU: DEVICE=cpu MODEL=tiny bash scripts/device_train.sh /tmp/out 2 2 2
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?output folder}
VAE_STEPS=${2:-3000}
NET_STEPS=${3:-20000}
DECODER_STEPS=${4:-3000}
NET_ARGS=${NET_ARGS:---clip-frames 16 --lip-weight 2 --motion-noise 0.25}
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
if [ "$DECODER_STEPS" -gt 0 ]; then
  "$PY" -m talkfast train vae --decoder-only --data "$CORPUS" --out "$OUT/run" --model "$MODEL" --steps "$DECODER_STEPS" \
      --device "$DEVICE" 2>&1 | tee "$OUT/train_decoder.log"
fi
# shellcheck disable=SC2086  # NET_ARGS is a list of flags
"$PY" -m talkfast train net --data "$CORPUS" --out "$OUT/run" --model "$MODEL" --steps "$NET_STEPS" --device "$DEVICE" \
    $NET_ARGS 2>&1 | tee "$OUT/train_net.log"
"$PY" -m talkfast train export --out "$OUT/run" --model "$MODEL" --to "$OUT/model" --half --data "$CORPUS"
rm -f "$OUT/run/"*_ckpt.pt  # optimizer state stays behind: only the model comes back
