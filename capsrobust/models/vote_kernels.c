/* Fused vote contractions for EM routing in convolutional capsule layers (CPU, float32).
 *
 * EM routing touches the vote tensor V (B tiles x O parents x I children x 16) only through a few
 * contractions (capsrobust/models/routing.py). Stored, V and V^2 are ~42 MB per image in ConvCaps1
 * of the A=B=C=D=32 net, far beyond the caches, so every pass over them is bound by memory
 * bandwidth. Here V is never stored: each kernel recomputes the 16 entries of V[b, o, i] =
 * M[b, i] W[i, o] (a 4x4 matrix product, 64 multiply-adds) from the child pose M (in L1) and the
 * transformation matrices W (in L2), so every pass is bound by arithmetic instead.
 *
 * Layouts (all contiguous, float32; OC = 4 * O, index oc = o * 4 + c):
 *   M      (B, I, 16)        child poses of tile b, [r * 4 + k] = M[r][k]
 *   Wt     (I, 4, OC)        W[i, o][k][c] at [i][k][o * 4 + c]
 *   cc     (B, 4, OC)        per-parent centre subtracted from every vote (d = V - cc)
 *   w      (B, I, O)         assignment weights (M-step) / first factors (backward)
 *   S      (B, 2, 4, OC)     [sum_i w d, sum_i w d^2] (M-step); coefficients (E-step, backward)
 *   P      (B, I, O)         sum_h coeff_0h d_h + coeff_1h d_h^2 (E-step)
 * Every function works on tiles [b0, b1), so callers can split the work across threads.
 */
#include <string.h>

#define MAX_OC 1024 /* O <= 256 parent types */

/* d[j] = sum_k m[k] wt[k][j] - cc[j] for j < OC: one row r of the votes of child i, all parents. */
static inline void vote_row(const float *restrict m, const float *restrict wt, const float *restrict cc,
                            float *restrict d, int oc) {
    const float m0 = m[0], m1 = m[1], m2 = m[2], m3 = m[3];
    const float *restrict w0 = wt, *restrict w1 = wt + oc, *restrict w2 = wt + 2 * oc, *restrict w3 = wt + 3 * oc;
    for (int j = 0; j < oc; ++j) d[j] = m0 * w0[j] + m1 * w1[j] + m2 * w2[j] + m3 * w3[j] - cc[j];
}

static inline void expand(const float *restrict src, float *restrict dst, int o) {
    for (int p = 0; p < o; ++p) dst[4 * p] = dst[4 * p + 1] = dst[4 * p + 2] = dst[4 * p + 3] = src[p];
}

int cr_max_oc(void) { return MAX_OC; }

/* cc[b] = mean_i V[b, :, i]. */
void cr_centre(const float *M, const float *Wt, float *cc, int I, int O, long b0, long b1) {
    const int oc = 4 * O;
    float zero[MAX_OC], d[MAX_OC];
    memset(zero, 0, sizeof(float) * oc);
    for (long b = b0; b < b1; ++b) {
        float *restrict out = cc + b * 4 * oc;
        memset(out, 0, sizeof(float) * 4 * oc);
        for (int i = 0; i < I; ++i) {
            const float *m = M + (b * I + i) * 16;
            for (int r = 0; r < 4; ++r) {
                vote_row(m + 4 * r, Wt + (long)i * 4 * oc, zero, d, oc);
                for (int j = 0; j < oc; ++j) out[r * oc + j] += d[j];
            }
        }
        for (int j = 0; j < 4 * oc; ++j) out[j] /= (float)I;
    }
}

/* S[b] = [sum_i w[b, i, o] d, sum_i w[b, i, o] d^2]. */
void cr_msums(const float *M, const float *Wt, const float *cc, const float *w, float *S, int I, int O,
              long b0, long b1) {
    const int oc = 4 * O;
    float we[MAX_OC], d[MAX_OC];
    for (long b = b0; b < b1; ++b) {
        float *restrict s1 = S + b * 8 * oc, *restrict s2 = s1 + 4 * oc;
        const float *ccb = cc + b * 4 * oc;
        memset(s1, 0, sizeof(float) * 8 * oc);
        for (int i = 0; i < I; ++i) {
            const float *m = M + (b * I + i) * 16;
            expand(w + (b * I + i) * O, we, O);
            for (int r = 0; r < 4; ++r) {
                vote_row(m + 4 * r, Wt + (long)i * 4 * oc, ccb + r * oc, d, oc);
                float *restrict t1 = s1 + r * oc, *restrict t2 = s2 + r * oc;
                for (int j = 0; j < oc; ++j) {
                    const float wd = we[j] * d[j];
                    t1[j] += wd;
                    t2[j] += wd * d[j];
                }
            }
        }
    }
}

