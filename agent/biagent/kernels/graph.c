/*
 * The whole-graph executor of the custom runtime: a graph planned once, run in one native call.
 *
 * The planner (biagent/runtimes/custom/executor.py) turns a loaded, fused graph into steps: each
 * names its op, its buffers as (space, byte offset) in the arena, the graph's inputs or its
 * outputs, the tensors it reads (weights, by index) and its integer and float parameters.
 * graph_build checks every step before anything runs: that each buffer it will touch, computed
 * from the step's own parameters, lies inside its space, that each tensor holds as many elements
 * as the step reads, that geometry is sane and that correction classes index their table. So no
 * input to graph_run can make a step read or write out of bounds, whatever the planner wrote.
 * graph_run then runs the steps in order with no allocation of its own and no Python between
 * them; the binary conv, FP conv and pools call the same kernels as the per-node path
 * (bconv.c, fpops.c), so they compute the same floats.
 */
#include "graph.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bconv.h"
#include "fpops.h"
#include "xnor_gemm.h"

#ifdef _OPENMP
#include <omp.h>
#endif

struct graph_plan {
    int64_t n_steps, n_tensors, arena_bytes, n_inputs, n_outputs;
    int64_t *steps;
    double *floats;
    graph_tensor *tensors;
    int64_t *input_bytes, *output_bytes;
    unsigned char *arena;
};

/* -- validation ------------------------------------------------------------------------------- */
typedef struct {
    const graph_plan *plan;
    int64_t step;
    char *err;
    size_t errlen;
} checker;

static int fail(checker *c, const char *fmt, ...) {
    int n = snprintf(c->err, c->errlen, "step %lld: ", (long long)c->step);
    va_list ap;
    va_start(ap, fmt);
    if (n >= 0 && (size_t)n < c->errlen) vsnprintf(c->err + n, c->errlen - (size_t)n, fmt, ap);
    va_end(ap);
    return -1;
}

#define DIM_MAX ((int64_t)1 << 31)

/* a * b for sizes, or -1 on overflow (every factor is checked to be in [0, DIM_MAX) first). */
static int64_t mul(int64_t a, int64_t b) {
    if (a < 0 || b < 0) return -1;
    if (a != 0 && b > INT64_MAX / a) return -1;
    return a * b;
}
static int64_t mul3(int64_t a, int64_t b, int64_t c) { return mul(mul(a, b), c); }
static int64_t mul4(int64_t a, int64_t b, int64_t c, int64_t d) { return mul(mul(a, b), mul(c, d)); }

static int dims_ok(const int64_t *p, int first, int last, int64_t lo) {
    for (int i = first; i <= last; i++)
        if (p[i] < lo || p[i] >= DIM_MAX) return 0;
    return 1;
}

static int64_t space_size(const graph_plan *g, int64_t space, int64_t index) {
    if (space == G_ARENA) return g->arena_bytes;
    if (space == G_INPUT && index >= 0 && index < g->n_inputs) return g->input_bytes[index];
    if (space == G_OUTPUT && index >= 0 && index < g->n_outputs) return g->output_bytes[index];
    return -1;
}

/* A reference's space packs (kind, index) as kind * 2^32 + index. */
static int64_t ref_kind(int64_t space) { return space < 0 ? G_NONE : space >> 32; }
static int64_t ref_index(int64_t space) { return space < 0 ? -1 : space & 0xffffffffLL; }

/* Buffer reference r (0: out, 1..3: in0..in2) must hold `bytes` from its offset; `optional`: may be absent. */
static int need_ref(checker *c, const int64_t *s, int r, int64_t bytes, int optional, const char *what) {
    const int64_t space = s[1 + 2 * r], off = s[2 + 2 * r];
    if (space < 0) return optional ? 0 : fail(c, "%s buffer is missing", what);
    const int64_t size = space_size(c->plan, ref_kind(space), ref_index(space));
    if (size < 0) return fail(c, "%s buffer names an unknown space", what);
    if (bytes < 0 || off < 0 || off > size || bytes > size - off)
        return fail(c, "%s buffer [%lld, +%lld) lies outside its space of %lld bytes", what, (long long)off,
                    (long long)bytes, (long long)size);
    return 0;
}

static int has_ref(const int64_t *s, int r) { return s[1 + 2 * r] >= 0; }

/* Tensor slot t must hold `count` elements of `itemsize` bytes; `optional`: may be absent (-1). */
static int need_tensor(checker *c, const int64_t *s, int t, int64_t count, int itemsize, int optional, const char *what) {
    const int64_t i = s[9 + t];
    if (i < 0) return optional ? 0 : fail(c, "tensor %s is missing", what);
    if (i >= c->plan->n_tensors) return fail(c, "tensor %s: index %lld past the %lld tensors", what, (long long)i,
                                             (long long)c->plan->n_tensors);
    const graph_tensor *t_ = &c->plan->tensors[i];
    if (t_->itemsize != itemsize || count < 0 || t_->count != count)
        return fail(c, "tensor %s must hold %lld elements of %d bytes, has %lld of %d", what, (long long)count, itemsize,
                    (long long)t_->count, t_->itemsize);
    return 0;
}

static int has_tensor(const int64_t *s, int t) { return s[9 + t] >= 0; }

static int window_ok(int64_t size, int64_t pad_before, int64_t pad_after, int64_t k, int64_t st, int64_t d, int64_t out) {
    const int64_t span = d * (k - 1) + 1;
    return size + pad_before + pad_after >= span && out == (size + pad_before + pad_after - span) / st + 1;
}

