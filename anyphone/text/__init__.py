"""IPA text: normalisation to ZIPA's 123-symbol inventory, phone segmentation, tokenizer (no torch)."""

from anyphone.text.ipa import (
    INVENTORY,
    MODIFIERS,
    has_language_switch,
    is_normalized,
    normalize_ipa,
    phones_to_string,
    segment_phones,
)
from anyphone.text.tokenizer import IpaTokenizer, default_lang_dir

__all__ = [
    "INVENTORY",
    "MODIFIERS",
    "IpaTokenizer",
    "default_lang_dir",
    "has_language_switch",
    "is_normalized",
    "normalize_ipa",
    "phones_to_string",
    "segment_phones",
]
