//! burn devices on wgpu, and what this crate's launch plan knows of them.

use burn::backend::wgpu::graphics::AutoGraphicsApi;
use burn::backend::wgpu::{try_init_setup, RuntimeOptions, WgpuBackend, WgpuDevice};
use burn::backend::{CubeDevice, DispatchDevice};
use burn::tensor::Device;
use std::collections::HashMap;
use std::sync::{Mutex, OnceLock, PoisonError};
use wgpu_rmsnorm::shaders::ShaderTarget;
use wgpu_rmsnorm::{wgpu, DeviceCaps};

/// Capabilities of the devices [`wgpu_device`] brought up, read from their wgpu device.
fn registered() -> &'static Mutex<HashMap<WgpuDevice, DeviceCaps>> {
    static CAPS: OnceLock<Mutex<HashMap<WgpuDevice, DeviceCaps>>> = OnceLock::new();
    CAPS.get_or_init(Mutex::default)
}

/// The graphics API `WGPU_BACKEND` names (`vulkan`, `gl`, `metal`, `dx12`; unset or anything
/// else: burn's own choice), as wgpu's and this crate's tools read it.
pub fn backend_from_env() -> WgpuBackend {
    match std::env::var("WGPU_BACKEND")
        .unwrap_or_default()
        .to_ascii_lowercase()
        .as_str()
    {
        "vulkan" | "vk" => WgpuBackend::Vulkan,
        "gl" | "gles" | "opengl" => WgpuBackend::Gl,
        "metal" | "mtl" => WgpuBackend::Metal,
        "dx12" | "d3d12" => WgpuBackend::Dx12,
        _ => WgpuBackend::Auto,
    }
}

/// burn's default wgpu device on `backend` (`WgpuBackend::Auto`: burn's choice), brought up
/// here so that this crate's launch plan reads the exact capabilities of its wgpu device
/// (features, limits, adapter type). Where burn already brought that device up, it is
/// returned as it is and the plan works from what burn reports of it
/// ([`caps_of`]). Every call for the same backend returns the same device.
pub fn wgpu_device(backend: WgpuBackend) -> Device {
    let device = WgpuDevice::default().on(backend);
    let mut caps = registered().lock().unwrap_or_else(PoisonError::into_inner);
    if !caps.contains_key(&device) {
        if let Ok(setup) = try_init_setup::<AutoGraphicsApi>(&device, RuntimeOptions::default()) {
            caps.insert(device.clone(), DeviceCaps::from_device(&setup.device));
        }
    }
    Device::new(device)
}

/// What the launch plan knows of `device`: the exact capabilities where [`wgpu_device`]
/// brought it up, else what burn's runtime reports. cubecl reports no subgroups on CPU
/// adapters (so the plan uses workgroup-memory reductions there), no adapter type (a device
/// with no physical card is taken as a CPU adapter) and no graphics API.
pub fn caps_of(device: &WgpuDevice, properties: &cubecl::ir::DeviceProperties) -> DeviceCaps {
    if let Some(caps) = registered()
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(device)
    {
        return caps.clone();
    }
    let hardware = &properties.hardware;
    let subgroups = properties
        .features
        .plane
        .contains(cubecl::ir::features::Plane::Ops);
    DeviceCaps {
        device_type: match properties.identity.physical {
            None => wgpu::DeviceType::Cpu,
            Some(_) => wgpu::DeviceType::Other,
        },
        // Not reported: planned for no API in particular.
        backend: wgpu::Backend::Noop,
        subgroups,
        shader_f16: false,
        subgroup_min_size: hardware.plane_size_min,
        subgroup_max_size: hardware.plane_size_max,
        max_invocations: hardware.max_units_per_cube.min(hardware.max_cube_dim.0),
        max_workgroup_storage: u32::try_from(hardware.max_shared_memory_size).unwrap_or(u32::MAX),
        // cubecl keeps one back for Metal's buffer of array lengths.
        max_storage_buffers_per_stage: hardware.max_bindings,
        max_storage_binding: properties.memory.max_page_size,
        max_buffer_size: properties.memory.max_page_size,
        storage_offset_alignment: properties.memory.alignment,
        max_workgroups_per_dimension: hardware.max_cube_count.0,
        target: ShaderTarget::CURRENT,
    }
}

/// burn's cube device of `device`, with autodiff or without.
pub(crate) fn cube_device(device: &Device) -> Option<CubeDevice> {
    match device.clone().without_autodiff().as_dispatch() {
        DispatchDevice::Cube(cube) => Some(cube.clone()),
        #[allow(unreachable_patterns)]
        _ => None,
    }
}

/// The adapter behind `device` and the runtime burn runs on it (e.g. `llvmpipe (LLVM 15.0.6,
/// 256 bits) on wgpu<wgsl>`), or the device itself where it is not a cube device.
pub fn adapter_name(device: &Device) -> String {
    match cube_device(device) {
        Some(cube) => {
            let client = cube.client();
            format!("{} on {}", client.properties().identity.name, client.name())
        }
        None => format!("{device:?}"),
    }
}
