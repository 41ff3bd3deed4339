/*
 * Binary conv2d on channel-packed bits, one pass from float input to float output.
 *
 * Why this layout: the im2col-over-bits layout (bits in (c, ky, kx) order) costs a bit-by-bit
 * gather per output position. Packing 64 *channels* per word instead (LCE/daBNN style) makes
 * a patch a list of kh*kw*Wc whole words, so the "im2col" is word copies, and the GEMM can
 * run over output positions in SIMD lanes (8 positions per AVX-512 register), which writes
 * NCHW output rows directly.
 *
 *   planes  (Wc, Hp, Wp) uint64: sign bits of x + shift (bit 1 = -1, NaN -> -1), channel c
 *           in word c/64 at bit c%64, zero tail bits; the padded border holds +1 (bit 0,
 *           corrected exactly afterwards by an input-independent term) or -1 (pad_ones).
 *   A       (KW, Ppad) uint64, KW = kh*kw*Wc in (ky, kx, cw) order: A[j][p] is the word of
 *           output position p's patch. Where C divides 64 (16, 32 channels), 64/C taps share
 *           a word instead, back to back in (ky, kx) order: KW = ceil(kh*kw*C/64).
 *   B       (ceil(cout/8), KW, 8) uint64: the weights, same bit layout, 8 output channels
 *           interleaved so one cache line feeds a whole register tile.
 *   dot     = K - 2 * popcount(A ^ B) summed over j, minus the zero-padding correction
 *             table[o][cls[p]]: positions fall in a few classes by which taps are padded
 *             (class 0 = none, correction 0), so the term costs a (cout, classes) table and
 *             one int32 per position instead of a (cout, P) map streamed through memory.
 *   out     = (((float)dot * alpha[o]) * beta) * cs[o] + bias[o], in that order, each a
 *             float32 rounding, exactly the numpy reference's sequence; then, when the
 *             engine fused them, the next nodes: fmaf(out, scale[o], shift[o]) (batch
 *             norm), + residual, clamp (hardtanh), each as its own node computes it. The
 *             fused network skips three passes over memory per conv.
 *
 * Popcount kernels, chosen at run time: AVX-512 VPOPCNTDQ (16 positions x 8 channels),
 * AVX2 nibble lookup (vpshufb + vpsadbw, 8 x 8), NEON on AArch64 (CNT + UADALP, 8 x 8),
 * portable C (8 x 8; the compiler's popcount). All are integer-exact; the tests compare each with
 * the numpy reference bit for bit.
 */
#define _POSIX_C_SOURCE 200112L
#include "bconv.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
#define BC_X86 1
#include <immintrin.h>
#endif

#define NO 8 /* output channels per weight block */
#define PARALLEL_PAIRS (1 << 18) /* word pairs (~25 us of popcounts) before a layer goes parallel */

/* -- the popcount micro-kernels: dots[o][p] = K - 2 sum_j pop(A[j][p0 + p] ^ B[j][o]) -- */
typedef void (*pack_fn)(const float *x, int64_t stride_c, int64_t n_c, const float *shift, int64_t W, uint64_t *row);
static void pack_row_scalar(const float *x, int64_t stride_c, int64_t n_c, const float *shift, int64_t W, uint64_t *row);
#ifdef BC_X86
static void pack_row_avx512(const float *x, int64_t stride_c, int64_t n_c, const float *shift, int64_t W, uint64_t *row);
static void pack_row_avx2(const float *x, int64_t stride_c, int64_t n_c, const float *shift, int64_t W, uint64_t *row);
#endif
typedef struct {
    const bconv_shape *s;
    const bconv_epilogue *e;
    float beta;
    int has_beta;
    int64_t P;
    float *out;       /* this sample's (cout, P) output */
    const float *res; /* this sample's (cout, P) residual, or NULL */
    uint64_t *bits;   /* this sample's output planes (e->bits), or NULL */
    const int64_t *pos_word; /* (P): the word of output position p in a bits plane */
    const float *chan;       /* (cout, CHAN_FLOATS): the epilogue's per-channel constants (chan_table) */
} tile_env;
enum { CH_ALPHA, CH_CS, CH_BIAS, CH_POST_SCALE, CH_POST_SHIFT, CH_LO, CH_HI, CH_NEXT_SHIFT, CHAN_FLOATS };
static void put_bits(const tile_env *env, int64_t o0, int64_t p0, int64_t pn, const uint8_t *nb);
/* dots for NP positions x NO channels from (A + p0, B block o0 / NO), then the epilogue into env->out. */
typedef void (*micro_fn)(const uint64_t *A, int64_t lda, const uint64_t *B, int64_t KW, int64_t K, int64_t o0,
                         int64_t p0, const tile_env *env);
static void finish(const tile_env *env, const int32_t *dots, int np, int64_t o0, int64_t p0);

static inline int64_t pop_soft(uint64_t x) {
    x = x - ((x >> 1) & 0x5555555555555555ULL);
    x = (x & 0x3333333333333333ULL) + ((x >> 2) & 0x3333333333333333ULL);
    x = (x + (x >> 4)) & 0x0F0F0F0F0F0F0F0FULL;
    return (int64_t)((x * 0x0101010101010101ULL) >> 56);
}

#define NP_PORTABLE 8
/* The scalar kernels: one body, the popcount (and the function's target) varying. */
#define MICRO_SCALAR(ATTR, NAME, POP)                                                                      \
    ATTR static void NAME(const uint64_t *A, int64_t lda, const uint64_t *B, int64_t KW, int64_t K, int64_t o0, \
                          int64_t p0, const tile_env *env) {                                              \
        int32_t dots[NO * NP_PORTABLE];                                                                   \
        int64_t acc[NO][NP_PORTABLE] = {{0}};                                                             \
        for (int64_t j = 0; j < KW; j++) {                                                                \
            const uint64_t *a = A + j * lda, *b = B + j * NO;                                             \
            for (int o = 0; o < NO; o++)                                                                  \
                for (int p = 0; p < NP_PORTABLE; p++) acc[o][p] += POP(a[p] ^ b[o]);                      \
        }                                                                                                 \
        for (int o = 0; o < NO; o++)                                                                      \
            for (int p = 0; p < NP_PORTABLE; p++) dots[o * NP_PORTABLE + p] = (int32_t)(K - 2 * acc[o][p]); \
        finish(env, dots, NP_PORTABLE, o0, p0);   \
    }

