"""ZIPA-compatible IPA tokenizer: one token per Unicode code point.

Token ids (vocab 127, identical to ZIPA's ``ipa_simplified/tokens.txt``): ``<blk>``=0, ``<sos/eos>``=1,
``<unk>``=2, ``▁``=3, then the 123 IPA symbols of :data:`anyphone.text.ipa.INVENTORY` in ZIPA's order.

:class:`IpaTokenizer` needs only a ``tokens.txt`` (icefall format, ``token id`` per line); it does not
need SentencePiece.  :func:`build_sentencepiece_model` writes the matching ``unigram_127.model`` for
tools that want one (``local/prepare_lang.py``).  A copy of tokens.txt ships inside the package
(``anyphone/text/tokens.txt``) so that inference works from a pip install: :meth:`IpaTokenizer.default`.

This module must not import torch.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from anyphone.text.ipa import INVENTORY

__all__ = [
    "BLANK",
    "SOS_EOS",
    "SPECIAL_TOKENS",
    "UNK",
    "WORD_SEP",
    "IpaTokenizer",
    "build_sentencepiece_model",
    "default_lang_dir",
    "default_token_list",
    "read_tokens",
    "write_tokens",
]

BLANK = "<blk>"
SOS_EOS = "<sos/eos>"
UNK = "<unk>"
WORD_SEP = "\u2581"  # "▁", SentencePiece's whitespace piece; our labels contain no spaces
SPECIAL_TOKENS: tuple[str, ...] = (BLANK, SOS_EOS, UNK, WORD_SEP)

MODEL_NAME = "unigram_127.model"
TOKENS_NAME = "tokens.txt"


def default_token_list() -> list[str]:
    """The 127 tokens in id order: the 4 specials, then ZIPA's 123 IPA symbols."""
    return list(SPECIAL_TOKENS) + list(INVENTORY)


def default_lang_dir() -> Path:
    """The lang dir shipped inside the package (holds ``tokens.txt`` only, no SentencePiece model)."""
    return Path(__file__).resolve().parent


