"""Text hygiene at every entrance: how user text (seed files, seed datasets, gap-statistics pairs) is
decoded and cleaned before anything else sees it.

One job: bytes -> lines (signature handled: UTF-8 with or without BOM, UTF-16/32 with a BOM), and
text -> clean text (line endings and Unicode NFC normalised, zero-width and control characters
dropped, whitespace collapsed). Every change is counted in a `TextChanges`, so the seed
statistics of the manifest and card say what was done to the user's text. Duplicates are
detected on `dedup_key` of the clean text, so an invisible difference never hides a duplicate.
"""

from __future__ import annotations

import codecs
import unicodedata
from dataclasses import dataclass, fields
from pathlib import Path

MAX_LINE_BYTES = 64 * 1024  # no caption seed is this long: such a line is a broken file, not a seed

# (signature, codec) — UTF-32 before UTF-16: the UTF-32-LE signature starts with the UTF-16-LE one.
_SIGNATURES = (
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)
# Invisible characters editors and scrapers leave in text; they change ids and hide duplicates.
ZERO_WIDTH = frozenset("\u200b\u200c\u200d\u2060\ufeff\u180e")
_KEEP_AS_SPACE = frozenset("\t\n\r\x0b\x0c\x1c\x1d\x1e\x1f\x85")  # control chars that str.split() treats as spaces


class TextError(ValueError):
    """User text that cannot be read; the message names the file, line and column."""


@dataclass
class TextChanges:
    """How many texts (lines, cells) each kind of cleaning changed."""

    bom_removed: int = 0
    utf16_decoded: int = 0  # files read as UTF-16/32 thanks to their signature
    crlf_normalised: int = 0
    nfc_changed: int = 0
    zero_width_removed: int = 0
    control_removed: int = 0
    whitespace_collapsed: int = 0

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def decode_bytes(raw: bytes, where: str, changes: TextChanges) -> str:
    """The text of a file's bytes; the signature (BOM) picks the codec and is dropped."""
    codec = "utf-8"
    for bom, name in _SIGNATURES:
        if raw.startswith(bom):
            raw, codec = raw[len(bom) :], name
            changes.bom_removed += 1
            changes.utf16_decoded += name != "utf-8"
            break
    if codec == "utf-8":
        _check_utf8(raw, where)
    try:
        return raw.decode(codec)
    except UnicodeDecodeError as e:
        raise TextError(f"{where}: not valid {codec.upper()} (byte offset {e.start})") from e


def _check_utf8(raw: bytes, where: str) -> None:
    """Name the line and column of the first NUL, over-long line or non-UTF-8 byte."""
    for lineno, line in enumerate(raw.split(b"\n"), start=1):
        if len(line) > MAX_LINE_BYTES:
            raise TextError(f"{where}:{lineno}: line is {len(line):,} bytes (limit {MAX_LINE_BYTES:,}); not a caption")
        nul = line.find(b"\x00")
        if nul >= 0:
            raise TextError(
                f"{where}:{lineno}:{nul + 1}: NUL byte (a binary file, or UTF-16 saved without its signature)"
            )
        try:
            line.decode("utf-8")
        except UnicodeDecodeError as e:
            col = len(line[: e.start].decode("utf-8", errors="replace")) + 1
            raise TextError(f"{where}:{lineno}:{col}: not UTF-8 (byte {line[e.start]:#04x})") from e


def read_lines(path: Path, changes: TextChanges) -> list[str]:
    """A text file's lines (line endings normalised, nothing else cleaned yet)."""
    if path.is_dir():
        raise TextError(f"{path}: is a folder, not a text file")
    text = decode_bytes(path.read_bytes(), str(path), changes)
    if "\r" in text:
        changes.crlf_normalised += text.count("\r\n") + text.replace("\r\n", "").count("\r")
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text.removesuffix("\n").split("\n") if text else []


def clean(text: str, changes: TextChanges) -> str:
    """One line of clean text: NFC, no zero-width or control characters, single spaces, stripped."""
    if not (text.isascii() and text.isprintable()):  # the usual line is: only its spacing can change (~20x faster)
        text = _repair(text, changes)
    collapsed = " ".join(text.split())
    if collapsed != text.strip():
        changes.whitespace_collapsed += 1
    return collapsed


def _repair(text: str, changes: TextChanges) -> str:
    """Line endings, a BOM, zero-width and control characters removed; NFC."""
    if "\r" in text:
        changes.crlf_normalised += 1
        text = text.replace("\r\n", "\n")
    if text.startswith("\ufeff"):  # a signature inside a cell (CSV saved with a BOM, concatenated files)
        changes.bom_removed += 1
        text = text[1:]
    if any(c in ZERO_WIDTH for c in text):
        changes.zero_width_removed += 1
        text = "".join(c for c in text if c not in ZERO_WIDTH)
    if any(_is_control(c) for c in text):
        changes.control_removed += 1
        text = "".join(c for c in text if not _is_control(c))
    nfc = unicodedata.normalize("NFC", text)
    if nfc != text:
        changes.nfc_changed += 1
        text = nfc
    return text


def _is_control(c: str) -> bool:
    # Cc: C0/C1 controls (NUL, ESC, ...); Cf: format characters (bidi overrides, soft hyphen).
    # Tabs, newlines and the like are whitespace, collapsed below, not removed.
    return c not in _KEEP_AS_SPACE and unicodedata.category(c) in ("Cc", "Cf")


def dedup_key(text: str) -> str:
    """What two seeds must share to be duplicates: the clean text, case-folded."""
    return text.casefold()
