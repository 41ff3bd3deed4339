/*
 * Full-precision elementwise and pooling ops of the custom runtime, where numpy makes
 * temporaries (the float64 affine, np.clip, one np.maximum per pooling tap).
 *
 * channel_fma: y = fmaf(x, scale[c], shift[c]), one rounding, as torch's batch norm.
 * clamp:       y = min(max(x, lo), hi) with NaN kept (np.clip's semantics).
 * unary:       GELU in torch's float32 formula and order ((x * 0.5) * (1 + erf(x * sqrt(1/2))),
 *              or (0.5 * x) * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3)))), tanh, and x with a
 *              float32 constant (+, -, *, /, either side).
 * layer_norm, softmax: rows of the Transformer ops, shared by the per-node path and the executor
 *              so that both compute the same floats.
 * max_pool2d:  max over each window, padding never wins (-inf), NaN propagates.
 * im2col2d:    the columns of a zero-padded conv for output rows [oy0, oy1), contiguous,
 *              (C * kh * kw, rows * OW), ready for one sgemm (numpy's strided copy of the
 *              same view measured 1.4 ms on resnet18's stem, this loop a fraction of it).
 * Each x86 function is cloned for AVX-512, AVX2+FMA and baseline, picked at load time.
 */
#define _POSIX_C_SOURCE 200112L
#include "fpops.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
#define FP_CLONES __attribute__((target_clones("avx512f", "arch=haswell", "default")))
#else
#define FP_CLONES
#endif
/* Lets a select on a comparison (a clamp, a NaN test) become a vector blend: the values are the
 * same, only FP-exception traps, which nothing here enables, are assumed off. */
#if defined(__GNUC__) && !defined(__clang__)
#define FP_SELECTS __attribute__((optimize("no-trapping-math")))
#else
#define FP_SELECTS
#endif

FP_CLONES void fp_channel_fma(const float *x, const float *scale, const float *shift, int64_t n, int64_t c,
                              int64_t inner, const float *clamp_lo_hi, float *y, int threads) {
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(threads > 0 ? threads : 1) if (n * c * inner > (1 << 16))
#endif
    for (int64_t bc = 0; bc < n * c; bc++) {
        const int64_t ch = bc % c;
        const float s = scale[ch], h = shift[ch];
        const float *xr = x + bc * inner;
        float *yr = y + bc * inner;
        if (clamp_lo_hi) { /* a Hardtanh right after, fused: fmaf then clamp, as the two nodes compute */
            const float lo = clamp_lo_hi[0], hi = clamp_lo_hi[1];
            for (int64_t i = 0; i < inner; i++) {
                const float v = fmaf(xr[i], s, h);
                yr[i] = v < lo ? lo : (v > hi ? hi : v);
            }
        } else {
            for (int64_t i = 0; i < inner; i++) yr[i] = fmaf(xr[i], s, h);
        }
    }
}

void fp_im2col2d(const float *x, int64_t C, int64_t H, int64_t W, const fp_pool2d *p, int64_t oy0, int64_t oy1,
                 float *cols, int threads) {
    const int64_t OW = p->ow, rows = (oy1 - oy0) * OW;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(threads > 0 ? threads : 1) if (C * p->kh * p->kw * rows > (1 << 16))
#endif
    for (int64_t r = 0; r < C * p->kh * p->kw; r++) {
        const int64_t c = r / (p->kh * p->kw), ky = (r / p->kw) % p->kh, kx = r % p->kw;
        const float *plane = x + c * H * W;
        float *dst = cols + r * rows;
        const int64_t off = kx * p->dw - p->pl;
        int64_t lo = off >= 0 ? 0 : (-off + p->sw - 1) / p->sw;
        int64_t hi = W - 1 - off < 0 ? -1 : (W - 1 - off) / p->sw;
        if (hi > OW - 1) hi = OW - 1;
        if (lo > OW) lo = OW;
        for (int64_t oy = oy0; oy < oy1; oy++) {
            float *d = dst + (oy - oy0) * OW;
            const int64_t iy = oy * p->sh + ky * p->dh - p->pt;
            if (iy < 0 || iy >= H || hi < lo) {
                for (int64_t ox = 0; ox < OW; ox++) d[ox] = 0.0f;
                continue;
            }
            const float *row = plane + iy * W + off;
            for (int64_t ox = 0; ox < lo; ox++) d[ox] = 0.0f;
            if (p->sw == 1) {
                for (int64_t ox = lo; ox <= hi; ox++) d[ox] = row[ox];
            } else {
                const int64_t sw = p->sw;
                for (int64_t ox = lo; ox <= hi; ox++) d[ox] = row[ox * sw];
            }
            for (int64_t ox = hi + 1; ox < OW; ox++) d[ox] = 0.0f;
        }
    }
}

FP_CLONES void fp_clamp(const float *x, int64_t n, float lo, float hi, float *y, int threads) {
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(threads > 0 ? threads : 1) if (n > (1 << 16))
#endif
    for (int64_t i = 0; i < n; i++) {
        const float v = x[i];
        y[i] = v < lo ? lo : (v > hi ? hi : v); /* NaN compares false both ways: kept */
    }
}

/* NaN-sticky max: once either side is NaN the result is NaN (torch's max pool propagates it). */
static inline float nan_max(float cur, float v) { return ((cur == cur) & ((v > cur) | (v != v))) ? v : cur; }