/* P[b, i, o] = sum_{r, c} coeff[b][0][r][oc] d + coeff[b][1][r][oc] d^2. */
void cr_proj(const float *M, const float *Wt, const float *cc, const float *coeff, float *P, int I, int O,
             long b0, long b1) {
    const int oc = 4 * O;
    float acc[MAX_OC], d[MAX_OC];
    for (long b = b0; b < b1; ++b) {
        const float *c1 = coeff + b * 8 * oc, *c2 = c1 + 4 * oc, *ccb = cc + b * 4 * oc;
        for (int i = 0; i < I; ++i) {
            const float *m = M + (b * I + i) * 16;
            memset(acc, 0, sizeof(float) * oc);
            for (int r = 0; r < 4; ++r) {
                vote_row(m + 4 * r, Wt + (long)i * 4 * oc, ccb + r * oc, d, oc);
                const float *restrict a = c1 + r * oc, *restrict q = c2 + r * oc;
                for (int j = 0; j < oc; ++j) acc[j] += d[j] * (a[j] + q[j] * d[j]);
            }
            float *restrict out = P + (b * I + i) * O;
            for (int p = 0; p < O; ++p) out[p] = acc[4 * p] + acc[4 * p + 1] + acc[4 * p + 2] + acc[4 * p + 3];
        }
    }
}

/* Gradient of the votes from K recorded factor pairs, pushed through V = M W:
 *   g_d[b, o, i] = sum_k left[k, b, i, o] (right[k, b, 0] + 2 d right[k, b, 1])   (16 entries)
 *   gM[b, i] += sum_o g_d W[i, o]^T ;  gWt[i] += M[b, i]^T g_d  (gWt: this caller's own buffer).
 * left (K, B, I, O), right (K, B, 2, 4, OC), K <= 8 (call again for more); ``nb`` = B. */
void cr_vote_backward(const float *M, const float *Wt, const float *cc, const float *left, const float *right,
                      int K, long nb, float *gM, float *gWt, int I, int O, long b0, long b1) {
    const int oc = 4 * O;
    float d[MAX_OC], g[MAX_OC], le[8][MAX_OC];
    if (K > 8) return;
    for (long b = b0; b < b1; ++b) {
        const float *ccb = cc + b * 4 * oc;
        for (int i = 0; i < I; ++i) {
            const float *m = M + (b * I + i) * 16;
            const float *wt = Wt + (long)i * 4 * oc;
            float *gwt = gWt + (long)i * 4 * oc;
            for (int k = 0; k < K; ++k) expand(left + ((k * nb + b) * I + i) * O, le[k], O);
            for (int r = 0; r < 4; ++r) {
                vote_row(m + 4 * r, wt, ccb + r * oc, d, oc);
                memset(g, 0, sizeof(float) * oc);
                for (int k = 0; k < K; ++k) {
                    const float *restrict r1 = right + (k * nb + b) * 8 * oc + r * oc, *restrict r2 = r1 + 4 * oc;
                    const float *restrict l = le[k];
                    for (int j = 0; j < oc; ++j) g[j] += l[j] * (r1[j] + 2.0f * d[j] * r2[j]);
                }
                for (int kk = 0; kk < 4; ++kk) {
                    const float *restrict wk = wt + kk * oc;
                    float s = 0.0f;
                    for (int j = 0; j < oc; ++j) s += g[j] * wk[j];
                    gM[(b * I + i) * 16 + r * 4 + kk] += s;
                    const float mk = m[4 * r + kk];
                    float *restrict gk = gwt + kk * oc;
                    for (int j = 0; j < oc; ++j) gk[j] += mk * g[j];
                }
            }
        }
    }
}
