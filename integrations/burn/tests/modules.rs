//! The modules on burn's wgpu backend (the adapter `WGPU_BACKEND` names: lavapipe or the GL
//! backend here): outputs and gradients against burn's own modules and the core's f64
//! reference, pRMSNorm's gradients against finite differences, the modules inside a
//! larger autodiff graph, the fallback to burn's tensor ops, and the typed errors.

use burn::module::Param;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::gelu;
use burn::tensor::{DType, Device, Tensor, TensorData};
use wgpu_rmsnorm::reference::{self, BACKWARD_TOL};
use wgpu_rmsnorm::{DType as CoreDType, EpsMode, Error, Gain, PartialRms};
use wgpu_rmsnorm_burn::{
    backend_from_env, reference_layer_norm, reference_rms_norm, wgpu_device, LayerNorm,
    LayerNormConfig, NormSpec, RmsNorm, RmsNormConfig,
};

fn device() -> Device {
    wgpu_device(backend_from_env())
}

fn tensor<const D: usize>(values: &[f32], dims: [usize; D], device: &Device) -> Tensor<D> {
    Tensor::from_data(TensorData::new(values.to_vec(), dims), device)
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .expect("f32 data")
}

/// (rows, hidden) of the shapes tested: vec4 and scalar rows, one row and many, rows long
/// enough that the plan splits them across workgroups.
const SHAPES: [(usize, usize); 6] = [
    (1, 8),
    (64, 128),
    (33, 96),
    (7, 130),
    (300, 257),
    (2, 65536),
];

/// y, dx and dgain (and dbias) of `forward` at x with dy, through burn's autodiff.
fn run_autodiff(
    x: &[f32],
    dy: &[f32],
    dims: [usize; 2],
    device: &Device,
    forward: impl Fn(Tensor<2>) -> Tensor<2>,
    weights: impl Fn(&burn::tensor::Gradients) -> Vec<Vec<f32>>,
) -> (Vec<f32>, Vec<f32>, Vec<Vec<f32>>) {
    let x = tensor(x, dims, device).require_grad();
    let y = forward(x.clone());
    let loss = (y.clone() * tensor(dy, dims, device)).sum();
    let grads = loss.backward();
    let dx = values(x.grad(&grads).expect("dx"));
    (values(y), dx, weights(&grads))
}

fn rms_module(hidden: usize, partial: f64, gain: &[f32], device: &Device) -> RmsNorm {
    let mut norm = RmsNormConfig::new(hidden)
        .with_partial(partial)
        .init(device);
    norm.gamma = Param::from_tensor(tensor(gain, [hidden], device).require_grad());
    norm
}

fn core_rms_config(hidden: usize, k: usize) -> wgpu_rmsnorm::RmsNormConfig {
    wgpu_rmsnorm::RmsNormConfig::new(hidden as u32)
        .with_partial(PartialRms::Count(k as u32))
        .with_eps(1e-5)
        .with_eps_mode(EpsMode::InsideRoot)
        .with_gain(Gain::Scale)
}

fn assert_within(what: &str, actual: &[f32], expected: &[f64], scale: &[f64], group: usize) {
    let stats =
        reference::compare_normwise(actual, expected, scale, group, CoreDType::F32, BACKWARD_TOL);
    assert_eq!(stats.failures, 0, "{what}: {stats:?}");
}