/* erf on [0, 4] as a Chebyshev series in u = (a - 2) / 2, 29 terms fitted here to erf by least
 * squares on a fine grid (max abs error 5e-14: erf rounded to float is then erf correctly
 * rounded except within 1e-13 of a rounding boundary). Past 4, erf is 1 in float32. */
static const double ERF_CHEB[29] = {
    0.77218297576126782,
    0.39634147636776124,
    -0.25617042679494229,
    0.11370266355467494,
    -0.024340027671518483,
    -0.0077272536519564011,
    0.0086817887073197854,
    -0.0028323927798943891,
    -0.00020979392726104567,
    0.00053715372038812877,
    -0.00017101487638100424,
    -1.6227686663916749e-05,
    2.8101774635026386e-05,
    -6.4821288153112128e-06,
    -1.5155730378413039e-06,
    1.1408058723359367e-06,
    -1.2412662235824037e-07,
    -8.7700607159883295e-08,
    3.200576729761665e-08,
    1.3566602294133467e-09,
    -3.1544691384395127e-09,
    4.9867211637122217e-10,
    1.6827183310186163e-10,
    -6.9811521654186096e-11,
    -9.4894580429147492e-13,
    5.3237418969356537e-12,
    -7.7358759932067819e-13,
    -2.5137626661523693e-13,
    9.1814059112686266e-14
};
enum { ERF_TERMS = 29, ERF_BLOCK = 64 };

/* GELU (erf) over a block of at most ERF_BLOCK values: torch's float32 steps, t = x * sqrt(1/2),
 * e = erf(t) rounded to float, y = (x * 0.5) * (1 + e). Clenshaw's recurrence for the block's
 * values side by side (v = 2u; b = c_k + v b1 - b2; erf = c_0 + (v / 2) b1 - b2): 64 independent
 * chains in vector registers hide the recurrence's latency (libm's erff is a scalar call, 16 ns a
 * value here; this is about 2.5 ns with AVX-512). */
FP_CLONES FP_SELECTS static void gelu_block(const float *x, int64_t len, float alpha, float *y) {
    float in[ERF_BLOCK], t[ERF_BLOCK], out[ERF_BLOCK];
    double v[ERF_BLOCK], b1[ERF_BLOCK], b2[ERF_BLOCK];
    memset(in, 0, sizeof(in));
    memcpy(in, x, sizeof(float) * (size_t)len);
    for (int j = 0; j < ERF_BLOCK; j++) { /* fixed trip counts and no branches: every loop vectorises */
        t[j] = in[j] * alpha;
        const double a = fabs((double)t[j]);
        v[j] = (a < 4.0 ? a : 4.0) - 2.0;
        b1[j] = 0.0;
        b2[j] = 0.0;
    }
    for (int k = ERF_TERMS - 1; k >= 1; k--)
        for (int j = 0; j < ERF_BLOCK; j++) {
            const double b = ERF_CHEB[k] + v[j] * b1[j] - b2[j];
            b2[j] = b1[j];
            b1[j] = b;
        }
    for (int j = 0; j < ERF_BLOCK; j++) {
        const double a = ERF_CHEB[0] + 0.5 * v[j] * b1[j] - b2[j];
        const float e = (float)copysign(a, (double)t[j]);
        out[j] = in[j] * 0.5f * (1.0f + (t[j] == t[j] ? e : t[j])); /* NaN in, NaN out */
    }
    memcpy(y, out, sizeof(float) * (size_t)len);
}

/* tanhf is libm's (within an ulp of exact, as torch's vectorised one). For GELU the float32
 * rounding of each step is torch's, so an output torch rounds to -0.0 (x below about -5.4,
 * where 1 + erf(...) is 0 in float32) is -0.0 here too and takes the same sign. */
void fp_unary(const float *x, int64_t n, int kind, float value, float *y, int threads) {
    /* sqrt(1/2) and sqrt(2) * (2 / sqrt(pi)) / 2 as doubles (C11 has no M_SQRT1_2), then rounded
     * to float as torch's scalar_t constants are */
    const float alpha = (float)0.70710678118654752440, half = 0.5f, one = 1.0f;
    const float beta = (float)(1.41421356237309504880 * 1.12837916709551257390 * 0.5), kappa = 0.044715f;
    if (kind == FP_GELU) {
        const int64_t blocks = (n + ERF_BLOCK - 1) / ERF_BLOCK;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(threads > 0 ? threads : 1) if (n > (1 << 15))
#endif
        for (int64_t b = 0; b < blocks; b++) {
            const int64_t i0 = b * ERF_BLOCK, len = n - i0 < ERF_BLOCK ? n - i0 : ERF_BLOCK;
            gelu_block(x + i0, len, alpha, y + i0);
        }
        return;
    }
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(threads > 0 ? threads : 1) if (n > (1 << 15))
#endif
    for (int64_t i = 0; i < n; i++) {
        const float v = x[i];
        switch (kind) {
        case FP_GELU_TANH: {
            const float cube = v * v * v;
            const float inner = beta * (v + kappa * cube);
            y[i] = half * v * (one + tanhf(inner));
            break;
        }
        case FP_TANH:
            y[i] = tanhf(v);
            break;
        case FP_ADD:
            y[i] = v + value;
            break;
        case FP_SUB:
            y[i] = v - value;
            break;
        case FP_MUL:
            y[i] = v * value;
            break;
        case FP_DIV:
            y[i] = v / value;
            break;
        case FP_RSUB:
            y[i] = value - v;
            break;
        default: /* FP_RDIV */
            y[i] = value / v;
        }
    }
}

