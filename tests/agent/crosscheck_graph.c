/* Cross-check for tests/agent/test_cross_arch.py: runs one whole-graph executor plan (kernels/graph.c)
 * read from a file the test writes, and prints the output's bytes as hex, so that the x86 build,
 * the AArch64 build under qemu and the Python extension can be compared bit for bit.
 * File: int64 n_steps, n_tensors, arena_bytes, n_inputs, n_outputs; steps (n_steps x G_SLOTS
 * int64); floats (n_steps x G_FLOATS double); per tensor: int64 itemsize, count, then the bytes;
 * per input: int64 bytes, then the bytes; per output: int64 bytes. All little-endian. */
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>
#include "graph.h"

static void *read_exact(FILE *f, size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p || fread(p, 1, n, f) != n) { fprintf(stderr, "short read\n"); exit(2); }
    return p;
}
static int64_t read_i64(FILE *f) { int64_t v; if (fread(&v, 8, 1, f) != 1) exit(2); return v; }

int main(int argc, char **argv) {
    if (argc != 2) return 2;
    FILE *f = fopen(argv[1], "rb");
    if (!f) return 2;
    const int64_t n_steps = read_i64(f), n_tensors = read_i64(f), arena = read_i64(f);
    const int64_t n_in = read_i64(f), n_out = read_i64(f);
    int64_t *steps = read_exact(f, (size_t)(n_steps * G_SLOTS * 8));
    double *floats = read_exact(f, (size_t)(n_steps * G_FLOATS * 8));
    graph_tensor *tensors = calloc((size_t)(n_tensors ? n_tensors : 1), sizeof(graph_tensor));
    for (int64_t i = 0; i < n_tensors; i++) {
        tensors[i].itemsize = (int)read_i64(f);
        tensors[i].count = read_i64(f);
        tensors[i].data = read_exact(f, (size_t)(tensors[i].itemsize * tensors[i].count));
    }
    int64_t *in_bytes = calloc((size_t)n_in, 8), *out_bytes = calloc((size_t)n_out, 8);
    const void **inputs = calloc((size_t)n_in, sizeof(void *));
    void **outputs = calloc((size_t)n_out, sizeof(void *));
    for (int64_t i = 0; i < n_in; i++) {
        in_bytes[i] = read_i64(f);
        inputs[i] = read_exact(f, (size_t)in_bytes[i]);
    }
    for (int64_t i = 0; i < n_out; i++) {
        out_bytes[i] = read_i64(f);
        outputs[i] = calloc((size_t)out_bytes[i], 1);
    }
    char err[512];
    graph_plan *plan = graph_build(steps, floats, n_steps, tensors, n_tensors, arena, in_bytes, n_in, out_bytes, n_out,
                                   err, sizeof(err));
    if (!plan) { printf("build failed: %s\n", err); return 1; }
    int code = 0;
    const int64_t failed = graph_run(plan, inputs, outputs, "auto", 2, &code);
    if (failed) { printf("run failed at step %lld (%d)\n", (long long)(failed - 1), code); return 1; }
    for (int64_t i = 0; i < n_out; i++) {
        const unsigned char *b = outputs[i];
        for (int64_t k = 0; k < out_bytes[i]; k++) printf("%02x", b[k]);
        printf("\n");
    }
    graph_free(plan);
    return 0;
}
