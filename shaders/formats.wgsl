// 16-bit element formats as bits in the low half of a u32, converted with integer
// operations only. WGSL lets `f16()` and `pack2x16float` round to either neighbour and
// leaves out-of-range values indeterminate, and bf16 has no WGSL type at all; these
// conversions are exact (to f32) or round to nearest, ties to even (from f32) on every
// device, with IEEE's rules at the edges: beyond the largest finite value a result is
// +-inf, NaN stays NaN (quiet), and f16 subnormals are kept. Composed into every module
// that reads or writes f16 or bf16 storage, and into the residual's rounding.

// f16 bits -> f32, exact (every f16 is an f32).
fn f16_to_f32(h: u32) -> f32 {
    let sign = (h & 0x8000u) << 16u;
    let exponent = (h >> 10u) & 0x1fu;
    let mantissa = h & 0x3ffu;
    // Normal: rebias the exponent (15 -> 127). Inf and NaN: exponent 0xff.
    let normal = ((exponent + 112u) << 23u) | (mantissa << 13u);
    let special = 0x7f800000u | (mantissa << 13u);
    // Zero and subnormal: mantissa * 2^-24, exact and normal in f32 (or zero).
    let tiny = bitcast<u32>(f32(mantissa) * 5.9604644775390625e-8);
    let magnitude = select(select(normal, special, exponent == 31u), tiny, exponent == 0u);
    return bitcast<f32>(sign | magnitude);
}

// f32 -> f16 bits, nearest with ties to even. |v| >= 65520 (halfway past 65504) is inf.
fn f32_to_f16(v: f32) -> u32 {
    let bits = bitcast<u32>(v);
    let sign = (bits >> 16u) & 0x8000u;
    let a = bits & 0x7fffffffu;
    // Normal range (|v| >= 2^-14): rebias (127 -> 15) and round away the low 13 bits; a carry
    // out of the mantissa correctly steps the exponent.
    let rebiased = a - 0x38000000u;
    let normal = (rebiased + 0xfffu + ((rebiased >> 13u) & 1u)) >> 13u;
    // Subnormal range: |v| * 2^24 rounded to an integer, ties to even (WGSL's round), exact
    // in f32 below 2^11; 1024 rounds up to the smallest normal's bits, as it should.
    let tiny = u32(round(abs(v) * 16777216.0));
    var magnitude = select(tiny, normal, a >= 0x38800000u);
    magnitude = select(magnitude, 0x7c00u, a >= 0x477ff000u);
    // NaN: quiet, with the top of its payload.
    magnitude = select(magnitude, 0x7e00u | ((a >> 13u) & 0x3ffu), a > 0x7f800000u);
    return sign | magnitude;
}

// bf16 bits -> f32, exact: bf16 is the top half of an f32.
fn bf16_to_f32(h: u32) -> f32 {
    return bitcast<f32>(h << 16u);
}

// f32 -> bf16 bits, nearest with ties to even; overflow rounds to inf by itself.
fn f32_to_bf16(v: f32) -> u32 {
    let bits = bitcast<u32>(v);
    let rounded = (bits + 0x7fffu + ((bits >> 16u) & 1u)) >> 16u;
    // NaN: quiet (a NaN whose payload is all in the low half would round to inf).
    let is_nan = (bits & 0x7fffffffu) > 0x7f800000u;
    return select(rounded, (bits >> 16u) | 0x40u, is_nan);
}

// v rounded to the nearest f16 (ties to even), as an f32.
fn f16_round(v: f32) -> f32 {
    return f16_to_f32(f32_to_f16(v));
}

// v rounded to the nearest bf16 (ties to even), as an f32.
fn bf16_round(v: f32) -> f32 {
    return bf16_to_f32(f32_to_bf16(v));
}

// f32 -> f16 bits for a value that is an f16 already (h = x + r, rounded when it was made):
// no rounding to do.
fn f16_bits_of(v: f32) -> u32 {
    let bits = bitcast<u32>(v);
    let sign = (bits >> 16u) & 0x8000u;
    let a = bits & 0x7fffffffu;
    var magnitude = select(u32(abs(v) * 16777216.0), (a - 0x38000000u) >> 13u, a >= 0x38800000u);
    magnitude = select(magnitude, 0x7c00u | ((a >> 13u) & 0x3ffu), a >= 0x7f800000u);
    return sign | magnitude;
}

// f32 -> bf16 bits for a value that is a bf16 already: its top half.
fn bf16_bits_of(v: f32) -> u32 {
    return bitcast<u32>(v) >> 16u;
}