/* torch's order: mean and biased variance (here summed in double), rstd = 1 / sqrt(var + eps)
 * rounded to float, then in float32 (x * rstd + (-rstd * mean)) * weight + bias. */
void fp_layer_norm(const float *x, int64_t rows, int64_t cols, const float *weight, const float *bias, double eps,
                   float *y) {
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * cols;
        float *yr = y + r * cols;
        double sum = 0.0, sq = 0.0;
        for (int64_t j = 0; j < cols; j++) sum += xr[j];
        const double mean = sum / (double)cols;
        for (int64_t j = 0; j < cols; j++) sq += (xr[j] - mean) * (xr[j] - mean);
        const double var = sq / (double)cols;
        const float rstd = (float)(1.0 / sqrt((var > 0.0 ? var : 0.0) + eps));
        const float shift = -rstd * (float)mean;
        for (int64_t j = 0; j < cols; j++) {
            float v = xr[j] * rstd;
            v = v + shift;
            if (weight) v = v * weight[j];
            if (bias) v = v + bias[j];
            yr[j] = v;
        }
    }
}

/* exp of a block of ERF_BLOCK float values, in double and rounded once (within an ulp of expf):
 * k = round(x / ln 2), r = x - k ln 2 (ln 2 in two parts), exp(r) by its Taylor series to r^12
 * (|r| <= 0.35: error below 1e-15), times 2^k built from k's bits. Branch-free with fixed trip
 * counts, so it vectorises (libm's expf is a scalar call). Inputs below -110 give 0, as in float. */
static const double EXP_TAYLOR[13] = {1.0,
                                      1.0,
                                      1.0 / 2,
                                      1.0 / 6,
                                      1.0 / 24,
                                      1.0 / 120,
                                      1.0 / 720,
                                      1.0 / 5040,
                                      1.0 / 40320,
                                      1.0 / 362880,
                                      1.0 / 3628800,
                                      1.0 / 39916800,
                                      1.0 / 479001600};

FP_CLONES FP_SELECTS static void exp_block(const float *in, float *out) {
    const double log2e = 1.4426950408889634, ln2_hi = 0.693147180369123816490, ln2_lo = 1.90821492927058770002e-10;
    const double shifter = 6755399441055744.0; /* 1.5 * 2^52: adding it rounds to an integer in the low bits */
    int64_t shifter_bits;
    memcpy(&shifter_bits, &shifter, sizeof(shifter_bits));
    double r[ERF_BLOCK], p[ERF_BLOCK], kk[ERF_BLOCK];
    for (int j = 0; j < ERF_BLOCK; j++) {
        float c = in[j] < -110.0f ? -110.0f : in[j]; /* NaN gives 89 here: restored below */
        c = c < 89.0f ? c : 89.0f;
        const double x = (double)c;
        kk[j] = x * log2e + shifter;
        const double k = kk[j] - shifter;
        r[j] = (x - k * ln2_hi) - k * ln2_lo;
        p[j] = EXP_TAYLOR[12];
    }
    for (int t = 11; t >= 0; t--) /* Horner, a term at a time over the block */
        for (int j = 0; j < ERF_BLOCK; j++) p[j] = p[j] * r[j] + EXP_TAYLOR[t];
    for (int j = 0; j < ERF_BLOCK; j++) {
        int64_t bits;
        memcpy(&bits, &kk[j], sizeof(bits));
        bits = (bits - shifter_bits + 1023) * ((int64_t)1 << 52);
        double scale;
        memcpy(&scale, &bits, sizeof(scale));
        const float v = (float)(p[j] * scale);
        out[j] = in[j] == in[j] ? v : in[j];
    }
}

/* Over the middle axis of (outer, red, inner): e = exp(x - max), y = e * (1 / sum(e)), the sum
 * in double, its reciprocal rounded to float (torch multiplies by the float reciprocal). */
void fp_softmax(const float *x, int64_t outer, int64_t red, int64_t inner, float *y) {
    float in[ERF_BLOCK], e[ERF_BLOCK];
    for (int64_t o = 0; o < outer; o++)
        for (int64_t i = 0; i < inner; i++) {
            const float *xo = x + o * red * inner + i;
            float *yo = y + o * red * inner + i;
            float m = xo[0];
            for (int64_t r = 1; r < red; r++) m = nan_max(m, xo[r * inner]);
            double sum = 0.0;
            for (int64_t r0 = 0; r0 < red; r0 += ERF_BLOCK) {
                const int64_t len = red - r0 < ERF_BLOCK ? red - r0 : ERF_BLOCK;
                for (int64_t j = 0; j < ERF_BLOCK; j++) in[j] = j < len ? xo[(r0 + j) * inner] - m : -200.0f;
                exp_block(in, e);
                for (int64_t j = 0; j < len; j++) {
                    yo[(r0 + j) * inner] = e[j];
                    sum += e[j];
                }
            }
            const float inv = 1.0f / (float)sum;
            for (int64_t r = 0; r < red; r++) yo[r * inner] = yo[r * inner] * inv;
        }
}


#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
#define FP_X86 1
#include <immintrin.h>

