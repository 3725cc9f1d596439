// LayerNorm's statistics of a row, shared by the forward (layernorm.wgsl) and the backward
// (layernorm_backward.wgsl).
//
// The statistics come from one pass: each invocation keeps Welford's running mean and sum
// of squared deviations of its own elements (per lane of an Elem), and the workgroup merges
// them by Chan's formula, M2 = sum(M2_i) + sum(n_i (mean_i - mean)^2): every term is >= 0,
// so nothing cancels wherever an outlier stands (the shifted sums this replaced lost 5e-4
// of relative accuracy when the first element was an outlier). There is no rescaled path:
// spreads whose squares leave f32's range (beyond ~1e19, below ~1e-19) are out of range.

// A row's statistics: x^ = ((x - shift) - mean) * scale, the mean of x being shift + mean.
struct Moments {
    shift: f32,
    mean: f32,
    scale: f32,
}

// Saved statistics (`STORES_STATS`, `LOADS_STATS`): shift, mean, scale per row, f32.
const STATS_PER_ROW: u32 = 3u;

// A row's statistics and, for the backward, the sums of u and u (x - shift) over it, u being
// the gradient reaching the normalized value (`upstream`).
struct MomentsAndSums {
    m: Moments,
    sum_u: f32,
    sum_u_v: f32,
}

// The statistics of row `row_offset`, each invocation starting at Elem `lane`. Every
// invocation of the workgroup calls it (it reduces).
fn row_moments(row_offset: u32, lane: u32) -> Moments {
    return row_statistics(row_offset, lane, false).m;
}

// The statistics, and with `with_upstream` (a constant at every call) the backward's sums in
// the same pass over the row.
fn row_statistics(row_offset: u32, lane: u32, with_upstream: bool) -> MomentsAndSums {
    let shift = row_shift(row_offset);
    let s = range_statistics(row_offset, 0u, row_elems(), lane, shift, params.k_f32, with_upstream);
    return MomentsAndSums(moments_from(shift, s.mean, s.m2), s.sum_u, s.sum_u_v);
}

// The shift K of a row's statistics of x - K: x - K is exact for x near K, so a row far from
// zero keeps the digits that matter (the mean of x rounded back to x's magnitude would lose
// them). K is the median of the row's first, middle and last elements, so that one outlier
// (anywhere, the first element included) does not become the shift: x - K for the rest of
// the row would then be rounded to the outlier's magnitude.
fn row_shift(row_offset: u32) -> f32 {
    let s = row_shift_samples(row_offset);
    return max(min(s.x, s.y), min(max(s.x, s.y), s.z));
}

// The mean and sum of squared deviations of x - shift over Elems [begin, end) of a row (`n`
// elements), and with `with_upstream` the sums of u and u (x - shift).
struct RangeStatistics {
    mean: f32,
    m2: f32,
    sum_u: f32,
    sum_u_v: f32,
}

// Every invocation of the workgroup calls it (it reduces).
fn range_statistics(
    row_offset: u32,
    begin: u32,
    end: u32,
    lane: u32,
    shift: f32,
    n: f32,
    with_upstream: bool,
) -> RangeStatistics {
    // The row's body unmasked, the Elems around it masked.
    var w = Welford(Count(0.0), Elem(0.0), Elem(0.0), Elem(0.0), Elem(0.0));
    let inner = inner_range(begin, end);
    for (var i = begin + lane; i < inner.x; i = i + ROW_STRIDE) {
        welford_add(&w, row_offset, i, shift, with_upstream, false);
    }
    for (var i = inner.x + lane; i < inner.y; i = i + ROW_STRIDE) {
        welford_add(&w, row_offset, i, shift, with_upstream, true);
    }
    for (var i = inner.y + lane; i < end; i = i + ROW_STRIDE) {
        welford_add(&w, row_offset, i, shift, with_upstream, false);
    }
    let mean = reduce_sum(elem_sum(w.mean * w.count)) / n;
    let deviation = w.mean - Elem(mean);
    let m2 = reduce_sum(elem_sum(w.m2 + deviation * deviation * w.count));
    var sums = vec2<f32>(0.0);
    if (with_upstream) {
        sums = vec2<f32>(reduce_sum(elem_sum(w.sum_u)), reduce_sum(elem_sum(w.sum_u_v)));
    }
    return RangeStatistics(mean, m2, sums.x, sums.y);
}

