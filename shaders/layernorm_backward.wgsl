// LayerNorm backward: dx, and each workgroup's partial sums of dgain and dbias
// (backward_common.wgsl), rows in blocks of ROW_BLOCK; few long rows split across
// workgroups (the backward_split_* entry points at the end).
//
// With x^ = ((x - shift) - mean) * scale the forward's normalized row (the same statistics,
// saved, or recomputed as the forward computes them) and u = dy * g:
//
//   dx_i = scale (u_i - mean_j(u_j) - x^_i mean_j(u_j x^_j))
//
// A constant row with eps = 0 has scale 0 in the forward, and dx = 0 here. Where the forward
// did not save the statistics, they come from the same pass as sum u and sum u (x - shift)
// (row_statistics): x and dy are read twice either way.
//
// The host prepends an element layout, a reduction, norm_common.wgsl, layer_moments.wgsl,
// backward_common.wgsl and the tensors' accessors.

@compute @workgroup_size(WG)
fn layer_norm_backward(
    @builtin(local_invocation_index) lane: u32,
    @builtin(workgroup_id) group: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    reduce_setup(lane);
    // The statistics, mean(u) and mean(u x^) of each row of a block.
    var moments: array<Moments, ROW_BLOCK>;
    var means: array<vec2<f32>, ROW_BLOCK>;
    for (var block = group.x; block < row_blocks(); block = block + groups.x) {
        let first_row = block * ROW_BLOCK;
        let count = min(ROW_BLOCK, params.rows - first_row);
        for (var j = 0u; j < count; j = j + 1u) {
            let row_offset = (first_row + j) * params.row_len;
            var m: Moments;
            // sum u and sum u x^.
            var sums: vec2<f32>;
            if (LOADS_STATS) {
                m = stats_load_moments(first_row + j);
                var acc_u = Elem(0.0);
                var acc_u_x_hat = Elem(0.0);
                for (var i = lane; i < params.row_len; i = i + WG) {
                    let x_hat = ((load_input(row_offset + i) - m.shift) - m.mean) * m.scale;
                    let u = upstream(row_offset, i);
                    acc_u = acc_u + u;
                    acc_u_x_hat = acc_u_x_hat + u * x_hat;
                }
                sums = vec2<f32>(reduce_sum(elem_sum(acc_u)), reduce_sum(elem_sum(acc_u_x_hat)));
            } else {
                // One pass: the statistics with sum u and sum u (x - shift), whence
                // sum u x^ = scale (sum u (x - shift) - mean sum u).
                let s = row_statistics(row_offset, lane, true);
                m = s.m;
                sums = vec2<f32>(s.sum_u, (s.sum_u_v - m.mean * s.sum_u) * m.scale);
            }
            moments[j] = m;
            means[j] = sums / params.k_f32;
        }
        // dx of the block's rows column by column, dgain and dbias summed over them.
        for (var i = lane; i < params.row_len; i = i + WG) {
            let g = gain_factor(i);
            var grad_gain = Elem(0.0);
            var grad_bias = Elem(0.0);
            for (var j = 0u; j < count; j = j + 1u) {
                let at = (first_row + j) * params.row_len + i;
                let dy = dy_load(params.dy_base + at);
                let m = moments[j];
                let x_hat = ((load_input(at) - m.shift) - m.mean) * m.scale;
                let dx = (((dy * g) - means[j].x) - x_hat * means[j].y) * m.scale;
                store_grad_input(at, dx);
                grad_gain = grad_gain + dy * x_hat;
                grad_bias = grad_bias + dy;
            }
            let first = block == group.x && params.partials_written == 0u;
            accumulate_weight_grads(first, group.x, i, grad_gain, grad_bias);
        }
    }
}

// Split rows: a few long rows, each across params.chunks workgroups (g = row * chunks +
// piece), in three dispatches of one pass; dgain and dbias go to partial row `row` (the
// dispatch's row), each workgroup into its piece's Elems of it.

// Dispatch 1 (without saved statistics): each piece's mean and sum of squared deviations of
// x - shift (the row's shift).
@compute @workgroup_size(WG)
fn backward_split_statistics(
    @builtin(local_invocation_index) lane: u32,
    @builtin(workgroup_id) group: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    reduce_setup(lane);
    for (var g = group.x; g < params.rows * params.chunks; g = g + groups.x) {
        let s = piece_statistics(g, lane, row_shift((g / params.chunks) * params.row_len));
        if (lane == 0u) {
            pieces[PIECE_STRIDE * g] = s.mean;
            pieces[PIECE_STRIDE * g + 1u] = s.m2;
        }
    }
}

// The statistics of split row `row`: saved, or its pieces' merged by Chan's formula.
fn split_moments(row: u32, lane: u32) -> Moments {
    if (LOADS_STATS) {
        return stats_load_moments(row);
    }
    let first = PIECE_STRIDE * row * params.chunks;
    return moments_of_pieces(row, first, PIECE_STRIDE, row_shift(row * params.row_len), lane);
}

// Dispatch 2: each piece's sums of u and u x^.
@compute @workgroup_size(WG)
fn backward_split_sums(
    @builtin(local_invocation_index) lane: u32,
    @builtin(workgroup_id) group: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    reduce_setup(lane);
    for (var g = group.x; g < params.rows * params.chunks; g = g + groups.x) {
        let row = g / params.chunks;
        let row_offset = row * params.row_len;
        let m = split_moments(row, lane);
        let range = piece_range(g);
        var acc_u = Elem(0.0);
        var acc_u_x_hat = Elem(0.0);
        for (var i = range.x + lane; i < range.y; i = i + WG) {
            let x_hat = ((load_input(row_offset + i) - m.shift) - m.mean) * m.scale;
            let u = upstream(row_offset, i);
            acc_u = acc_u + u;
            acc_u_x_hat = acc_u_x_hat + u * x_hat;
        }
        let sum_u = reduce_sum(elem_sum(acc_u));
        let sum_u_x_hat = reduce_sum(elem_sum(acc_u_x_hat));
        if (lane == 0u) {
            pieces[PIECE_STRIDE * g + 2u] = sum_u;
            pieces[PIECE_STRIDE * g + 3u] = sum_u_x_hat;
        }
    }
}

// Dispatch 3: dx of each piece, from its row's means of u and u x^.
@compute @workgroup_size(WG)
fn backward_split_dx(
    @builtin(local_invocation_index) lane: u32,
    @builtin(workgroup_id) group: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    reduce_setup(lane);
    let first = params.partials_written == 0u;
    for (var g = group.x; g < params.rows * params.chunks; g = g + groups.x) {
        let row = g / params.chunks;
        let row_offset = row * params.row_len;
        let m = split_moments(row, lane);
        let mean_u = sum_of_pieces(row, 2u, lane) / params.k_f32;
        let mean_u_x_hat = sum_of_pieces(row, 3u, lane) / params.k_f32;
        let range = piece_range(g);
        for (var i = range.x + lane; i < range.y; i = i + WG) {
            let dy = dy_load(params.dy_base + row_offset + i);
            let x_hat = ((load_input(row_offset + i) - m.shift) - m.mean) * m.scale;
            let dx = (((dy * gain_factor(i)) - mean_u) - x_hat * mean_u_x_hat) * m.scale;
            store_grad_input(row_offset + i, dx);
            accumulate_weight_grads(first, row, i, dy * x_hat, dy);
        }
    }
}
