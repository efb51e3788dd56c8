#!/usr/bin/env python3
"""The notebook's model and recipe in PyTorch: rnvp's reference for parity tests and benchmarks.

The classes below follow `shared/docs/notebook.md` ("Going with the Flow", R_NVP and stacked_NVP):
same module structure, same state_dict keys, same maths. Written for this project.

Usage:
  reference.py parity --out DIR [--layers N | --single] [--d 2 --k 1 --hidden 8] [--seed 0] [--dtype f32|f64]
      builds the model with fixed (seeded) weights, writes DIR/weights/<state_dict key>.npy, inputs and
      the model's outputs (forward triple, inverse) as .npy files for rnvp to compare against.
  reference.py adam --weights DIR --batches B.npy --out DIR [--lr 1e-3 --gamma 0.999]
      the notebook's training loop (Adam + ExponentialLR) from given weights on given batches;
      writes DIR/losses.npy and DIR/weights/.
  reference.py train [--layers 3 --steps 1000 --eval-every K]   the notebook's training loop
  reference.py sample --weights DIR --n N --out X.npy             samples, whole process timed by benches
  reference.py log-prob --weights DIR --input X.npy --out L.npy  log p(x) per row
  reference.py moons --n N [--noise 0] [--no-shuffle] --out X.npy
      scikit-learn's make_moons.
  reference.py variants --out DIR [--layers 3 | --single] [--dtype f32|f64] [--half]
      one seeded model saved every way people save it (state_dict, legacy, checkpoint dict, whole
      module, TorchScript trace, float16/bfloat16), with PyTorch's log p(x), z and inverse.
  reference.py wrapped --out DIR [--layers 3 --hidden 16]
      the model inside the wrappers people save (DataParallel, DDP, wrapper modules saved, traced and
      scripted, nested training dicts, a module holding it twice, one holding an EMA copy too).
  reference.py outputs --file F [--key a/b] [--prefix P] --io DIR   outputs of the stacked_NVP in F
  reference.py matmul --a A.npy --b B.npy --out C.npy   A @ B on one thread; prints the CPU capability
  reference.py load --file F --io DIR      torch.load (or torch.jit.load for .ot) a file rnvp wrote;
      writes IO/torch_{log_prob,z,x_inv}.npy for IO/x.npy, IO/z_in.npy (a file that is not the
      notebook's architecture: read with flow_from_state_dict, also torch_{log_pz,log_det}.npy)
  reference.py family --out DIR [--arch notebook|nice|realnvp|glow] [--coupling affine|additive]
                      [--scale exp|softclamp|sigmoid|tanh] [--(no-)actnorm] [--mixing flip|reverse|random|lu]
                      [--(no-)batch-norm] [--(no-)final-scale] [--d 2 --k 1 --hidden 8 --layers 3]
                      [--seed 0] [--n 64] [--dtype f32|f64] [--scale-params 1.0]
      a seeded Flow of the layer family (options override the arch's) with a non-trivial state;
      writes DIR/model.pt, DIR/weights/<state_dict key>.npy, DIR/config.json (constructor arguments),
      x, z, log_pz, log_det, log_prob, z_in, x_inv (eval mode), z_train, log_det_train (training mode).
  reference.py family-check [--seed 0]
      checks the family in PyTorch (inverse, log-det against autograd, reload from the state_dict,
      training-mode state, the 2-D density integrating to 1); prints a table, exit status 1 on failure.
  reference.py jit --dir D --io DIR        run rnvp's exported TorchScript functions
  reference.py image-parity --arch realnvp-image|glow-image --out DIR [--channels 1 --height 4 --width 4]
                            [--scales 2 --hidden 6 --steps 2 --seed 0]
      a seeded float64 multi-scale image flow (ImageFlow, src/multiscale.rs's layers) with a non-trivial
      state; writes DIR/weights/<state_dict key>.npy, x, z, log_det, log_prob (eval mode), z_in, x_of_z
      (inverse of z_in) and train_log_prob (training mode: batch norm with the batch's statistics).
  reference.py batch --jobs FILE           run many commands in one process (torch imported once): one
      JSON list of arguments per line of FILE
  reference.py image-step-time --arch realnvp-image|glow-image [--hidden 64 --steps 4 --scales 2 --batch 128]
                               [--channels 1 --height 8 --width 8] [--threads T] [--reps 5 --iters 20 --warmup 3]
      seconds per training step (forward, backward, Adam lr 1e-3; float32, a fixed standard-normal batch) of
      ImageFlow, one line per repetition (the bench's images-speed section).
"""
import argparse
import copy
import io
import json
import math
import os
import sys

import numpy as np
import torch
from torch import nn
from torch.distributions import MultivariateNormal


class R_NVP(nn.Module):
    """One affine coupling layer, as in the notebook."""

    def __init__(self, d, k, hidden, dtype=torch.float32):
        super().__init__()
        self.d, self.k = d, k
        self.sig_net = nn.Sequential(nn.Linear(k, hidden), nn.LeakyReLU(), nn.Linear(hidden, d - k))
        self.mu_net = nn.Sequential(nn.Linear(k, hidden), nn.LeakyReLU(), nn.Linear(hidden, d - k))
        self.base_dist = MultivariateNormal(torch.zeros(d, dtype=dtype), torch.eye(d, dtype=dtype),
                                           validate_args=False)  # the notebook validates: it raises on inf

    def forward(self, x, flip=False):
        x1, x2 = x[:, :self.k], x[:, self.k:]
        if flip:
            x2, x1 = x1, x2
        sig = self.sig_net(x1)
        z1, z2 = x1, x2 * torch.exp(sig) + self.mu_net(x1)
        if flip:
            z2, z1 = z1, z2
        z_hat = torch.cat([z1, z2], dim=-1)
        log_pz = self.base_dist.log_prob(z_hat)
        log_jacob = sig.sum(-1)
        return z_hat, log_pz, log_jacob

    def inverse(self, Z, flip=False):
        z1, z2 = Z[:, :self.k], Z[:, self.k:]
        if flip:
            z2, z1 = z1, z2
        x1 = z1
        x2 = (z2 - self.mu_net(z1)) * torch.exp(-self.sig_net(z1))
        if flip:
            x2, x1 = x1, x2
        return torch.cat([x1, x2], -1)


class stacked_NVP(nn.Module):
    """n coupling layers with alternating flips, as in the notebook."""

    def __init__(self, d, k, hidden, n, dtype=torch.float32):
        super().__init__()
        self.bijectors = nn.ModuleList([R_NVP(d, k, hidden, dtype) for _ in range(n)])
        self.flips = [i % 2 == 1 for i in range(n)]

    def forward(self, x):
        log_jacobs = []
        for bijector, f in zip(self.bijectors, self.flips):
            x, log_pz, lj = bijector(x, flip=f)
            log_jacobs.append(lj)
        return x, log_pz, sum(log_jacobs)

    def inverse(self, z):
        for bijector, f in zip(reversed(self.bijectors), reversed(self.flips)):
            z = bijector.inverse(z, flip=f)
        return z


# ---------------------------------------------------------------------------------------------------
# The layer family (shared/docs/layers.md; names and maths: the contract in the family spec).
# Every layer maps rows x [n, d] to (z, log|det| per row [n]) and has an exact inverse. Layers are
# built in the default float dtype and Flow converts itself to its dtype at the end (as the other
# models here are converted), so that a seeded Flow(notebook) draws the same weights as stacked_NVP.

SCALES = ("exp", "softclamp", "sigmoid", "tanh")
MIXINGS = ("flip", "reverse", "random", "lu")
COUPLINGS = ("affine", "additive")


def conditioner(c, hidden, o):
    """A coupling's network: Linear(c, hidden), LeakyReLU(0.01), Linear(hidden, o)."""
    return nn.Sequential(nn.Linear(c, hidden), nn.LeakyReLU(), nn.Linear(hidden, o))


def same_for_every_row(value, x):
    """A log-det that does not depend on the row, as one value per row of x."""
    return value.expand(x.shape[0])


class ActNorm(nn.Module):
    """Glow's ActNorm: z = (x - loc) * exp(log_scale), with data-dependent initialisation on the first
    batch seen in training mode (the `initialized` buffer is saved with the model)."""

    def __init__(self, d):
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(d))
        self.log_scale = nn.Parameter(torch.zeros(d))
        self.register_buffer("initialized", torch.tensor(0.0))

    def initialize(self, x):
        with torch.no_grad():
            self.loc.copy_(x.mean(0))
            self.log_scale.copy_(-torch.log(x.std(0, correction=0) + 1e-6))
            self.initialized.fill_(1.0)

    def forward(self, x):
        if self.training and self.initialized.item() == 0:
            self.initialize(x)
        return (x - self.loc) * torch.exp(self.log_scale), same_for_every_row(self.log_scale.sum(), x)

    def inverse(self, z):
        return z * torch.exp(-self.log_scale) + self.loc


class Permutation(nn.Module):
    """A fixed permutation of the columns, z = x[:, perm] (reverse, or random when built)."""

    def __init__(self, d, kind="reverse"):
        super().__init__()
        perm = torch.arange(d - 1, -1, -1) if kind == "reverse" else torch.randperm(d)
        self.register_buffer("perm", perm.to(torch.get_default_dtype()))

    def forward(self, x):
        return x[:, self.perm.long()], x.new_zeros(x.shape[0])

    def inverse(self, z):
        return z[:, torch.argsort(self.perm.long())]


class LULinear(nn.Module):
    """Glow's invertible 1x1 convolution for vectors, W = P L U: z = (x @ U.T @ L.T)[:, perm]."""

    def __init__(self, d):
        super().__init__()
        dtype = torch.get_default_dtype()
        q, _ = torch.linalg.qr(torch.randn(d, d).double())  # a random rotation
        p, lower, upper = torch.linalg.lu(q)  # q = p @ lower @ upper
        diag = torch.diagonal(upper)
        self.register_buffer("perm", p.argmax(1).to(dtype))  # row i of P has its 1 in column perm[i]
        self.register_buffer("sign", torch.sign(diag).to(dtype))
        self.lower = nn.Parameter(lower.to(dtype))
        self.upper = nn.Parameter(upper.to(dtype))
        self.log_abs_s = nn.Parameter(torch.log(diag.abs()).to(dtype))

    def factors(self):
        """L (unit lower triangular) and U (upper triangular, diagonal sign * exp(log_abs_s))."""
        eye = torch.eye(self.lower.shape[0], dtype=self.lower.dtype, device=self.lower.device)
        lower = torch.tril(self.lower, -1) + eye
        upper = torch.triu(self.upper, 1) + torch.diag(self.sign * torch.exp(self.log_abs_s))
        return lower, upper

    def forward(self, x):
        lower, upper = self.factors()
        z = (x @ upper.T @ lower.T)[:, self.perm.long()]
        return z, same_for_every_row(self.log_abs_s.sum(), x)

    def inverse(self, z):
        lower, upper = self.factors()
        y = z[:, torch.argsort(self.perm.long())].T
        y = torch.linalg.solve_triangular(lower, y, upper=False, unitriangular=True)
        return torch.linalg.solve_triangular(upper, y, upper=True).T


