"""Label Studio's brush RLE: the bit-packed run-length code its ``BrushLabels`` masks travel in.

A brush mask is an RGBA image ``[H, W, 4]`` flattened to bytes; the painted pixels are
those whose alpha is set. The code is a big-endian bit stream: a header of the value
count (32 bits), the word size minus one (5 bits) and four run-length field widths
minus one (4 bits each), then records until every value is decoded: one bit (1: a run
of one repeated word, 0: that many literal words), two bits choosing one of the four
widths, the record's length minus one in that many bits, and the word(s). The stream is
zero-padded to whole bytes. :func:`encode_rle` writes runs only, with the widths Label
Studio's own encoders use (3, 4, 8, 16 bits); :func:`decode_rle` reads any header.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

WORD_BITS = 8
RUN_BITS = (3, 4, 8, 16)
MAX_RUN = 2 ** RUN_BITS[-1]
PAINTED_ALPHA = 128  # alpha at or above which a pixel counts as painted (anti-aliased stroke edges are half-painted)


def _pack(values: np.ndarray, widths: np.ndarray) -> list[int]:
    """The bytes of the fields ``values`` written big-endian in ``widths`` bits each, zero-padded."""
    widths = widths.astype(np.int64)
    ends = np.repeat(np.cumsum(widths), widths)  # each bit's field end, so its shift is end - 1 - position
    bits = (np.repeat(values.astype(np.int64), widths) >> (ends - 1 - np.arange(int(widths.sum())))) & 1
    return np.packbits(bits.astype(np.uint8)).tolist()


def encode_rle(values: np.ndarray) -> list[int]:
    """Label Studio brush RLE (a list of byte values) of a flat ``uint8`` array."""
    v = np.ascontiguousarray(values, dtype=np.uint8).reshape(-1)
    starts = np.flatnonzero(np.r_[True, v[1:] != v[:-1]]) if v.size else np.zeros(0, np.int64)
    lengths = np.diff(np.r_[starts, v.size])
    pieces = -(-lengths // MAX_RUN)  # runs longer than the widest length field are split
    run_values = np.repeat(v[starts], pieces)
    run_lengths = np.full(int(pieces.sum()), MAX_RUN, dtype=np.int64)
    run_lengths[np.cumsum(pieces) - 1] = lengths - (pieces - 1) * MAX_RUN
    width_index = np.searchsorted(2 ** np.array(RUN_BITS), run_lengths)  # the narrowest field that holds length - 1
    records = np.stack([np.ones_like(run_lengths), width_index, run_lengths - 1, run_values], 1)
    record_widths = np.stack([np.full_like(run_lengths, 1), np.full_like(run_lengths, 2),
                              np.array(RUN_BITS)[width_index], np.full_like(run_lengths, WORD_BITS)], 1)
    header = np.array([v.size, WORD_BITS - 1, *(b - 1 for b in RUN_BITS)])
    header_widths = np.array([32, 5, 4, 4, 4, 4])
    return _pack(np.r_[header, records.reshape(-1)], np.r_[header_widths, record_widths.reshape(-1)])


class _Bits:
    """A reader of big-endian unsigned fields from a bit string."""

    def __init__(self, data: Sequence[int]):
        self.bits = (np.unpackbits(np.asarray(data, dtype=np.uint8)) + ord("0")).tobytes().decode()
        self.pos = 0

    def read(self, width: int) -> int:
        if self.pos + width > len(self.bits):
            raise ValueError("brush RLE ends in the middle of a record")
        self.pos += width
        return int(self.bits[self.pos - width : self.pos], 2)


def decode_rle(rle: Sequence[int]) -> np.ndarray:
    """The flat ``uint8`` array a Label Studio brush RLE encodes; ValueError if it is malformed."""
    if not len(rle) or any(not isinstance(b, int) or not 0 <= b <= 255 for b in rle):
        raise ValueError("brush RLE must be a non-empty list of byte values")
    bits = _Bits(rle)
    n, word = bits.read(32), bits.read(5) + 1
    widths = [bits.read(4) + 1 for _ in range(4)]
    if word > WORD_BITS:
        raise ValueError(f"brush RLE words of {word} bits do not fit a byte")
    out, i = np.empty(n, dtype=np.uint8), 0
    while i < n:
        run = bits.read(1)
        count = bits.read(widths[bits.read(2)]) + 1
        if i + count > n:
            raise ValueError(f"brush RLE decodes to more than its {n} values")
        out[i : i + count] = bits.read(word) if run else [bits.read(word) for _ in range(count)]
        i += count
    return out


def mask_to_rle(mask: np.ndarray) -> list[int]:
    """Brush RLE of a boolean mask ``[H, W]``: painted pixels opaque white, the rest transparent."""
    rgba = np.repeat(np.where(np.asarray(mask, dtype=bool), 255, 0).astype(np.uint8)[..., None], 4, axis=-1)
    return encode_rle(rgba)


def rle_to_mask(rle: Sequence[int], height: int, width: int) -> np.ndarray:
    """The painted pixels ``[height, width]`` (alpha at least :data:`PAINTED_ALPHA`) of a brush RLE."""
    values = decode_rle(rle)
    if values.size != height * width * 4:
        raise ValueError(f"brush RLE holds {values.size} values, an RGBA image of {height}x{width} needs "
                         f"{height * width * 4}")
    return values.reshape(height, width, 4)[..., 3] >= PAINTED_ALPHA
