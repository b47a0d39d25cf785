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
 *   Wt     (I, 4, OCP)       W[i, o][k][c] at [i][k][o * 4 + c], zero-padded to OCP >= 4 O lanes,
 *                            OCP a multiple of LANES
 *   cc     (B, O, 16)        per-parent centre subtracted from every vote: d = V - cc
 *   w, P   (B, O, I)         per-(parent, child) weights in; projections out
 *   S      (B, O, 32)        [sum_i w d, sum_i w d^2] out; E-step coefficients in
 * Inside a tile the 16 pose entries h = 4 r + c run as rows r over lanes o * 4 + c, so one vector
 * of LANES lanes holds one row of the votes of LANES / 4 parents. The loops run over blocks of
 * LANES lanes with the child index innermost, so a block's accumulators stay in registers while
 * the children stream past. Padded lanes have W = 0 and weight 0 and are never written out.
 * Every function works on tiles [b0, b1), so callers can split the work across threads. (The
 * centre cc itself is one matrix product over (child, k), done in PyTorch.)
 */
#include <string.h>

#define LANES 16
#define MAX_OCP 1024 /* 4 O rounded up to LANES: O <= 256 parent types */
#define MAX_PAIRS 8

int cr_max_oc(void) { return MAX_OCP; }
int cr_lanes(void) { return LANES; }

/* (O, 16 * parts) block of one tile -> rows [part * 4 + r][o * 4 + c] of stride ocp (padding zeroed). */
static void to_rows(const float *restrict src, float *restrict dst, int O, int ocp, int parts) {
    const int width = 16 * parts;
    memset(dst, 0, sizeof(float) * 4 * parts * ocp);
    for (int o = 0; o < O; ++o)
        for (int p = 0; p < parts; ++p)
            for (int r = 0; r < 4; ++r)
                for (int c = 0; c < 4; ++c) dst[(p * 4 + r) * ocp + o * 4 + c] = src[o * width + p * 16 + r * 4 + c];
}

static void from_rows(const float *restrict src, float *restrict dst, int O, int ocp, int parts) {
    const int width = 16 * parts;
    for (int o = 0; o < O; ++o)
        for (int p = 0; p < parts; ++p)
            for (int r = 0; r < 4; ++r)
                for (int c = 0; c < 4; ++c) dst[o * width + p * 16 + r * 4 + c] = src[(p * 4 + r) * ocp + o * 4 + c];
}

/* Lanes of block jb for child i: src[o * I + i] of parent o = jb / 4 + q, repeated over c; 0 past O. */
static inline void expand_block(const float *restrict src, int I, int i, int jb, int O, float *restrict dst) {
    for (int q = 0; q < LANES / 4; ++q) {
        const int o = jb / 4 + q;
        const float v = o < O ? src[o * I + i] : 0.0f;
        dst[4 * q] = dst[4 * q + 1] = dst[4 * q + 2] = dst[4 * q + 3] = v;
    }
}

/* d[r][l] = sum_k m[r][k] wt[k][l] - cr[r][l] for the 4 rows of one child, one block of lanes. */
static inline void votes_block(const float *restrict m, const float *restrict wt, int ocp,
                               const float cr[4][LANES], float d[4][LANES]) {
    for (int r = 0; r < 4; ++r) {
        const float m0 = m[4 * r], m1 = m[4 * r + 1], m2 = m[4 * r + 2], m3 = m[4 * r + 3];
        for (int l = 0; l < LANES; ++l)
            d[r][l] = m0 * wt[l] + m1 * wt[ocp + l] + m2 * wt[2 * ocp + l] + m3 * wt[3 * ocp + l] - cr[r][l];
    }
}

static inline void load_rows(const float *restrict rows, int ocp, int jb, float out[4][LANES]) {
    for (int r = 0; r < 4; ++r)
        for (int l = 0; l < LANES; ++l) out[r][l] = rows[r * ocp + jb + l];
}

static inline int padded(int O) { return (4 * O + LANES - 1) / LANES * LANES; }

/* S[b, o] = [sum_i w[b, o, i] d, sum_i w[b, o, i] d^2]. */
void cr_msums(const float *M, const float *Wt, const float *cc, const float *w, float *S, int I, int O,
              long b0, long b1) {
    const int ocp = padded(O);
    float centre[4 * MAX_OCP], rows[8 * MAX_OCP];
    for (long b = b0; b < b1; ++b) {
        to_rows(cc + b * 16 * O, centre, O, ocp, 1);
        const float *wb = w + b * O * I;
        for (int jb = 0; jb < ocp; jb += LANES) {
            float s1[4][LANES] = {{0}}, s2[4][LANES] = {{0}}, cr[4][LANES], d[4][LANES], we[LANES];
            load_rows(centre, ocp, jb, cr);
            for (int i = 0; i < I; ++i) {
                expand_block(wb, I, i, jb, O, we);
                votes_block(M + (b * I + i) * 16, Wt + (long)i * 4 * ocp + jb, ocp, cr, d);
                for (int r = 0; r < 4; ++r)
                    for (int l = 0; l < LANES; ++l) {
                        const float wd = we[l] * d[r][l];
                        s1[r][l] += wd;
                        s2[r][l] += wd * d[r][l];
                    }
            }
            for (int r = 0; r < 4; ++r)
                for (int l = 0; l < LANES; ++l) {
                    rows[r * ocp + jb + l] = s1[r][l];
                    rows[(4 + r) * ocp + jb + l] = s2[r][l];
                }
        }
        from_rows(rows, S + b * 32 * O, O, ocp, 2);
    }
}