class Coupling(nn.Module):
    """What both couplings share: which columns condition (x1) and which are transformed (x2).
    Unflipped: x1 = x[:, :k], x2 = x[:, k:]; flipped: x1 = x[:, k:], x2 = x[:, :k]. In a conditional
    flow the networks take [x1, c], the context c (`context` columns) after the conditioning columns."""

    def __init__(self, d, k, flip, context=0):
        super().__init__()
        self.d, self.k, self.flip = d, k, flip
        self.c = d - k if flip else k  # conditioning columns
        self.o = d - self.c  # transformed columns
        self.inputs = self.c + context  # the networks' input width

    def split(self, x):
        x1, x2 = x[:, :self.k], x[:, self.k:]
        return (x2, x1) if self.flip else (x1, x2)

    @staticmethod
    def net_input(x1, c):
        return x1 if c is None else torch.cat([x1, c], dim=-1)

    def join(self, x1, x2):
        return torch.cat([x2, x1] if self.flip else [x1, x2], dim=-1)


def add_scale_variable(layer, scale, gamma_shape):
    """Registers on `layer` the variable of the scale map `scale`: the buffer softclamp_bound (B = ln 1000)
    or sigmoid_shift (2), or the parameter scale_factor (gamma, of shape gamma_shape, initialised to 1);
    nothing for exp."""
    if scale == "softclamp":
        layer.register_buffer("softclamp_bound", torch.tensor(math.log(1000.0)))
    elif scale == "sigmoid":
        layer.register_buffer("sigmoid_shift", torch.tensor(2.0))
    elif scale == "tanh":
        layer.scale_factor = nn.Parameter(torch.ones(gamma_shape))


def scale_map(layer, h):
    """log s = g(h) for layer.scale: softclamp h / (1 + |h| / B), sigmoid log sigma(h + shift),
    tanh gamma * tanh(h), exp h itself."""
    if layer.scale == "softclamp":
        return h / (1 + h.abs() / layer.softclamp_bound)
    if layer.scale == "sigmoid":
        return nn.functional.logsigmoid(h + layer.sigmoid_shift)
    if layer.scale == "tanh":
        return layer.scale_factor * torch.tanh(h)
    return h


class AffineCoupling(Coupling):
    """R-NVP's affine coupling: z2 = x2 * exp(g(sig_net(x1))) + mu_net(x1), with the scale map g."""

    def __init__(self, d, k, hidden, flip=False, scale="exp", context=0):
        super().__init__(d, k, flip, context)
        if scale not in SCALES:
            raise ValueError(f"scale must be one of {SCALES}, not {scale!r}")
        self.scale = scale
        self.sig_net = conditioner(self.inputs, hidden, self.o)
        self.mu_net = conditioner(self.inputs, hidden, self.o)
        add_scale_variable(self, scale, (self.o,))

    def log_s(self, x1):
        return scale_map(self, self.sig_net(x1))

    def forward(self, x, c=None):
        x1, x2 = self.split(x)
        h = self.net_input(x1, c)
        log_s = self.log_s(h)
        z2 = x2 * torch.exp(log_s) + self.mu_net(h)
        return self.join(x1, z2), log_s.sum(-1)

    def inverse(self, z, c=None):
        z1, z2 = self.split(z)
        h = self.net_input(z1, c)
        return self.join(z1, (z2 - self.mu_net(h)) * torch.exp(-self.log_s(h)))


class AdditiveCoupling(Coupling):
    """NICE's additive coupling: z2 = x2 + mu_net(x1), volume-preserving."""

    def __init__(self, d, k, hidden, flip=False, context=0):
        super().__init__(d, k, flip, context)
        self.mu_net = conditioner(self.inputs, hidden, self.o)

    def forward(self, x, c=None):
        x1, x2 = self.split(x)
        return self.join(x1, x2 + self.mu_net(self.net_input(x1, c))), x.new_zeros(x.shape[0])

    def inverse(self, z, c=None):
        z1, z2 = self.split(z)
        return self.join(z1, z2 - self.mu_net(self.net_input(z1, c)))


class BatchNormFlow(nn.Module):
    """The batch-norm flow layer: batch statistics in training (running averages updated), the running
    averages in eval mode (a fixed affine map). The inverse always uses the running averages."""

    eps, momentum = 1e-5, 0.1

    def __init__(self, d):
        super().__init__()
        self.log_gamma = nn.Parameter(torch.zeros(d))
        self.beta = nn.Parameter(torch.zeros(d))
        self.register_buffer("running_mean", torch.zeros(d))
        self.register_buffer("running_var", torch.ones(d))

    def forward(self, x):
        if self.training:
            mean, var = x.mean(0), x.var(0, correction=0)
            with torch.no_grad():
                self.running_mean.mul_(1 - self.momentum).add_(self.momentum * mean)
                self.running_var.mul_(1 - self.momentum).add_(self.momentum * x.var(0, correction=1))
        else:
            mean, var = self.running_mean, self.running_var
        z = (x - mean) / torch.sqrt(var + self.eps) * torch.exp(self.log_gamma) + self.beta
        log_det = (self.log_gamma - 0.5 * torch.log(var + self.eps)).sum()
        return z, same_for_every_row(log_det, x)

    def inverse(self, z):
        std = torch.sqrt(self.running_var + self.eps)
        return (z - self.beta) * torch.exp(-self.log_gamma) * std + self.running_mean


class DiagonalScale(nn.Module):
    """NICE's final scaling layer: z = x * exp(log_scale)."""

    def __init__(self, d):
        super().__init__()
        self.log_scale = nn.Parameter(torch.zeros(d))

    def forward(self, x):
        return x * torch.exp(self.log_scale), same_for_every_row(self.log_scale.sum(), x)

    def inverse(self, z):
        return z * torch.exp(-self.log_scale)


def standard_normal_log_prob(z):
    """log N(z; 0, I) per row."""
    return -0.5 * (z * z).sum(-1) - 0.5 * z.shape[-1] * math.log(2 * math.pi)


class Flow(nn.Module):
    """A flow of the layer family: per step [ActNorm] [mixing] coupling [BatchNormFlow], then
    [DiagonalScale]; `bijectors` in that order (for the notebook's configuration, the same
    state_dict keys as stacked_NVP). With `context` = m > 0 it is a conditional flow p(x | c): every
    coupling's networks also take the context c (m columns); the other layers ignore it."""

    def __init__(self, d, k, hidden, layers, coupling="affine", scale="exp", actnorm=False, mixing="flip",
                 batch_norm=False, final_scale=False, dtype=torch.float32, context=0):
        super().__init__()
        if not 1 <= k < d:
            raise ValueError(f"need 1 <= k < d, got d={d}, k={k}")
        if coupling not in COUPLINGS or scale not in SCALES or mixing not in MIXINGS:
            raise ValueError(f"coupling in {COUPLINGS}, scale in {SCALES}, mixing in {MIXINGS}: "
                             f"got {coupling!r}, {scale!r}, {mixing!r}")
        if coupling == "additive" and scale != "exp":
            raise ValueError(f"the scale map is for affine couplings only (additive with scale {scale!r})")
        self.d, self.k, self.hidden, self.layers = d, k, hidden, layers
        self.coupling, self.scale, self.actnorm, self.mixing = coupling, scale, actnorm, mixing
        self.batch_norm, self.final_scale, self.dtype, self.context = batch_norm, final_scale, dtype, context
        bijectors = []
        for i in range(layers):
            if actnorm:
                bijectors.append(ActNorm(d))
            if mixing in ("reverse", "random"):
                bijectors.append(Permutation(d, mixing))
            elif mixing == "lu":
                bijectors.append(LULinear(d))
            flip = mixing == "flip" and i % 2 == 1
            if coupling == "affine":
                bijectors.append(AffineCoupling(d, k, hidden, flip, scale, context))
            else:
                bijectors.append(AdditiveCoupling(d, k, hidden, flip, context))
            if batch_norm:
                bijectors.append(BatchNormFlow(d))
        if final_scale:
            bijectors.append(DiagonalScale(d))
        self.bijectors = nn.ModuleList(bijectors)
        self.to(dtype)

    def config(self):
        """The constructor arguments (dtype as 'f32' / 'f64')."""
        return {"d": self.d, "k": self.k, "hidden": self.hidden, "layers": self.layers,
                "coupling": self.coupling, "scale": self.scale, "actnorm": self.actnorm,
                "mixing": self.mixing, "batch_norm": self.batch_norm, "final_scale": self.final_scale,
                "dtype": "f64" if self.dtype == torch.float64 else "f32", "context": self.context}

    def forward(self, x, c=None):
        """(z, log N(z; 0, I), sum of the layers' log|det|), one value per row for the last two; c is
        the context (one row per row of x) of a conditional flow."""
        log_det = x.new_zeros(x.shape[0])
        for bijector in self.bijectors:
            x, ld = bijector(x, c) if isinstance(bijector, Coupling) else bijector(x)
            log_det = log_det + ld
        return x, standard_normal_log_prob(x), log_det

    def inverse(self, z, c=None):
        for bijector in reversed(self.bijectors):
            z = bijector.inverse(z, c) if isinstance(bijector, Coupling) else bijector.inverse(z)
        return z

    def log_prob(self, x, c=None):
        z, log_pz, log_det = self(x, c)
        return log_pz + log_det


ARCHS = {
    "notebook": dict(coupling="affine", scale="exp", actnorm=False, mixing="flip", batch_norm=False,
                     final_scale=False),
    "nice": dict(coupling="additive", scale="exp", actnorm=False, mixing="flip", batch_norm=False,
                 final_scale=True),
    "realnvp": dict(coupling="affine", scale="tanh", actnorm=False, mixing="flip", batch_norm=True,
                    final_scale=False),
    "glow": dict(coupling="affine", scale="sigmoid", actnorm=True, mixing="lu", batch_norm=False,
                 final_scale=False),
}


# ---------------------------------------------------------------------------------------------------
# The multi-scale image flows (src/multiscale.rs; the R-NVP paper §3.6, Glow §3). A flow works on rows
# of D = c·h·w columns, the image in channel-major order ([c, h, w], PyTorch's layout). Every layer acts
# on the *active* part of the row, its first c'·h'·w' columns viewed as an image [c', h', w']; the
# columns after them were factored out at earlier scales and pass through unchanged to the base
# N(0, I). Factoring out half the channels keeps the first c'/2 channels, the first half of the active
# columns, so the active part only ever shrinks to a prefix of the row.

