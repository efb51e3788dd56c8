#!/usr/bin/env python3
"""Trains one of the Python libraries' flows on scikit-learn's 8×8 digits for a fixed training time,
with early stopping on the validation images, and reports bits/dim: the Python side of the bench's
`images-quality` section (examples/bench/images.rs).

    zoo_images.py --model MODEL --seconds S --out run.csv [--seed 0] [--threads 2] [--device cpu]
                  [--batch-size 128] [--lr 1e-3] [--patience 20] [--alpha 0.05]
                  [--digits .rnvp/data/digits.npy]

MODEL: zuko-nsf (zuko.flows.NSF(64, transforms=4, hidden_features=(256, 256))), zuko-realnvp
(zuko.flows.RealNVP(64, transforms=8, hidden_features=(256, 256))) on the flattened images, or
normflows-glow (normflows' multi-scale Glow on 1×8×8 as in its Glow example: 2 levels of 4
GlowBlocks with 64 hidden channels, squeezes, a merge, a trainable diagonal Gaussian per level).

The data and recipe are rnvp's (`rnvp train --data digits`): of the 1797 images, the first 1437
train, of which the last round(0.1 · 1437) = 144 validate; the last 360 are the test set. Levels
L = 17 (values 0..16). Uniform dequantization x = (v + u) / L with fresh noise for every batch, then
y = logit(α + (1 − 2α) x) with α = 0.05; the flow models y, and every number is the NLL of the
dequantized images in [0, 1]^64, −log p(y) − log|dy/dx|, in bits per dimension of the discrete
images: bpd = (nll + 64 ln 17) / (64 ln 2). The validation and test images get one seeded draw of
the noise each. Adam at a constant learning rate, batches of 128 in a fresh random order every epoch
(the last batch of an epoch is short), no gradient clipping (a non-finite loss ends the run, as it
does rnvp's). One validation per epoch (and of the initial model, and at the end); training stops
after --seconds seconds of training (the clock stops during validations) or after --patience
validations in a row without a better validation NLL, and the model of the best validation is kept.

Writes --out as CSV, one row per validation: step, seconds (of training before it), val_bpd, and
test_bpd on the row of the kept model (the test set is scored once, on that model). Prints one JSON
line: test_bpd, best_val_bpd, best_step, seconds, steps, params, stopped (time, patience or
non-finite).
"""
import argparse
import copy
import json
import math
import os
import sys
import time

import numpy as np
import torch

MODELS = ("zuko-nsf", "zuko-realnvp", "normflows-glow")
SHAPE = (1, 8, 8)
D = 64
LEVELS = 17
TRAIN = 1437  # the first 1437 images train and validate, the last 360 test


