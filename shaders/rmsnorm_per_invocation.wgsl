// RMSNorm and pRMSNorm forward, one row per invocation: composed after rmsnorm.wgsl only with
// reduce_per_invocation.wgsl (the entry's loop over rows depends on the invocation, so no
// barrier may stand in it). Invocation t of workgroup w takes row w WG + t, then every
// WG * workgroups rows, each alone: no reduction and no barrier, a workgroup's rows side by
// side in its SIMD lanes. CPU adapters' short rows.
@compute @workgroup_size(WG)
fn rms_norm_per_invocation(
    @builtin(local_invocation_index) lane: u32,
    @builtin(workgroup_id) group: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    for (var row = group.x * WG + lane; row < params.rows; row = row + groups.x * WG) {
        let row_offset = row_begin(row);
        let f = row_factors(row_offset, 0u);
        stats_store_factors(row, f);
        write_scaled(row_offset, 0u, 0u, row_elems(), f);
    }
}
