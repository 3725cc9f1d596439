//! Every bad input gets its typed error, never a panic and never a wgpu validation error.
#![cfg(not(target_arch = "wasm32"))] // Native GPU tests; tests/web.rs runs in the browser.

mod common;

use common::*;
use wgpu_rmsnorm::{
    BufferRegion, Error, Gain, GpuContext, KernelOptions, PartialRms, Reduction, RmsNorm,
    RmsNormBuffers, RmsNormConfig, Weights,
};

fn high_level(gpu: &GpuContext, x: &[f32], config: &RmsNormConfig, w: Weights<'_>) -> Error {
    no_gpu_errors(gpu.device(), || gpu.rms_norm_blocking(x, config, w)).unwrap_err()
}

#[test]
fn bad_configs_and_slices() {
    let Some(turn) = gpu() else { return };
    let gpu: &wgpu_rmsnorm::GpuContext = &turn;
    let x = data(64, 1);
    let c = RmsNormConfig::new(8);
    let v8 = data(8, 2);
    let v7 = data(7, 3);
    type Case<'a> = (
        &'a str,
        RmsNormConfig,
        Vec<f32>,
        Weights<'a>,
        fn(&Error) -> bool,
    );
    let cases: Vec<Case<'_>> = vec![
        (
            "hidden 0",
            RmsNormConfig::new(0),
            x.clone(),
            Weights::NONE,
            |e| matches!(e, Error::ZeroHiddenSize),
        ),
        (
            "length not a multiple",
            c,
            data(63, 4),
            Weights::NONE,
            |e| matches!(e, Error::InputNotMultipleOfHidden { len: 63, hidden: 8 }),
        ),
        (
            "p NaN",
            c.with_partial(PartialRms::Fraction(f64::NAN)),
            x.clone(),
            Weights::NONE,
            |e| matches!(e, Error::InvalidFraction { .. }),
        ),
        (
            "p 0",
            c.with_partial(PartialRms::Fraction(0.0)),
            x.clone(),
            Weights::NONE,
            |e| matches!(e, Error::InvalidFraction { .. }),
        ),
        (
            "p > 1",
            c.with_partial(PartialRms::Fraction(1.5)),
            x.clone(),
            Weights::NONE,
            |e| matches!(e, Error::InvalidFraction { .. }),
        ),
        (
            "k 0",
            c.with_partial(PartialRms::Count(0)),
            x.clone(),
            Weights::NONE,
            |e| matches!(e, Error::InvalidCount { k: 0, hidden: 8 }),
        ),
        (
            "k > n",
            c.with_partial(PartialRms::Count(9)),
            x.clone(),
            Weights::NONE,
            |e| matches!(e, Error::InvalidCount { k: 9, hidden: 8 }),
        ),
        (
            "eps < 0",
            c.with_eps(-1e-6),
            x.clone(),
            Weights::NONE,
            |e| matches!(e, Error::InvalidEps { .. }),
        ),
        (
            "eps NaN",
            c.with_eps(f32::NAN),
            x.clone(),
            Weights::NONE,
            |e| matches!(e, Error::InvalidEps { .. }),
        ),
        (
            "eps inf",
            c.with_eps(f32::INFINITY),
            x.clone(),
            Weights::NONE,
            |e| matches!(e, Error::InvalidEps { .. }),
        ),
        (
            "gain missing",
            c.with_gain(Gain::Scale),
            x.clone(),
            Weights::NONE,
            |e| matches!(e, Error::MissingWeight { which: "gain", .. }),
        ),
        (
            "bias missing",
            c.with_bias(true),
            x.clone(),
            Weights::NONE,
            |e| matches!(e, Error::MissingWeight { which: "bias", .. }),
        ),
        (
            "gain unexpected",
            c,
            x.clone(),
            Weights {
                gain: Some(&v8),
                bias: None,
            },
            |e| matches!(e, Error::UnexpectedWeight { which: "gain", .. }),
        ),
        (
            "bias unexpected",
            c,
            x.clone(),
            Weights {
                gain: None,
                bias: Some(&v8),
            },
            |e| matches!(e, Error::UnexpectedWeight { which: "bias", .. }),
        ),
        (
            "gain length",
            c.with_gain(Gain::UnitOffset),
            x.clone(),
            Weights {
                gain: Some(&v7),
                bias: None,
            },
            |e| {
                matches!(
                    e,
                    Error::WeightLength {
                        which: "gain",
                        len: 7,
                        hidden: 8
                    }
                )
            },
        ),
        (
            "bias length",
            c.with_bias(true),
            x.clone(),
            Weights {
                gain: None,
                bias: Some(&v7),
            },
            |e| {
                matches!(
                    e,
                    Error::WeightLength {
                        which: "bias",
                        len: 7,
                        hidden: 8
                    }
                )
            },
        ),
    ];
    for (what, config, x, weights, expected) in cases {
        let e = high_level(gpu, &x, &config, weights);
        assert!(expected(&e), "{what}: got {e:?}");
        assert!(!e.to_string().is_empty());
        eprintln!("{what}: {e}");
        if what != "length not a multiple" && !what.contains("gain") && !what.contains("bias") {
            let e = RmsNorm::new(gpu.device(), &config, &KernelOptions::default()).unwrap_err();
            assert!(expected(&e), "{what} (kernel): got {e:?}");
        }
    }
}

