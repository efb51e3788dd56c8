//! The coupling layers' conditioner networks: the notebook's
//! `nn.Sequential(nn.Linear(c, hidden), nn.LeakyReLU(), nn.Linear(hidden, out))`, whose input in a
//! conditional flow is `[x₁, c]`: the conditioning columns, then the context.
use crate::config::Init;
use tch::nn;
use tch::Tensor;

/// A conditioner network `Linear(c, hidden) → LeakyReLU(0.01) → Linear(hidden, out)` at `p`,
/// with variables `p.0.{weight,bias}` and `p.2.{weight,bias}`. `init` `None`: the weights are about
/// to be loaded, so they start at zero and nothing is drawn from libtorch's generator.
pub(crate) fn conditioner(
    p: nn::Path,
    c: i64,
    hidden: i64,
    out: i64,
    init: Option<Init>,
) -> (nn::Sequential, [Tensor; 4]) {
    let pytorch_default = |fan_in: i64| {
        let bound = 1.0 / (fan_in as f64).sqrt();
        let u = nn::Init::Uniform { lo: -bound, up: bound };
        nn::LinearConfig { ws_init: u, bs_init: Some(u), bias: true }
    };
    let zero =
        nn::LinearConfig { ws_init: nn::Init::Const(0.0), bs_init: Some(nn::Init::Const(0.0)), bias: true };
    let (first, last) = match init {
        Some(Init::Pytorch) => (pytorch_default(c), pytorch_default(hidden)),
        Some(Init::Identity) => (pytorch_default(c), zero),
        None => (zero, zero),
    };
    let first = nn::linear(&p / 0, c, hidden, first);
    let second = nn::linear(&p / 2, hidden, out, last);
    let bias = |l: &nn::Linear| l.bs.as_ref().expect("invariant: built with a bias").shallow_clone();
    let weights = [first.ws.shallow_clone(), bias(&first), second.ws.shallow_clone(), bias(&second)];
    let net = nn::seq().add(first).add_fn(|xs| xs.shallow_clone().leaky_relu_()).add(second);
    (net, weights)
}

/// A conditioner's input: the conditioning columns `x1`, followed by the context when there is one.
pub(crate) fn net_input(x1: &Tensor, context: Option<&Tensor>) -> Tensor {
    match context {
        None => x1.shallow_clone(),
        Some(c) => Tensor::cat(&[x1, c], 1),
    }
}
