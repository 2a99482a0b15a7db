"""Token n-gram fingerprints of training data, computed the same way on both sides.

Inside the candidate's run, the telemetry fingerprints every sequence that received a gradient;
the grader fingerprints its own validation and test sets with this same function and looks for
their n-grams among the trained ones. Hashes, not text, leave the run. Standard library only: this
file runs inside the candidate's processes (loaded by path from the telemetry's site folder).
"""

import hashlib
import struct

N = 8
"""Tokens per n-gram: long enough to be specific to one conversation, short enough to survive
another chat format, packing or truncation around it."""
SAMPLE = 2
"""Only n-grams whose hash is divisible by SAMPLE are kept (on both sides alike): half the size."""
_PACK = struct.Struct(f"<{N}q").pack


def fingerprints(ids):
    """The kept n-gram hashes (64-bit ints) of a sequence of token ids."""
    out = set()
    for i in range(len(ids) - N + 1):
        value = int.from_bytes(hashlib.blake2b(_PACK(*ids[i : i + N]), digest_size=8).digest(), "little")
        if value % SAMPLE == 0:
            out.add(value)
    return out
