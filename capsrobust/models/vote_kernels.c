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
 *   m, s, c (B, I)           per-child values of one tile (softmax max and sum, M-step factor)
 * Beyond the contractions, the kernels fuse the element-wise routing work on (B, O, I) tensors that
 * sits between them (cr_wsums builds the M-step weights e * c on the fly and sums them into the
 * parent mass; cr_estep turns projections into the per-tile softmax pieces; cr_mstep_backward does
 * the M-step's chain rule), so no (B, O, I) pass is left to PyTorch in a convolutional layer.
 * Inside a tile the 16 pose entries h = 4 r + c run as rows r over lanes o * 4 + c, so one vector
 * of LANES lanes holds one row of the votes of LANES / 4 parents. The loops run over blocks of
 * LANES lanes with the child index innermost, so a block's accumulators stay in registers while
 * the children stream past. Padded lanes have W = 0 and weight 0 and are never written out.
 * Per-(parent, child) values enter the lane loops from a tile buffer "spread" over the lanes
 * (x[i][o * 4 + c] = value[o][i]) and leave through one (acc[i][lane] -> value[o][i]), so the inner
 * loops only do whole-vector loads and stores. Every function works on tiles [b0, b1), so callers
 * can split the work across threads; each call gets its own scratch rows `work`, one per thread, of
 * the size its comment gives (floats). (The centre cc itself is one matrix product over (child, k), done
 * in PyTorch.)
 */
#include <math.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define LANES 16
#define MAX_OCP 1024 /* 4 O rounded up to LANES: O <= 256 parent types */
#define MAX_PAIRS 8

int cr_max_oc(void) { return MAX_OCP; }
int cr_lanes(void) { return LANES; }

/* Built with OpenMP, each function splits its tiles over a team of `threads` from the process's
 * OpenMP runtime -- the one PyTorch's own operators use (the library is linked against the same
 * libgomp.so.1), so the kernels and PyTorch share one pool of threads instead of two competing
 * ones. Without OpenMP the loops run serially on [b0, b1) and the caller splits the tiles. */
int cr_openmp(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

static inline int thread_index(void) {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

static inline int padded(int O) { return (4 * O + LANES - 1) / LANES * LANES; }

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

/* One tile's (O, I) values spread over the lanes: dst[i][o * 4 + c] = src[o][i] (stride ocp), padding 0. */
static void spread_tile(const float *restrict src, int O, int I, int ocp, float *restrict dst) {
    for (int i = 0; i < I; ++i) {
        float *row = dst + (long)i * ocp;
        for (int o = 0; o < O; ++o) {
            const float v = src[(long)o * I + i];
            row[4 * o] = row[4 * o + 1] = row[4 * o + 2] = row[4 * o + 3] = v;
        }
        for (int l = 4 * O; l < ocp; ++l) row[l] = 0.0f;
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

/* exp(x) for x <= 0 (the E-step's z - max), written so the compiler vectorises a loop of them: x = n ln 2
 * + r with |r| <= ln 2 / 2, exp(r) by its degree-6 Taylor polynomial (relative error < 5e-7, a few
 * float ulp), times 2^n built in the exponent bits. Below -87 (exp < 1.7e-38, about the smallest
 * normal float) it returns 0, as expf would within a few denormals; NaN stays NaN. */
static inline float exp_nonpositive(float x) {
    const int below = x < -87.0f;
    const float xc = below ? -87.0f : x;
    const float n = __builtin_roundf(xc * 1.44269504088896341f);
    const float r = xc - n * 0.693145751953125f - n * 1.428606765330187e-06f; /* ln 2 in two parts */
    float poly = 1.0f / 720.0f;
    poly = poly * r + 1.0f / 120.0f;
    poly = poly * r + 1.0f / 24.0f;
    poly = poly * r + 1.0f / 6.0f;
    poly = poly * r + 0.5f;
    poly = poly * r + 1.0f;
    poly = poly * r + 1.0f;
    const int scale_bits = ((int)n + 127) << 23;
    float scale;
    memcpy(&scale, &scale_bits, sizeof scale);
    return below ? 0.0f : poly * scale;
}

/* cc[b, o] = (1 / I) sum_i M[b, i] W[i, o]: every parent's mean vote, the centre the other kernels
 * subtract (B, O, 16). */
void cr_centre(const float *M, const float *Wt, float *cc, int I, int O, int threads, long b0, long b1) {
    const int ocp = padded(O);
#pragma omp parallel num_threads(threads)
    {
    float rows[4 * MAX_OCP];
    const float zero[4][LANES] = {{0}};
#pragma omp for schedule(static)
    for (long b = b0; b < b1; ++b) {
        for (int jb = 0; jb < ocp; jb += LANES) {
            float acc[4][LANES] = {{0}}, d[4][LANES];
            for (int i = 0; i < I; ++i) {
                votes_block(M + (b * I + i) * 16, Wt + (long)i * 4 * ocp + jb, ocp, zero, d);
                for (int r = 0; r < 4; ++r)
                    for (int l = 0; l < LANES; ++l) acc[r][l] += d[r][l];
            }
            for (int r = 0; r < 4; ++r)
                for (int l = 0; l < LANES; ++l) rows[r * ocp + jb + l] = acc[r][l] / (float)I;
        }
        from_rows(rows, cc + b * 16 * O, O, ocp, 1);
    }
    }
}

/* Sums over the children of one tile, weights spread over the lanes (x: I rows of ocp):
 * rows[r][lane] = sum_i x d, rows[4 + r][lane] = sum_i x d^2, then written to S (O, 32). */
static void sums_tile(const float *M, const float *Wt, const float *cc, const float *restrict x, float *S,
                      int I, int O, long b, float *centre, float *rows) {
    const int ocp = padded(O);
    to_rows(cc + b * 16 * O, centre, O, ocp, 1);
    for (int jb = 0; jb < ocp; jb += LANES) {
        float s1[4][LANES] = {{0}}, s2[4][LANES] = {{0}}, cr[4][LANES], d[4][LANES];
        load_rows(centre, ocp, jb, cr);
        for (int i = 0; i < I; ++i) {
            const float *we = x + (long)i * ocp + jb;
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

/* One parent's weights w[i] = A[i] * (Bm[i] + c[i]) (see cr_wsums); returns their sum. */
static float weights_row(const float *restrict Ao, const float *restrict Bo, const float *restrict c,
                         float *restrict w, int I) {
    float total = 0.0f;
    for (int i = 0; i < I; ++i) {
        const float second = Bo ? Bo[i] + (c ? c[i] : 0.0f) : (c ? c[i] : 1.0f);
        w[i] = Ao ? Ao[i] * second : second;
        total += w[i];
    }
    return total;
}

/* Weighted vote sums with the weights built per tile:
 *   w[b, o, i] = A[b, o, i] * (Bm[b, o, i] + c[b, i])     (A absent: 1; Bm absent: c alone; both
 *                                                          Bm and c absent: 1)
 *   S[b, o] = [sum_i w d, sum_i w d^2]   (B, O, 32);  mass[b, o] = sum_i w  (B, O), if given;
 *   Wout[b, o, i] = w, if given.
 * The M-step is A = e (the E-step's exp(z - m)), c = f (per-child factor); the E-step's backward is
 * A = e, Bm = d loss / d e, c = d loss / d s, which makes w = d loss / d z.  work: O I + I ocp. */
void cr_wsums(const float *M, const float *Wt, const float *cc, const float *A, const float *Bm, const float *c,
              float *S, float *mass, float *Wout, float *work, int I, int O, int threads, long b0, long b1) {
    const int ocp = padded(O);
#pragma omp parallel num_threads(threads)
    {
    float centre[4 * MAX_OCP], rows[8 * MAX_OCP];
    float *w = work + (long)thread_index() * ((long)O * I + (long)I * ocp), *x = w + (long)O * I;
#pragma omp for schedule(static)
    for (long b = b0; b < b1; ++b) {
        const long tile = b * (long)O * I;
        const float *cb = c ? c + b * (long)I : 0;
        for (int o = 0; o < O; ++o) {
            const float total = weights_row(A ? A + tile + (long)o * I : 0, Bm ? Bm + tile + (long)o * I : 0, cb,
                                            w + (long)o * I, I);
            if (mass) mass[b * O + o] = total;
        }
        if (Wout) memcpy(Wout + tile, w, sizeof(float) * (size_t)O * (size_t)I);
        spread_tile(w, O, I, ocp, x);
        sums_tile(M, Wt, cc, x, S, I, O, b, centre, rows);
    }
    }
}

/* One tile's projections: P[o * I + i] = sum_{r, c} coeff[o][0][r][c] d + coeff[o][1][r][c] d^2 + add[o].
 * q: I ocp floats of scratch. */
static void project_tile(const float *M, const float *Wt, const float *cc, const float *coeff, const float *add,
                         float *restrict P, float *restrict q, int I, int O, long b, float *centre, float *co) {
    const int ocp = padded(O);
    to_rows(cc + b * 16 * O, centre, O, ocp, 1);
    to_rows(coeff + b * 32 * O, co, O, ocp, 2);
    for (int jb = 0; jb < ocp; jb += LANES) {
        float cr[4][LANES], a[4][LANES], qd[4][LANES], d[4][LANES];
        load_rows(centre, ocp, jb, cr);
        load_rows(co, ocp, jb, a);
        load_rows(co + 4 * ocp, ocp, jb, qd);
        for (int i = 0; i < I; ++i) {
            float *acc = q + (long)i * ocp + jb;
            votes_block(M + (b * I + i) * 16, Wt + (long)i * 4 * ocp + jb, ocp, cr, d);
            for (int l = 0; l < LANES; ++l)
                acc[l] = d[0][l] * (a[0][l] + qd[0][l] * d[0][l]) + d[1][l] * (a[1][l] + qd[1][l] * d[1][l])
                       + d[2][l] * (a[2][l] + qd[2][l] * d[2][l]) + d[3][l] * (a[3][l] + qd[3][l] * d[3][l]);
        }
    }
    for (int o = 0; o < O; ++o) {
        const float offset = add ? add[b * O + o] : 0.0f;
        for (int i = 0; i < I; ++i) {
            const float *acc = q + (long)i * ocp + 4 * o;
            P[(long)o * I + i] = acc[0] + acc[1] + acc[2] + acc[3] + offset;
        }
    }
}

/* P[b, o, i] = sum_{r, c} coeff[b, o][0][r][c] d + coeff[b, o][1][r][c] d^2.  work: I ocp. */
void cr_proj(const float *M, const float *Wt, const float *cc, const float *coeff, float *P, float *work, int I,
             int O, int threads, long b0, long b1) {
#pragma omp parallel num_threads(threads)
    {
    float centre[4 * MAX_OCP], co[8 * MAX_OCP];
    float *q = work + (long)thread_index() * I * padded(O);
#pragma omp for schedule(static)
    for (long b = b0; b < b1; ++b)
        project_tile(M, Wt, cc, coeff, 0, P + b * (long)O * I, q, I, O, b, centre, co);
    }
}

/* E-step of one tile range: z = projections(coeff) + add[b, o], then the per-child softmax pieces over
 * the O parents of the tile: m[b, i] = max_o z, e[b, o, i] = exp(z - m), s[b, i] = sum_o e.  work: I ocp. */
void cr_estep(const float *M, const float *Wt, const float *cc, const float *coeff, const float *add, float *e,
              float *m, float *s, float *work, int I, int O, int threads, long b0, long b1) {
#pragma omp parallel num_threads(threads)
    {
    float centre[4 * MAX_OCP], co[8 * MAX_OCP];
    float *q = work + (long)thread_index() * I * padded(O);
#pragma omp for schedule(static)
    for (long b = b0; b < b1; ++b) {
        float *eb = e + b * (long)O * I, *mb = m + b * (long)I, *sb = s + b * (long)I;
        project_tile(M, Wt, cc, coeff, add, eb, q, I, O, b, centre, co);
        for (int i = 0; i < I; ++i) mb[i] = eb[i], sb[i] = 0.0f;
        for (int o = 1; o < O; ++o)
            for (int i = 0; i < I; ++i) mb[i] = eb[o * I + i] > mb[i] ? eb[o * I + i] : mb[i];
        for (int o = 0; o < O; ++o)
            for (int i = 0; i < I; ++i) {
                const float v = exp_nonpositive(eb[o * I + i] - mb[i]);
                eb[o * I + i] = v;
                sb[i] += v;
            }
    }
    }
}

/* One parent's row of the M-step's chain rule (see cr_mstep_backward); restrict lets the loops vectorise. */
static void mstep_backward_row(const float *restrict gw, const float *restrict Ao, const float *restrict c,
                               float *restrict gA, float *restrict gc, float *restrict W, int I) {
    if (gA)
        for (int i = 0; i < I; ++i) gA[i] = gw[i] * c[i];
    if (Ao)
        for (int i = 0; i < I; ++i) gc[i] += gw[i] * Ao[i], W[i] = Ao[i] * c[i];
    else
        for (int i = 0; i < I; ++i) gc[i] += gw[i], W[i] = c[i];
}

/* Backward of the M-step w = A[b, o, i] c[b, i] (A absent: 1) through S and mass, one tile range:
 *   g_w = projections(gS) + gmass[b, o];  gA = g_w c (if gA);  gc[b, i] = sum_o g_w A;  Wout = A c.
 * work: O I + I ocp. */
void cr_mstep_backward(const float *M, const float *Wt, const float *cc, const float *A, const float *c,
                       const float *gS, const float *gmass, float *gA, float *gc, float *Wout, float *work, int I,
                       int O, int threads, long b0, long b1) {
#pragma omp parallel num_threads(threads)
    {
    float centre[4 * MAX_OCP], co[8 * MAX_OCP];
    float *gw = work + (long)thread_index() * ((long)O * I + (long)I * padded(O)), *q = gw + (long)O * I;
#pragma omp for schedule(static)
    for (long b = b0; b < b1; ++b) {
        const long tile = b * (long)O * I;
        const float *cb = c + b * (long)I;
        float *gcb = gc + b * (long)I;
        project_tile(M, Wt, cc, gS, gmass, gw, q, I, O, b, centre, co);
        for (int i = 0; i < I; ++i) gcb[i] = 0.0f;
        for (int o = 0; o < O; ++o)
            mstep_backward_row(gw + (long)o * I, A ? A + tile + (long)o * I : 0, cb, gA ? gA + tile + (long)o * I : 0,
                               gcb, Wout + tile + (long)o * I, I);
    }
    }
}

/* Gradient of the votes from K <= MAX_PAIRS recorded factor pairs, pushed through V = M W:
 *   g[b, o, i] = sum_k left_k[b, o, i] (right_k[b, o, :16] + 2 d right_k[b, o, 16:])   (16 entries)
 *   gM[b, i] += sum_o g W[i, o]^T ;  gWt[i] += M[b, i]^T g   (gWt: one (I, 4, OCP) buffer per thread).
 * left: K pointers to (B, O, I); right: K pointers to (B, O, 32).  work: K I ocp per thread. */
void cr_vote_backward(const float *M, const float *Wt, const float *cc, const float *const *left,
                      const float *const *right, int K, float *gM, float *gWt, float *work, int I, int O,
                      int threads, long b0, long b1) {
    const int ocp = padded(O);
    if (K > MAX_PAIRS) return;
#pragma omp parallel num_threads(threads)
    {
    float centre[4 * MAX_OCP], rows[MAX_PAIRS][8 * MAX_OCP];
    const int t = thread_index();
    float *spread = work + (long)t * K * I * ocp, *gWt_t = gWt + (long)t * I * 4 * ocp;
#pragma omp for schedule(static)
    for (long b = b0; b < b1; ++b) {
        to_rows(cc + b * 16 * O, centre, O, ocp, 1);
        for (int k = 0; k < K; ++k) {
            to_rows(right[k] + b * 32 * O, rows[k], O, ocp, 2);
            spread_tile(left[k] + b * (long)O * I, O, I, ocp, spread + (long)k * I * ocp);
        }
        for (int i = 0; i < I; ++i) {
            const float *m = M + (b * I + i) * 16;
            float gm[16][LANES] = {{0}}; /* [r * 4 + kk] partial sums over lanes, reduced once per child */
            for (int jb = 0; jb < ocp; jb += LANES) {
                const float *wt = Wt + (long)i * 4 * ocp + jb;
                float cr[4][LANES], d[4][LANES], g1[4][LANES] = {{0}}, g2[4][LANES] = {{0}};
                load_rows(centre, ocp, jb, cr);
                votes_block(m, wt, ocp, cr, d);
                for (int k = 0; k < K; ++k) {
                    const float *le = spread + ((long)k * I + i) * ocp + jb;
                    const float *rk = rows[k] + jb;
                    for (int r = 0; r < 4; ++r)
                        for (int l = 0; l < LANES; ++l) {
                            g1[r][l] += le[l] * rk[r * ocp + l];
                            g2[r][l] += le[l] * rk[(4 + r) * ocp + l];
                        }
                }
                float *gw = gWt_t + (long)i * 4 * ocp + jb;
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
}