static int check_bconv(checker *c, const int64_t *s) {
    const int64_t *p = s + G_P;
    if (!dims_ok(p, 0, 14, 0) || !dims_ok(p, 0, 10, 1) || !dims_ok(p, 18, 21, 0))
        return fail(c, "bconv: bad geometry");
    const int64_t n = p[0], C = p[1], H = p[2], W = p[3], cout = p[4], kh = p[5], kw = p[6], pt = p[11], pl = p[12],
                  pb = p[13], pr = p[14];
    bconv_shape sh = {C, H, W, cout, kh, kw, p[7], p[8], p[9], p[10], pt, pl, pb, pr, (int)p[15]};
    if (H + pt + pb < p[9] * (kh - 1) + 1 || W + pl + pr < p[10] * (kw - 1) + 1)
        return fail(c, "bconv: kernel larger than the padded input");
    const int64_t OH = bconv_out_h(&sh), OW = bconv_out_w(&sh), Wc = (C + 63) / 64, P = mul(OH, OW);
    const int64_t out_floats = mul3(n, cout, P);
    if (p[16] ? need_ref(c, s, 1, mul4(n, Wc, H + pt + pb, mul(W + pl + pr, 8)), 0, "bconv packed input")
              : need_ref(c, s, 1, mul(mul3(n, C, H), mul(W, 4)), 0, "bconv input"))
        return -1;
    if (p[17]) {
        const int64_t Hp = p[18], Wp = p[19];
        if (Hp < p[20] + OH || Wp < p[21] + OW) return fail(c, "bconv: output planes smaller than the output");
        if (need_ref(c, s, 0, mul4(n, (cout + 63) / 64, Hp, mul(Wp, 8)), 0, "bconv output planes")) return -1;
        if (need_tensor(c, s, 9, cout, 4, 1, "next shift")) return -1;
    } else if (need_ref(c, s, 0, mul(out_floats, 4), 0, "bconv output")) {
        return -1;
    }
    if (need_ref(c, s, 2, mul(out_floats, 4), 1, "bconv residual") || need_ref(c, s, 3, mul(n, 4), 1, "bconv beta"))
        return -1;
    if (need_tensor(c, s, 0, mul3((cout + 7) / 8, mul3(kh, kw, Wc) < 0 ? -1 : bconv_patch_words(C, kh, kw), 8), 8, 0, "weights") ||
        need_tensor(c, s, 1, C, 4, 1, "input shift") || need_tensor(c, s, 4, cout, 4, 1, "alpha") ||
        need_tensor(c, s, 5, cout, 4, 1, "channel scale") || need_tensor(c, s, 6, cout, 4, 1, "bias") ||
        need_tensor(c, s, 7, cout, 4, 1, "post scale") || need_tensor(c, s, 8, cout, 4, 1, "post shift"))
        return -1;
    if (has_tensor(s, 7) != has_tensor(s, 8)) return fail(c, "bconv: post scale and shift come together");
    if (has_tensor(s, 2) != has_tensor(s, 3)) return fail(c, "bconv: correction classes and table come together");
    if (has_tensor(s, 2)) {
        const int64_t n_cls = p[24];
        if (n_cls < 1 || n_cls >= DIM_MAX) return fail(c, "bconv: bad number of correction classes");
        if (need_tensor(c, s, 2, P, 4, 0, "correction classes") ||
            need_tensor(c, s, 3, mul(cout, n_cls), 4, 0, "correction table"))
            return -1;
        const int32_t *cls = (const int32_t *)c->plan->tensors[s[9 + 2]].data;
        for (int64_t i = 0; i < P; i++)
            if (cls[i] < 0 || cls[i] >= n_cls) return fail(c, "bconv: correction class %d out of range", (int)cls[i]);
    }
    if (p[16] && has_ref(s, 3)) return fail(c, "bconv: a packed input has no beta");
    if (p[23] && !(c->plan->floats[c->step * G_FLOATS] <= c->plan->floats[c->step * G_FLOATS + 1]))
        return fail(c, "bconv: clamp needs lo <= hi");
    return 0;
}

static int check_conv(checker *c, const int64_t *s) {
    const int64_t *p = s + G_P;
    if (!dims_ok(p, 0, 14, 0) || !dims_ok(p, 0, 10, 1) || !dims_ok(p, 13, 14, 1)) return fail(c, "conv: bad geometry");
    const int64_t n = p[0], C = p[1], H = p[2], W = p[3], cout = p[4], kh = p[5], kw = p[6], OH = p[13], OW = p[14];
    /* the conv kernels read only inside (H, W): windows past the border read the zero padding */
    if ((OH - 1) * p[7] - p[11] >= H || (OW - 1) * p[8] - p[12] >= W) return fail(c, "conv: output past the input");
    if (need_ref(c, s, 1, mul(mul3(n, C, H), mul(W, 4)), 0, "conv input")) return -1;
    int64_t final_h = OH, final_w = OW;
    if (p[18]) {
        const int64_t *q = p + 19;
        if (!dims_ok(p, 19, 28, 0) || !dims_ok(p, 19, 24, 1) || !dims_ok(p, 27, 28, 1))
            return fail(c, "conv: bad pool geometry");
        if ((p[27] - 1) * q[2] - q[6] >= OH || (p[28] - 1) * q[3] - q[7] >= OW)
            return fail(c, "conv: the fused pool's windows must fit the conv's output");
        final_h = p[27];
        final_w = p[28];
    }
    if (need_ref(c, s, 0, mul(mul4(n, cout, final_h, final_w), 4), 0, "conv output")) return -1;
    const int64_t K = mul3(C, kh, kw);
    if (p[15] == 0) {
        if (!fp_conv2d_direct_supported()) return fail(c, "conv: the direct kernel does not run on this CPU");
    } else {
        if (!fp_gemm_supported()) return fail(c, "conv: the GEMM kernel does not run on this CPU");
        if (p[16] || p[17] || p[18]) return fail(c, "conv: the GEMM path has no fused epilogue");
        if (need_ref(c, s, 3, mul(mul3(K, OH, OW), 4), 0, "conv columns")) return -1;
    }
    if (need_tensor(c, s, 0, mul3((cout + 7) / 8, K, 8), 4, 0, "weights") || need_tensor(c, s, 1, cout, 4, 1, "bias") ||
        need_tensor(c, s, 2, cout, 4, !p[16], "post scale") || need_tensor(c, s, 3, cout, 4, !p[16], "post shift"))
        return -1;
    if (p[17] && !(c->plan->floats[c->step * G_FLOATS] <= c->plan->floats[c->step * G_FLOATS + 1]))
        return fail(c, "conv: clamp needs lo <= hi");
    return 0;
}

static int check_pool(checker *c, const int64_t *s, int avg) {
    const int64_t *p = s + G_P;
    /* p: planes, H, W, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow [, pb, pr, count_include_pad] */
    if (!dims_ok(p, 0, 12, 0) || !dims_ok(p, 0, 8, 1) || !dims_ok(p, 11, 12, 1) || (avg && !dims_ok(p, 13, 14, 0)))
        return fail(c, "pool: bad geometry");
    if ((p[11] - 1) * p[5] - p[9] >= p[1] || (p[12] - 1) * p[6] - p[10] >= p[2])
        return fail(c, "pool: windows past the input");
    if (avg && (p[7] != 1 || p[8] != 1 || !window_ok(p[1], p[9], p[13], p[3], p[5], 1, p[11]) ||
                !window_ok(p[2], p[10], p[14], p[4], p[6], 1, p[12])))
        return fail(c, "avg pool: output size does not match the window");
    if (need_ref(c, s, 1, mul(mul3(p[0], p[1], p[2]), 4), 0, "pool input") ||
        need_ref(c, s, 0, mul(mul3(p[0], p[11], p[12]), 4), 0, "pool output"))
        return -1;
    return 0;
}

