// What both normalization kernels share: the parameter block, the fixed options, the
// input (with the fused residual add) and the final store. Composed after the element
// layout and the reduction, before rmsnorm.wgsl or layernorm.wgsl, so that both run on one
// host path.

struct Params {
    // Rows in this dispatch.
    rows: u32,
    // Row length in Elems (n / LANES; the most Elems a row covers with rows_masked.wgsl).
    row_len: u32,
    // Elements (scalars, not Elems) in the RMS: k of pRMSNorm, n for RMSNorm and LayerNorm.
    k: u32,
    // k as f32, rounded on the host.
    k_f32: f32,
    eps: f32,
    // Offsets, in Elems, of row 0 inside each bound range (the binding starts at an offset
    // aligned down to minStorageBufferOffsetAlignment).
    x_base: u32,
    y_base: u32,
    gain_base: u32,
    bias_base: u32,
    // The residual r and the stored sum h = x + r (r_base again when h is written over r).
    r_base: u32,
    sum_base: u32,
    // Split rows (RMSNorm) only: workgroups per row, and the Elems each covers of the first k
    // (k_chunk_len) and of the whole row (chunk_len).
    chunks: u32,
    k_chunk_len: u32,
    chunk_len: u32,
    // Saved statistics: the word of this dispatch's row 0 in the bound range.
    stats_base: u32,
    // Backward only: dy and the gradient of the stored sum h (Elems, like x_base).
    dy_base: u32,
    dsum_base: u32,
    // Backward only: whether an earlier dispatch of the call wrote the partial rows of dgain
    // and dbias (1; 0 for the first, which writes them), the partial rows (one per workgroup
    // of the call's first dispatch, the most of any), and the Elem bases of dgain and dbias.
    partials_written: u32,
    partial_rows: u32,
    dgain_base: u32,
    dbias_base: u32,
    // Rows at any element (rows_masked.wgsl) only: the row length in elements, the lane of
    // Elem 0 where row 0 starts, and the lanes where the gain's and the bias's element 0
    // lie in their Elems at gain_base and bias_base.
    hidden: u32,
    row_phase: u32,
    gain_phase: u32,
    bias_phase: u32,
}

// Fixed per pipeline.
// y = x / rms * (1 + g) instead of x / rms * g.
override GAIN_PLUS_ONE: bool = false;
// true: y = x / sqrt(mean + eps). false: y = x / (sqrt(mean) + eps). (LayerNorm: always.)
override EPS_INSIDE_ROOT: bool = true;

@group(0) @binding(0) var<uniform> params: Params;

// The tensors are reached through accessors the host writes for each module from the
// call's storage formats (src/shaders.rs, `tensor_code`): `x_load`, `r_load`, `gain_load`,
// `bias_load` (Elem i of the binding, converted exactly to f32), `y_store` (rounded once to
// the stored format), `sum_store` (of values of the format already), `act_round` (an Elem
// rounded to the activations' format), and the constants HAS_GAIN, HAS_BIAS, HAS_RESIDUAL,
// STORES_SUM, SUM_OVER_R (the sum is stored over r); `stats_store`/`stats_load` (word j of
// a row's saved statistics) with STORES_STATS (forward) and LOADS_STATS (backward); in the
// backward `dy_load`, `dsum_load` (HAS_GRAD_SUM), `weight_partial_add`/`_load` and
// `grad_gain_store`/`grad_bias_store` (f32), `y_store` writing dx.
// Tensors a module does not have are not declared at all, so they are never bound.

// Elem `at` of the normalized input (`at` counts from row 0 of the dispatch): x, or with the
// residual h = x + r, added in f32 and rounded to the activations' format, so that the
// fused kernel normalizes exactly the h an add kernel would have stored. Lanes outside the
// row last begun (rows_masked.wgsl) are zero.
fn load_input(at: u32) -> Elem {
    return keep_in_row(at, load_inner(at));
}

// Elem `at` of the input with no lane zeroed: for the Elems of a row's body (row_body), all
// of whose lanes are the row's.
fn load_inner(at: u32) -> Elem {
    var h = x_load(params.x_base + at);
    if (HAS_RESIDUAL) {
        h = act_round(h + r_load(params.r_base + at));
    }
    return h;
}

// The Elems of [begin, end) in the row's body: a row's loops take [begin, x) and [y, end)
// with masks (rows at any element: at most its first and last Elem), [x, y) without.
fn inner_range(begin: u32, end: u32) -> vec2<u32> {
    let body = row_body();
    let x = clamp(body.x, begin, end);
    return vec2<u32>(x, clamp(body.y, x, end));
}