#define POP_BUILTIN(x) ((int64_t)__builtin_popcountll(x))
#if defined(__aarch64__) || defined(__POPCNT__)
MICRO_SCALAR(, micro_portable, POP_BUILTIN) /* AArch64: CNT */
#else
MICRO_SCALAR(, micro_portable, pop_soft)
#endif

#ifdef BC_X86
#define NP_AVX512 16
/* The epilogue of a tile's dots, in registers: both 8-position halves (acc0, acc1) in one
 * 512-bit vector, the same float32 sequence as finish(). One pass for 16 positions halves the
 * instructions of two 8-lane passes, which matters where K is small (64 channels x 3x3: the
 * epilogue was as long as the popcount loop). Lanes past P are never loaded or stored;
 * store_lanes writes NCHW output rows, neg_lanes returns the next conv's sign bits instead. */
__attribute__((target("avx512f,fma"), always_inline)) static inline __m512 lanes_value(
    const bconv_epilogue *e, __m512i acc0, __m512i acc1, int64_t K, int64_t oc, int64_t p, int64_t P,
    __mmask16 live, const tile_env *env, const int post) {
    const __m512i k = _mm512_set1_epi64(K);
    __m512i d = _mm512_inserti64x4(
        _mm512_castsi256_si512(_mm512_cvtepi64_epi32(_mm512_sub_epi64(k, _mm512_slli_epi64(acc0, 1)))),
        _mm512_cvtepi64_epi32(_mm512_sub_epi64(k, _mm512_slli_epi64(acc1, 1))), 1);
    if (e->corr_cls) {
        const __m512i cls = _mm512_maskz_loadu_epi32(live, e->corr_cls + p);
        const __mmask16 edge = _mm512_test_epi32_mask(cls, cls);
        const int32_t *row = e->corr_table + oc * e->n_cls;
        if (edge && e->n_cls <= 16) /* the row in one register, looked up by a permute: a 16-lane gather is
                                       microcoded on AMD (44% of a 16-channel layer at 32x32, where every
                                       tile holds a border column) */
            d = _mm512_mask_sub_epi32(d, edge, d,
                                      _mm512_permutexvar_epi32(cls, _mm512_maskz_loadu_epi32(
                                                                        (__mmask16)((1u << e->n_cls) - 1), row)));
        else if (edge && e->n_cls <= 32)
            d = _mm512_mask_sub_epi32(
                d, edge, d,
                _mm512_permutex2var_epi32(_mm512_loadu_si512((const void *)row), cls,
                                          _mm512_maskz_loadu_epi32((__mmask16)((1u << (e->n_cls - 16)) - 1), row + 16)));
        else if (edge)
            d = _mm512_sub_epi32(d, _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), edge, cls, row, 4));
    }
    /* The channel's constants, neutral where the layer has none (x * 1 and x + -0 are x, signed
     * zeros and NaNs too; min/max with infinities keep NaN): one line, no tests, no reloads. */
    const float *c = env->chan + oc * CHAN_FLOATS;
    __m512 v = _mm512_mul_ps(_mm512_cvtepi32_ps(d), _mm512_set1_ps(c[CH_ALPHA]));
    if (env->has_beta) v = _mm512_mul_ps(v, _mm512_set1_ps(env->beta));
    v = _mm512_add_ps(_mm512_mul_ps(v, _mm512_set1_ps(c[CH_CS])), _mm512_set1_ps(c[CH_BIAS]));
    if (!post) return v; /* a constant: the kernel without fused successors skips the rest */
    v = _mm512_fmadd_ps(v, _mm512_set1_ps(c[CH_POST_SCALE]), _mm512_set1_ps(c[CH_POST_SHIFT]));
    if (env->res) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(live, env->res + oc * P + p));
    /* max_ps(a, b) is b when either is NaN: a NaN v passes both */
    return _mm512_min_ps(_mm512_set1_ps(c[CH_HI]), _mm512_max_ps(_mm512_set1_ps(c[CH_LO]), v));
}

/* The lanes of positions p .. p + 15 that exist (below P; a tail tile has at most 8). */
static inline __mmask16 live_lanes(int64_t p, int64_t P) {
    return P - p >= 16 ? (__mmask16)0xFFFF : P - p <= 0 ? (__mmask16)0 : (__mmask16)((1u << (P - p)) - 1);
}

__attribute__((target("avx512f,fma"), always_inline)) static inline void store_lanes(
    const bconv_epilogue *e, __m512i acc0, __m512i acc1, int64_t K, int64_t oc, int64_t p, int64_t P, const tile_env *env,
    const int post) {
    const __mmask16 live = live_lanes(p, P);
    if (!live) return;
    _mm512_mask_storeu_ps(env->out + oc * P + p, live, lanes_value(e, acc0, acc1, K, oc, p, P, live, env, post));
}

__attribute__((target("avx512f,fma"), always_inline)) static inline __mmask16 neg_lanes(
    const bconv_epilogue *e, __m512i acc0, __m512i acc1, int64_t K, int64_t oc, int64_t p, int64_t P, const tile_env *env) {
    const __mmask16 live = live_lanes(p, P);
    if (!live) return 0;
    __m512 v = lanes_value(e, acc0, acc1, K, oc, p, P, live, env, 1);
    v = _mm512_add_ps(v, _mm512_set1_ps(env->chan[oc * CHAN_FLOATS + CH_NEXT_SHIFT]));
    return _mm512_mask_cmp_ps_mask(live, v, _mm512_setzero_ps(), _CMP_NGE_UQ); /* NaN -> -1, as the packing */
}

/* byte o of x holds channel o's bits over 8 positions -> byte p holds position p's 8 channel bits */
static inline uint64_t transpose8(uint64_t x) {
    uint64_t t;
    t = (x ^ (x >> 7)) & 0x00AA00AA00AA00AAULL;
    x = x ^ t ^ (t << 7);
    t = (x ^ (x >> 14)) & 0x0000CCCC0000CCCCULL;
    x = x ^ t ^ (t << 14);
    t = (x ^ (x >> 28)) & 0x00000000F0F0F0F0ULL;
    return x ^ t ^ (t << 28);
}

