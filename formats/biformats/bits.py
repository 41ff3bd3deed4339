"""Sign-bit packing: how a row of +/-1 values becomes words, in each format's layout.

Every layout stores one sign per bit, LSB first within a little-endian word, tail bits 0.
They differ in word size and in which sign is bit 1:

=========  ======  ==========  ==================================================
layout     word    bit 1 is    order of a row's bits
=========  ======  ==========  ==================================================
custom     uint64  -1          PyTorch's weight order (c, kh, kw); one row per output
lce        int32   -1          channels of one pixel (OHWI weights / NHWC activations)
dabnn      uint64  +1          daBNN's (kh, kw, c); "aligned" rows padded to 128 bits
=========  ======  ==========  ==================================================

With bit 1 = -1 and zero tails on both operands, a row's dot product is
``K - 2 * popcount(a XOR w)`` (summed over the words).
"""

from __future__ import annotations

import numpy as np


def n_words(k: int) -> int:
    """64-bit words holding a row of k bits (at least one)."""
    return max(1, -(-k // 64))


def pack_rows(neg: np.ndarray) -> np.ndarray:
    """(rows, K) bool, True meaning -1 -> (rows, n_words(K)) little-endian uint64 (custom layout)."""
    rows, k = neg.shape
    packed = np.packbits(neg, axis=1, bitorder="little")
    nbytes = n_words(k) * 8
    if packed.shape[1] != nbytes:
        buf = np.zeros((rows, nbytes), np.uint8)
        buf[:, : packed.shape[1]] = packed
        packed = buf
    return np.ascontiguousarray(packed).view("<u8")


def unpack_signs(words: np.ndarray, k: int) -> np.ndarray:
    """(rows, W) uint64 -> (rows, K) int8 of +/-1: the inverse of `pack_rows`."""
    as_bytes = np.ascontiguousarray(words.astype("<u8")).view(np.uint8).reshape(words.shape[0], -1)
    bits = np.unpackbits(as_bytes, axis=1, bitorder="little")[:, :k]
    return (1 - 2 * bits.astype(np.int8)).astype(np.int8)


def pack_sign_rows(signs: np.ndarray) -> tuple[np.ndarray, int]:
    """(rows, ...) array of +/-1 -> ((rows, W) uint64, K): each row flattened, then `pack_rows`."""
    rows = np.asarray(signs).reshape(len(signs), -1)
    return pack_rows(rows < 0), rows.shape[1]


def unpack_sign_rows(bits: np.ndarray, k: int) -> np.ndarray:
    """(rows, W) uint64 -> (rows, k) float32 of +/-1: the inverse of `pack_sign_rows`."""
    return unpack_signs(bits, k).astype(np.float32)


def pack_lce_bits(signs: np.ndarray) -> np.ndarray:
    """(..., C) +/-1 -> (..., ceil(C/32)) int32: bit 1 = -1, channel c at bit c % 32 of word c // 32."""
    c = signs.shape[-1]
    words = -(-c // 32)
    bits = np.zeros(signs.shape[:-1] + (words * 32,), np.uint8)
    bits[..., :c] = signs < 0
    packed = np.packbits(bits, axis=-1, bitorder="little")  # 4 bytes per word, little-endian
    return np.ascontiguousarray(packed).view("<i4").reshape(signs.shape[:-1] + (words,))


def dabnn_filter_words(k: int, aligned: bool) -> int:
    """uint64 words of one daBNN filter of k bits: 'aligned' rounds up to 128 bits, else k // 64."""
    return 2 * -(-k // 128) if aligned else k // 64


def pack_dabnn_filters(signs: np.ndarray, aligned: bool) -> tuple[np.ndarray, int]:
    """(O, K) +/-1 in daBNN's (kh, kw, c) order -> (flat uint64 words, words per filter); bit 1 = +1."""
    o, k = signs.shape
    words = dabnn_filter_words(k, aligned)
    packed = np.packbits(signs > 0, axis=1, bitorder="little")
    buf = np.zeros((o, words * 8), np.uint8)
    buf[:, : packed.shape[1]] = packed
    return buf.view("<u8").reshape(-1).copy(), words


__all__ = [
    "dabnn_filter_words",
    "n_words",
    "pack_dabnn_filters",
    "pack_lce_bits",
    "pack_rows",
    "pack_sign_rows",
    "unpack_sign_rows",
    "unpack_signs",
]
