"""Python API for phone recognition: load a model from anywhere, recognise audio, get Allosaurus-style text.

    from anyphone.inference.api import load_model
    rec = load_model("zipa-cr-small-500k")            # published name (downloaded once), .pth, exp dir, .onnx
    rec.recognize("sample.wav")                        # 'æ l u s ɔ ɹ s'
    rec.recognize("sample.wav", timestamp=True)        # '0.190 0.330 æ\\n0.330 0.450 l\\n...' (start end)
    rec.recognize("sample.wav", topk=3)                # 'æ (0.577) ɛ (0.128) <blk> (0.103) | l (0.754) ...'
    rec.inference([wave1, wave2])                      # ZIPA-style batch call on 16 kHz arrays -> list[str]

Output conventions (those of Allosaurus ``python -m allosaurus.run``):

* plain: phones separated by single spaces; a phone is a base symbol plus its modifiers
  (:func:`anyphone.text.ipa.segment_phones`), so ``tʰ`` is one phone made of two model tokens;
* ``timestamp=True``: one line per phone, ``start end phone`` in seconds with 3 decimals: how long the phone
  lasts, not how wide its spike is. The recognised phones are aligned to the frames (for greedy CTC search the
  decoded path is the Viterbi alignment of its own output; frame shift 20 ms for CR-CTC, 40 ms for
  transducers, whose tokens take one frame each), each phone's core is its tokens' frame run, and the blank
  frames between phones are shared out by the rule of :func:`anyphone.alignment.ctc.share_blanks` (half of a
  gap to each neighbour, at most 0.1 s each; the rest of a longer gap is a pause). For the phones of a known
  transcript use :meth:`PhoneRecognizer.align`;
* ``topk=K`` (K > 1): for each emitting frame (one per model token, not per phone) the K most probable tokens
  of that frame, ``tok (0.577) tok (0.128) ...``, frames separated by `` | ``; ``<blk>`` may appear, as in
  Allosaurus. With ``timestamp=True`` as well, one line per frame: ``start duration tok (p) tok (p) ...``.

Long audio is cut into ``chunk_seconds`` windows overlapping by ``overlap_seconds``; each window keeps the
frames of its own half of each overlap, so results and timestamps join without seams and memory stays bounded.
Digitally silent input (peak below 1e-4) is not decoded: the result is empty and ``result.silent`` is set, with
a note in ``result.notes`` (the CLI prints it on stderr).

The API lives in one module per concept; this module gathers their public names:

- :mod:`anyphone.inference.results`: :class:`RecognitionResult`, :class:`PhoneSegment`, :class:`TokenFrame`;
- :mod:`anyphone.inference.recognizer`: :class:`PhoneRecognizer` (windows, batching, greedy search);
- :mod:`anyphone.inference.features`: the ZIPA fbank front end;
- :mod:`anyphone.inference.priors`: :func:`read_prior`;
- :mod:`anyphone.inference.loading`: :func:`load_model`, :class:`CheckpointShapeError`;
- :mod:`anyphone.families`: :func:`config_from_state_dict` (the family and configuration of a state_dict);
- :mod:`anyphone.decoding.options`: :class:`DecodeOptions` (``emit = exp(blank_penalty)``).

Importing it imports torch and the model code, never the training stack (anyphone.training, optim).
"""

from anyphone.decoding.options import DecodeOptions
from anyphone.families import config_from_state_dict
from anyphone.inference.loading import DEFAULT_MODEL, CheckpointShapeError, load_model
from anyphone.inference.priors import read_prior
from anyphone.inference.recognizer import PhoneRecognizer
from anyphone.inference.results import PhoneSegment, RecognitionResult, TokenFrame

__all__ = [
    "DEFAULT_MODEL",
    "CheckpointShapeError",
    "DecodeOptions",
    "PhoneRecognizer",
    "PhoneSegment",
    "RecognitionResult",
    "TokenFrame",
    "config_from_state_dict",
    "load_model",
    "read_prior",
]