// Elem `at` of the input in the last pass over it, stored as the sum h where the call
// stores it. Every pass computes h from x and r: storing it in the first pass and reading it
// back in the last (5n elements moved instead of 6n in a row read twice) made the fused
// kernel 1.35x slower than an add kernel and RMSNorm on SwiftShader (1024 x 4096 f32, 135
// against 100 ms), where computing it again made it 1.55x faster (67 against 104 ms, the
// same test run again). Rows read once (GPUs) move 4n.
// `inner`: Elem `at` lies in the row's body (a constant at every call).
fn load_input_storing_sum(at: u32, inner: bool) -> Elem {
    if (inner) {
        let h = load_inner(at);
        if (STORES_SUM) {
            sum_store(params.sum_base + at, h);
        }
        return h;
    }
    let h = load_input(at);
    if (STORES_SUM) {
        put_sum(at, h);
    }
    return h;
}

// Element i of a row's output (the row's Elems start at `row_offset`) from its normalized
// value: gain, bias, store (`inner`: Elem i lies in the row's body, a constant at every
// call).
fn store(row_offset: u32, i: u32, normalized: Elem, inner: bool) {
    var v = normalized;
    if (HAS_GAIN) {
        let g = gain_at(i);
        if (GAIN_PLUS_ONE) {
            v = v * (g + 1.0);
        } else {
            v = v * g;
        }
    }
    if (HAS_BIAS) {
        v = v + bias_at(i);
    }
    if (inner) {
        y_store(params.y_base + row_offset + i, v);
    } else {
        put_y(row_offset + i, v);
    }
}

// The last pass over a row: y = t(h) * g + b for Elems begin + lane, begin + lane +
// ROW_STRIDE, ... below end of one row (h the input, stored too where the call stores the
// sum), t(h) = ((h - t.x) - t.y) * t.z with `centered` (LayerNorm: shift, mean, scale), else
// (h * t.z) * t.w (RMSNorm's two factors); `centered` is a constant at every call. The row's
// body unmasked, the Elems around it masked.
fn write_row(row_offset: u32, lane: u32, begin: u32, end: u32, t: vec4<f32>, centered: bool) {
    let inner = inner_range(begin, end);
    for (var i = begin + lane; i < inner.x; i = i + ROW_STRIDE) {
        write_elem(row_offset, i, t, centered, false);
    }
    for (var i = inner.x + lane; i < inner.y; i = i + ROW_STRIDE) {
        write_elem(row_offset, i, t, centered, true);
    }
    for (var i = inner.y + lane; i < end; i = i + ROW_STRIDE) {
        write_elem(row_offset, i, t, centered, false);
    }
}

fn write_elem(row_offset: u32, i: u32, t: vec4<f32>, centered: bool, inner: bool) {
    let h = load_input_storing_sum(row_offset + i, inner);
    var normalized: Elem;
    if (centered) {
        normalized = ((h - t.x) - t.y) * t.z;
    } else {
        normalized = (h * t.z) * t.w;
    }
    store(row_offset, i, normalized, inner);
}

// The read-once kernels' cache (RMSNorm's and LayerNorm's): Elem i of the row whose Elems
// start at `row_offset`, or zero past the row's end.
fn load_in_row(row_offset: u32, i: u32) -> Elem {
    var v = Elem(0.0);
    if (i < row_elems()) {
        v = load_input(row_offset + i);
    }
    return v;
}

// Stores Elem i of a row from its input h (where the call stores the sum) and normalized
// value, if the row has it.
fn store_in_row(row_offset: u32, i: u32, h: Elem, normalized: Elem) {
    if (i < row_elems()) {
        if (STORES_SUM) {
            put_sum(row_offset + i, h);
        }
        store(row_offset, i, normalized, false);
    }
}

// Split rows (a few long rows, each across params.chunks workgroups): the Elems [begin, end)
// of piece g % chunks of its row, empty for the last pieces of a row shorter than
// chunks * chunk_len (a short row split in 8: 9 Elems leave pieces 5 to 7 empty).
// (Of the row last begun.)
fn piece_range(g: u32) -> vec2<u32> {
    let begin = min((g % params.chunks) * params.chunk_len, row_elems());
    return vec2<u32>(begin, min(begin + params.chunk_len, row_elems()));
}
