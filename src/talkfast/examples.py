"""The inputs bundled with talkfast (``talkfast/assets/examples``).

- ``PORTRAIT`` / ``SPEECH``: the default inputs of ``generate``, ``bench`` and the demo. A synthetic
  person of the corpus's held-out split speaking two held-out sentences (``synthetic.json`` says
  which; ``scripts/make_example.py`` rebuilds them): the embedded model's own domain, never seen in
  its training.
- ``PHOTO`` / ``PHOTO_SPEECH``: a real photograph (scikit-image's public-domain astronaut) and an
  espeak-ng recording, for real-face checkpoints such as Hallo's.
"""

from pathlib import Path

EXAMPLES_DIR = Path(__file__).resolve().parent / "assets" / "examples"
PORTRAIT = EXAMPLES_DIR / "synthetic_portrait.png"
SPEECH = EXAMPLES_DIR / "synthetic_speech.wav"
PHOTO = EXAMPLES_DIR / "portrait.png"
PHOTO_SPEECH = EXAMPLES_DIR / "speech.wav"
