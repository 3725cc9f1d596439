//! Which adapter a context opens: the choice (environment variables, ranking) and finding
//! it, natively among every adapter of the allowed backends, in the browser the one offered.
//! Below both the context and the platform layer; imports neither.

use crate::error::{Error, Result};

/// Which adapter [`GpuContext::new`] takes.
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterChoice {
    /// Backends to look at (`WGPU_BACKEND`, e.g. `vulkan` or `vulkan,gl`).
    pub backends: wgpu::Backends,
    /// Only adapters whose name contains this, case-insensitive (`WGPU_ADAPTER_NAME`).
    pub name: Option<String>,
    /// `HighPerformance` ranks discrete GPUs first, `LowPower` integrated ones
    /// (`WGPU_POWER_PREF`: `high` or `low`). Hardware always ranks above software adapters.
    pub power_preference: wgpu::PowerPreference,
}

impl Default for AdapterChoice {
    fn default() -> Self {
        Self {
            backends: wgpu::Backends::all(),
            name: None,
            power_preference: wgpu::PowerPreference::HighPerformance,
        }
    }
}

impl AdapterChoice {
    /// The default choice, changed by `WGPU_BACKEND`, `WGPU_ADAPTER_NAME` and `WGPU_POWER_PREF`.
    pub fn from_env() -> Self {
        let default = Self::default();
        #[cfg(not(target_arch = "wasm32"))]
        let name = std::env::var("WGPU_ADAPTER_NAME")
            .ok()
            .filter(|n| !n.is_empty());
        #[cfg(target_arch = "wasm32")]
        let name = None;
        Self {
            backends: wgpu::Backends::from_env().unwrap_or(default.backends),
            name,
            power_preference: wgpu::PowerPreference::from_env().unwrap_or(default.power_preference),
        }
    }

    /// Higher is better: device type by power preference, then Vulkan/Metal/DX12 over GL.
    pub fn rank(&self, info: &wgpu::AdapterInfo) -> (u8, u8) {
        use wgpu::DeviceType::*;
        let low_power = self.power_preference == wgpu::PowerPreference::LowPower;
        let device = match info.device_type {
            DiscreteGpu if low_power => 3,
            IntegratedGpu if low_power => 4,
            DiscreteGpu => 4,
            IntegratedGpu => 3,
            VirtualGpu => 2,
            Cpu => 1,
            Other => 0,
        };
        let backend = match info.backend {
            wgpu::Backend::Gl => 0,
            _ => 1,
        };
        (device, backend)
    }
}

/// The adapter: on native, every adapter of the allowed backends is listed and the best by
/// [`AdapterChoice`] is taken; in the browser there is the one it offers.
#[cfg(not(target_arch = "wasm32"))]
pub(crate) async fn find_adapter(
    instance: &wgpu::Instance,
    choice: &AdapterChoice,
) -> Result<wgpu::Adapter> {
    if choice.backends.is_empty() {
        let given = std::env::var("WGPU_BACKEND").unwrap_or_default();
        return Err(Error::NoAdapter(format!(
            "no backend is allowed (WGPU_BACKEND={given:?} names none): use vulkan, metal, \
             dx12 or gl, comma-separated"
        )));
    }
    let adapters = instance.enumerate_adapters(choice.backends).await;
    if adapters.is_empty() {
        return Err(Error::NoAdapter(format!(
            "no adapter on backends {:?}. Install a GPU driver, or the software Vulkan \
             driver lavapipe (apt-get install mesa-vulkan-drivers), or allow more backends \
             (WGPU_BACKEND)",
            choice.backends
        )));
    }
    let described: Vec<String> = adapters
        .iter()
        .map(|a| {
            let info = a.get_info();
            format!("{} ({:?}, {:?})", info.name, info.backend, info.device_type)
        })
        .collect();
    let matching = adapters.into_iter().filter(|a| {
        choice.name.as_ref().is_none_or(|name| {
            a.get_info()
                .name
                .to_lowercase()
                .contains(&name.to_lowercase())
        })
    });
    matching
        .max_by_key(|a| choice.rank(&a.get_info()))
        .ok_or_else(|| {
            Error::NoAdapter(format!(
                "no adapter name contains {:?} (WGPU_ADAPTER_NAME); available: {}",
                choice.name.as_deref().unwrap_or_default(),
                described.join(", ")
            ))
        })
}

/// How to get WebGPU, for the messages of a browser that has none.
#[cfg(target_arch = "wasm32")]
const WEBGPU_HELP: &str = "WebGPU is in Chrome and Edge 113+, Safari 26+ and Firefox 141+ \
     (Windows, macOS); Chromium on Linux needs --enable-unsafe-webgpu (and --enable-features=Vulkan); \
     pages must come from https or http://localhost";

#[cfg(target_arch = "wasm32")]
pub(crate) async fn find_adapter(
    instance: &wgpu::Instance,
    choice: &AdapterChoice,
) -> Result<wgpu::Adapter> {
    if !wgpu::util::is_browser_webgpu_supported().await {
        return Err(Error::NoAdapter(format!(
            "this browser has no WebGPU (navigator.gpu is missing or offers no adapter). \
             {WEBGPU_HELP}"
        )));
    }
    instance
        .request_adapter(&wgpu::RequestAdapterOptions {
            power_preference: choice.power_preference,
            ..Default::default()
        })
        .await
        .map_err(|e| {
            Error::NoAdapter(format!(
                "this browser offers no WebGPU adapter ({e}). {WEBGPU_HELP}"
            ))
        })
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;

    #[test]
    fn adapter_ranking_prefers_hardware_then_native_backends() {
        let info = wgpu::AdapterInfo::new;
        use wgpu::{Backend, DeviceType::*};
        let high = AdapterChoice::default();
        let low = AdapterChoice {
            power_preference: wgpu::PowerPreference::LowPower,
            ..AdapterChoice::default()
        };
        let discrete = info(DiscreteGpu, Backend::Vulkan);
        let integrated = info(IntegratedGpu, Backend::Vulkan);
        let lavapipe = info(Cpu, Backend::Vulkan);
        let llvmpipe_gl = info(Cpu, Backend::Gl);
        assert!(high.rank(&discrete) > high.rank(&integrated));
        assert!(low.rank(&integrated) > low.rank(&discrete));
        assert!(low.rank(&discrete) > low.rank(&lavapipe));
        assert!(high.rank(&lavapipe) > high.rank(&llvmpipe_gl));
    }
}
