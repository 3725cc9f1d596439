//! The plan's kernels on buffers another runtime owns and binds itself (a framework's
//! tensors, e.g. burn's on its wgpu backend): each stage as a module with one entry point,
//! `main`, whose storage bindings are numbered in the runtime's order and whose parameters
//! are a storage buffer; each call as the dispatches to run with their parameters, every
//! tensor bound whole from its first element.

use super::dispatch::{chunk_params, stats_per_row, weight_grads_params};
pub use super::pipelines::pipeline_constants;
use super::pipelines::{
    kernel_file, BINDING_GRAD_OUTPUT, BINDING_GRAD_SUM, BINDING_PARTIALS, BINDING_PIECES,
    BINDING_RESIDUAL, BINDING_STATS, BINDING_SUM, BINDING_X, BINDING_Y,
};
use super::plan::{lanes, Pass, Plan, StagePlan, WideOffsets};
use super::Norm;
use crate::config::RmsNormConfig;
use crate::error::{Error, Result};
use crate::shaders::{self, ComposedShader, ShaderTarget};

/// One dispatch of a call run by another runtime.
#[derive(Debug, Clone, PartialEq)]
pub struct ExternalDispatch {
    /// The stage: its module is [`external_module`]'s.
    pub stage: StagePlan,
    /// Workgroups, in x.
    pub workgroups: u32,
    /// The parameters (the `Params` block of `shaders/norm_common.wgsl`), for a storage
    /// buffer at [`BINDING_PARAMS`](super::BINDING_PARAMS).
    pub params: Vec<u8>,
    /// The chunk of rows it runs: the dispatches of one chunk share its buffer of split
    /// rows' values ([`ExternalCall::scratch_bytes`]).
    pub chunk: usize,
}

/// A call as another runtime runs it: its dispatches in order, and the scratch buffers they
/// bind besides the call's tensors and parameters. Scratch buffers need no initial value.
#[derive(Debug, Clone, PartialEq)]
pub struct ExternalCall {
    /// The dispatches, in order: each chunk's stages, then the backward's `weight_grads`.
    pub dispatches: Vec<ExternalDispatch>,
    /// Bytes of split rows' values per chunk (0: the chunk does not split its rows), bound at
    /// [`ExternalCall::scratch_binding`].
    pub scratch_bytes: Vec<u64>,
    /// Where split rows' values bind: the forward's partial sums or the backward's pieces.
    pub scratch_binding: u32,
    /// Backward with a gain or a bias: bytes of the partial sums of dgain and dbias, one
    /// buffer for every dispatch of the call, bound at
    /// [`BINDING_WEIGHT_PARTIALS`](crate::shaders::BINDING_WEIGHT_PARTIALS); 0 otherwise.
    pub weight_partial_bytes: u64,
}

impl Plan {
    /// The dispatches of a call of `rows` rows when every tensor is bound whole, from its
    /// first element (so vec4 loads where `hidden` allows). A typed error where a tensor of
    /// the call does not fit one binding ([`Error::TooManyRows`]: split the call) or the
    /// call cannot run on this device.
    pub fn external_call(&self, config: &RmsNormConfig, rows: u32) -> Result<ExternalCall> {
        // The largest tensor: the activations, dgain's partial rows are fewer, or (rows of one
        // or two elements) the statistics.
        let element_bytes = config.dtype.bytes().max(4);
        let row_bytes = (u64::from(self.hidden) * element_bytes).max(stats_per_row(self.norm) * 4);
        let tensor_bytes = u64::from(rows) * row_bytes;
        if tensor_bytes > self.caps.binding_limit() {
            return Err(Error::TooManyRows {
                rows: u64::from(rows),
                hidden: self.hidden,
            });
        }
        let launch = self.launch(rows, WideOffsets::ALIGNED)?;
        let lanes = lanes(launch.elem);
        let stats_words = stats_per_row(self.norm);
        let mut dispatches = Vec::new();
        for (index, chunk) in launch.chunks.iter().enumerate() {
            let first = chunk.first_row;
            let base = |binding: u32| -> u32 {
                let elements = match binding {
                    BINDING_X | BINDING_Y | BINDING_RESIDUAL | BINDING_SUM
                    | BINDING_GRAD_OUTPUT | BINDING_GRAD_SUM => {
                        first * u64::from(self.hidden) / u64::from(lanes)
                    }
                    BINDING_STATS => first * stats_words,
                    _ => 0,
                };
                // Within one binding, checked above: element indices are u32.
                elements as u32
            };
            let params = chunk_params(self, config, &launch, chunk, base, |_| 0);
            for stage in &launch.stages {
                dispatches.push(ExternalDispatch {
                    stage: *stage,
                    workgroups: chunk.workgroups,
                    params: bytemuck::bytes_of(&params).to_vec(),
                    chunk: index,
                });
            }
        }
        let weights = u64::from(self.io.gain) + u64::from(self.io.bias);
        let mut weight_partial_bytes = 0;
        if let Some((stage, workgroups)) = launch.weight_grads {
            weight_partial_bytes = launch.partial_rows() * weights * u64::from(self.hidden) * 4;
            let params = weight_grads_params(self, &launch, 0, 0);
            dispatches.push(ExternalDispatch {
                stage,
                workgroups,
                params: bytemuck::bytes_of(&params).to_vec(),
                chunk: 0,
            });
        }
        Ok(ExternalCall {
            dispatches,
            scratch_bytes: launch.chunks.iter().map(|c| c.scratch_bytes).collect(),
            scratch_binding: match self.pass {
                Pass::Forward => BINDING_PARTIALS,
                Pass::Backward => BINDING_PIECES,
            },
            weight_partial_bytes,
        })
    }
}

/// The module of `stage` of `norm`, with what `config` compiles in, for a runtime that binds
/// storage buffers only, `order[i]` (a binding of this crate's layout, e.g.
/// [`BINDING_X`]) at binding `i`, and runs the entry point `main` (see
/// [`shaders::for_entry`]). `order` must list exactly the bindings the entry point uses;
/// a runtime that derives the layout from the module finds them by reflection.
pub fn external_module(
    norm: Norm,
    stage: &StagePlan,
    config: &RmsNormConfig,
    target: ShaderTarget,
    order: &[u32],
) -> ComposedShader {
    let composed = shaders::compose(kernel_file(norm, stage), &stage.shape, target);
    shaders::for_entry(
        &composed,
        stage.entry.name(),
        &pipeline_constants(config),
        order,
    )
}