/* G_STRIDED: p = dims[6], strides[6] (elements, >= 0), offset. The farthest element read is
 * offset + sum((dims[i] - 1) * strides[i]); returns its count + 1 (bytes / 4), or -1. */
static int64_t strided_extent(const int64_t *p) {
    int64_t last = p[2 * G_STRIDED_DIMS];
    for (int i = 0; i < G_STRIDED_DIMS; i++) {
        const int64_t step = mul(p[i] - 1, p[G_STRIDED_DIMS + i]);
        if (step < 0 || last > INT64_MAX / 8 - step) return -1;
        last += step;
    }
    return last + 1;
}

static int check_strided(checker *c, const int64_t *s) {
    const int64_t *p = s + G_P;
    if (!dims_ok(p, 0, G_STRIDED_DIMS - 1, 1) || !dims_ok(p, G_STRIDED_DIMS, 2 * G_STRIDED_DIMS, 0))
        return fail(c, "strided copy: bad layout");
    int64_t count = 1;
    for (int i = 0; i < G_STRIDED_DIMS; i++) count = mul(count, p[i]);
    const int64_t extent = strided_extent(p);
    if (count < 0 || extent < 0) return fail(c, "strided copy: layout overflows");
    if (need_ref(c, s, 0, mul(count, 4), 0, "strided copy destination")) return -1;
    if (has_ref(s, 1)) return need_ref(c, s, 1, mul(extent, 4), 0, "strided copy source");
    const int64_t t = s[9];
    if (t < 0) return fail(c, "strided copy has neither a source buffer nor a tensor");
    const graph_tensor *src = &c->plan->tensors[t];
    if (src->itemsize != 4 || src->count < extent)
        return fail(c, "strided copy: tensor of %lld elements, the layout reads %lld", (long long)src->count,
                    (long long)extent);
    return 0;
}

