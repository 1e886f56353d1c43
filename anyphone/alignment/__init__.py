"""Phone alignment with CTC models: where each phone (and word) of a known transcript starts and ends.

    from anyphone.alignment import align
    ali = align(load_model("zipa-cr-small-500k"), "x.wav", "h ə l oʊ")   # [(phone, start, end), ...]

Modules: :mod:`anyphone.alignment.ctc` (Viterbi over the CTC topology, windows for long audio, the rule that
shares blank frames between phones; numpy only) and :mod:`anyphone.alignment.align` (transcripts, eSpeak NG
G2P, the model-level API, TextGrid/CTM/TSV output). Imports no torch by itself.
"""

from anyphone.alignment.align import (
    Alignment,
    PhoneInterval,
    Transcript,
    WordInterval,
    align,
    align_log_probs,
    espeak_voice_for,
    parse_ipa,
    text_to_transcript,
)
from anyphone.alignment.ctc import (
    DEFAULT_MAX_SHARE,
    DEFAULT_SPLIT,
    AlignmentError,
    ctc_viterbi,
    ctc_viterbi_windowed,
    share_blanks,
)

__all__ = [
    "DEFAULT_MAX_SHARE",
    "DEFAULT_SPLIT",
    "Alignment",
    "AlignmentError",
    "PhoneInterval",
    "Transcript",
    "WordInterval",
    "align",
    "align_log_probs",
    "ctc_viterbi",
    "ctc_viterbi_windowed",
    "espeak_voice_for",
    "parse_ipa",
    "share_blanks",
    "text_to_transcript",
]