/* NV vectors of 8 positions x 8 output channels; NV = 2 for the body, 1 for a short tail (its
 * epilogue runs with zeros in the upper half, masked off). POST: 0 for a layer without fused
 * successors (its epilogue has fewer tests), 1 otherwise. */
#define MICRO_AVX512(NAME, NV, POST)                                                                      \
    __attribute__((target("avx512f,avx512vl,avx512vpopcntdq,fma"))) static void NAME(                      \
        const uint64_t *A, int64_t lda, const uint64_t *B, int64_t KW, int64_t K, int64_t o0, int64_t p0,  \
        const tile_env *env) {                                                                            \
        __m512i acc[NV][NO];                                                                              \
        for (int v = 0; v < NV; v++)                                                                      \
            for (int o = 0; o < NO; o++) acc[v][o] = _mm512_setzero_si512();                              \
        for (int64_t j = 0; j < KW; j++) {                                                                \
            __m512i a[NV];                                                                                \
            for (int v = 0; v < NV; v++) a[v] = _mm512_load_si512((const void *)(A + j * lda + 8 * v));   \
            const uint64_t *b = B + j * NO;                                                               \
            for (int o = 0; o < NO; o++) {                                                                \
                const __m512i w = _mm512_set1_epi64((long long)b[o]);                                     \
                for (int v = 0; v < NV; v++)                                                              \
                    acc[v][o] = _mm512_add_epi64(acc[v][o], _mm512_popcnt_epi64(_mm512_xor_si512(a[v], w))); \
            }                                                                                             \
        }                                                                                                 \
        if (!POST || !env->bits) {                                                                        \
            for (int o = 0; o < NO && o0 + o < env->s->cout; o++)                                        \
                store_lanes(env->e, acc[0][o], NV == 2 ? acc[NV - 1][o] : _mm512_setzero_si512(), K, o0 + o, p0, \
                            env->P, env, POST);                                                           \
            return;                                                                                       \
        }                                                                                                 \
        uint64_t m16[2] = {0, 0}; /* byte o: channel o's -1 bits over 8 positions */                      \
        for (int o = 0; o < NO && o0 + o < env->s->cout; o++) {                                          \
            const __mmask16 k = neg_lanes(env->e, acc[0][o], NV == 2 ? acc[NV - 1][o] : _mm512_setzero_si512(), K, \
                                          o0 + o, p0, env->P, env);                                      \
            m16[0] |= (uint64_t)(k & 0xFF) << (8 * o);                                                    \
            m16[1] |= (uint64_t)(k >> 8) << (8 * o);                                                      \
        }                                                                                                 \
        for (int v = 0; v < NV && p0 + 8 * v < env->P; v++) {                                            \
            const uint64_t m = transpose8(m16[v]);                                                        \
            uint8_t nb[8];                                                                                \
            memcpy(nb, &m, 8);                                                                            \
            const int64_t left = env->P - p0 - 8 * v;                                                     \
            put_bits(env, o0, p0 + 8 * v, left < 8 ? left : 8, nb);                                       \
        }                                                                                                 \
    }
MICRO_AVX512(micro_avx512, 2, 0)
MICRO_AVX512(micro_avx512_tail, 1, 0)
MICRO_AVX512(micro_avx512_post, 2, 1)
MICRO_AVX512(micro_avx512_post_tail, 1, 1)

#define NP_AVX2 8
/* Byte counts from a 16-entry nibble table; bytes are summed for at most 31 words (31 * 8 <
 * 256) before vpsadbw folds them into the four 64-bit lanes of each position. */
__attribute__((target("avx2"))) static void micro_avx2(const uint64_t *A, int64_t lda, const uint64_t *B,
                                                      int64_t KW, int64_t K, int64_t o0,
                          int64_t p0, const tile_env *env) {
    int32_t dots[NO * NP_AVX2];
    const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1, 1, 2, 1, 2, 2, 3, 1,
                                         2, 2, 3, 2, 3, 3, 4);
    const __m256i low = _mm256_set1_epi8(0x0F), zero = _mm256_setzero_si256();
    __m256i tot[NO][2];
    for (int o = 0; o < NO; o++) tot[o][0] = tot[o][1] = zero;
    for (int half = 0; half < NO; half += 4) {
        for (int64_t j0 = 0; j0 < KW; j0 += 31) {
            int64_t j1 = j0 + 31 < KW ? j0 + 31 : KW;
            __m256i c[4][2];
            for (int o = 0; o < 4; o++) c[o][0] = c[o][1] = zero;
            for (int64_t j = j0; j < j1; j++) {
                const __m256i a0 = _mm256_load_si256((const __m256i *)(A + j * lda));
                const __m256i a1 = _mm256_load_si256((const __m256i *)(A + j * lda + 4));
                const uint64_t *b = B + j * NO + half;
                for (int o = 0; o < 4; o++) {
                    const __m256i w = _mm256_set1_epi64x((long long)b[o]);
                    __m256i x0 = _mm256_xor_si256(a0, w), x1 = _mm256_xor_si256(a1, w);
                    __m256i p0 = _mm256_add_epi8(_mm256_shuffle_epi8(lut, _mm256_and_si256(x0, low)),
                                                 _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(x0, 4), low)));
                    __m256i p1 = _mm256_add_epi8(_mm256_shuffle_epi8(lut, _mm256_and_si256(x1, low)),
                                                 _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(x1, 4), low)));
                    c[o][0] = _mm256_add_epi8(c[o][0], p0);
                    c[o][1] = _mm256_add_epi8(c[o][1], p1);
                }
            }
            for (int o = 0; o < 4; o++) {
                tot[half + o][0] = _mm256_add_epi64(tot[half + o][0], _mm256_sad_epu8(c[o][0], zero));
                tot[half + o][1] = _mm256_add_epi64(tot[half + o][1], _mm256_sad_epu8(c[o][1], zero));
            }
        }
    }
    for (int o = 0; o < NO; o++) {
        int64_t v[8];
        _mm256_storeu_si256((__m256i *)v, tot[o][0]);
        _mm256_storeu_si256((__m256i *)(v + 4), tot[o][1]);
        for (int p = 0; p < NP_AVX2; p++) dots[o * NP_AVX2 + p] = (int32_t)(K - 2 * v[p]);
    }
    finish(env, dots, NP_AVX2, o0, p0);
}

