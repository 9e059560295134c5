/* The lstm_timeseries forward pass in C (commonlib/models/lstm_timeseries.py loads it).
 *
 * forecast(windows, out, norm_mean, norm_std, sigma_floor, input_weight, input_bias,
 *          recurrent, feedback, feedback_bias, head_weight, head_bias, portable=False)
 * computes what lstm_timeseries._forecast (the TorchScript path) computes over
 * FastRollout's prepared weights: each [T] float32 window of windows [B, T] normalised
 * in float64 (its own mean and floored deviation, or the fixed norm_mean / norm_std when
 * norm_std > 0), the float32 cell loop over the context, steps - 1 feedback steps, the
 * head, and the float64 inverse, into out [B, steps] float32. The GIL is released for
 * the whole computation.
 *
 * Every row goes through the same operations in the same order whatever the batch size
 * and its position in the batch (rows never mix: a tile's accumulator for row r and
 * column j is always init(j) then one fma per k = 0..H-1 in order), so a batch gives
 * the same bits as its requests one by one.
 *
 * step(x, h, c, out, new_h, new_c, <the same weights>, portable=False) is FastRollout.step
 * for streams: one cell step of the normalised values x [B] from the carried (h, c)
 * [B, H], the state after it into new_h / new_c and the [B, steps] rollout (normalised
 * units) into out.
 *
 * The [rows, H] x [H, 4H] product of each step runs in AVX2+FMA register tiles when the
 * CPU has them (chosen at run time; the build never uses -march) and in portable C
 * otherwise or when portable=True; the two agree to float32 rounding, not bit for bit
 * (fma against separate multiply and add).
 * sigmoid is 1 / (1 + exp(-x)) with a Cephes-style expf: range reduction by ln 2 and a
 * degree-5 polynomial, about 1-2 ulp.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define LSTM_X86 1
#else
#define LSTM_X86 0
#endif

/* exp's argument is clamped so that 2^n stays a normal float (n in [-126, 127]). */
#define EXP_LO -87.33654f
#define EXP_HI 88.0f
#define LOG2E 1.44269504088896341f
#define ROUNDER 12582912.0f /* 1.5 * 2^23 */
#define LN2_HI 0.693359375f /* ln 2 = LN2_HI + LN2_LO; n * LN2_HI is exact */
#define LN2_LO -2.12194440e-4f
#define P0 1.9875691500e-4f
#define P1 1.3981999507e-3f
#define P2 8.3334519073e-3f
#define P3 4.1665795894e-2f
#define P4 1.6666665459e-1f
#define P5 5.0000001201e-1f

typedef struct {
    Py_ssize_t hidden, gates; /* H and 4H */
    const float *input_weight, *input_bias, *recurrent, *feedback, *feedback_bias;
    const float *head_weight;
    float head_bias;
} Weights;

/* A forecast (windows set, length T >= 1) or a stream step (x, h, c; length 0). */
typedef struct {
    Py_ssize_t batch, length, steps;
    const float *windows;      /* [B, T] */
    const float *x, *h, *c;    /* [B], [B, H], [B, H] */
    float *out, *new_h, *new_c; /* [B, steps], [B, H], [B, H] */
    double norm_mean, norm_std, sigma_floor;
} Job;

/* Scratch for a block of up to MAX_ROWS rows; every row is padded to whole 8-float chunks. */
#define MAX_ROWS 3
typedef struct {
    Py_ssize_t gate_stride, state_stride;
    float *gates; /* [MAX_ROWS, gate_stride >= 4H + 8]: the tail stays zero */
    float *h;     /* [MAX_ROWS, state_stride]: h / 2 */
    float *c;     /* [MAX_ROWS, state_stride]: 2 c */
    float *x;     /* [MAX_ROWS, T]: the normalised window */
    float *forecast; /* [MAX_ROWS, steps]: before the inverse normalisation */
} Scratch;

