/* Fused vote contractions for EM routing in convolutional capsule layers (CPU, float32).
 *
 * EM routing touches the vote tensor V (B tiles x O parents x I children x 16) only through a few
 * contractions (capsrobust/models/routing.py). Stored, V and V^2 are ~42 MB per image in ConvCaps1
 * of the A=B=C=D=32 net, far beyond the caches, so every pass over them is bound by memory
 * bandwidth. Here V is never stored: each kernel recomputes the 16 entries of V[b, o, i] =
 * M[b, i] W[i, o] (a 4x4 matrix product, 64 multiply-adds) from the child pose M (in L1) and the
 * transformation matrices W (in L2), so every pass is bound by arithmetic instead.
 *
 * Tensors keep the layouts routing.py uses (all contiguous float32):
 *   M      (B, I, 16)        child poses of tile b (a tile is one image x one parent position)
 *   Wt     (I, 4, OC)        W[i, o][k][c] at [i][k][o * 4 + c]; OC = 4 * O
 *   cc     (B, O, 16)        per-parent centre subtracted from every vote: d = V - cc
 *   w, P   (B, O, I)         per-(parent, child) weights in; projections out
 *   S      (B, O, 32)        [sum_i w d, sum_i w d^2] out; E-step coefficients in
 * Inside a tile the 16 pose entries h = 4 r + c run as rows r of length OC (index o * 4 + c), so
 * the inner loops are contiguous over all parents at once; per-tile operands are transposed into
 * that layout in small local buffers. Every function works on tiles [b0, b1), so callers can
 * split the work across threads.
 */
#include <string.h>

#define MAX_OC 1024 /* O <= 256 parent types */
#define MAX_PAIRS 8

int cr_max_oc(void) { return MAX_OC; }

/* (O, 16 * parts) block of one tile -> rows [part][r][o * 4 + c]. */
static void to_rows(const float *restrict src, float *restrict dst, int O, int parts) {
    const int oc = 4 * O, width = 16 * parts;
    for (int o = 0; o < O; ++o)
        for (int p = 0; p < parts; ++p)
            for (int r = 0; r < 4; ++r)
                for (int c = 0; c < 4; ++c) dst[(p * 4 + r) * oc + o * 4 + c] = src[o * width + p * 16 + r * 4 + c];
}

static void from_rows(const float *restrict src, float *restrict dst, int O, int parts) {
    const int oc = 4 * O, width = 16 * parts;
    for (int o = 0; o < O; ++o)
        for (int p = 0; p < parts; ++p)
            for (int r = 0; r < 4; ++r)
                for (int c = 0; c < 4; ++c) dst[o * width + p * 16 + r * 4 + c] = src[(p * 4 + r) * oc + o * 4 + c];
}

/* dst[o * 4 + c] = src[o * stride] (one child's value for every parent, repeated over c). */
static inline void expand(const float *restrict src, long stride, float *restrict dst, int O) {
    for (int o = 0; o < O; ++o) {
        const float v = src[o * stride];
        dst[4 * o] = dst[4 * o + 1] = dst[4 * o + 2] = dst[4 * o + 3] = v;
    }
}

/* cc[b] = mean_i V[b, :, i]. */
void cr_centre(const float *M, const float *Wt, float *cc, int I, int O, long b0, long b1) {
    const int oc = 4 * O;
    float acc[4 * MAX_OC];
    for (long b = b0; b < b1; ++b) {
        memset(acc, 0, sizeof(float) * 4 * oc);
        for (int i = 0; i < I; ++i) {
            const float *m = M + (b * I + i) * 16, *wt = Wt + (long)i * 4 * oc;
            for (int r = 0; r < 4; ++r) {
                const float m0 = m[4 * r], m1 = m[4 * r + 1], m2 = m[4 * r + 2], m3 = m[4 * r + 3];
                float *restrict a = acc + r * oc;
                for (int j = 0; j < oc; ++j) a[j] += m0 * wt[j] + m1 * wt[oc + j] + m2 * wt[2 * oc + j] + m3 * wt[3 * oc + j];
            }
        }
        for (int j = 0; j < 4 * oc; ++j) acc[j] /= (float)I;
        from_rows(acc, cc + b * 16 * O, O, 1);
    }
}

/* S[b, o] = [sum_i w[b, o, i] d, sum_i w[b, o, i] d^2]. */
void cr_msums(const float *M, const float *Wt, const float *cc, const float *w, float *S, int I, int O,
              long b0, long b1) {
    const int oc = 4 * O;
    float acc[8 * MAX_OC], centre[4 * MAX_OC], we[MAX_OC];
    for (long b = b0; b < b1; ++b) {
        to_rows(cc + b * 16 * O, centre, O, 1);
        memset(acc, 0, sizeof(float) * 8 * oc);
        for (int i = 0; i < I; ++i) {
            const float *m = M + (b * I + i) * 16, *wt = Wt + (long)i * 4 * oc;
            expand(w + b * O * I + i, I, we, O);
            for (int r = 0; r < 4; ++r) {
                const float m0 = m[4 * r], m1 = m[4 * r + 1], m2 = m[4 * r + 2], m3 = m[4 * r + 3];
                const float *restrict cr = centre + r * oc;
                float *restrict s1 = acc + r * oc, *restrict s2 = acc + (4 + r) * oc;
                for (int j = 0; j < oc; ++j) {
                    const float d = m0 * wt[j] + m1 * wt[oc + j] + m2 * wt[2 * oc + j] + m3 * wt[3 * oc + j] - cr[j];
                    const float wd = we[j] * d;
                    s1[j] += wd;
                    s2[j] += wd * d;
                }
            }
        }
        from_rows(acc, S + b * 32 * O, O, 2);
    }
}