#[test]
fn rms_norm_and_prms_norm_match_the_f64_reference_on_the_kernels() {
    let device = device().autodiff();
    for (rows, hidden) in SHAPES {
        for partial in [1.0, 0.0625] {
            let n = rows * hidden;
            let x = reference::sample_data(n, 11 + n as u64, 3.0);
            let dy = reference::sample_data(n, 12 + n as u64, 1.0);
            let gain = reference::sample_data(hidden, 13, 2.0);
            let norm = rms_module(hidden, partial, &gain, &device);
            let probe = tensor(&x, [rows, hidden], &device);
            assert!(norm.runs_on_kernels(&probe), "{rows}x{hidden} falls back");
            let (y, dx, w) = run_autodiff(
                &x,
                &dy,
                [rows, hidden],
                &device,
                |x| norm.forward(x),
                |g| vec![values(norm.gamma.grad(g).expect("dgain"))],
            );
            let config = core_rms_config(hidden, norm.k);
            let expected_y = reference::rms_norm(&x, &config, Some(&gain), None).unwrap();
            let y_stats = reference::compare(&y, &expected_y, 1e-6, 2e-6);
            assert_eq!(
                y_stats.failures, 0,
                "y {rows}x{hidden} p={partial}: {y_stats:?}"
            );
            let expected =
                reference::rms_norm_backward(&x, &dy, &config, Some(&gain), None).unwrap();
            let what = format!("{rows}x{hidden} p={partial}");
            assert_within(
                &format!("dx {what}"),
                &dx,
                &expected.dx,
                &expected.dx_scale,
                hidden,
            );
            assert_within(
                &format!("dgain {what}"),
                &w[0],
                expected.dgain.as_ref().unwrap(),
                &expected.dgain_scale,
                1,
            );
        }
    }
}

#[test]
fn rms_norm_matches_burns_rms_norm() {
    let device = device().autodiff();
    for (rows, hidden) in [(64, 128), (7, 130), (300, 257)] {
        let n = rows * hidden;
        let x = reference::sample_data(n, 21, 2.0);
        let dy = reference::sample_data(n, 22, 1.0);
        let gain = reference::sample_data(hidden, 23, 2.0);
        let ours = rms_module(hidden, 1.0, &gain, &device);
        let mut burns = burn::nn::RmsNormConfig::new(hidden).init(&device);
        burns.gamma = Param::from_tensor(tensor(&gain, [hidden], &device).require_grad());
        let (y1, dx1, w1) = run_autodiff(
            &x,
            &dy,
            [rows, hidden],
            &device,
            |x| ours.forward(x),
            |g| vec![values(ours.gamma.grad(g).unwrap())],
        );
        let (y2, dx2, w2) = run_autodiff(
            &x,
            &dy,
            [rows, hidden],
            &device,
            |x| burns.forward(x),
            |g| vec![values(burns.gamma.grad(g).unwrap())],
        );
        for (what, a, b, tol) in [
            ("y", &y1, &y2, 1e-5),
            ("dx", &dx1, &dx2, 1e-4),
            ("dgain", &w1[0], &w2[0], 1e-4),
        ] {
            let max = b.iter().fold(1.0f32, |m, v| m.max(v.abs()));
            let diff = a
                .iter()
                .zip(b.iter())
                .fold(0.0f32, |m, (p, q)| m.max((p - q).abs()));
            assert!(
                diff <= tol * max,
                "{what} {rows}x{hidden}: ours and burn's differ by {diff} (max {max})"
            );
        }
    }
}

#[test]
fn layer_norm_matches_burns_layer_norm_and_the_reference() {
    let device = device().autodiff();
    for (rows, hidden) in [(64, 128), (7, 130), (2, 65536)] {
        let n = rows * hidden;
        let x = reference::sample_data(n, 31, 2.0);
        let dy = reference::sample_data(n, 32, 1.0);
        let gain = reference::sample_data(hidden, 33, 2.0);
        let bias = reference::sample_data(hidden, 34, 1.0);
        let mut ours: LayerNorm = LayerNormConfig::new(hidden).init(&device);
        ours.gamma = Param::from_tensor(tensor(&gain, [hidden], &device).require_grad());
        ours.beta = Param::from_tensor(tensor(&bias, [hidden], &device).require_grad());
        assert!(ours.runs_on_kernels(&tensor(&x, [rows, hidden], &device)));
        let (y, dx, w) = run_autodiff(
            &x,
            &dy,
            [rows, hidden],
            &device,
            |x| ours.forward(x),
            |g| {
                vec![
                    values(ours.gamma.grad(g).unwrap()),
                    values(ours.beta.grad(g).unwrap()),
                ]
            },
        );
        let config = wgpu_rmsnorm::LayerNormConfig::new(hidden as u32)
            .with_eps(1e-5)
            .with_gain(Gain::Scale)
            .with_bias(true);
        let expected_y = reference::layer_norm(&x, &config, Some(&gain), Some(&bias)).unwrap();
        let y_stats = reference::compare(&y, &expected_y, 1e-5, 1e-5);
        assert_eq!(y_stats.failures, 0, "y {rows}x{hidden}: {y_stats:?}");
        let expected = reference::layer_norm_backward(&x, &dy, &config, Some(&gain), None).unwrap();
        assert_within("dx", &dx, &expected.dx, &expected.dx_scale, hidden);
        assert_within(
            "dgain",
            &w[0],
            expected.dgain.as_ref().unwrap(),
            &expected.dgain_scale,
            1,
        );
        assert_within(
            "dbias",
            &w[1],
            expected.dbias.as_ref().unwrap(),
            &expected.dbias_scale,
            1,
        );
        if hidden <= 1024 {
            let mut burns = burn::nn::LayerNormConfig::new(hidden).init(&device);
            burns.gamma = Param::from_tensor(tensor(&gain, [hidden], &device));
            burns.beta = Some(Param::from_tensor(tensor(&bias, [hidden], &device)));
            let y_burn = values(burns.forward(tensor(&x, [rows, hidden], &device)));
            let diff = y
                .iter()
                .zip(&y_burn)
                .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(diff < 1e-4, "y differs from burn's LayerNorm by {diff}");
        }
    }
}

