#!/usr/bin/env python3
"""Fixtures for rnvp's PyTorch file reader/writer (src/checkpoint/torch/), and a checker for written files.

Usage:
  make_torch_fixtures.py [--out DIR]
      writes small seeded PyTorch files (default: tests/fixtures/torch/ next to this script's repository)
      in every way people save the notebook's models, each with <fixture>.json holding what a reader
      must find: {"expect_description": [substrings],
                  "tensors": [{"name", "dtype", "shape", "values", "data_hex"}]}
      ("values": the elements in row-major order, as float64, exact for every dtype used here, though
      JSON parsers that do not round correctly may be off by an ulp; "data_hex": the same elements as
      little-endian bytes of the tensor's dtype, the exact reference).
  make_torch_fixtures.py --check-written FILE [--expect REF]
      loads FILE the way a PyTorch user would (plain torch.load, i.e. weights_only=True), checks that it
      is a dict of tensors, builds the notebook's model from the names and shapes when they are an
      R_NVP / stacked_NVP state_dict, load_state_dict(strict=True), and runs it. With --expect REF
      (a fixture .json as above, or any file torch.load(weights_only=False) reads: state_dict,
      checkpoint, whole module) the tensors must be equal (names, order, dtype, shape, values) and the
      model's forward and inverse outputs identical. Prints one line; exit status 0 when all is well.

Run with the project's python (torch 2.13): .rnvp/python scripts/make_torch_fixtures.py
The tch .ot fixture (tch_save_multi.ot) is not made here: it comes from tch's Tensor::save_multi, see
tests/fixtures/torch/tch_save_multi.README. The Lightning fixture (lightning_stacked.ckpt) is made by
`--lightning`, which needs the lightning package (see make_lightning).
"""
import argparse
import collections
import json
import math
import os
import sys
from typing import List

import numpy as np
import torch
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from reference import R_NVP, stacked_NVP, make_moons, standardize  # noqa: E402

DTYPE_NAMES = {torch.float32: "float32", torch.float64: "float64", torch.float16: "float16",
               torch.bfloat16: "bfloat16"}


# ---------------------------------------------------------------------------------------------------
# Scriptable twins of the notebook's classes: torch.jit.script cannot compile R_NVP as written because
# its `base_dist` attribute (a MultivariateNormal) has no TorchScript type. These have the same module
# structure, hence the same state_dict keys, and compute log N(z; 0, I) directly.
class ScriptableR_NVP(nn.Module):
    def __init__(self, d: int, k: int, hidden: int):
        super().__init__()
        self.d, self.k = d, k
        self.sig_net = nn.Sequential(nn.Linear(k, hidden), nn.LeakyReLU(), nn.Linear(hidden, d - k))
        self.mu_net = nn.Sequential(nn.Linear(k, hidden), nn.LeakyReLU(), nn.Linear(hidden, d - k))

    def forward(self, x, flip: bool = False):
        x1, x2 = x[:, :self.k], x[:, self.k:]
        if flip:
            x2, x1 = x1, x2
        sig = self.sig_net(x1)
        z1, z2 = x1, x2 * torch.exp(sig) + self.mu_net(x1)
        if flip:
            z2, z1 = z1, z2
        z_hat = torch.cat([z1, z2], dim=-1)
        log_pz = -0.5 * (z_hat * z_hat).sum(-1) - 0.5 * self.d * math.log(2 * math.pi)
        return z_hat, log_pz, sig.sum(-1)


class ScriptableStackedNVP(nn.Module):
    flips: List[bool]

    def __init__(self, d: int, k: int, hidden: int, n: int):
        super().__init__()
        self.bijectors = nn.ModuleList([ScriptableR_NVP(d, k, hidden) for _ in range(n)])
        self.flips = [i % 2 == 1 for i in range(n)]

    def forward(self, x):
        log_jacob = torch.zeros(x.shape[0], dtype=x.dtype)
        log_pz = torch.zeros(x.shape[0], dtype=x.dtype)
        for i, bijector in enumerate(self.bijectors):
            x, log_pz, lj = bijector(x, self.flips[i])
            log_jacob = log_jacob + lj
        return x, log_pz, log_jacob


