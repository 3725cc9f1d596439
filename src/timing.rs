//! GPU timing: timestamp queries where the device has them, wall clock around a whole
//! submit elsewhere. Used by the CLI and the benchmarks.
//!
//! With `TIMESTAMP_QUERY_INSIDE_ENCODERS` (native) the timestamps bracket the whole sample
//! in the encoder, so copies and kernels are timed alike. With `TIMESTAMP_QUERY` alone (the
//! browser) they are written by the first and the last compute pass of the sample.

use crate::error::{Error, Result};
use crate::platform;

/// Times work recorded into command encoders.
#[derive(Debug)]
pub struct GpuTimer {
    timestamps: Option<Timestamps>,
}

#[derive(Debug)]
struct Timestamps {
    /// Written by `CommandEncoder::write_timestamp` (else by the passes).
    in_encoder: bool,
    query_set: wgpu::QuerySet,
    resolve: wgpu::Buffer,
    readback: wgpu::Buffer,
    period_ns: f64,
}

/// What a recorder is asked to do with timestamps: write the start in its first pass and
/// the end in its last (the same pass when there is one).
pub type PassTimestamps<'a> = Option<wgpu::ComputePassTimestampWrites<'a>>;

impl GpuTimer {
    /// Uses timestamp queries if the device has `Features::TIMESTAMP_QUERY`.
    pub fn new(device: &wgpu::Device, queue: &wgpu::Queue) -> Self {
        let timestamps = device
            .features()
            .contains(wgpu::Features::TIMESTAMP_QUERY)
            .then(|| Timestamps {
                in_encoder: device
                    .features()
                    .contains(wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS),
                query_set: device.create_query_set(&wgpu::QuerySetDescriptor {
                    label: Some("timer queries"),
                    ty: wgpu::QueryType::Timestamp,
                    count: 2,
                }),
                resolve: device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("timer resolve"),
                    size: 16,
                    usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                    mapped_at_creation: false,
                }),
                readback: device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("timer readback"),
                    size: 16,
                    usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                }),
                period_ns: f64::from(queue.get_timestamp_period()),
            });
        Self { timestamps }
    }

    /// A timer that always uses the wall clock around a whole submit.
    pub fn wall_clock() -> Self {
        Self { timestamps: None }
    }

    /// Whether times come from timestamp queries (else from the wall clock).
    pub fn uses_timestamps(&self) -> bool {
        self.timestamps.is_some()
    }

    /// Whether work without a compute pass (a buffer copy) is timed by timestamps too.
    pub fn times_copies(&self) -> bool {
        self.timestamps.as_ref().is_some_and(|t| t.in_encoder)
    }

    /// Records `reps` repetitions with `record(encoder, timestamps)` into one submit and
    /// returns the seconds per repetition. `record` must pass `timestamps` to the compute pass
    /// it records (it is `Some` for the first and the last repetition where the passes write
    /// the timestamps). Work without a pass is timed by the wall clock unless
    /// [`GpuTimer::times_copies`].
    pub async fn time(
        &self,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        reps: u32,
        mut record: impl FnMut(&mut wgpu::CommandEncoder, PassTimestamps<'_>) -> Result<()>,
    ) -> Result<f64> {
        let reps = reps.max(1);
        let mut encoder = device.create_command_encoder(&Default::default());
        let in_encoder = self.times_copies();
        let t = self.timestamps.as_ref();
        if let Some(t) = t.filter(|_| in_encoder) {
            encoder.write_timestamp(&t.query_set, 0);
        }
        for rep in 0..reps {
            let writes = t.filter(|_| !in_encoder).and_then(|t| {
                let first = rep == 0;
                let last = rep + 1 == reps;
                (first || last).then_some(wgpu::ComputePassTimestampWrites {
                    query_set: &t.query_set,
                    beginning_of_pass_write_index: first.then_some(0),
                    end_of_pass_write_index: last.then_some(1),
                })
            });
            record(&mut encoder, writes)?;
        }
        if let Some(t) = t.filter(|_| in_encoder) {
            encoder.write_timestamp(&t.query_set, 1);
        }
        if let Some(t) = t {
            encoder.resolve_query_set(&t.query_set, 0..2, &t.resolve, 0);
            encoder.copy_buffer_to_buffer(&t.resolve, 0, &t.readback, 0, 16);
        }
        let started = platform::now_seconds();
        queue.submit([encoder.finish()]);
        let Some(t) = &self.timestamps else {
            // The wall clock: wait for the submit by a map of a tiny buffer.
            finish(device, queue).await?;
            return Ok((platform::now_seconds() - started) / f64::from(reps));
        };
        let slice = t.readback.slice(..);
        platform::map_read(device, slice).await?;
        let ticks: Vec<u64> = {
            let view = slice
                .get_mapped_range()
                .map_err(|e| Error::Readback(e.to_string()))?;
            bytemuck::pod_collect_to_vec(&view)
        };
        t.readback.unmap();
        let ns = ticks[1].saturating_sub(ticks[0]) as f64 * t.period_ns;
        Ok(ns * 1e-9 / f64::from(reps))
    }

    /// Median seconds per repetition over `samples` samples, each of enough repetitions to
    /// last about `min_sample_seconds` (after one warm-up sample).
    pub async fn median(
        &self,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        samples: usize,
        min_sample_seconds: f64,
        mut record: impl FnMut(&mut wgpu::CommandEncoder, PassTimestamps<'_>) -> Result<()>,
    ) -> Result<f64> {
        let once = self.time(device, queue, 1, &mut record).await?;
        let reps = (min_sample_seconds / once.max(1e-9))
            .ceil()
            .clamp(1.0, 10_000.0) as u32;
        let mut times = Vec::with_capacity(samples);
        for _ in 0..samples.max(1) {
            times.push(self.time(device, queue, reps, &mut record).await?);
        }
        times.sort_by(f64::total_cmp);
        Ok(times[times.len() / 2])
    }
}

/// Waits until everything submitted so far has run.
async fn finish(device: &wgpu::Device, queue: &wgpu::Queue) -> Result<()> {
    let (sender, receiver) = futures_channel::oneshot::channel();
    queue.on_submitted_work_done(move || {
        let _ = sender.send(());
    });
    platform::wait_for_device(device)?;
    receiver
        .await
        .map_err(|_| Error::Readback("the device dropped the work-done callback".into()))
}
