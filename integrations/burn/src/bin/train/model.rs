//! A small pre-norm transformer language model whose normalization is chosen per run.

use burn::module::Module;
use burn::nn::{Embedding, EmbeddingConfig, Linear, LinearConfig};
use burn::tensor::activation::{gelu, softmax};
use burn::tensor::{Device, Int, Tensor, TensorData};
use wgpu_rmsnorm_burn::{LayerNorm, LayerNormConfig, RmsNorm, RmsNormConfig};

/// The normalizations compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NormChoice {
    /// burn's `nn::LayerNorm` (tensor ops).
    BurnLayer,
    /// burn's `nn::RmsNorm` (tensor ops).
    BurnRms,
    /// This library's LayerNorm kernels.
    Layer,
    /// This library's RMSNorm kernels.
    Rms,
    /// This library's pRMSNorm kernels, p = 6.25%.
    PRms,
}

impl NormChoice {
    pub const ALL: [NormChoice; 5] = [
        NormChoice::BurnLayer,
        NormChoice::BurnRms,
        NormChoice::Layer,
        NormChoice::Rms,
        NormChoice::PRms,
    ];

    /// The name on the command line and in the records.
    pub fn name(self) -> &'static str {
        match self {
            NormChoice::BurnLayer => "burn-layernorm",
            NormChoice::BurnRms => "burn-rmsnorm",
            NormChoice::Layer => "layernorm",
            NormChoice::Rms => "rmsnorm",
            NormChoice::PRms => "prmsnorm",
        }
    }

    /// (normalization, implementation) for the records.
    pub fn norm_and_impl(self) -> (&'static str, &'static str) {
        match self {
            NormChoice::BurnLayer => ("LayerNorm", "burn"),
            NormChoice::BurnRms => ("RMSNorm", "burn"),
            NormChoice::Layer => ("LayerNorm", "wgpu-rmsnorm"),
            NormChoice::Rms => ("RMSNorm", "wgpu-rmsnorm"),
            NormChoice::PRms => ("pRMSNorm p=0.0625", "wgpu-rmsnorm"),
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|n| n.name() == name)
    }

    pub fn build(self, d_model: usize, device: &Device) -> Norm {
        match self {
            NormChoice::BurnLayer => {
                Norm::BurnLayer(burn::nn::LayerNormConfig::new(d_model).init(device))
            }
            NormChoice::BurnRms => {
                Norm::BurnRms(burn::nn::RmsNormConfig::new(d_model).init(device))
            }
            NormChoice::Layer => Norm::Layer(LayerNormConfig::new(d_model).init(device)),
            NormChoice::Rms => Norm::Rms(RmsNormConfig::new(d_model).init(device)),
            NormChoice::PRms => Norm::Rms(
                RmsNormConfig::new(d_model)
                    .with_partial(0.0625)
                    .init(device),
            ),
        }
    }
}

/// One normalization layer of any kind.
#[derive(Module, Debug)]
pub enum Norm {
    BurnLayer(burn::nn::LayerNorm),
    BurnRms(burn::nn::RmsNorm),
    Layer(LayerNorm),
    Rms(RmsNorm),
}

impl Norm {
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        match self {
            Norm::BurnLayer(n) => n.forward(x),
            Norm::BurnRms(n) => n.forward(x),
            Norm::Layer(n) => n.forward(x),
            Norm::Rms(n) => n.forward(x),
        }
    }
}

/// The model's shape.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub vocab: usize,
    pub d_model: usize,
    pub layers: usize,
    pub heads: usize,
    pub context: usize,
}

/// A pre-norm block: x + attn(norm(x)), then x + mlp(norm(x)).
#[derive(Module, Debug)]
pub struct Block {
    norm_attn: Norm,
    qkv: Linear,
    proj: Linear,
    norm_mlp: Norm,
    up: Linear,
    down: Linear,
    heads: usize,
}

impl Block {
    fn new(shape: &Shape, norm: NormChoice, device: &Device) -> Self {
        let d = shape.d_model;
        Self {
            norm_attn: norm.build(d, device),
            qkv: LinearConfig::new(d, 3 * d).init(device),
            proj: LinearConfig::new(d, d).init(device),
            norm_mlp: norm.build(d, device),
            up: LinearConfig::new(d, 4 * d).init(device),
            down: LinearConfig::new(4 * d, d).init(device),
            heads: shape.heads,
        }
    }

    fn forward(&self, x: Tensor<3>, mask: Tensor<4>) -> Tensor<3> {
        let [batch, time, d] = x.dims();
        let (heads, head_dim) = (self.heads, d / self.heads);
        let qkv = self.qkv.forward(self.norm_attn.forward(x.clone()));
        let split = |i: usize| {
            qkv.clone()
                .narrow(2, i * d, d)
                .reshape([batch, time, heads, head_dim])
                .swap_dims(1, 2)
        };
        let (q, k, v) = (split(0), split(1), split(2));
        let scores = q.matmul(k.swap_dims(2, 3)) / (head_dim as f64).sqrt() + mask;
        let attended = softmax(scores, 3)
            .matmul(v)
            .swap_dims(1, 2)
            .reshape([batch, time, d]);
        let x = x + self.proj.forward(attended);
        let hidden = gelu(self.up.forward(self.norm_mlp.forward(x.clone())));
        x + self.down.forward(hidden)
    }
}

/// Token and position embeddings, blocks, a final norm and the output projection.
#[derive(Module, Debug)]
pub struct Model {
    tokens: Embedding,
    positions: Embedding,
    blocks: Vec<Block>,
    norm_out: Norm,
    head: Linear,
}

impl Model {
    pub fn new(shape: &Shape, norm: NormChoice, device: &Device) -> Self {
        Self {
            tokens: EmbeddingConfig::new(shape.vocab, shape.d_model).init(device),
            positions: EmbeddingConfig::new(shape.context, shape.d_model).init(device),
            blocks: (0..shape.layers)
                .map(|_| Block::new(shape, norm, device))
                .collect(),
            norm_out: norm.build(shape.d_model, device),
            head: LinearConfig::new(shape.d_model, shape.vocab).init(device),
        }
    }

    /// Logits [batch, time, vocab] for token ids [batch, time].
    pub fn forward(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        let [batch, time] = ids.dims();
        let device = ids.device();
        let positions = Tensor::<1, Int>::arange(0..time as i64, &device)
            .reshape([1, time])
            .repeat_dim(0, batch);
        let mut x = self.tokens.forward(ids) + self.positions.forward(positions);
        let mask = causal_mask(time, &device);
        for block in &self.blocks {
            x = block.forward(x, mask.clone());
        }
        self.head.forward(self.norm_out.forward(x))
    }

    /// Normalization layers per forward.
    pub fn norm_calls(&self) -> usize {
        2 * self.blocks.len() + 1
    }
}

/// 0 on and below the diagonal, a large negative number above: [1, 1, time, time].
fn causal_mask(time: usize, device: &Device) -> Tensor<4> {
    let values: Vec<f32> = (0..time * time)
        .map(|i| if i % time > i / time { -1e9 } else { 0.0 })
        .collect();
    Tensor::<2>::from_data(TensorData::new(values, [time, time]), device)
        .reshape([1, 1, time, time])
}