#[test]
fn bad_workgroup_sizes() {
    let Some(turn) = gpu() else { return };
    let gpu: &wgpu_rmsnorm::GpuContext = &turn;
    let config = RmsNormConfig::new(64);
    let mut sizes = vec![
        (Reduction::WorkgroupTree, 0),
        (Reduction::WorkgroupTree, 3),
        (Reduction::WorkgroupTree, 96),
        (Reduction::WorkgroupTree, 2048),
    ];
    if gpu.device().features().contains(wgpu::Features::SUBGROUP) {
        let too_big = gpu.adapter_info().subgroup_min_size * 2;
        sizes.push((Reduction::SingleSubgroup, too_big));
    }
    for (reduction, size) in sizes {
        let options = KernelOptions {
            reduction,
            workgroup_size: Some(size),
            ..KernelOptions::default()
        };
        let e = no_gpu_errors(gpu.device(), || {
            RmsNorm::new(gpu.device(), &config, &options)
        })
        .unwrap_err();
        assert!(
            matches!(e, Error::InvalidWorkgroupSize { size: s, .. } if s == size),
            "{reduction:?} {size}: {e:?}"
        );
        eprintln!("{reduction:?} workgroup size {size}: {e}");
    }
}

#[test]
fn hidden_size_beyond_the_binding_limit() {
    let Some(turn) = gpu() else { return };
    let gpu: &wgpu_rmsnorm::GpuContext = &turn;
    let config = RmsNormConfig::new(u32::MAX);
    let e = RmsNorm::new(gpu.device(), &config, &KernelOptions::default()).unwrap_err();
    assert!(matches!(e, Error::RowExceedsBindingLimit { .. }), "{e:?}");
    eprintln!("hidden u32::MAX: {e}");
}