/* The lanes of a 16-column vector that hold columns, when `left` columns remain. */
static inline __mmask16 lanes_left(int64_t left) {
    return left >= 16 ? (__mmask16)0xFFFF : left <= 0 ? (__mmask16)0 : (__mmask16)((1u << left) - 1);
}
#endif

/* m[ox] = max over kx of row[2 ox + kx]: the horizontal half of a stride-2 pool (the
 * compiler leaves this stride scalar). `row` has 32 floats of slack past the last read. */
typedef void (*hmax2_fn)(const float *row, int64_t kw, int64_t OW, float *m);

static void hmax2_scalar(const float *row, int64_t kw, int64_t OW, float *m) {
    for (int64_t ox = 0; ox < OW; ox++) {
        float v = row[2 * ox];
        for (int64_t kx = 1; kx < kw; kx++) v = nan_max(v, row[2 * ox + kx]);
        m[ox] = v;
    }
}

#ifdef FP_X86
__attribute__((target("avx512f"))) static void hmax2_avx512(const float *row, int64_t kw, int64_t OW, float *m) {
    const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    for (int64_t ox = 0; ox < OW; ox += 16) {
        __m512 acc = _mm512_setzero_ps();
        for (int64_t kx = 0; kx < kw; kx++) {
            const float *t = row + 2 * ox + kx;
            const __m512 v = _mm512_permutex2var_ps(_mm512_loadu_ps(t), even, _mm512_loadu_ps(t + 16));
            if (kx == 0) {
                acc = v;
                continue;
            }
            acc = _mm512_max_ps(v, acc); /* acc where either is NaN ... */
            acc = _mm512_mask_mov_ps(acc, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), v); /* ... v where v is */
        }
        _mm512_mask_storeu_ps(m + ox, lanes_left(OW - ox), acc);
    }
}

__attribute__((target("avx2"))) static void hmax2_avx2(const float *row, int64_t kw, int64_t OW, float *m) {
    int64_t ox = 0;
    for (; ox + 8 <= OW; ox += 8) {
        __m256 acc = _mm256_setzero_ps();
        for (int64_t kx = 0; kx < kw; kx++) {
            const float *t = row + 2 * ox + kx;
            /* evens of 16 floats: shuffle within 128-bit lanes, then put the 64-bit halves in order */
            const __m256 ev = _mm256_shuffle_ps(_mm256_loadu_ps(t), _mm256_loadu_ps(t + 8), 0x88);
            const __m256 v = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(ev), 0xD8));
            if (kx == 0) {
                acc = v;
                continue;
            }
            acc = _mm256_max_ps(v, acc);
            acc = _mm256_blendv_ps(acc, v, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
        }
        _mm256_storeu_ps(m + ox, acc);
    }
    if (ox < OW) hmax2_scalar(row + 2 * ox, kw, OW - ox, m + ox);
}
#endif

static hmax2_fn choose_hmax2(const char *isa) {
    const int any = !isa || !*isa || !strcmp(isa, "auto");
#ifdef FP_X86
    __builtin_cpu_init();
    if ((any || !strcmp(isa, "avx512")) && __builtin_cpu_supports("avx512f")) return hmax2_avx512;
    if ((any || !strcmp(isa, "avx2")) && __builtin_cpu_supports("avx2")) return hmax2_avx2;
#endif
    (void)any;
    return hmax2_scalar;
}

/* One plane. Separable: per output row, first the max over the window's rows (contiguous;
 * the compiler vectorizes it) into a -inf padded row, then the max over the window's
 * columns of that row. The old tap-by-tap strided loop stayed scalar: 1.0 ms on resnet18's
 * pool. `row` holds pool_row_floats(p) floats. */
static inline int64_t pool_span(const fp_pool2d *p) { return (p->ow - 1) * p->sw + (p->kw - 1) * p->dw + 1; }
static inline int64_t pool_row_floats(const fp_pool2d *p) { return pool_span(p) + 32; /* slack for vector loads */ }

static inline void pool_plane(const float *xp, int64_t H, int64_t W, const fp_pool2d *p, float *y, float *row,
                              hmax2_fn hmax2) {
    const int64_t OH = p->oh, OW = p->ow, sw = p->sw, dw = p->dw, kw = p->kw;
    const int64_t span = pool_span(p), stride = pool_row_floats(p);
    const int64_t valid = W < span - p->pl ? W : span - p->pl; /* input columns that land in the row */
    for (int64_t oy = 0; oy < OH; oy++) {
        for (int64_t i = 0; i < stride; i++) row[i] = -INFINITY;
        float *restrict r = row + p->pl;
        for (int64_t ky = 0; ky < p->kh; ky++) {
            const int64_t iy = oy * p->sh + ky * p->dh - p->pt;
            if (iy < 0 || iy >= H) continue;
            const float *restrict src = xp + iy * W;
            for (int64_t i = 0; i < valid; i++) r[i] = nan_max(r[i], src[i]);
        }
        float *restrict m = y + oy * OW;
        if (hmax2) {
            hmax2(row, kw, OW, m);
            continue;
        }
        for (int64_t ox = 0; ox < OW; ox++) m[ox] = row[ox * sw];
        for (int64_t kx = 1; kx < kw; kx++) {
            const float *restrict t = row + kx * dw;
            for (int64_t ox = 0; ox < OW; ox++) m[ox] = nan_max(m[ox], t[ox * sw]);
        }
    }
}