MICRO_SCALAR(__attribute__((target("popcnt"))), micro_popcnt, POP_BUILTIN)
#endif

#if defined(__aarch64__) && defined(__ARM_NEON)
#include <arm_neon.h>
#define BC_NEON 1
/* NEON: byte counts of A ^ B (CNT), pairwise-added into 16-bit lanes (UADALP) that hold up to
 * 4096 words before they are folded into 64-bit totals. 8 positions (four 2-lane vectors)
 * x 4 output channels per pass, two passes for the 8 channels of a block: 16 accumulators. */
static void micro_neon(const uint64_t *A, int64_t lda, const uint64_t *B, int64_t KW, int64_t K, int64_t o0,
                       int64_t p0, const tile_env *env) {
    int32_t dots[NO * NP_PORTABLE];
    for (int half = 0; half < NO; half += 4) {
        uint64_t tot[4][NP_PORTABLE] = {{0}};
        for (int64_t j0 = 0; j0 < KW; j0 += 4096) {
            const int64_t j1 = j0 + 4096 < KW ? j0 + 4096 : KW;
            uint16x8_t acc[4][4];
            for (int o = 0; o < 4; o++)
                for (int v = 0; v < 4; v++) acc[o][v] = vdupq_n_u16(0);
            for (int64_t j = j0; j < j1; j++) {
                const uint64_t *a = A + j * lda, *b = B + j * NO + half;
                const uint64x2_t a0 = vld1q_u64(a), a1 = vld1q_u64(a + 2), a2 = vld1q_u64(a + 4), a3 = vld1q_u64(a + 6);
                for (int o = 0; o < 4; o++) {
                    const uint64x2_t w = vdupq_n_u64(b[o]);
                    acc[o][0] = vpadalq_u8(acc[o][0], vcntq_u8(vreinterpretq_u8_u64(veorq_u64(a0, w))));
                    acc[o][1] = vpadalq_u8(acc[o][1], vcntq_u8(vreinterpretq_u8_u64(veorq_u64(a1, w))));
                    acc[o][2] = vpadalq_u8(acc[o][2], vcntq_u8(vreinterpretq_u8_u64(veorq_u64(a2, w))));
                    acc[o][3] = vpadalq_u8(acc[o][3], vcntq_u8(vreinterpretq_u8_u64(veorq_u64(a3, w))));
                }
            }
            for (int o = 0; o < 4; o++)
                for (int v = 0; v < 4; v++) {
                    const uint64x2_t t = vpaddlq_u32(vpaddlq_u16(acc[o][v])); /* one 64-bit lane per position */
                    tot[o][2 * v] += vgetq_lane_u64(t, 0);
                    tot[o][2 * v + 1] += vgetq_lane_u64(t, 1);
                }
        }
        for (int o = 0; o < 4; o++)
            for (int p = 0; p < NP_PORTABLE; p++) dots[(half + o) * NP_PORTABLE + p] = (int32_t)(K - 2 * (int64_t)tot[o][p]);
    }
    finish(env, dots, NP_PORTABLE, o0, p0);
}
#endif

typedef struct {
    const char *name;
    micro_fn fn;
    int np;        /* output positions per tile */
    micro_fn tail; /* np / 2 positions, for a short last tile (or NULL) */
    pack_fn pack;
    micro_fn fn_post, tail_post; /* the same with fused successors (e.g. AVX-512's), or NULL: fn and tail do both */
} kernel_choice;

#ifdef BC_X86
static int cpu_has(const char *feature) {
    __builtin_cpu_init();
    if (!strcmp(feature, "avx512")) return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
                                             __builtin_cpu_supports("avx512vpopcntdq");
    if (!strcmp(feature, "avx2")) return __builtin_cpu_supports("avx2");
    if (!strcmp(feature, "popcnt")) return __builtin_cpu_supports("popcnt");
    return 0;
}
#endif

/* isa: "auto" (best this CPU runs), or one of the names below to force a path (tests). */
static int choose(const char *isa, kernel_choice *out) {
    int any = !isa || !*isa || !strcmp(isa, "auto");
#ifdef BC_X86
    if ((any || !strcmp(isa, "avx512")) && cpu_has("avx512")) {
        *out = (kernel_choice){"avx512", micro_avx512, NP_AVX512, micro_avx512_tail, pack_row_avx512, micro_avx512_post,
                               micro_avx512_post_tail};
        return 0;
    }
    if ((any || !strcmp(isa, "avx2")) && cpu_has("avx2")) {
        *out = (kernel_choice){"avx2", micro_avx2, NP_AVX2, NULL, pack_row_avx2, NULL, NULL};
        return 0;
    }
    if ((any || !strcmp(isa, "popcnt")) && cpu_has("popcnt")) {
        *out = (kernel_choice){"popcnt", micro_popcnt, NP_PORTABLE, NULL, pack_row_scalar, NULL, NULL};
        return 0;
    }
#endif
#ifdef BC_NEON
    if (any || !strcmp(isa, "neon")) { /* ASIMD is part of every AArch64 CPU */
        *out = (kernel_choice){"neon", micro_neon, NP_PORTABLE, NULL, pack_row_scalar, NULL, NULL};
        return 0;
    }
#endif
    if (any || !strcmp(isa, "portable")) {
        *out = (kernel_choice){"portable", micro_portable, NP_PORTABLE, NULL, pack_row_scalar, NULL, NULL};
        return 0;
    }
    return -1;
}

const char *bconv_isa(const char *isa) {
    kernel_choice k;
    return choose(isa, &k) ? NULL : k.name;
}

