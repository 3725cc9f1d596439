//! Shared by the GPU test files: the device, test data, running a kernel, comparing.
#![allow(dead_code)]

use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};
use wgpu::util::DeviceExt;
use wgpu_rmsnorm::kernel::NormKind;
use wgpu_rmsnorm::reference::{self, F32_ABS_TOL, F32_REL_TOL};
use wgpu_rmsnorm::{
    bf16, block_on, f16, BufferRegion, DType, GpuContext, KernelOptions, NormKernel, Reduction,
    RmsNorm, RmsNormBuffers, RmsNormConfig,
};

/// The shared context, held by one test at a time, or `None` (announced loudly) when there is
/// no adapter and REQUIRE_GPU is not set. With REQUIRE_GPU=1 a missing adapter fails the test.
///
/// Tests take turns: wgpu's GL backend holds one EGL context lock per device and panics
/// ("Could not lock adapter context") after waiting 6 s behind another thread's long submit.
pub fn gpu() -> Option<GpuTurn> {
    static GPU: OnceLock<Option<GpuContext>> = OnceLock::new();
    static TURN: Mutex<()> = Mutex::new(());
    let turn = TURN.lock().unwrap_or_else(PoisonError::into_inner);
    let context = GPU.get_or_init(|| {
        std::env::set_var("XDG_RUNTIME_DIR", std::env::temp_dir());
        match GpuContext::new_blocking().map(|gpu| gpu.with_call_timing(true)) {
            Ok(gpu) => {
                let info = gpu.adapter_info();
                eprintln!("GPU tests run on {} ({:?})", info.name, info.backend);
                Some(gpu)
            }
            Err(e) if std::env::var("REQUIRE_GPU").is_ok_and(|v| v == "1") => {
                panic!("REQUIRE_GPU=1 but no GPU adapter: {e}")
            }
            Err(e) => {
                eprintln!("*** GPU TESTS SKIPPED: no GPU adapter ({e}). Set REQUIRE_GPU=1 to fail instead. ***");
                None
            }
        }
    });
    context.as_ref().map(|context| GpuTurn {
        context,
        _turn: turn,
    })
}

/// The shared context for as long as a test holds it.
pub struct GpuTurn {
    context: &'static GpuContext,
    _turn: MutexGuard<'static, ()>,
}

impl std::ops::Deref for GpuTurn {
    type Target = GpuContext;
    fn deref(&self) -> &GpuContext {
        self.context
    }
}

/// Deterministic data of varied sign and magnitude.
pub fn data(len: usize, seed: u64) -> Vec<f32> {
    reference::sample_data(len, seed, 3.0)
}

/// The reductions to test on this device: all three where it has subgroups.
pub fn reductions(gpu: &GpuContext) -> Vec<Reduction> {
    let mut all = vec![Reduction::WorkgroupTree];
    if gpu.device().features().contains(wgpu::Features::SUBGROUP) {
        all.extend([Reduction::Subgroups, Reduction::SingleSubgroup]);
    }
    all
}

/// Runs `body` inside validation and out-of-memory error scopes and fails on any error.
pub fn no_gpu_errors<T>(device: &wgpu::Device, body: impl FnOnce() -> T) -> T {
    let oom = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
    let validation = device.push_error_scope(wgpu::ErrorFilter::Validation);
    let result = body();
    let v = block_on(validation.pop());
    let o = block_on(oom.pop());
    assert!(v.is_none(), "wgpu validation error: {v:?}");
    assert!(o.is_none(), "wgpu out-of-memory error: {o:?}");
    result
}

/// Reads `buffer` (which needs COPY_SRC) back as f32, its whole 4-byte words.
pub fn read_back(gpu: &GpuContext, buffer: &wgpu::Buffer) -> Vec<f32> {
    bytemuck::pod_collect_to_vec(&read_bytes(gpu, buffer, buffer.size() & !3))
}

/// The first `size` bytes of `buffer` (which needs COPY_SRC; `size` a multiple of 4).
pub fn read_bytes(gpu: &GpuContext, buffer: &wgpu::Buffer, size: u64) -> Vec<u8> {
    let device = gpu.device();
    let staging = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("test readback"),
        size,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let mut encoder = device.create_command_encoder(&Default::default());
    encoder.copy_buffer_to_buffer(buffer, 0, &staging, 0, size);
    gpu.queue().submit([encoder.finish()]);
    let slice = staging.slice(..);
    slice.map_async(wgpu::MapMode::Read, |r| r.expect("map"));
    device
        .poll(wgpu::PollType::wait_indefinitely())
        .expect("poll");
    let bytes = slice.get_mapped_range().expect("mapped range").to_vec();
    staging.unmap();
    bytes
}

/// A storage buffer holding `contents`, readable back.
pub fn storage_buffer(gpu: &GpuContext, contents: &[f32]) -> wgpu::Buffer {
    gpu.device()
        .create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("test storage"),
            contents: bytemuck::cast_slice(contents),
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
        })
}

/// Runs the low-level kernel with `options` on `x` and returns y.
pub fn run_kernel(
    gpu: &GpuContext,
    config: &RmsNormConfig,
    options: &KernelOptions,
    x: &[f32],
    gain: Option<&[f32]>,
    bias: Option<&[f32]>,
) -> Vec<f32> {
    let kernel = RmsNorm::new(gpu.device(), config, options).expect("kernel");
    run_made_kernel(gpu, &kernel, config.hidden, x, gain, bias)
}