FP_CLONES int fp_max_pool2d(const float *x, int64_t planes, int64_t H, int64_t W, const fp_pool2d *p, float *y,
                             int threads, const char *isa) {
    const int64_t stride = pool_row_floats(p);
    const hmax2_fn hmax2 = p->sw == 2 && p->dw == 1 ? choose_hmax2(isa) : NULL;
    const int nt = threads > 0 ? threads : 1;
    float *rows = malloc((size_t)(nt * stride) * sizeof(float));
    if (!rows) return -2;
#ifdef _OPENMP
#pragma omp parallel num_threads(nt) if (planes * p->oh * p->ow > (1 << 14))
#endif
    {
#ifdef _OPENMP
        float *row = rows + omp_get_thread_num() * stride;
#pragma omp for schedule(static)
#else
        float *row = rows;
#endif
        for (int64_t pl = 0; pl < planes; pl++) pool_plane(x + pl * H * W, H, W, p, y + pl * p->oh * p->ow, row, hmax2);
    }
    free(rows);
    return 0;
}

/* -- direct conv for small-channel stems (x86 AVX-512 only) ------------------------------
 * A 7x7 stride-2 stem over 3 channels is a poor sgemm (K = 147, a 12x im2col blow-up). Here
 * the zero-padded input is split into stride phases, so every tap reads 16 consecutive
 * output columns from one contiguous row, and 32 columns x 8 output channels accumulate in
 * registers (16 FMAs per 10 loads). Float sums run in (c, ky, kx) order with FMA, so the
 * result is not bitwise torch's, as no BLAS path is; the agent's numerics check covers it. */
#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
#include <immintrin.h>
#include <stdlib.h>
#include <string.h>

#define DIRECT_PARALLEL_MACS (1 << 22) /* ~0.1 ms of FMAs on one core */

int fp_conv2d_direct_supported(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f");
}

typedef struct {
    const float *ph;      /* stride phases: ph[c][iy][r][j] = x[c][iy - pt][j * sw + r - pl], zero outside */
    const int64_t *kx_off; /* where tap kx reads in a phase row */
    int64_t C, kh, kw, Hp, sw, span, sh, dh, OH, OW, cout;
    const float *bias;
    const fp_conv_post *post;
} direct_geom;

/* 16 * nv output columns of row oy x the 8 channels of block b, accumulated in registers
 * in (c, ky, kx) order, then bias, the fused affine (fmaf) and clamp, stored into dst
 * (8 planes of OH x OW). nv is 2 for the body and 1 for a last block of <= 16 columns. */
__attribute__((target("avx512f"), always_inline)) static inline void direct_tile(const direct_geom *g, const float *wb,
                                                                               int64_t b, int64_t oy, int64_t ox,
                                                                               const int nv, float *dst) {
    __m512 acc[8][2];
    for (int j = 0; j < 8; j++) acc[j][0] = acc[j][1] = _mm512_setzero_ps();
    const float *w = wb;
    for (int64_t c = 0; c < g->C; c++)
        for (int64_t ky = 0; ky < g->kh; ky++) {
            const float *rows = g->ph + (c * g->Hp + oy * g->sh + ky * g->dh) * g->sw * g->span;
            for (int64_t kx = 0; kx < g->kw; kx++, w += 8) {
                const float *src = rows + g->kx_off[kx] + ox;
                const __m512 v0 = _mm512_loadu_ps(src), v1 = nv > 1 ? _mm512_loadu_ps(src + 16) : v0;
                for (int j = 0; j < 8; j++) {
                    const __m512 wj = _mm512_set1_ps(w[j]);
                    acc[j][0] = _mm512_fmadd_ps(wj, v0, acc[j][0]);
                    if (nv > 1) acc[j][1] = _mm512_fmadd_ps(wj, v1, acc[j][1]);
                }
            }
        }
    const __mmask16 m0 = lanes_left(g->OW - ox), m1 = lanes_left(g->OW - ox - 16);
    const fp_conv_post *post = g->post;
    for (int j = 0; j < 8 && b * 8 + j < g->cout; j++) {
        const int64_t ch = b * 8 + j;
        const __m512 bj = _mm512_set1_ps(g->bias ? g->bias[ch] : 0.0f);
        float *row = dst + (j * g->OH + oy) * g->OW + ox;
        for (int v = 0; v < nv; v++) {
            __m512 r = _mm512_add_ps(acc[j][v], bj);
            if (post && post->scale)
                r = _mm512_fmadd_ps(r, _mm512_set1_ps(post->scale[ch]), _mm512_set1_ps(post->shift[ch]));
            if (post && post->has_clamp) /* max_ps(a, b) is b when either is NaN: NaN passes */
                r = _mm512_min_ps(_mm512_set1_ps(post->hi), _mm512_max_ps(_mm512_set1_ps(post->lo), r));
            _mm512_mask_storeu_ps(row + 16 * v, v ? m1 : m0, r);
        }
    }
}

__attribute__((target("avx512f"))) static void direct_row(const direct_geom *g, const float *wb, int64_t b, int64_t oy,
                                                          float *dst) {
    int64_t ox = 0;
    for (; g->OW - ox > 16; ox += 32) direct_tile(g, wb, b, oy, ox, 2, dst);
    if (ox < g->OW) direct_tile(g, wb, b, oy, ox, 1, dst);
}

