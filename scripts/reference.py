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
  reference.py load --file F --io DIR      torch.load (or torch.jit.load for .ot) a file rnvp wrote
  reference.py jit --dir D --io DIR        run rnvp's exported TorchScript functions
"""
import argparse
import copy
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
    """Loads a file rnvp wrote, the way a PyTorch user would, and writes the notebook's outputs."""
    x = torch.from_numpy(np.load(os.path.join(a.io, "x.npy")))
    z_in = torch.from_numpy(np.load(os.path.join(a.io, "z_in.npy")))
    if a.file.endswith(".ot"):
        m = torch.jit.load(a.file)
        sd = {k.replace("|", "."): v for k, v in m.state_dict().items()}
    else:
        sd = torch.load(a.file)  # the default: weights_only=True
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


def cmd_jit(a):
    """Runs exported TorchScript functions (encode.pt, log_prob.pt, decode.pt) on DIR's x.npy / z_in.npy."""
    x = torch.from_numpy(np.load(os.path.join(a.io, "x.npy")))
    z_in = torch.from_numpy(np.load(os.path.join(a.io, "z_in.npy")))
    for name, inp in [("encode", x), ("log_prob", x), ("decode", z_in)]:
        f = torch.jit.load(os.path.join(a.dir, name + ".pt"))
        with torch.no_grad():
            save(a.io, "jit_" + name, f(inp))
            f(inp[:1]), f(inp[:37])  # other batch sizes run too


def cmd_train(a):
    """The notebook's experiment: fresh make_moons(512) batches standardized with StandardScaler,
    Adam(1e-3), ExponentialLR(0.999). With --eval-every, prints 'step seconds nll' lines (training
    seconds, evaluation excluded) for a fixed standardized test set of --eval-n points."""
    from sklearn.datasets import make_moons
    from sklearn.preprocessing import StandardScaler
    import time
    torch.manual_seed(a.seed)
    np.random.seed(a.seed)
    model = to_device(stacked_NVP(2, 1, a.hidden, a.layers))
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
            with torch.no_grad():
                z, log_pz, log_jacob = model(test)
                nll = -(log_pz + log_jacob).mean().item()
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


def cmd_moons(a):
    from sklearn.datasets import make_moons
    X, _ = make_moons(a.n, noise=a.noise, shuffle=not a.no_shuffle, random_state=0)
    np.save(a.out, X)


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
    q = sub.add_parser("jit", help="run exported TorchScript functions on IO/x.npy, IO/z_in.npy")
    q.add_argument("--dir", required=True)
    q.add_argument("--io", required=True)
    a = p.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("RNVP_THREADS", "2")))
    {"train": cmd_train, "sample": cmd_sample, "log-prob": cmd_log_prob, "parity": cmd_parity, "adam": cmd_adam, "moons": cmd_moons, "variants": cmd_variants, "broken": cmd_broken, "load": cmd_load,
     "jit": cmd_jit, "wrapped": cmd_wrapped, "outputs": cmd_outputs,
     "matmul": cmd_matmul}[a.cmd](a)


if __name__ == "__main__":
    main(sys.argv[1:])
