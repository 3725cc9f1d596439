// Rows at any element, four elements per load (elem_vec4.wgsl; f32, f16 or packed 16-bit
// storage): the hidden size and the offsets need not be multiples of 4. x, y, r and the sum
// h share one phase (their element 0 lies at the same lane of an aligned Elem), and each
// binding reaches whole Elems (the host checks both, else the call takes scalar loads).
// The dispatch's rows are one stream of elements from lane `params.row_phase` of Elem 0:
// row r's element j is element row_phase + r * hidden + j. A row covers the aligned Elems
// that hold any of its elements; in the first and last of them the lanes of the rows around
// it are zeroed on load and left alone on store (each of the row's own lanes stored alone,
// or its halves of a packed word with atomic and/or). The kernels' loops take the row's
// body a whole Elem at a time with no test, and those two Elems apart (norm_common.wgsl's
// inner_range), so no lane of another row is read into a sum or written. The gain and bias
// have phases of their own: the Elem of the row's lanes is two aligned loads shifted by the
// difference of phases (the same shift across the row). Composed after norm_common.wgsl, in
// place of rows_aligned.wgsl.

alias Count = Elem;

// The row last begun (set by row_begin): the element where it starts (row_phase + row *
// hidden), its first and last Elems, and for the gain and bias the Elem holding the weight
// of the row's Elem 0's lane 0 plus one (so that it is never negative) and the shift of
// their lanes.
var<private> row_first: u32;
var<private> row_first_elem: u32;
var<private> row_last_elem: u32;
var<private> gain_next: u32;
var<private> bias_next: u32;
var<private> weight_shift: vec2<u32>;

fn row_begin(row: u32) -> u32 {
    row_first = params.row_phase + row * params.hidden;
    row_first_elem = row_first / 4u;
    row_last_elem = (row_first + params.hidden - 1u) / 4u;
    // Lane c of the row's Elem i holds element 4 i + c - phase; the weight of element j lies
    // at lane weight_phase + j of the weights' Elems, counted from one Elem before.
    let gain_lane = params.gain_phase + 4u - row_phase();
    let bias_lane = params.bias_phase + 4u - row_phase();
    gain_next = params.gain_base + gain_lane / 4u;
    bias_next = params.bias_base + bias_lane / 4u;
    weight_shift = vec2<u32>(gain_lane % 4u, bias_lane % 4u);
    return row_first_elem;
}

fn row_phase() -> u32 {
    return row_first % 4u;
}

fn row_elems() -> u32 {
    return row_last_elem + 1u - row_first_elem;
}

// The row's Elems [x, y) that the kernels' loops take unmasked (load_inner, and stores with
// `inner`): all but its first and last, which may hold elements of the rows around it.
fn row_body() -> vec2<u32> {
    return vec2<u32>(1u, max(row_elems(), 2u) - 1u);
}

// Whether Elem `at` (of the dispatch, as load_input counts) is the row's first or last,
// which may hold elements of the rows around it: every other Elem of the row is wholly its.
fn at_row_edge(at: u32) -> bool {
    return at == row_first_elem || at == row_last_elem;
}

// Which lanes of Elem `at` hold the row's elements.
fn lanes_in_row(at: u32) -> vec4<bool> {
    let e = vec4<u32>(4u * at) + vec4<u32>(0u, 1u, 2u, 3u);
    return (e >= vec4<u32>(row_first)) & (e < vec4<u32>(row_first + params.hidden));
}

fn keep_in_row(at: u32, v: Elem) -> Elem {
    if (at_row_edge(at)) {
        return select(Elem(0.0), v, lanes_in_row(at));
    }
    return v;
}

fn in_row_count(at: u32) -> Count {
    if (at_row_edge(at)) {
        return select(Elem(0.0), Elem(1.0), lanes_in_row(at));
    }
    return Elem(1.0);
}

// 0 for lanes that have counted nothing yet (their deltas are 0 as well).
fn welford_weight(count: Count) -> Count {
    return 1.0 / max(count, Count(1.0));
}

// The row's elements are lanes [phase, phase + hidden) of its Elems, counted from Elem 0.
fn elements_in(begin: u32, end: u32) -> u32 {
    let first = row_phase();
    let last = first + params.hidden;
    return clamp(4u * end, first, last) - clamp(4u * begin, first, last);
}

// Element j of the row last begun.
fn row_element(j: u32) -> f32 {
    let e = row_first + j;
    return load_input(e / 4u)[e % 4u];
}

fn row_shift_samples(row_offset: u32) -> vec3<f32> {
    let n = params.hidden;
    return vec3<f32>(row_element(0u), row_element(n / 2u), row_element(n - 1u));
}

// Lanes s.. of `lo` followed by lanes ..s of `hi`: the weights' Elem at a shift of s lanes
// (the same for a whole row, so every invocation of a workgroup takes the same case).
fn realign(lo: Elem, hi: Elem, s: u32) -> Elem {
    switch (s) {
        case 0u: {
            return lo;
        }
        case 1u: {
            return Elem(lo.yzw, hi.x);
        }
        case 2u: {
            return Elem(lo.zw, hi.xy);
        }
        default: {
            return Elem(lo.w, hi.xyz);
        }
    }
}

// The two aligned Elems of weights (element 0 at lane `phase` of Elem `base`, `next` as
// row_begin sets it) that hold the weights of the row's Elem i, clamped to the weights'
// Elems: the lanes they would reach beyond are outside the row.
fn weight_elems(i: u32, next: u32, base: u32, phase: u32) -> vec2<u32> {
    let q = next + i;
    let last = base + (phase + params.hidden - 1u) / 4u;
    return vec2<u32>(max(q, 1u) - 1u, min(q, last));
}

// Elem i of the row's gain and bias, shifted into the row's lanes.
fn gain_at(i: u32) -> Elem {
    let w = weight_elems(i, gain_next, params.gain_base, params.gain_phase);
    return realign(gain_load(w.x), gain_load(w.y), weight_shift.x);
}

fn bias_at(i: u32) -> Elem {
    let w = weight_elems(i, bias_next, params.bias_base, params.bias_phase);
    return realign(bias_load(w.x), bias_load(w.y), weight_shift.y);
}

fn put_y(at: u32, v: Elem) {
    if (at_row_edge(at)) {
        y_store_lanes(params.y_base + at, v, lanes_in_row(at));
    } else {
        y_store(params.y_base + at, v);
    }
}

fn put_sum(at: u32, v: Elem) {
    if (at_row_edge(at)) {
        sum_store_lanes(params.sum_base + at, v, lanes_in_row(at));
    } else {
        sum_store(params.sum_base + at, v);
    }
}