/* One window's normalisation, as _forecast spells it in float64; x gets it as float32. */
static void normalise_row(const float *w, const Job *job, float *x, double *mu_out,
                          double *sigma_out) {
    Py_ssize_t n = job->length;
    double mu, sigma;
    if (job->norm_std > 0.0) {
        mu = job->norm_mean;
        sigma = job->norm_std;
    } else {
        double sum = 0.0, squares = 0.0;
        for (Py_ssize_t t = 0; t < n; t++) sum += (double)w[t];
        mu = sum / (double)n;
        for (Py_ssize_t t = 0; t < n; t++) {
            double d = (double)w[t] - mu;
            squares += d * d;
        }
        double magnitude = fabs(mu) > 1.0 ? fabs(mu) : 1.0;
        double floor = magnitude * job->sigma_floor;
        double deviation = sqrt(squares / (double)n);
        sigma = deviation > floor ? deviation : floor;
    }
    for (Py_ssize_t t = 0; t < n; t++) x[t] = (float)(((double)w[t] - mu) / sigma);
    *mu_out = mu;
    *sigma_out = sigma;
}

/* ---- portable C -------------------------------------------------------------------- */

static float exp_portable(float x) {
    if (x != x) return x;
    if (x < EXP_LO) x = EXP_LO;
    if (x > EXP_HI) x = EXP_HI;
    float n = (x * LOG2E + ROUNDER) - ROUNDER; /* nearest even: |x * LOG2E| < 2^22 */
    float r = x - n * LN2_HI;
    r = r - n * LN2_LO;
    float p = P0;
    p = p * r + P1;
    p = p * r + P2;
    p = p * r + P3;
    p = p * r + P4;
    p = p * r + P5;
    float y = p * (r * r) + r + 1.0f;
    union {
        uint32_t bits;
        float value;
    } scale = {(uint32_t)((int32_t)n + 127) << 23};
    return y * scale.value;
}

static float sigmoid_portable(float x) { return 1.0f / (1.0f + exp_portable(-x)); }

/* gates[j] = init(j) + sum_k h[k] W[k, j] for one row; init is bias (x NULL) or x w + b. */
static void gates_portable(const float *restrict h, Py_ssize_t depth,
                           const float *restrict matrix, const float *restrict bias,
                           const float *restrict in_weight, const float *restrict x,
                           float *restrict gates, Py_ssize_t width) {
    if (x != NULL) {
        for (Py_ssize_t j = 0; j < width; j++) gates[j] = *x * in_weight[j] + bias[j];
    } else {
        memcpy(gates, bias, (size_t)width * sizeof(float));
    }
    /* Four columns at a time in GNU C vectors (SSE2, NEON, ...): lane by lane the same
     * multiply and add as the scalar tail. */
    typedef float v4 __attribute__((vector_size(16)));
    Py_ssize_t whole = width / 4 * 4;
    for (Py_ssize_t k = 0; k < depth; k++) {
        const float hk = h[k], *row = matrix + k * width;
        const v4 hv = {hk, hk, hk, hk};
        for (Py_ssize_t j = 0; j < whole; j += 4) {
            v4 acc, w;
            memcpy(&acc, gates + j, sizeof acc);
            memcpy(&w, row + j, sizeof w);
            acc += hv * w;
            memcpy(gates + j, &acc, sizeof acc);
        }
        for (Py_ssize_t j = whole; j < width; j++) gates[j] += hk * row[j];
    }
}

/* The cell update from the gate pre-activations (see FastRollout's docs for the forms). */
static void cell_portable(const float *g, float *c, float *h, Py_ssize_t hidden, int first) {
    for (Py_ssize_t j = 0; j < hidden; j++) {
        float gi = sigmoid_portable(g[j]), gf = sigmoid_portable(g[hidden + j]);
        float gg = sigmoid_portable(g[2 * hidden + j]) - 0.5f;
        float go = sigmoid_portable(g[3 * hidden + j]);
        float cell = first ? (gi * gg) * 4.0f : c[j] * gf + (gi * gg) * 4.0f;
        c[j] = cell;
        h[j] = (sigmoid_portable(cell) - 0.5f) * go;
    }
}

static float head_portable(const float *h, const Weights *w) {
    float sum = 0.0f;
    for (Py_ssize_t j = 0; j < w->hidden; j++) sum += h[j] * w->head_weight[j];
    return sum + w->head_bias;
}

/* ---- AVX2 + FMA ---------------------------------------------------------------------- */

