"""XNOR + popcount on packed bits: the numpy reference dot, its C kernel, the weight layouts.

Binary layers run on packed bits:

* activations are sign-binarized (bit 1 where x + input_shift < 0, i.e. the value -1),
* im2col'd in the weights' (C_in/groups, kh, kw) order, one row per output position,
* packed LSB first into little-endian uint64 words (np.packbits(bitorder="little") on the
  bytes, zero tail bits), exactly the layout of the exported `weight_bits`,
* XORed with the weight words and popcounted: dot = K - 2 * popcount.

popcount: numpy < 2 has no np.bitwise_count, so words are counted with the classic SWAR
bit-slicing sequence (pairs, nibbles, bytes; the bytes of up to 31 words are summed before
one horizontal add). On the host this measured ~3.5x faster than an 8-bit lookup table
(`popcount_lut8`, kept as the reference the tests compare against). `xnor_gemm` is the same
dot in C (kernels/xnor_gemm.c), bit for bit.
"""

from __future__ import annotations

import math

import numpy as np

from biagent.kernels import _xnor
from biformats.bits import n_words, unpack_signs

POP_CHUNK_ELEMS = 1 << 15  # (rows x C_out) block of the popcount loop: ~256 KB per uint64 array

_M1 = np.uint64(0x5555555555555555)
_M2 = np.uint64(0x3333333333333333)
_M4 = np.uint64(0x0F0F0F0F0F0F0F0F)
_M8 = np.uint64(0x00FF00FF00FF00FF)
_H16 = np.uint64(0x0001000100010001)
_1, _2, _4, _8, _48 = (np.uint64(v) for v in (1, 2, 4, 8, 48))
LUT8 = np.array([bin(i).count("1") for i in range(256)], np.uint8)


def popcount_lut8(words: np.ndarray) -> np.ndarray:
    """Popcount of each uint64 (reference implementation: an 8-bit lookup table)."""
    w = np.ascontiguousarray(words.astype("<u8"))
    return LUT8[w.view(np.uint8)].reshape(*w.shape, 8).sum(-1, dtype=np.int64)


def xnor_popcount_dot(acts: np.ndarray, weights_t: np.ndarray, k: int) -> np.ndarray:
    """dot[r, o] = K - 2 * popcount(acts[r] ^ weights[o]) over the words, as int32.

    acts: (rows, W) uint64; weights_t: (W, C_out) uint64 (the packed weights, transposed).
    """
    rows, nw = acts.shape
    cout = weights_t.shape[1]
    out = np.empty((rows, cout), np.int32)
    step = max(1, POP_CHUNK_ELEMS // max(cout, 1))
    for r0 in range(0, rows, step):
        a = acts[r0 : r0 + step]
        n = a.shape[0]
        x, t, acc = (np.empty((n, cout), np.uint64) for _ in range(3))
        total = np.zeros((n, cout), np.uint64)
        for j0 in range(0, nw, 31):  # byte lanes hold <= 8 per word: 31 words fit a byte
            acc.fill(0)
            for j in range(j0, min(nw, j0 + 31)):
                np.bitwise_xor(a[:, j, None], weights_t[j][None, :], out=x)
                np.right_shift(x, _1, out=t)
                t &= _M1
                x -= t
                np.right_shift(x, _2, out=t)
                t &= _M2
                x &= _M2
                x += t
                np.right_shift(x, _4, out=t)
                x += t
                x &= _M4
                acc += x
            np.right_shift(acc, _8, out=t)  # bytes -> 16-bit lanes, then one horizontal add
            t &= _M8
            acc &= _M8
            acc += t
            acc *= _H16
            acc >>= _48
            total += acc
        np.subtract(k, 2 * total.astype(np.int64), out=out[r0 : r0 + step], casting="unsafe")
    return out


def xnor_gemm(acts: np.ndarray, weights_rows: np.ndarray, k: int, threads: int) -> np.ndarray:
    """The same dot in C (kernels/xnor_gemm.c): weights_rows is (C_out, W), untransposed."""
    out = np.empty((acts.shape[0], weights_rows.shape[0]), np.int32)
    _xnor.xnor_gemm(np.ascontiguousarray(acts, dtype=np.uint64), weights_rows, out, int(k), threads)
    return out


def taps_per_word(cin: int, taps: int) -> int:
    """Taps that share a packed word (kernels/bconv.c): where C_in divides 64, a patch's taps lie
    back to back, so a 16-channel 3x3 patch is 3 words instead of 9 a quarter full."""
    per = 64 // cin if cin < 64 and 64 % cin == 0 else 1
    return min(per, taps)


def patch_words(cin: int, kernel: tuple[int, ...]) -> int:
    """Words of one packed patch: the channel-packed weights' middle axis (bconv_patch_words)."""
    taps = math.prod(kernel)
    per = taps_per_word(cin, taps)
    return -(-taps // per) if per > 1 else taps * n_words(cin)


def channel_packed_weights(bits: np.ndarray, cin: int, kernel: tuple[int, ...]) -> np.ndarray:
    """Exported (C_out, W) bits in (c, *k) order -> (ceil(C_out/8), patch_words, 8) channel-packed blocks.

    The layout of kernels/bconv.c: 64 input channels per word, words in (ky, kx, cw) order, or
    where C_in divides 64 several taps per word, back to back in (ky, kx) order; 8 output
    channels interleaved per word index; padded channels, taps and outputs are zero bits.
    """
    cout, taps = bits.shape[0], math.prod(kernel)
    neg = unpack_signs(bits, cin * taps).reshape(cout, cin, taps) < 0
    cout8, per = -(-cout // 8) * 8, taps_per_word(cin, taps)
    if per > 1:  # (C_out, words, 64 bits): tap t at bits (t % per) * C_in of word t // per
        words_n = patch_words(cin, kernel)
        taps_padded = np.zeros((cout8, words_n * per, cin), bool)
        taps_padded[:cout, :taps] = neg.transpose(0, 2, 1)
        chan = np.zeros((cout8, words_n, 64), bool)
        chan[:, :, : per * cin] = taps_padded.reshape(cout8, words_n, per * cin)
    else:
        chan = np.zeros((cout8, taps, n_words(cin) * 64), bool)
        chan[:cout, :, :cin] = neg.transpose(0, 2, 1)
    words = np.packbits(chan, axis=-1, bitorder="little").view("<u8").reshape(cout8, -1)  # (C_out8, words)
    blocks = words.reshape(-1, 8, words.shape[1])  # (blocks, 8, words)
    return np.ascontiguousarray(blocks.transpose(0, 2, 1)).astype(np.uint64)
