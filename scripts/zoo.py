#!/usr/bin/env python3
"""Trains one of the Python libraries' flows for a fixed wall-clock budget and prints its test NLL
as JSON: the Python side of the bench's `zoo` section (examples/bench/main.rs).

    zoo.py MODEL --train train.npy --test test.npy --seconds 25 [--seed 0] [--threads 1]
           [--transforms 8] [--hidden 64] [--batch-size 1024] [--lr 3e-3] [--warmup 100]
           [--clip-grad 1] [--val-fraction 0.1]

MODEL: zuko-realnvp, zuko-nsf, normflows-realnvp, normflows-glow. The recipe is the one the bench
gives rnvp: the training file's rows less a held-out fraction (as `rnvp train --data FILE` holds
out `--val-fraction`), standardized by their own mean and standard deviation; Adam; a linear
warm-up, then a cosine decay to 0 that runs on the elapsed fraction of the budget (so training
ends on time); gradient-norm clipping, a step whose loss or gradient is not finite skipped. The
test NLL is in the data's units (the standardization's log-determinant added back), as
`rnvp eval` reports it. Needs `pip install zuko normflows` (the bench installs them).
"""
import argparse
import json
import math
import sys
import time

import numpy as np
import torch

MODELS = ("zuko-realnvp", "zuko-nsf", "normflows-realnvp", "normflows-glow")


def build(model, transforms, hidden):
    """The flow, as a function from a batch to its log-densities, and the module to optimize."""
    if model.startswith("zuko"):
        import zuko

        if model == "zuko-realnvp":
            flow = zuko.flows.RealNVP(2, transforms=transforms, hidden_features=(hidden, hidden))
        else:
            flow = zuko.flows.NSF(2, transforms=transforms, bins=8, hidden_features=(hidden, hidden))
        return (lambda x: flow().log_prob(x)), flow

    import normflows as nf

    steps = []
    for _ in range(transforms):
        net = nf.nets.MLP([1, hidden, hidden, 2], init_zeros=True)
        if model == "normflows-realnvp":
            # an affine coupling with exp scales, then the two columns swapped
            steps += [nf.flows.AffineCouplingBlock(net, scale_map="exp"), nf.flows.Permute(2, mode="swap")]
        else:
            # Glow's step in the normalizing direction: ActNorm, an LU linear map, a sigmoid-scaled
            # affine coupling (normflows lists layers from the base to the data)
            steps += [
                nf.flows.AffineCouplingBlock(net, scale_map="sigmoid"),
                nf.flows.LULinearPermute(2),
                nf.flows.ActNorm((2,)),
            ]
    flow = nf.NormalizingFlow(nf.distributions.DiagGaussian(2, trainable=False), steps)
    return flow.log_prob, flow


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("model", choices=MODELS)
    p.add_argument("--train", required=True)
    p.add_argument("--test", required=True)
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--transforms", type=int, default=8)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--clip-grad", type=float, default=1.0)
    p.add_argument("--val-fraction", type=float, default=0.1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    rng = np.random.default_rng(a.seed)

    rows = np.load(a.train).astype(np.float64)
    keep = rng.permutation(len(rows))[max(1, round(len(rows) * a.val_fraction)) :]
    train = rows[keep]
    mean, std = train.mean(0), train.std(0)
    log_det = float(np.log(std).sum())  # log |d z / d x| of the standardization is −log_det
    xs = torch.tensor((train - mean) / std, dtype=torch.float32)
    test = torch.tensor((np.load(a.test).astype(np.float64) - mean) / std, dtype=torch.float32)

    log_prob, module = build(a.model, a.transforms, a.hidden)
    params = [q for q in module.parameters() if q.requires_grad]
    opt = torch.optim.Adam(params, lr=a.lr)
    n, step, skipped, order, at = len(xs), 0, 0, None, 0
    t0 = time.perf_counter()
    elapsed = 0.0
    while elapsed < a.seconds:
        if order is None or at + a.batch_size > n:
            order, at = torch.randperm(n), 0
        batch = xs[order[at : at + a.batch_size]]
        at += a.batch_size
        frac = min(1.0, elapsed / a.seconds)
        lr = a.lr * 0.5 * (1.0 + math.cos(math.pi * frac))
        if step < a.warmup:
            lr *= (step + 1) / a.warmup
        for g in opt.param_groups:
            g["lr"] = lr
        opt.zero_grad(set_to_none=True)
        loss = -log_prob(batch).mean()
        if torch.isfinite(loss):
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(params, a.clip_grad)
            if torch.isfinite(norm):
                opt.step()
            else:
                skipped += 1
        else:
            skipped += 1
        step += 1
        elapsed = time.perf_counter() - t0

    with torch.no_grad():
        lp = torch.cat([log_prob(test[i : i + 8192]).double() for i in range(0, len(test), 8192)])
    finite = bool(torch.isfinite(lp).all())
    nll = float(-lp.mean()) + log_det
    json.dump(
        {
            "model": a.model,
            "nll": nll if math.isfinite(nll) else None,
            "finite": finite,
            "seconds": elapsed,
            "steps": step,
            "skipped": skipped,
            "params": sum(q.numel() for q in params),
            "train_rows": len(train),
        },
        sys.stdout,
    )
    print()


if __name__ == "__main__":
    main()
