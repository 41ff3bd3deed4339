/*
 * The CPython extension biagent.kernels._xnor: the Python side of the custom runtime's C kernels.
 *
 * Everything Python lives here: argument parsing, borrowing numpy buffers and checking their
 * shapes and dtypes (a bad call is a ValueError, never a crash), releasing the GIL around the
 * kernels, the method table. The kernels are plain C with a header each: xnor_gemm.c
 * (XNOR-popcount GEMM, patch packing), bconv.c (the channel-packed binary conv), fpops.c
 * (full-precision ops).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#include "bconv.h"
#include "fpops.h"
#include "graph.h"
#include "xnor_gemm.h"

/* -- xnor_gemm.c ---------------------------------------------------------------------- */
static PyObject *py_xnor_gemm(PyObject *self, PyObject *args) {
    PyObject *ao, *bo, *oo;
    long long k;
    int threads = 1;
    if (!PyArg_ParseTuple(args, "OOOL|i", &ao, &bo, &oo, &k, &threads)) return NULL;
    Py_buffer a = {0}, b = {0}, o = {0};
    PyObject *result = NULL;
    Py_ssize_t rows = 0, cout = 0, W = 0;
    int got_a = 0, got_b = 0, got_o = 0;
    got_a = PyObject_GetBuffer(ao, &a, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) == 0;
    if (got_a) got_b = PyObject_GetBuffer(bo, &b, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) == 0;
    if (got_b) got_o = PyObject_GetBuffer(oo, &o, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | PyBUF_WRITABLE) == 0;
    if (!got_o) {
        PyErr_Clear();
        goto bad;
    }
    if (a.ndim != 2 || b.ndim != 2 || o.ndim != 2) goto bad;
    rows = a.shape[0]; W = a.shape[1]; cout = b.shape[0];
    if (b.shape[1] != W || o.shape[0] != rows || o.shape[1] != cout || a.itemsize != 8 || b.itemsize != 8 ||
        o.itemsize != 4 || k < 0 || k > 64 * (long long)W)
        goto bad;
    const uint64_t *acts = (const uint64_t *)a.buf, *w = (const uint64_t *)b.buf;
    int32_t *out = (int32_t *)o.buf;
    Py_BEGIN_ALLOW_THREADS
    xnor_gemm(acts, w, out, rows, W, cout, (int64_t)k, threads);
    Py_END_ALLOW_THREADS
    result = Py_None;
    Py_INCREF(result);
    goto done;
bad:
    PyErr_SetString(PyExc_ValueError,
                    "xnor_gemm needs C-contiguous acts (rows, W) uint64, weights (cout, W) uint64, "
                    "writable out (rows, cout) int32, and 0 <= k <= 64 W");
done:
    if (got_a) PyBuffer_Release(&a);
    if (got_b) PyBuffer_Release(&b);
    if (got_o) PyBuffer_Release(&o);
    return result;
}

/*
 * pack_patches2d(neg, out, c0, cg, kh, kw, sh, sw, dh, dw, oy0, oy1, ow)
 * neg: (C, Hp, Wp) uint8, 1 where the (already padded) binarized input is -1.
 * out: ((oy1 - oy0) * ow, W) uint64: the im2col patch of each output position, bits in
 * (c, ky, kx) order over channels [c0, c0 + cg), LSB first, zero tail bits: the packing
 * of formats/biformats/custom.py, without materialising the float or bool patches (xnor_gemm.c).
 */
static PyObject *py_pack_patches2d(PyObject *self, PyObject *args) {
    PyObject *no, *oo;
    Py_ssize_t c0, cg, kh, kw, sh, sw, dh, dw, oy0, oy1, ow;
    if (!PyArg_ParseTuple(args, "OOnnnnnnnnnnn", &no, &oo, &c0, &cg, &kh, &kw, &sh, &sw, &dh, &dw, &oy0, &oy1, &ow))
        return NULL;
    Py_buffer n = {0}, o = {0};
    int got_n = PyObject_GetBuffer(no, &n, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) == 0, got_o = 0;
    if (got_n) got_o = PyObject_GetBuffer(oo, &o, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | PyBUF_WRITABLE) == 0;
    PyObject *result = NULL;
    if (!got_o) { PyErr_Clear(); goto bad; }
    if (n.ndim != 3 || n.itemsize != 1 || o.ndim != 2 || o.itemsize != 8) goto bad;
    Py_ssize_t C = n.shape[0], Hp = n.shape[1], Wp = n.shape[2], W = o.shape[1];
    Py_ssize_t k = cg * kh * kw;
    if (c0 < 0 || cg <= 0 || c0 + cg > C || kh <= 0 || kw <= 0 || sh <= 0 || sw <= 0 || dh <= 0 || dw <= 0 ||
        oy0 < 0 || oy1 < oy0 || ow <= 0 || o.shape[0] != (oy1 - oy0) * ow || W * 64 < k ||
        (oy1 > oy0 && ((oy1 - 1) * sh + (kh - 1) * dh >= Hp || (ow - 1) * sw + (kw - 1) * dw >= Wp)))
        goto bad;
    const uint8_t *neg = (const uint8_t *)n.buf;
    uint64_t *out = (uint64_t *)o.buf;
    Py_BEGIN_ALLOW_THREADS
    pack_patches2d(neg, Hp, Wp, out, W, c0, cg, kh, kw, sh, sw, dh, dw, oy0, oy1, ow);
    Py_END_ALLOW_THREADS
    result = Py_None;
    Py_INCREF(result);
    goto done;
bad:
    PyErr_SetString(PyExc_ValueError, "pack_patches2d: bad buffers or geometry (neg (C, Hp, Wp) uint8, out (rows, W) uint64)");
done:
    if (got_n) PyBuffer_Release(&n);
    if (got_o) PyBuffer_Release(&o);
    return result;
}

/* -- bconv2d: the channel-packed binary conv of bconv.c ------------------------------- */
typedef struct {
    Py_buffer view;
    int held;
} opt_buf;

/* Borrow `obj` as a C-contiguous buffer of `ndim` dims and `itemsize` (None allowed when optional). */
static int take(PyObject *obj, opt_buf *b, int ndim, Py_ssize_t itemsize, char kind, int writable, int optional,
                const char *what) {
    b->held = 0;
    if (obj == Py_None && optional) return 0;
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, &b->view, flags) != 0) {
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError, "%s must be a C-contiguous%s buffer", what, writable ? " writable" : "");
        return -1;
    }
    b->held = 1;
    const char *f = b->view.format ? b->view.format : "B";
    if (*f == '<' || *f == '=' || *f == '@') f++;
    int kind_ok = kind == 'f' ? *f == 'f' : kind == 'd' ? *f == 'd' : kind == 'i' ? (*f == 'i' || *f == 'l') : (*f == 'Q' || *f == 'L' || *f == 'K');
    if ((ndim >= 0 && b->view.ndim != ndim) || b->view.itemsize != itemsize || !kind_ok) {
        PyErr_Format(PyExc_ValueError, ndim >= 0 ? "%s must be %d-D %s" : "%s must be (any rank %d) %s", what, ndim,
                     kind == 'f' ? "float32" : kind == 'd' ? "float64" : kind == 'i' ? (itemsize == 8 ? "int64" : "int32") : "uint64");
        return -1;
    }
    return 0;
}