def build(model, hidden, layers):
    """(module, log_prob of rows y [n, 64])."""
    if model.startswith("zuko"):
        import zuko

        if model == "zuko-nsf":
            flow = zuko.flows.NSF(D, transforms=layers or 4, hidden_features=(hidden or 256,) * 2)
        else:
            flow = zuko.flows.RealNVP(D, transforms=layers or 8, hidden_features=(hidden or 256,) * 2)
        return flow, lambda y: flow().log_prob(y)

    import normflows as nf

    # normflows' multi-scale Glow (its examples/glow.ipynb, unconditional): level i of L holds K
    # GlowBlocks then a squeeze (normflows lists layers from the base to the data)
    c, h, w = SHAPE
    levels, k, hidden = 2, layers or 4, hidden or 64
    q0, merges, flows = [], [], []
    for i in range(levels):
        flows.append([nf.flows.GlowBlock(c * 2 ** (levels + 1 - i), hidden, split_mode="channel", scale=True)
                      for _ in range(k)] + [nf.flows.Squeeze()])
        if i > 0:
            merges.append(nf.flows.Merge())
            latent = (c * 2 ** (levels - i), h // 2 ** (levels - i), w // 2 ** (levels - i))
        else:
            latent = (c * 2 ** (levels + 1), h // 2 ** levels, w // 2 ** levels)
        q0.append(nf.distributions.DiagGaussian(latent))
    flow = nf.MultiscaleFlow(q0, flows, merges, class_cond=False)
    return flow, lambda y: flow.log_prob(y.reshape(-1, *SHAPE), None)


def to_flow(v, u, alpha):
    """Rows y of the images v (levels, [n, 64]) dequantized with the noise u, and log|dy/dx| per row."""
    s = alpha + (1 - 2 * alpha) * (v + u) / LEVELS
    y = torch.log(s) - torch.log1p(-s)
    log_det = (math.log(1 - 2 * alpha) - torch.log(s) - torch.log1p(-s)).sum(1)
    return y, log_det


def bpd(nll):
    return (nll + D * math.log(LEVELS)) / (D * math.log(2))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", choices=MODELS, required=True)
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--patience", type=int, default=20)
    p.add_argument("--alpha", type=float, default=0.05)
    p.add_argument("--hidden", type=int, default=0, help="override the model's width")
    p.add_argument("--layers", type=int, default=0, help="override the model's transforms / steps per level")
    p.add_argument("--digits", default=os.path.join(os.path.dirname(__file__), "..", ".rnvp", "data", "digits.npy"))
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    dev = torch.device(a.device)

    images = np.load(a.digits).reshape(-1, D).astype(np.float64)
    n_val = max(1, round(TRAIN * 0.1))
    v_train = torch.tensor(images[: TRAIN - n_val], dtype=torch.float64)
    v_val = torch.tensor(images[TRAIN - n_val : TRAIN], dtype=torch.float64)
    v_test = torch.tensor(images[TRAIN:], dtype=torch.float64)
    g = torch.Generator().manual_seed(a.seed + 1)
    held_out = {}
    for name, v in [("val", v_val), ("test", v_test)]:
        y, ld = to_flow(v, torch.rand(v.shape, generator=g, dtype=torch.float64), a.alpha)
        held_out[name] = (y.float().to(dev), ld.to(dev))

    module, log_prob = build(a.model, a.hidden, a.layers)
    module.to(dev)
    params = [q for q in module.parameters() if q.requires_grad]

    def held_out_bpd(name):
        y, ld = held_out[name]
        module.eval()
        with torch.no_grad():
            nll = -(log_prob(y).double() + ld).mean().item()
        module.train()
        return bpd(nll)

    # normflows' ActNorm initialises on the first batch it sees, which must be a training batch
    module.train()
    opt = torch.optim.Adam(params, lr=a.lr)
    n = len(v_train)
    rows = [("step", "seconds", "val_bpd", "test_bpd")]
    step, elapsed, since_best, stopped = 0, 0.0, 0, "time"
    best = None  # (val_bpd, step, state_dict, row index)

    def validate():
        nonlocal best, since_best
        v = held_out_bpd("val")
        rows.append([step, round(elapsed, 3), v, ""])
        if math.isfinite(v) and (best is None or v < best[0]):
            best = (v, step, copy.deepcopy(module.state_dict()), len(rows) - 1)
            since_best = 0
        else:
            since_best += 1

    first = True
    while elapsed < a.seconds and stopped == "time":
        order = torch.randperm(n)
        for at in range(0, n, a.batch_size):
            t0 = time.perf_counter()
            v = v_train[order[at : at + a.batch_size]]
            y, ld = to_flow(v, torch.rand(v.shape, dtype=torch.float64), a.alpha)
            y, ld = y.float().to(dev), ld.to(dev)
            if first:
                # the initial model is a candidate, as in rnvp (after normflows' data-dependent init)
                with torch.no_grad():
                    log_prob(y)
                first = False
                validate()
                t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            loss = -(log_prob(y) + ld.float()).mean()
            if not torch.isfinite(loss):
                stopped = "non-finite"
                break
            loss.backward()
            opt.step()
            step += 1
            if dev.type == "cuda":
                torch.cuda.synchronize()
            elapsed += time.perf_counter() - t0
            if elapsed >= a.seconds:
                break
        if stopped != "time":
            break
        validate()  # once per epoch, and where the time ran out
        if a.patience and since_best >= a.patience:
            stopped = "patience"
    if best is None:
        print(json.dumps({"model": a.model, "test_bpd": None, "error": "no finite validation"}))
        sys.exit(1)
    module.load_state_dict(best[2])
    test = held_out_bpd("test")
    rows[best[3]][3] = test
    with open(a.out, "w") as f:
        for r in rows:
            f.write(",".join(str(x) for x in r) + "\n")
    print(json.dumps({
        "model": a.model,
        "test_bpd": test if math.isfinite(test) else None,
        "best_val_bpd": best[0],
        "best_step": best[1],
        "seconds": elapsed,
        "steps": step,
        "params": sum(q.numel() for q in params),
        "stopped": stopped,
    }))


if __name__ == "__main__":
    main()
