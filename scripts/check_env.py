"""Check the environment scripts/install.sh made: ``pip check`` is clean except for the
requirements skipped on purpose (the preparation libraries installed with ``--no-deps``: their
OpenCV, torchvision and torch pins), and exactly one distribution provides ``cv2``.

Exit 1 with the offending lines otherwise."""

from __future__ import annotations

import re
import subprocess
import sys
from importlib import metadata

# (distribution, requirement it declares) pairs that install.sh skips: one OpenCV for every user
# (opencv-python-headless provides the same cv2 module); no torchvision / CUDA torch (talkfast
# re-implements the few functions used: MTCNN's NMS); audio-separator's own model-conversion and
# training dependencies are not used by the MDX inference path.
SKIPPED = {
    "mediapipe": {"opencv-contrib-python"},
    "facenet-pytorch": {"torchvision"},
    "audio-separator": {"beartype", "diffq", "julius", "ml-collections", "onnx-weekly", "onnx2torch-py313",
                        "pydub", "resampy", "rotary-embedding-torch", "samplerate", "torch"},
}
OPENCV = ("opencv-python", "opencv-python-headless", "opencv-contrib-python", "opencv-contrib-python-headless")
LINE = re.compile(r"^(\S+) \S+ (?:requires|has requirement) ([A-Za-z0-9_.\-]+)")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def main() -> int:
    out = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True).stdout
    bad = []
    for line in out.splitlines():
        if not line.strip() or line.startswith("No broken requirements"):
            continue
        m = LINE.match(line)
        if m is None or _norm(m.group(2)) not in {_norm(x) for x in SKIPPED.get(_norm(m.group(1)), ())}:
            bad.append(line)
    cv = [d for d in OPENCV if _installed(d)]
    if len(cv) != 1:
        bad.append(f"exactly one OpenCV distribution must be installed, found {cv or 'none'}")
    for line in bad:
        print(line, file=sys.stderr)
    if not bad:
        print(f"environment ok (pip check; one OpenCV: {cv[0]})")
    return 1 if bad else 0


def _installed(dist: str) -> bool:
    try:
        metadata.distribution(dist)
        return True
    except metadata.PackageNotFoundError:
        return False


if __name__ == "__main__":
    sys.exit(main())