/* -- packing ------------------------------------------------------------------------- */
static uint64_t pad_word(const bconv_shape *s, int64_t cw) {
    if (!s->pad_ones) return 0;
    int64_t rest = s->C - cw * 64;
    return rest >= 64 ? ~0ULL : ((1ULL << rest) - 1);
}

/* Sign bits of one channel word-group for input row y; row points at the row's first
 * unpadded word. Scalar: any CPU. */
static void pack_row_scalar(const float *x, int64_t stride_c, int64_t n_c, const float *shift, int64_t W,
                            uint64_t *row) {
    memset(row, 0, (size_t)W * sizeof(uint64_t));
    for (int64_t c = 0; c < n_c; c++) {
        const float *xr = x + c * stride_c;
        if (shift) {
            const float h = shift[c];
            for (int64_t i = 0; i < W; i++) row[i] |= (uint64_t)(!(xr[i] + h >= 0.0f)) << c;
        } else {
            for (int64_t i = 0; i < W; i++) row[i] |= (uint64_t)(!(xr[i] >= 0.0f)) << c;
        }
    }
}

#ifdef BC_X86
/* 16 positions at a time: one compare mask per channel ORs bit c into 16 words. */
__attribute__((target("avx512f"))) static void pack_row_avx512(const float *x, int64_t stride_c, int64_t n_c,
                                                               const float *shift, int64_t W, uint64_t *row) {
    for (int64_t i = 0; i < W; i += 16) {
        const __mmask16 live = W - i >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (W - i)) - 1);
        __m512i lo = _mm512_setzero_si512(), hi = _mm512_setzero_si512();
        for (int64_t c = 0; c < n_c; c++) {
            __m512 v = _mm512_maskz_loadu_ps(live, x + c * stride_c + i);
            if (shift) v = _mm512_add_ps(v, _mm512_set1_ps(shift[c]));
            const __mmask16 neg = _mm512_cmp_ps_mask(v, _mm512_setzero_ps(), _CMP_NGE_UQ);
            const __m512i bit = _mm512_set1_epi64((long long)(1ULL << c));
            lo = _mm512_mask_or_epi64(lo, (__mmask8)(neg & 0xFF), lo, bit);
            hi = _mm512_mask_or_epi64(hi, (__mmask8)(neg >> 8), hi, bit);
        }
        _mm512_mask_storeu_epi64(row + i, (__mmask8)(live & 0xFF), lo);
        _mm512_mask_storeu_epi64(row + i + 8, (__mmask8)(live >> 8), hi);
    }
}

/* 8 positions at a time: the 32-bit compare lanes, sign-extended to 64 bits, select bit c. */
__attribute__((target("avx2"))) static void pack_row_avx2(const float *x, int64_t stride_c, int64_t n_c,
                                                          const float *shift, int64_t W, uint64_t *row) {
    int64_t i = 0;
    for (; i + 8 <= W; i += 8) {
        __m256i lo = _mm256_setzero_si256(), hi = _mm256_setzero_si256();
        for (int64_t c = 0; c < n_c; c++) {
            __m256 v = _mm256_loadu_ps(x + c * stride_c + i);
            if (shift) v = _mm256_add_ps(v, _mm256_set1_ps(shift[c]));
            const __m256i neg = _mm256_castps_si256(_mm256_cmp_ps(v, _mm256_setzero_ps(), _CMP_NGE_UQ));
            const __m256i bit = _mm256_set1_epi64x((long long)(1ULL << c));
            lo = _mm256_or_si256(lo, _mm256_and_si256(_mm256_cvtepi32_epi64(_mm256_castsi256_si128(neg)), bit));
            hi = _mm256_or_si256(hi, _mm256_and_si256(_mm256_cvtepi32_epi64(_mm256_extracti128_si256(neg, 1)), bit));
        }
        _mm256_storeu_si256((__m256i *)(row + i), lo);
        _mm256_storeu_si256((__m256i *)(row + i + 4), hi);
    }
    if (i < W) pack_row_scalar(x + i, stride_c, n_c, shift, W - i, row + i);
}
#endif

static void pack_rows(const bconv_shape *s, pack_fn pack, const float *x, const float *shift, uint64_t *planes,
                      int64_t cw, int64_t y) {
    const int64_t Hp = s->H + s->pt + s->pb, Wp = s->W + s->pl + s->pr;
    const int64_t c0 = cw * 64, c1 = c0 + 64 < s->C ? c0 + 64 : s->C;
    const uint64_t pad = pad_word(s, cw);
    uint64_t *row = planes + cw * Hp * Wp + (y + s->pt) * Wp;
    for (int64_t i = 0; i < s->pl; i++) row[i] = pad;
    for (int64_t i = s->pl + s->W; i < Wp; i++) row[i] = pad;
    pack(x + (c0 * s->H + y) * s->W, s->H * s->W, c1 - c0, shift ? shift + c0 : NULL, s->W, row + s->pl);
}

static void pad_border_rows(const bconv_shape *s, uint64_t *planes, int64_t cw) {
    const int64_t Hp = s->H + s->pt + s->pb, Wp = s->W + s->pl + s->pr;
    const uint64_t pad = pad_word(s, cw);
    uint64_t *plane = planes + cw * Hp * Wp;
    for (int64_t y = 0; y < Hp; y++) {
        if (y >= s->pt && y < s->pt + s->H) continue;
        for (int64_t i = 0; i < Wp; i++) plane[y * Wp + i] = pad;
    }
}

/* Taps per word: where C divides 64, a patch's taps are packed back to back (tap t of word j at
 * bit (t - j * per) * C), so a 16-channel 3x3 patch is 3 words instead of 9 words a quarter full:
 * the popcount loop (the whole cost of a narrow layer) runs a third as long. Otherwise 1. */
static int64_t taps_per_word(int64_t C, int64_t taps) {
    const int64_t per = C < 64 && 64 % C == 0 ? 64 / C : 1;
    return per < taps ? per : taps;
}

int64_t bconv_patch_words(int64_t C, int64_t kh, int64_t kw) {
    const int64_t taps = kh * kw, per = taps_per_word(C, taps);
    return per > 1 ? (taps + per - 1) / per : taps * ((C + 63) / 64);
}

