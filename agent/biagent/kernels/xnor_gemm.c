/*
 * XNOR-popcount GEMM for the custom runtime: out[r][o] = K - 2 * popcount(acts[r] ^ w[o]),
 * and the bit-packing of 2-D conv patches that feeds it (see xnor_gemm.h).
 *
 * acts: rows x W little-endian uint64 words, w: cout x W (the layout of
 * formats/biformats/custom.py: bit 1 = -1, LSB first, zero tail bits), out: rows x cout int32.
 * A 2x4 register tile keeps 8 accumulators live; the popcount is the CPU's instruction
 * where it has one (x86 POPCNT chosen at run time, AArch64 CNT always), a portable
 * bit-twiddling version elsewhere. Rows are split across OpenMP threads when built with it.
 * Exactness: integer arithmetic only; the Python reference path checks it bit for bit.
 * Plain C: the Python glue (argument parsing, buffer checks) lives in module.c.
 */
#include "xnor_gemm.h"

#include <stddef.h>
#include <stdint.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define TILE_BODY(POP)                                                                   \
    for (ptrdiff_t r = r0; r < r1; r += 2) {                                            \
        const uint64_t *a0 = acts + r * W;                                               \
        const uint64_t *a1 = (r + 1 < r1) ? a0 + W : a0;                                 \
        ptrdiff_t o = 0;                                                                \
        for (; o + 4 <= cout; o += 4) {                                                  \
            const uint64_t *w0 = w + o * W, *w1 = w0 + W, *w2 = w1 + W, *w3 = w2 + W;    \
            int64_t s00 = 0, s01 = 0, s02 = 0, s03 = 0, s10 = 0, s11 = 0, s12 = 0, s13 = 0; \
            for (ptrdiff_t j = 0; j < W; j++) {                                         \
                uint64_t x0 = a0[j], x1 = a1[j];                                         \
                s00 += POP(x0 ^ w0[j]); s01 += POP(x0 ^ w1[j]);                          \
                s02 += POP(x0 ^ w2[j]); s03 += POP(x0 ^ w3[j]);                          \
                s10 += POP(x1 ^ w0[j]); s11 += POP(x1 ^ w1[j]);                          \
                s12 += POP(x1 ^ w2[j]); s13 += POP(x1 ^ w3[j]);                          \
            }                                                                            \
            int32_t *o0 = out + r * cout + o;                                            \
            o0[0] = (int32_t)(K - 2 * s00); o0[1] = (int32_t)(K - 2 * s01);              \
            o0[2] = (int32_t)(K - 2 * s02); o0[3] = (int32_t)(K - 2 * s03);              \
            if (r + 1 < r1) {                                                            \
                int32_t *o1 = o0 + cout;                                                 \
                o1[0] = (int32_t)(K - 2 * s10); o1[1] = (int32_t)(K - 2 * s11);          \
                o1[2] = (int32_t)(K - 2 * s12); o1[3] = (int32_t)(K - 2 * s13);          \
            }                                                                            \
        }                                                                                \
        for (; o < cout; o++) {                                                          \
            const uint64_t *w0 = w + o * W;                                              \
            int64_t s0 = 0, s1 = 0;                                                      \
            for (ptrdiff_t j = 0; j < W; j++) {                                         \
                s0 += POP(a0[j] ^ w0[j]);                                                \
                s1 += POP(a1[j] ^ w0[j]);                                                \
            }                                                                            \
            out[r * cout + o] = (int32_t)(K - 2 * s0);                                   \
            if (r + 1 < r1) out[(r + 1) * cout + o] = (int32_t)(K - 2 * s1);            \
        }                                                                                \
    }

static inline int64_t pop_portable(uint64_t x) {
    x = x - ((x >> 1) & 0x5555555555555555ULL);
    x = (x & 0x3333333333333333ULL) + ((x >> 2) & 0x3333333333333333ULL);
    x = (x + (x >> 4)) & 0x0F0F0F0F0F0F0F0FULL;
    return (int64_t)((x * 0x0101010101010101ULL) >> 56);
}