static int check_step(checker *c, const int64_t *s) {
    const int64_t *p = s + G_P;
    /* whatever the op reads: every tensor index names a tensor, every buffer a space it starts in
     * (each op then checks the extents it uses) */
    for (int t = 0; t < G_TENSORS; t++)
        if (s[9 + t] < -1 || s[9 + t] >= c->plan->n_tensors)
            return fail(c, "tensor slot %d: index %lld is not one of the %lld tensors", t, (long long)s[9 + t],
                        (long long)c->plan->n_tensors);
    for (int r = 0; r < G_REFS; r++)
        if (s[1 + 2 * r] >= 0 && need_ref(c, s, r, 0, 0, "a")) return -1;
    switch (s[0]) {
    case G_BCONV:
        return check_bconv(c, s);
    case G_CONV:
        return check_conv(c, s);
    case G_AFFINE: /* p: n, c, inner, has_clamp */
        if (!dims_ok(p, 0, 2, 1)) return fail(c, "affine: bad shape");
        if (p[3] && !(c->plan->floats[c->step * G_FLOATS] <= c->plan->floats[c->step * G_FLOATS + 1]))
            return fail(c, "affine: clamp needs lo <= hi");
        return need_ref(c, s, 1, mul(mul3(p[0], p[1], p[2]), 4), 0, "affine input") ||
                       need_ref(c, s, 0, mul(mul3(p[0], p[1], p[2]), 4), 0, "affine output") ||
                       need_tensor(c, s, 0, p[1], 4, 0, "scale") || need_tensor(c, s, 1, p[1], 4, 0, "shift")
                   ? -1
                   : 0;
    case G_CLAMP: /* p: count */
        if (p[0] < 1) return fail(c, "clamp: bad size");
        if (!(c->plan->floats[c->step * G_FLOATS] <= c->plan->floats[c->step * G_FLOATS + 1]))
            return fail(c, "clamp needs lo <= hi");
        return need_ref(c, s, 1, mul(p[0], 4), 0, "clamp input") || need_ref(c, s, 0, mul(p[0], 4), 0, "clamp output");
    case G_MAXPOOL:
        return check_pool(c, s, 0);
    case G_AVGPOOL:
        return check_pool(c, s, 1);
    case G_REDUCE: /* p: outer, red, inner, mode (0 mean, 1 max) */
        if (!dims_ok(p, 0, 2, 1) || (p[3] != 0 && p[3] != 1)) return fail(c, "reduce: bad shape or mode");
        return need_ref(c, s, 1, mul(mul3(p[0], p[1], p[2]), 4), 0, "reduce input") ||
               need_ref(c, s, 0, mul(mul(p[0], p[2]), 4), 0, "reduce output");
    case G_ADD: /* p: count */
        if (p[0] < 1) return fail(c, "add: bad size");
        return need_ref(c, s, 1, mul(p[0], 4), 0, "add input") || need_ref(c, s, 2, mul(p[0], 4), 0, "add input") ||
               need_ref(c, s, 0, mul(p[0], 4), 0, "add output");
    case G_COPY: /* p: outer, chunk, src_stride, dst_stride, dst_offset (in 4-byte elements) */
        if (!dims_ok(p, 0, 4, 0) || p[0] < 1 || p[1] < 1 || p[2] < p[1] || p[3] < p[1] + p[4])
            return fail(c, "copy: bad layout");
        return need_ref(c, s, 1, mul(mul(p[0] - 1, p[2]) + p[1], 4), 0, "copy source") ||
               need_ref(c, s, 0, mul(mul(p[0] - 1, p[3]) + p[4] + p[1], 4), 0, "copy destination");
    case G_LINEAR: /* p: rows, K, M */
        if (!dims_ok(p, 0, 2, 1)) return fail(c, "linear: bad shape");
        return need_ref(c, s, 1, mul3(p[0], p[1], 4), 0, "linear input") ||
                       need_ref(c, s, 0, mul3(p[0], p[2], 4), 0, "linear output") ||
                       need_tensor(c, s, 0, mul(p[2], p[1]), 4, 0, "weight") || need_tensor(c, s, 1, p[2], 4, 1, "bias")
                   ? -1
                   : 0;
    case G_PRELU: /* p: n, c, inner, per_channel */
        if (!dims_ok(p, 0, 2, 1)) return fail(c, "prelu: bad shape");
        return need_ref(c, s, 1, mul(mul3(p[0], p[1], p[2]), 4), 0, "prelu input") ||
                       need_ref(c, s, 0, mul(mul3(p[0], p[1], p[2]), 4), 0, "prelu output") ||
                       need_tensor(c, s, 0, p[3] ? p[1] : 1, 4, 0, "weight")
                   ? -1
                   : 0;
    case G_GAIN: /* p: n, c, inner, gain_count (inner or c * inner) */
        if (!dims_ok(p, 0, 2, 1) || (p[3] != p[2] && p[3] != mul(p[1], p[2]))) return fail(c, "gain: bad shape");
        return need_ref(c, s, 0, mul(mul3(p[0], p[1], p[2]), 4), 0, "gain output") ||
                       need_tensor(c, s, 0, p[3], 4, 0, "gain") || need_tensor(c, s, 1, p[1], 4, 1, "bias")
                   ? -1
                   : 0;
    case G_BETA: /* p: n, per_sample */
        if (!dims_ok(p, 0, 1, 1)) return fail(c, "beta: bad shape");
        return need_ref(c, s, 1, mul3(p[0], p[1], 4), 0, "beta input") || need_ref(c, s, 0, mul(p[0], 4), 0, "beta output");
    case G_CONV1D: { /* p: n, C, L, cout, groups, k, stride, dilation, pad, OL */
        if (!dims_ok(p, 0, 9, 0) || !dims_ok(p, 0, 7, 1) || p[9] < 1 || p[1] % p[4] || p[3] % p[4])
            return fail(c, "conv1d: bad geometry");
        /* every tap read lies inside [0, L): fp_conv1d clips the output range per tap */
        return need_ref(c, s, 1, mul(mul3(p[0], p[1], p[2]), 4), 0, "conv1d input") ||
                       need_ref(c, s, 0, mul(mul3(p[0], p[3], p[9]), 4), 0, "conv1d output") ||
                       need_tensor(c, s, 0, mul3(p[3], p[1] / p[4], p[5]), 4, 0, "weight") ||
                       need_tensor(c, s, 1, p[3], 4, 1, "bias")
                   ? -1
                   : 0;
    }
    case G_BLINEAR: { /* p: rows, K, cout, W, mean_abs, gain_count (0, 1, or a multiple of cout: the gain over
                         the rows of one sample, repeating) */
        if (!dims_ok(p, 0, 3, 1) || p[3] != (p[1] + 63) / 64 || (p[4] != 0 && p[4] != 1) || p[5] < 0 ||
            p[5] >= DIM_MAX || (p[5] > 1 && p[5] % p[2]))
            return fail(c, "binary linear: bad shape");
        const int64_t rows = p[0], K = p[1], cout = p[2], W = p[3];
        return need_ref(c, s, 1, mul3(rows, K, 4), 0, "binary linear input") ||
                       need_ref(c, s, 0, mul3(rows, cout, 4), 0, "binary linear output") ||
                       need_ref(c, s, 3, mul(rows, mul(W, 8) + mul(cout, 4)), 0, "binary linear scratch") ||
                       need_tensor(c, s, 0, mul(cout, W), 8, 0, "weights") || need_tensor(c, s, 1, K, 4, 1, "shift") ||
                       need_tensor(c, s, 2, cout, 4, 1, "alpha") || need_tensor(c, s, 3, cout, 4, 1, "channel scale") ||
                       need_tensor(c, s, 4, p[5], 4, p[5] == 0, "gain") || need_tensor(c, s, 5, cout, 4, 1, "bias")
                   ? -1
                   : 0;
    }
    case G_TRANSPOSE: /* p: batch, rows, cols */
        if (!dims_ok(p, 0, 2, 1)) return fail(c, "transpose: bad shape");
        return need_ref(c, s, 1, mul(mul3(p[0], p[1], p[2]), 4), 0, "transpose input") ||
               need_ref(c, s, 0, mul(mul3(p[0], p[1], p[2]), 4), 0, "transpose output");
    case G_STRIDED:
        return check_strided(c, s);
    case G_MATMUL: /* p: batches, m, k, n */
        if (!dims_ok(p, 0, 3, 1)) return fail(c, "matmul: bad shape");
        return need_ref(c, s, 1, mul(mul3(p[0], p[1], p[2]), 4), 0, "matmul a") ||
               need_ref(c, s, 2, mul(mul3(p[0], p[2], p[3]), 4), 0, "matmul b") ||
               need_ref(c, s, 0, mul(mul3(p[0], p[1], p[3]), 4), 0, "matmul output");
    case G_LAYERNORM: { /* p: rows, cols; floats: eps */
        const double eps = c->plan->floats[c->step * G_FLOATS];
        if (!dims_ok(p, 0, 1, 1) || !(eps >= 0.0)) return fail(c, "layer norm: bad shape or eps");
        return need_ref(c, s, 1, mul3(p[0], p[1], 4), 0, "layer norm input") ||
                       need_ref(c, s, 0, mul3(p[0], p[1], 4), 0, "layer norm output") ||
                       need_tensor(c, s, 0, p[1], 4, 1, "weight") || need_tensor(c, s, 1, p[1], 4, 1, "bias")
                   ? -1
                   : 0;
    }
    case G_SOFTMAX: /* p: outer, red, inner */
        if (!dims_ok(p, 0, 2, 1)) return fail(c, "softmax: bad shape");
        return need_ref(c, s, 1, mul(mul3(p[0], p[1], p[2]), 4), 0, "softmax input") ||
               need_ref(c, s, 0, mul(mul3(p[0], p[1], p[2]), 4), 0, "softmax output");
    case G_UNARY: /* p: count, kind; floats: value */
        if (p[0] < 1 || p[0] >= DIM_MAX * 64 || p[1] < FP_GELU || p[1] > FP_RDIV) return fail(c, "unary: bad size or kind");
        return need_ref(c, s, 1, mul(p[0], 4), 0, "unary input") || need_ref(c, s, 0, mul(p[0], 4), 0, "unary output");
    case G_GATHER: /* p: ids, vocab, dim */
        if (!dims_ok(p, 0, 2, 1)) return fail(c, "gather: bad shape");
        return need_ref(c, s, 1, mul(p[0], 8), 0, "token ids") ||
                       need_ref(c, s, 0, mul3(p[0], p[2], 4), 0, "gather output") ||
                       need_tensor(c, s, 0, mul(p[1], p[2]), 4, 0, "embedding table")
                   ? -1
                   : 0;
    default:
        return fail(c, "unknown op %lld", (long long)s[0]);
    }
}

