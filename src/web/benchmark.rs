//! The benchmark's measurements in JavaScript (the demo page's benchmark panel): built
//! with the `benchmark` feature, which the demo page's build turns on and the npm package
//! leaves off.

use super::options::count;
use super::{set, to_js, Normalizer};
use js_sys::{Array, Object};
use wasm_bindgen::prelude::*;

#[wasm_bindgen]
impl Normalizer {
    /// Times the copies, RMSNorm, pRMSNorm (p = 1/16, 1/2) and LayerNorm on `rows x hidden`
    /// (wall clock over many dispatches per sample: browsers coarsen timestamps), each
    /// checked against the reference first.
    #[wasm_bindgen(unchecked_return_type = "Promise<BenchmarkRecord[]>")]
    pub fn benchmark(&self, rows: f64, hidden: f64) -> js_sys::Promise {
        self.bench_promise(rows, hidden, false)
    }

    /// Times RMSNorm in f32, f16 and bf16, fused with the residual add and unfused (an add
    /// kernel, then RMSNorm), next to copies of tensors of each element size, on
    /// `rows x hidden` (any hidden size: the tensors are padded to whole vec4s for the
    /// copies and adds), like `cargo xtask bench`'s second table.
    #[wasm_bindgen(js_name = benchmarkFormats, unchecked_return_type = "Promise<BenchmarkRecord[]>")]
    pub fn benchmark_formats(&self, rows: f64, hidden: f64) -> js_sys::Promise {
        self.bench_promise(rows, hidden, true)
    }

    /// Wall-clock medians (ms) of 20 whole 1 x 4096 rmsNorm calls and of 20 empty
    /// dispatches with a readback: `{ callMs, emptyMs }`.
    #[wasm_bindgen(js_name = roundTrips, unchecked_return_type = "Promise<{ callMs: number, emptyMs: number }>")]
    pub fn round_trips(&self) -> js_sys::Promise {
        let gpu = self.gpu.clone();
        wasm_bindgen_futures::future_to_promise(async move {
            let (call, empty) = crate::bench::round_trips(&gpu, 20)
                .await
                .map_err(|e| JsValue::from(to_js(e)))?;
            let object = Object::new();
            set(&object, "callMs", &(call * 1e3).into());
            set(&object, "emptyMs", &(empty * 1e3).into());
            Ok(object.into())
        })
    }

    /// The promise of a benchmark of `rows x hidden`: the kernels of `bench_shape`, or with
    /// `formats` those of `bench_formats`; wall clock, median of 5 samples of >= 50 ms.
    fn bench_promise(&self, rows: f64, hidden: f64, formats: bool) -> js_sys::Promise {
        let gpu = self.gpu.clone();
        wasm_bindgen_futures::future_to_promise(async move {
            let rows = count("rows", rows)?;
            let hidden = count("hidden", hidden)?;
            let options = crate::bench::BenchOptions {
                samples: 5,
                min_sample_seconds: 0.05,
            };
            let timer = crate::timing::GpuTimer::wall_clock();
            let measured = if formats {
                crate::bench::bench_formats(&gpu, &timer, rows, hidden, &options).await
            } else {
                crate::bench::bench_shape(&gpu, &timer, rows, hidden, &options).await
            };
            let measured = measured.map_err(|e| JsValue::from(to_js(e)))?;
            Ok(benchmark_records(rows, hidden, measured))
        })
    }
}

/// Benchmark measurements as `BenchmarkRecord` objects.
fn benchmark_records(rows: u32, hidden: u32, measured: Vec<crate::bench::Measurement>) -> JsValue {
    let records = Array::new();
    for m in measured {
        let object = Object::new();
        set(&object, "rows", &rows.into());
        set(&object, "hidden", &hidden.into());
        set(&object, "kernel", &m.kernel.into());
        set(&object, "p", &m.p.map_or(JsValue::NULL, JsValue::from));
        set(&object, "variant", &m.variant.into());
        set(&object, "medianMs", &(m.seconds * 1e3).into());
        set(&object, "gbps", &m.gbps.into());
        set(&object, "solCopy", &m.sol_copy.into());
        set(&object, "solKernel", &m.sol_kernel.into());
        set(&object, "dtype", &m.dtype.name().into());
        set(&object, "residual", &m.residual.into());
        set(&object, "pass", &m.pass.into());
        records.push(&object);
    }
    records.into()
}
