// Workgroup reduction with subgroups: subgroupAdd inside each subgroup, one partial per
// subgroup in workgroup memory, then every subgroup combines the partials. It assumes nothing
// about the subgroup size or how invocations are laid out in subgroups.

// One slot per invocation (the host sets the constant WG): 4 WG bytes of workgroup memory.
// The workgroup normalizes a row together: invocation t takes Elems t, t + WG, ...
const ROW_STRIDE: u32 = WG;

var<workgroup> partials: array<f32, WG>;
var<workgroup> partials_total: f32;
var<private> local_lane: u32;
var<private> subgroup_lane: u32;
var<private> subgroup_width: u32;

fn reduce_setup(local_index: u32) {
    local_lane = local_index;
    // Rank and count of the active invocations. Every invocation is active at the top of the
    // entry point, so these are the lane index and the subgroup size.
    subgroup_lane = subgroupExclusiveAdd(1u);
    subgroup_width = subgroupAdd(1u);
}

// Sum over the workgroup, the same in every invocation and uniform in WGSL's analysis
// (workgroupUniformLoad), so that a branch on it may contain barriers.
fn reduce_sum(v: f32) -> f32 {
    // Lane 0 of each subgroup leaves its subgroup's sum; every other slot holds 0.
    partials[local_lane] = select(0.0, subgroupAdd(v), subgroup_lane == 0u);
    workgroupBarrier();
    var s = 0.0;
    for (var i = subgroup_lane; i < WG; i = i + subgroup_width) {
        s = s + partials[i];
    }
    let total = subgroupAdd(s);
    if (local_lane == 0u) {
        partials_total = total;
    }
    return workgroupUniformLoad(&partials_total);
}

// Max over the workgroup of values >= 0 (absolute values), so the empty slots may hold 0.
fn reduce_max(v: f32) -> f32 {
    partials[local_lane] = select(0.0, subgroupMax(v), subgroup_lane == 0u);
    workgroupBarrier();
    var m = 0.0;
    for (var i = subgroup_lane; i < WG; i = i + subgroup_width) {
        m = max(m, partials[i]);
    }
    let total = subgroupMax(m);
    if (local_lane == 0u) {
        partials_total = total;
    }
    return workgroupUniformLoad(&partials_total);
}
