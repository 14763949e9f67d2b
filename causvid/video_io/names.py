"""File names from prompts: safe on Linux, macOS and Windows, a pure function of the text."""
from __future__ import annotations

import unicodedata

_RESERVED_CHARS = frozenset('<>:"/\\|?*')
_WINDOWS_RESERVED = frozenset(
    ["CON", "PRN", "AUX", "NUL"]
    + [f"{p}{d}" for p in ("COM", "LPT") for d in "123456789\u00b9\u00b2\u00b3"]
)


def safe_filename(text: str, max_len: int = 100, *, max_bytes: int = 200) -> str:
    """Turn (the first ``max_len`` characters of) a prompt into a file name.

    The result is safe as a single path component on Linux, macOS and Windows
    and is a pure function of ``text`` (deterministic, no counters):

    * Unicode is NFC-normalised; letters of any script, digits, punctuation
      other than the reserved ones, and emoji are kept;
    * ``< > : " / \\ | ? *`` and lone surrogates become ``_``;
    * control characters, line breaks and tabs become spaces, runs of
      whitespace collapse to one space; invisible format characters (zero-width
      joiners, bidi overrides, BOM) are dropped;
    * leading and trailing spaces and dots are removed (Windows drops trailing
      ones silently; leading dots would make a hidden file, or ``.``/``..``);
    * the UTF-8 encoding is cut to at most ``max_bytes`` bytes (at a character
      boundary) so that an extension and an index still fit under the 255-byte
      limit of common file systems, even for CJK text;
    * Windows device names (``CON``, ``nul``, ``COM1``, ``LPT9``, ..., also
      followed by an extension) get a ``_`` appended to the stem;
    * an empty result becomes ``"untitled"``.

    No extension is added.  Different prompts can map to the same name (same
    first ``max_len`` characters): callers that need unique names should add
    the prompt index.
    """
    if not isinstance(text, str):
        raise TypeError(f"safe_filename expects str, got {type(text).__name__}")
    if max_len < 1 or max_bytes < 1:
        raise ValueError("max_len and max_bytes must be >= 1")
    text = unicodedata.normalize("NFC", text)[:max_len]
    out = []
    for ch in text:
        cat = unicodedata.category(ch)
        if ch in _RESERVED_CHARS or cat == "Cs":
            out.append("_")
        elif cat in ("Cc", "Zl", "Zp") or ch.isspace():
            out.append(" ")
        elif cat == "Cf":
            continue
        else:
            out.append(ch)
    name = " ".join("".join(out).split()).strip(" .")
    encoded = name.encode("utf-8")
    if len(encoded) > max_bytes:
        name = encoded[:max_bytes].decode("utf-8", errors="ignore").strip(" .")
    if not name:
        return "untitled"
    stem = name.split(".", 1)[0].rstrip(" ")
    if stem.upper() in _WINDOWS_RESERVED:
        name = stem + "_" + name[len(stem):]
    return name