IMAGE_ARCHS = {"realnvp-image": "tanh", "glow-image": "sigmoid"}  # the couplings' scale maps


def on_active(x, shape, f):
    """f applied to the active image [n, c, h, w] of the rows x [n, D] (their first c·h·w columns);
    f returns the new image and a log-det per row (or None), and the rows come back with the other
    columns as they were."""
    c, h, w = shape
    m = c * h * w
    out, ld = f(x[:, :m].reshape(-1, c, h, w))
    return torch.cat([out.reshape(x.shape[0], m), x[:, m:]], 1), ld


def to_pixels(image):
    """Images [n, c, h, w] as one row of c channels per pixel: [n·h·w, c]."""
    return image.permute(0, 2, 3, 1).reshape(-1, image.shape[1])


def from_pixels(rows, shape):
    """Pixel rows [n·h·w, c] back as images [n, c, h, w]."""
    c, h, w = shape
    return rows.reshape(-1, h, w, c).permute(0, 3, 1, 2)


def squeezed(shape):
    """The squeezed image [4c, h/2, w/2]."""
    c, h, w = shape
    return (4 * c, h // 2, w // 2)


def squeeze(image):
    """[n, c, h, w] -> [n, 4c, h/2, w/2]: channel 4i + 2a + b holds pixel (2y + a, 2x + b) of channel i."""
    n, c, h, w = image.shape
    return image.reshape(n, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(n, 4 * c, h // 2, w // 2)


def unsqueeze(image):
    """The inverse of squeeze: [n, 4c, h/2, w/2] -> [n, c, h, w]."""
    n, c4, h2, w2 = image.shape
    c = c4 // 4
    return image.reshape(n, c, 2, 2, h2, w2).permute(0, 1, 4, 2, 5, 3).reshape(n, c, 2 * h2, 2 * w2)


def per_image(x):
    """A sum over each image's channels and pixels: [n, c, h, w] -> [n]."""
    return x.sum((1, 2, 3))


class Squeeze(nn.Module):
    """The squeeze of the active image [c, h, w] into [4c, h/2, w/2]: a permutation, log|det| = 0."""

    def __init__(self, shape):
        super().__init__()
        self.shape = tuple(shape)

    def forward(self, x):
        return on_active(x, self.shape, lambda img: (squeeze(img), x.new_zeros(x.shape[0])))

    def inverse(self, z):
        return on_active(z, squeezed(self.shape), lambda img: (unsqueeze(img), None))[0]


class ConvNet(nn.Sequential):
    """An image coupling's conditioner: conv 3x3 -> ReLU -> conv -> ReLU -> conv 3x3 (net.0, net.2,
    net.4; `hidden` channels, padding k // 2). Glow's middle conv is 1x1: relu(conv2(a)); the R-NVP
    paper's residual one is 3x3 and added to its input: relu(a + conv2(a)), with a = relu(conv0(x)).
    The last conv starts at zero, so that the coupling starts as the identity."""

    def __init__(self, c_in, hidden, c_out, residual):
        k = 3 if residual else 1
        super().__init__(nn.Conv2d(c_in, hidden, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(hidden, hidden, k, padding=k // 2), nn.ReLU(),
                         nn.Conv2d(hidden, c_out, 3, padding=1))
        self.residual = residual
        nn.init.zeros_(self[4].weight)
        nn.init.zeros_(self[4].bias)

    def forward(self, x):
        a = self[1](self[0](x))
        b = self[2](a)
        return self[4](self[3](a + b if self.residual else b))


class ConvAffineCoupling(nn.Module):
    """The affine coupling of the active image [c, h, w] with a convolutional conditioner. With b the
    mask of conditioning entries, [h, mu] = net(b * x) split by chunk(2, dim 1), log s = g(h) * (1 - b):
    z = x * exp(log s) + mu * (1 - b), log|det| = sum log s; the inverse x = (z - mu * (1 - b)) *
    exp(-log s), as net(b * z) = net(b * x).
    mask ("checkerboard", parity): b is 1 on the pixels (y, x) with (y + x) % 2 == parity, for all c
    channels; the net takes the c masked channels and gives 2c. mask ("channel", flip): the channels
    split into x[:, :c // 2] and x[:, c // 2:]; the first half conditions (the second when flipped) and
    the net sees only it and gives [h, mu] for the other half. g is the scale map `scale` (tanh: one
    gamma per transformed channel, scale_factor of shape [c_out, 1, 1])."""

    def __init__(self, shape, mask, hidden, scale, residual):
        super().__init__()
        if scale not in SCALES:
            raise ValueError(f"scale must be one of {SCALES}, not {scale!r}")
        self.shape, self.mask, self.scale = tuple(shape), tuple(mask), scale
        c, half = shape[0], shape[0] // 2
        kind, option = self.mask
        if kind == "checkerboard":
            c_in, c_out = c, c
        elif kind == "channel":
            c_in, c_out = (c - half, half) if option else (half, c - half)
        else:
            raise ValueError(f"mask {mask!r}: ('checkerboard', parity) or ('channel', flip)")
        self.net = ConvNet(c_in, hidden, 2 * c_out, residual)
        add_scale_variable(self, scale, (c_out, 1, 1))

    def scale_shift(self, cond):
        """(log s, mu) for the conditioning input."""
        h, mu = self.net(cond).chunk(2, 1)
        return scale_map(self, h), mu

    def checkerboard(self, like):
        """b as [1, 1, h, w] of like's dtype and device."""
        _, h, w = self.shape
        yx = torch.arange(h, device=like.device).reshape(h, 1) + torch.arange(w, device=like.device).reshape(1, w)
        return (yx % 2 == int(self.mask[1])).to(like.dtype).reshape(1, 1, h, w)

    def halves(self, x):
        """(conditioning, transformed) channel halves."""
        half = self.shape[0] // 2
        x1, x2 = x[:, :half], x[:, half:]
        return (x2, x1) if self.mask[1] else (x1, x2)

    def merge(self, cond, other):
        return torch.cat([other, cond] if self.mask[1] else [cond, other], 1)

    def forward_image(self, x):
        if self.mask[0] == "checkerboard":
            b = self.checkerboard(x)
            log_s, mu = self.scale_shift(x * b)
            log_s = log_s * (1 - b)
            return x * torch.exp(log_s) + mu * (1 - b), per_image(log_s)
        x1, x2 = self.halves(x)
        log_s, mu = self.scale_shift(x1)
        return self.merge(x1, x2 * torch.exp(log_s) + mu), per_image(log_s)

    def inverse_image(self, z):
        if self.mask[0] == "checkerboard":
            b = self.checkerboard(z)
            log_s, mu = self.scale_shift(z * b)
            return (z - mu * (1 - b)) * torch.exp(-log_s * (1 - b)), None
        z1, z2 = self.halves(z)
        log_s, mu = self.scale_shift(z1)
        return self.merge(z1, (z2 - mu) * torch.exp(-log_s)), None

    def forward(self, x):
        return on_active(x, self.shape, self.forward_image)

    def inverse(self, z):
        return on_active(z, self.shape, self.inverse_image)[0]


class SplitPrior(nn.Module):
    """Glow's split with a learned prior, on the active image [c, h, w]: the second half of the
    channels x2 = x[:, c // 2:], about to be factored out, has the prior N(mu, exp(l)^2) with
    [mu, l] = prior(x1) (chunk(2, dim 1)), `prior` a zero-initialised conv 3x3 of the kept half
    x1 = x[:, :c // 2]. As a layer: z2 = (x2 - mu) * exp(-l), log|det| = -sum l; x2 = z2 * exp(l) + mu."""

    def __init__(self, shape):
        super().__init__()
        self.shape = tuple(shape)
        half = shape[0] // 2
        self.prior = nn.Conv2d(half, 2 * (shape[0] - half), 3, padding=1)
        nn.init.zeros_(self.prior.weight)
        nn.init.zeros_(self.prior.bias)

    def split(self, x):
        """(x1, x2, mu, l)."""
        half = self.shape[0] // 2
        x1, x2 = x[:, :half], x[:, half:]
        mu, log_sd = self.prior(x1).chunk(2, 1)
        return x1, x2, mu, log_sd

    def forward(self, x):
        def f(img):
            x1, x2, mu, log_sd = self.split(img)
            return torch.cat([x1, (x2 - mu) * torch.exp(-log_sd)], 1), -per_image(log_sd)
        return on_active(x, self.shape, f)

    def inverse(self, z):
        def f(img):
            z1, z2, mu, log_sd = self.split(img)
            return torch.cat([z1, z2 * torch.exp(log_sd) + mu], 1), None
        return on_active(z, self.shape, f)[0]


class PerPixel(nn.Module):
    """A vector layer of c columns (ActNorm, LULinear, BatchNormFlow) applied to the channels of every
    pixel of the active image [c, h, w] (Glow's ActNorm and invertible 1x1 convolution, the R-NVP
    paper's spatial batch norm): the image as rows [n·h·w, c] (to_pixels), log-dets summed over each
    image's h·w pixels. Training mode is the layer's: ActNorm initialises on the first batch of pixels,
    batch norm takes the statistics of the n·h·w pixel rows.

    The wrapper shares the layer's parameter and buffer dictionaries instead of holding it as a
    submodule, so its state_dict keys are the layer's own (bijectors.{j}.loc, as rnvp names them), and
    .to(), load_state_dict() and deepcopy act on the layer's tensors."""

    def __init__(self, layer, shape):
        super().__init__()
        object.__setattr__(self, "layer", layer)  # not a submodule: its variables are this module's
        self._parameters = layer._parameters
        self._buffers = layer._buffers
        self._non_persistent_buffers_set = layer._non_persistent_buffers_set
        self.shape = tuple(shape)

    def train(self, mode=True):
        super().train(mode)
        self.layer.train(mode)
        return self

    def forward(self, x):
        _, h, w = self.shape

        def f(img):
            z, ld = self.layer(to_pixels(img))
            return from_pixels(z, self.shape), ld.reshape(-1, h * w).sum(1)
        return on_active(x, self.shape, f)

    def inverse(self, z):
        return on_active(z, self.shape, lambda img: (from_pixels(self.layer.inverse(to_pixels(img)), self.shape),
                                                     None))[0]


def image_plan(arch, channels, height, width, scales, steps):
    """The layers of an image flow in order, as (kind, mask, [c, h, w] the layer acts on), as in
    src/multiscale.rs. Scale s starts from [c·2^s, h/2^s, w/2^s].
    realnvp-image: at each scale s < S - 1, `steps` checkerboard couplings (parities 0, 1, 0, ...), a
    squeeze, `steps` channel-wise couplings (flips False, True, ...), then half the channels factored
    out; at the last scale steps + 1 checkerboard couplings; batch norm after every coupling.
    glow-image: at each level, a squeeze, `steps` x (ActNorm, LU map, channel-wise coupling unflipped)
    on the squeezed image, then (but at the last level) the split prior."""
    if arch not in IMAGE_ARCHS:
        raise ValueError(f"arch must be one of {sorted(IMAGE_ARCHS)}, not {arch!r}")
    glow = arch == "glow-image"
    f = 1 << (scales if glow else scales - 1)
    if min(channels, height, width, scales, steps) < 1 or height % f or width % f:
        raise ValueError(f"{arch}: images {channels} x {height} x {width} cannot be squeezed to {scales} scale(s)")
    plan = []
    for s in range(scales):
        shape = (channels << s, height >> s, width >> s)
        inner = squeezed(shape)
        last = s == scales - 1
        if glow:
            plan.append(("squeeze", None, shape))
            for _ in range(steps):
                plan += [("actnorm", None, inner), ("lu", None, inner), ("coupling", ("channel", False), inner)]
            if not last:
                plan.append(("prior", None, inner))
            continue
        for i in range(steps + 1 if last else steps):
            plan += [("coupling", ("checkerboard", i % 2 == 1), shape), ("batchnorm", None, shape)]
        if not last:
            plan.append(("squeeze", None, shape))
            for i in range(steps):
                plan += [("coupling", ("channel", i % 2 == 1), inner), ("batchnorm", None, inner)]
    return plan


class ImageFlow(nn.Module):
    """A multi-scale image flow (realnvp-image or glow-image) of images [channels, height, width]:
    `bijectors` in the order of image_plan, on rows of D = c·h·w columns. forward(x) = (z, sum of
    the layers' log|det|), log_prob(x) = log N(z; 0, I) over all D columns + that sum, inverse(z) the
    layers inverted in reverse order (batch norm with its running averages)."""

    def __init__(self, arch, channels, height, width, scales, hidden, steps, dtype=torch.float32):
        super().__init__()
        self.arch, self.shape, self.scales, self.hidden, self.steps = arch, (channels, height, width), scales, \
            hidden, steps
        self.d, self.dtype = channels * height * width, dtype
        scale, residual = IMAGE_ARCHS.get(arch), arch == "realnvp-image"
        bijectors = []
        for kind, mask, shape in image_plan(arch, channels, height, width, scales, steps):
            if kind == "squeeze":
                bijectors.append(Squeeze(shape))
            elif kind == "coupling":
                bijectors.append(ConvAffineCoupling(shape, mask, hidden, scale, residual))
            elif kind == "prior":
                bijectors.append(SplitPrior(shape))
            else:
                vector = {"actnorm": ActNorm, "lu": LULinear, "batchnorm": BatchNormFlow}[kind]
                bijectors.append(PerPixel(vector(shape[0]), shape))
        self.bijectors = nn.ModuleList(bijectors)
        self.to(dtype)

    def forward(self, x):
        log_det = x.new_zeros(x.shape[0])
        for bijector in self.bijectors:
            x, ld = bijector(x)
            log_det = log_det + ld
        return x, log_det

    def log_prob(self, x):
        z, log_det = self(x)
        return standard_normal_log_prob(z) + log_det

    def inverse(self, z):
        for bijector in reversed(self.bijectors):
            z = bijector.inverse(z)
        return z


def layer_kind(names):
    """The family layer a set of state_dict names (below bijectors.{i}.) belongs to, as (class, scale)."""
    if "sig_net.0.weight" in names:
        scale = ("softclamp" if "softclamp_bound" in names else "sigmoid" if "sigmoid_shift" in names
                 else "tanh" if "scale_factor" in names else "exp")
        return AffineCoupling, scale
    for name, cls in [("mu_net.0.weight", AdditiveCoupling), ("loc", ActNorm), ("lower", LULinear),
                      ("perm", Permutation), ("running_mean", BatchNormFlow), ("log_scale", DiagonalScale)]:
        if name in names:
            return cls, None
    raise ValueError(f"not a layer of the family: {sorted(names)}")


def flow_from_state_dict(sd):
    """The Flow a state_dict describes, every constructor argument read from its key names and shapes,
    with the state_dict loaded (strict=True); in eval mode. A permutation layer is read back as mixing
    'random' (its perm comes from the file). Raises ValueError when the names are not a flow of the family."""
    layers = {}
    for key in sd:
        parts = key.split(".", 2)
        if len(parts) < 3 or parts[0] != "bijectors" or not parts[1].isdigit():
            raise ValueError(f"not a key of a Flow: {key!r}")
        layers.setdefault(int(parts[1]), set()).add(parts[2])
    if sorted(layers) != list(range(len(layers))):
        raise ValueError(f"layer indices are not 0..n-1: {sorted(layers)}")
    kinds = [layer_kind(layers[i]) for i in range(len(layers))]
    couplings = [i for i, (cls, _) in enumerate(kinds) if cls in (AffineCoupling, AdditiveCoupling)]
    if not couplings:
        raise ValueError("no coupling layer")
    first = couplings[0]
    net = "sig_net" if kinds[first][0] is AffineCoupling else "mu_net"
    hidden, inputs = sd[f"bijectors.{first}.{net}.0.weight"].shape  # k + m: conditioning columns, context
    outputs = sd[f"bijectors.{first}.{net}.2.weight"].shape[0]  # d - k
    # d from a layer that spans every column, else from the second coupling (flipped: it outputs k)
    spans = [t.shape[0] for key, t in sd.items()
             if key.rsplit(".", 1)[-1] in ("loc", "lower", "perm", "running_mean", "log_scale")]
    if spans:
        d = spans[0]
    elif len(couplings) > 1:
        d = outputs + sd[f"bijectors.{couplings[1]}.{net}.2.weight"].shape[0]
    else:
        d = inputs + outputs  # a single coupling: no context
    k = d - outputs
    classes = {cls for cls, _ in kinds}
    scales = {scale for cls, scale in kinds if cls is AffineCoupling}
    if len(scales) > 1 or len({kinds[i][0] for i in couplings}) > 1:
        raise ValueError("couplings of more than one kind")
    kw = dict(coupling="affine" if kinds[first][0] is AffineCoupling else "additive",
              scale=scales.pop() if scales else "exp", actnorm=ActNorm in classes,
              mixing="lu" if LULinear in classes else "random" if Permutation in classes else "flip",
              batch_norm=BatchNormFlow in classes, final_scale=DiagonalScale in classes, context=inputs - k)
    with torch.random.fork_rng(devices=[]):  # building draws random weights: leave the caller's RNG alone
        model = Flow(d, k, hidden, len(couplings), dtype=sd[f"bijectors.{first}.{net}.0.weight"].dtype, **kw)
    built = [type(b) for b in model.bijectors]
    if built != [cls for cls, _ in kinds]:
        raise ValueError("the layers are not in the family's order: " + " ".join(c.__name__ for c, _ in kinds))
    model.load_state_dict(sd, strict=True)
    return model.eval()


def is_notebook_state_dict(sd):
    """Whether sd is an R_NVP's or a stacked_NVP's state_dict: by its names (affine couplings with the
    exp scale and nothing else) and shapes (the notebook's nets all take k inputs, so a flipped layer
    with d != 2k is a Flow's); everything else goes to flow_from_state_dict."""
    if len({tuple(v.shape) for key, v in sd.items() if key.endswith("sig_net.0.weight")}) > 1:
        return False
    # the notebook's nets take k inputs and give d - k = k outputs; a context widens the inputs
    if any(v.shape[1] != sd[key.replace("0.weight", "2.weight")].shape[0]
           for key, v in sd.items() if key.endswith("sig_net.0.weight")):
        return False
    layers = {}
    for key in sd:
        parts = key.split(".")
        if parts[0] == "bijectors" and len(parts) > 1 and parts[1].isdigit():
            layer, parts = parts[1], parts[2:]
        else:
            layer = ""
        if not parts or parts[0] not in ("sig_net", "mu_net"):
            return False
        layers.setdefault(layer, set()).add(parts[0])
    return bool(layers) and all("sig_net" in v for v in layers.values())


def make_moons(n, noise, rng):
    """scikit-learn's make_moons (shuffled), without the scikit-learn dependency."""
    n_out = n // 2
    n_in = n - n_out
    t_out = np.linspace(0, math.pi, n_out)
    t_in = np.linspace(0, math.pi, n_in)
    x = np.concatenate([np.cos(t_out), 1 - np.cos(t_in)])
    y = np.concatenate([np.sin(t_out), 1 - np.sin(t_in) - 0.5])
    X = np.stack([x, y], axis=1)
    X = X[rng.permutation(n)]
    return X + rng.normal(scale=noise, size=X.shape)


def standardize(X):
    return (X - X.mean(0)) / X.std(0)


def save(dirname, name, t):
    np.save(os.path.join(dirname, name + ".npy"), t.detach().cpu().numpy())


def cmd_parity(a):
    torch.manual_seed(a.seed)
    dtype = torch.float64 if a.dtype == "f64" else torch.float32
    if a.single:
        model = R_NVP(a.d, a.k, a.hidden, dtype)
    else:
        model = stacked_NVP(a.d, a.k, a.hidden, a.layers, dtype)
    model = model.to(dtype)
    with torch.no_grad():  # larger weights than the default so that the flow is far from the identity
        for p in model.parameters():
            p.mul_(a.scale)
    os.makedirs(os.path.join(a.out, "weights"), exist_ok=True)
    for key, t in model.state_dict().items():
        save(os.path.join(a.out, "weights"), key, t)
    x = torch.randn(a.n, a.d, dtype=dtype)
    # a few points far outside the data, where exp(sig) can overflow in float32
    far = torch.tensor([[-0.33, -3.64], [40.0, -40.0], [1e3, 1e3], [-1e4, 5.0]], dtype=dtype)
    if a.d == 2:
        x = torch.cat([x, far])
    z_in = torch.randn(a.n, a.d, dtype=dtype)
    with torch.no_grad():
        if a.single:
            z, log_pz, log_jacob = model(x, flip=a.flip)
            x_inv = model.inverse(z_in, flip=a.flip)
        else:
            z, log_pz, log_jacob = model(x)
            x_inv = model.inverse(z_in)
    for name, t in [("x", x), ("z", z), ("log_pz", log_pz), ("log_jacob", log_jacob),
                    ("z_in", z_in), ("x_inv", x_inv)]:
        save(a.out, name, t)


DEVICE = torch.device(os.environ.get("RNVP_DEVICE", "cpu"))  # benches: where train/sample/log-prob run


def to_device(model):
    """The model on DEVICE. The notebook's base_dist is not a buffer, so it is rebuilt there."""
    model = model.to(DEVICE)
    for m in model.modules():
        if isinstance(m, R_NVP):
            loc = m.base_dist.loc.to(DEVICE)
            m.base_dist = MultivariateNormal(loc, torch.eye(m.d, dtype=loc.dtype, device=DEVICE),
                                             validate_args=False)
    return model


def load_weights_dir(dirname, dtype=torch.float32):
    """A stacked_NVP or R_NVP built from DIR/<state_dict key>.npy (architecture from names/shapes)."""
    sd = {f[:-4]: torch.from_numpy(np.load(os.path.join(dirname, f))) for f in os.listdir(dirname)}
    single = "sig_net.0.weight" in sd
    pre = "" if single else "bijectors.0."
    hidden, k = sd[pre + "sig_net.0.weight"].shape
    d = k + sd[pre + "sig_net.2.weight"].shape[0]
    if single:
        model = R_NVP(d, k, hidden, dtype)
    else:
        n = len({key.split(".")[1] for key in sd})
        model = stacked_NVP(d, k, hidden, n, dtype)
    model.load_state_dict(sd, strict=True)
    return model


def cmd_adam(a):
    """The notebook's training loop on given batches: Adam(lr), ExponentialLR(gamma)."""
    model = load_weights_dir(a.weights)
    batches = torch.from_numpy(np.load(a.batches))
    optim = torch.optim.Adam(model.parameters(), lr=a.lr)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optim, a.gamma)
    losses = []
    for X in batches:
        optim.zero_grad()
        z, log_pz, log_jacob = model(X)
        loss = (-log_pz - log_jacob).mean()
        losses.append(loss.item())
        loss.backward()
        optim.step()
        scheduler.step()
    os.makedirs(os.path.join(a.out, "weights"), exist_ok=True)
    np.save(os.path.join(a.out, "losses.npy"), np.array(losses))
    for key, t in model.state_dict().items():
        save(os.path.join(a.out, "weights"), key, t)


def outputs(model, x, z_in, single):
    """log p(x), z and the inverse of z_in, as the notebook computes them."""
    with torch.no_grad():
        z, log_pz, log_jacob = model(x)
        x_inv = model.inverse(z_in)
    return {"log_prob": log_pz + log_jacob, "z": z, "x_inv": x_inv}


def cmd_variants(a):
    """Saves one seeded model in every way people save it, with PyTorch's outputs on fixed inputs."""
    torch.manual_seed(a.seed)
    dtype = torch.float64 if a.dtype == "f64" else torch.float32
    model = (R_NVP(2, 1, a.hidden, dtype) if a.single else stacked_NVP(2, 1, a.hidden, a.layers, dtype)).to(dtype)
    os.makedirs(a.out, exist_ok=True)
    x = torch.randn(200, 2, dtype=dtype)
    z_in = torch.randn(200, 2, dtype=dtype)
    save(a.out, "x", x)
    save(a.out, "z_in", z_in)
    for name, t in outputs(model, x, z_in, a.single).items():
        save(a.out, name, t)
    p = lambda f: os.path.join(a.out, f)
    sd = model.state_dict()
    torch.save(sd, p("state_dict.pt"))
    torch.save(sd, p("legacy_state_dict.pt"), _use_new_zipfile_serialization=False)
    optim = torch.optim.Adam(model.parameters(), lr=1e-3)
    torch.save({"epoch": 7, "model_state_dict": sd, "optimizer_state_dict": optim.state_dict(), "loss": 1.5},
               p("checkpoint.pt"))
    torch.save(model, p("module.pt"))
    torch.save(model, p("legacy_module.pt"), _use_new_zipfile_serialization=False)
    torch.jit.save(torch.jit.trace(model, x[:4]), p("traced.pt"))
    if a.half:
        torch.save({k: v.half() for k, v in sd.items()}, p("half.pt"))
        torch.save({k: v.bfloat16() for k, v in sd.items()}, p("bfloat16.pt"))


def cmd_wrapped(a):
    """One seeded model saved inside the wrappers PyTorch users put around a model, with its outputs
    (and an 'EMA' copy with other weights, whose outputs are ema_*.npy)."""
    import tempfile
    torch.manual_seed(a.seed)
    model = stacked_NVP(2, 1, a.hidden, a.layers)
    ema = stacked_NVP(2, 1, a.hidden, a.layers)
    os.makedirs(a.out, exist_ok=True)
    x = torch.randn(300, 2)
    z_in = torch.randn(300, 2)
    save(a.out, "x", x)
    save(a.out, "z_in", z_in)
    for prefix, m in [("", model), ("ema_", ema)]:
        for name, t in outputs(m, x, z_in, False).items():
            save(a.out, prefix + name, t)
    p = lambda f: os.path.join(a.out, f)
    sd = model.state_dict()

    class Wrapper(nn.Module):
        def __init__(self, flow):
            super().__init__()
            self.flow = flow

        def forward(self, x):
            return self.flow(x)

    # nn.DataParallel (on the CPU it wraps without replicating) and DistributedDataParallel in a
    # one-process gloo group: every key starts with 'module.'
    torch.save(nn.DataParallel(model).state_dict(), p("dataparallel.pt"))
    import torch.distributed as dist
    with tempfile.TemporaryDirectory() as tmp:
        dist.init_process_group("gloo", init_method="file://" + os.path.join(tmp, "store"), rank=0, world_size=1)
        try:
            ddp = nn.parallel.DistributedDataParallel(model)
            torch.save({"epoch": 2, "model": ddp.state_dict()}, p("ddp_checkpoint.pt"))
        finally:
            dist.destroy_process_group()
    # a wrapper module: its state_dict, traced, and scripted (around the scriptable twin)
    torch.save(Wrapper(model).state_dict(), p("wrapper_state_dict.pt"))
    with torch.no_grad():
        torch.jit.save(torch.jit.trace(Wrapper(model), x[:4], check_trace=False), p("wrapper_traced.pt"))
    from make_torch_fixtures import ScriptableStackedNVP
    twin = ScriptableStackedNVP(2, 1, a.hidden, a.layers)
    twin.load_state_dict(sd)
    torch.jit.save(torch.jit.script(Wrapper(twin)), p("wrapper_scripted.pt"))
    # training dicts nested one level deeper than the usual keys, with and without a prefix
    optim = torch.optim.Adam(model.parameters(), lr=1e-3)
    torch.save({"epoch": 4, "state": {"model": sd, "optimizer": optim.state_dict()}}, p("nested.pt"))
    torch.save({"step": 9, "checkpoint": {"state_dict": nn.DataParallel(model).state_dict()}},
               p("nested_prefixed.pt"))

    class Tied(nn.Module):  # the same flow under two attributes: one model
        def __init__(self):
            super().__init__()
            self.flow = model
            self.alias = model

    torch.save(Tied().state_dict(), p("tied.pt"))

    class TwoFlows(nn.Module):  # the flow and an EMA copy with other weights: two models
        def __init__(self):
            super().__init__()
            self.flow = model
            self.ema_flow = ema

    torch.save(TwoFlows().state_dict(), p("two_models.pt"))

    class WithCopy(nn.Module):  # an EMA copy that still equals the flow (other storages): one model
        def __init__(self):
            super().__init__()
            self.flow = model
            self.ema = copy.deepcopy(model)

    torch.save(WithCopy().state_dict(), p("ema_copy.pt"))

    class Three(nn.Module):  # the flow, an equal copy and a different model: two models
        def __init__(self):
            super().__init__()
            self.a = model
            self.b = copy.deepcopy(model)
            self.c = ema

    torch.save(Three().state_dict(), p("three_models.pt"))


def cmd_outputs(a):
    """The notebook's outputs on IO/x.npy, IO/z_in.npy for the model in any file torch.load reads
    (weights_only=False: a trusted test file), under --key and --prefix."""
    obj = torch.load(a.file, weights_only=False)
    for k in a.key.split("/") if a.key else []:
        obj = obj[k]
    sd = {k[len(a.prefix):]: v for k, v in obj.items() if k.startswith(a.prefix + "bijectors.")}
    n = len({k.split(".")[1] for k in sd})
    hidden = sd["bijectors.0.sig_net.0.weight"].shape[0]
    model = stacked_NVP(2, 1, hidden, n)
    model.load_state_dict(sd, strict=True)
    x = torch.from_numpy(np.load(os.path.join(a.io, "x.npy")))
    z_in = torch.from_numpy(np.load(os.path.join(a.io, "z_in.npy")))
    for name, t in outputs(model, x, z_in, False).items():
        save(a.io, "torch_" + name, t)


def cmd_matmul(a):
    """A @ B on one thread, and the instruction set of libtorch's own kernels (for the test that
    checks which rounding regime a run is in)."""
    torch.set_num_threads(1)
    # copies in libtorch's own (64-byte aligned) memory, as rnvp's are: MKL may pick its code
    # path by alignment
    A = torch.from_numpy(np.load(a.a)).clone()
    B = torch.from_numpy(np.load(a.b)).clone()
    np.save(a.out, (A @ B).numpy())
    print(torch.backends.cpu.get_cpu_capability())


def cmd_load(a):
    """Loads a file rnvp wrote, the way a PyTorch user would, and writes the notebook's outputs. A file
    that is not the notebook's architecture (by its names) is read with flow_from_state_dict and
    also gets torch_log_pz / torch_log_det."""
    x = torch.from_numpy(np.load(os.path.join(a.io, "x.npy")))
    z_in = torch.from_numpy(np.load(os.path.join(a.io, "z_in.npy")))
    c_path = os.path.join(a.io, "c.npy")  # the context of a conditional flow, one row per row of x
    c = torch.from_numpy(np.load(c_path)) if os.path.exists(c_path) else None
    if a.file.endswith(".ot"):
        m = torch.jit.load(a.file)
        sd = {k.replace("|", "."): v for k, v in m.state_dict().items()}
    else:
        sd = torch.load(a.file)  # the default: weights_only=True
    if not is_notebook_state_dict(sd):  # another flow of the layer family
        model = flow_from_state_dict(sd)
        c = None if c is None else c.to(model.dtype)
        for name, t in family_outputs(model, x.to(model.dtype), z_in.to(model.dtype), c).items():
            save(a.io, "torch_" + name, t)
        return
    single = "sig_net.0.weight" in sd
    pre = "" if single else "bijectors.0."
    hidden, k = sd[pre + "sig_net.0.weight"].shape
    d = k + sd[pre + "sig_net.2.weight"].shape[0]
    dtype = sd[pre + "sig_net.0.weight"].dtype
    if single:
        model = R_NVP(d, k, hidden, dtype)
    else:
        model = stacked_NVP(d, k, hidden, len({key.split(".")[1] for key in sd}), dtype)
    model = model.to(dtype)
    model.load_state_dict(sd, strict=True)
    for name, t in outputs(model, x.to(dtype), z_in.to(dtype), single).items():
        save(a.io, "torch_" + name, t)


def nontrivial_state(model, scale_params=1.0, noise=0.1, warmup=3):
    """Moves a Flow away from its initial state so that bugs cannot hide: conditioner parameters times
    scale_params, noise * randn added to every parameter (the zero-initialised ones too), then `warmup`
    training-mode passes on N(0.5, 2^2) batches of 256 rows (ActNorm initialises, batch norm's running
    statistics move). Leaves the model in eval mode."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".sig_net." in name or ".mu_net." in name:
                p.mul_(scale_params)
            p.add_(noise * torch.randn_like(p))
        model.train()
        for _ in range(warmup):
            c = torch.randn(256, model.context, dtype=model.dtype) if model.context else None
            model(torch.randn(256, model.d, dtype=model.dtype) * 2 + 0.5, c)
    return model.eval()


def family_kwargs(a):
    """The layer options of --arch, overridden by the options given."""
    kw = dict(ARCHS[a.arch])
    for name in ("coupling", "scale", "actnorm", "mixing", "batch_norm", "final_scale"):
        if getattr(a, name) is not None:
            kw[name] = getattr(a, name)
    if kw["coupling"] == "additive" and a.scale is None:
        kw["scale"] = "exp"  # an affine arch's scale map does not carry over to additive couplings
    return kw


def family_outputs(model, x, z_in, c=None):
    """outputs() of a Flow (eval mode) at the context c, with log N(z; 0, I) and the log-det apart too."""
    with torch.no_grad():
        z, log_pz, log_det = model(x, c)
        x_inv = model.inverse(z_in, c)
    return {"log_prob": log_pz + log_det, "z": z, "x_inv": x_inv, "log_pz": log_pz, "log_det": log_det}


def cmd_family(a):
    """A seeded Flow of the family with a non-trivial state: its state_dict (model.pt and weights/),
    config.json, inputs and outputs in eval mode, and the training-mode outputs of a copy."""
    torch.manual_seed(a.seed)
    dtype = torch.float64 if a.dtype == "f64" else torch.float32
    model = Flow(a.d, a.k, a.hidden, a.layers, dtype=dtype, context=a.context, **family_kwargs(a))
    nontrivial_state(model, a.scale_params)
    os.makedirs(os.path.join(a.out, "weights"), exist_ok=True)
    sd = model.state_dict()
    torch.save(sd, os.path.join(a.out, "model.pt"))
    for key, t in sd.items():
        save(os.path.join(a.out, "weights"), key, t)
    with open(os.path.join(a.out, "config.json"), "w") as f:
        json.dump(model.config(), f, indent=1)
    x = torch.randn(a.n, a.d, dtype=dtype) * 1.5
    z_in = torch.randn(a.n, a.d, dtype=dtype)
    c = torch.randn(a.n, a.context, dtype=dtype) if a.context else None
    with torch.no_grad():
        z, log_pz, log_det = model(x, c)
        log_prob = model.log_prob(x, c)
        x_inv = model.inverse(z_in, c)
        z_train, _, log_det_train = copy.deepcopy(model).train()(x, c)
    outs = [("x", x), ("z", z), ("log_pz", log_pz), ("log_det", log_det), ("log_prob", log_prob),
            ("z_in", z_in), ("x_inv", x_inv), ("z_train", z_train), ("log_det_train", log_det_train)]
    for name, t in outs + ([("c", c)] if c is not None else []):
        save(a.out, name, t)


def cmd_image_parity(a):
    """A seeded float64 ImageFlow with a non-trivial state: a training-mode pass on a batch (ActNorm
    initialises, batch norm's running averages move), then 0.15 * N(0, 1) added to every parameter (the
    zero-initialised convs too; buffers stay valid), then ten more training-mode passes (batch norm's
    running averages move towards the perturbed flow's statistics; ActNorm stays as it is). Writes DIR/weights/<state_dict key>.npy, x [16, D],
    z, log_det, log_prob (eval mode), z_in and x_of_z = inverse(z_in), and train_log_prob: log p(x) in
    training mode (batch norm with x's batch statistics) on a copy, so that the saved state is the one
    that produced every output (ActNorm is initialised already and does not change)."""
    torch.manual_seed(a.seed)
    dtype = torch.float64
    model = ImageFlow(a.arch, a.channels, a.height, a.width, a.scales, a.hidden, a.steps, dtype=dtype)
    d = model.d
    batch = lambda: torch.randn(64, d, dtype=dtype) * 2 + 0.5
    with torch.no_grad():
        model.train()(batch())
        for p in model.parameters():
            p.add_(0.15 * torch.randn_like(p))
        for _ in range(10):  # batch norm's running averages towards the perturbed flow's statistics
            model(batch())
    model.eval()
    os.makedirs(os.path.join(a.out, "weights"), exist_ok=True)
    for key, t in model.state_dict().items():
        save(os.path.join(a.out, "weights"), key, t)
    x = torch.randn(16, d, dtype=dtype) * 2 + 0.5
    z_in = torch.randn(16, d, dtype=dtype)
    with torch.no_grad():
        z, log_det = model(x)
        log_prob = model.log_prob(x)
        x_of_z = model.inverse(z_in)
        train_log_prob = copy.deepcopy(model).train().log_prob(x)
    for name, t in [("x", x), ("z", z), ("log_det", log_det), ("log_prob", log_prob), ("z_in", z_in),
                    ("x_of_z", x_of_z), ("train_log_prob", train_log_prob)]:
        save(a.out, name, t.contiguous())


def max_err(got, want):
    """max |got - want|, relative to the size of want where that is above 1."""
    return ((got - want).abs().max() / max(1.0, want.abs().max().item())).item()


def log_det_error(f, rows):
    """Largest |log-det f reports - log|det| of the autograd Jacobian| over single rows; f(v) maps one
    row [d] to (z [d], log_det [])."""
    worst = 0.0
    for row in rows:
        jac = torch.autograd.functional.jacobian(lambda v: f(v)[0], row)
        sign, logabs = torch.linalg.slogdet(jac)
        with torch.no_grad():
            ld = f(row)[1]
        worst = max(worst, math.inf if sign == 0 else abs(ld - logabs).item())
    return worst


def layer_log_det_errors(model, x):
    """log_det_error of every layer on its own inputs (the previous layers' outputs), and of the flow."""
    worst, h = 0.0, x
    for b in model.bijectors:
        worst = max(worst, log_det_error(lambda v, b=b: tuple(t[0] for t in b(v[None])), h))
        with torch.no_grad():
            h = b(h)[0]
    flow = log_det_error(lambda v: (lambda z, lpz, ld: (z[0], ld[0]))(*model(v[None])), x)
    return worst, flow


def reload_error(model, x, z_in):
    """flow_from_state_dict on the saved state_dict: largest difference of its outputs, and whether its
    config is the model's (mixing 'reverse' reads back as 'random')."""
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    again = flow_from_state_dict(torch.load(buf))
    want = dict(model.config(), mixing="random" if model.mixing == "reverse" else model.mixing)
    with torch.no_grad():
        a, b = model(x) + (model.inverse(z_in),), again(x) + (again.inverse(z_in),)
    return max((p - q).abs().max().item() for p, q in zip(a, b)), again.config() == want


def training_mode_ok(make):
    """Training-mode state on a fresh model from make(): ActNorm initialises on its first batch (loc =
    batch mean at the first layer) and never again, also after a reload; batch norm's running
    statistics move in training and not in eval mode. '-' when the model has neither layer."""
    model = make()
    acts = [b for b in model.bijectors if isinstance(b, ActNorm)]
    bns = [b for b in model.bijectors if isinstance(b, BatchNormFlow)]
    if not acts and not bns:
        return "-"
    d, dtype = model.d, model.dtype
    batch = lambda: torch.randn(256, d, dtype=dtype) * 2 + 0.5
    ok = True
    with torch.no_grad():
        xb = batch()
        model.train()(xb)
        if acts and isinstance(model.bijectors[0], ActNorm):
            ok &= bool(torch.allclose(acts[0].loc, xb.mean(0)))
            ok &= bool(torch.allclose(acts[0].log_scale, -torch.log(xb.std(0, correction=0) + 1e-6)))
        ok &= all(b.initialized.item() == 1 for b in acts)
        locs = [b.loc.clone() for b in acts]
        model(batch())
        ok &= all(torch.equal(b.loc, l) for b, l in zip(acts, locs))
        again = flow_from_state_dict(model.state_dict()).train()
        again(batch())
        ok &= all(torch.equal(b.loc, l) for b, l in zip(again.bijectors, locs) if isinstance(b, ActNorm))
        means = [b.running_mean.clone() for b in bns]
        model(batch())
        ok &= all(not torch.equal(b.running_mean, m) for b, m in zip(bns, means))
        means = [b.running_mean.clone() for b in bns]
        model.eval()(batch())
        ok &= all(torch.equal(b.running_mean, m) for b, m in zip(bns, means))
    return "ok" if ok else "FAIL"


def batch_norm_update_ok():
    """BatchNormFlow's running averages follow momentum 0.1 with the unbiased batch variance."""
    bn = BatchNormFlow(3).double().train()
    x = torch.randn(50, 3, dtype=torch.float64) * 3 + 1
    with torch.no_grad():
        bn(x)
    return (torch.allclose(bn.running_mean, 0.1 * x.mean(0))
            and torch.allclose(bn.running_var, 0.9 + 0.1 * x.var(0, correction=1)))


def check_cases():
    """(name, d, k, Flow keyword arguments) for family-check."""
    cases = [(f"{arch} d={d}", d, k, kw) for d, k in [(2, 1), (5, 2)] for arch, kw in ARCHS.items()]
    cases += [(f"affine {scale} d=5", 5, 2, dict(scale=scale)) for scale in SCALES]
    cases += [(f"{mixing} actnorm bn final d=5", 5, 2, dict(scale="softclamp", mixing=mixing, actnorm=True,
                                                            batch_norm=True, final_scale=True))
              for mixing in MIXINGS]
    cases += [(f"{mixing} d=2", 2, 1, dict(scale="tanh", mixing=mixing)) for mixing in ("reverse", "random", "lu")]
    cases += [("additive lu actnorm d=5", 5, 2, dict(coupling="additive", mixing="lu", actnorm=True)),
              ("additive reverse bn d=5", 5, 3, dict(coupling="additive", mixing="reverse", batch_norm=True))]
    return cases


def check_case(d, k, kw, dtype, seed):
    """One row of family-check's table: errors of the inverse, the layers' and the flow's log-det
    (float64 only), the reload, and the training-mode check."""
    def make():
        return nontrivial_state(Flow(d, k, 8, 3, dtype=dtype, **kw), 1.0)

    torch.manual_seed(seed)
    model = make()
    x = torch.randn(16, d, dtype=dtype) * 1.5
    z_in = torch.randn(16, d, dtype=dtype)
    with torch.no_grad():
        inv = max(max_err(model.inverse(model(x)[0]), x), max_err(model(model.inverse(z_in))[0], z_in))
    if dtype == torch.float64:
        layer_ld, flow_ld = layer_log_det_errors(model, x[:4])
    else:
        layer_ld = flow_ld = None
    reload, same_config = reload_error(model, x, z_in)
    torch.manual_seed(seed + 1)
    train = training_mode_ok(lambda: nontrivial_state(Flow(d, k, 8, 3, dtype=dtype, **kw), 1.0, warmup=0))
    tol_inv, tol_ld = (1e-10, 1e-9) if dtype == torch.float64 else (1e-4, None)
    ok = (inv <= tol_inv and reload == 0 and same_config and train != "FAIL"
          and (layer_ld is None or (layer_ld <= tol_ld and flow_ld <= tol_ld)))
    return inv, layer_ld, flow_ld, reload if same_config else math.inf, train, ok


def notebook_equivalence(d, k, dtype, seed=0):
    """Flow(notebook) and stacked_NVP from the same seed: the same keys in the same order, equal
    weights, equal z / log-det / inverse, log N(z) within rounding. Largest difference, or inf."""
    torch.manual_seed(seed)
    ref = stacked_NVP(d, k, 8, 3, dtype).to(dtype)
    torch.manual_seed(seed)
    flow = Flow(d, k, 8, 3, dtype=dtype, **ARCHS["notebook"])
    a, b = ref.state_dict(), flow.state_dict()
    if list(a) != list(b) or any(not torch.equal(a[n], b[n]) for n in a):
        return math.inf
    x = torch.randn(32, d, dtype=dtype) * 1.5
    with torch.no_grad():
        (z1, lp1, ld1), (z2, lp2, ld2) = ref(x), flow(x)
        if not (torch.equal(z1, z2) and torch.equal(ld1, ld2) and torch.equal(ref.inverse(x), flow.inverse(x))):
            return math.inf
        return (lp1 - lp2).abs().max().item()


def grid_integral(model, lim=12.0, n=1201):
    """The integral of exp(log p) over [-lim, lim]^2 (midpoint rule on an n x n grid)."""
    h = 2 * lim / n
    t = -lim + h * (torch.arange(n, dtype=torch.float64) + 0.5)
    xx, yy = torch.meshgrid(t, t, indexing="ij")
    with torch.no_grad():
        p = model.log_prob(torch.stack([xx.reshape(-1), yy.reshape(-1)], 1).to(model.dtype)).exp()
    return (p.sum() * h * h).item()


def fmt(v):
    return "-" if v is None else "inf" if v == math.inf else f"{v:.1e}" if isinstance(v, float) else str(v)


def cmd_family_check(a):
    """Checks the family in PyTorch; prints a table; exit status 1 on any failure."""
    failures = 0
    print(f"{'case':<30} {'dtype':<5} {'inverse':>8} {'layer ld':>9} {'flow ld':>8} {'reload':>8} {'train':>5}  ok")
    for i, (name, d, k, kw) in enumerate(check_cases()):
        for dtype in (torch.float64, torch.float32) if name.endswith("d=2") and name.split()[0] in ARCHS \
                else (torch.float64,):
            inv, lld, fld, rel, train, ok = check_case(d, k, kw, dtype, a.seed + 10 * i)
            failures += not ok
            print(f"{name:<30} {'f64' if dtype == torch.float64 else 'f32':<5} {fmt(inv):>8} {fmt(lld):>9} "
                  f"{fmt(fld):>8} {fmt(rel):>8} {train:>5}  {'ok' if ok else 'FAIL'}")
    print()
    for d, k, dtype in [(2, 1, torch.float32), (2, 1, torch.float64), (4, 2, torch.float64)]:  # R_NVP needs d = 2k
        diff = notebook_equivalence(d, k, dtype, a.seed)
        ok = diff <= (1e-5 if dtype == torch.float32 else 1e-12)
        failures += not ok
        print(f"notebook Flow == stacked_NVP d={d} {'f32' if dtype == torch.float32 else 'f64'}: "
              f"keys, weights, z, log-det, inverse equal; log_pz within {fmt(diff)}  {'ok' if ok else 'FAIL'}")
    ok = batch_norm_update_ok()
    failures += not ok
    print(f"BatchNormFlow running averages (momentum 0.1, unbiased variance)  {'ok' if ok else 'FAIL'}")
    print()
    print(f"{'grid integral of exp(log p), d=2':<34} {'fresh':>9} {'warmed':>9}  ok")
    for arch, kw in ARCHS.items():
        vals = []
        for warmup in (0, 3):
            torch.manual_seed(a.seed)
            vals.append(grid_integral(nontrivial_state(Flow(2, 1, 8, 3, dtype=torch.float64, **kw), 0.5, 0.05,
                                                       warmup)))
        ok = all(abs(v - 1) <= 0.01 for v in vals)
        failures += not ok
        print(f"{arch:<34} {vals[0]:>9.6f} {vals[1]:>9.6f}  {'ok' if ok else 'FAIL'}")
    print()
    print("all checks passed" if not failures else f"{failures} check(s) FAILED")
    if failures:
        sys.exit(1)


def cmd_jit(a):
    """Runs exported TorchScript functions (encode.pt, log_prob.pt, decode.pt) on DIR's x.npy / z_in.npy."""
    x = torch.from_numpy(np.load(os.path.join(a.io, "x.npy")))
    z_in = torch.from_numpy(np.load(os.path.join(a.io, "z_in.npy")))
    c_path = os.path.join(a.io, "c.npy")  # a conditional flow's functions take the context second
    extra = [torch.from_numpy(np.load(c_path))] if os.path.exists(c_path) else []
    for name, inp in [("encode", x), ("log_prob", x), ("decode", z_in)]:
        f = torch.jit.load(os.path.join(a.dir, name + ".pt"))
        with torch.no_grad():
            save(a.io, "jit_" + name, f(inp, *extra))
            f(inp[:1], *[e[:1] for e in extra]), f(inp[:37], *[e[:37] for e in extra])  # other batch sizes


def cmd_train(a):
    """The notebook's experiment: fresh make_moons(512) batches standardized with StandardScaler,
    Adam(1e-3), ExponentialLR(0.999). With --eval-every, prints 'step seconds nll' lines (training
    seconds, evaluation excluded) for a fixed standardized test set of --eval-n points. --arch other
    than notebook trains `Flow(2, 1, hidden, layers, **ARCHS[arch])` instead of stacked_NVP."""
    from sklearn.datasets import make_moons
    from sklearn.preprocessing import StandardScaler
    import time
    torch.manual_seed(a.seed)
    np.random.seed(a.seed)
    if a.arch == "notebook":
        model = to_device(stacked_NVP(2, 1, a.hidden, a.layers))
    else:
        model = to_device(Flow(2, 1, a.hidden, a.layers, **ARCHS[a.arch]))
    model.train()
    optim = torch.optim.Adam(model.parameters(), lr=a.lr)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optim, a.gamma)
    if a.eval_every:
        test = torch.from_numpy(StandardScaler().fit_transform(
            make_moons(a.eval_n, noise=0.05, random_state=12345)[0])).float().to(DEVICE)
    spent, t0 = 0.0, time.perf_counter()
    for step in range(1, a.steps + 1):
        X = torch.from_numpy(StandardScaler().fit_transform(make_moons(a.batch, noise=0.05)[0])).float()
        X = X.to(DEVICE)
        optim.zero_grad()
        z, log_pz, log_jacob = model(X)
        loss = (-log_pz - log_jacob).mean()
        loss.backward()
        optim.step()
        scheduler.step()
        if a.eval_every and (step % a.eval_every == 0 or step == a.steps):
            if DEVICE.type == "cuda":
                torch.cuda.synchronize()
            spent += time.perf_counter() - t0
            model.eval()
            with torch.no_grad():
                z, log_pz, log_jacob = model(test)
                nll = -(log_pz + log_jacob).mean().item()
            model.train()
            print(step, round(spent, 4), nll, flush=True)
            t0 = time.perf_counter()


def cmd_sample(a):
    model = to_device(load_weights_dir(a.weights))
    with torch.no_grad():
        x = model.inverse(model.bijectors[0].base_dist.sample((a.n,)) if hasattr(model, "bijectors")
                          else model.base_dist.sample((a.n,)))
    np.save(a.out, x.cpu().numpy())


def cmd_log_prob(a):
    model = to_device(load_weights_dir(a.weights))
    x = torch.from_numpy(np.load(a.input)).float().to(DEVICE)
    with torch.no_grad():
        z, log_pz, log_jacob = model(x)
    np.save(a.out, (log_pz + log_jacob).cpu().numpy())


def cmd_broken(a):
    """State dicts that do not fit the architecture their names imply, and non-model pickles."""
    torch.manual_seed(0)
    sd = stacked_NVP(2, 1, 8, 2).state_dict()
    os.makedirs(a.out, exist_ok=True)
    p = lambda f: os.path.join(a.out, f)
    wrong = dict(sd)
    wrong["bijectors.1.mu_net.0.weight"] = torch.zeros(7, 1)
    torch.save(wrong, p("wrong_shape.pt"))
    missing = dict(sd)
    del missing["bijectors.1.sig_net.2.bias"]
    torch.save(missing, p("missing_key.pt"))
    extra = dict(sd)
    extra["bijectors.0.scale"] = torch.ones(3)
    torch.save(extra, p("extra_key.pt"))
    torch.save({k: v for k, v in sd.items() if not k.startswith("bijectors.0.")}, p("no_layer0.pt"))
    torch.save({"names": ["a", "b"], "epoch": 3}, p("no_model.pt"))
    torch.save([1, 2, 3], p("a_list.pt"))


def cmd_step_time(a):
    """Seconds per training step (forward, loss, backward, Adam) of Flow(d, k, hidden, layers,
    context) with the architecture's layers, on one fixed standard-normal batch (and context): the
    mean over --steps steps after --warmup, printed alone on one line."""
    import time
    torch.manual_seed(0)
    model = to_device(Flow(a.d, a.k, a.hidden, a.layers, context=a.context, **ARCHS[a.arch]))
    model.train()
    x = torch.randn(a.batch, a.d).to(DEVICE)
    c = torch.randn(a.batch, a.context).to(DEVICE) if a.context else None
    optim = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step():
        optim.zero_grad()
        z, log_pz, log_jacob = model(x, c)
        loss = (-log_pz - log_jacob).mean()
        loss.backward()
        optim.step()

    for _ in range(a.warmup):
        step()
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(a.steps):
        step()
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()
    print((time.perf_counter() - t0) / a.steps)


def cmd_image_step_time(a):
    """Seconds per training step (forward, loss -mean(log p), backward, Adam at lr 1e-3) of
    ImageFlow(arch, channels, height, width, scales, hidden, steps) in float32 on one fixed batch of
    standard-normal rows [batch, c·h·w], in training mode (batch norm on the batch's statistics;
    ActNorm initialised on the first batch), with --threads CPU threads (the flow on RNVP_DEVICE).
    Seeded with torch.manual_seed(0); the weights are drawn as rnvp draws them (PyTorch's default
    conv initialisation, the last conv of each conditioner and the split prior at zero). Prints one
    line per repetition: the mean over --iters steps after --warmup steps (the first repetition only)."""
    import time
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = ImageFlow(a.arch, a.channels, a.height, a.width, a.scales, a.hidden, a.steps).to(DEVICE)
    model.train()
    x = torch.randn(a.batch, model.d).to(DEVICE)
    optim = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step():
        optim.zero_grad()
        loss = -model.log_prob(x).mean()
        loss.backward()
        optim.step()

    def sync():
        if DEVICE.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(a.warmup):
        step()
    for _ in range(a.reps):
        sync()
        t0 = time.perf_counter()
        for _ in range(a.iters):
            step()
        sync()
        print((time.perf_counter() - t0) / a.iters, flush=True)


def cmd_moons(a):
    from sklearn.datasets import make_moons
    X, _ = make_moons(a.n, noise=a.noise, shuffle=not a.no_shuffle, random_state=0)
    np.save(a.out, X)


def cmd_batch(a):
    """Runs many commands in one process, so that torch is imported once: --jobs names a file with one
    JSON list of arguments per line (each as this script takes them), run in order. Every command seeds
    what it draws, so a job gives what it gives alone."""
    with open(a.jobs) as f:
        jobs = [json.loads(line) for line in f if line.strip()]
    for args in jobs:
        if not isinstance(args, list) or not args or args[0] == "batch":
            raise SystemExit(f"batch: a job is a non-empty list of arguments, not another batch: {args!r}")
        try:
            main([str(v) for v in args])
        except BaseException:
            print(f"batch: the job {args!r} failed", file=sys.stderr)
            raise


def main(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    q = sub.add_parser("parity", help="write weights, inputs and outputs of a seeded model as .npy")
    q.add_argument("--out", required=True)
    q.add_argument("--d", type=int, default=2)
    q.add_argument("--k", type=int, default=1)
    q.add_argument("--hidden", type=int, default=8)
    q.add_argument("--layers", type=int, default=3)
    q.add_argument("--single", action="store_true", help="one R_NVP instead of stacked_NVP")
    q.add_argument("--flip", action="store_true", help="with --single: call it with flip=True")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--n", type=int, default=64)
    q.add_argument("--scale", type=float, default=1.5, help="multiply every parameter by this")
    q.add_argument("--dtype", choices=["f32", "f64"], default="f32")
    q = sub.add_parser("adam", help="train given weights on given batches with the notebook's optimizer")
    q.add_argument("--weights", required=True, help="directory of <state_dict key>.npy")
    q.add_argument("--batches", required=True, help=".npy of shape [steps, batch, d]")
    q.add_argument("--lr", type=float, default=1e-3)
    q.add_argument("--gamma", type=float, default=0.999)
    q.add_argument("--out", required=True)
    q = sub.add_parser("moons", help="scikit-learn's make_moons as .npy")
    q.add_argument("--n", type=int, required=True)
    q.add_argument("--noise", type=float, default=0.0)
    q.add_argument("--no-shuffle", action="store_true")
    q.add_argument("--out", required=True)
    q = sub.add_parser("train", help="the notebook's training loop (for benchmarks)")
    q.add_argument("--layers", type=int, default=3)
    q.add_argument("--hidden", type=int, default=512)
    q.add_argument("--steps", type=int, default=1000)
    q.add_argument("--batch", type=int, default=512)
    q.add_argument("--lr", type=float, default=1e-3)
    q.add_argument("--gamma", type=float, default=0.999)
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--eval-every", type=int, default=0)
    q.add_argument("--eval-n", type=int, default=20000)
    q.add_argument("--arch", choices=sorted(ARCHS), default="notebook")
    q = sub.add_parser("step-time", help="seconds per training step of a Flow on a fixed batch (benchmarks)")
    for name, default in [("d", 2), ("k", 1), ("context", 0), ("hidden", 512), ("layers", 3), ("batch", 512),
                          ("steps", 20), ("warmup", 3)]:
        q.add_argument(f"--{name}", type=int, default=default)
    q.add_argument("--arch", choices=sorted(ARCHS), default="notebook")
    q = sub.add_parser("image-step-time", help="seconds per training step of an ImageFlow on a fixed batch (benchmarks)")
    q.add_argument("--arch", choices=sorted(IMAGE_ARCHS), required=True)
    for name, default in [("channels", 1), ("height", 8), ("width", 8), ("scales", 2), ("hidden", 64), ("steps", 4),
                          ("batch", 128), ("threads", 0), ("reps", 5), ("iters", 20), ("warmup", 3)]:
        q.add_argument(f"--{name}", type=int, default=default)
    q = sub.add_parser("sample", help="x = F^-1(z) for N base samples, as .npy")
    q.add_argument("--weights", required=True)
    q.add_argument("--n", type=int, required=True)
    q.add_argument("--out", required=True)
    q = sub.add_parser("log-prob", help="log p(x) of each row of a .npy file")
    q.add_argument("--weights", required=True)
    q.add_argument("--input", required=True)
    q.add_argument("--out", required=True)
    q = sub.add_parser("variants", help="save a seeded model in every format people use, with outputs")
    q.add_argument("--out", required=True)
    q.add_argument("--layers", type=int, default=3)
    q.add_argument("--hidden", type=int, default=16)
    q.add_argument("--single", action="store_true")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--dtype", choices=["f32", "f64"], default="f32")
    q.add_argument("--half", action="store_true", help="also float16 and bfloat16 state_dicts")
    q = sub.add_parser("wrapped", help="a seeded model inside DataParallel/DDP, wrapper modules (saved, traced, "
                                        "scripted), nested training dicts, tied and two-model modules")
    q.add_argument("--out", required=True)
    q.add_argument("--layers", type=int, default=3)
    q.add_argument("--hidden", type=int, default=16)
    q.add_argument("--seed", type=int, default=0)
    q = sub.add_parser("outputs", help="outputs on IO/x.npy, IO/z_in.npy of a stacked_NVP in any torch.load-able file")
    q.add_argument("--file", required=True)
    q.add_argument("--key", default="", help="path of dict keys to the state_dict, a/b")
    q.add_argument("--prefix", default="")
    q.add_argument("--io", required=True)
    q = sub.add_parser("matmul", help="A @ B on one thread; prints libtorch's CPU capability")
    q.add_argument("--a", required=True)
    q.add_argument("--b", required=True)
    q.add_argument("--out", required=True)
    q = sub.add_parser("broken", help="state_dicts that do not fit their architecture, non-model pickles")
    q.add_argument("--out", required=True)
    q = sub.add_parser("load", help="torch.load a file rnvp wrote; outputs on IO/x.npy, IO/z_in.npy")
    q.add_argument("--file", required=True)
    q.add_argument("--io", required=True)
    q = sub.add_parser("family", help="a seeded Flow of the layer family: state_dict, config, inputs, outputs")
    q.add_argument("--out", required=True)
    q.add_argument("--arch", choices=sorted(ARCHS), default="notebook")
    q.add_argument("--coupling", choices=COUPLINGS, help="override the arch's")
    q.add_argument("--scale", choices=SCALES, help="the affine scale map (override the arch's)")
    q.add_argument("--actnorm", action=argparse.BooleanOptionalAction, help="override the arch's")
    q.add_argument("--mixing", choices=MIXINGS, help="override the arch's")
    q.add_argument("--batch-norm", action=argparse.BooleanOptionalAction, help="override the arch's")
    q.add_argument("--final-scale", action=argparse.BooleanOptionalAction, help="override the arch's")
    q.add_argument("--d", type=int, default=2)
    q.add_argument("--k", type=int, default=1)
    q.add_argument("--hidden", type=int, default=8)
    q.add_argument("--layers", type=int, default=3)
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--n", type=int, default=64)
    q.add_argument("--dtype", choices=["f32", "f64"], default="f32")
    q.add_argument("--scale-params", type=float, default=1.0, help="multiply the conditioner parameters by this")
    q.add_argument("--context", type=int, default=0, help="context columns of a conditional flow (writes c.npy)")
    q = sub.add_parser("family-check", help="check the layer family in PyTorch (inverse, log-det, reload, density)")
    q.add_argument("--seed", type=int, default=0)
    q = sub.add_parser("image-parity", help="a seeded float64 multi-scale image flow: weights, inputs, outputs")
    q.add_argument("--arch", choices=sorted(IMAGE_ARCHS), required=True)
    for name, default in [("channels", 1), ("height", 4), ("width", 4), ("scales", 2), ("hidden", 6), ("steps", 2),
                          ("seed", 0)]:
        q.add_argument(f"--{name}", type=int, default=default)
    q.add_argument("--out", required=True)
    q = sub.add_parser("jit", help="run exported TorchScript functions on IO/x.npy, IO/z_in.npy")
    q.add_argument("--dir", required=True)
    q.add_argument("--io", required=True)
    q = sub.add_parser("batch", help="run many commands in one process (one JSON argument list per line of --jobs)")
    q.add_argument("--jobs", required=True)
    a = p.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("RNVP_THREADS", "2")))
    {"train": cmd_train, "sample": cmd_sample, "log-prob": cmd_log_prob, "parity": cmd_parity, "adam": cmd_adam, "moons": cmd_moons, "variants": cmd_variants, "broken": cmd_broken, "load": cmd_load,
     "jit": cmd_jit, "wrapped": cmd_wrapped, "outputs": cmd_outputs,
     "matmul": cmd_matmul, "family": cmd_family, "family-check": cmd_family_check,
     "step-time": cmd_step_time, "image-step-time": cmd_image_step_time,
     "image-parity": cmd_image_parity, "batch": cmd_batch}[a.cmd](a)


if __name__ == "__main__":
    main(sys.argv[1:])