#if LSTM_X86
#define AVX2 __attribute__((target("avx2,fma")))

AVX2 static inline __m256 exp_avx2(__m256 x) {
    /* max(lo, x) and min(hi, .) return their second operand for NaN: NaN stays NaN. */
    x = _mm256_min_ps(_mm256_set1_ps(EXP_HI), _mm256_max_ps(_mm256_set1_ps(EXP_LO), x));
    /* n = x log2(e) rounded to nearest even by adding 1.5 * 2^23: t's low mantissa bits
     * are then n as an integer (the portable path rounds the same way). */
    __m256 t = _mm256_fmadd_ps(x, _mm256_set1_ps(LOG2E), _mm256_set1_ps(ROUNDER));
    __m256 n = _mm256_sub_ps(t, _mm256_set1_ps(ROUNDER));
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_HI), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_LO), r);
    __m256 p = _mm256_set1_ps(P0);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(P1));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(P2));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(P3));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(P4));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(P5));
    __m256 y = _mm256_add_ps(_mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r), _mm256_set1_ps(1.0f));
    /* (bits(t) + 127) << 23 = (n + 127) << 23: the exponent-field bits of t shift out. */
    __m256i bits = _mm256_slli_epi32(
        _mm256_add_epi32(_mm256_castps_si256(t), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(y, _mm256_castsi256_ps(bits));
}

AVX2 static inline __m256 sigmoid_avx2(__m256 x) {
    __m256 one = _mm256_set1_ps(1.0f);
    __m256 e = exp_avx2(_mm256_xor_ps(x, _mm256_set1_ps(-0.0f)));
    return _mm256_div_ps(one, _mm256_add_ps(one, e));
}

/* A rows x chunks register tile of the gates: rows of h from h (stride hs), 8-float
 * column chunks from col; init is bias, or fma(x[r], in_weight, bias) when x is given.
 * It stores sigmoid(gates): a dozen independent exps in flight instead of the cell
 * loop's four (about a third less time for the sigmoids). */
AVX2 static inline __attribute__((always_inline)) void tile(
    const int rows, const int chunks, const float *h, Py_ssize_t hs, Py_ssize_t depth,
    const float *matrix, Py_ssize_t width, const float *bias, const float *in_weight,
    const float *x, float *gates, Py_ssize_t gs, Py_ssize_t col) {
    __m256 acc[MAX_ROWS][8];
#pragma GCC unroll 8
    for (int q = 0; q < chunks; q++) {
        __m256 b = _mm256_loadu_ps(bias + col + 8 * q);
        __m256 w = x != NULL ? _mm256_loadu_ps(in_weight + col + 8 * q) : b;
#pragma GCC unroll 4
        for (int r = 0; r < rows; r++)
            acc[r][q] = x != NULL ? _mm256_fmadd_ps(_mm256_set1_ps(x[r]), w, b) : b;
    }
    for (Py_ssize_t k = 0; k < depth; k++) {
        const float *row = matrix + k * width + col;
        __m256 hk[MAX_ROWS];
#pragma GCC unroll 4
        for (int r = 0; r < rows; r++) hk[r] = _mm256_broadcast_ss(h + r * hs + k);
#pragma GCC unroll 8
        for (int q = 0; q < chunks; q++) {
            __m256 w = _mm256_loadu_ps(row + 8 * q);
#pragma GCC unroll 4
            for (int r = 0; r < rows; r++) acc[r][q] = _mm256_fmadd_ps(hk[r], w, acc[r][q]);
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < rows; r++)
#pragma GCC unroll 8
        for (int q = 0; q < chunks; q++)
            _mm256_storeu_ps(gates + r * gs + col + 8 * q, sigmoid_avx2(acc[r][q]));
}

typedef void (*TileFn)(const float *, Py_ssize_t, Py_ssize_t, const float *, Py_ssize_t,
                       const float *, const float *, const float *, float *, Py_ssize_t,
                       Py_ssize_t);

#define DEFINE_TILE(R, C)                                                                      \
    AVX2 static void tile_##R##_##C(const float *h, Py_ssize_t hs, Py_ssize_t depth,            \
                                    const float *matrix, Py_ssize_t width, const float *bias, \
                                    const float *in_weight, const float *x, float *gates,     \
                                    Py_ssize_t gs, Py_ssize_t col) {                           \
        tile(R, C, h, hs, depth, matrix, width, bias, in_weight, x, gates, gs, col);           \
    }
DEFINE_TILE(1, 1) DEFINE_TILE(1, 2) DEFINE_TILE(1, 3) DEFINE_TILE(1, 4)
DEFINE_TILE(1, 5) DEFINE_TILE(1, 6) DEFINE_TILE(1, 7) DEFINE_TILE(1, 8)
DEFINE_TILE(2, 1) DEFINE_TILE(2, 2) DEFINE_TILE(2, 3) DEFINE_TILE(2, 4)
DEFINE_TILE(2, 5) DEFINE_TILE(2, 6)
DEFINE_TILE(3, 1) DEFINE_TILE(3, 2) DEFINE_TILE(3, 3) DEFINE_TILE(3, 4)

/* tiles[rows - 1][chunks - 1]; the widest tile of each row count keeps its accumulators,
 * broadcasts and one weight chunk in the 16 ymm registers (3 rows x 4 chunks: 12 + 3 + 1;
 * 4 rows x 3 chunks would spill one accumulator per k). */
static const int widest[MAX_ROWS] = {8, 6, 4};
static const TileFn tiles[MAX_ROWS][8] = {
    {tile_1_1, tile_1_2, tile_1_3, tile_1_4, tile_1_5, tile_1_6, tile_1_7, tile_1_8},
    {tile_2_1, tile_2_2, tile_2_3, tile_2_4, tile_2_5, tile_2_6, NULL, NULL},
    {tile_3_1, tile_3_2, tile_3_3, tile_3_4, NULL, NULL, NULL, NULL},
};

/* sigmoid(gates) of `rows` rows: whole 8-column chunks in tiles, the last width % 8
 * columns (odd H) with scalar fma in the same order and the same vector sigmoid. */
AVX2 static void gates_avx2(int rows, const float *h, Py_ssize_t hs, Py_ssize_t depth,
                            const float *matrix, Py_ssize_t width, const float *bias,
                            const float *in_weight, const float *x, float *gates, Py_ssize_t gs) {
    Py_ssize_t chunks = width / 8, col = 0;
    const int step = widest[rows - 1];
    for (; chunks >= step; chunks -= step, col += 8 * step)
        tiles[rows - 1][step - 1](h, hs, depth, matrix, width, bias, in_weight, x, gates, gs, col);
    if (chunks > 0) {
        tiles[rows - 1][chunks - 1](h, hs, depth, matrix, width, bias, in_weight, x, gates, gs, col);
        col += 8 * chunks;
    }
    for (int r = 0; r < rows; r++)
        for (Py_ssize_t j = col; j < width; j++) {
            float acc = x != NULL ? fmaf(x[r], in_weight[j], bias[j]) : bias[j];
            for (Py_ssize_t k = 0; k < depth; k++) acc = fmaf(h[r * hs + k], matrix[k * width + j], acc);
            gates[r * gs + j] = _mm256_cvtss_f32(sigmoid_avx2(_mm256_set1_ps(acc)));
        }
}

/* The cell update from sigmoid(gates), 8 hidden units at a time; the padding lanes past
 * H compute junk that nothing reads (the scratch rows are padded, so every load stays
 * inside them). */
AVX2 static void cell_avx2(const float *g, float *c, float *h, Py_ssize_t hidden, int first) {
    const __m256 half = _mm256_set1_ps(0.5f), four = _mm256_set1_ps(4.0f);
    for (Py_ssize_t j = 0; j < hidden; j += 8) {
        __m256 gi = _mm256_loadu_ps(g + j);
        __m256 gf = _mm256_loadu_ps(g + hidden + j);
        __m256 gg = _mm256_sub_ps(_mm256_loadu_ps(g + 2 * hidden + j), half);
        __m256 go = _mm256_loadu_ps(g + 3 * hidden + j);
        __m256 ig = _mm256_mul_ps(gi, gg);
        /* 4 * ig is exact, so the fma rounds as c * gf + 4 * ig does. */
        __m256 cell = first ? _mm256_mul_ps(ig, four)
                            : _mm256_fmadd_ps(ig, four, _mm256_mul_ps(_mm256_loadu_ps(c + j),
                                                                      gf));
        _mm256_storeu_ps(c + j, cell);
        _mm256_storeu_ps(h + j, _mm256_mul_ps(_mm256_sub_ps(sigmoid_avx2(cell), half), go));
    }
}

AVX2 static float head_avx2(const float *h, const Weights *w) {
    __m256 acc = _mm256_setzero_ps();
    Py_ssize_t j = 0;
    for (; j + 8 <= w->hidden; j += 8)
        acc = _mm256_fmadd_ps(_mm256_loadu_ps(h + j), _mm256_loadu_ps(w->head_weight + j), acc);
    __m128 four = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    __m128 two = _mm_add_ps(four, _mm_movehl_ps(four, four));
    float sum = _mm_cvtss_f32(_mm_add_ss(two, _mm_shuffle_ps(two, two, 1)));
    for (; j < w->hidden; j++) sum = fmaf(h[j], w->head_weight[j], sum);
    return sum + w->head_bias;
}
#endif

/* ---- the rollout --------------------------------------------------------------------- */

static int avx2_available = 0;

/* One cell step of `rows` rows from their scratch state (first: from a zero state); x
 * the rows' input values, or NULL for a feedback step (the head's prediction as input). */
static void step_rows(int rows, const Weights *w, Scratch *s, const float *x, int first,
                      int use_avx2) {
    Py_ssize_t H = w->hidden, G = w->gates, gs = s->gate_stride, hs = s->state_stride;
    Py_ssize_t depth = first ? 0 : H;
    const float *matrix = x != NULL ? w->recurrent : w->feedback;
    const float *bias = x != NULL ? w->input_bias : w->feedback_bias;
#if LSTM_X86
    if (use_avx2) {
        gates_avx2(rows, s->h, hs, depth, matrix, G, bias, w->input_weight, x, s->gates, gs);
        for (int r = 0; r < rows; r++) cell_avx2(s->gates + r * gs, s->c + r * hs, s->h + r * hs, H, first);
        return;
    }
#endif
    (void)use_avx2;
    for (int r = 0; r < rows; r++) {
        gates_portable(s->h + r * hs, depth, matrix, bias, w->input_weight, x ? x + r : NULL,
                       s->gates + r * gs, G);
        cell_portable(s->gates + r * gs, s->c + r * hs, s->h + r * hs, H, first);
    }
}

static float head(const float *h, const Weights *w, int use_avx2) {
#if LSTM_X86
    if (use_avx2) return head_avx2(h, w);
#endif
    (void)use_avx2;
    return head_portable(h, w);
}

/* The feedback rollout of `rows` rows from their state after the last input value: the
 * head's prediction of each step into s->forecast[r * steps + k]. */
static void roll_rows(int rows, Py_ssize_t steps, const Weights *w, Scratch *s, int use_avx2) {
    for (Py_ssize_t k = 0; k < steps; k++) {
        if (k > 0) step_rows(rows, w, s, NULL, 0, use_avx2);
        for (int r = 0; r < rows; r++)
            s->forecast[r * steps + k] = head(s->h + r * s->state_stride, w, use_avx2);
    }
}

/* Rows b0 .. b0 + rows - 1 of a forecast job, from their windows to their forecasts. */
static void forecast_rows(Py_ssize_t b0, int rows, const Job *job, const Weights *w,
                          Scratch *s, int use_avx2) {
    Py_ssize_t T = job->length, S = job->steps;
    double mu[MAX_ROWS], sigma[MAX_ROWS];
    float column[MAX_ROWS];
    for (int r = 0; r < rows; r++)
        normalise_row(job->windows + (b0 + r) * T, job, s->x + r * T, &mu[r], &sigma[r]);
    for (Py_ssize_t t = 0; t < T; t++) {
        for (int r = 0; r < rows; r++) column[r] = s->x[r * T + t];
        step_rows(rows, w, s, column, t == 0, use_avx2);
    }
    roll_rows(rows, S, w, s, use_avx2);
    for (int r = 0; r < rows; r++)
        for (Py_ssize_t k = 0; k < S; k++)
            job->out[(b0 + r) * S + k] = (float)((double)s->forecast[r * S + k] * sigma[r] + mu[r]);
}

/* Rows b0 .. b0 + rows - 1 of a stream step job: one input step from the carried (h, c),
 * the new state out, then the rollout (FastRollout.step's operations). */
static void stream_rows(Py_ssize_t b0, int rows, const Job *job, const Weights *w, Scratch *s,
                        int use_avx2) {
    Py_ssize_t H = w->hidden, S = job->steps, hs = s->state_stride;
    for (int r = 0; r < rows; r++) {
        const float *h = job->h + (b0 + r) * H, *c = job->c + (b0 + r) * H;
        /* The carried state is h / 2 and 2c (exact: powers of two). */
        for (Py_ssize_t j = 0; j < H; j++) {
            s->h[r * hs + j] = h[j] * 0.5f;
            s->c[r * hs + j] = c[j] * 2.0f;
        }
    }
    step_rows(rows, w, s, job->x + b0, 0, use_avx2);
    for (int r = 0; r < rows; r++) {
        float *h = job->new_h + (b0 + r) * H, *c = job->new_c + (b0 + r) * H;
        for (Py_ssize_t j = 0; j < H; j++) {
            h[j] = s->h[r * hs + j] * 2.0f;
            c[j] = s->c[r * hs + j] * 0.5f;
        }
    }
    roll_rows(rows, S, w, s, use_avx2);
    memcpy(job->out + b0 * S, s->forecast, (size_t)(rows * S) * sizeof(float));
}

/* The whole job; 0, or -1 when the scratch could not be allocated. No Python calls. */
static int run(const Job *job, const Weights *w, int use_avx2) {
    Scratch s;
    Py_ssize_t padded = (w->hidden + 7) / 8 * 8;
    s.gate_stride = w->gates + 8 + (8 - w->gates % 8) % 8;
    s.state_stride = padded;
    size_t floats = (size_t)(MAX_ROWS * (s.gate_stride + 2 * padded + job->length + job->steps));
    float *block = calloc(floats, sizeof(float));
    if (block == NULL) return -1;
    s.gates = block;
    s.h = s.gates + MAX_ROWS * s.gate_stride;
    s.c = s.h + MAX_ROWS * padded;
    s.x = s.c + MAX_ROWS * padded;
    s.forecast = s.x + MAX_ROWS * job->length;
    int rows = use_avx2 ? MAX_ROWS : 1;
    for (Py_ssize_t b0 = 0; b0 < job->batch; b0 += rows) {
        Py_ssize_t left = job->batch - b0;
        int block_rows = left < rows ? (int)left : rows;
        if (job->windows != NULL)
            forecast_rows(b0, block_rows, job, w, &s, use_avx2);
        else
            stream_rows(b0, block_rows, job, w, &s, use_avx2);
    }
    free(block);
    return 0;
}

/* ---- the Python functions ------------------------------------------------------------ */

typedef struct {
    const char *name;
    int ndim, writable;
} Spec;

#define WEIGHTS 6
static const Spec weight_specs[WEIGHTS] = {
    {"input_weight", 1, 0}, {"input_bias", 1, 0},    {"recurrent", 2, 0},
    {"feedback", 2, 0},     {"feedback_bias", 1, 0}, {"head_weight", 1, 0},
};
#define FORECAST_ARRAYS 2
static const Spec forecast_specs[FORECAST_ARRAYS] = {{"windows", 2, 0}, {"out", 2, 1}};
#define STEP_ARRAYS 6
static const Spec step_specs[STEP_ARRAYS] = {
    {"x", 1, 0}, {"h", 2, 0}, {"c", 2, 0}, {"out", 2, 1}, {"new_h", 2, 1}, {"new_c", 2, 1},
};
#define MAX_ARRAYS (STEP_ARRAYS + WEIGHTS)

/* view of obj as a C-contiguous native float32 array as spec says, or ValueError. */
static int get_array(PyObject *obj, const Spec *spec, Py_buffer *view) {
    if (PyObject_GetBuffer(obj, view, PyBUF_RECORDS_RO) < 0) return -1;
    const char *format = view->format != NULL ? view->format : "B";
    const char *problem = NULL;
    if (view->itemsize != 4 || !(strcmp(format, "f") == 0 || strcmp(format, "=f") == 0 ||
                                 strcmp(format, "<f") == 0))
        problem = "must be float32";
    else if (view->ndim != spec->ndim)
        problem = spec->ndim == 1 ? "must have 1 dimension" : "must have 2 dimensions";
    else if (!PyBuffer_IsContiguous(view, 'C'))
        problem = "must be C-contiguous";
    else if (spec->writable && view->readonly)
        problem = "must be writable";
    if (problem == NULL) return 0;
    PyErr_Format(PyExc_ValueError, "lstm kernel: %s %s (format '%s', %d dimensions)",
                 spec->name, problem, format, view->ndim);
    PyBuffer_Release(view);
    return -1;
}

/* The weights' shapes fit together (H from recurrent); fills w. NULL, or the problem. */
static const char *check_weights(const Py_buffer *v, Weights *w) {
    Py_ssize_t H = v[2].shape[0], G = v[2].shape[1];
    if (H < 1 || G != 4 * H) return "recurrent must be [H, 4H] with H >= 1";
    if (v[3].shape[0] != H || v[3].shape[1] != G)
        return "feedback must have recurrent's shape [H, 4H]";
    if (v[0].shape[0] != G || v[1].shape[0] != G || v[4].shape[0] != G)
        return "input_weight, input_bias and feedback_bias must have 4H values";
    if (v[5].shape[0] != H) return "head_weight must have H values";
    w->hidden = H;
    w->gates = G;
    w->input_weight = v[0].buf;
    w->input_bias = v[1].buf;
    w->recurrent = v[2].buf;
    w->feedback = v[3].buf;
    w->feedback_bias = v[4].buf;
    w->head_weight = v[5].buf;
    return NULL;
}

/* A writable view that shares memory with any other view, or NULL. */
static const char *check_overlaps(const Py_buffer *v, const Spec *const *specs, int n) {
    for (int i = 0; i < n; i++) {
        if (!specs[i]->writable) continue;
        const char *start = v[i].buf, *end = start + v[i].len;
        for (int j = 0; j < n; j++) {
            const char *other = v[j].buf, *other_end = other + v[j].len;
            if (j != i && start < other_end && other < end) return specs[i]->name;
        }
    }
    return NULL;
}

/* The forecast job's shapes (windows [B, T], out [B, steps]); NULL, or the problem. */
static const char *check_forecast(const Py_buffer *v, Job *job) {
    Py_ssize_t B = v[0].shape[0], T = v[0].shape[1];
    if (T < 1 || v[1].shape[1] < 1)
        return "need at least one input value (windows' columns) and one step (out's columns)";
    if (v[1].shape[0] != B) return "out must have one row per window";
    job->batch = B;
    job->length = T;
    job->steps = v[1].shape[1];
    job->windows = v[0].buf;
    job->out = v[1].buf;
    return NULL;
}

/* The stream step job's shapes (x [B]; h, c, new_h, new_c [B, H]; out [B, steps]). */
static const char *check_step(const Py_buffer *v, Py_ssize_t H, Job *job) {
    Py_ssize_t B = v[0].shape[0];
    for (int i = 1; i < STEP_ARRAYS; i++)
        if (i != 3 && (v[i].shape[0] != B || v[i].shape[1] != H))
            return "h, c, new_h and new_c must be [B, H]: one row per value of x";
    if (v[3].shape[0] != B || v[3].shape[1] < 1)
        return "out must be [B, steps] with steps >= 1: one row per value of x";
    job->batch = B;
    job->length = 0;
    job->steps = v[3].shape[1];
    job->x = v[0].buf;
    job->h = v[1].buf;
    job->c = v[2].buf;
    job->out = v[3].buf;
    job->new_h = v[4].buf;
    job->new_c = v[5].buf;
    return NULL;
}

/* Take the n arrays (the job's, then the weights), check them, run without the GIL. */
static PyObject *compute(PyObject *const *objects, const Spec *job_specs, int n_job, Job *job,
                         double head_bias, int portable) {
    Py_buffer views[MAX_ARRAYS];
    const Spec *specs[MAX_ARRAYS];
    Weights w;
    int n = n_job + WEIGHTS, got = 0, status = -1;
    const char *problem = NULL;
    for (int i = 0; i < n; i++) specs[i] = i < n_job ? &job_specs[i] : &weight_specs[i - n_job];
    for (; got < n; got++)
        if (get_array(objects[got], specs[got], &views[got]) < 0) goto done;
    problem = check_weights(views + n_job, &w);
    if (problem == NULL)
        problem = n_job == FORECAST_ARRAYS ? check_forecast(views, job)
                                           : check_step(views, w.hidden, job);
    const char *overlapping = problem == NULL ? check_overlaps(views, specs, n) : NULL;
    if (overlapping != NULL) {
        PyErr_Format(PyExc_ValueError, "lstm kernel: %s must not overlap another array",
                     overlapping);
        goto done;
    }
    if (problem != NULL) {
        PyErr_Format(PyExc_ValueError, "lstm kernel: %s", problem);
        goto done;
    }
    w.head_bias = (float)head_bias;
    int use_avx2 = avx2_available && !portable;
    Py_BEGIN_ALLOW_THREADS
    status = run(job, &w, use_avx2);
    Py_END_ALLOW_THREADS
    if (status < 0) PyErr_NoMemory();
done:
    for (int i = 0; i < got; i++) PyBuffer_Release(&views[i]);
    if (status < 0) return NULL;
    Py_RETURN_NONE;
}

static PyObject *forecast(PyObject *self, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {"windows",      "out",        "norm_mean",     "norm_std",
                               "sigma_floor",  "input_weight", "input_bias", "recurrent",
                               "feedback",     "feedback_bias", "head_weight", "head_bias",
                               "portable",     NULL};
    PyObject *o[FORECAST_ARRAYS + WEIGHTS];
    Job job = {0};
    double head_bias;
    int portable = 0;
    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOdddOOOOOOd|p:forecast", keywords, &o[0],
                                     &o[1], &job.norm_mean, &job.norm_std, &job.sigma_floor,
                                     &o[2], &o[3], &o[4], &o[5], &o[6], &o[7], &head_bias,
                                     &portable))
        return NULL;
    return compute(o, forecast_specs, FORECAST_ARRAYS, &job, head_bias, portable);
}