/* P[b, o, i] = sum_{r, c} coeff[b, o][0][r][c] d + coeff[b, o][1][r][c] d^2. */
void cr_proj(const float *M, const float *Wt, const float *cc, const float *coeff, float *P, int I, int O,
             long b0, long b1) {
    const int oc = 4 * O;
    float co[8 * MAX_OC], centre[4 * MAX_OC], acc[MAX_OC];
    for (long b = b0; b < b1; ++b) {
        to_rows(cc + b * 16 * O, centre, O, 1);
        to_rows(coeff + b * 32 * O, co, O, 2);
        float *out = P + b * O * I;
        for (int i = 0; i < I; ++i) {
            const float *m = M + (b * I + i) * 16, *wt = Wt + (long)i * 4 * oc;
            memset(acc, 0, sizeof(float) * oc);
            for (int r = 0; r < 4; ++r) {
                const float m0 = m[4 * r], m1 = m[4 * r + 1], m2 = m[4 * r + 2], m3 = m[4 * r + 3];
                const float *restrict cr = centre + r * oc, *restrict a = co + r * oc, *restrict q = co + (4 + r) * oc;
                for (int j = 0; j < oc; ++j) {
                    const float d = m0 * wt[j] + m1 * wt[oc + j] + m2 * wt[2 * oc + j] + m3 * wt[3 * oc + j] - cr[j];
                    acc[j] += d * (a[j] + q[j] * d);
                }
            }
            for (int o = 0; o < O; ++o) out[o * I + i] = acc[4 * o] + acc[4 * o + 1] + acc[4 * o + 2] + acc[4 * o + 3];
        }
    }
}

/* Gradient of the votes from K <= MAX_PAIRS recorded factor pairs, pushed through V = M W:
 *   g[b, o, i] = sum_k left_k[b, o, i] (right_k[b, o, :16] + 2 d right_k[b, o, 16:])   (16 entries)
 *   gM[b, i] += sum_o g W[i, o]^T ;  gWt[i] += M[b, i]^T g   (gWt: this caller's own buffer).
 * left: K pointers to (B, O, I); right: K pointers to (B, O, 32). */
void cr_vote_backward(const float *M, const float *Wt, const float *cc, const float *const *left,
                      const float *const *right, int K, float *gM, float *gWt, int I, int O, long b0, long b1) {
    const int oc = 4 * O;
    float centre[4 * MAX_OC], rows[MAX_PAIRS][8 * MAX_OC], le[MAX_PAIRS][MAX_OC], g[MAX_OC], g1[MAX_OC], g2[MAX_OC];
    if (K > MAX_PAIRS) return;
    for (long b = b0; b < b1; ++b) {
        to_rows(cc + b * 16 * O, centre, O, 1);
        for (int k = 0; k < K; ++k) to_rows(right[k] + b * 32 * O, rows[k], O, 2);
        for (int i = 0; i < I; ++i) {
            const float *m = M + (b * I + i) * 16, *wt = Wt + (long)i * 4 * oc;
            float *gwt = gWt + (long)i * 4 * oc;
            for (int k = 0; k < K; ++k) expand(left[k] + b * O * I + i, I, le[k], O);
            for (int r = 0; r < 4; ++r) {
                const float m0 = m[4 * r], m1 = m[4 * r + 1], m2 = m[4 * r + 2], m3 = m[4 * r + 3];
                const float *restrict cr = centre + r * oc;
                memset(g1, 0, sizeof(float) * oc);
                memset(g2, 0, sizeof(float) * oc);
                for (int k = 0; k < K; ++k) {
                    const float *restrict r1 = rows[k] + r * oc, *restrict r2 = rows[k] + (4 + r) * oc;
                    const float *restrict l = le[k];
                    for (int j = 0; j < oc; ++j) {
                        g1[j] += l[j] * r1[j];
                        g2[j] += l[j] * r2[j];
                    }
                }
                for (int j = 0; j < oc; ++j) {
                    const float d = m0 * wt[j] + m1 * wt[oc + j] + m2 * wt[2 * oc + j] + m3 * wt[3 * oc + j] - cr[j];
                    g[j] = g1[j] + 2.0f * d * g2[j];
                }
                float *grad_m = gM + (b * I + i) * 16 + r * 4;
                for (int kk = 0; kk < 4; ++kk) {
                    const float *restrict wk = wt + kk * oc;
                    float s = 0.0f;
                    for (int j = 0; j < oc; ++j) s += g[j] * wk[j];
                    grad_m[kk] += s;
                    const float mk = m[4 * r + kk];
                    float *restrict gk = gwt + kk * oc;
                    for (int j = 0; j < oc; ++j) gk[j] += mk * g[j];
                }
            }
        }
    }
}