__attribute__((target("avx512f"))) int fp_conv2d_direct(const float *x, int64_t C, int64_t H, int64_t W,
                                                        const float *wt, const float *bias, int64_t cout,
                                                        const fp_pool2d *p, const fp_conv_post *post, float *y,
                                                        int threads) {
    const int64_t OH = p->oh, OW = p->ow, sw = p->sw, kw = p->kw, kh = p->kh;
    const int64_t OWv = (OW + 31) / 32 * 32;                       /* output columns, padded */
    const int64_t span = OWv + ((kw - 1) * p->dw) / sw + 2;          /* a phase row, with slack */
    const int64_t Hp = (OH - 1) * p->sh + (kh - 1) * p->dh + 1;      /* input rows any window reads */
    const fp_pool2d *pool = post ? post->pool : NULL;
    const int nt = threads > 0 ? threads : 1;
    const int64_t plane = OH * OW, cob = (cout + 7) / 8, taps = C * kh * kw;
    float *ph = NULL, *scratch = NULL, *rows = NULL;
    int64_t *kx_off = malloc((size_t)kw * sizeof(int64_t));
    int rc = -2;
    if (!kx_off || posix_memalign((void **)&ph, 64, (size_t)(C * Hp * sw * span) * sizeof(float))) goto out;
    if (pool && (posix_memalign((void **)&scratch, 64, (size_t)(nt * 8 * plane) * sizeof(float)) ||
                 !(rows = malloc((size_t)(nt * pool_row_floats(pool)) * sizeof(float)))))
        goto out;
    for (int64_t kx = 0; kx < kw; kx++) kx_off[kx] = ((kx * p->dw) % sw) * span + (kx * p->dw) / sw; /* no division per tap */
    /* The phase split, on every thread: row by row, zeros only outside the input's columns. */
#ifdef _OPENMP
#pragma omp parallel for schedule(static) collapse(2) num_threads(nt) if (C * Hp * span * sw > (1 << 17))
#endif
    for (int64_t c = 0; c < C; c++)
        for (int64_t iy = 0; iy < Hp; iy++) {
            const int64_t sy = iy - p->pt;
            const float *src = sy >= 0 && sy < H ? x + (c * H + sy) * W : NULL;
            for (int64_t r = 0; r < sw; r++) {
                float *restrict dst = ph + ((c * Hp + iy) * sw + r) * span;
                /* sx = j * sw + r - pl lies in [0, W) for j in [j0, j1) */
                const int64_t first = p->pl - r, j0 = first <= 0 ? 0 : (first + sw - 1) / sw;
                int64_t j1 = (W - 1 + p->pl - r) < 0 ? 0 : (W - 1 + p->pl - r) / sw + 1;
                if (j1 > span) j1 = span;
                if (!src || j1 <= j0) {
                    memset(dst, 0, (size_t)span * sizeof(float));
                    continue;
                }
                memset(dst, 0, (size_t)j0 * sizeof(float));
                const float *restrict s0 = src + j0 * sw + r - p->pl;
                if (sw == 1) {
                    memcpy(dst + j0, s0, (size_t)(j1 - j0) * sizeof(float));
                } else {
                    for (int64_t j = 0; j < j1 - j0; j++) dst[j0 + j] = s0[j * sw];
                }
                memset(dst + j1, 0, (size_t)(span - j1) * sizeof(float));
            }
        }
    const direct_geom g = {ph, kx_off, C, kh, kw, Hp, sw, span, p->sh, p->dh, OH, OW, cout, bias, post};
    /* Small convs stay on one thread: waking the other costs more than it saves (resnet20 @ 32
     * ran slower on 2 threads than on 1 before this). */
    const int parallel = cob * 8 * taps * OH * OW >= DIRECT_PARALLEL_MACS;
    if (!pool) {
#ifdef _OPENMP
#pragma omp parallel for schedule(static) collapse(2) num_threads(nt) if (parallel)
#endif
        for (int64_t b = 0; b < cob; b++)
            for (int64_t oy = 0; oy < OH; oy++) direct_row(&g, wt + b * taps * 8, b, oy, y + b * 8 * plane);
    } else {
        /* A block's 8 planes are pooled while they are still in this core's cache. */
        const hmax2_fn hmax2 = pool->sw == 2 && pool->dw == 1 ? choose_hmax2("auto") : NULL;
        const int64_t pooled = pool->oh * pool->ow;
#ifdef _OPENMP
#pragma omp parallel num_threads(nt) if (parallel)
#endif
        {
#ifdef _OPENMP
            const int tid = omp_get_thread_num();
#else
            const int tid = 0;
#endif
            float *mine = scratch + tid * 8 * plane, *row = rows + tid * pool_row_floats(pool);
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
            for (int64_t b = 0; b < cob; b++) {
                for (int64_t oy = 0; oy < OH; oy++) direct_row(&g, wt + b * taps * 8, b, oy, mine);
                for (int64_t j = 0; j < 8 && b * 8 + j < cout; j++)
                    pool_plane(mine + j * plane, OH, OW, pool, y + (b * 8 + j) * pooled, row, hmax2);
            }
        }
    }
    rc = 0;
out:
    free(ph);
    free(scratch);
    free(rows);
    free(kx_off);
    return rc;
}

