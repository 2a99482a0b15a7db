"""What a candidate's file is, judged by its content without ever running it.

A file's first byte proves nothing: a safetensors file begins with the little-endian length of its
header, which starts with 0x80 (a pickle's protocol marker) for about one header size in 32. So a
file that parses as safetensors is safetensors; otherwise the pickle opcodes are parsed (never
executed) with :mod:`pickletools`, and torch's zip container and executables are recognised by
their magic bytes.
"""

from __future__ import annotations

import io
import pickletools
from pathlib import Path
from typing import Literal

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".npy", ".joblib")
"""Names that torch, numpy or joblib would deserialise with pickle; refused whatever they hold."""
HEAD_BYTES = 1 << 16
MIN_OPCODES = 8
"""A protocol-2+ pickle header followed by this many valid opcodes is a pickle even if cut off."""

FileKind = Literal["safetensors", "pickle", "executable", "data"]


def is_safetensors(path: Path) -> bool:
    """The file opens as safetensors (header length, JSON header, tensor layout): safetensors reads
    only the header and never runs code."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            fh.keys()
    except (SafetensorError, OSError, ValueError):
        return False
    return True


def _is_pickle_stream(head: bytes) -> bool:
    """A complete pickle in ``head``, or a protocol 2+ header with MIN_OPCODES valid opcodes after it."""
    count = 0
    try:
        for opcode, _, _ in pickletools.genops(io.BytesIO(head)):
            count += 1
            if opcode.name == "STOP":
                return True
    except Exception:  # noqa: BLE001 - pickletools raises ValueError, struct.error, ... on non-pickles
        pass
    return len(head) > 1 and head[0] == 0x80 and 2 <= head[1] <= 5 and count >= MIN_OPCODES


def file_kind(path: Path) -> FileKind:
    """``safetensors``, ``pickle`` (by name or content, zip-packed torch files included), ``executable``
    (mode bits, ELF, shebang) or ``data`` (anything else: JSON, templates, text)."""
    if path.suffix.lower() != ".safetensors" and path.name.lower().endswith(PICKLE_SUFFIXES):
        return "pickle"
    if is_safetensors(path):
        return "safetensors"
    with path.open("rb") as fh:
        head = fh.read(HEAD_BYTES)
    if head.startswith(b"PK\x03\x04") or _is_pickle_stream(head):
        return "pickle"
    if path.stat().st_mode & 0o111 or head.startswith((b"\x7fELF", b"#!")):
        return "executable"
    return "data"
