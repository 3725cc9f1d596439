// LayerNorm backward: dx, and each workgroup's partial sums of dgain and dbias
// (backward_common.wgsl). One workgroup per row, looping over rows.
//
// With x^ = ((x - shift) - mean) * scale the forward's normalized row (the same statistics,
// saved or recomputed by row_moments) and u = dy * g:
//
//   dx_i = scale (u_i - mean_j(u_j) - x^_i mean_j(u_j x^_j))
//
// A constant row with eps = 0 has scale 0 in the forward, and dx = 0 here.
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
            if (LOADS_STATS) {
                m = stats_load_moments(first_row + j);
            } else {
                m = row_moments(row_offset, lane);
            }
            var acc_u = Elem(0.0);
            var acc_u_x_hat = Elem(0.0);
            for (var i = lane; i < params.row_len; i = i + WG) {
                let x_hat = ((load_input(row_offset + i) - m.shift) - m.mean) * m.scale;
                let u = dy_load(params.dy_base + row_offset + i) * gain_factor(i);
                acc_u = acc_u + u;
                acc_u_x_hat = acc_u_x_hat + u * x_hat;
            }
            moments[j] = m;
            let mean_u = reduce_sum(elem_sum(acc_u)) / params.k_f32;
            means[j] = vec2<f32>(mean_u, reduce_sum(elem_sum(acc_u_x_hat)) / params.k_f32);
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
