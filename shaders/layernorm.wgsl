// LayerNorm forward, the baseline RMSNorm is measured against: written like rmsnorm.wgsl
// (one workgroup per row, strided loads, the same layouts and reductions; rows read once
// from registers; few long rows split across workgroups; CPU adapters' short rows one per
// invocation in layernorm_per_invocation.wgsl), so that the comparison shows what
// re-centering costs and nothing else.
//
//   y = (x - mean(x)) / sqrt(var(x) + eps) * g + b
//
// The statistics (layer_moments.wgsl) come from one pass, merged without cancellation.
// LayerNorm reads x as often as RMSNorm (twice, or once from registers where both read it
// once), and pays a second reduction and the subtraction, and in Welford's statistics one
// division per load.
//
// The host prepends an element layout (Elem, LANES), a reduction (WG, reduce_*),
// norm_common.wgsl (Params, the options, load_input with the residual add, store), where
// rows lie (rows_aligned.wgsl or rows_masked.wgsl), layer_moments.wgsl (row_moments) and the
// tensors' accessors for the call's storage formats.

// The backward's upstream gradient, which the forward's statistics do not take.
fn upstream(row_offset: u32, i: u32) -> Elem {
    return Elem(0.0);
}

// y = ((x - shift) - mean) * scale * g + b for Elems begin + lane, begin + lane + ROW_STRIDE,
// ... below end of one row (norm_common.wgsl's write_row).
fn write_normalized(row_offset: u32, lane: u32, begin: u32, end: u32, m: Moments) {
    write_row(row_offset, lane, begin, end, vec4<f32>(m.shift, m.mean, m.scale, 0.0), true);
}

@compute @workgroup_size(WG)
fn layer_norm(
    @builtin(local_invocation_index) lane: u32,
    @builtin(workgroup_id) group: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    reduce_setup(lane);
    for (var row = group.x; row < params.rows; row = row + groups.x) {
        let row_offset = row_begin(row);
        let m = row_moments(row_offset, lane);
        if (lane == 0u) {
            stats_store_moments(row, m);
        }
        // Every invocation has read the three elements before any stores h over them (the
        // reductions' barriers order workgroup memory only).
        if (SUM_OVER_R) {
            storageBarrier();
        }

        write_normalized(row_offset, lane, 0u, row_elems(), m);
    }
}

// Read once, as rmsnorm.wgsl's rms_norm_cached: each invocation keeps its CACHE_LEN Elems of
// the row (lane, lane + WG, ...) in registers, and the statistics take two passes over them
// (the mean of x - shift, then the sum of squared deviations from it: nothing cancels, as in
// Welford's), so x crosses the memory bus once. The host writes `RowCache`, `cache_load`,
// `cache_sum_centered` and `cache_store_normalized`, unrolled, from the helpers below.
@compute @workgroup_size(WG)
fn layer_norm_cached(
    @builtin(local_invocation_index) lane: u32,
    @builtin(workgroup_id) group: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    reduce_setup(lane);
    for (var row = group.x; row < params.rows; row = row + groups.x) {
        let row_offset = row_begin(row);
        let shift = row_shift(row_offset);
        let cache = cache_load(row_offset, lane);
        let sum = cache_sum_centered(cache, row_offset, lane, shift, 0.0, false);
        let mean = reduce_sum(elem_sum(sum)) / params.k_f32;
        let squares = cache_sum_centered(cache, row_offset, lane, shift, mean, true);
        let m = moments_from(shift, mean, reduce_sum(elem_sum(squares)));
        if (lane == 0u) {
            stats_store_moments(row, m);
        }
        // As in layer_norm: every invocation has read the shift's elements before any
        // stores h over them.
        if (SUM_OVER_R) {
            storageBarrier();
        }
        cache_store_normalized(cache, row_offset, lane, m);
    }
}

// (v - shift) - mean for the lanes of Elem i of a row (v, as cached) that lie in the row, 0
// for the others; squared with `square` (a constant at every call).
fn centered_in_row(row_offset: u32, i: u32, v: Elem, shift: f32, mean: f32, square: bool) -> Elem {
    var counted = Count(0.0);
    if (i < row_elems()) {
        counted = in_row_count(row_offset + i);
    }
    let d = ((v - shift) - mean) * counted;
    if (square) {
        return d * d;
    }
    return d;
}

// Stores Elem i of a row (v, as cached) normalized by `m`.
fn store_normalized_in_row(row_offset: u32, i: u32, v: Elem, m: Moments) {
    store_in_row(row_offset, i, v, ((v - m.shift) - m.mean) * m.scale);
}

// Split rows (few long rows, each across params.chunks workgroups: g = row * chunks + piece),
// as rmsnorm.wgsl's: per (row, piece), LAYER_PIECE_WORDS f32 at LAYER_PIECE_WORDS g: the
// piece's mean and sum of squared deviations of x - shift, and the row's shift (every piece
// computes the same one; dispatch 2 takes piece 0's, since where the sum h is stored over r
// dispatch 2 overwrites the elements the shift is taken from).
@group(0) @binding(5) var<storage, read_write> row_partials: array<f32>;
const LAYER_PIECE_WORDS: u32 = 3u;

// Split rows' values, as `moments_of_pieces` (layer_moments.wgsl) reads them.
fn piece_load(i: u32) -> f32 {
    return row_partials[i];
}

// Dispatch 1 of a split row: piece g's statistics, and its row's shift.
@compute @workgroup_size(WG)
fn split_partials(
    @builtin(local_invocation_index) lane: u32,
    @builtin(workgroup_id) group: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    reduce_setup(lane);
    for (var g = group.x; g < params.rows * params.chunks; g = g + groups.x) {
        let shift = row_shift(row_begin(g / params.chunks));
        let s = piece_statistics(g, lane, shift);
        if (lane == 0u) {
            row_partials[LAYER_PIECE_WORDS * g] = s.mean;
            row_partials[LAYER_PIECE_WORDS * g + 1u] = s.m2;
            row_partials[LAYER_PIECE_WORDS * g + 2u] = shift;
        }
    }
}

// Dispatch 2 of a split row: workgroup g merges its row's pieces and normalizes piece g.
@compute @workgroup_size(WG)
fn split_scale(
    @builtin(local_invocation_index) lane: u32,
    @builtin(workgroup_id) group: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    reduce_setup(lane);
    for (var g = group.x; g < params.rows * params.chunks; g = g + groups.x) {
        let row = g / params.chunks;
        let row_offset = row_begin(row);
        let first = LAYER_PIECE_WORDS * row * params.chunks;
        let m = moments_of_pieces(row, first, LAYER_PIECE_WORDS, piece_load(first + 2u), lane);
        if (lane == 0u && g % params.chunks == 0u) {
            stats_store_moments(row, m);
        }
        let range = piece_range(g);
        write_normalized(row_offset, lane, range.x, range.y, m);
    }
}