graph_plan *graph_build(const int64_t *steps, const double *floats, int64_t n_steps, const graph_tensor *tensors,
                        int64_t n_tensors, int64_t arena_bytes, const int64_t *input_bytes, int64_t n_inputs,
                        const int64_t *output_bytes, int64_t n_outputs, char *err, size_t errlen) {
    if (n_steps < 0 || n_tensors < 0 || arena_bytes < 0 || n_inputs < 1 || n_outputs < 1) {
        snprintf(err, errlen, "bad plan sizes");
        return NULL;
    }
    graph_plan *g = calloc(1, sizeof(*g));
    if (!g) goto oom;
    g->n_steps = n_steps;
    g->n_tensors = n_tensors;
    g->arena_bytes = arena_bytes;
    g->n_inputs = n_inputs;
    g->n_outputs = n_outputs;
    g->steps = malloc(sizeof(int64_t) * G_SLOTS * (size_t)(n_steps ? n_steps : 1));
    g->floats = malloc(sizeof(double) * G_FLOATS * (size_t)(n_steps ? n_steps : 1));
    g->tensors = malloc(sizeof(graph_tensor) * (size_t)(n_tensors ? n_tensors : 1));
    g->input_bytes = malloc(sizeof(int64_t) * (size_t)n_inputs);
    g->output_bytes = malloc(sizeof(int64_t) * (size_t)n_outputs);
    /* 64-byte aligned, as numpy's own buffers are at least 16-aligned */
    g->arena = arena_bytes ? aligned_alloc(64, (size_t)((arena_bytes + 63) / 64 * 64)) : NULL;
    if (!g->steps || !g->floats || !g->tensors || !g->input_bytes || !g->output_bytes || (arena_bytes && !g->arena))
        goto oom;
    memcpy(g->steps, steps, sizeof(int64_t) * G_SLOTS * (size_t)n_steps);
    memcpy(g->floats, floats, sizeof(double) * G_FLOATS * (size_t)n_steps);
    memcpy(g->tensors, tensors, sizeof(graph_tensor) * (size_t)n_tensors);
    memcpy(g->input_bytes, input_bytes, sizeof(int64_t) * (size_t)n_inputs);
    memcpy(g->output_bytes, output_bytes, sizeof(int64_t) * (size_t)n_outputs);
    if (arena_bytes) memset(g->arena, 0, (size_t)arena_bytes);
    for (int64_t i = 0; i < n_inputs; i++)
        if (input_bytes[i] < 0) { snprintf(err, errlen, "bad input size"); goto fail; }
    for (int64_t i = 0; i < n_outputs; i++)
        if (output_bytes[i] < 0) { snprintf(err, errlen, "bad output size"); goto fail; }
    checker c = {g, 0, err, errlen};
    for (int64_t i = 0; i < n_steps; i++) {
        c.step = i;
        if (check_step(&c, g->steps + i * G_SLOTS)) goto fail;
    }
    return g;
oom:
    snprintf(err, errlen, "out of memory building the plan");
fail:
    graph_free(g);
    return NULL;
}

void graph_free(graph_plan *g) {
    if (!g) return;
    free(g->steps);
    free(g->floats);
    free(g->tensors);
    free(g->input_bytes);
    free(g->output_bytes);
    free(g->arena);
    free(g);
}

int64_t graph_input_bytes(const graph_plan *g, int64_t i) { return i >= 0 && i < g->n_inputs ? g->input_bytes[i] : -1; }
int64_t graph_output_bytes(const graph_plan *g, int64_t i) { return i >= 0 && i < g->n_outputs ? g->output_bytes[i] : -1; }
int64_t graph_steps(const graph_plan *g) { return g->n_steps; }

/* -- running ---------------------------------------------------------------------------------- */
typedef struct {
    graph_plan *g;
    const void *const *inputs;
    void *const *outputs;
} frame;

static void *ref(const frame *f, const int64_t *s, int r) {
    const int64_t space = s[1 + 2 * r], off = s[2 + 2 * r];
    if (space < 0) return NULL;
    const int64_t kind = ref_kind(space), index = ref_index(space);
    unsigned char *base = kind == G_ARENA    ? f->g->arena
                          : kind == G_INPUT ? (unsigned char *)f->inputs[index]
                                            : (unsigned char *)f->outputs[index];
    return base + off;
}

static const void *tensor(const frame *f, const int64_t *s, int t) {
    return s[9 + t] < 0 ? NULL : f->g->tensors[s[9 + t]].data;
}

static int run_bconv(const frame *f, const int64_t *s, const double *fl, const char *isa, int threads) {
    const int64_t *p = s + G_P;
    bconv_shape sh = {p[1], p[2], p[3], p[4], p[5], p[6], p[7], p[8], p[9], p[10], p[11], p[12], p[13], p[14], (int)p[15]};
    bconv_bits_out bits = {NULL, tensor(f, s, 9), p[18], p[19], p[20], p[21], (int)p[22]};
    if (p[17]) bits.planes = ref(f, s, 0);
    bconv_epilogue e = {
        tensor(f, s, 1), tensor(f, s, 2), tensor(f, s, 3), p[24], tensor(f, s, 4), tensor(f, s, 5), tensor(f, s, 6),
        tensor(f, s, 7), tensor(f, s, 8), ref(f, s, 2), (int)p[23], (float)fl[0], (float)fl[1], p[17] ? &bits : NULL,
    };
    return bconv2d(&sh, &e, p[16] ? NULL : ref(f, s, 1), p[16] ? ref(f, s, 1) : NULL, ref(f, s, 3), p[0],
                   tensor(f, s, 0), p[17] ? NULL : ref(f, s, 0), isa, threads);
}

/* Y (M, N) = Wp x X (K, N) + bias, Wp packed (ceil(M/8), K, 8): where fp_gemm has no kernel here. */
static void gemm_portable(const float *wp, const float *x, const float *bias, int64_t M, int64_t K, int64_t N, float *y,
                          int threads) {
    (void)threads;
    for (int64_t m = 0; m < M; m++) {
        float *row = y + m * N;
        const float b = bias ? bias[m] : 0.0f;
        for (int64_t j = 0; j < N; j++) row[j] = b;
        const float *w = wp + (m / 8) * K * 8 + (m % 8);
        for (int64_t k = 0; k < K; k++) {
            const float wk = w[k * 8];
            const float *xr = x + k * N;
            for (int64_t j = 0; j < N; j++) row[j] += wk * xr[j];
        }
    }
}