/* dst[i] = OR over taps t of src[t][i * sw] << shift[t], with nt and sw constants where the
 * caller can make them so (inlined into a switch: the loop over positions then vectorises). */
__attribute__((always_inline)) static inline void or_taps(uint64_t *restrict dst, const uint64_t *const *src,
                                                          const int64_t *shift, const int nt, int64_t n, const int64_t sw) {
    for (int64_t i = 0; i < n; i++) {
        uint64_t w = src[0][i * sw];
        for (int t = 1; t < nt; t++) w |= src[t][i * sw] << shift[t];
        dst[i] = w;
    }
}

/* Word j of the patches of output positions [p0, p1): A[j][p], j in (ky, kx, cw) order, or with
 * several taps per word the OR of taps j * per .. each shifted to its bits. Positions from P
 * up to p1 (the last tile's padding, when p1 > P) get zeros, so tails are harmless. */
#ifdef BC_X86
__attribute__((target_clones("avx512f", "avx2", "default")))
#endif
static void gather_taps(const bconv_shape *s, const uint64_t *planes, uint64_t *A, int64_t lda, int64_t j, int64_t p0,
                        int64_t p1, int64_t OW, int64_t P) {
    const int64_t Hp = s->H + s->pt + s->pb, Wp = s->W + s->pl + s->pr, taps = s->kh * s->kw;
    const int64_t per = taps_per_word(s->C, taps), Wc = per > 1 ? 1 : (s->C + 63) / 64;
    const int64_t cw = j % Wc, t0 = per > 1 ? j * per : j / Wc, t1 = t0 + per < taps ? t0 + per : taps;
    const int nt = (int)(t1 - t0);
    const uint64_t *plane = planes + cw * Hp * Wp;
    uint64_t *dst = A + j * lda;
    const int64_t end = p1 < P ? p1 : P, sw = s->sw;
    int64_t p = p0, oy = p0 / OW, ox = p0 % OW;
    const uint64_t *src[64];
    int64_t shift[64], off[64];
    for (int t = 0; t < nt; t++) {
        const int64_t ky = (t0 + t) / s->kw, kx = (t0 + t) % s->kw;
        off[t] = ky * s->dh * Wp + kx * s->dw;
        shift[t] = t * s->C;
    }
    while (p < end) { /* a run of one output row */
        const int64_t n = OW - ox < end - p ? OW - ox : end - p;
        const uint64_t *row = plane + oy * s->sh * Wp + ox * sw;
        for (int t = 0; t < nt; t++) src[t] = row + off[t];
        uint64_t *d = dst + p;
        if (nt == 1 && sw == 1) memcpy(d, src[0], (size_t)n * sizeof(uint64_t));
        else if (nt == 4 && sw == 1) or_taps(d, src, shift, 4, n, 1);
        else if (nt == 2 && sw == 1) or_taps(d, src, shift, 2, n, 1);
        else if (nt == 1 && sw == 2) or_taps(d, src, shift, 1, n, 2);
        else if (nt == 4 && sw == 2) or_taps(d, src, shift, 4, n, 2);
        else if (nt == 2 && sw == 2) or_taps(d, src, shift, 2, n, 2);
        else or_taps(d, src, shift, nt, n, sw);
        p += n;
        ox = 0;
        oy++;
    }
    if (p1 > end) memset(dst + end, 0, (size_t)(p1 - end) * sizeof(uint64_t));
}

int64_t bconv_out_h(const bconv_shape *s) { return (s->H + s->pt + s->pb - s->dh * (s->kh - 1) - 1) / s->sh + 1; }
int64_t bconv_out_w(const bconv_shape *s) { return (s->W + s->pl + s->pr - s->dw * (s->kw - 1) - 1) / s->sw + 1; }

/* -- the epilogue: integer dots to float outputs in the reference's rounding order -- */
#ifdef BC_X86
__attribute__((target_clones("avx512f", "arch=haswell", "default")))
#endif
static void finish(const tile_env *env, const int32_t *dots, int np, int64_t o0, int64_t p0) {
    const bconv_shape *s = env->s;
    const bconv_epilogue *e = env->e;
    const int64_t P = env->P, pn = p0 + np <= P ? np : P - p0;
    float v[64];
    uint8_t nb[64] = {0};
    for (int o = 0; o < NO && o0 + o < s->cout; o++) {
        const int64_t oc = o0 + o;
        const int32_t *d = dots + o * np;
        if (e->corr_cls) {
            const int32_t *cls = e->corr_cls + p0, *table = e->corr_table + oc * e->n_cls;
            for (int64_t p = 0; p < pn; p++) v[p] = (float)(d[p] - table[cls[p]]);
        } else {
            for (int64_t p = 0; p < pn; p++) v[p] = (float)d[p];
        }
        if (e->alpha) {
            const float al = e->alpha[oc];
            for (int64_t p = 0; p < pn; p++) v[p] = v[p] * al;
        }
        if (env->has_beta)
            for (int64_t p = 0; p < pn; p++) v[p] = v[p] * env->beta;
        if (e->cs) {
            const float cs = e->cs[oc];
            for (int64_t p = 0; p < pn; p++) v[p] = v[p] * cs;
        }
        if (e->bias) {
            const float bi = e->bias[oc];
            for (int64_t p = 0; p < pn; p++) v[p] = v[p] + bi;
        }
        if (e->post_scale) {
            const float sc = e->post_scale[oc], sh = e->post_shift[oc];
            for (int64_t p = 0; p < pn; p++) v[p] = fmaf(v[p], sc, sh);
        }
        if (env->res) {
            const float *r = env->res + oc * P + p0;
            for (int64_t p = 0; p < pn; p++) v[p] = v[p] + r[p];
        }
        if (e->has_clamp) {
            const float lo = e->lo, hi = e->hi;
            for (int64_t p = 0; p < pn; p++) v[p] = v[p] < lo ? lo : (v[p] > hi ? hi : v[p]); /* NaN kept */
        }
        if (env->bits) {
            const float sh = e->bits->shift ? e->bits->shift[oc] : 0.0f;
            if (e->bits->shift)
                for (int64_t p = 0; p < pn; p++) v[p] = v[p] + sh;
            for (int64_t p = 0; p < pn; p++) nb[p] |= (uint8_t)((uint8_t)!(v[p] >= 0.0f) << o);
            continue;
        }
        memcpy(env->out + oc * P + p0, v, (size_t)pn * sizeof(float));
    }
    if (env->bits) put_bits(env, o0, p0, pn, nb);
}

