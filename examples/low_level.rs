//! The low-level API in a training-style loop: your own device (opened with the features
//! the kernels use), your own buffers and encoder. The kernel is planned and its bind groups
//! built once; each step records one compute pass with nothing created, and submits.
//!
//!     cargo run --example low_level

#[cfg(not(target_arch = "wasm32"))]
use wgpu::util::DeviceExt;
#[cfg(not(target_arch = "wasm32"))]
use wgpu_rmsnorm::reference::{self, F32_ABS_TOL, F32_REL_TOL};
#[cfg(not(target_arch = "wasm32"))]
use wgpu_rmsnorm::{
    wgpu, BufferRegion, Gain, KernelOptions, RmsNorm, RmsNormBuffers, RmsNormConfig,
};

/// Errors reported by their message (a `main` returning `Result` would print their Debug form).
#[cfg(not(target_arch = "wasm32"))]
fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(not(target_arch = "wasm32"))]
fn run() -> Result<(), Box<dyn std::error::Error>> {
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapter = pollster::block_on(instance.request_adapter(&Default::default()))?;
    // Subgroups, f16 and timestamps where the adapter has them, and all of its limits:
    // DeviceDescriptor::default() would leave the kernels without subgroups.
    let (device, queue) =
        pollster::block_on(adapter.request_device(&wgpu_rmsnorm::device_descriptor(&adapter)))?;
    println!(
        "adapter: {} ({:?})",
        adapter.get_info().name,
        adapter.get_info().backend
    );

    let (rows, hidden) = (256u32, 2048u32);
    let config = RmsNormConfig::new(hidden).with_gain(Gain::Scale);
    let kernel = RmsNorm::new(&device, &config, &KernelOptions::default())?;

    let x = reference::sample_data((rows * hidden) as usize, 3, 2.0);
    let gain = reference::sample_data(hidden as usize, 4, 1.0);
    let storage = |contents: &[f32], usage| {
        device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: None,
            contents: bytemuck::cast_slice(contents),
            usage: wgpu::BufferUsages::STORAGE | usage,
        })
    };
    let input = storage(&x, wgpu::BufferUsages::COPY_DST);
    let weights = storage(&gain, wgpu::BufferUsages::empty());
    let output = storage(&vec![0.0; x.len()], wgpu::BufferUsages::COPY_SRC);
    let readback = device.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: output.size(),
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });

    let buffers = RmsNormBuffers {
        gain: Some(BufferRegion::whole(&weights)),
        ..RmsNormBuffers::new(BufferRegion::whole(&input), BufferRegion::whole(&output))
    };
    println!("variant: {}", kernel.variant_name(&buffers, rows));
    let prepared = kernel.prepare(&device, &buffers, rows)?;
    let steps = 100;
    let start = std::time::Instant::now();
    for _ in 0..steps {
        let mut encoder = device.create_command_encoder(&Default::default());
        kernel.record(&prepared, &mut encoder, None)?;
        queue.submit([encoder.finish()]);
    }
    let mut encoder = device.create_command_encoder(&Default::default());
    encoder.copy_buffer_to_buffer(&output, 0, &readback, 0, output.size());
    queue.submit([encoder.finish()]);
    readback
        .slice(..)
        .map_async(wgpu::MapMode::Read, |result| result.expect("map"));
    device.poll(wgpu::PollType::wait_indefinitely())?;
    let y: Vec<f32> = bytemuck::pod_collect_to_vec(&readback.slice(..).get_mapped_range()?);
    println!(
        "{steps} steps of {rows} x {hidden}: {:.3} ms per step (wall clock, one readback at the end)",
        start.elapsed().as_secs_f64() * 1e3 / f64::from(steps)
    );

    let expected = reference::rms_norm(&x, &config, Some(&gain), None)?;
    let stats = reference::compare(&y, &expected, F32_ABS_TOL, F32_REL_TOL);
    println!(
        "max abs err {:.2e}, max rel err {:.2e}",
        stats.max_abs, stats.max_rel
    );
    if stats.failures > 0 {
        return Err(format!("{} values outside the tolerance", stats.failures).into());
    }
    Ok(())
}

// The examples are native programs; in the browser the npm package is the way in.
#[cfg(target_arch = "wasm32")]
fn main() {}