/// Σ y·w of pRMSNorm in f64, for finite differences.
fn prms_objective(x: &[f32], gain: &[f32], w: &[f32], hidden: usize, k: usize) -> f64 {
    let y = reference::rms_norm(x, &core_rms_config(hidden, k), Some(gain), None).unwrap();
    y.iter().zip(w).map(|(a, b)| a * f64::from(*b)).sum()
}

#[test]
fn prms_norm_gradients_match_finite_differences() {
    let device = device().autodiff();
    let (rows, hidden) = (3, 64);
    let n = rows * hidden;
    let x = reference::sample_data(n, 41, 2.0);
    let w = reference::sample_data(n, 42, 1.0);
    let gain = reference::sample_data(hidden, 43, 2.0);
    let norm = rms_module(hidden, 0.0625, &gain, &device);
    let k = norm.k;
    assert_eq!(k, 4);
    let (_, dx, g) = run_autodiff(
        &x,
        &w,
        [rows, hidden],
        &device,
        |x| norm.forward(x),
        |gr| vec![values(norm.gamma.grad(gr).unwrap())],
    );
    let h = 1e-3f32;
    // Inside the first k (where the RMS depends on x) and past it, and a few gains.
    for i in [0, 1, 3, 4, 10, hidden + 2, 2 * hidden + 63] {
        let (mut up, mut down) = (x.clone(), x.clone());
        up[i] += h;
        down[i] -= h;
        let fd = (prms_objective(&up, &gain, &w, hidden, k)
            - prms_objective(&down, &gain, &w, hidden, k))
            / f64::from(2.0 * h);
        let err = (f64::from(dx[i]) - fd).abs();
        assert!(
            err <= 1e-3 * fd.abs().max(1.0),
            "dx[{i}] = {} but finite differences give {fd}",
            dx[i]
        );
    }
    for j in [0, 3, 4, 63] {
        let (mut up, mut down) = (gain.clone(), gain.clone());
        up[j] += h;
        down[j] -= h;
        let fd = (prms_objective(&x, &up, &w, hidden, k)
            - prms_objective(&x, &down, &w, hidden, k))
            / f64::from(2.0 * h);
        let err = (f64::from(g[0][j]) - fd).abs();
        assert!(
            err <= 1e-3 * fd.abs().max(1.0),
            "dgain[{j}] = {} but finite differences give {fd}",
            g[0][j]
        );
    }
}

/// Linear → norm → gelu → Linear, with every parameter's gradient.
struct Net {
    first: Linear,
    second: Linear,
}

impl Net {
    fn new(device: &Device) -> Self {
        let weight = |rows: usize, cols: usize, seed: u64| {
            Param::from_tensor(
                tensor(
                    &reference::sample_data(rows * cols, seed, 0.3),
                    [rows, cols],
                    device,
                )
                .require_grad(),
            )
        };
        let mut first = LinearConfig::new(32, 48).init(device);
        first.weight = weight(32, 48, 51);
        let mut second = LinearConfig::new(48, 16).init(device);
        second.weight = weight(48, 16, 52);
        Self { first, second }
    }