static void gemm_portable(const uint64_t *acts, const uint64_t *w, int32_t *out, ptrdiff_t r0,
                          ptrdiff_t r1, ptrdiff_t W, ptrdiff_t cout, int64_t K) {
#if defined(__aarch64__)
#define POP_NATIVE(x) ((int64_t)__builtin_popcountll(x))
    TILE_BODY(POP_NATIVE)
#undef POP_NATIVE
#else
    TILE_BODY(pop_portable)
#endif
}

#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
#define HAVE_X86_DISPATCH 1
__attribute__((target("popcnt"))) static void gemm_popcnt(const uint64_t *acts, const uint64_t *w, int32_t *out,
                                                          ptrdiff_t r0, ptrdiff_t r1, ptrdiff_t W,
                                                          ptrdiff_t cout, int64_t K) {
#define POP_X86(x) ((int64_t)__builtin_popcountll(x))
    TILE_BODY(POP_X86)
#undef POP_X86
}
#endif

typedef void (*gemm_fn)(const uint64_t *, const uint64_t *, int32_t *, ptrdiff_t, ptrdiff_t, ptrdiff_t,
                        ptrdiff_t, int64_t);

static gemm_fn pick(const char **name) {
#ifdef HAVE_X86_DISPATCH
    __builtin_cpu_init();
    if (__builtin_cpu_supports("popcnt")) {
        *name = "x86 POPCNT";
        return gemm_popcnt;
    }
#endif
#if defined(__aarch64__)
    *name = "AArch64 CNT";
#else
    *name = "portable";
#endif
    return gemm_portable;
}

const char *xnor_gemm_popcount(void) {
    const char *name;
    pick(&name);
    return name;
}

void xnor_gemm(const uint64_t *acts, const uint64_t *w, int32_t *out, ptrdiff_t rows, ptrdiff_t W, ptrdiff_t cout,
               int64_t k, int threads) {
    const char *name;
    gemm_fn fn = pick(&name);
#ifdef _OPENMP
    ptrdiff_t blocks = (rows + 63) / 64;
    #pragma omp parallel for schedule(dynamic, 1) num_threads(threads > 0 ? threads : 1)
    for (ptrdiff_t blk = 0; blk < blocks; blk++) {
        ptrdiff_t r0 = blk * 64, r1 = r0 + 64 < rows ? r0 + 64 : rows;
        fn(acts, w, out, r0, r1, W, cout, k);
    }
#else
    (void)threads;
    fn(acts, w, out, 0, rows, W, cout, k);
#endif
}

void pack_patches2d(const uint8_t *neg, ptrdiff_t Hp, ptrdiff_t Wp, uint64_t *out, ptrdiff_t W, ptrdiff_t c0,
                    ptrdiff_t cg, ptrdiff_t kh, ptrdiff_t kw, ptrdiff_t sh, ptrdiff_t sw, ptrdiff_t dh, ptrdiff_t dw,
                    ptrdiff_t oy0, ptrdiff_t oy1, ptrdiff_t ow) {
    for (ptrdiff_t oy = oy0; oy < oy1; oy++) {
        for (ptrdiff_t ox = 0; ox < ow; ox++) {
            uint64_t *row = out + ((oy - oy0) * ow + ox) * W;
            uint64_t acc = 0;  /* bits gather in a register, branch-free, one store per word */
            ptrdiff_t bit = 0, word = 0;
            for (ptrdiff_t c = c0; c < c0 + cg; c++) {
                const uint8_t *plane = neg + c * Hp * Wp;
                for (ptrdiff_t ky = 0; ky < kh; ky++) {
                    const uint8_t *line = plane + (oy * sh + ky * dh) * Wp + ox * sw;
                    for (ptrdiff_t kx = 0; kx < kw; kx++) {
                        acc |= (uint64_t)(line[kx * dw] & 1) << bit;
                        if (++bit == 64) {
                            row[word++] = acc;
                            acc = 0;
                            bit = 0;
                        }
                    }
                }
            }
            if (bit) row[word++] = acc;
            for (; word < W; word++) row[word] = 0;
        }
    }
}