/* P[b, o, i] = sum_{r, c} coeff[b, o][0][r][c] d + coeff[b, o][1][r][c] d^2. */
void cr_proj(const float *M, const float *Wt, const float *cc, const float *coeff, float *P, int I, int O,
             long b0, long b1) {
    const int ocp = padded(O);
    float centre[4 * MAX_OCP], co[8 * MAX_OCP];
    for (long b = b0; b < b1; ++b) {
        to_rows(cc + b * 16 * O, centre, O, ocp, 1);
        to_rows(coeff + b * 32 * O, co, O, ocp, 2);
        float *pb = P + b * O * I;
        for (int jb = 0; jb < ocp; jb += LANES) {
            float cr[4][LANES], a[4][LANES], q[4][LANES], d[4][LANES];
            load_rows(centre, ocp, jb, cr);
            load_rows(co, ocp, jb, a);
            load_rows(co + 4 * ocp, ocp, jb, q);
            const int parents = (4 * O - jb) / 4 < LANES / 4 ? (4 * O - jb) / 4 : LANES / 4;
            for (int i = 0; i < I; ++i) {
                float acc[LANES];
                votes_block(M + (b * I + i) * 16, Wt + (long)i * 4 * ocp + jb, ocp, cr, d);
                for (int l = 0; l < LANES; ++l)
                    acc[l] = d[0][l] * (a[0][l] + q[0][l] * d[0][l]) + d[1][l] * (a[1][l] + q[1][l] * d[1][l])
                           + d[2][l] * (a[2][l] + q[2][l] * d[2][l]) + d[3][l] * (a[3][l] + q[3][l] * d[3][l]);
                for (int p = 0; p < parents; ++p)
                    pb[(jb / 4 + p) * I + i] = acc[4 * p] + acc[4 * p + 1] + acc[4 * p + 2] + acc[4 * p + 3];
            }
        }
    }
}

/* Gradient of the votes from K <= MAX_PAIRS recorded factor pairs, pushed through V = M W:
 *   g[b, o, i] = sum_k left_k[b, o, i] (right_k[b, o, :16] + 2 d right_k[b, o, 16:])   (16 entries)
 *   gM[b, i] += sum_o g W[i, o]^T ;  gWt[i] += M[b, i]^T g   (gWt: this caller's own buffer, (I, 4, OCP)).
 * left: K pointers to (B, O, I); right: K pointers to (B, O, 32). */
void cr_vote_backward(const float *M, const float *Wt, const float *cc, const float *const *left,
                      const float *const *right, int K, float *gM, float *gWt, int I, int O, long b0, long b1) {
    const int ocp = padded(O);
    float centre[4 * MAX_OCP], rows[MAX_PAIRS][8 * MAX_OCP];
    if (K > MAX_PAIRS) return;
    for (long b = b0; b < b1; ++b) {
        to_rows(cc + b * 16 * O, centre, O, ocp, 1);
        for (int k = 0; k < K; ++k) to_rows(right[k] + b * 32 * O, rows[k], O, ocp, 2);
        for (int i = 0; i < I; ++i) {
            const float *m = M + (b * I + i) * 16;
            float gm[16][LANES] = {{0}}; /* [r * 4 + kk] partial sums over lanes, reduced once per child */
            for (int jb = 0; jb < ocp; jb += LANES) {
                const float *wt = Wt + (long)i * 4 * ocp + jb;
                float cr[4][LANES], d[4][LANES], g1[4][LANES] = {{0}}, g2[4][LANES] = {{0}};
                load_rows(centre, ocp, jb, cr);
                votes_block(m, wt, ocp, cr, d);
                for (int k = 0; k < K; ++k) {
                    float le[LANES];
                    expand_block(left[k] + b * O * I, I, i, jb, O, le);
                    const float *rk = rows[k] + jb;
                    for (int r = 0; r < 4; ++r)
                        for (int l = 0; l < LANES; ++l) {
                            g1[r][l] += le[l] * rk[r * ocp + l];
                            g2[r][l] += le[l] * rk[(4 + r) * ocp + l];
                        }
                }
                float *gw = gWt + (long)i * 4 * ocp + jb;
                for (int r = 0; r < 4; ++r)
                    for (int l = 0; l < LANES; ++l) g1[r][l] += 2.0f * d[r][l] * g2[r][l]; /* g1 is now g */
                for (int kk = 0; kk < 4; ++kk) {
                    for (int r = 0; r < 4; ++r)
                        for (int l = 0; l < LANES; ++l) gm[r * 4 + kk][l] += g1[r][l] * wt[kk * ocp + l];
                    const float m0 = m[kk], m1 = m[4 + kk], m2 = m[8 + kk], m3 = m[12 + kk];
                    for (int l = 0; l < LANES; ++l)
                        gw[kk * ocp + l] += m0 * g1[0][l] + m1 * g1[1][l] + m2 * g1[2][l] + m3 * g1[3][l];
                }
            }
            float *grad_m = gM + (b * I + i) * 16;
            for (int h = 0; h < 16; ++h) {
                float s = 0.0f;
                for (int l = 0; l < LANES; ++l) s += gm[h][l];
                grad_m[h] += s;
            }
        }
    }
}
