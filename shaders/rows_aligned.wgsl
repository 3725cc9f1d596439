// Where a row's Elems lie, for the aligned layouts (elem_vec4.wgsl with the hidden size and
// every offset multiples of 4 elements, elem_scalar.wgsl): row r is Elems r * row_len to
// r * row_len + row_len - 1, every lane of each in the row. The kernels ask these functions
// (not params.row_len) for a row's place, so that rows_masked.wgsl can put rows at any
// element. Composed after norm_common.wgsl.

// A per-lane element count (Welford's): one count serves every lane of an Elem.
alias Count = f32;

// Row `row` of the dispatch: the Elem where it starts (relative to every tensor's base).
fn row_begin(row: u32) -> u32 {
    return row * params.row_len;
}

// Elems of the row last begun.
fn row_elems() -> u32 {
    return params.row_len;
}

// The row's Elems whose lanes all hold its elements: all of them.
fn row_body() -> vec2<u32> {
    return vec2<u32>(0u, params.row_len);
}

// Where the row's element 0 lies within its first Elem.
fn row_phase() -> u32 {
    return 0u;
}

// Elem `at` of an input with the lanes outside the row zeroed: none are.
fn keep_in_row(at: u32, v: Elem) -> Elem {
    return v;
}

// The lanes of Elem `at` in the row, counted.
fn in_row_count(at: u32) -> Count {
    return 1.0;
}

// Welford's weight of the newest element, 1 / count.
fn welford_weight(count: Count) -> Count {
    return 1.0 / count;
}

// Elements of the row in its Elems [begin, end).
fn elements_in(begin: u32, end: u32) -> u32 {
    return (end - begin) * LANES;
}

// Three elements of the row at `row_offset` (its start, middle and end), for LayerNorm's
// shift.
fn row_shift_samples(row_offset: u32) -> vec3<f32> {
    let a = elem_first(load_input(row_offset));
    let b = elem_first(load_input(row_offset + params.row_len / 2u));
    let c = elem_first(load_input(row_offset + params.row_len - 1u));
    return vec3<f32>(a, b, c);
}

// Elem i of the row's gain and bias.
fn gain_at(i: u32) -> Elem {
    return gain_load(params.gain_base + i);
}

fn bias_at(i: u32) -> Elem {
    return bias_load(params.bias_base + i);
}

// Stores Elem `at` of the output and of the sum h.
fn put_y(at: u32, v: Elem) {
    y_store(params.y_base + at, v);
}

fn put_sum(at: u32, v: Elem) {
    sum_store(params.sum_base + at, v);
}