static int run_conv(const frame *f, const int64_t *s, const double *fl, int threads) {
    const int64_t *p = s + G_P;
    const int64_t n = p[0], C = p[1], H = p[2], W = p[3], cout = p[4];
    fp_pool2d geom = {p[5], p[6], p[7], p[8], p[9], p[10], p[11], p[12], p[13], p[14]};
    const float *x = ref(f, s, 1);
    float *y = ref(f, s, 0);
    if (p[15] == 0) {
        fp_pool2d pool = {p[19], p[20], p[21], p[22], p[23], p[24], p[25], p[26], p[27], p[28]};
        fp_conv_post post = {tensor(f, s, 2), tensor(f, s, 3), (int)p[17], (float)fl[0], (float)fl[1],
                             p[18] ? &pool : NULL};
        const int64_t out_plane = cout * (p[18] ? p[27] * p[28] : p[13] * p[14]);
        for (int64_t b = 0; b < n; b++) {
            int rc = fp_conv2d_direct(x + b * C * H * W, C, H, W, tensor(f, s, 0), tensor(f, s, 1), cout, &geom, &post,
                                      y + b * out_plane, threads);
            if (rc) return rc;
        }
        return 0;
    }
    float *cols = ref(f, s, 3);
    const int64_t K = C * p[5] * p[6], N = p[13] * p[14];
    for (int64_t b = 0; b < n; b++) {
        fp_im2col2d(x + b * C * H * W, C, H, W, &geom, 0, p[13], cols, threads);
        if (fp_gemm(tensor(f, s, 0), cols, tensor(f, s, 1), cout, K, N, y + b * cout * N, threads) == -1)
            gemm_portable(tensor(f, s, 0), cols, tensor(f, s, 1), cout, K, N, y + b * cout * N, threads);
    }
    return 0;
}

static void run_avgpool(const frame *f, const int64_t *s) {
    const int64_t *p = s + G_P;
    const int64_t planes = p[0], H = p[1], W = p[2], kh = p[3], kw = p[4], sh = p[5], sw = p[6], pt = p[9], pl = p[10],
                  oh = p[11], ow = p[12];
    const int padded = p[9] || p[10] || p[13] || p[14];
    const int whole = p[15] || !padded;
    const float *x = ref(f, s, 1);
    float *y = ref(f, s, 0);
    for (int64_t c = 0; c < planes; c++)
        for (int64_t oy = 0; oy < oh; oy++)
            for (int64_t ox = 0; ox < ow; ox++) {
                float sum = 0.0f, count = 0.0f;
                for (int64_t ky = 0; ky < kh; ky++) {
                    const int64_t iy = oy * sh + ky - pt;
                    for (int64_t kx = 0; kx < kw; kx++) {
                        const int64_t ix = ox * sw + kx - pl;
                        if (iy >= 0 && iy < H && ix >= 0 && ix < W) {
                            sum += x[(c * H + iy) * W + ix];
                            count += 1.0f;
                        }
                    }
                }
                y[(c * oh + oy) * ow + ox] = sum / (whole ? (float)(kh * kw) : count);
            }
}

/* numpy's pairwise float32 sum (its reductions over a contiguous axis), of |a[i]| when `absolute`
 * (np.abs(x) is a float32 array first: the same values), so a mean equals np.mean's. */
static float pairwise_sum(const float *a, int64_t n, int absolute) {
#define TERM(i) (absolute ? fabsf(a[i]) : a[i])
    if (n < 8) {
        float res = 0.0f;
        for (int64_t i = 0; i < n; i++) res += TERM(i);
        return res;
    }
    if (n <= 128) {
        float r[8];
        for (int j = 0; j < 8; j++) r[j] = TERM(j);
        int64_t i;
        for (i = 8; i < n - (n % 8); i += 8)
            for (int j = 0; j < 8; j++) r[j] += TERM(i + j);
        float res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for (; i < n; i++) res += TERM(i);
        return res;
    }
#undef TERM
    int64_t n2 = n / 2;
    n2 -= n2 % 8;
    return pairwise_sum(a, n2, absolute) + pairwise_sum(a + n2, n - n2, absolute);
}

/* A float32 sum over a contiguous run as np.add.reduce takes it: its iterator hands the loop
 * buffers of 8192 elements, each summed pairwise, added in order. */
#define NUMPY_BUFSIZE 8192
static float numpy_sum(const float *a, int64_t n, int absolute) {
    float res = 0.0f;
    for (int64_t at = 0; at < n; at += NUMPY_BUFSIZE)
        res += pairwise_sum(a + at, n - at < NUMPY_BUFSIZE ? n - at : NUMPY_BUFSIZE, absolute);
    return res;
}

/* The largest of n floats, NaN if any is NaN (np.max), in two 4-lane GCC vectors (SSE, NEON).
 * v - v is 0 for every finite v, so a lane sum that ends NaN flags a NaN or an infinity; only
 * then is the run scanned exactly, one value at a time. */
typedef float f4 __attribute__((vector_size(16)));
typedef int32_t i4 __attribute__((vector_size(16)));
static inline f4 vmax(f4 v, f4 m) {
    const i4 gt = v > m;
    return (f4)(((i4)v & gt) | ((i4)m & ~gt));
}
static float max_run(const float *x, int64_t n) {
    float best = x[0], check = 0.0f;
    int64_t r = 0;
    if (n >= 8) {
        f4 m0, m1, flag0 = {0, 0, 0, 0}, flag1 = {0, 0, 0, 0};
        memcpy(&m0, x, sizeof(m0));
        memcpy(&m1, x + 4, sizeof(m1));
        for (r = 8; r + 8 <= n; r += 8) {
            f4 v0, v1;
            memcpy(&v0, x + r, sizeof(v0));
            memcpy(&v1, x + r + 4, sizeof(v1));
            m0 = vmax(v0, m0);
            m1 = vmax(v1, m1);
            flag0 += v0 - v0;
            flag1 += v1 - v1;
        }
        flag0 += (m0 - m0) + (m1 - m1) + flag1;
        m0 = vmax(m1, m0);
        for (int j = 0; j < 4; j++) best = m0[j] > best ? m0[j] : best, check += flag0[j];
    }
    for (; r < n; r++) best = x[r] > best ? x[r] : best, check += x[r] - x[r];
    if (check != check) { /* a NaN or an infinity: exact, slowly */
        best = x[0];
        for (int64_t q = 1; q < n && best == best; q++)
            if (x[q] > best || x[q] != x[q]) best = x[q];
    }
    return best;
}

