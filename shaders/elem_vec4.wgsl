// Element layout: four f32 per load and store (vec4), used when the hidden size and every
// buffer offset are multiples of 4 elements. Prepended to a kernel by the host.

alias Elem = vec4<f32>;
const LANES: u32 = 4u;

fn elem_sum(v: Elem) -> f32 {
    return (v.x + v.y) + (v.z + v.w);
}

fn elem_abs_max(v: Elem) -> f32 {
    let a = abs(v);
    return max(max(a.x, a.y), max(a.z, a.w));
}

// Zeroes the lanes whose element index (first + lane) is k or more: the partial vec4 that
// straddles the end of pRMSNorm's first k elements.
fn elem_keep_below(v: Elem, first: u32, k: u32) -> Elem {
    return select(Elem(0.0), v, vec4<u32>(first) + vec4<u32>(0u, 1u, 2u, 3u) < vec4<u32>(k));
}

// v * 2^e, exact while the result stays a normal f32.
fn elem_ldexp(v: Elem, e: i32) -> Elem {
    return ldexp(v, vec4<i32>(e));
}

// The first of the four elements.
fn elem_first(v: Elem) -> f32 {
    return v.x;
}
