/* Cross-check for tests/agent/test_cross_arch.py: bconv2d on pseudo-random data with every ISA this
 * build and CPU have; prints one checksum line per ISA (they must agree, here and on AArch64). */
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>
#include "bconv.h"
static uint64_t s = 88172645463325252ULL;
static uint64_t rnd(void) { s ^= s << 13; s ^= s >> 7; s ^= s << 17; return s; }
int main(void) {
    const int64_t C = 70, H = 13, W = 11, cout = 19;
    bconv_shape sh = {C, H, W, cout, 3, 3, 2, 1, 1, 2, 1, 2, 1, 2, 0};
    int64_t OH = bconv_out_h(&sh), OW = bconv_out_w(&sh), Wc = (C + 63) / 64, KW = 9 * Wc;
    float *x = malloc(sizeof(float) * 2 * C * H * W);
    for (int64_t i = 0; i < 2 * C * H * W; i++) x[i] = (float)((int64_t)(rnd() % 2001) - 1000) / 100.0f;
    uint64_t *B = calloc((cout + 7) / 8 * KW * 8, 8);
    for (int64_t o = 0; o < cout; o++)
        for (int64_t j = 0; j < KW; j++) {
            uint64_t w = rnd();
            if ((j % Wc) == Wc - 1 && C % 64) w &= (1ULL << (C % 64)) - 1;
            B[(o / 8) * KW * 8 + j * 8 + o % 8] = w;
        }
    float alpha[19], bias[19];
    for (int i = 0; i < 19; i++) { alpha[i] = 0.5f + i * 0.01f; bias[i] = i * 0.1f - 1.0f; }
    int32_t *cls = calloc(OH * OW, 4);  /* no correction classes: all 0, table zero */
    int32_t *table = calloc(cout, 4);
    /* the fused successors too: batch norm (fmaf), a residual, a clamp */
    float pscale[19], pshift[19];
    for (int i = 0; i < 19; i++) { pscale[i] = 0.3f + i * 0.07f; pshift[i] = 0.25f - i * 0.03f; }
    float *res = malloc(sizeof(float) * 2 * cout * OH * OW);
    for (int64_t i = 0; i < 2 * cout * OH * OW; i++) res[i] = (float)((int64_t)(rnd() % 2001) - 1000) / 300.0f;
    bconv_epilogue e = {NULL, cls, table, 1, alpha, NULL, bias, pscale, pshift, res, 1, -4.0f, 4.0f};
    const char *isas[] = {"avx512", "avx2", "popcnt", "neon", "portable"};
    float *out = malloc(sizeof(float) * 2 * cout * OH * OW);
    const int64_t nbits = 2 * ((cout + 63) / 64) * (OH + 2) * (OW + 3);
    uint64_t *bits = malloc(sizeof(uint64_t) * nbits);
    float nshift[19];
    for (int i = 0; i < 19; i++) nshift[i] = (i % 3 - 1) * 0.5f;
    for (int k = 0; k < 5; k++) {
        if (!bconv_isa(isas[k])) continue;
        memset(out, 0, sizeof(float) * 2 * cout * OH * OW);
        if (bconv2d(&sh, &e, x, NULL, NULL, 2, B, out, isas[k], 2)) { printf("%s failed\n", isas[k]); continue; }
        double sum = 0; uint64_t h = 1469598103934665603ULL;
        for (int64_t i = 0; i < 2 * cout * OH * OW; i++) { uint32_t u; memcpy(&u, &out[i], 4); h = (h ^ u) * 1099511628211ULL; sum += out[i]; }
        /* the same conv writing the next conv's packed input (-1 border, a shift) instead of floats */
        bconv_epilogue eb = e;
        bconv_bits_out bo = {bits, nshift, OH + 2, OW + 3, 1, 2, 1};
        eb.bits = &bo;
        if (bconv2d(&sh, &eb, x, NULL, NULL, 2, B, out, isas[k], 2)) { printf("%s bits failed\n", isas[k]); continue; }
        uint64_t hb = 1469598103934665603ULL;
        for (int64_t i = 0; i < nbits; i++) hb = (hb ^ bits[i]) * 1099511628211ULL;
        printf("%-8s -> %s  sum %.6f  fnv %016llx  bits %016llx\n", isas[k], bconv_isa(isas[k]), sum, (unsigned long long)h,
               (unsigned long long)hb);
    }
    return 0;
}
