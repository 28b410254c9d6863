/* The row functions of _cellmath.h, written once for the type FR_T (included twice).
 *
 * Forward: `a` holds a row's input projection W_ih x on entry (bias not yet added) and
 * its saved activations on exit; `gh` is the recurrent projection W_hh h of the row.
 * Backward: from dh (the total gradient at h_t) to dg, the gradients of the gate
 * pre-activations, with derivatives taken from the saved outputs:
 * d sigmoid = y (1 - y), d tanh = 1 - y^2. Layouts of `a` and `dg` are in _kernels.pyx. */

/* In place: v holds the row's input projection on entry and the new state h on exit. */
static void FR_NAME(rnn_row)(int relu, ptrdiff_t H, FR_T *restrict v,
                                       const FR_T *restrict gh, const FR_T *restrict bias)
{
    for (ptrdiff_t j = 0; j < H; j++) {
        FR_T u = v[j] + gh[j] + bias[j];
        v[j] = relu ? (u < 0 ? 0 : u) : FR_TANH(u); /* NaN stays NaN, as in torch */
    }
}

/* lstm_row and gru_after_row compute units [0, n) of gate blocks H apart (n = H but for
 * a thread's share of the units; pointers then start at its first unit). */
static void FR_NAME(lstm_row)(ptrdiff_t H, ptrdiff_t n, FR_T *restrict a,
                                        const FR_T *restrict gh, const FR_T *restrict bias,
                                        FR_T *restrict c, FR_T *restrict m)
{
    for (ptrdiff_t j = 0; j < n; j++) {
        FR_T i = FR_SIGMOID(a[j] + gh[j] + bias[j]);
        FR_T f = FR_SIGMOID(a[H + j] + gh[H + j] + bias[H + j]);
        FR_T g = FR_TANH(a[2 * H + j] + gh[2 * H + j] + bias[2 * H + j]);
        FR_T o = FR_SIGMOID(a[3 * H + j] + gh[3 * H + j] + bias[3 * H + j]);
        FR_T cn = f * c[j] + i * g;
        a[j] = i;
        a[H + j] = f;
        a[2 * H + j] = g;
        a[3 * H + j] = o;
        c[j] = cn;
        m[j] = o * FR_TANH(cn);
    }
}

static void FR_NAME(gru_after_row)(ptrdiff_t H, ptrdiff_t n, FR_T *restrict a,
                                             const FR_T *restrict gh,
                                             const FR_T *restrict bias,
                                             const FR_T *restrict b_hn,
                                             const FR_T *restrict hprev, FR_T *restrict hnew)
{
    for (ptrdiff_t j = 0; j < n; j++) {
        FR_T r = FR_SIGMOID(a[j] + gh[j] + bias[j]);
        FR_T z = FR_SIGMOID(a[H + j] + gh[H + j] + bias[H + j]);
        FR_T hn = gh[2 * H + j] + b_hn[j];
        FR_T n = FR_TANH(a[2 * H + j] + bias[2 * H + j] + r * hn);
        a[j] = r;
        a[H + j] = z;
        a[2 * H + j] = n;
        a[3 * H + j] = hn;
        hnew[j] = (1 - z) * n + z * hprev[j];
    }
}

/* Reset-before GRU, first half: r, z and rh = r * h_prev, the input of W_hn. */
static void FR_NAME(gru_before_gates)(ptrdiff_t H, FR_T *restrict a,
                                                const FR_T *restrict gh,
                                                const FR_T *restrict bias,
                                                const FR_T *restrict hprev)
{
    for (ptrdiff_t j = 0; j < H; j++) {
        FR_T r = FR_SIGMOID(a[j] + gh[j] + bias[j]);
        a[j] = r;
        a[H + j] = FR_SIGMOID(a[H + j] + gh[H + j] + bias[H + j]);
        a[3 * H + j] = r * hprev[j];
    }
}

/* Second half: n = tanh(x_n + W_hn rh + b_in + b_hn) and the new state. */
static void FR_NAME(gru_before_out)(ptrdiff_t H, FR_T *restrict a,
                                              const FR_T *restrict ghn,
                                              const FR_T *restrict bias,
                                              const FR_T *restrict hprev,
                                              FR_T *restrict hnew)
{
    for (ptrdiff_t j = 0; j < H; j++) {
        FR_T z = a[H + j];
        FR_T n = FR_TANH(a[2 * H + j] + ghn[j] + bias[2 * H + j]);
        a[2 * H + j] = n;
        hnew[j] = (1 - z) * n + z * hprev[j];
    }
}

