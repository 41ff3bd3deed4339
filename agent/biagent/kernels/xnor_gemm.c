/*
 * XNOR-popcount GEMM for the custom runtime: out[r][o] = K - 2 * popcount(acts[r] ^ w[o]).
 *
 * acts: rows x W little-endian uint64 words, w: cout x W (the layout of
 * bimodels/export/custom.py: bit 1 = -1, LSB first, zero tail bits), out: rows x cout int32.
 * A 2x4 register tile keeps 8 accumulators live; the popcount is the CPU's instruction
 * where it has one (x86 POPCNT chosen at run time, AArch64 CNT always), a portable
 * bit-twiddling version elsewhere. Rows are split across OpenMP threads when built with it.
 * Exactness: integer arithmetic only; the Python reference path checks it bit for bit.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define TILE_BODY(POP)                                                                   \
    for (Py_ssize_t r = r0; r < r1; r += 2) {                                            \
        const uint64_t *a0 = acts + r * W;                                               \
        const uint64_t *a1 = (r + 1 < r1) ? a0 + W : a0;                                 \
        Py_ssize_t o = 0;                                                                \
        for (; o + 4 <= cout; o += 4) {                                                  \
            const uint64_t *w0 = w + o * W, *w1 = w0 + W, *w2 = w1 + W, *w3 = w2 + W;    \
            int64_t s00 = 0, s01 = 0, s02 = 0, s03 = 0, s10 = 0, s11 = 0, s12 = 0, s13 = 0; \
            for (Py_ssize_t j = 0; j < W; j++) {                                         \
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
            for (Py_ssize_t j = 0; j < W; j++) {                                         \
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

static void gemm_portable(const uint64_t *acts, const uint64_t *w, int32_t *out, Py_ssize_t r0,
                          Py_ssize_t r1, Py_ssize_t W, Py_ssize_t cout, int64_t K) {
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
                                                          Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t W,
                                                          Py_ssize_t cout, int64_t K) {
#define POP_X86(x) ((int64_t)__builtin_popcountll(x))
    TILE_BODY(POP_X86)
#undef POP_X86
}
#endif

typedef void (*gemm_fn)(const uint64_t *, const uint64_t *, int32_t *, Py_ssize_t, Py_ssize_t, Py_ssize_t,
                        Py_ssize_t, int64_t);

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

static PyObject *xnor_gemm(PyObject *self, PyObject *args) {
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
    const char *name;
    gemm_fn fn = pick(&name);
    const uint64_t *acts = (const uint64_t *)a.buf, *w = (const uint64_t *)b.buf;
    int32_t *out = (int32_t *)o.buf;
    Py_BEGIN_ALLOW_THREADS
#ifdef _OPENMP
    Py_ssize_t blocks = (rows + 63) / 64;
    #pragma omp parallel for schedule(dynamic, 1) num_threads(threads > 0 ? threads : 1)
    for (Py_ssize_t blk = 0; blk < blocks; blk++) {
        Py_ssize_t r0 = blk * 64, r1 = r0 + 64 < rows ? r0 + 64 : rows;
        fn(acts, w, out, r0, r1, W, cout, (int64_t)k);
    }
#else
    (void)threads;
    fn(acts, w, out, 0, rows, W, cout, (int64_t)k);
#endif
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
 * of bimodels/export/custom.py, without materialising the float or bool patches.
 */
static PyObject *pack_patches2d(PyObject *self, PyObject *args) {
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
    for (Py_ssize_t oy = oy0; oy < oy1; oy++) {
        for (Py_ssize_t ox = 0; ox < ow; ox++) {
            uint64_t *row = out + ((oy - oy0) * ow + ox) * W;
            uint64_t acc = 0;  /* bits gather in a register, branch-free, one store per word */
            Py_ssize_t bit = 0, word = 0;
            for (Py_ssize_t c = c0; c < c0 + cg; c++) {
                const uint8_t *plane = neg + c * Hp * Wp;
                for (Py_ssize_t ky = 0; ky < kh; ky++) {
                    const uint8_t *line = plane + (oy * sh + ky * dh) * Wp + ox * sw;
                    for (Py_ssize_t kx = 0; kx < kw; kx++) {
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

static PyObject *kernel_info(PyObject *self, PyObject *noargs) {
    const char *name;
    pick(&name);
#ifdef _OPENMP
    return Py_BuildValue("{s:s,s:O}", "popcount", name, "openmp", Py_True);
#else
    return Py_BuildValue("{s:s,s:O}", "popcount", name, "openmp", Py_False);
#endif
}

static PyMethodDef methods[] = {
    {"xnor_gemm", xnor_gemm, METH_VARARGS, "xnor_gemm(acts, weights, out, k, threads=1)"},
    {"pack_patches2d", pack_patches2d, METH_VARARGS, "Bit-pack the im2col patches of a 2-D conv."},
    {"kernel_info", kernel_info, METH_NOARGS, "Which popcount and threading this build uses."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_xnor", "XNOR-popcount kernels", -1, methods};

PyMODINIT_FUNC PyInit__xnor(void) { return PyModule_Create(&module); }