/* Y (M, N) = W (M, K) x X (K, N) [+ bias], W packed as (ceil(M/8), K, 8). For the small FP convs
 * (1x1 downsamples) at 2+ threads: OpenBLAS runs them on one thread here (handing half to a
 * Python thread cost more than it saved), this splits column tiles over OpenMP threads that are
 * already spinning. Each tile of 32 columns stays in L1 while all row blocks of W pass over it.
 * Sums run in k order with FMA: not bitwise OpenBLAS's, as no two BLAS builds are. */
__attribute__((target("avx512f"))) int fp_gemm(const float *wp, const float *x, const float *bias, int64_t M,
                                               int64_t K, int64_t N, float *y, int threads) {
    const int64_t tiles = (N + 31) / 32, mblocks = (M + 7) / 8;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(threads > 0 ? threads : 1) if (M * K * N >= (1 << 20))
#endif
    for (int64_t t = 0; t < tiles; t++) {
        const int64_t n0 = t * 32, left = N - n0;
        const __mmask16 m0 = lanes_left(left), m1 = lanes_left(left - 16);
        for (int64_t mb = 0; mb < mblocks; mb++) {
            __m512 acc[8][2];
            for (int j = 0; j < 8; j++) acc[j][0] = acc[j][1] = _mm512_setzero_ps();
            const float *w = wp + mb * K * 8, *xr = x + n0;
            for (int64_t k = 0; k < K; k++, w += 8, xr += N) {
                const __m512 v0 = _mm512_maskz_loadu_ps(m0, xr), v1 = _mm512_maskz_loadu_ps(m1, xr + 16);
                for (int j = 0; j < 8; j++) {
                    const __m512 wj = _mm512_set1_ps(w[j]);
                    acc[j][0] = _mm512_fmadd_ps(wj, v0, acc[j][0]);
                    acc[j][1] = _mm512_fmadd_ps(wj, v1, acc[j][1]);
                }
            }
            for (int j = 0; j < 8 && mb * 8 + j < M; j++) {
                const __m512 b = _mm512_set1_ps(bias ? bias[mb * 8 + j] : 0.0f);
                float *row = y + (mb * 8 + j) * N + n0;
                _mm512_mask_storeu_ps(row, m0, _mm512_add_ps(acc[j][0], b));
                _mm512_mask_storeu_ps(row + 16, m1, _mm512_add_ps(acc[j][1], b));
            }
        }
    }
    return 0;
}
int fp_gemm_supported(void) { return fp_conv2d_direct_supported(); }
#else
#if defined(__aarch64__)
/* The AVX-512 GEMM's arithmetic in plain C for AArch64, which always has a fused multiply-add:
 * each output is fmaf over k in order from 0, then + bias (or + 0), so a board computes the x86
 * floats bit for bit (checked under qemu). Tiles of 4 rows x 16 columns fit NEON's registers. */
int fp_gemm(const float *wp, const float *x, const float *bias, int64_t M, int64_t K, int64_t N, float *y, int threads) {
    const int64_t tiles = (N + 15) / 16, mblocks = (M + 7) / 8;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(threads > 0 ? threads : 1) if (M * K * N >= (1 << 20))
#endif
    for (int64_t t = 0; t < tiles; t++) {
        const int64_t n0 = t * 16, cols = N - n0 < 16 ? N - n0 : 16;
        for (int64_t mb = 0; mb < mblocks; mb++)
            for (int half = 0; half < 2; half++) {
                float acc[4][16];
                memset(acc, 0, sizeof(acc));
                const float *w = wp + mb * K * 8 + half * 4;
                for (int64_t k = 0; k < K; k++) {
                    float xr[16] = {0};
                    memcpy(xr, x + k * N + n0, sizeof(float) * (size_t)cols);
                    for (int j = 0; j < 4; j++)
                        for (int c = 0; c < 16; c++) acc[j][c] = fmaf(w[k * 8 + j], xr[c], acc[j][c]);
                }
                for (int j = 0; j < 4 && mb * 8 + half * 4 + j < M; j++) {
                    const int64_t m = mb * 8 + half * 4 + j;
                    const float b = bias ? bias[m] : 0.0f;
                    for (int64_t c = 0; c < cols; c++) y[m * N + n0 + c] = acc[j][c] + b;
                }
            }
    }
    return 0;
}
int fp_gemm_supported(void) { return 1; }
#else
int fp_gemm(const float *wp, const float *x, const float *bias, int64_t M, int64_t K, int64_t N, float *y, int threads) {
    (void)wp; (void)x; (void)bias; (void)M; (void)K; (void)N; (void)y; (void)threads;
    return -1;
}
int fp_gemm_supported(void) { return 0; }
#endif
int fp_conv2d_direct_supported(void) { return 0; }
int fp_conv2d_direct(const float *x, int64_t C, int64_t H, int64_t W, const float *wt, const float *bias,
                     int64_t cout, const fp_pool2d *p, const fp_conv_post *post, float *y, int threads) {
    (void)x; (void)C; (void)H; (void)W; (void)wt; (void)bias; (void)cout; (void)p; (void)post; (void)y; (void)threads;
    return -1;
}
#endif

/* The FMA ceiling a full-precision conv is judged against: `reps` rounds of 12 independent
 * 16-lane multiply-add chains held in vector registers (contracted to FMA here on purpose; this
 * measures, it computes nothing). Returns the multiply-adds done; the caller times it. */