static void FR_NAME(rnn_drow)(int relu, ptrdiff_t H, const FR_T *restrict h,
                                        const FR_T *restrict dh, FR_T *restrict dg)
{
    for (ptrdiff_t j = 0; j < H; j++)
        /* relu: a product, not a choice, so that a NaN gradient stays NaN (as in the
         * reference and torch) */
        dg[j] = relu ? dh[j] * (FR_T)(h[j] > 0) : dh[j] * (1 - h[j] * h[j]);
}

/* dc carries dL/dc_t in and dL/dc_{t-1} out; dm is dL/dm_t, m = o * tanh(c_t). */
/* lstm_drow and gru_after_drow: units [0, n) of gate blocks H apart, as lstm_row. */
static void FR_NAME(lstm_drow)(ptrdiff_t H, ptrdiff_t n, const FR_T *restrict a,
                                         const FR_T *restrict c, const FR_T *restrict cprev,
                                         const FR_T *restrict dm, FR_T *restrict dc,
                                         FR_T *restrict dg)
{
    for (ptrdiff_t j = 0; j < n; j++) {
        FR_T i = a[j], f = a[H + j], g = a[2 * H + j], o = a[3 * H + j];
        FR_T tc = FR_TANH(c[j]);
        FR_T dct = dc[j] + dm[j] * o * (1 - tc * tc);
        dg[j] = dct * g * i * (1 - i);
        dg[H + j] = dct * cprev[j] * f * (1 - f);
        dg[2 * H + j] = dct * i * (1 - g * g);
        dg[3 * H + j] = dm[j] * tc * o * (1 - o);
        dc[j] = dct * f;
    }
}

/* dh holds dL/dh_t in and the direct part z * dh of dL/dh_{t-1} out. */
static void FR_NAME(gru_after_drow)(ptrdiff_t H, ptrdiff_t n, const FR_T *restrict a,
                                              const FR_T *restrict hprev, FR_T *restrict dh,
                                              FR_T *restrict dg)
{
    for (ptrdiff_t j = 0; j < n; j++) {
        FR_T r = a[j], z = a[H + j], n = a[2 * H + j], hn = a[3 * H + j];
        FR_T d = dh[j];
        FR_T dn = d * (1 - z) * (1 - n * n);
        dg[j] = dn * hn * r * (1 - r);
        dg[H + j] = d * (hprev[j] - n) * z * (1 - z);
        dg[2 * H + j] = dn * r;
        dg[3 * H + j] = dn;
        dh[j] = d * z;
    }
}

/* Reset-before GRU, first half: dz and dn from dL/dh_t; dh keeps the direct part. */
static void FR_NAME(gru_before_drow1)(ptrdiff_t H, const FR_T *restrict a,
                                                const FR_T *restrict hprev,
                                                FR_T *restrict dh, FR_T *restrict dg)
{
    for (ptrdiff_t j = 0; j < H; j++) {
        FR_T z = a[H + j], n = a[2 * H + j], d = dh[j];
        dg[H + j] = d * (hprev[j] - n) * z * (1 - z);
        dg[2 * H + j] = d * (1 - z) * (1 - n * n);
        dh[j] = d * z;
    }
}

/* Second half: dr from d(rh) = dn W_hn; rh = r * h_prev also sends r * d(rh) to h_prev. */
static void FR_NAME(gru_before_drow2)(ptrdiff_t H, const FR_T *restrict a,
                                                const FR_T *restrict hprev,
                                                const FR_T *restrict drh, FR_T *restrict dh,
                                                FR_T *restrict dg)
{
    for (ptrdiff_t j = 0; j < H; j++) {
        FR_T r = a[j];
        dg[j] = drh[j] * hprev[j] * r * (1 - r);
        dh[j] += drh[j] * r;
    }
}

/* the rows of this type (and ISA, for _ktable.h) as a table */
static const FR_ROWS_TYPE FR_NAME(fr_rows) = {
    FR_NAME(rnn_row),          FR_NAME(lstm_row),         FR_NAME(gru_after_row),
    FR_NAME(gru_before_gates), FR_NAME(gru_before_out),   FR_NAME(rnn_drow),
    FR_NAME(lstm_drow),        FR_NAME(gru_after_drow),   FR_NAME(gru_before_drow1),
    FR_NAME(gru_before_drow2),
};