/// The low-level API's buffer checks.
#[test]
fn bad_buffers() {
    let Some(turn) = gpu() else { return };
    let gpu: &wgpu_rmsnorm::GpuContext = &turn;
    let device = gpu.device();
    let n = 16u32;
    let rows = 4u32;
    let bytes = u64::from(n * rows) * 4;
    let make = |size: u64, usage: wgpu::BufferUsages| {
        device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size,
            usage,
            mapped_at_creation: false,
        })
    };
    let storage = wgpu::BufferUsages::STORAGE;
    let x = make(bytes, storage);
    let y = make(bytes, storage);
    let big = make(bytes + 64, storage);
    let small = make(bytes - 4, storage);
    let not_storage = make(bytes, wgpu::BufferUsages::COPY_DST);
    let gain = make(u64::from(n) * 4, storage);
    let short_gain = make(u64::from(n) * 4 - 4, storage);
    let config = RmsNormConfig::new(n).with_gain(Gain::Scale);
    let kernel = RmsNorm::new(device, &config, &KernelOptions::default()).unwrap();
    let region = |buffer, offset| BufferRegion { buffer, offset };
    let ok = RmsNormBuffers {
        input: (&x).into(),
        output: (&y).into(),
        gain: Some((&gain).into()),
        bias: None,
        residual: None,
        sum: None,
        stats: None,
    };
    type Check = fn(&Error) -> bool;
    let cases: Vec<(&str, RmsNormBuffers<'_>, Check)> = vec![
        (
            "input without STORAGE",
            RmsNormBuffers {
                input: (&not_storage).into(),
                ..ok
            },
            |e| matches!(e, Error::MissingStorageUsage { which: "input" }),
        ),
        (
            "output without STORAGE",
            RmsNormBuffers {
                output: (&not_storage).into(),
                ..ok
            },
            |e| matches!(e, Error::MissingStorageUsage { which: "output" }),
        ),
        (
            "input offset 2",
            RmsNormBuffers {
                input: region(&big, 2),
                ..ok
            },
            |e| {
                matches!(
                    e,
                    Error::MisalignedOffset {
                        which: "input",
                        offset: 2,
                        element_bytes: 4
                    }
                )
            },
        ),
        (
            "output offset 6",
            RmsNormBuffers {
                output: region(&big, 6),
                ..ok
            },
            |e| {
                matches!(
                    e,
                    Error::MisalignedOffset {
                        which: "output",
                        offset: 6,
                        element_bytes: 4
                    }
                )
            },
        ),
        (
            "gain offset 1",
            RmsNormBuffers {
                gain: Some(region(&big, 1)),
                ..ok
            },
            |e| {
                matches!(
                    e,
                    Error::MisalignedOffset {
                        which: "gain",
                        offset: 1,
                        element_bytes: 4
                    }
                )
            },
        ),
        (
            "input too small",
            RmsNormBuffers {
                input: (&small).into(),
                ..ok
            },
            |e| matches!(e, Error::BufferTooSmall { which: "input", .. }),
        ),
        (
            "output too small at offset",
            RmsNormBuffers {
                output: region(&big, 128),
                ..ok
            },
            |e| {
                matches!(
                    e,
                    Error::BufferTooSmall {
                        which: "output",
                        offset: 128,
                        ..
                    }
                )
            },
        ),
        (
            "offset past the end",
            RmsNormBuffers {
                output: region(&y, bytes + 256),
                ..ok
            },
            |e| {
                matches!(
                    e,
                    Error::BufferTooSmall {
                        which: "output",
                        ..
                    }
                )
            },
        ),
        (
            "gain too small",
            RmsNormBuffers {
                gain: Some((&short_gain).into()),
                ..ok
            },
            // Rows do not change the gain's size: the message does not suggest fewer.
            |e| {
                matches!(
                    e,
                    Error::BufferTooSmall {
                        which: "gain",
                        per_row: false,
                        ..
                    }
                ) && !e.to_string().contains("fewer rows")
            },
        ),
        ("gain missing", RmsNormBuffers { gain: None, ..ok }, |e| {
            matches!(e, Error::MissingWeight { which: "gain", .. })
        }),
        (
            "bias unexpected",
            RmsNormBuffers {
                bias: Some((&gain).into()),
                ..ok
            },
            |e| matches!(e, Error::UnexpectedWeight { which: "bias", .. }),
        ),
        (
            "output is input",
            RmsNormBuffers {
                output: region(&x, 0),
                ..ok
            },
            |e| {
                matches!(
                    e,
                    Error::AliasedOutput {
                        written: "output",
                        other: "input"
                    }
                )
            },
        ),
        (
            "output is gain",
            RmsNormBuffers {
                output: region(&gain, 0),
                gain: Some(region(&gain, 0)),
                ..ok
            },
            |e| {
                matches!(
                    e,
                    Error::AliasedOutput {
                        written: "output",
                        other: "gain"
                    } | Error::BufferTooSmall { .. }
                )
            },
        ),
        (
            "output shares the gain buffer",
            RmsNormBuffers {
                output: region(&big, 0),
                gain: Some(region(&big, bytes)),
                ..ok
            },
            |e| {
                matches!(
                    e,
                    Error::AliasedOutput {
                        written: "output",
                        other: "gain"
                    }
                )
            },
        ),
    ];
    for (what, buffers, expected) in cases {
        let e = no_gpu_errors(device, || {
            let mut encoder = device.create_command_encoder(&Default::default());
            let result = kernel.encode(device, &mut encoder, &buffers, rows);
            gpu.queue().submit([encoder.finish()]);
            result
        })
        .unwrap_err();
        assert!(expected(&e), "{what}: got {e:?}");
        eprintln!("{what}: {e}");
    }
    // Zero rows: nothing is recorded, even with buffers too small for a row.
    no_gpu_errors(device, || {
        let mut encoder = device.create_command_encoder(&Default::default());
        let tiny = make(4, storage);
        let buffers = RmsNormBuffers {
            input: (&tiny).into(),
            ..ok
        };
        kernel.encode(device, &mut encoder, &buffers, 0).unwrap();
        gpu.queue().submit([encoder.finish()]);
    });
}
