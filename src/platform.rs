//! The few things that differ between native wgpu and the browser's WebGPU.

use crate::error::{Error, Result};

/// Waits until `slice` is mapped for reading. Natively this blocks in `device.poll`; in the
/// browser the event loop completes the mapping and the future resolves then.
pub(crate) async fn map_read(device: &wgpu::Device, slice: wgpu::BufferSlice<'_>) -> Result<()> {
    let (sender, receiver) = futures_channel::oneshot::channel();
    slice.map_async(wgpu::MapMode::Read, move |result| {
        // The receiver only goes away if the caller's future was dropped.
        let _ = sender.send(result);
    });
    wait_for_device(device)?;
    match receiver.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(Error::Readback(e.to_string())),
        Err(_) => Err(Error::Readback("the device dropped the map request".into())),
    }
}

#[cfg(not(target_arch = "wasm32"))]
pub(crate) fn wait_for_device(device: &wgpu::Device) -> Result<()> {
    device
        .poll(wgpu::PollType::wait_indefinitely())
        .map(|_| ())
        .map_err(|e| Error::Readback(e.to_string()))
}

#[cfg(target_arch = "wasm32")]
pub(crate) fn wait_for_device(_device: &wgpu::Device) -> Result<()> {
    Ok(())
}

/// Runs a future to completion on the current thread (native only).
#[cfg(not(target_arch = "wasm32"))]
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    pollster::block_on(future)
}

/// The adapter: on native, every adapter of the allowed backends is listed and the best by
/// [`crate::context::AdapterChoice`] is taken; in the browser there is the one it offers.
#[cfg(not(target_arch = "wasm32"))]
pub(crate) async fn find_adapter(
    instance: &wgpu::Instance,
    choice: &crate::context::AdapterChoice,
) -> Result<wgpu::Adapter> {
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
    choice: &crate::context::AdapterChoice,
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

/// Seconds from an arbitrary origin, for wall-clock timing.
#[cfg(not(target_arch = "wasm32"))]
pub(crate) fn now_seconds() -> f64 {
    use std::sync::OnceLock;
    use std::time::Instant;
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    ORIGIN.get_or_init(Instant::now).elapsed().as_secs_f64()
}

/// `performance.now()` (microseconds or better where the browser allows), else `Date.now()`.
#[cfg(target_arch = "wasm32")]
pub(crate) fn now_seconds() -> f64 {
    use wasm_bindgen::JsCast;
    let now = js_sys::Reflect::get(&js_sys::global(), &"performance".into())
        .ok()
        .and_then(|performance| {
            let now = js_sys::Reflect::get(&performance, &"now".into()).ok()?;
            now.dyn_into::<js_sys::Function>()
                .ok()?
                .call0(&performance)
                .ok()
        })
        .and_then(|v| v.as_f64());
    now.unwrap_or_else(js_sys::Date::now) * 1e-3
}

/// Reports an error that has no caller to return to.
#[cfg(not(target_arch = "wasm32"))]
pub(crate) fn log_error(message: &str) {
    eprintln!("{message}");
}

#[cfg(target_arch = "wasm32")]
pub(crate) fn log_error(message: &str) {
    web_sys::console::error_1(&message.into());
}