# ---------------------------------------------------------------------------------------------------
def tensor_entry(name, t):
    t = t.detach()
    if t.dtype not in DTYPE_NAMES:
        raise ValueError(f"{name}: dtype {t.dtype} not used in fixtures")
    values = t.contiguous().reshape(-1).to(torch.float64).tolist()
    raw = t.contiguous().reshape(-1)
    if raw.dtype in (torch.float16, torch.bfloat16):
        raw = raw.view(torch.int16)
    return {"name": name, "dtype": DTYPE_NAMES[t.dtype], "shape": list(t.shape), "values": values,
            "data_hex": raw.numpy().astype(raw.numpy().dtype.newbyteorder("<")).tobytes().hex()}


def write_fixture(out, fname, save, tensors, expect):
    """save(path) writes the file; tensors: [(name, tensor)] the reader must return, in order."""
    path = os.path.join(out, fname)
    save(path)
    doc = {"expect_description": expect, "tensors": [tensor_entry(n, t) for n, t in tensors]}
    with open(path + ".json", "w") as f:
        json.dump(doc, f, indent=None, separators=(",", ":"))
        f.write("\n")
    print(f"{fname:34s} {os.path.getsize(path):7d} bytes, {len(tensors)} tensors")


def seeded(cls, *args, seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    m = cls(*args, dtype=dtype) if cls in (R_NVP, stacked_NVP) else cls(*args)
    return m.to(dtype)


def make_all(out):
    os.makedirs(out, exist_ok=True)
    legacy = dict(_use_new_zipfile_serialization=False)
    stacked = seeded(stacked_NVP, 2, 1, 8, 3, seed=1)
    single = seeded(R_NVP, 2, 1, 8, seed=2)
    ssd, rsd = stacked.state_dict(), single.state_dict()
    sitems, ritems = list(ssd.items()), list(rsd.items())

    # 1. torch.save(model.state_dict()), zip (the default) and legacy
    write_fixture(out, "sd_stacked.pt", lambda p: torch.save(ssd, p), sitems, ["state_dict", "zip"])
    write_fixture(out, "sd_single.pt", lambda p: torch.save(rsd, p), ritems, ["state_dict", "zip"])
    write_fixture(out, "sd_stacked_legacy.pt", lambda p: torch.save(ssd, p, **legacy), sitems,
                  ["state_dict", "legacy"])
    # state_dict(keep_vars=True): Parameters instead of tensors; pickle protocol 4 (FRAME, MEMOIZE, ...)
    write_fixture(out, "sd_single_params.pt", lambda p: torch.save(single.state_dict(keep_vars=True), p),
                  ritems, ["state_dict", "zip"])
    write_fixture(out, "sd_single_proto4.pt", lambda p: torch.save(rsd, p, pickle_protocol=4), ritems,
                  ["state_dict", "zip"])

    # 2. a training checkpoint: model_state_dict beside Adam's state after 2 steps, counters, strings
    model = seeded(stacked_NVP, 2, 1, 8, 3, seed=3)
    optim = torch.optim.Adam(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.ExponentialLR(optim, 0.999)
    rng = np.random.default_rng(0)
    loss = None
    for _ in range(2):
        X = torch.from_numpy(standardize(make_moons(64, 0.05, rng))).float()
        optim.zero_grad()
        z, log_pz, log_jacob = model(X)
        loss = (-log_pz - log_jacob).mean()
        loss.backward()
        optim.step()
        sched.step()
    msd = model.state_dict()
    ckpt = {"epoch": 2, "model_state_dict": msd, "optimizer_state_dict": optim.state_dict(),
            "scheduler_state_dict": sched.state_dict(), "loss": loss.item(), "note": "two moons",
            "big": 2 ** 70, "losses": [1.5, 1.25]}
    write_fixture(out, "ckpt_stacked.pt", lambda p: torch.save(ckpt, p), list(msd.items()),
                  ["training checkpoint", "model_state_dict", "zip"])

    # 3. torch.save(model): the whole pickled module, zip and legacy
    write_fixture(out, "module_stacked.pt", lambda p: torch.save(stacked, p), sitems, ["nn.Module", "zip"])
    write_fixture(out, "module_stacked_legacy.pt", lambda p: torch.save(stacked, p, **legacy), sitems,
                  ["nn.Module", "legacy"])

    # 4. TorchScript: torch.jit.trace of the notebook's model, torch.jit.script of its scriptable twin
    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        traced = torch.jit.trace(stacked, x, check_trace=False)
    write_fixture(out, "jit_trace_stacked.pt", lambda p: torch.jit.save(traced, p), sitems,
                  ["TorchScript"])
    twin = seeded(ScriptableStackedNVP, 2, 1, 8, 3, seed=1)
    twin.load_state_dict(ssd)
    scripted = torch.jit.script(twin)
    write_fixture(out, "jit_script_stacked.pt", lambda p: torch.jit.save(scripted, p), sitems,
                  ["TorchScript"])

    # 5. dtypes
    m64 = seeded(stacked_NVP, 2, 1, 8, 3, seed=4, dtype=torch.float64)
    write_fixture(out, "sd_stacked_f64.pt", lambda p: torch.save(m64.state_dict(), p),
                  list(m64.state_dict().items()), ["state_dict", "zip"])
    half = collections.OrderedDict((k, v.half()) for k, v in ssd.items())
    write_fixture(out, "sd_stacked_f16.pt", lambda p: torch.save(half, p), list(half.items()),
                  ["state_dict", "zip"])
    bf = collections.OrderedDict((k, v.bfloat16()) for k, v in ssd.items())
    write_fixture(out, "sd_stacked_bf16.pt", lambda p: torch.save(bf, p), list(bf.items()),
                  ["state_dict", "zip"])

    # 6. views and shared storages: an R_NVP state_dict whose weights are views of bigger tensors
    g = torch.Generator().manual_seed(6)
    big = torch.randn(8, 3, generator=g)          # sig_net.0.weight, mu_net.0.weight: columns (shared)
    wide = torch.randn(2, 8, generator=g)         # sig_net.2.weight: an offset row view
    tall = torch.randn(8, 4, generator=g)         # mu_net.2.weight: transposed strided column
    vec = torch.randn(20, generator=g)            # biases: strided and offset slices of one storage
    vsd = collections.OrderedDict([
        ("sig_net.0.weight", big[:, 1:2]), ("sig_net.0.bias", vec[0:16:2]),
        ("sig_net.2.weight", wide[1:2]), ("sig_net.2.bias", vec[17:18]),
        ("mu_net.0.weight", big[:, 2:3]), ("mu_net.0.bias", vec[1:17:2]),
        ("mu_net.2.weight", tall[:, 3:4].t()), ("mu_net.2.bias", vec[19:]),
    ])
    write_fixture(out, "sd_single_views.pt", lambda p: torch.save(vsd, p), list(vsd.items()),
                  ["state_dict", "zip"])
    write_fixture(out, "sd_single_views_legacy.pt", lambda p: torch.save(vsd, p, **legacy),
                  list(vsd.items()), ["state_dict", "legacy"])
    # assorted shapes a generic reader must get right (not a model)
    base = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    cube = torch.arange(60, dtype=torch.float64).reshape(3, 4, 5)
    misc = collections.OrderedDict([
        ("base", base), ("base_t", base.t()), ("row1", base[1]), ("scalar", torch.tensor(3.5)),
        ("empty", torch.zeros(0, 3)), ("expanded", torch.tensor([1.0, 2.0]).expand(3, 2)),
        ("cube_perm", cube.permute(2, 0, 1)), ("cube_slice", cube[1:, ::2, 1::3]),
        ("half_col", torch.arange(12, dtype=torch.float16).reshape(4, 3)[:, 2]),
    ])
    write_fixture(out, "views_misc.pt", lambda p: torch.save(misc, p), list(misc.items()),
                  ["state_dict", "zip"])


def make_lightning(out):
    """A real PyTorch Lightning checkpoint (Trainer.fit for 3 steps on the CPU, then
    save_checkpoint): the LightningModule keeps the flow as `self.model`, so every state_dict key
    starts with 'model.'. Needs the `lightning` package (not part of rnvp's environment):
      pip install --target /tmp/lt lightning && PYTHONPATH=/tmp/lt python make_torch_fixtures.py --lightning"""
    import lightning as L

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            torch.manual_seed(8)
            self.model = stacked_NVP(2, 1, 8, 3)

        def training_step(self, batch, _):
            z, log_pz, log_jacob = self.model(batch)
            return (-log_pz - log_jacob).mean()

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=1e-3)

    data = torch.from_numpy(standardize(make_moons(96, 0.05, np.random.default_rng(1)))).float()
    loader = torch.utils.data.DataLoader(data, batch_size=32)
    module = Module()
    trainer = L.Trainer(max_steps=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu")
    trainer.fit(module, loader)
    items = list(module.state_dict().items())
    write_fixture(out, "lightning_stacked.ckpt", lambda p: trainer.save_checkpoint(p), items,
                  ["training checkpoint", "state_dict", "zip"])


# ---------------------------------------------------------------------------------------------------
def reference_tensors(path):
    """[(name, tensor)] from a fixture .json or from anything torch.load(weights_only=False) reads."""
    if path.endswith(".json"):
        with open(path) as f:
            doc = json.load(f)
        inv = {v: k for k, v in DTYPE_NAMES.items()}
        return [(e["name"], torch.tensor(e["values"], dtype=torch.float64).to(inv[e["dtype"]])
                 .reshape(e["shape"])) for e in doc["tensors"]]
    obj = torch.load(path, weights_only=False)
    if isinstance(obj, nn.Module):
        return list(obj.state_dict().items())
    if isinstance(obj, torch.jit.ScriptModule):
        return [(k.replace("|", "."), v) for k, v in obj.state_dict().items()]
    if isinstance(obj, dict) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        for k in ("model_state_dict", "state_dict", "model", "net", "module"):
            if k in obj:
                obj = obj[k]
                break
    if isinstance(obj, nn.Module):
        return list(obj.state_dict().items())
    return list(obj.items())


def build_model(sd):
    """The notebook's model for a state_dict (None when the names are not an R_NVP/stacked_NVP's)."""
    single = "sig_net.0.weight" in sd
    pre = "" if single else "bijectors.0."
    if pre + "sig_net.0.weight" not in sd or pre + "sig_net.2.weight" not in sd:
        return None
    hidden, k = sd[pre + "sig_net.0.weight"].shape
    d = k + sd[pre + "sig_net.2.weight"].shape[0]
    dtype = sd[pre + "sig_net.0.weight"].dtype
    run_dtype = dtype if dtype in (torch.float32, torch.float64) else torch.float32
    if single:
        model = R_NVP(d, k, hidden, run_dtype)
    else:
        model = stacked_NVP(d, k, hidden, len({key.split(".")[1] for key in sd}), run_dtype)
    model = model.to(dtype)
    result = model.load_state_dict(sd, strict=True)
    if result.missing_keys or result.unexpected_keys:
        raise AssertionError(f"load_state_dict: {result}")
    return model.to(run_dtype), run_dtype, d


def run_model(model, dtype, d):
    g = torch.Generator().manual_seed(11)
    x = torch.randn(16, d, generator=g).to(dtype)
    z_in = torch.randn(16, d, generator=g).to(dtype)
    with torch.no_grad():
        if isinstance(model, R_NVP):
            out = list(model(x)) + [model.inverse(z_in)]
        else:
            out = list(model(x)) + [model.inverse(z_in)]
    return out


def check_written(path, expect):
    sd = torch.load(path)  # the default since torch 2.6: weights_only=True
    if not isinstance(sd, dict):
        raise AssertionError(f"{path}: torch.load gave a {type(sd).__name__}, not a dict")
    bad = [k for k, v in sd.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise AssertionError(f"{path}: entries that are not str -> Tensor: {bad[:5]}")
    built = build_model(sd)
    msg = f"{len(sd)} tensors"
    if built is not None:
        msg += f", load_state_dict(strict=True) into {type(built[0]).__name__} ok"
    if expect:
        ref = reference_tensors(expect)
        if [n for n, _ in ref] != list(sd.keys()):
            raise AssertionError(f"names differ: {list(sd.keys())} vs {[n for n, _ in ref]}")
        for n, t in ref:
            u = sd[n]
            if u.dtype != t.dtype or u.shape != t.shape or not torch.equal(u, t):
                raise AssertionError(f"{n}: {u.dtype}{tuple(u.shape)} differs from {t.dtype}{tuple(t.shape)}")
        msg += ", tensors equal"
        if built is not None:
            ref_model = build_model(collections.OrderedDict(ref))
            for a, b in zip(run_model(*built), run_model(*ref_model)):
                if not torch.equal(a, b):
                    raise AssertionError("model outputs differ")
            msg += ", outputs identical"
    print(f"OK {path}: {msg}")


def main(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.path.join(os.path.dirname(HERE), "tests", "fixtures", "torch"))
    p.add_argument("--check-written", metavar="FILE")
    p.add_argument("--expect", metavar="REF")
    p.add_argument("--lightning", action="store_true", help="only the Lightning fixture (needs lightning)")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    if a.check_written:
        try:
            check_written(a.check_written, a.expect)
        except Exception as e:  # one line, non-zero status
            print(f"FAIL {a.check_written}: {type(e).__name__}: " + " ".join(str(e).split()))
            return 1
        return 0
    if a.lightning:
        make_lightning(a.out)
    else:
        make_all(a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