/// Runs a kernel already made (RMSNorm or LayerNorm) on `x`, rows of `hidden`, and returns y,
/// failing on any wgpu error.
pub fn run_made_kernel<N: NormKind>(
    gpu: &GpuContext,
    kernel: &NormKernel<N>,
    hidden: u32,
    x: &[f32],
    gain: Option<&[f32]>,
    bias: Option<&[f32]>,
) -> Vec<f32> {
    let device = gpu.device();
    no_gpu_errors(device, || {
        let x_buffer = storage_buffer(gpu, x);
        let y_buffer = storage_buffer(gpu, &vec![f32::NAN; x.len()]);
        let gain_buffer = gain.map(|g| storage_buffer(gpu, g));
        let bias_buffer = bias.map(|b| storage_buffer(gpu, b));
        let buffers = RmsNormBuffers {
            input: BufferRegion::whole(&x_buffer),
            output: BufferRegion::whole(&y_buffer),
            gain: gain_buffer.as_ref().map(BufferRegion::whole),
            bias: bias_buffer.as_ref().map(BufferRegion::whole),
            residual: None,
            sum: None,
            stats: None,
        };
        let rows = (x.len() / hidden as usize) as u32;
        let mut encoder = device.create_command_encoder(&Default::default());
        kernel
            .encode(device, &mut encoder, &buffers, rows)
            .expect("encode");
        gpu.queue().submit([encoder.finish()]);
        read_back(gpu, &y_buffer)
    })
}

/// Asserts y matches the f64 reference of RMSNorm within the f32 tolerance.
pub fn assert_matches_reference(
    y: &[f32],
    x: &[f32],
    config: &RmsNormConfig,
    gain: Option<&[f32]>,
    bias: Option<&[f32]>,
    what: &str,
) {
    let expected = reference::rms_norm(x, config, gain, bias).expect("reference");
    assert_close(y, &expected, what);
}

/// Asserts y matches `expected` within the f32 tolerance (relative 1e-5, absolute 1e-6).
pub fn assert_close(y: &[f32], expected: &[f64], what: &str) {
    let stats = reference::compare(y, expected, F32_ABS_TOL, F32_REL_TOL);
    assert_eq!(
        stats.failures,
        0,
        "{what}: {} of {} elements off (max abs {:e}, max rel {:e})",
        stats.failures,
        y.len(),
        stats.max_abs,
        stats.max_rel
    );
}

/// This process's resident memory in KiB (Linux; 0 where it cannot be read).
pub fn resident_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// The byte every guard region is filled with.
pub const GUARD: u8 = 0xA5;

/// Values of `dtype` (widened to f32) as little-endian bytes.
pub fn encode(values: &[f32], dtype: DType) -> Vec<u8> {
    values
        .iter()
        .flat_map(|&v| match dtype {
            DType::F32 => v.to_le_bytes().to_vec(),
            DType::F16 => f16::from_f32(v).to_bits().to_le_bytes().to_vec(),
            DType::Bf16 => bf16::from_f32(v).to_bits().to_le_bytes().to_vec(),
        })
        .collect()
}

/// Little-endian bytes of `dtype` widened to f32.
pub fn decode(bytes: &[u8], dtype: DType) -> Vec<f32> {
    match dtype {
        DType::F32 => bytemuck::pod_collect_to_vec(bytes),
        DType::F16 => bytes
            .chunks_exact(2)
            .map(|b| f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32())
            .collect(),
        DType::Bf16 => bytes
            .chunks_exact(2)
            .map(|b| bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32())
            .collect(),
    }
}

/// A tensor in a buffer of its own at an element offset, guard bytes all around.
pub struct Placed {
    pub buffer: wgpu::Buffer,
    /// Byte offset of the first element.
    pub offset: u64,
    /// Bytes of the tensor.
    pub len: u64,
}

impl Placed {
    pub fn new(gpu: &GpuContext, values: &[f32], dtype: DType, offset_elements: u64) -> Self {
        let offset = offset_elements * dtype.bytes();
        let data = encode(values, dtype);
        // At least 16 guard bytes after the data: rows at any element bind whole vec4s.
        let mut contents = vec![GUARD; (offset as usize + data.len() + 18).next_multiple_of(4)];
        contents[offset as usize..offset as usize + data.len()].copy_from_slice(&data);
        let buffer = gpu
            .device()
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("formats test"),
                contents: &contents,
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
            });
        Self {
            buffer,
            offset,
            len: data.len() as u64,
        }
    }

    pub fn region(&self) -> BufferRegion<'_> {
        BufferRegion {
            buffer: &self.buffer,
            offset: self.offset,
        }
    }

    /// The tensor's values read back; panics if a byte outside the tensor changed.
    pub fn read(&self, gpu: &GpuContext, dtype: DType, what: &str) -> Vec<f32> {
        let bytes = read_bytes(gpu, &self.buffer, self.buffer.size());
        let (start, end) = (self.offset as usize, (self.offset + self.len) as usize);
        let outside = bytes[..start].iter().chain(&bytes[end..]);
        assert!(
            outside.into_iter().all(|&b| b == GUARD),
            "{what}: bytes outside the tensor were written"
        );
        decode(&bytes[start..end], dtype)
    }
}

/// The f16 implementations this device runs: packed words always, WGSL's f16 where the
/// device has SHADER_F16.
pub fn f16_options(gpu: &GpuContext) -> Vec<KernelOptions> {
    let mut all = vec![KernelOptions {
        native_f16: Some(false),
        ..KernelOptions::default()
    }];
    if gpu.device().features().contains(wgpu::Features::SHADER_F16) {
        all.push(KernelOptions {
            native_f16: Some(true),
            ..KernelOptions::default()
        });
    } else {
        eprintln!("this device has no SHADER_F16: WGSL's f16 type is not tested here");
    }
    all
}
