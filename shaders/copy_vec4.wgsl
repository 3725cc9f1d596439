// The speed-of-light reference for compute shaders: dst = src with vec4 loads and stores,
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