/* A kernel's return code as the call's result: None, or the error it stands for (-1: this CPU
 * or build cannot run it: `unavailable`, formatted with `arg` where it has a %s; any other nonzero: out of
 * memory). */
static PyObject *kernel_result(int rc, const char *unavailable, const char *arg) {
    if (rc == -1) return PyErr_Format(PyExc_ValueError, unavailable, arg);
    if (rc) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

static void release(opt_buf *bufs, int n) {
    for (int i = 0; i < n; i++)
        if (bufs[i].held) PyBuffer_Release(&bufs[i].view);
}

static PyObject *py_bconv2d(PyObject *self, PyObject *args) {
    PyObject *xo, *bo, *oo, *shift_o, *cls_o, *table_o, *alpha_o, *cs_o, *bias_o, *beta_o, *post_o = Py_None;
    PyObject *pscale_o = Py_None, *pshift_o = Py_None, *res_o = Py_None, *clamp_o = Py_None;
    PyObject *bits_o = Py_None, *pin_o = Py_None, *bplanes_o = Py_None, *bshift_o = Py_None, *pin_arr = Py_None;
    bconv_shape s;
    bconv_bits_out bits_out = {NULL, NULL, 0, 0, 0, 0, 0};
    long long in_C = 0, in_H = 0, in_W = 0;
    const char *isa = "auto";
    int threads = 1;
    if (!PyArg_ParseTuple(args, "OOO(LLLLLLLLLLi)OOOOOOOsi|O", &xo, &bo, &oo, &s.kh, &s.kw, &s.sh, &s.sw, &s.dh,
                          &s.dw, &s.pt, &s.pl, &s.pb, &s.pr, &s.pad_ones, &shift_o, &cls_o, &table_o, &alpha_o, &cs_o, &bias_o,
                          &beta_o, &isa, &threads, &post_o))
        return NULL;
    if (post_o != Py_None &&
        !PyArg_ParseTuple(post_o, "OOOO|OO", &pscale_o, &pshift_o, &res_o, &clamp_o, &bits_o, &pin_o))
        return NULL;
    float lo = 0.0f, hi = 0.0f;
    if (clamp_o != Py_None && !PyArg_ParseTuple(clamp_o, "ff", &lo, &hi)) return NULL;
    if (clamp_o != Py_None && !(lo <= hi)) {
        PyErr_SetString(PyExc_ValueError, "bconv2d: clamp must be (lo, hi) with lo <= hi");
        return NULL;
    }
    if (bits_o != Py_None && !PyArg_ParseTuple(bits_o, "OOLLi", &bplanes_o, &bshift_o, &bits_out.pt, &bits_out.pl,
                                               &bits_out.pad_ones))
        return NULL;
    if (pin_o != Py_None && !PyArg_ParseTuple(pin_o, "OLLL", &pin_arr, &in_C, &in_H, &in_W)) return NULL;
    if ((xo == Py_None) == (pin_o == Py_None)) {
        PyErr_SetString(PyExc_ValueError, "bconv2d: give either x or packed input planes, not both");
        return NULL;
    }
    opt_buf b[16];
    memset(b, 0, sizeof(b));
    PyObject *result = NULL;
    if (take(xo, &b[0], 4, 4, 'f', 0, 1, "bconv2d: x") || take(bo, &b[1], 3, 8, 'u', 0, 0, "bconv2d: weights") ||
        take(oo, &b[2], 4, 4, 'f', 1, 0, "bconv2d: out") || take(shift_o, &b[3], 1, 4, 'f', 0, 1, "bconv2d: shift") ||
        take(cls_o, &b[4], 1, 4, 'i', 0, 1, "bconv2d: corr_cls") || take(alpha_o, &b[5], 1, 4, 'f', 0, 1, "bconv2d: alpha") ||
        take(cs_o, &b[6], 1, 4, 'f', 0, 1, "bconv2d: channel_scale") || take(bias_o, &b[7], 1, 4, 'f', 0, 1, "bconv2d: bias") ||
        take(beta_o, &b[8], 1, 4, 'f', 0, 1, "bconv2d: beta") || take(table_o, &b[9], 2, 4, 'i', 0, 1, "bconv2d: corr_table") ||
        take(pscale_o, &b[10], 1, 4, 'f', 0, 1, "bconv2d: post scale") || take(pshift_o, &b[11], 1, 4, 'f', 0, 1, "bconv2d: post shift") ||
        take(res_o, &b[12], 4, 4, 'f', 0, 1, "bconv2d: residual") ||
        take(bplanes_o, &b[13], 4, 8, 'u', 1, 1, "bconv2d: output planes") ||
        take(bshift_o, &b[14], 1, 4, 'f', 0, 1, "bconv2d: next shift") ||
        take(pin_arr, &b[15], 4, 8, 'u', 0, 1, "bconv2d: input planes"))
        goto done;
    const Py_ssize_t *os = b[2].view.shape, *ws = b[1].view.shape;
    const Py_ssize_t n = os[0];
    if (b[0].held) {
        s.C = b[0].view.shape[1]; s.H = b[0].view.shape[2]; s.W = b[0].view.shape[3];
    } else {
        s.C = in_C; s.H = in_H; s.W = in_W;
    }
    s.cout = os[1];
    if (s.kh < 1 || s.kw < 1 || s.sh < 1 || s.sw < 1 || s.dh < 1 || s.dw < 1 || s.pt < 0 || s.pl < 0 || s.pb < 0 ||
        s.pr < 0 || s.C < 1 || s.H < 1 || s.W < 1 || s.cout < 1 || s.H + s.pt + s.pb < s.dh * (s.kh - 1) + 1 ||
        s.W + s.pl + s.pr < s.dw * (s.kw - 1) + 1) {
        PyErr_SetString(PyExc_ValueError, "bconv2d: bad geometry (kernel larger than the padded input?)");
        goto done;
    }
    const int64_t OH = bconv_out_h(&s), OW = bconv_out_w(&s), P = OH * OW, Wc = (s.C + 63) / 64;
    if ((b[0].held && b[0].view.shape[0] != n) || os[2] != OH || os[3] != OW) {
        PyErr_Format(PyExc_ValueError, "bconv2d: out must be (N, %lld, %lld, %lld) with the input's N", (long long)s.cout,
                     (long long)OH, (long long)OW);
        goto done;
    }
    if (b[15].held) {
        const Py_ssize_t *ps = b[15].view.shape;
        if (ps[0] != n || ps[1] != Wc || ps[2] != s.H + s.pt + s.pb || ps[3] != s.W + s.pl + s.pr) {
            PyErr_Format(PyExc_ValueError, "bconv2d: input planes must be (%zd, %lld, %lld, %lld)", n, (long long)Wc,
                         (long long)(s.H + s.pt + s.pb), (long long)(s.W + s.pl + s.pr));
            goto done;
        }
    }
    if (b[13].held) {
        const Py_ssize_t *ps = b[13].view.shape;
        bits_out.Hp = ps[2];
        bits_out.Wp = ps[3];
        if (ps[0] != n || ps[1] != (s.cout + 63) / 64 || bits_out.pt < 0 || bits_out.pl < 0 ||
            bits_out.Hp < bits_out.pt + OH || bits_out.Wp < bits_out.pl + OW ||
            (b[14].held && b[14].view.shape[0] != s.cout)) {
            PyErr_Format(PyExc_ValueError, "bconv2d: output planes must be (%zd, %lld, >= pt + %lld, >= pl + %lld) "
                         "with pt, pl >= 0 and the next shift (cout,)", n, (long long)((s.cout + 63) / 64),
                         (long long)OH, (long long)OW);
            goto done;
        }
        bits_out.planes = (uint64_t *)b[13].view.buf;
        bits_out.shift = b[14].held ? (const float *)b[14].view.buf : NULL;
    } else if (bits_o != Py_None) {
        PyErr_SetString(PyExc_ValueError, "bconv2d: output planes missing");
        goto done;
    }
    const int64_t KW = bconv_patch_words(s.C, s.kh, s.kw);
    if (ws[0] != (s.cout + 7) / 8 || ws[1] != KW || ws[2] != 8) {
        PyErr_Format(PyExc_ValueError, "bconv2d: weights must be (%lld, %lld, 8)", (long long)((s.cout + 7) / 8),
                     (long long)KW);
        goto done;
    }
    if ((b[3].held && b[3].view.shape[0] != s.C) || (b[4].held != b[9].held) || (b[4].held && b[4].view.shape[0] != P) ||
        (b[9].held && (b[9].view.shape[0] != s.cout || b[9].view.shape[1] < 1)) ||
        (b[5].held && b[5].view.shape[0] != s.cout) || (b[6].held && b[6].view.shape[0] != s.cout) ||
        (b[7].held && b[7].view.shape[0] != s.cout) || (b[8].held && b[8].view.shape[0] != n) ||
        (b[10].held != b[11].held) || (b[10].held && (b[10].view.shape[0] != s.cout || b[11].view.shape[0] != s.cout)) ||
        (b[12].held && (b[12].view.shape[0] != os[0] || b[12].view.shape[1] != os[1] || b[12].view.shape[2] != os[2] ||
                        b[12].view.shape[3] != os[3]))) {
        PyErr_SetString(PyExc_ValueError, "bconv2d: shift must be (C,), corr_cls (OH*OW,) with corr_table (cout, classes), "
                        "alpha/channel_scale/bias (cout,), beta (N,), post scale and shift (cout,) together, "
                        "residual the output's shape");
        goto done;
    }
    if (b[4].held) {  /* classes index the table: check them all, never read past it */
        const int32_t *cls = (const int32_t *)b[4].view.buf;
        const Py_ssize_t n_cls = b[9].view.shape[1];
        for (Py_ssize_t i = 0; i < P; i++)
            if (cls[i] < 0 || cls[i] >= n_cls) {
                PyErr_Format(PyExc_ValueError, "bconv2d: corr_cls[%zd] = %d is not a class of corr_table", i, (int)cls[i]);
                goto done;
            }
    }
    bconv_epilogue e = {
        b[3].held ? (const float *)b[3].view.buf : NULL, b[4].held ? (const int32_t *)b[4].view.buf : NULL,
        b[9].held ? (const int32_t *)b[9].view.buf : NULL, b[9].held ? (int64_t)b[9].view.shape[1] : 0,
        b[5].held ? (const float *)b[5].view.buf : NULL, b[6].held ? (const float *)b[6].view.buf : NULL,
        b[7].held ? (const float *)b[7].view.buf : NULL,
        b[10].held ? (const float *)b[10].view.buf : NULL, b[11].held ? (const float *)b[11].view.buf : NULL,
        b[12].held ? (const float *)b[12].view.buf : NULL, clamp_o != Py_None, lo, hi,
        b[13].held ? &bits_out : NULL,
    };
    const float *beta = b[8].held ? (const float *)b[8].view.buf : NULL;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = bconv2d(&s, &e, b[0].held ? (const float *)b[0].view.buf : NULL,
                 b[15].held ? (const uint64_t *)b[15].view.buf : NULL, beta, n, (const uint64_t *)b[1].view.buf,
                 (float *)b[2].view.buf, isa, threads);
    Py_END_ALLOW_THREADS
    result = kernel_result(rc, "bconv2d: kernel %s cannot run on this CPU", isa);
done:
    release(b, 16);
    return result;
}

static PyObject *py_bconv_isa(PyObject *self, PyObject *args) {
    const char *isa = "auto";
    if (!PyArg_ParseTuple(args, "|s", &isa)) return NULL;
    const char *name = bconv_isa(isa);
    if (!name) Py_RETURN_NONE;
    return PyUnicode_FromString(name);
}

/* -- full-precision ops (fpops.c) ---------------------------------------------------- */
static int same_shape(const Py_buffer *a, const Py_buffer *b) {
    if (a->ndim != b->ndim) return 0;
    for (int i = 0; i < a->ndim; i++)
        if (a->shape[i] != b->shape[i]) return 0;
    return 1;
}

static PyObject *py_channel_fma(PyObject *self, PyObject *args) {
    PyObject *xo, *so, *ho, *oo, *clamp_o = Py_None;
    int threads = 1;
    if (!PyArg_ParseTuple(args, "OOOO|Oi", &xo, &so, &ho, &oo, &clamp_o, &threads)) return NULL;
    float lo_hi[2];
    if (clamp_o != Py_None && (!PyArg_ParseTuple(clamp_o, "ff", &lo_hi[0], &lo_hi[1]) || !(lo_hi[0] <= lo_hi[1]))) {
        PyErr_Clear();
        PyErr_SetString(PyExc_ValueError, "channel_fma: clamp must be None or (lo, hi) with lo <= hi");
        return NULL;
    }
    opt_buf b[4];
    memset(b, 0, sizeof(b));
    PyObject *result = NULL;
    if (take(xo, &b[0], -1, 4, 'f', 0, 0, "channel_fma: x") || take(so, &b[1], 1, 4, 'f', 0, 0, "channel_fma: scale") ||
        take(ho, &b[2], 1, 4, 'f', 0, 0, "channel_fma: shift") || take(oo, &b[3], -1, 4, 'f', 1, 0, "channel_fma: out"))
        goto done;
    if (b[0].view.ndim < 2 || !same_shape(&b[0].view, &b[3].view) || b[1].view.shape[0] != b[0].view.shape[1] ||
        b[2].view.shape[0] != b[0].view.shape[1]) {
        PyErr_SetString(PyExc_ValueError, "channel_fma: x and out (N, C, ...) of one shape, scale and shift (C,)");
        goto done;
    }
    const int64_t n = b[0].view.shape[0], c = b[0].view.shape[1];
    const int64_t inner = (n * c) != 0 ? (int64_t)(b[0].view.len / 4) / (n * c) : 0;
    Py_BEGIN_ALLOW_THREADS
    fp_channel_fma((const float *)b[0].view.buf, (const float *)b[1].view.buf, (const float *)b[2].view.buf, n, c,
                   inner, clamp_o == Py_None ? NULL : lo_hi, (float *)b[3].view.buf, threads);
    Py_END_ALLOW_THREADS
    result = Py_None;
    Py_INCREF(result);
done:
    release(b, 4);
    return result;
}

static PyObject *py_clamp(PyObject *self, PyObject *args) {
    PyObject *xo, *oo;
    float lo, hi;
    int threads = 1;
    if (!PyArg_ParseTuple(args, "OffO|i", &xo, &lo, &hi, &oo, &threads)) return NULL;
    opt_buf b[2];
    memset(b, 0, sizeof(b));
    PyObject *result = NULL;
    if (take(xo, &b[0], -1, 4, 'f', 0, 0, "clamp: x") || take(oo, &b[1], -1, 4, 'f', 1, 0, "clamp: out")) goto done;
    if (!same_shape(&b[0].view, &b[1].view) || !(lo <= hi)) {
        PyErr_SetString(PyExc_ValueError, "clamp: x and out of one shape, lo <= hi");
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    fp_clamp((const float *)b[0].view.buf, (int64_t)(b[0].view.len / 4), lo, hi, (float *)b[1].view.buf, threads);
    Py_END_ALLOW_THREADS
    result = Py_None;
    Py_INCREF(result);
done:
    release(b, 2);
    return result;
}

static PyObject *py_unary(PyObject *self, PyObject *args) {
    PyObject *xo, *oo;
    int kind = 0, threads = 1;
    float value = 0.0f;
    if (!PyArg_ParseTuple(args, "OifO|i", &xo, &kind, &value, &oo, &threads)) return NULL;
    opt_buf b[2];
    memset(b, 0, sizeof(b));
    PyObject *result = NULL;
    if (take(xo, &b[0], -1, 4, 'f', 0, 0, "unary: x") || take(oo, &b[1], -1, 4, 'f', 1, 0, "unary: out")) goto done;
    if (!same_shape(&b[0].view, &b[1].view) || kind < FP_GELU || kind > FP_RDIV) {
        PyErr_SetString(PyExc_ValueError, "unary: x and out of one shape, a known kind");
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    fp_unary((const float *)b[0].view.buf, (int64_t)(b[0].view.len / 4), kind, value, (float *)b[1].view.buf, threads);
    Py_END_ALLOW_THREADS
    result = Py_None;
    Py_INCREF(result);
done:
    release(b, 2);
    return result;
}

static PyObject *py_layer_norm(PyObject *self, PyObject *args) {
    PyObject *xo, *wo, *bo, *oo;
    double eps;
    if (!PyArg_ParseTuple(args, "OOOdO", &xo, &wo, &bo, &eps, &oo)) return NULL;
    opt_buf b[4];
    memset(b, 0, sizeof(b));
    PyObject *result = NULL;
    if (take(xo, &b[0], 2, 4, 'f', 0, 0, "layer_norm: x") || take(wo, &b[1], 1, 4, 'f', 0, 1, "layer_norm: weight") ||
        take(bo, &b[2], 1, 4, 'f', 0, 1, "layer_norm: bias") || take(oo, &b[3], 2, 4, 'f', 1, 0, "layer_norm: out"))
        goto done;
    const Py_ssize_t rows = b[0].view.shape[0], cols = b[0].view.shape[1];
    if (!same_shape(&b[0].view, &b[3].view) || (b[1].held && b[1].view.shape[0] != cols) ||
        (b[2].held && b[2].view.shape[0] != cols) || !(eps >= 0.0)) {
        PyErr_SetString(PyExc_ValueError, "layer_norm: x and out (rows, cols), weight and bias (cols,) or None, eps >= 0");
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    fp_layer_norm((const float *)b[0].view.buf, rows, cols, b[1].held ? (const float *)b[1].view.buf : NULL,
                  b[2].held ? (const float *)b[2].view.buf : NULL, eps, (float *)b[3].view.buf);
    Py_END_ALLOW_THREADS
    result = Py_None;
    Py_INCREF(result);
done:
    release(b, 4);
    return result;
}

static PyObject *py_matmul(PyObject *self, PyObject *args) {
    PyObject *ao, *bo, *oo;
    int threads = 1;
    if (!PyArg_ParseTuple(args, "OOO|i", &ao, &bo, &oo, &threads)) return NULL;
    opt_buf b[3];
    memset(b, 0, sizeof(b));
    PyObject *result = NULL;
    if (take(ao, &b[0], 3, 4, 'f', 0, 0, "matmul: a") || take(bo, &b[1], 3, 4, 'f', 0, 0, "matmul: b") ||
        take(oo, &b[2], 3, 4, 'f', 1, 0, "matmul: out"))
        goto done;
    const Py_ssize_t *as = b[0].view.shape, *bs = b[1].view.shape, *os = b[2].view.shape;
    if (bs[0] != as[0] || bs[1] != as[2] || os[0] != as[0] || os[1] != as[1] || os[2] != bs[2]) {
        PyErr_SetString(PyExc_ValueError, "matmul: a (B, m, k), b (B, k, n), out (B, m, n)");
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    fp_matmul((const float *)b[0].view.buf, (const float *)b[1].view.buf, as[0], as[1], as[2], bs[2],
              (float *)b[2].view.buf, threads);
    Py_END_ALLOW_THREADS
    result = Py_None;
    Py_INCREF(result);
done:
    release(b, 3);
    return result;
}

static PyObject *py_softmax(PyObject *self, PyObject *args) {
    PyObject *xo, *oo;
    long long outer, red, inner;
    if (!PyArg_ParseTuple(args, "O(LLL)O", &xo, &outer, &red, &inner, &oo)) return NULL;
    opt_buf b[2];
    memset(b, 0, sizeof(b));
    PyObject *result = NULL;
    if (take(xo, &b[0], -1, 4, 'f', 0, 0, "softmax: x") || take(oo, &b[1], -1, 4, 'f', 1, 0, "softmax: out")) goto done;
    const long long n = (long long)(b[0].view.len / 4); /* outer * red * inner == n, tested without overflow */
    if (!same_shape(&b[0].view, &b[1].view) || outer < 1 || red < 1 || inner < 1 || n % outer || (n / outer) % red ||
        n / outer / red != inner) {
        PyErr_SetString(PyExc_ValueError, "softmax: x and out of one shape, (outer, red, inner) its element count");
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    fp_softmax((const float *)b[0].view.buf, outer, red, inner, (float *)b[1].view.buf);
    Py_END_ALLOW_THREADS
    result = Py_None;
    Py_INCREF(result);
done:
    release(b, 2);
    return result;
}

static PyObject *py_max_pool2d(PyObject *self, PyObject *args) {
    PyObject *xo, *oo;
    fp_pool2d p;
    int threads = 1;
    const char *isa = "auto";
    if (!PyArg_ParseTuple(args, "OO(LLLLLLLL)|is", &xo, &oo, &p.kh, &p.kw, &p.sh, &p.sw, &p.dh, &p.dw, &p.pt, &p.pl,
                          &threads, &isa))
        return NULL;
    opt_buf b[2];
    memset(b, 0, sizeof(b));
    PyObject *result = NULL;
    if (take(xo, &b[0], 4, 4, 'f', 0, 0, "max_pool2d: x") || take(oo, &b[1], 4, 4, 'f', 1, 0, "max_pool2d: out")) goto done;
    const Py_ssize_t *xs = b[0].view.shape, *os = b[1].view.shape;
    p.oh = os[2];
    p.ow = os[3];
    if (p.kh < 1 || p.kw < 1 || p.sh < 1 || p.sw < 1 || p.dh < 1 || p.dw < 1 || p.pt < 0 || p.pl < 0 || os[0] != xs[0] ||
        os[1] != xs[1] || p.oh < 1 || p.ow < 1 || (p.oh - 1) * p.sh - p.pt >= xs[2] || (p.ow - 1) * p.sw - p.pl >= xs[3]) {
        PyErr_SetString(PyExc_ValueError, "max_pool2d: x (N, C, H, W), out (N, C, OH, OW) and a window that fits");
        goto done;
    }
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = fp_max_pool2d((const float *)b[0].view.buf, xs[0] * xs[1], xs[2], xs[3], &p, (float *)b[1].view.buf, threads, isa);
    Py_END_ALLOW_THREADS
    result = kernel_result(rc, "max_pool2d: %s cannot run here", isa);
done:
    release(b, 2);
    return result;
}

static PyObject *py_im2col2d(PyObject *self, PyObject *args) {
    PyObject *xo, *oo;
    fp_pool2d p;
    long long oy0, oy1;
    int threads = 1;
    if (!PyArg_ParseTuple(args, "OO(LLLLLLLL)LLL|i", &xo, &oo, &p.kh, &p.kw, &p.sh, &p.sw, &p.dh, &p.dw, &p.pt, &p.pl,
                          &p.ow, &oy0, &oy1, &threads))
        return NULL;
    opt_buf b[2];
    memset(b, 0, sizeof(b));
    PyObject *result = NULL;
    if (take(xo, &b[0], 3, 4, 'f', 0, 0, "im2col2d: x") || take(oo, &b[1], 2, 4, 'f', 1, 0, "im2col2d: cols")) goto done;
    const Py_ssize_t *xs = b[0].view.shape, *cs = b[1].view.shape;
    p.oh = oy1;
    if (p.kh < 1 || p.kw < 1 || p.sh < 1 || p.sw < 1 || p.dh < 1 || p.dw < 1 || p.pt < 0 || p.pl < 0 || p.ow < 1 ||
        oy0 < 0 || oy1 <= oy0 || cs[0] != xs[0] * p.kh * p.kw || cs[1] != (oy1 - oy0) * p.ow) {
        PyErr_SetString(PyExc_ValueError, "im2col2d: x (C, H, W), cols (C * kh * kw, (oy1 - oy0) * ow), 0 <= oy0 < oy1");
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    fp_im2col2d((const float *)b[0].view.buf, xs[0], xs[1], xs[2], &p, oy0, oy1, (float *)b[1].view.buf, threads);
    Py_END_ALLOW_THREADS
    result = Py_None;
    Py_INCREF(result);
done:
    release(b, 2);
    return result;
}

static PyObject *py_conv2d_direct(PyObject *self, PyObject *args) {
    PyObject *xo, *wo, *bo, *oo, *scale_o = Py_None, *shift_o = Py_None, *clamp_o = Py_None, *pool_o = Py_None;
    fp_pool2d p, pool;
    int threads = 1;
    long long conv_oh = 0, conv_ow = 0;
    if (!PyArg_ParseTuple(args, "OOOO(LLLLLLLL)|i(OOOO)", &xo, &wo, &bo, &oo, &p.kh, &p.kw, &p.sh, &p.sw, &p.dh, &p.dw,
                          &p.pt, &p.pl, &threads, &scale_o, &shift_o, &clamp_o, &pool_o))
        return NULL;
    fp_conv_post post = {NULL, NULL, 0, 0.0f, 0.0f, NULL};
    if (clamp_o != Py_None) {
        if (!PyArg_ParseTuple(clamp_o, "ff", &post.lo, &post.hi)) return NULL;
        if (!(post.lo <= post.hi)) {
            PyErr_SetString(PyExc_ValueError, "conv2d_direct: clamp must be (lo, hi) with lo <= hi");
            return NULL;
        }
        post.has_clamp = 1;
    }
    if (pool_o != Py_None) {
        if (!PyArg_ParseTuple(pool_o, "(LLLLLLLL)LL", &pool.kh, &pool.kw, &pool.sh, &pool.sw, &pool.dh, &pool.dw, &pool.pt,
                              &pool.pl, &conv_oh, &conv_ow))
            return NULL;
        post.pool = &pool;
    }
    opt_buf b[6];
    memset(b, 0, sizeof(b));
    PyObject *result = NULL;
    if (take(xo, &b[0], 3, 4, 'f', 0, 0, "conv2d_direct: x") || take(wo, &b[1], 5, 4, 'f', 0, 0, "conv2d_direct: weights") ||
        take(bo, &b[2], 1, 4, 'f', 0, 1, "conv2d_direct: bias") || take(oo, &b[3], 3, 4, 'f', 1, 0, "conv2d_direct: out") ||
        take(scale_o, &b[4], 1, 4, 'f', 0, 1, "conv2d_direct: post scale") ||
        take(shift_o, &b[5], 1, 4, 'f', 0, 1, "conv2d_direct: post shift"))
        goto done;
    const Py_ssize_t *xs = b[0].view.shape, *ws = b[1].view.shape, *os = b[3].view.shape;
    const int64_t cout = os[0];
    p.oh = post.pool ? conv_oh : os[1];
    p.ow = post.pool ? conv_ow : os[2];
    if (p.kh < 1 || p.kw < 1 || p.sh < 1 || p.sw < 1 || p.dh < 1 || p.dw < 1 || p.pt < 0 || p.pl < 0 || p.oh < 1 ||
        p.ow < 1 || ws[0] != (cout + 7) / 8 || ws[1] != xs[0] || ws[2] != p.kh || ws[3] != p.kw || ws[4] != 8 ||
        (b[2].held && b[2].view.shape[0] != cout) || b[4].held != b[5].held ||
        (b[4].held && (b[4].view.shape[0] != cout || b[5].view.shape[0] != cout))) {
        PyErr_SetString(PyExc_ValueError, "conv2d_direct: x (C, H, W), weights (ceil(cout/8), C, kh, kw, 8), "
                                          "bias (cout,) or None, out (cout, OH, OW), post scale and shift (cout,) together");
        goto done;
    }
    if (post.pool) {
        pool.oh = os[1];
        pool.ow = os[2];
        if (pool.kh < 1 || pool.kw < 1 || pool.sh < 1 || pool.sw < 1 || pool.dh < 1 || pool.dw < 1 || pool.pt < 0 ||
            pool.pl < 0 || pool.oh < 1 || pool.ow < 1 || (pool.oh - 1) * pool.sh - pool.pt >= p.oh ||
            (pool.ow - 1) * pool.sw - pool.pl >= p.ow) {
            PyErr_SetString(PyExc_ValueError, "conv2d_direct: the fused pool's windows must fit the conv's (oh, ow) output");
            goto done;
        }
    }
    post.scale = b[4].held ? (const float *)b[4].view.buf : NULL;
    post.shift = b[5].held ? (const float *)b[5].view.buf : NULL;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = fp_conv2d_direct((const float *)b[0].view.buf, xs[0], xs[1], xs[2], (const float *)b[1].view.buf,
                          b[2].held ? (const float *)b[2].view.buf : NULL, cout, &p, &post, (float *)b[3].view.buf, threads);
    Py_END_ALLOW_THREADS
    result = kernel_result(rc, "conv2d_direct: not available on this CPU (needs AVX-512)", NULL);
done:
    release(b, 6);
    return result;
}

static PyObject *py_fp_gemm(PyObject *self, PyObject *args) {
    PyObject *wo, *xo, *bo, *yo;
    int threads = 1;
    if (!PyArg_ParseTuple(args, "OOOO|i", &wo, &xo, &bo, &yo, &threads)) return NULL;
    opt_buf b[4];
    memset(b, 0, sizeof(b));
    PyObject *result = NULL;
    if (take(wo, &b[0], 3, 4, 'f', 0, 0, "fp_gemm: weights") || take(xo, &b[1], 2, 4, 'f', 0, 0, "fp_gemm: x") ||
        take(bo, &b[2], 1, 4, 'f', 0, 1, "fp_gemm: bias") || take(yo, &b[3], 2, 4, 'f', 1, 0, "fp_gemm: out"))
        goto done;
    const Py_ssize_t *ws = b[0].view.shape, *xs = b[1].view.shape, *ys = b[3].view.shape;
    const int64_t M = ys[0], K = xs[0], N = xs[1];
    if (ws[0] != (M + 7) / 8 || ws[1] != K || ws[2] != 8 || ys[1] != N || M < 1 || K < 1 || N < 1 ||
        (b[2].held && b[2].view.shape[0] != M)) {
        PyErr_SetString(PyExc_ValueError, "fp_gemm: weights (ceil(M/8), K, 8), x (K, N), bias (M,) or None, out (M, N)");
        goto done;
    }
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = fp_gemm((const float *)b[0].view.buf, (const float *)b[1].view.buf,
                 b[2].held ? (const float *)b[2].view.buf : NULL, M, K, N, (float *)b[3].view.buf, threads);
    Py_END_ALLOW_THREADS
    result = kernel_result(rc, "fp_gemm: not available on this CPU (needs AVX-512 or AArch64)", NULL);
done:
    release(b, 4);
    return result;
}


static PyObject *py_linear(PyObject *self, PyObject *args) {
    PyObject *xo, *wo, *bo, *yo;
    int threads = 1;
    if (!PyArg_ParseTuple(args, "OOOO|i", &xo, &wo, &bo, &yo, &threads)) return NULL;
    opt_buf b[4];
    memset(b, 0, sizeof(b));
    PyObject *result = NULL;
    if (take(xo, &b[0], 2, 4, 'f', 0, 0, "linear: x") || take(wo, &b[1], 2, 4, 'f', 0, 0, "linear: weight") ||
        take(bo, &b[2], 1, 4, 'f', 0, 1, "linear: bias") || take(yo, &b[3], 2, 4, 'f', 1, 0, "linear: out"))
        goto done;
    const Py_ssize_t rows = b[0].view.shape[0], K = b[0].view.shape[1], M = b[1].view.shape[0];
    if (b[1].view.shape[1] != K || b[3].view.shape[0] != rows || b[3].view.shape[1] != M ||
        (b[2].held && b[2].view.shape[0] != M)) {
        PyErr_SetString(PyExc_ValueError, "linear: x (rows, K), weight (M, K), bias (M,) or None, out (rows, M)");
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    fp_linear((const float *)b[0].view.buf, (const float *)b[1].view.buf, b[2].held ? (const float *)b[2].view.buf : NULL,
              rows, K, M, (float *)b[3].view.buf, threads);
    Py_END_ALLOW_THREADS
    result = Py_None;
    Py_INCREF(result);
done:
    release(b, 4);
    return result;
}


static PyObject *py_conv1d(PyObject *self, PyObject *args) {
    PyObject *xo, *wo, *bo, *yo;
    long long groups, stride, dilation, pad, pad_r;
    int threads = 1;
    if (!PyArg_ParseTuple(args, "OOOO(LLLLL)|i", &xo, &wo, &bo, &yo, &groups, &stride, &dilation, &pad, &pad_r, &threads))
        return NULL;
    opt_buf b[4];
    memset(b, 0, sizeof(b));
    PyObject *result = NULL;
    if (take(xo, &b[0], 3, 4, 'f', 0, 0, "conv1d: x") || take(wo, &b[1], 3, 4, 'f', 0, 0, "conv1d: weight") ||
        take(bo, &b[2], 1, 4, 'f', 0, 1, "conv1d: bias") || take(yo, &b[3], 3, 4, 'f', 1, 0, "conv1d: out"))
        goto done;
    const Py_ssize_t *xs = b[0].view.shape, *ws = b[1].view.shape, *ys = b[3].view.shape;
    const int64_t n = xs[0], C = xs[1], L = xs[2], cout = ws[0], k = ws[2], OL = ys[2];
    if (groups < 1 || stride < 1 || dilation < 1 || pad < 0 || pad_r < 0 || C % groups || cout % groups ||
        ws[1] != C / groups || ys[0] != n || ys[1] != cout || k < 1 || L + pad + pad_r < dilation * (k - 1) + 1 ||
        OL != (L + pad + pad_r - dilation * (k - 1) - 1) / stride + 1 ||
        (b[2].held && b[2].view.shape[0] != cout)) {
        PyErr_SetString(PyExc_ValueError, "conv1d: x (N, C, L), weight (cout, C / groups, k), bias (cout,) or None, "
                                          "out (N, cout, OL) with OL the padded output length");
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    for (int64_t i = 0; i < n; i++)
        fp_conv1d((const float *)b[0].view.buf + i * C * L, C, L, (const float *)b[1].view.buf,
                  b[2].held ? (const float *)b[2].view.buf : NULL, cout, groups, k, stride, dilation, pad, OL,
                  (float *)b[3].view.buf + i * cout * OL, threads);
    Py_END_ALLOW_THREADS
    result = Py_None;
    Py_INCREF(result);
done:
    release(b, 4);
    return result;
}

static PyObject *py_fp_gemm_supported(PyObject *self, PyObject *noargs) {
    return PyBool_FromLong(fp_gemm_supported());
}

static PyObject *py_conv2d_direct_supported(PyObject *self, PyObject *noargs) {
    return PyBool_FromLong(fp_conv2d_direct_supported());
}

static PyObject *py_fma_ceiling(PyObject *self, PyObject *args) {
    long long reps = 1000;
    if (!PyArg_ParseTuple(args, "|L", &reps)) return NULL;
    if (reps < 1) {
        PyErr_SetString(PyExc_ValueError, "fma_ceiling: reps must be >= 1");
        return NULL;
    }
    int64_t done;
    Py_BEGIN_ALLOW_THREADS
    done = fp_fma_ceiling(reps);
    Py_END_ALLOW_THREADS
    return PyLong_FromLongLong(done);
}

static PyObject *py_bconv_ceiling(PyObject *self, PyObject *args) {
    const char *isa = "auto";
    long long reps = 1000;
    if (!PyArg_ParseTuple(args, "|sL", &isa, &reps)) return NULL;
    if (reps < 1) {
        PyErr_SetString(PyExc_ValueError, "bconv_ceiling: reps must be >= 1");
        return NULL;
    }
    int64_t pairs;
    Py_BEGIN_ALLOW_THREADS
    pairs = bconv_ceiling(isa, reps);
    Py_END_ALLOW_THREADS
    if (pairs == -1) {
        PyErr_Format(PyExc_ValueError, "bconv_ceiling: kernel %s cannot run on this CPU", isa);
        return NULL;
    }
    if (pairs < 0) return PyErr_NoMemory();
    return PyLong_FromLongLong(pairs);
}


/* -- graph.c: the whole-graph executor --------------------------------------------------- */
typedef struct {
    graph_plan *plan;
    Py_buffer *views; /* the tensors it reads, held for as long as the plan lives */
    Py_ssize_t n_views;
    int busy;         /* one arena: a plan runs one call at a time */
} plan_capsule;

static void plan_capsule_free(PyObject *cap) {
    plan_capsule *pc = PyCapsule_GetPointer(cap, "biagent.graph_plan");
    if (!pc) return;
    graph_free(pc->plan);
    for (Py_ssize_t i = 0; i < pc->n_views; i++) PyBuffer_Release(&pc->views[i]);
    PyMem_Free(pc->views);
    PyMem_Free(pc);
}

static int sizes_from(PyObject *seq, int64_t **out, Py_ssize_t *n, const char *what) {
    PyObject *fast = PySequence_Fast(seq, what);
    if (!fast) return -1;
    *n = PySequence_Fast_GET_SIZE(fast);
    *out = PyMem_Malloc(sizeof(int64_t) * (size_t)(*n ? *n : 1));
    if (!*out) { Py_DECREF(fast); PyErr_NoMemory(); return -1; }
    for (Py_ssize_t i = 0; i < *n; i++) {
        (*out)[i] = PyLong_AsLongLong(PySequence_Fast_GET_ITEM(fast, i));
        if ((*out)[i] == -1 && PyErr_Occurred()) { Py_DECREF(fast); return -1; }
    }
    Py_DECREF(fast);
    return 0;
}

static PyObject *py_graph_build(PyObject *self, PyObject *args) {
    PyObject *steps_o, *floats_o, *tensors_o, *in_o, *out_o;
    long long arena = 0;
    if (!PyArg_ParseTuple(args, "OOO!LOO", &steps_o, &floats_o, &PyTuple_Type, &tensors_o, &arena, &in_o, &out_o))
        return NULL;
    opt_buf b[2];
    memset(b, 0, sizeof(b));
    int64_t *in_bytes = NULL, *out_bytes = NULL;
    Py_ssize_t n_in = 0, n_out = 0;
    graph_tensor *tensors = NULL;
    plan_capsule *pc = NULL;
    PyObject *result = NULL;
    if (take(steps_o, &b[0], 2, 8, 'i', 0, 0, "graph_build: steps") ||
        take(floats_o, &b[1], 2, 8, 'd', 0, 0, "graph_build: floats"))
        goto done;
    const Py_ssize_t S = b[0].view.shape[0];
    if (b[0].view.shape[1] != G_SLOTS || b[1].view.shape[0] != S || b[1].view.shape[1] != G_FLOATS) {
        PyErr_Format(PyExc_ValueError, "graph_build: steps must be (S, %d) int64 and floats (S, %d) float64", G_SLOTS,
                     G_FLOATS);
        goto done;
    }
    if (sizes_from(in_o, &in_bytes, &n_in, "graph_build: input sizes") ||
        sizes_from(out_o, &out_bytes, &n_out, "graph_build: output sizes"))
        goto done;
    const Py_ssize_t T = PyTuple_GET_SIZE(tensors_o);
    pc = PyMem_Calloc(1, sizeof(*pc));
    tensors = PyMem_Calloc((size_t)(T ? T : 1), sizeof(graph_tensor));
    if (pc) pc->views = PyMem_Calloc((size_t)(T ? T : 1), sizeof(Py_buffer));
    if (!pc || !tensors || !pc->views) { PyErr_NoMemory(); goto done; }
    for (Py_ssize_t i = 0; i < T; i++) {
        if (PyObject_GetBuffer(PyTuple_GET_ITEM(tensors_o, i), &pc->views[i], PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) != 0) {
            PyErr_Clear();
            PyErr_Format(PyExc_ValueError, "graph_build: tensor %zd must be a C-contiguous buffer", i);
            goto done;
        }
        pc->n_views = i + 1;
        tensors[i].data = pc->views[i].buf;
        tensors[i].itemsize = (int)pc->views[i].itemsize;
        tensors[i].count = pc->views[i].itemsize ? pc->views[i].len / pc->views[i].itemsize : 0;
    }
    char err[256] = "";
    pc->plan = graph_build((const int64_t *)b[0].view.buf, (const double *)b[1].view.buf, S, tensors, T, arena, in_bytes,
                           n_in, out_bytes, n_out, err, sizeof(err));
    if (!pc->plan) {
        PyErr_Format(PyExc_ValueError, "graph_build: %s", err);
        goto done;
    }
    result = PyCapsule_New(pc, "biagent.graph_plan", plan_capsule_free);
    if (result) pc = NULL;
done:
    if (pc) {
        graph_free(pc->plan);
        for (Py_ssize_t i = 0; i < pc->n_views; i++) PyBuffer_Release(&pc->views[i]);
        PyMem_Free(pc->views);
        PyMem_Free(pc);
    }
    PyMem_Free(tensors);
    PyMem_Free(in_bytes);
    PyMem_Free(out_bytes);
    release(b, 2);
    return result;
}

static PyObject *py_graph_run(PyObject *self, PyObject *args) {
    PyObject *cap, *ins, *outs;
    const char *isa = "auto";
    int threads = 1;
    if (!PyArg_ParseTuple(args, "OO!O!si", &cap, &PyTuple_Type, &ins, &PyTuple_Type, &outs, &isa, &threads)) return NULL;
    plan_capsule *pc = PyCapsule_GetPointer(cap, "biagent.graph_plan");
    if (!pc) return NULL;
    const Py_ssize_t ni = PyTuple_GET_SIZE(ins), no = PyTuple_GET_SIZE(outs);
    if (graph_input_bytes(pc->plan, ni) != -1 || graph_input_bytes(pc->plan, ni - 1) < 0 ||
        graph_output_bytes(pc->plan, no) != -1 || graph_output_bytes(pc->plan, no - 1) < 0) {
        PyErr_SetString(PyExc_ValueError, "graph_run: wrong number of inputs or outputs");
        return NULL;
    }
    if (pc->busy) {
        PyErr_SetString(PyExc_RuntimeError, "graph_run: this plan is already running (one call at a time)");
        return NULL;
    }
    Py_buffer *views = PyMem_Calloc((size_t)(ni + no), sizeof(Py_buffer));
    const void **in_ptrs = PyMem_Calloc((size_t)ni, sizeof(void *));
    void **out_ptrs = PyMem_Calloc((size_t)no, sizeof(void *));
    Py_ssize_t held = 0;
    PyObject *result = NULL;
    if (!views || !in_ptrs || !out_ptrs) { PyErr_NoMemory(); goto done; }
    for (Py_ssize_t i = 0; i < ni + no; i++) {
        const int is_out = i >= ni;
        PyObject *o = is_out ? PyTuple_GET_ITEM(outs, i - ni) : PyTuple_GET_ITEM(ins, i);
        if (PyObject_GetBuffer(o, &views[i], PyBUF_C_CONTIGUOUS | (is_out ? PyBUF_WRITABLE : 0)) != 0) {
            PyErr_Clear();
            PyErr_Format(PyExc_ValueError, "graph_run: %s %zd must be a C-contiguous%s buffer", is_out ? "output" : "input",
                         is_out ? i - ni : i, is_out ? " writable" : "");
            goto done;
        }
        held = i + 1;
        const int64_t want = is_out ? graph_output_bytes(pc->plan, i - ni) : graph_input_bytes(pc->plan, i);
        if (views[i].len != want) {
            PyErr_Format(PyExc_ValueError, "graph_run: %s %zd has %zd bytes, the plan needs %lld", is_out ? "output" : "input",
                         is_out ? i - ni : i, views[i].len, (long long)want);
            goto done;
        }
        if (is_out) out_ptrs[i - ni] = views[i].buf; else in_ptrs[i] = views[i].buf;
    }
    int code = 0;
    int64_t failed;
    pc->busy = 1;
    Py_BEGIN_ALLOW_THREADS
    failed = graph_run(pc->plan, in_ptrs, out_ptrs, isa, threads, &code);
    Py_END_ALLOW_THREADS
    pc->busy = 0;
    if (failed) {
        if (code == -2) PyErr_NoMemory();
        else PyErr_Format(PyExc_ValueError, "graph_run: step %lld failed (%s)", (long long)(failed - 1),
                          code == -1   ? "its kernel cannot run on this CPU"
                          : code == -4 ? "a token id outside its embedding table"
                                       : "kernel error");
        goto done;
    }
    result = Py_None;
    Py_INCREF(result);
done:
    for (Py_ssize_t i = 0; i < held; i++) PyBuffer_Release(&views[i]);
    PyMem_Free(views);
    PyMem_Free(in_ptrs);
    PyMem_Free(out_ptrs);
    return result;
}

static PyObject *py_graph_steps(PyObject *self, PyObject *cap) {
    plan_capsule *pc = PyCapsule_GetPointer(cap, "biagent.graph_plan");
    if (!pc) return NULL;
    return PyLong_FromLongLong(graph_steps(pc->plan));
}

static PyObject *kernel_info(PyObject *self, PyObject *noargs) {
    const char *name = xnor_gemm_popcount();
#ifdef _OPENMP
    return Py_BuildValue("{s:s,s:s,s:O}", "popcount", name, "bconv", bconv_isa("auto"), "openmp", Py_True);
#else
    return Py_BuildValue("{s:s,s:s,s:O}", "popcount", name, "bconv", bconv_isa("auto"), "openmp", Py_False);
#endif
}

static PyMethodDef methods[] = {
    {"xnor_gemm", py_xnor_gemm, METH_VARARGS, "xnor_gemm(acts, weights, out, k, threads=1)"},
    {"pack_patches2d", py_pack_patches2d, METH_VARARGS, "Bit-pack the im2col patches of a 2-D conv."},
    {"bconv2d", py_bconv2d, METH_VARARGS,
     "bconv2d(x, weights, out, (kh, kw, sh, sw, dh, dw, pt, pl, pb, pr, pad_ones), shift, corr_cls, corr_table, alpha, "
     "channel_scale, bias, beta, isa, threads, [(post_scale, post_shift, residual, (lo, hi)[, bits, planes_in])]): "
     "the post-ops are the fused next nodes (channel_affine, add, hardtanh), each optional (None); bits = (planes, "
     "next_shift, pt, pl, pad_ones) writes the next binary conv's packed input instead of out; planes_in = (planes, C, "
     "H, W) reads this conv's input already packed (x None)"},
    {"bconv_isa", py_bconv_isa, METH_VARARGS, "The popcount kernel an ISA name resolves to here (None: cannot run)."},
    {"channel_fma", py_channel_fma, METH_VARARGS,
     "channel_fma(x, scale, shift, out, clamp=None, threads=1): out = fmaf(x, scale[c], shift[c]), clamped to (lo, hi)"},
    {"clamp", py_clamp, METH_VARARGS, "clamp(x, lo, hi, out, threads=1): np.clip with NaN kept"},
    {"unary", py_unary, METH_VARARGS,
     "unary(x, kind, value, out, threads=1): kind 0 GELU, 1 GELU (tanh), 2 tanh, 3..8 x+v, x-v, x*v, x/v, v-x, v/x"},
    {"layer_norm", py_layer_norm, METH_VARARGS, "layer_norm(x (rows, cols), weight, bias, eps, out): over each row"},
    {"matmul", py_matmul, METH_VARARGS, "matmul(a (B, m, k), b (B, k, n), out (B, m, n), threads=1): sums over k in order"},
    {"softmax", py_softmax, METH_VARARGS, "softmax(x, (outer, red, inner), out): over the middle axis"},
    {"max_pool2d", py_max_pool2d, METH_VARARGS, "max_pool2d(x, out, (kh, kw, sh, sw, dh, dw, pt, pl), threads=1, isa='auto')"},
    {"im2col2d", py_im2col2d, METH_VARARGS,
     "im2col2d(x, cols, (kh, kw, sh, sw, dh, dw, pt, pl), ow, oy0, oy1, threads=1): zero-padded conv columns"},
    {"conv2d_direct", py_conv2d_direct, METH_VARARGS,
     "conv2d_direct(x, weights, bias, out, (kh, kw, sh, sw, dh, dw, pt, pl), threads=1, [(scale, shift, (lo, hi), "
     "((kh, kw, sh, sw, dh, dw, pt, pl), conv_oh, conv_ow))]): few-channel stem conv; the post-ops are the fused next "
     "nodes (channel_affine, hardtanh, max_pool), each optional (None)"},
    {"linear", py_linear, METH_VARARGS, "linear(x, weight, bias, out, threads=1): x @ weight.T + bias, fixed summation order"},
    {"conv1d", py_conv1d, METH_VARARGS,
     "conv1d(x, weight, bias, out, (groups, stride, dilation, pad_l, pad_r), threads=1): a zero-padded FP conv1d"},
    {"conv2d_direct_supported", py_conv2d_direct_supported, METH_NOARGS, "Whether conv2d_direct runs here (AVX-512)."},
    {"fp_gemm_supported", py_fp_gemm_supported, METH_NOARGS, "Whether fp_gemm runs here (AVX-512, or AArch64)."},
    {"fp_gemm", py_fp_gemm, METH_VARARGS,
     "fp_gemm(weights (ceil(M/8), K, 8), x (K, N), bias or None, out (M, N), threads=1): out = W x + bias on OpenMP threads"},
    {"fma_ceiling", py_fma_ceiling, METH_VARARGS,
     "fma_ceiling(reps=1000): 192 independent fmaf chains, reps rounds; returns the multiply-adds done (time it)."},
    {"bconv_ceiling", py_bconv_ceiling, METH_VARARGS,
     "bconv_ceiling(isa='auto', reps=1000): run the micro-kernel on an L1 tile; returns word pairs done (time it)."},
    {"graph_build", py_graph_build, METH_VARARGS,
     "graph_build(steps (S, 64) int64, floats (S, 4) float64, tensors tuple, arena_bytes, input_bytes, output_bytes) -> plan"},
    {"graph_run", py_graph_run, METH_VARARGS, "graph_run(plan, inputs tuple, outputs tuple, isa, threads): every step, one call"},
    {"graph_steps", py_graph_steps, METH_O, "The number of steps of a plan."},
    {"kernel_info", kernel_info, METH_NOARGS, "Which popcount and threading this build uses."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_xnor", "XNOR-popcount kernels", -1, methods};

PyMODINIT_FUNC PyInit__xnor(void) { return PyModule_Create(&module); }
