//! The normalizations as burn backend operations: the kernels on burn's wgpu backend (with
//! and without fusion), and autodiff through the kernels' backward.

use crate::cube;
use crate::spec::NormSpec;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::Autodiff;
use burn::backend::fusion::custom::{
    CustomOpIr, HandleContainer, Operation, OperationIr, ScalarIr, StreamId, TensorIr,
};
use burn::backend::fusion::{ExecutionError, Fusion, FusionBackend, FusionRuntime};
use burn::backend::tensor::FloatTensor;
use burn::backend::wgpu::CubeBackend;
use burn::backend::{backend_extension, Backend};
use burn::tensor::{DType, Shape};
use std::marker::PhantomData;

/// The kernels on a backend: the forward with the statistics the backward reads, and the
/// backward. x is [rows, hidden] (any leading dimensions), gain and bias [hidden], the
/// statistics [rows, words]; dgain and dbias are sums over every row.
pub trait NormKernels: Backend {
    /// y, and each row's statistics.
    fn norm_forward(
        x: FloatTensor<Self>,
        gain: FloatTensor<Self>,
        bias: Option<FloatTensor<Self>>,
        spec: NormSpec,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);

    /// dx, dgain and (with a bias) dbias from dy.
    fn norm_backward(
        x: FloatTensor<Self>,
        gain: FloatTensor<Self>,
        stats: FloatTensor<Self>,
        grad_output: FloatTensor<Self>,
        spec: NormSpec,
    ) -> (
        FloatTensor<Self>,
        FloatTensor<Self>,
        Option<FloatTensor<Self>>,
    );
}

/// A call the module routed to the kernels fails only through a bug: the module checks the
/// device, the dtype, the plan and the call's size first and falls back to burn's tensor
/// ops where the kernels cannot run.
fn routed<T>(result: wgpu_rmsnorm::Result<T>) -> T {
    result.unwrap_or_else(|e| {
        panic!("wgpu-rmsnorm-burn: a call the module routed to the kernels failed: {e}")
    })
}

impl NormKernels for CubeBackend {
    fn norm_forward(
        x: FloatTensor<Self>,
        gain: FloatTensor<Self>,
        bias: Option<FloatTensor<Self>>,
        spec: NormSpec,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        routed(cube::forward(x, gain, bias, &spec))
    }

    fn norm_backward(
        x: FloatTensor<Self>,
        gain: FloatTensor<Self>,
        stats: FloatTensor<Self>,
        grad_output: FloatTensor<Self>,
        spec: NormSpec,
    ) -> (
        FloatTensor<Self>,
        FloatTensor<Self>,
        Option<FloatTensor<Self>>,
    ) {
        routed(cube::backward(x, gain, stats, grad_output, &spec))
    }
}

/// Which kernel a queued fusion operation runs.
#[derive(Debug, Clone, Copy)]
enum Pass {
    Forward,
    Backward,
}

/// A kernel call queued on fusion's stream: fusion runs it, in order, on the inner
/// backend's tensors (it never fuses it with other operations).
#[derive(Debug)]
struct QueuedNorm<B> {
    desc: CustomOpIr,
    spec: NormSpec,
    pass: Pass,
    backend: PhantomData<B>,
}

impl<B: FusionBackend + NormKernels> Operation<B::FusionRuntime> for QueuedNorm<B> {
    fn execute(
        &self,
        handles: &mut HandleContainer<<B::FusionRuntime as FusionRuntime>::FusionHandle>,
    ) -> Result<(), ExecutionError> {
        let mut inputs = self
            .desc
            .inputs
            .iter()
            .map(|ir| handles.get_float_tensor::<B>(ir));
        let mut next = || inputs.next().expect("the queued call's inputs");
        let outputs = match self.pass {
            Pass::Forward => {
                let (x, gain) = (next(), next());
                let bias = self.spec.has_bias().then(&mut next);
                let (y, stats) = B::norm_forward(x, gain, bias, self.spec);
                vec![y, stats]
            }
            Pass::Backward => {
                let (x, gain, stats, dy) = (next(), next(), next(), next());
                let (dx, dgain, dbias) = B::norm_backward(x, gain, stats, dy, self.spec);
                [dx, dgain].into_iter().chain(dbias).collect()
            }
        };
        for (ir, tensor) in self.desc.outputs.iter().zip(outputs) {
            handles.register_float_tensor::<B>(&ir.id, tensor);
        }
        Ok(())
    }
}

