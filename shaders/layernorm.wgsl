// LayerNorm forward, the baseline RMSNorm is measured against: written like rmsnorm.wgsl
// (one workgroup per row, strided loads, the same layouts and reductions), so that the
// comparison shows what re-centering costs and nothing else.
//
//   y = (x - mean(x)) / sqrt(var(x) + eps) * g + b
//
// The statistics come from one pass: each invocation keeps Welford's running mean and sum
// of squared deviations of its own elements (per lane of an Elem), and the workgroup merges
// them by Chan's formula, M2 = sum(M2_i) + sum(n_i (mean_i - mean)^2): every term is >= 0,
// so nothing cancels wherever an outlier stands (the shifted sums this replaced lost 5e-4
// of relative accuracy when the first element was an outlier). There is no rescaled path:
// spreads whose squares leave f32's range (beyond ~1e19, below ~1e-19) are out of range. LayerNorm reads x
// twice like RMSNorm, and pays a second reduction, the subtraction and one division per
// load.
//
// The host prepends an element layout (Elem, LANES), a reduction (WG, reduce_*),
// norm_common.wgsl (Params, the options, load_input with the residual add, store) and the
// tensors' accessors for the call's storage formats.

@compute @workgroup_size(WG)
fn layer_norm(
    @builtin(local_invocation_index) lane: u32,
    @builtin(workgroup_id) group: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    reduce_setup(lane);
    for (var row = group.x; row < params.rows; row = row + groups.x) {
        let row_offset = row * params.row_len;
        // Statistics of x - K: x - K is exact for x near K, so a row far from zero keeps the
        // digits that matter (the mean of x rounded back to x's magnitude would lose them).
        // K is the median of the row's first, middle and last elements, so that one outlier
        // (anywhere, the first element included) does not become the shift: x - K for the
        // rest of the row would then be rounded to the outlier's magnitude.
        let a = elem_first(load_input(row_offset));
        let b = elem_first(load_input(row_offset + params.row_len / 2u));
        let c = elem_first(load_input(row_offset + params.row_len - 1u));
        let shift = max(min(a, b), min(max(a, b), c));
        // Every invocation has read the three elements before any stores h over them (the
        // reductions' barriers order workgroup memory only).
        if (SUM_OVER_R) {
            storageBarrier();
        }

        var count = 0.0;
        var local_mean = Elem(0.0);
        var local_m2 = Elem(0.0);
        for (var i = lane; i < params.row_len; i = i + WG) {
            let v = load_input(row_offset + i) - shift;
            count = count + 1.0;
            let delta = v - local_mean;
            local_mean = local_mean + delta * (1.0 / count);
            local_m2 = local_m2 + delta * (v - local_mean);
        }
        let mean = reduce_sum(elem_sum(local_mean * count)) / params.k_f32;
        let deviation = local_mean - Elem(mean);
        let m2 = reduce_sum(elem_sum(local_m2 + deviation * deviation * count));
        let variance = max(m2 / params.k_f32, 0.0);
        // A constant row with eps = 0 has no defined scale: 0, as RMSNorm does, never NaN.
        let denominator = variance + params.eps;
        let scale = select(inverseSqrt(denominator), 0.0, denominator == 0.0);

        for (var i = lane; i < params.row_len; i = i + WG) {
            let h = load_input_storing_sum(row_offset + i);
            store(row_offset, i, ((h - shift) - mean) * scale);
        }
    }
}