static PyObject *step(PyObject *self, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {"x",           "h",          "c",          "out",
                               "new_h",       "new_c",      "input_weight", "input_bias",
                               "recurrent",   "feedback",   "feedback_bias", "head_weight",
                               "head_bias",   "portable",   NULL};
    PyObject *o[STEP_ARRAYS + WEIGHTS];
    Job job = {0};
    double head_bias;
    int portable = 0;
    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOOOOOOOOOOd|p:step", keywords, &o[0],
                                     &o[1], &o[2], &o[3], &o[4], &o[5], &o[6], &o[7], &o[8],
                                     &o[9], &o[10], &o[11], &head_bias, &portable))
        return NULL;
    return compute(o, step_specs, STEP_ARRAYS, &job, head_bias, portable);
}

static PyMethodDef methods[] = {
    {"forecast", (PyCFunction)(void (*)(void))forecast, METH_VARARGS | METH_KEYWORDS,
     "forecast(windows, out, norm_mean, norm_std, sigma_floor, input_weight, input_bias, "
     "recurrent, feedback, feedback_bias, head_weight, head_bias, portable=False): "
     "lstm_timeseries' normalised rollout of float32 windows [B, T] into out [B, steps]."},
    {"step", (PyCFunction)(void (*)(void))step, METH_VARARGS | METH_KEYWORDS,
     "step(x, h, c, out, new_h, new_c, input_weight, input_bias, recurrent, feedback, "
     "feedback_bias, head_weight, head_bias, portable=False): FastRollout.step of the "
     "normalised values x [B] from (h, c) [B, H]: forecasts into out [B, steps], the state "
     "after x into new_h, new_c."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_lstmkernel",
    .m_doc = "The lstm_timeseries forward pass in C (AVX2+FMA when the CPU has it).",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__lstmkernel(void) {
#if LSTM_X86
    __builtin_cpu_init();
    avx2_available = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && PyModule_AddIntConstant(m, "AVX2", avx2_available) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