/* One byte per position: channels o0..o0+7 of the positions p0.. into the next conv's planes. */
static void put_bits(const tile_env *env, int64_t o0, int64_t p0, int64_t pn, const uint8_t *nb) {
    const bconv_bits_out *bo = env->e->bits;
    uint8_t *base = (uint8_t *)(env->bits + (o0 / 64) * bo->Hp * bo->Wp) + (o0 % 64) / 8; /* little-endian words */
    const int64_t *word = env->pos_word + p0;
    for (int64_t p = 0; p < pn; p++) base[word[p] * 8] = nb[p];
}

/* Row y of output plane group cw before any tile writes: the border gets the next conv's pad
 * word, the inside zeros (tiles fill their bytes; bytes of channels past cout stay zero). */
static void clear_out_row(const bconv_shape *s, const bconv_bits_out *bo, uint64_t *planes, int64_t cw, int64_t y) {
    const int64_t OH = bconv_out_h(s), OW = bconv_out_w(s), rest = s->cout - cw * 64;
    const uint64_t pad = !bo->pad_ones ? 0 : rest >= 64 ? ~0ULL : ((1ULL << rest) - 1);
    uint64_t *row = planes + (cw * bo->Hp + y) * bo->Wp;
    const int inside = y >= bo->pt && y < bo->pt + OH;
    for (int64_t i = 0; i < bo->Wp; i++) row[i] = inside && i >= bo->pl && i < bo->pl + OW ? 0 : pad;
}

/* One sample of one layer, as every thread of its team sees it. */
typedef struct {
    const bconv_shape *s;
    const bconv_epilogue *e;
    const kernel_choice *kc;
    const float *xb;       /* this sample's float input, or NULL when pb is given */
    const uint64_t *pb;    /* its packed planes: the previous conv's, or `planes` packed here */
    uint64_t *planes;
    const uint64_t *B;
    uint64_t *A;
    tile_env env;
    int64_t Wc, Wco, KW, K, P, OW, np, ptiles, Ppad, oblocks;
} layer_job;

/* Thread tid's contiguous share [*i0, *i1) of n items (OpenMP's static schedule). */
static inline void share(int64_t n, int64_t tid, int64_t nth, int64_t *i0, int64_t *i1) {
    *i0 = n * tid / nth;
    *i1 = n * (tid + 1) / nth;
}

static inline void team_barrier(int64_t nth) {
#ifdef _OPENMP
    if (nth > 1) {
#pragma omp barrier
    }
#else
    (void)nth;
#endif
}

/* Output channel block obk at positions p0 .. p0 + np: the micro-kernel (its short-tail form
 * for a last tile of at most np / 2 positions) and its epilogue. */
static inline void run_tile(const layer_job *jb, int64_t obk, int64_t p0) {
    const int64_t np = jb->np, KW = jb->KW;
    const micro_fn fn = jb->kc->tail && jb->P - p0 <= np / 2 ? jb->kc->tail : jb->kc->fn;
    fn(jb->A + p0, jb->Ppad, jb->B + obk * KW * NO, KW, jb->K, obk * NO, p0, &jb->env);
}

/* The layer on thread tid of nth (nth = 1: the caller's thread, no OpenMP at all). */
static void layer_pass(const layer_job *jb, int64_t tid, int64_t nth) {
    const bconv_shape *s = jb->s;
    const bconv_epilogue *e = jb->e;
    const bconv_bits_out *bo = e->bits;
    const int64_t KW = jb->KW, P = jb->P, OW = jb->OW, np = jb->np, ptiles = jb->ptiles, Ppad = jb->Ppad;
    int64_t i0, i1;
    if (jb->xb) { /* pack (planes' inside rows), pad (their border rows), clear the output planes: disjoint */
        share(jb->Wc * s->H, tid, nth, &i0, &i1);
        for (int64_t i = i0; i < i1; i++) pack_rows(s, jb->kc->pack, jb->xb, e->shift, jb->planes, i / s->H, i % s->H);
        share(jb->Wc, tid, nth, &i0, &i1);
        for (int64_t cw = i0; cw < i1; cw++) pad_border_rows(s, jb->planes, cw);
    }
    if (bo) {
        share(jb->Wco * bo->Hp, tid, nth, &i0, &i1);
        for (int64_t i = i0; i < i1; i++) clear_out_row(s, bo, jb->env.bits, i / bo->Hp, i % bo->Hp);
    }
    team_barrier(nth);
    if (ptiles >= 2 * nth) {
        /* Threads split the positions: each gathers and reads only its own columns of A.
         * (Splitting the channels made every thread read the half of A the other core
         * had just written: 64->64 @ 56 scaled x1.13 on 2 threads.) */
        share(ptiles, tid, nth, &i0, &i1);
        for (int64_t j = 0; j < KW; j++) gather_taps(s, jb->pb, jb->A, Ppad, j, i0 * np, i1 * np, OW, P);
        for (int64_t obk = 0; obk < jb->oblocks; obk++)
            for (int64_t t = i0; t < i1; t++) run_tile(jb, obk, t * np);
    } else { /* few positions: threads split the channels */
        share(KW, tid, nth, &i0, &i1);
        for (int64_t j = i0; j < i1; j++) gather_taps(s, jb->pb, jb->A, Ppad, j, 0, Ppad, OW, P);
        team_barrier(nth);
        share(ptiles * jb->oblocks, tid, nth, &i0, &i1);
        for (int64_t t = i0; t < i1; t++) run_tile(jb, t / ptiles, (t % ptiles) * np);
    }
}