    fn grads(
        &self,
        norm: impl Fn(Tensor<3>) -> Tensor<3>,
        x: Tensor<3>,
    ) -> (f32, Vec<Vec<f32>>, burn::tensor::Gradients) {
        let y = self.second.forward(gelu(norm(self.first.forward(x))));
        let loss = y.square().mean();
        let value = loss.clone().into_scalar::<f32>();
        let grads = loss.backward();
        let w = vec![
            values(self.first.weight.grad(&grads).unwrap()),
            values(self.second.weight.grad(&grads).unwrap()),
        ];
        (value, w, grads)
    }
}

#[test]
fn the_module_in_an_autodiff_graph_gives_the_gradients_of_burns_module() {
    let device = device().autodiff();
    let x = tensor(
        &reference::sample_data(4 * 10 * 32, 53, 1.0),
        [4, 10, 32],
        &device,
    );
    let gain = reference::sample_data(48, 54, 1.5);
    let net = Net::new(&device);
    let ours = rms_module(48, 1.0, &gain, &device);
    let mut burns = burn::nn::RmsNormConfig::new(48).init(&device);
    burns.gamma = Param::from_tensor(tensor(&gain, [48], &device).require_grad());
    let (l1, w1, g1) = net.grads(|h| ours.forward(h), x.clone());
    let (l2, w2, g2) = net.grads(|h| burns.forward(h), x);
    assert!((l1 - l2).abs() <= 1e-5 * l2.abs(), "loss {l1} vs {l2}");
    for (a, b) in w1.iter().zip(&w2) {
        let diff = a
            .iter()
            .zip(b)
            .fold(0.0f32, |m, (p, q)| m.max((p - q).abs()));
        let max = b.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
        assert!(
            diff <= 1e-4 * max,
            "linear weight gradients differ by {diff} (max {max})"
        );
    }
    let (d1, d2) = (
        values(ours.gamma.grad(&g1).unwrap()),
        values(burns.gamma.grad(&g2).unwrap()),
    );
    let diff = d1
        .iter()
        .zip(&d2)
        .fold(0.0f32, |m, (p, q)| m.max((p - q).abs()));
    assert!(
        diff <= 1e-4 * d2.iter().fold(1e-6f32, |m, v| m.max(v.abs())),
        "dgain differs by {diff}"
    );
}

#[test]
fn tensors_the_kernels_do_not_take_fall_back_to_burns_tensor_ops() {
    let device = device().autodiff();
    let (rows, hidden) = (8, 64);
    let x = reference::sample_data(rows * hidden, 61, 2.0);
    let gain = reference::sample_data(hidden, 62, 1.0);
    let norm = rms_module(hidden, 0.25, &gain, &device);
    let layer = LayerNormConfig::new(hidden).init(&device);
    let rms_config = core_rms_config(hidden, norm.k);
    let layer_config = wgpu_rmsnorm::LayerNormConfig::new(hidden as u32).with_eps(1e-5);
    let expected_rms = reference::rms_norm(&x, &rms_config, Some(&gain), None).unwrap();
    let expected_layer = reference::layer_norm(&x, &layer_config, None, None).unwrap();
    // The fallback's formulas, on f32 tensors.
    let x32 = tensor(&x, [rows, hidden], &device);
    let y = values(reference_rms_norm(
        x32.clone(),
        norm.gamma.val(),
        norm.spec(),
    ));
    let stats = reference::compare(&y, &expected_rms, 1e-6, 2e-6);
    assert_eq!(stats.failures, 0, "RMSNorm with burn's ops: {stats:?}");
    let y = values(reference_layer_norm(
        x32,
        layer.gamma.val(),
        layer.beta.val(),
        layer.spec(),
    ));
    let stats = reference::compare(&y, &expected_layer, 1e-5, 1e-5);
    assert_eq!(stats.failures, 0, "LayerNorm with burn's ops: {stats:?}");
    // f16 tensors are not the kernels': the modules take burn's ops (where the adapter
    // has f16 at all: llvmpipe's GL has not).
    let half = tensor(&x, [rows, hidden], &device).cast(DType::F16);
    assert!(!norm.runs_on_kernels(&half));
    assert!(!layer.runs_on_kernels(&half));
    // So are f16 weights.
    let mut half_gain = rms_module(hidden, 0.25, &gain, &device);
    half_gain.gamma = Param::from_tensor(norm.gamma.val().cast(DType::F16).detach());
    assert!(!half_gain.runs_on_kernels(&tensor(&x, [rows, hidden], &device)));
    if !device.supports_dtype(DType::F16) {
        eprintln!("no f16 on this adapter: the modules' f16 fallback is not run here");
        return;
    }
    let y = values(norm.forward(half.clone()).cast(DType::F32));
    let stats = reference::compare(&y, &expected_rms, 2e-2, 1e-2);
    assert_eq!(
        stats.failures, 0,
        "RMSNorm in f16 through burn's ops: {stats:?}"
    );
    let y = values(layer.forward(half).cast(DType::F32));
    let stats = reference::compare(&y, &expected_layer, 2e-2, 1e-2);
    assert_eq!(
        stats.failures, 0,
        "LayerNorm in f16 through burn's ops: {stats:?}"
    );
}

