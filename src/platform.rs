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

/// Whether `device` is lost or destroyed, without its lost callback (which belongs to
/// whoever made the device): a lost device hands out invalid buffers, and a buffer mapped at
/// creation then has no mapped range. Browsers keep mapping such buffers, so there this
/// reports only what the error scopes and mappings of a call show.
pub(crate) fn device_is_lost(device: &wgpu::Device) -> bool {
    let probe = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("rmsnorm device probe"),
        size: 4,
        usage: wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: true,
    });
    let lost = probe.slice(..).get_mapped_range_mut().is_err();
    if !lost {
        probe.unmap();
    }
    lost
}

/// The value of a future that is already complete, else `None`. Natively wgpu's error
/// scopes resolve at once, so a synchronous call can read its own scope (in the browser they
/// resolve later).
#[cfg(not(target_arch = "wasm32"))]
pub(crate) fn ready_now<F: std::future::Future>(future: F) -> Option<F::Output> {
    let mut future = std::pin::pin!(future);
    let mut context = std::task::Context::from_waker(std::task::Waker::noop());
    match future.as_mut().poll(&mut context) {
        std::task::Poll::Ready(value) => Some(value),
        std::task::Poll::Pending => None,
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
