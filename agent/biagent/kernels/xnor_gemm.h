/* XNOR-popcount GEMM and 2-D patch packing of the custom runtime (see xnor_gemm.c). */
#ifndef BIAGENT_XNOR_GEMM_H
#define BIAGENT_XNOR_GEMM_H
#include <stddef.h>
#include <stdint.h>

/* out[r][o] = k - 2 * popcount(acts[r] ^ w[o]) over W words: acts (rows, W) and w (cout, W) uint64,
 * out (rows, cout) int32, all C-contiguous; rows split over `threads` OpenMP threads when built with it. */
void xnor_gemm(const uint64_t *acts, const uint64_t *w, int32_t *out, ptrdiff_t rows, ptrdiff_t W, ptrdiff_t cout,
               int64_t k, int threads);
/* Which popcount xnor_gemm uses on this CPU ("x86 POPCNT", "AArch64 CNT" or "portable"). */
const char *xnor_gemm_popcount(void);

/* neg: (C, Hp, Wp) uint8, 1 where the (already padded) binarized input is -1; out: ((oy1 - oy0) * ow, W)
 * uint64: each output position's im2col patch over channels [c0, c0 + cg), bits in (c, ky, kx) order,
 * LSB first, zero tail bits. The caller checks that every window fits the plane and W * 64 >= cg*kh*kw. */
void pack_patches2d(const uint8_t *neg, ptrdiff_t Hp, ptrdiff_t Wp, uint64_t *out, ptrdiff_t W, ptrdiff_t c0,
                    ptrdiff_t cg, ptrdiff_t kh, ptrdiff_t kw, ptrdiff_t sh, ptrdiff_t sw, ptrdiff_t dh, ptrdiff_t dw,
                    ptrdiff_t oy0, ptrdiff_t oy1, ptrdiff_t ow);
#endif