#[test]
fn bad_shapes_and_configs_are_typed_errors() {
    let device = device();
    let norm = RmsNormConfig::new(64).init(&device);
    let x = Tensor::<2>::zeros([4, 32], &device);
    assert!(matches!(
        norm.try_forward(x),
        Err(Error::InputNotMultipleOfHidden { hidden: 64, .. })
    ));
    let layer = LayerNormConfig::new(16).init(&device);
    assert!(matches!(
        layer.try_forward(Tensor::<3>::zeros([2, 3, 8], &device)),
        Err(Error::InputNotMultipleOfHidden { .. })
    ));
    assert!(matches!(
        RmsNormConfig::new(0).try_init(&device),
        Err(Error::ZeroHiddenSize)
    ));
    assert!(matches!(
        RmsNormConfig::new(64).with_partial(0.0).try_init(&device),
        Err(Error::InvalidFraction { .. })
    ));
    assert!(matches!(
        RmsNormConfig::new(64).with_partial(1.5).try_init(&device),
        Err(Error::InvalidFraction { .. })
    ));
    assert!(matches!(
        RmsNormConfig::new(64).with_epsilon(-1.0).try_init(&device),
        Err(Error::InvalidEps { .. })
    ));
    assert!(matches!(
        LayerNormConfig::new(8)
            .with_epsilon(f64::NAN)
            .try_init(&device),
        Err(Error::InvalidEps { .. })
    ));
    // The modules' fields are public: a k or eps changed after init is checked again.
    let zeros = || Tensor::<2>::zeros([2, 64], &device);
    let mut changed = RmsNormConfig::new(64).init(&device);
    changed.k = 65;
    assert!(matches!(
        changed.try_forward(zeros()),
        Err(Error::InvalidCount { .. })
    ));
    changed.k = 0;
    assert!(matches!(
        changed.try_forward(zeros()),
        Err(Error::InvalidCount { .. })
    ));
    changed.k = 64;
    changed.epsilon = -1.0;
    assert!(matches!(
        changed.try_forward(zeros()),
        Err(Error::InvalidEps { .. })
    ));
    let mut short_bias = LayerNormConfig::new(16).init(&device);
    short_bias.beta = Param::from_tensor(Tensor::zeros([8], &device));
    assert!(matches!(
        short_bias.try_forward(Tensor::<2>::zeros([2, 16], &device)),
        Err(Error::WeightLength {
            which: "bias",
            len: 8,
            hidden: 16
        })
    ));
    let message = norm
        .try_forward(Tensor::<2>::zeros([4, 32], &device))
        .unwrap_err()
        .to_string();
    assert!(message.contains("64"), "{message}");
}