// One invocation's running statistics: per lane of an Elem (rows at any element count per
// lane: lanes outside the row count nothing), Welford's mean and sum of squared deviations
// of x - shift, and the backward's sums.
struct Welford {
    count: Count,
    mean: Elem,
    m2: Elem,
    sum_u: Elem,
    sum_u_v: Elem,
}

// Adds Elem i of a row to `w` (`inner`: Elem i lies in the row's body; it and
// `with_upstream` are constants at every call).
fn welford_add(
    w: ptr<function, Welford>,
    row_offset: u32,
    i: u32,
    shift: f32,
    with_upstream: bool,
    inner: bool,
) {
    let at = row_offset + i;
    var v: Elem;
    var counted: Count;
    if (inner) {
        v = load_inner(at) - shift;
        counted = Count(1.0);
    } else {
        v = load_input(at) - shift;
        counted = in_row_count(at);
    }
    (*w).count = (*w).count + counted;
    let delta = (v - (*w).mean) * counted;
    (*w).mean = (*w).mean + delta * welford_weight((*w).count);
    (*w).m2 = (*w).m2 + delta * (v - (*w).mean);
    if (with_upstream) {
        let u = upstream(row_offset, i);
        (*w).sum_u = (*w).sum_u + u;
        (*w).sum_u_v = (*w).sum_u_v + u * v;
    }
}

// Split rows: the mean and sum of squared deviations of x - shift over piece g of its row
// (both 0 for an empty piece, not 0 / 0). Every invocation of the workgroup calls it (it
// reduces).
fn piece_statistics(g: u32, lane: u32, shift: f32) -> RangeStatistics {
    let row_offset = row_begin(g / params.chunks);
    let range = piece_range(g);
    let n = max(f32(elements_in(range.x, range.y)), 1.0);
    return range_statistics(row_offset, range.x, range.y, lane, shift, n, false);
}

// Split rows: row `row`'s statistics from its pieces', merged by Chan's formula (every term
// >= 0, as within a workgroup): piece j's mean and sum of squared deviations are read with
// the module's `piece_load` at first + stride j and the word after, each weighing its
// elements (an empty piece nothing). The row must be the one last begun. Every invocation of
// the workgroup calls it (it reduces).
fn moments_of_pieces(row: u32, first: u32, stride: u32, shift: f32, lane: u32) -> Moments {
    var local_sum = 0.0;
    for (var j = lane; j < params.chunks; j = j + WG) {
        let range = piece_range(row * params.chunks + j);
        let n = f32(elements_in(range.x, range.y));
        local_sum = local_sum + n * piece_load(first + stride * j);
    }
    let mean = reduce_sum(local_sum) / params.k_f32;
    var local_m2 = 0.0;
    for (var j = lane; j < params.chunks; j = j + WG) {
        let range = piece_range(row * params.chunks + j);
        let n = f32(elements_in(range.x, range.y));
        let deviation = piece_load(first + stride * j) - mean;
        local_m2 = local_m2 + piece_load(first + stride * j + 1u) + n * deviation * deviation;
    }
    return moments_from(shift, mean, reduce_sum(local_m2));
}

// A row's statistics from the mean and sum of squared deviations of x - shift over it.
fn moments_from(shift: f32, mean: f32, m2: f32) -> Moments {
    let variance = max(m2 / params.k_f32, 0.0);
    // A constant row with eps = 0 has no defined scale: 0, as RMSNorm does, never NaN.
    let denominator = variance + params.eps;
    let scale = select(inverseSqrt(denominator), 0.0, denominator == 0.0);
    return Moments(shift, mean, scale);
}

// Saves a row's statistics where the call saves them (one invocation calls it).
fn stats_store_moments(row: u32, m: Moments) {
    if (STORES_STATS) {
        stats_store(row, 0u, m.shift);
        stats_store(row, 1u, m.mean);
        stats_store(row, 2u, m.scale);
    }
}

// A row's saved statistics.
fn stats_load_moments(row: u32) -> Moments {
    return Moments(stats_load(row, 0u), stats_load(row, 1u), stats_load(row, 2u));
}