/// Queues `pass` on fusion's stream with these inputs and outputs of these shapes (f32).
fn queue<B: FusionBackend + NormKernels>(
    pass: Pass,
    spec: NormSpec,
    inputs: Vec<FloatTensor<Fusion<B>>>,
    output_shapes: Vec<Shape>,
) -> Vec<FloatTensor<Fusion<B>>> {
    let client = inputs[0].client.clone();
    let outputs: Vec<TensorIr> = output_shapes
        .into_iter()
        .map(|shape| TensorIr::uninit(client.create_empty_handle(), shape, DType::F32))
        .collect();
    let inputs: Vec<TensorIr> = inputs.into_iter().map(|t| t.into_ir()).collect();
    let id = match (spec, pass) {
        (NormSpec::Rms { .. }, Pass::Forward) => "wgpu_rmsnorm::rms_norm",
        (NormSpec::Rms { .. }, Pass::Backward) => "wgpu_rmsnorm::rms_norm_backward",
        (NormSpec::Layer { .. }, Pass::Forward) => "wgpu_rmsnorm::layer_norm",
        (NormSpec::Layer { .. }, Pass::Backward) => "wgpu_rmsnorm::layer_norm_backward",
    };
    // What the operation computes besides its tensors, for fusion's description of it (the
    // queued operation carries the spec itself).
    let k = match spec {
        NormSpec::Rms { k, .. } => k,
        NormSpec::Layer { hidden, .. } => hidden,
    };
    let scalars = vec![
        ScalarIr::UInt(k as u64),
        ScalarIr::Float(f64::from(spec.eps())),
    ];
    let desc = CustomOpIr::with_scalars(id, &inputs, &outputs, scalars);
    let operation = QueuedNorm::<B> {
        desc: desc.clone(),
        spec,
        pass,
        backend: PhantomData,
    };
    client
        .register(StreamId::current(), OperationIr::Custom(desc), operation)
        .into_iter()
        .collect()
}

impl<B: FusionBackend + NormKernels> NormKernels for Fusion<B> {
    fn norm_forward(
        x: FloatTensor<Self>,
        gain: FloatTensor<Self>,
        bias: Option<FloatTensor<Self>>,
        spec: NormSpec,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let rows = x.shape.num_elements() / spec.hidden().max(1);
        let shapes = vec![x.shape.clone(), Shape::new([rows, spec.stats_per_row()])];
        let inputs = [x, gain].into_iter().chain(bias).collect();
        let [y, stats] = take(queue::<B>(Pass::Forward, spec, inputs, shapes));
        (y, stats)
    }

    fn norm_backward(
        x: FloatTensor<Self>,
        gain: FloatTensor<Self>,
        stats: FloatTensor<Self>,
        grad_output: FloatTensor<Self>,
        spec: NormSpec,
    ) -> (
        FloatTensor<Self>,
        FloatTensor<Self>,
        Option<FloatTensor<Self>>,
    ) {
        let hidden = Shape::new([spec.hidden()]);
        let mut shapes = vec![x.shape.clone(), hidden.clone()];
        if spec.has_bias() {
            shapes.push(hidden);
        }
        let mut outputs = queue::<B>(
            Pass::Backward,
            spec,
            vec![x, gain, stats, grad_output],
            shapes,
        )
        .into_iter();
        let (dx, dgain) = (outputs.next().expect("dx"), outputs.next().expect("dgain"));
        (dx, dgain, outputs.next())
    }
}

