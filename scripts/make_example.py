"""Write the bundled synthetic example (portrait + speech) from held-out corpus samples.

    python scripts/make_example.py CORPUS SAMPLE_ID [SAMPLE_ID ...]

The samples must belong to one identity of the corpus's test split (an identity and sentences the
embedded model never saw in training). Their speech is joined with 0.3 s pauses. Writes
src/talkfast/assets/examples/synthetic_portrait.png, synthetic_speech.wav and synthetic.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from talkfast.data.corpus import load_corpus
from talkfast.io.audio import save_wav

DEST = Path(__file__).resolve().parent.parent / "src" / "talkfast" / "assets" / "examples"


def main(corpus: str, ids: list[str]) -> None:
    samples = {s.id: s for s in load_corpus(corpus, "test")}
    missing = [i for i in ids if i not in samples]
    if missing:
        sys.exit(f"not in the test split of {corpus}: {', '.join(missing)}")
    chosen = [samples[i] for i in ids]
    if len({s.identity_id for s in chosen}) != 1:
        sys.exit("the samples must share one identity (one portrait, one voice)")
    first = chosen[0]
    audios = [s.audio() for s in chosen]
    rate = audios[0].sample_rate
    pause = np.zeros(int(0.3 * rate), np.float32)
    parts = []
    for a in audios:
        parts += [a.samples.astype(np.float32), pause]
    speech = np.concatenate(parts[:-1])
    DEST.mkdir(parents=True, exist_ok=True)
    Image.fromarray(first.reference()).save(DEST / "synthetic_portrait.png", optimize=True)
    save_wav(DEST / "synthetic_speech.wav", speech, rate)
    manifest = json.loads((Path(corpus) / "corpus.json").read_text())
    build = {k: manifest[k] for k in ("seed", "num_identities", "sentences_per_identity", "size", "test_fraction")}
    info = {"corpus": build,
            "samples": ids, "identity": first.identity_id, "voice": first.meta["voice"],
            "texts": [s.text for s in chosen], "seconds": round(len(speech) / rate, 3),
            "face_box": first.face_boxes()[0].tolist(), "lip_box": first.mouth_boxes()[0].tolist()}
    (DEST / "synthetic.json").write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps(info, indent=2))


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2:])
