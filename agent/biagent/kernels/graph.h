/* The whole-graph executor of the custom runtime (see graph.c): a planned graph, run in one call. */
#ifndef BIAGENT_GRAPH_H
#define BIAGENT_GRAPH_H
#include <stddef.h>
#include <stdint.h>

/* A step is G_SLOTS int64 slots and G_FLOATS doubles (the planner in
 * biagent/runtimes/custom/executor.py writes them; the slot names below are its contract):
 *   [0] op, [1..8] four buffer references (space, byte offset): out, in0, in1, in2,
 *   [9..20] twelve tensor indices (-1: none), [21..] the op's integer parameters. */
enum { G_SLOTS = 64, G_FLOATS = 4, G_REFS = 4, G_TENSORS = 12, G_P = 21 };

/* Buffer spaces: the arena (planned values), the graph's inputs, its outputs. */
enum { G_NONE = -1, G_ARENA = 0, G_INPUT = 1, G_OUTPUT = 2 };

enum {
    G_BCONV = 1,     /* the channel-packed binary conv (bconv.c) with its epilogue */
    G_CONV = 2,      /* a full-precision 2-D conv: direct (stem) or im2col + GEMM */
    G_AFFINE = 3,    /* fmaf(x, scale[c], shift[c]), optionally clamped */
    G_CLAMP = 4,     /* min(max(x, lo), hi), NaN kept (hardtanh; relu with hi = inf) */
    G_MAXPOOL = 5,   /* 2-D max pool (fpops.c) */
    G_AVGPOOL = 6,   /* 2-D average pool: taps summed in row-major order, one division */
    G_REDUCE = 7,    /* mean or max over a middle block of axes: (outer, red, inner) */
    G_ADD = 8,       /* a + b, same shapes */
    G_COPY = 9,      /* strided block copy (concat, flatten of a packed view) */
    G_LINEAR = 10,   /* x (rows, K) @ W.T (M, K) + bias */
    G_PRELU = 11,    /* x > 0 ? x : w * x, w per channel or one */
    G_GAIN = 12,     /* y *= gain (over the trailing axes), then + bias per channel (XNOR++) */
    G_BETA = 13,     /* XNOR's beta: per-sample mean |x| (numpy's pairwise float32 sum) */
    G_TRANSPOSE = 14, /* (rows, cols) -> (cols, rows) */
    G_CONV1D = 15,    /* a full-precision 1-D conv, any groups (fpops.c: fp_conv1d) */
    G_BLINEAR = 16,   /* a binary linear on the popcount GEMM (xnor_gemm.c) with XNOR's beta and a gain */
    G_STRIDED = 17,   /* a strided gather of 4-byte elements into a contiguous (up to 6-D) block: transpose,
                         expand, slice, select, or a constant (tensor 0 when there is no input buffer) broadcast */
    G_MATMUL = 18,    /* batched a (m, k) @ b (k, n) (fpops.c: fp_matmul) */
    G_LAYERNORM = 19, /* over rows (fpops.c: fp_layer_norm) */
    G_SOFTMAX = 20,   /* over the middle axis of (outer, red, inner) (fpops.c: fp_softmax) */
    G_UNARY = 21,     /* GELU, tanh, or x with a constant (fpops.c: fp_unary) */
    G_GATHER = 22     /* embedding rows for int64 ids; an id outside the table fails the run (code -4) */
};
enum { G_STRIDED_DIMS = 6 };

/* The tensors a plan reads: pointer, element count and element size, as checked by the caller. */
typedef struct {
    const void *data;
    int64_t count;
    int itemsize;
} graph_tensor;

typedef struct graph_plan graph_plan;

/* Checks every step against the buffer sizes and tensors it will touch; NULL and a message in
 * `err` (size errlen) when any step could read or write out of bounds, or names an unknown op. */
graph_plan *graph_build(const int64_t *steps, const double *floats, int64_t n_steps, const graph_tensor *tensors,
                        int64_t n_tensors, int64_t arena_bytes, const int64_t *input_bytes, int64_t n_inputs,
                        const int64_t *output_bytes, int64_t n_outputs, char *err, size_t errlen);
void graph_free(graph_plan *plan);
int64_t graph_input_bytes(const graph_plan *plan, int64_t i);
int64_t graph_output_bytes(const graph_plan *plan, int64_t i);
int64_t graph_steps(const graph_plan *plan);

/* Runs every step. inputs/outputs hold the byte sizes graph_build was given (the caller checks).
 * Returns 0, or the failing step's index + 1 with its kernel's code in *code (-1: this CPU lacks the
 * ISA, -2: out of memory, -4: a token id outside its embedding table). */
int64_t graph_run(graph_plan *plan, const void *const *inputs, void *const *outputs, const char *isa, int threads,
                  int *code);
#endif