/// The first N of `outputs`.
fn take<T, const N: usize>(outputs: Vec<T>) -> [T; N] {
    outputs
        .try_into()
        .unwrap_or_else(|_| panic!("the queued call has {N} outputs"))
}

/// The normalizations as operations of burn's backends: the tensors of [`crate::RmsNorm`]
/// and [`crate::LayerNorm`] reach them through burn's dispatch (its wgpu backend, with
/// autodiff or without). Tensors elsewhere never reach them: the modules fall back to
/// burn's tensor ops first.
#[backend_extension(Autodiff, Cube)]
pub trait NormBackend: Backend {
    /// RMSNorm or pRMSNorm of x ([.., hidden]) with a gain.
    fn rms_norm(x: FloatTensor<Self>, gain: FloatTensor<Self>, spec: NormSpec)
        -> FloatTensor<Self>;

    /// LayerNorm of x with a gain and a bias.
    fn layer_norm(
        x: FloatTensor<Self>,
        gain: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        spec: NormSpec,
    ) -> FloatTensor<Self>;
}

/// burn's wgpu backend as this crate enables it (fusion on): the kernels queued on fusion's
/// stream.
impl<B: FusionBackend + NormKernels> NormBackend for Fusion<B> {
    fn rms_norm(
        x: FloatTensor<Self>,
        gain: FloatTensor<Self>,
        spec: NormSpec,
    ) -> FloatTensor<Self> {
        Self::norm_forward(x, gain, None, spec).0
    }

    fn layer_norm(
        x: FloatTensor<Self>,
        gain: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        spec: NormSpec,
    ) -> FloatTensor<Self> {
        Self::norm_forward(x, gain, Some(bias), spec).0
    }
}

/// The backward of one normalization call: what it keeps from the forward.
#[derive(Debug)]
struct NormGrad<const N: usize>;

/// x, gain, the forward's statistics, and what was normalized.
type NormState<B> = (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>, NormSpec);

impl<B: NormKernels, const N: usize> Backward<B, N> for NormGrad<N> {
    type State = NormState<B>;

    fn backward(
        self,
        ops: Ops<Self::State, N>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let grad_output = grads.consume::<B>(&ops.node);
        let (x, gain, stats, spec) = ops.state;
        let (dx, dgain, dbias) = B::norm_backward(x, gain, stats, grad_output, spec);
        let grads_of = [Some(dx), Some(dgain), dbias];
        for (parent, grad) in ops.parents.into_iter().zip(grads_of) {
            if let (Some(node), Some(grad)) = (parent, grad) {
                grads.register::<B>(node.id, grad);
            }
        }
    }
}

impl<B: NormKernels, C: CheckpointStrategy> NormBackend for Autodiff<B, C> {
    fn rms_norm(
        x: FloatTensor<Self>,
        gain: FloatTensor<Self>,
        spec: NormSpec,
    ) -> FloatTensor<Self> {
        let (x, x_node) = x.into_parts();
        let (gain, gain_node) = gain.into_parts();
        match NormGrad::<2>
            .prepare::<C>([x_node, gain_node])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (y, stats) = B::norm_forward(x.clone(), gain.clone(), None, spec);
                prep.finish((x, gain, stats, spec), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::norm_forward(x, gain, None, spec).0),
        }
    }

    fn layer_norm(
        x: FloatTensor<Self>,
        gain: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        spec: NormSpec,
    ) -> FloatTensor<Self> {
        let (x, x_node) = x.into_parts();
        let (gain, gain_node) = gain.into_parts();
        let (bias, bias_node) = bias.into_parts();
        match NormGrad::<3>
            .prepare::<C>([x_node, gain_node, bias_node])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (y, stats) = B::norm_forward(x.clone(), gain.clone(), Some(bias), spec);
                prep.finish((x, gain, stats, spec), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::norm_forward(x, gain, Some(bias), spec).0),
        }
    }
}
