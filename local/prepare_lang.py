#!/usr/bin/env python3
"""Write the ZIPA-compatible lang dir (vocab 127, one token per IPA code point).

    python local/prepare_lang.py --lang-dir ipa_simplified

writes
  <lang-dir>/tokens.txt          icefall format, "token id" per line: <blk>=0 <sos/eos>=1 <unk>=2 ▁=3, then
                                 ZIPA's 123 IPA symbols in ZIPA's order
  <lang-dir>/unigram_127.model   SentencePiece unigram model with exactly those ids (identity normaliser,
                                 no dummy-prefix ▁), built directly as a ModelProto
  <lang-dir>/unigram_127.vocab   "piece<TAB>score" per line, as spm_train writes it
  <lang-dir>/phone_set.txt       the 123 symbols: "symbol<TAB>kind<TAB>U+XXXX<TAB>Unicode name"

and checks the result: the model's ids equal tokens.txt, every symbol encodes to one id, tokens.txt equals
the copy shipped in the package (anyphone/text/tokens.txt) and, when given, a reference tokens.txt.
There is no separate no-diacritics vocabulary: --remove-diacritics is done by normalisation.
"""

from __future__ import annotations

import argparse
import sys
import unicodedata
from pathlib import Path

from anyphone.text.ipa import INVENTORY, MODIFIERS
from anyphone.text.tokenizer import (
    MODEL_NAME,
    TOKENS_NAME,
    build_sentencepiece_model,
    default_lang_dir,
    default_token_list,
    read_tokens,
    write_tokens,
)


def get_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lang-dir", type=Path, default=Path("ipa_simplified"), help="output directory")
    p.add_argument("--reference-tokens", type=Path, default=None,
                   help="optional tokens.txt to compare with id for id (e.g. ZIPA's)")
    p.add_argument("--update-package-copy", action="store_true",
                   help="also (re)write anyphone/text/tokens.txt instead of only comparing with it")
    return p.parse_args()


def write_phone_set(path: Path) -> None:
    with path.open("w", encoding="utf-8") as f:
        for sym in INVENTORY:
            kind = "modifier" if sym in MODIFIERS else "base"
            name = unicodedata.name(sym, "?").lower()
            f.write(f"{sym}\t{kind}\tU+{ord(sym):04X}\t{name}\n")


def write_vocab(path: Path, model: bytes) -> None:
    from sentencepiece import sentencepiece_model_pb2 as pb

    m = pb.ModelProto()
    m.ParseFromString(model)
    with path.open("w", encoding="utf-8") as f:
        for piece in m.pieces:
            f.write(f"{piece.piece}\t{piece.score:g}\n")


def check(lang_dir: Path, tokens: list[str]) -> list[str]:
    """Return a list of problems (empty if all is well)."""
    import sentencepiece as spm

    problems = []
    sp = spm.SentencePieceProcessor(model_file=str(lang_dir / MODEL_NAME))
    if sp.get_piece_size() != len(tokens):
        problems.append(f"{lang_dir / MODEL_NAME}: {sp.get_piece_size()} pieces, expected {len(tokens)}")
    for i, tok in enumerate(tokens):
        if sp.id_to_piece(i) != tok:
            problems.append(f"{lang_dir / MODEL_NAME}: id {i} is {sp.id_to_piece(i)!r}, expected {tok!r}")
    text = "".join(INVENTORY)
    ids = sp.encode(text)
    if ids != list(range(4, 4 + len(INVENTORY))):
        problems.append(f"{lang_dir / MODEL_NAME}: encoding the inventory gave {ids[:8]}..., expected 4..126")
    if read_tokens(lang_dir / TOKENS_NAME) != tokens:
        problems.append(f"{lang_dir / TOKENS_NAME}: does not read back as written")
    return problems


def main() -> int:
    args = get_args()
    lang_dir: Path = args.lang_dir
    lang_dir.mkdir(parents=True, exist_ok=True)
    tokens = default_token_list()

    write_tokens(lang_dir / TOKENS_NAME, tokens)
    model = build_sentencepiece_model(tokens)
    (lang_dir / MODEL_NAME).write_bytes(model)
    write_vocab(lang_dir / MODEL_NAME.replace(".model", ".vocab"), model)
    write_phone_set(lang_dir / "phone_set.txt")

    package_copy = default_lang_dir() / TOKENS_NAME
    if args.update_package_copy:
        write_tokens(package_copy, tokens)

    problems = check(lang_dir, tokens)
    if not package_copy.is_file() or read_tokens(package_copy) != tokens:
        problems.append(f"{package_copy}: differs from {lang_dir / TOKENS_NAME}; rerun with --update-package-copy")
    if args.reference_tokens is not None:
        ref = read_tokens(args.reference_tokens)
        if ref != tokens:
            diff = [(i, a, b) for i, (a, b) in enumerate(zip(ref, tokens)) if a != b][:5]
            problems.append(f"{args.reference_tokens}: {len(ref)} tokens, differs from ours at {diff}")
    for p in problems:
        print(f"ERROR {p}", file=sys.stderr)
    if not problems:
        print(f"wrote {lang_dir}/{{{TOKENS_NAME},{MODEL_NAME},unigram_127.vocab,phone_set.txt}}: "
              f"{len(tokens)} tokens, checks passed")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