static void run_reduce(const frame *f, const int64_t *s) {
    const int64_t *p = s + G_P;
    const int64_t outer = p[0], red = p[1], inner = p[2];
    const float *x = ref(f, s, 1);
    float *y = ref(f, s, 0);
    for (int64_t o = 0; o < outer; o++) {
        const float *xo = x + o * red * inner;
        float *yo = y + o * inner;
        if (p[3] == 0) {
            if (inner == 1) {
                yo[0] = numpy_sum(xo, red, 0) / (float)red;
            } else { /* numpy adds the rows in order over a strided axis */
                for (int64_t i = 0; i < inner; i++) yo[i] = 0.0f;
                for (int64_t r = 0; r < red; r++)
                    for (int64_t i = 0; i < inner; i++) yo[i] += xo[r * inner + i];
                for (int64_t i = 0; i < inner; i++) yo[i] /= (float)red;
            }
        } else if (inner == 1) { /* np.max: NaN if any value is NaN, else the largest */
            yo[0] = max_run(xo, red);
        } else { /* rows of `inner` values, reduced in order: contiguous, vectorisable */
            for (int64_t i = 0; i < inner; i++) yo[i] = xo[i];
            for (int64_t r = 1; r < red; r++) {
                const float *row = xo + r * inner;
                for (int64_t i = 0; i < inner; i++) {
                    const float v = row[i], m = yo[i];
                    yo[i] = (v > m || v != v) && m == m ? v : m;
                }
            }
        }
    }
}

/* BinaryConvGemm's linear (ops/binary.py), the same integers and the same float32 sequence:
 * signs of x + shift packed LSB first, XNOR-popcount dots, then * alpha, * mean|x| (XNOR's beta,
 * numpy's sum), * channel scale, * gain, + bias. */
static void run_blinear(const frame *f, const int64_t *s, int threads) {
    const int64_t *p = s + G_P;
    const int64_t rows = p[0], K = p[1], cout = p[2], W = p[3];
    const float *x = ref(f, s, 1), *shift = tensor(f, s, 1), *alpha = tensor(f, s, 2), *cs = tensor(f, s, 3),
                *gain = tensor(f, s, 4), *bias = tensor(f, s, 5);
    float *y = ref(f, s, 0);
    uint64_t *acts = ref(f, s, 3);
    int32_t *dots = (int32_t *)(acts + rows * W);
    memset(acts, 0, sizeof(uint64_t) * (size_t)(rows * W));
    for (int64_t r = 0; r < rows; r++)
        for (int64_t j = 0; j < K; j++) {
            const float v = shift ? x[r * K + j] + shift[j] : x[r * K + j];
            if (!(v >= 0.0f)) acts[r * W + j / 64] |= (uint64_t)1 << (j % 64);
        }
    xnor_gemm(acts, tensor(f, s, 0), dots, rows, W, cout, K, threads);
    for (int64_t r = 0; r < rows; r++) {
        float beta = 0.0f;
        if (p[4]) beta = numpy_sum(x + r * K, K, 1) / (float)K; /* np.abs(x).mean(axis=-1) */
        for (int64_t o = 0; o < cout; o++) {
            float v = (float)dots[r * cout + o];
            if (alpha) v *= alpha[o];
            if (p[4]) v *= beta;
            if (cs) v *= cs[o];
            if (gain) v *= gain[p[5] == 1 ? 0 : (r * cout + o) % p[5]];
            if (bias) v += bias[o];
            y[r * cout + o] = v;
        }
    }
}

static void run_strided(const frame *f, const int64_t *s) {
    const int64_t *p = s + G_P, *d = p, *st = p + G_STRIDED_DIMS;
    const float *src = (has_ref(s, 1) ? (const float *)ref(f, s, 1) : (const float *)tensor(f, s, 0)) + p[12];
    float *y = ref(f, s, 0);
    int64_t k = 0;
    for (int64_t i0 = 0; i0 < d[0]; i0++)
        for (int64_t i1 = 0; i1 < d[1]; i1++)
            for (int64_t i2 = 0; i2 < d[2]; i2++)
                for (int64_t i3 = 0; i3 < d[3]; i3++)
                    for (int64_t i4 = 0; i4 < d[4]; i4++) {
                        const float *row = src + i0 * st[0] + i1 * st[1] + i2 * st[2] + i3 * st[3] + i4 * st[4];
                        if (st[5] == 1) {
                            memcpy(y + k, row, sizeof(float) * (size_t)d[5]);
                            k += d[5];
                        } else {
                            for (int64_t i5 = 0; i5 < d[5]; i5++) y[k++] = row[i5 * st[5]];
                        }
                    }
}

/* (rows, cols) -> (cols, rows) per batch, in 8 x 8 blocks through a local tile, then the ragged
 * edges (row by row, every write of a 1024-column map missed the cache: 6 ms of bert_tiny's 15;
 * measured on 128 x 1024, 32 x 32 tiles take 190 us, these blocks 40). */
static inline void transpose_block(const float *restrict x, float *restrict y, int64_t R, int64_t C, int64_t r0,
                                   int64_t c0) {
    float t[8][8];
    for (int i = 0; i < 8; i++)
        for (int j = 0; j < 8; j++) t[i][j] = x[(r0 + i) * C + c0 + j];
    for (int j = 0; j < 8; j++)
        for (int i = 0; i < 8; i++) y[(c0 + j) * R + r0 + i] = t[i][j];
}

static void transpose_plane(const float *restrict x, float *restrict y, int64_t R, int64_t C) {
    const int64_t R8 = R / 8 * 8, C8 = C / 8 * 8;
    /* the outer loop walks the shorter side: the eight output rows (or input rows) a block touches
     * then stay in cache for the whole inner sweep (1024 x 128: 186 us the other way round, 38 us) */
    if (R >= C) {
        for (int64_t c0 = 0; c0 < C8; c0 += 8)
            for (int64_t r0 = 0; r0 < R8; r0 += 8) transpose_block(x, y, R, C, r0, c0);
    } else {
        for (int64_t r0 = 0; r0 < R8; r0 += 8)
            for (int64_t c0 = 0; c0 < C8; c0 += 8) transpose_block(x, y, R, C, r0, c0);
    }
    for (int64_t r = 0; r < R; r++)
        for (int64_t c = r < R8 ? C8 : 0; c < C; c++) y[c * R + r] = x[r * C + c];
}

