/* Full-precision ops of the custom runtime (see fpops.c). */
#ifndef BIAGENT_FPOPS_H
#define BIAGENT_FPOPS_H
#include <stdint.h>

typedef struct {
    int64_t kh, kw, sh, sw, dh, dw, pt, pl, oh, ow;
} fp_pool2d;

/* y = fmaf(x, scale[c], shift[c]), then clamped to clamp_lo_hi[0..1] when it is not NULL. */
void fp_channel_fma(const float *x, const float *scale, const float *shift, int64_t n, int64_t c, int64_t inner,
                    const float *clamp_lo_hi, float *y, int threads);
void fp_clamp(const float *x, int64_t n, float lo, float hi, float *y, int threads);
enum { FP_GELU = 0, FP_GELU_TANH = 1, FP_TANH = 2, FP_ADD = 3, FP_SUB = 4, FP_MUL = 5, FP_DIV = 6, FP_RSUB = 7, FP_RDIV = 8 };
void fp_unary(const float *x, int64_t n, int kind, float value, float *y, int threads);
void fp_layer_norm(const float *x, int64_t rows, int64_t cols, const float *weight, const float *bias, double eps,
                   float *y);
void fp_matmul(const float *a, const float *b, int64_t batches, int64_t m, int64_t k, int64_t n, float *y,
               int threads);
void fp_softmax(const float *x, int64_t outer, int64_t red, int64_t inner, float *y);
/* Returns 0, or -2 when out of memory. */
/* isa: "auto" or a path to force ("avx512", "avx2", anything else: portable) for the tests. */
int fp_max_pool2d(const float *x, int64_t planes, int64_t H, int64_t W, const fp_pool2d *p, float *y, int threads,
                  const char *isa);
/* cols (C * kh * kw, (oy1 - oy0) * ow) of a zero-padded conv over x (C, H, W); p->oh is unused. */
void fp_im2col2d(const float *x, int64_t C, int64_t H, int64_t W, const fp_pool2d *p, int64_t oy0, int64_t oy1,
                 float *cols, int threads);
/* The nodes fused after a direct conv, in this order, each optional (NULL / 0). */
typedef struct {
    const float *scale, *shift; /* (cout): fmaf(v, scale, shift), a channel_affine */
    int has_clamp;              /* min(max(v, lo), hi), NaN kept, a hardtanh */
    float lo, hi;
    const fp_pool2d *pool;      /* a max pool over the conv's (OH, OW) output; its oh/ow are the pooled size */
} fp_conv_post;

/* Direct conv for few-channel stems (AVX-512): wt is (ceil(cout/8), C, kh, kw, 8); y is (cout, oh, ow),
 * or (cout, pool->oh, pool->ow) with a fused pool. Returns 0, -1 where this CPU or build has no such
 * kernel, -2 when out of memory. */
int fp_conv2d_direct_supported(void);
int fp_conv2d_direct(const float *x, int64_t C, int64_t H, int64_t W, const float *wt, const float *bias,
                     int64_t cout, const fp_pool2d *p, const fp_conv_post *post, float *y, int threads);
/* Y (M, N) = W (M, K) x X (K, N) [+ bias (M)], W packed (ceil(M/8), K, 8); OpenMP over column tiles.
 * Each output: fmaf over k in order, then + bias. AVX-512 on x86, plain C with fmaf on AArch64
 * (the same floats); -1 where the CPU or build has neither, as fp_gemm_supported says. */
int fp_gemm(const float *wp, const float *x, const float *bias, int64_t M, int64_t K, int64_t N, float *y, int threads);
int fp_gemm_supported(void);
/* reps rounds of 192 independent fmaf chains; returns the multiply-adds done (time it). */
int64_t fp_fma_ceiling(int64_t reps);
/* A full-precision 1-D conv with zero padding and groups, per sample: x (C, L), w (cout, C / groups, k),
 * y (cout, OL). Each output sums its (channel, tap) products in that order, then adds the bias, whatever
 * the thread count (OpenMP over output channels). */
void fp_conv1d(const float *x, int64_t C, int64_t L, const float *w, const float *bias, int64_t cout, int64_t groups,
               int64_t k, int64_t stride, int64_t dilation, int64_t pad, int64_t OL, float *y, int threads);
/* y (rows, M) = x (rows, K) . w (M, K)^T [+ bias (M)]: each dot in one fixed order (eight partial
 * sums, then the tail), whatever the thread count, so the per-node path and the whole-graph
 * executor compute the same floats. OpenMP over the outputs of large layers. */
void fp_linear(const float *x, const float *w, const float *bias, int64_t rows, int64_t K, int64_t M, float *y,
               int threads);
#endif