/* The epilogue's per-channel constants for the vector kernels, the missing ones neutral. */
static void chan_table(const bconv_epilogue *e, int64_t cout, float *chan) {
    for (int64_t o = 0; o < cout; o++) {
        float *c = chan + o * CHAN_FLOATS;
        c[CH_ALPHA] = e->alpha ? e->alpha[o] : 1.0f;
        c[CH_CS] = e->cs ? e->cs[o] : 1.0f;
        c[CH_BIAS] = e->bias ? e->bias[o] : -0.0f;
        c[CH_POST_SCALE] = e->post_scale ? e->post_scale[o] : 1.0f;
        c[CH_POST_SHIFT] = e->post_scale ? e->post_shift[o] : -0.0f;
        c[CH_LO] = e->has_clamp ? e->lo : -INFINITY;
        c[CH_HI] = e->has_clamp ? e->hi : INFINITY;
        c[CH_NEXT_SHIFT] = e->bits && e->bits->shift ? e->bits->shift[o] : -0.0f;
    }
}

int bconv2d(const bconv_shape *s, const bconv_epilogue *e, const float *x, const uint64_t *planes_in,
            const float *beta, int64_t n, const uint64_t *B, float *out, const char *isa, int threads) {
    kernel_choice kc;
    if (choose(isa, &kc)) return -1;
    if (kc.fn_post && (e->post_scale || e->residual || e->has_clamp || e->bits)) {
        kc.fn = kc.fn_post;
        kc.tail = kc.tail_post;
    }
    const int64_t Hp = s->H + s->pt + s->pb, Wp = s->W + s->pl + s->pr, Wc = (s->C + 63) / 64;
    const int64_t OH = bconv_out_h(s), OW = bconv_out_w(s), P = OH * OW, KW = bconv_patch_words(s->C, s->kh, s->kw);
    const int64_t np = kc.np, ptiles = (P + np - 1) / np, Ppad = ptiles * np, oblocks = (s->cout + NO - 1) / NO;
    const int64_t K = s->C * s->kh * s->kw;
    const bconv_bits_out *bo = e->bits;
    const int64_t Wco = (s->cout + 63) / 64, bits_plane = bo ? Wco * bo->Hp * bo->Wp : 0;
    uint64_t *planes = NULL, *A = NULL;
    int64_t *pos_word = NULL;
    float chan_stack[CHAN_FLOATS * 256], *chan = s->cout <= 256 ? chan_stack : NULL;
    if ((!planes_in && posix_memalign((void **)&planes, 64, (size_t)(Wc * Hp * Wp) * sizeof(uint64_t))) ||
        posix_memalign((void **)&A, 64, (size_t)(KW * Ppad) * sizeof(uint64_t)) ||
        (bo && !(pos_word = malloc((size_t)P * sizeof(int64_t)))) ||
        (!chan && !(chan = malloc((size_t)(CHAN_FLOATS * s->cout) * sizeof(float))))) {
        free(planes);
        free(A);
        free(pos_word);
        return -2;
    }
    chan_table(e, s->cout, chan);
    for (int64_t oy = 0, p = 0; bo && oy < OH; oy++) /* no division per position */
        for (int64_t ox = 0; ox < OW; ox++) pos_word[p++] = (oy + bo->pt) * bo->Wp + ox + bo->pl;
    layer_job jb = {s, e, &kc, NULL, NULL, planes, B, A, {0}, Wc, Wco, KW, K, P, OW, np, ptiles, Ppad, oblocks};
    /* Small layers stay on one thread, outside OpenMP: waking a second one costs more than it
     * saves, and even a team of one pays a futex call per barrier (three per layer here). */
#ifdef _OPENMP
    const int team = threads > 1 && P * s->cout * KW >= PARALLEL_PAIRS;
#else
    const int team = 0;
#endif
    for (int64_t b = 0; b < n; b++) {
        jb.xb = planes_in ? NULL : x + b * s->C * s->H * s->W;
        jb.pb = planes_in ? planes_in + b * Wc * Hp * Wp : planes;
        jb.env = (tile_env){s, e, beta ? beta[b] : 1.0f, beta != NULL, P, out + b * s->cout * P,
                            e->residual ? e->residual + b * s->cout * P : NULL, bo ? bo->planes + b * bits_plane : NULL,
                            pos_word, chan};
        if (!team) {
            layer_pass(&jb, 0, 1);
            continue;
        }
#ifdef _OPENMP
#pragma omp parallel num_threads(threads)
        layer_pass(&jb, omp_get_thread_num(), omp_get_num_threads());
#endif
    }
    free(planes);
    free(A);
    free(pos_word);
    if (chan != chan_stack) free(chan);
    return 0;
}

/* The micro-kernel alone on an L1-resident tile (KW = 64 words): the popcount ceiling a
 * layer's throughput is compared with. Returns the word pairs processed (64 binary MACs
 * each), or -1 / -2 as bconv2d. The caller times it. */
int64_t bconv_ceiling(const char *isa, int64_t reps) {
    kernel_choice kc;
    if (choose(isa, &kc)) return -1;
    const int64_t KW = 64, np = kc.np;
    uint64_t *A = NULL, *B = NULL;
    float *out = malloc((size_t)(NO * np) * sizeof(float));
    if (!out || posix_memalign((void **)&A, 64, (size_t)(KW * np) * sizeof(uint64_t)) ||
        posix_memalign((void **)&B, 64, (size_t)(KW * NO) * sizeof(uint64_t))) {
        free(out);
        free(A);
        return -2;
    }
    uint64_t r = 0x9E3779B97F4A7C15ULL;
    for (int64_t i = 0; i < KW * np; i++) A[i] = (r = r * 6364136223846793005ULL + 1442695040888963407ULL);
    for (int64_t i = 0; i < KW * NO; i++) B[i] = (r = r * 6364136223846793005ULL + 1442695040888963407ULL);
    const bconv_shape s = {64 * KW, 1, 1, NO, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0};
    const bconv_epilogue e = {0};
    float chan[CHAN_FLOATS * NO];
    chan_table(&e, NO, chan);
    const tile_env env = {&s, &e, 1.0f, 0, np, out, NULL, NULL, NULL, chan};
    for (int64_t i = 0; i < reps; i++) kc.fn(A, np, B, KW, 64 * KW, 0, 0, &env);
    free(A);
    free(B);
    free(out);
    return reps * KW * np * NO;
}
