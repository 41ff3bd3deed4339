/* Binary conv2d on channel-packed bits (see bconv.c for the layouts and the exactness rules). */
#ifndef BIAGENT_BCONV_H
#define BIAGENT_BCONV_H
#include <stdint.h>

typedef struct {
    int64_t C, H, W;                 /* input channels and spatial size, per sample */
    int64_t cout, kh, kw, sh, sw, dh, dw;
    int64_t pt, pl, pb, pr;          /* padding: top, left, bottom, right */
    int pad_ones;                    /* pad with -1 (bit 1) instead of +1 (bit 0) */
} bconv_shape;

/* Sign bits for the next binary conv instead of floats (thresholding to packed output bits):
 * bit = !(v + shift[o] >= 0), exactly what that conv's own packing would compute, written
 * into its padded input planes, one byte (8 channels) per tile and position so threads
 * never share a byte. The border and channels past cout are filled here too. */
typedef struct {
    uint64_t *planes;                /* (n, ceil(cout/64), Hp, Wp) */
    const float *shift;              /* (cout): the next conv's input shift, or NULL */
    int64_t Hp, Wp, pt, pl;          /* its padded plane; this conv's output sits at (pt, pl) */
    int pad_ones;                    /* its border is -1 (bit 1) instead of +1 (bit 0) */
} bconv_bits_out;

typedef struct {
    const float *shift;              /* (C) added before the sign, or NULL */
    const int32_t *corr_cls;         /* (OH*OW) padding class of each position (0: none), or NULL */
    const int32_t *corr_table;       /* (cout, n_cls) subtracted from the dots by class */
    int64_t n_cls;
    const float *alpha, *cs, *bias;  /* (cout) each, or NULL */
    /* Fused successors (the graph's next nodes, in this order), each optional: */
    const float *post_scale, *post_shift; /* (cout): fmaf(v, scale, shift), a channel_affine */
    const float *residual;           /* (n, cout, OH, OW): + residual, an add */
    int has_clamp;                   /* min(max(v, lo), hi) with NaN kept, a hardtanh */
    float lo, hi;
    const bconv_bits_out *bits;      /* write sign bits for the next binary conv, not floats, or NULL */
} bconv_epilogue;

int64_t bconv_out_h(const bconv_shape *s);
/* Words of one packed patch (the weights' middle axis): kh*kw*ceil(C/64), or fewer where C
 * divides 64 and several taps share a word (C = 16: a 3x3 patch in 3 words, not 9). */
int64_t bconv_patch_words(int64_t C, int64_t kh, int64_t kw);
int64_t bconv_out_w(const bconv_shape *s);

/* Name of the popcount kernel `isa` resolves to on this CPU ("auto" = the best), NULL if it cannot run here. */
const char *bconv_isa(const char *isa);

/* x: (n, C, H, W) float32, or NULL with planes_in: (n, ceil(C/64), H + pt + pb, W + pl + pr), this conv's
 * input already packed and padded by the previous conv (bconv_bits_out); beta: (n) per-sample scale or NULL;
 * B: (ceil(cout/8), bconv_patch_words(C, kh, kw), 8) packed weights; out: (n, cout, OH, OW), untouched when e->bits is set.
 * Returns 0, -1 for an ISA this CPU lacks, -2 when out of memory. */
int bconv2d(const bconv_shape *s, const bconv_epilogue *e, const float *x, const uint64_t *planes_in,
            const float *beta, int64_t n, const uint64_t *B, float *out, const char *isa, int threads);
/* The micro-kernel's throughput ceiling: runs it `reps` times on an L1-resident tile and returns
 * the word pairs (64 binary MACs each) it processed; the caller times the call. */
int64_t bconv_ceiling(const char *isa, int64_t reps);
#endif
