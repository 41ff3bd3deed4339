/*
 * Full-precision elementwise and pooling ops of the custom runtime, where numpy makes
 * temporaries (the float64 affine, np.clip, one np.maximum per pooling tap).
 *
 * channel_fma: y = fmaf(x, scale[c], shift[c]), one rounding, as torch's batch norm.
 * clamp:       y = min(max(x, lo), hi) with NaN kept (np.clip's semantics).
 * max_pool2d:  max over each window, padding never wins (-inf), NaN propagates.
 * im2col2d:    the columns of a zero-padded conv for output rows [oy0, oy1), contiguous,
 *              (C * kh * kw, rows * OW), ready for one sgemm (numpy's strided copy of the
 *              same view measured 1.4 ms on resnet18's stem, this loop a fraction of it).
 * Each x86 function is cloned for AVX-512, AVX2+FMA and baseline, picked at load time.
 */
#include "fpops.h"

#include <math.h>

#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
#define FP_CLONES __attribute__((target_clones("avx512f", "arch=haswell", "default")))
#else
#define FP_CLONES
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

/* Row at a time so the inner loop over output columns is a plain strided max the compiler
 * vectorizes; taps that fall in the padding are skipped by narrowing the column range. */
FP_CLONES void fp_max_pool2d(const float *x, int64_t planes, int64_t H, int64_t W, const fp_pool2d *p, float *y,
                              int threads) {
    const int64_t OH = p->oh, OW = p->ow;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(threads > 0 ? threads : 1) if (planes * OH * OW > (1 << 14))
#endif
    for (int64_t pl = 0; pl < planes; pl++) {
        const float *xp = x + pl * H * W;
        for (int64_t oy = 0; oy < OH; oy++) {
            float *m = y + (pl * OH + oy) * OW;
            for (int64_t ox = 0; ox < OW; ox++) m[ox] = -INFINITY;
            for (int64_t ky = 0; ky < p->kh; ky++) {
                const int64_t iy = oy * p->sh + ky * p->dh - p->pt;
                if (iy < 0 || iy >= H) continue;
                const float *row = xp + iy * W;
                for (int64_t kx = 0; kx < p->kw; kx++) {
                    const int64_t off = kx * p->dw - p->pl; /* ix = ox * sw + off, need 0 <= ix < W */
                    int64_t lo = off >= 0 ? 0 : (-off + p->sw - 1) / p->sw;
                    int64_t hi = W - 1 - off < 0 ? -1 : (W - 1 - off) / p->sw;
                    if (hi > OW - 1) hi = OW - 1;
                    const int64_t sw = p->sw;
                    for (int64_t ox = lo; ox <= hi; ox++) {
                        const float v = row[ox * sw + off], cur = m[ox];
                        m[ox] = (cur == cur && (v > cur || v != v)) ? v : cur; /* NaN sticks */
                    }
                }
            }
        }
    }
}