#[test]
fn empty_batches_give_empty_outputs_and_zero_weight_gradients() {
    let device = device().autodiff();
    let norm = rms_module(32, 1.0, &reference::sample_data(32, 71, 1.0), &device);
    let x = Tensor::<2>::zeros([0, 32], &device).require_grad();
    let y = norm.forward(x.clone());
    assert_eq!(y.dims(), [0, 32]);
    let grads = y.sum().backward();
    let dgain = values(norm.gamma.grad(&grads).unwrap());
    assert_eq!(dgain, vec![0.0; 32]);
    let layer = LayerNormConfig::new(32).init(&device);
    let (gamma, beta) = (
        layer.gamma.val().require_grad(),
        layer.beta.val().require_grad(),
    );
    let layer = LayerNorm {
        gamma: Param::from_tensor(gamma),
        beta: Param::from_tensor(beta),
        ..layer
    };
    let x = Tensor::<3>::zeros([2, 0, 32], &device).require_grad();
    let grads = layer.forward(x).sum().backward();
    assert_eq!(values(layer.gamma.grad(&grads).unwrap()), vec![0.0; 32]);
    assert_eq!(values(layer.beta.grad(&grads).unwrap()), vec![0.0; 32]);
    let spec = NormSpec::Rms {
        hidden: 32,
        k: 32,
        eps: 1e-5,
    };
    assert_eq!(spec.hidden(), 32);
}

#[test]
fn views_non_contiguous_inputs_and_forward_only_calls_run_on_the_kernels() {
    let device = device();
    let (rows, hidden) = (128, 64);
    let x = reference::sample_data(rows * hidden, 81, 2.0);
    let gain = reference::sample_data(hidden, 82, 1.5);
    let mut norm = RmsNormConfig::new(hidden).init(&device);
    norm.gamma = Param::from_tensor(tensor(&gain, [hidden], &device));
    let config = core_rms_config(hidden, hidden);
    let expected = reference::rms_norm(&x, &config, Some(&gain), None).unwrap();
    // Without autodiff: the held-out evaluation's path.
    let whole = tensor(&x, [rows, hidden], &device);
    assert!(norm.runs_on_kernels(&whole));
    let y = values(norm.forward(whole.clone()));
    assert_eq!(reference::compare(&y, &expected, 1e-6, 2e-6).failures, 0);
    // The second half of the rows: a view at an offset into x's buffer.
    let view = whole.clone().narrow(0, rows / 2, rows / 2);
    let y = values(norm.forward(view));
    let half = &expected[rows / 2 * hidden..];
    assert_eq!(
        reference::compare(&y, half, 1e-6, 2e-6).failures,
        0,
        "a view"
    );
    // A transposed input: made contiguous first.
    let transposed = tensor(&x, [rows, hidden], &device)
        .reshape([hidden, rows])
        .swap_dims(0, 1);
    let xt: Vec<f32> = (0..rows * hidden)
        .map(|i| x[(i % hidden) * rows + i / hidden])
        .collect();
    let expected_t = reference::rms_norm(&xt, &config, Some(&gain), None).unwrap();
    let y = values(norm.forward(transposed));
    assert_eq!(
        reference::compare(&y, &expected_t, 1e-6, 2e-6).failures,
        0,
        "transposed"
    );
}

#[test]
fn many_rows_run_as_several_dispatches_of_one_call() {
    // 400000 rows of 32: more rows than the backward's 64 workgroups cover within the loop
    // budget, so that the backward is cut into several dispatches (asserted for a
    // lavapipe-like device in the crate's unit tests).
    let device = device().autodiff();
    let (rows, hidden) = (400_000, 32);
    let n = rows * hidden;
    let x = reference::sample_data(n, 91, 2.0);
    let dy = reference::sample_data(n, 92, 1.0);
    let gain = reference::sample_data(hidden, 93, 1.5);
    let norm = rms_module(hidden, 1.0, &gain, &device);
    let (y, dx, w) = run_autodiff(
        &x,
        &dy,
        [rows, hidden],
        &device,
        |x| norm.forward(x),
        |g| vec![values(norm.gamma.grad(g).unwrap())],
    );
    let config = core_rms_config(hidden, hidden);
    let expected_y = reference::rms_norm(&x, &config, Some(&gain), None).unwrap();
    assert_eq!(reference::compare(&y, &expected_y, 1e-6, 2e-6).failures, 0);
    let expected = reference::rms_norm_backward(&x, &dy, &config, Some(&gain), None).unwrap();
    assert_within("dx", &dx, &expected.dx, &expected.dx_scale, hidden);
    assert_within(
        "dgain",
        &w[0],
        expected.dgain.as_ref().unwrap(),
        &expected.dgain_scale,
        1,
    );
}
