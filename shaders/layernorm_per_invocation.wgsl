// LayerNorm forward, one row per invocation, as rmsnorm_per_invocation.wgsl: composed after
// layernorm.wgsl only with reduce_per_invocation.wgsl. The invocation reads its whole row
// (the shift, the moments) before it stores the sum h over r, so no barrier is needed.
@compute @workgroup_size(WG)
fn layer_norm_per_invocation(
    @builtin(local_invocation_index) lane: u32,
    @builtin(workgroup_id) group: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    for (var row = group.x * WG + lane; row < params.rows; row = row + groups.x * WG) {
        let row_offset = row_begin(row);
        let m = row_moments_alone(row_offset);
        stats_store_moments(row, m);
        write_normalized(row_offset, 0u, 0u, row_elems(), m);
    }
}

// Elems per block of row_moments_alone.
const STATISTICS_BLOCK: u32 = 64u;

// A row's statistics taken by one invocation: Welford's within blocks of STATISTICS_BLOCK
// Elems, the blocks merged by Chan's formula, so that no running mean takes more than 64
// steps (a single stream over 4097 elements put 2e-6 of absolute error into y on a row of
// large mean and small spread: each step rounds the mean once).
fn row_moments_alone(row_offset: u32) -> Moments {
    let shift = row_shift(row_offset);
    var count = 0.0;
    var mean = 0.0;
    var m2 = 0.0;
    for (var begin = 0u; begin < row_elems(); begin = begin + STATISTICS_BLOCK) {
        let end = min(begin + STATISTICS_BLOCK, row_elems());
        let block_count = f32(elements_in(begin, end));
        let block = range_statistics(row_offset, begin, end, 0u, shift, block_count, false);
        let total = count + block_count;
        let delta = block.mean - mean;
        mean = mean + delta * (block_count / total);
        m2 = m2 + block.m2 + delta * delta * (count * block_count / total);
        count = total;
    }
    return moments_from(shift, mean, m2);
}
