// LayerNorm forward, the baseline RMSNorm is measured against: written like rmsnorm.wgsl
// (one workgroup per row, strided loads, the same layouts and reductions), so that the
// comparison shows what re-centering costs and nothing else.
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

        for (var i = lane; i < params.row_len; i = i + WG) {
            let h = load_input_storing_sum(row_offset + i);
            store(row_offset, i, ((h - m.shift) - m.mean) * m.scale);
        }
    }
}
