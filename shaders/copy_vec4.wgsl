// The speed-of-light references for compute shaders: dst = src with vec4 loads and stores,
// neighbouring invocations on neighbouring memory, a grid-stride loop. Benchmarks only.

override WG: u32 = 256u;

@group(0) @binding(0) var<storage, read> src: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read_write> dst: array<vec4<f32>>;

@compute @workgroup_size(WG)
fn copy(
    @builtin(global_invocation_id) id: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let stride = groups.x * WG;
    let len = arrayLength(&dst);
    for (var i = id.x; i < len; i = i + stride) {
        dst[i] = src[i];
    }
}

// The same copy written like the normalization kernels: workgroup g takes rows g,
// g + groups, ..., its invocations striding over a row's vec4s. Launched with RMSNorm's
// workgroup size and count for the shape, it is the roof for their loop structure.
override ROWS: u32 = 1u;
override ROW_VEC4S: u32 = 1u;

@compute @workgroup_size(WG)
fn copy_rows(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) group: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    for (var row = group.x; row < ROWS; row = row + groups.x) {
        let base = row * ROW_VEC4S;
        for (var i = lid; i < ROW_VEC4S; i = i + WG) {
            dst[base + i] = src[base + i];
        }
    }
}
