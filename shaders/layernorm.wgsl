// LayerNorm forward, the baseline RMSNorm is measured against: written like rmsnorm.wgsl
// (one workgroup per row, strided loads, the same layouts and reductions; few long rows split
// across workgroups; CPU adapters' short rows one per invocation in
// layernorm_per_invocation.wgsl), so that the comparison shows what re-centering costs and
// nothing else.
//
//   y = (x - mean(x)) / sqrt(var(x) + eps) * g + b
//
// The statistics (layer_moments.wgsl) come from one pass, merged without cancellation.
// LayerNorm reads x twice like RMSNorm, and pays a second reduction, the subtraction and one
// division per load.
//
// The host prepends an element layout (Elem, LANES), a reduction (WG, reduce_*),
// norm_common.wgsl (Params, the options, load_input with the residual add, store),
// layer_moments.wgsl (row_moments) and the tensors' accessors for the call's storage formats.

// The backward's upstream gradient, which the forward's statistics do not take.
fn upstream(row_offset: u32, i: u32) -> Elem {
    return Elem(0.0);
}

@compute @workgroup_size(WG)
fn layer_norm(
    @builtin(local_invocation_index) lane: u32,
    @builtin(workgroup_id) group: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    reduce_setup(lane);
    for (var row = group.x; row < params.rows; row = row + groups.x) {
        let row_offset = row * params.row_len;
        let m = row_moments(row_offset, lane);
        if (lane == 0u) {
            stats_store_moments(row, m);
        }
        // Every invocation has read the three elements before any stores h over them (the
        // reductions' barriers order workgroup memory only).
        if (SUM_OVER_R) {
            storageBarrier();
        }

        for (var i = lane; i < params.row_len; i = i + ROW_STRIDE) {
            let h = load_input_storing_sum(row_offset + i);
            store(row_offset, i, ((h - m.shift) - m.mean) * m.scale);
        }
    }
}

// Split rows (few long rows, each across params.chunks workgroups: g = row * chunks + piece),
// as rmsnorm.wgsl's: per (row, piece), LAYER_PIECE_WORDS f32 at LAYER_PIECE_WORDS g: the
// piece's mean and sum of squared deviations of x - shift, and the row's shift (every piece
// computes the same one; dispatch 2 takes piece 0's, since where the sum h is stored over r
// dispatch 2 overwrites the elements the shift is taken from).
@group(0) @binding(5) var<storage, read_write> row_partials: array<f32>;
const LAYER_PIECE_WORDS: u32 = 3u;

// The Elems [begin, end) of piece g's part of its row (empty for a last piece past the end).
fn split_piece(g: u32) -> vec2<u32> {
    let begin = min((g % params.chunks) * params.chunk_len, params.row_len);
    return vec2<u32>(begin, min(begin + params.chunk_len, params.row_len));
}

// Dispatch 1 of a split row: piece g's statistics.
@compute @workgroup_size(WG)
fn split_partials(
    @builtin(local_invocation_index) lane: u32,
    @builtin(workgroup_id) group: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    reduce_setup(lane);
    for (var g = group.x; g < params.rows * params.chunks; g = g + groups.x) {
        let row_offset = (g / params.chunks) * params.row_len;
        let shift = row_shift(row_offset);
        let range = split_piece(g);
        // An empty piece has mean and deviations 0 (not 0 / 0) and weighs nothing.
        let n = max(f32((range.y - range.x) * LANES), 1.0);
        let s = range_statistics(row_offset, range.x, range.y, lane, shift, n, false);
        if (lane == 0u) {
            row_partials[LAYER_PIECE_WORDS * g] = s.mean;
            row_partials[LAYER_PIECE_WORDS * g + 1u] = s.m2;
            row_partials[LAYER_PIECE_WORDS * g + 2u] = shift;
        }
    }
}

// The statistics of split row `row` from its pieces', merged by Chan's formula (every term
// >= 0, as within a workgroup). Every invocation of the workgroup calls it (it reduces).
fn moments_of_pieces(row: u32, lane: u32) -> Moments {
    let first = LAYER_PIECE_WORDS * row * params.chunks;
    var local_sum = 0.0;
    for (var j = lane; j < params.chunks; j = j + WG) {
        let range = split_piece(row * params.chunks + j);
        let n = f32((range.y - range.x) * LANES);
        local_sum = local_sum + n * row_partials[first + LAYER_PIECE_WORDS * j];
    }
    let mean = reduce_sum(local_sum) / params.k_f32;
    var local_m2 = 0.0;
    for (var j = lane; j < params.chunks; j = j + WG) {
        let range = split_piece(row * params.chunks + j);
        let n = f32((range.y - range.x) * LANES);
        let deviation = row_partials[first + LAYER_PIECE_WORDS * j] - mean;
        local_m2 = local_m2 + row_partials[first + LAYER_PIECE_WORDS * j + 1u]
            + n * deviation * deviation;
    }
    let m2 = reduce_sum(local_m2);
    return moments_from(row_partials[first + 2u], mean, m2);
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
        let row_offset = row * params.row_len;
        let m = moments_of_pieces(row, lane);
        if (lane == 0u && g % params.chunks == 0u) {
            stats_store_moments(row, m);
        }
        let range = split_piece(g);
        for (var i = range.x + lane; i < range.y; i = i + ROW_STRIDE) {
            let h = load_input_storing_sum(row_offset + i);
            store(row_offset, i, ((h - m.shift) - m.mean) * m.scale);
        }
    }
}