static void run_transpose(const frame *f, const int64_t *s) {
    const int64_t *p = s + G_P;
    const float *x = ref(f, s, 1);
    float *y = ref(f, s, 0);
    for (int64_t b = 0; b < p[0]; b++) transpose_plane(x + b * p[1] * p[2], y + b * p[1] * p[2], p[1], p[2]);
}

static int run_gather(const frame *f, const int64_t *s) {
    const int64_t *p = s + G_P;
    const int64_t *ids = ref(f, s, 1);
    const float *table = tensor(f, s, 0);
    float *y = ref(f, s, 0);
    for (int64_t i = 0; i < p[0]; i++) {
        if (ids[i] < 0 || ids[i] >= p[1]) return -4;
        memcpy(y + i * p[2], table + ids[i] * p[2], sizeof(float) * (size_t)p[2]);
    }
    return 0;
}

int64_t graph_run(graph_plan *g, const void *const *inputs, void *const *outputs, const char *isa, int threads,
                  int *code) {
    frame f = {g, inputs, outputs};
    for (int64_t i = 0; i < g->n_steps; i++) {
        const int64_t *s = g->steps + i * G_SLOTS, *p = s + G_P;
        const double *fl = g->floats + i * G_FLOATS;
        int rc = 0;
        switch (s[0]) {
        case G_BCONV:
            rc = run_bconv(&f, s, fl, isa, threads);
            break;
        case G_CONV:
            rc = run_conv(&f, s, fl, threads);
            break;
        case G_AFFINE: {
            const float lohi[2] = {(float)fl[0], (float)fl[1]};
            fp_channel_fma(ref(&f, s, 1), tensor(&f, s, 0), tensor(&f, s, 1), p[0], p[1], p[2], p[3] ? lohi : NULL,
                           ref(&f, s, 0), threads);
            break;
        }
        case G_CLAMP:
            fp_clamp(ref(&f, s, 1), p[0], (float)fl[0], (float)fl[1], ref(&f, s, 0), threads);
            break;
        case G_MAXPOOL: {
            fp_pool2d pool = {p[3], p[4], p[5], p[6], p[7], p[8], p[9], p[10], p[11], p[12]};
            rc = fp_max_pool2d(ref(&f, s, 1), p[0], p[1], p[2], &pool, ref(&f, s, 0), threads, isa);
            break;
        }
        case G_AVGPOOL:
            run_avgpool(&f, s);
            break;
        case G_REDUCE:
            run_reduce(&f, s);
            break;
        case G_ADD: {
            const float *a = ref(&f, s, 1), *b = ref(&f, s, 2);
            float *y = ref(&f, s, 0);
            for (int64_t k = 0; k < p[0]; k++) y[k] = a[k] + b[k];
            break;
        }
        case G_COPY: {
            const float *src = ref(&f, s, 1);
            float *dst = (float *)ref(&f, s, 0) + p[4];
            for (int64_t o = 0; o < p[0]; o++) memmove(dst + o * p[3], src + o * p[2], sizeof(float) * (size_t)p[1]);
            break;
        }
        case G_LINEAR:
            fp_linear(ref(&f, s, 1), tensor(&f, s, 0), tensor(&f, s, 1), p[0], p[1], p[2], ref(&f, s, 0), threads);
            break;
        case G_PRELU: {
            const float *x = ref(&f, s, 1), *w = tensor(&f, s, 0);
            float *y = ref(&f, s, 0);
            for (int64_t b = 0; b < p[0]; b++)
                for (int64_t c = 0; c < p[1]; c++) {
                    const float wc = w[p[3] ? c : 0];
                    const int64_t base = (b * p[1] + c) * p[2];
                    for (int64_t k = 0; k < p[2]; k++) {
                        const float v = x[base + k];
                        y[base + k] = v > 0.0f ? v : wc * v;
                    }
                }
            break;
        }
        case G_GAIN: {
            const float *gain = tensor(&f, s, 0), *bias = tensor(&f, s, 1);
            float *y = ref(&f, s, 0);
            for (int64_t b = 0; b < p[0]; b++)
                for (int64_t c = 0; c < p[1]; c++) {
                    float *row = y + (b * p[1] + c) * p[2];
                    const float *gr = gain + (p[3] == p[2] ? 0 : c * p[2]);
                    for (int64_t k = 0; k < p[2]; k++) row[k] *= gr[k];
                    if (bias)
                        for (int64_t k = 0; k < p[2]; k++) row[k] += bias[c];
                }
            break;
        }
        case G_BETA: { /* np.abs(x).mean(axis=(1, ...)): per sample, one division */
            const float *x = ref(&f, s, 1);
            float *y = ref(&f, s, 0);
            for (int64_t b = 0; b < p[0]; b++) y[b] = numpy_sum(x + b * p[1], p[1], 1) / (float)p[1];
            break;
        }
        case G_BLINEAR:
            run_blinear(&f, s, threads);
            break;
        case G_CONV1D:
            for (int64_t b = 0; b < p[0]; b++)
                fp_conv1d((const float *)ref(&f, s, 1) + b * p[1] * p[2], p[1], p[2], tensor(&f, s, 0), tensor(&f, s, 1),
                          p[3], p[4], p[5], p[6], p[7], p[8], p[9], (float *)ref(&f, s, 0) + b * p[3] * p[9], threads);
            break;
        case G_TRANSPOSE:
            run_transpose(&f, s);
            break;
        case G_STRIDED:
            run_strided(&f, s);
            break;
        case G_MATMUL:
            fp_matmul(ref(&f, s, 1), ref(&f, s, 2), p[0], p[1], p[2], p[3], ref(&f, s, 0), threads);
            break;
        case G_LAYERNORM:
            fp_layer_norm(ref(&f, s, 1), p[0], p[1], tensor(&f, s, 0), tensor(&f, s, 1), fl[0], ref(&f, s, 0));
            break;
        case G_SOFTMAX:
            fp_softmax(ref(&f, s, 1), p[0], p[1], p[2], ref(&f, s, 0));
            break;
        case G_UNARY:
            fp_unary(ref(&f, s, 1), p[0], (int)p[1], (float)fl[0], ref(&f, s, 0), threads);
            break;
        case G_GATHER:
            rc = run_gather(&f, s);
            break;
        default:
            rc = -3;
        }
        if (rc) {
            *code = rc;
            return i + 1;
        }
    }
    return 0;
}