typedef float fma_v16 __attribute__((vector_size(64)));
#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
__attribute__((target_clones("avx512f", "fma", "default"))) /* by feature: arch= clones are Intel-only */
#endif
__attribute__((optimize("fp-contract=fast"))) int64_t
fp_fma_ceiling(int64_t reps) {
    fma_v16 acc[12];
    for (int i = 0; i < 12; i++)
        for (int j = 0; j < 16; j++) acc[i][j] = (float)(i * 16 + j) * 1e-3f;
    const fma_v16 a = (fma_v16){0} + 0.999999f, b = (fma_v16){0} + 1e-7f;
    for (int64_t r = 0; r < reps; r++) {
        acc[0] = acc[0] * a + b;
        acc[1] = acc[1] * a + b;
        acc[2] = acc[2] * a + b;
        acc[3] = acc[3] * a + b;
        acc[4] = acc[4] * a + b;
        acc[5] = acc[5] * a + b;
        acc[6] = acc[6] * a + b;
        acc[7] = acc[7] * a + b;
        acc[8] = acc[8] * a + b;
        acc[9] = acc[9] * a + b;
        acc[10] = acc[10] * a + b;
        acc[11] = acc[11] * a + b;
    }
    float sink = 0.0f;
    for (int i = 0; i < 12; i++)
        for (int j = 0; j < 16; j++) sink += acc[i][j];
    return sink == sink ? reps * 12 * 16 : 0; /* the sum keeps the loop from being dropped */
}

void fp_linear(const float *x, const float *w, const float *bias, int64_t rows, int64_t K, int64_t M, float *y,
               int threads) {
    const int64_t total = rows * M;
#ifdef _OPENMP
#pragma omp parallel for num_threads(threads > 0 ? threads : 1) schedule(static) if (total * K >= (1 << 18))
#endif
    for (int64_t i = 0; i < total; i++) {
        const int64_t r = i / M, m = i % M;
        const float *xr = x + r * K, *wm = w + m * K;
        float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        int64_t k = 0;
        for (; k + 8 <= K; k += 8)
            for (int j = 0; j < 8; j++) acc[j] += xr[k + j] * wm[k + j];
        float sum = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
        for (; k < K; k++) sum += xr[k] * wm[k];
        y[i] = bias ? sum + bias[m] : sum;
    }
    (void)threads;
}

/* y (m, n) = a (m, k) @ b (k, n) for each of `batches` pairs, each output summed over k in order
 * (rows of b streamed against a row block of y: every inner loop is contiguous and vectorises). */
FP_CLONES void fp_matmul(const float *a, const float *b, int64_t batches, int64_t m, int64_t k, int64_t n, float *y,
                         int threads) {
#ifdef _OPENMP
#pragma omp parallel for num_threads(threads > 0 ? threads : 1) schedule(static) if (batches * m * k * n >= (1 << 18))
#endif
    for (int64_t bi = 0; bi < batches * ((m + 3) / 4); bi++) {
        const int64_t batch = bi / ((m + 3) / 4), i0 = bi % ((m + 3) / 4) * 4, rows = m - i0 < 4 ? m - i0 : 4;
        const float *ab = a + batch * m * k, *bb = b + batch * k * n;
        float *yb = y + batch * m * n;
        for (int64_t r = 0; r < rows; r++)
            for (int64_t j = 0; j < n; j++) yb[(i0 + r) * n + j] = 0.0f;
        for (int64_t kk = 0; kk < k; kk++) {
            const float *restrict brow = bb + kk * n;
            for (int64_t r = 0; r < rows; r++) {
                const float av = ab[(i0 + r) * k + kk];
                float *restrict yr = yb + (i0 + r) * n;
                for (int64_t j = 0; j < n; j++) yr[j] += av * brow[j];
            }
        }
    }
    (void)threads;
}

void fp_conv1d(const float *x, int64_t C, int64_t L, const float *w, const float *bias, int64_t cout, int64_t groups,
               int64_t k, int64_t stride, int64_t dilation, int64_t pad, int64_t OL, float *y, int threads) {
    const int64_t cg = C / groups, og = cout / groups;
#ifdef _OPENMP
#pragma omp parallel for num_threads(threads > 0 ? threads : 1) schedule(static) if (cout * cg * k * OL >= (1 << 18))
#endif
    for (int64_t o = 0; o < cout; o++) {
        float *yo = y + o * OL;
        for (int64_t p = 0; p < OL; p++) yo[p] = 0.0f;
        const int64_t g = o / og;
        for (int64_t c = 0; c < cg; c++) {
            const float *xc = x + (g * cg + c) * L;
            for (int64_t t = 0; t < k; t++) {
                const float wt = w[(o * cg + c) * k + t];
                const int64_t off = t * dilation - pad; /* input index of output p: p * stride + off */
                int64_t p0 = off < 0 ? (-off + stride - 1) / stride : 0;
                int64_t p1 = L - off <= 0 ? 0 : (L - off - 1) / stride + 1; /* first p with p * stride + off >= L */
                if (p1 > OL) p1 = OL;
                if (stride == 1)
                    for (int64_t p = p0; p < p1; p++) yo[p] += wt * xc[p + off];
                else
                    for (int64_t p = p0; p < p1; p++) yo[p] += wt * xc[p * stride + off];
            }
        }
        if (bias)
            for (int64_t p = 0; p < OL; p++) yo[p] += bias[o];
    }
    (void)threads;
}
