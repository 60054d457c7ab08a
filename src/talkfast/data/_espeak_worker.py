"""One-shot libespeak-ng worker: synthesise one utterance and print samples plus events.

Run by :mod:`talkfast.data.speech` as ``python -I -S _espeak_worker.py`` (standard library only,
nothing from talkfast is imported). libespeak-ng keeps global state between utterances (voice
variant settings, noise generators, filter memories): the same text synthesised twice in one
process does not give the same samples, and a Klatt variant stays active after switching to another
voice. A fresh process per utterance makes every utterance depend on its own request only.

Protocol. stdin: one JSON object ``{"text", "voice", "rate", "pitch", "range", "wordgap", "seed",
"library"}``. stdout: one JSON header line ``{"sample_rate": int, "num_samples": int, "events":
[[type, sample, text_position, name_or_number], ...]}`` (or ``{"error": str, "kind": str}``),
then ``num_samples`` little-endian int16 samples.

Facts about the C API (espeak-ng ``speak_lib.h``, API revision 12) used here:

* ``espeak_Initialize(output, buflength, path, options)`` returns the sample rate (22050 for the
  standard voices) or -1; output 2 is ``AUDIO_OUTPUT_SYNCHRONOUS`` and option bit 0
  (``espeakINITIALIZE_PHONEME_EVENTS``) enables phoneme events, bit 15 ``DONT_EXIT``.
* The synth callback is ``int cb(short *wav, int numsamples, espeak_EVENT *events)``; the event
  array ends with an event of type 0 (``LIST_TERMINATED``).
* ``espeak_EVENT`` is ``{int type; unsigned unique_identifier; int text_position; int length;
  int audio_position /* ms */; int sample; void *user_data; union {int number; const char *name;
  char string[8];} id;}``: 40 bytes on LP64 (the pointer member is 8-aligned at offset 24, the
  union at offset 32). Phoneme events carry the mnemonic in ``id.string`` (NUL-terminated unless
  all 8 bytes are used).
* Event types: 1 word, 2 sentence, 3 mark, 4 play, 5 end (of clause), 6 message terminated,
  7 phoneme, 8 sample rate.
* ``espeak_SetParameter(param, value, relative)``: 1 rate (words/min, 80..450), 3 pitch (0..100),
  4 range (0..100), 7 word gap (units of 10 ms).
* ``espeak_Synth(text, size, position, position_type, end_position, flags, unique_id, user_data)``
  with flags ``espeakCHARS_UTF8 (1) | espeakENDPAUSE (0x1000)``; position_type 1 = characters.
"""

import ctypes
import ctypes.util
import json
import sys

EVENT_PHONEME = 7
AUDIO_OUTPUT_SYNCHRONOUS = 2
INIT_PHONEME_EVENTS = 0x0001
INIT_DONT_EXIT = 0x8000
CHARS_UTF8 = 1
END_PAUSE = 0x1000
POS_CHARACTER = 1
PARAM_RATE, PARAM_PITCH, PARAM_RANGE, PARAM_WORDGAP = 1, 3, 4, 7
EE_OK = 0


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_void_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    ]


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))


def _fail(kind, message):
    sys.stdout.write(json.dumps({"error": message, "kind": kind}) + "\n")
    sys.stdout.flush()
    return 3


def _load(name):
    candidates = [name] if name else []
    candidates += ["libespeak-ng.so.1", ctypes.util.find_library("espeak-ng"), "libespeak-ng.so"]
    for cand in candidates:
        if not cand:
            continue
        try:
            return ctypes.CDLL(cand)
        except OSError:
            continue
    return None


def main():
    request = json.loads(sys.stdin.buffer.read().decode("utf-8"))
    lib = _load(request.get("library"))
    if lib is None:
        return _fail("missing", "libespeak-ng not found")
    lib.espeak_Initialize.restype = ctypes.c_int
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_SetSynthCallback.argtypes = [_CALLBACK]
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetVoiceByName.restype = ctypes.c_int
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_SetParameter.restype = ctypes.c_int
    lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
                                 ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
    lib.espeak_Synth.restype = ctypes.c_int
    lib.espeak_Synchronize.restype = ctypes.c_int

    # espeak's noise sources draw from the C library's rand(): seed it for reproducibility.
    try:
        libc = ctypes.CDLL(None)
        libc.srand(ctypes.c_uint(int(request.get("seed", 0)) & 0xFFFFFFFF))
    except (OSError, AttributeError):
        pass

    rate = lib.espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, 0, None, INIT_PHONEME_EVENTS | INIT_DONT_EXIT)
    if rate <= 0:
        return _fail("init", "espeak_Initialize failed (espeak-ng-data missing?)")

    chunks = []
    events = []

    def on_synth(wav, numsamples, ev):
        if wav and numsamples > 0:
            chunks.append(ctypes.string_at(wav, numsamples * 2))
        if ev:
            i = 0
            while ev[i].type != 0:
                e = ev[i]
                if e.type == EVENT_PHONEME:
                    raw = bytes(e.id.string).split(b"\0", 1)[0]
                    value = raw.decode("utf-8", "replace")
                else:
                    value = int(e.id.number) if e.type in (1, 2, 5) else None
                events.append([int(e.type), int(e.sample), int(e.text_position), value])
                i += 1
        return 0

    callback = _CALLBACK(on_synth)
    lib.espeak_SetSynthCallback(callback)
    voice = str(request["voice"]).encode("utf-8")
    if lib.espeak_SetVoiceByName(voice) != EE_OK:
        return _fail("voice", f"unknown espeak-ng voice {request['voice']!r}")
    for param, key in ((PARAM_RATE, "rate"), (PARAM_PITCH, "pitch"), (PARAM_RANGE, "range"),
                       (PARAM_WORDGAP, "wordgap")):
        if request.get(key) is not None:
            lib.espeak_SetParameter(param, int(request[key]), 0)
    text = str(request["text"]).encode("utf-8")
    err = lib.espeak_Synth(text, len(text) + 1, 0, POS_CHARACTER, 0, CHARS_UTF8 | END_PAUSE, None, None)
    if err != EE_OK:
        return _fail("synth", f"espeak_Synth failed with code {err}")
    lib.espeak_Synchronize()
    pcm = b"".join(chunks)
    header = {"sample_rate": int(rate), "num_samples": len(pcm) // 2, "events": events}
    out = sys.stdout.buffer
    out.write(json.dumps(header).encode("utf-8") + b"\n")
    out.write(pcm)
    out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