def read_tokens(path: str | Path) -> list[str]:
    """Read an icefall ``tokens.txt`` (``token id`` per line) into a list indexed by id.

    Ids must be exactly 0..N-1 (in any line order).  Raises ValueError naming the file and the line.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: tokens file not found (expected icefall 'token id' lines)")
    table: dict[int, str] = {}
    try:
        # read_text turns \r\n and \r into \n; split on "\n" only, since a token may itself be a character that
        # str.splitlines() breaks at (\x1c, \x85, \u2028, ...)
        lines = path.read_text(encoding="utf-8").split("\n")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); expected 'token id' lines") from None
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        # split on the last space only: a token could in principle be a space-like symbol
        token, sep, idx = line.rpartition(" ")
        if not sep or not token or not idx.lstrip("-").isdigit():
            raise ValueError(f"{path}:{lineno}: bad line {line!r}, expected 'token id'")
        i = int(idx)
        if i in table:
            raise ValueError(f"{path}:{lineno}: id {i} given twice ({table[i]!r} and {token!r})")
        table[i] = token
    if sorted(table) != list(range(len(table))):
        missing = sorted(set(range(len(table))) - set(table))[:5]
        raise ValueError(f"{path}: ids are not contiguous from 0 (missing e.g. {missing}); expected 0..N-1 "
                         "without gaps")
    tokens = [table[i] for i in range(len(table))]
    if len(set(tokens)) != len(tokens):
        raise ValueError(f"{path}: duplicate tokens, expected each token once")
    return tokens


def write_tokens(path: str | Path, tokens: Sequence[str]) -> None:
    """Write ``tokens`` as icefall ``tokens.txt`` (``token id`` per line, id order)."""
    with Path(path).open("w", encoding="utf-8") as f:
        f.writelines(f"{tok} {i}\n" for i, tok in enumerate(tokens))


class IpaTokenizer:
    """Maps normalised IPA strings to token ids and back, one id per code point.

    ``encode`` does NOT normalise: pass text from :func:`anyphone.text.ipa.normalize_ipa`.  Code points
    outside the vocabulary map to ``<unk>``; a space maps to ``▁`` (as SentencePiece would).
    """

    def __init__(self, id2token: Sequence[str], source: str | Path | None = None) -> None:
        self.id2token: list[str] = list(id2token)
        self.token2id: dict[str, int] = {t: i for i, t in enumerate(self.id2token)}
        self.source = source
        for special in (BLANK, UNK):
            if special not in self.token2id:
                raise ValueError(f"{source or 'token list'}: no {special!r} token, expected one")
        self.blank_id: int = self.token2id[BLANK]
        self.unk_id: int = self.token2id[UNK]
        self.sos_eos_id: int | None = self.token2id.get(SOS_EOS)
        self.word_sep_id: int | None = self.token2id.get(WORD_SEP)
        # tokens that decode to nothing
        self._silent = {i for i in (self.blank_id, self.sos_eos_id, self.word_sep_id, self.unk_id)
                        if i is not None}
        # single-code-point tokens usable by encode (specials are multi-character or ▁)
        self._char2id = {t: i for t, i in self.token2id.items() if len(t) == 1 and t != WORD_SEP}
        if self.word_sep_id is not None:
            self._char2id[" "] = self.word_sep_id

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def from_tokens_file(cls, path: str | Path) -> IpaTokenizer:
        """Load an icefall tokens.txt (e.g. a published ZIPA one); no SentencePiece model needed."""
        return cls(read_tokens(path), source=Path(path))

    @classmethod
    def from_dir(cls, lang_dir: str | Path = "ipa_simplified") -> IpaTokenizer:
        """Load ``<lang_dir>/tokens.txt`` (the ``unigram_127.model`` beside it is not needed)."""
        lang_dir = Path(lang_dir)
        tokens = lang_dir / TOKENS_NAME
        if not tokens.is_file():
            raise FileNotFoundError(
                f"{tokens}: not found; expected a lang dir made by local/prepare_lang.py "
                f"(or use IpaTokenizer.default())"
            )
        return cls.from_tokens_file(tokens)

    @classmethod
    def default(cls) -> IpaTokenizer:
        """The ZIPA vocabulary from the tokens.txt shipped inside the package."""
        return cls.from_dir(default_lang_dir())

    # ---- properties ---------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return len(self.id2token)

    def __len__(self) -> int:
        return len(self.id2token)

    def __repr__(self) -> str:
        return f"IpaTokenizer(vocab_size={self.vocab_size}, source={str(self.source)!r})"

    # ---- encode / decode ----------------------------------------------------------------------
    def encode_one(self, text: str) -> list[int]:
        """Ids of one normalised string: one id per code point, unknown code points -> unk_id."""
        get = self._char2id.get
        unk = self.unk_id
        return [get(ch, unk) for ch in text]

    def unknown_symbols(self, text: str) -> set[str]:
        """The code points of a normalised string that :meth:`encode_one` would turn into ``<unk>``."""
        known = self._char2id
        return {ch for ch in text if ch not in known}

    def encode(self, texts: list[str]) -> list[list[int]]:
        """Ids for a batch of normalised IPA strings (no normalisation is done here)."""
        if isinstance(texts, str):
            raise TypeError(f"encode expects a list of strings, got the str {texts[:30]!r}; wrap it in a list")
        return [self.encode_one(t) for t in texts]

    def decode(self, ids: Iterable[int]) -> str:
        """String for a sequence of ids; <blk>, <sos/eos>, <unk> and ▁ produce nothing."""
        out: list[str] = []
        n = len(self.id2token)
        for i in ids:
            i = int(i)
            if not 0 <= i < n:
                raise ValueError(f"token id {i} out of range, expected 0..{n - 1} ({self.source})")
            if i not in self._silent:
                out.append(self.id2token[i])
        return "".join(out)

    def decode_batch(self, batch: Iterable[Iterable[int]]) -> list[str]:
        """:meth:`decode` for each sequence."""
        return [self.decode(ids) for ids in batch]


def build_sentencepiece_model(tokens: Sequence[str] | None = None) -> bytes:
    """Serialized SentencePiece unigram ModelProto whose piece ids equal the token ids.

    - ``<blk>`` and ``<sos/eos>`` are CONTROL pieces (never produced from text, decode to nothing);
      ``<unk>`` is the UNKNOWN piece; every other token is a NORMAL single-code-point piece, all with the
      same score, so encoding yields exactly one piece per code point.
    - identity normaliser, no dummy-prefix ``▁``, no whitespace collapsing: ``encode`` of a normalised
      string gives one id per code point; unknown code points give ``<unk>``.
    """
    from sentencepiece import sentencepiece_model_pb2 as pb  # lazy: only prepare_lang needs it

    tokens = list(tokens) if tokens is not None else default_token_list()
    m = pb.ModelProto()
    n_normal = sum(1 for t in tokens if t not in (BLANK, SOS_EOS, UNK))
    score = -float(n_normal)  # any equal score works: all pieces are single code points
    for tok in tokens:
        p = m.pieces.add()
        p.piece = tok
        if tok in (BLANK, SOS_EOS):
            p.type = pb.ModelProto.SentencePiece.CONTROL
            p.score = 0.0
        elif tok == UNK:
            p.type = pb.ModelProto.SentencePiece.UNKNOWN
            p.score = 0.0
        else:
            p.type = pb.ModelProto.SentencePiece.NORMAL
            p.score = score

    ts = m.trainer_spec
    ts.model_type = pb.TrainerSpec.UNIGRAM
    ts.vocab_size = len(tokens)
    ts.unk_id = tokens.index(UNK)
    ts.bos_id = -1
    ts.eos_id = -1
    ts.pad_id = -1
    ts.unk_piece = UNK
    ts.byte_fallback = False
    ts.character_coverage = 1.0
    ts.split_by_whitespace = False

    for spec in (m.normalizer_spec, m.denormalizer_spec):
        spec.name = "identity"
        spec.precompiled_charsmap = b""
        spec.add_dummy_prefix = False
        spec.remove_extra_whitespaces = False
        spec.escape_whitespaces = True
    return m.SerializeToString()
