#!/usr/bin/env python3
"""Small real tables: rnvp against a full-covariance Gaussian on scikit-learn's bundled data sets.

The measurement asks whether the default `rnvp train` beats the simplest density model on small,
real, tabular data: iris (150×4), wine (178×13), diabetes (442×10, unscaled) and breast_cancer
(569×30), features only. Each table is shuffled with numpy's Generator(PCG64(0)) (a fresh generator
per table) and split 80/20: the first floor(0.8·n) rows of the permutation train, the rest are held
out. Written for this project.

Usage:
  tables.py export --dir DIR
      writes DIR/<name>-train.csv and DIR/<name>-test.csv for each table (no header, comma-separated,
      Python repr floats) and prints their shapes.
  tables.py gaussian --train A.csv --test B.csv
      fits a Gaussian to A's rows by maximum likelihood (mean; covariance with 1/n, plus the ridge
      1e-9·trace/d·I when it is singular, said on stderr) and prints B's mean NLL in nats per row
      as JSON {"nll": ...}.
  tables.py compare --rnvp PATH --dir DIR [--extra "FLAGS"] [--tables iris,wine,...] [--keep-going]
      for each table (exported to DIR first): the Gaussian's held-out NLL; `PATH train --data
      DIR/<name>-train.csv --out DIR/<name>.safetensors -q` with rnvp's default flags (plus FLAGS),
      timed; `PATH eval --checkpoint ... --data DIR/<name>-test.csv --json`, its `nll` field, and the
      same for the best-validation checkpoint DIR/<name>.best.safetensors when training wrote one.
      Prints rnvp train's summary line (the step kept as best), the files training wrote, and a
      markdown table. A non-finite held-out NLL (rnvp eval prints its JSON, then exits 1) is
      reported as inf; any other failing command stops the script with its output and status 1 (with
      --keep-going, a failing `rnvp train` instead marks its row `stopped`, the checkpoint it left on
      disk is evaluated, and the script goes on, exiting 1 at the end).
"""
import argparse
import json
import math
import os
import shlex
import subprocess
import sys
import time

import numpy as np

TABLES = ("iris", "wine", "diabetes", "breast_cancer")
TRAIN_FRACTION = 0.8
RIDGE = 1e-9  # times trace/d, added to a singular covariance


def load_table(name):
    """The features (float64, no targets) of one of scikit-learn's bundled tables."""
    from sklearn import datasets

    loaders = {
        "iris": datasets.load_iris,
        "wine": datasets.load_wine,
        "diabetes": lambda: datasets.load_diabetes(scaled=False),
        "breast_cancer": datasets.load_breast_cancer,
    }
    return np.asarray(loaders[name]().data, dtype=np.float64)


def split(x):
    """(train, test): a fixed shuffle of the rows, the first 80% for training."""
    perm = np.random.Generator(np.random.PCG64(0)).permutation(len(x))
    n_train = int(len(x) * TRAIN_FRACTION)
    return x[perm[:n_train]], x[perm[n_train:]]


def write_csv(path, x):
    with open(path, "w") as f:
        for row in x:
            f.write(",".join(repr(float(v)) for v in row) + "\n")


def read_csv(path):
    x = np.loadtxt(path, delimiter=",", dtype=np.float64, ndmin=2)
    if x.size == 0:
        sys.exit(f"error: {path} holds no rows")
    return x


def paths(d, name):
    return os.path.join(d, f"{name}-train.csv"), os.path.join(d, f"{name}-test.csv")


def gaussian_nll(train, test):
    """Held-out mean NLL (nats per row) of the maximum-likelihood Gaussian of `train`, and the ridge
    added to its covariance (0 when it was not singular)."""
    n, d = train.shape
    if test.shape[1] != d:
        sys.exit(f"error: the training rows have {d} columns, the held-out rows {test.shape[1]}")
    mu = train.mean(axis=0)
    c = train - mu
    cov = c.T @ c / n
    ridge = 0.0
    try:
        chol = np.linalg.cholesky(cov)
        singular = np.linalg.matrix_rank(cov) < d
    except np.linalg.LinAlgError:
        singular = True
    if singular:
        ridge = RIDGE * np.trace(cov) / d
        chol = np.linalg.cholesky(cov + ridge * np.eye(d))
    # log N(x; μ, Σ) = −½ (d log 2π + log|Σ| + ‖L⁻¹(x − μ)‖²), with Σ = L Lᵀ
    w = np.linalg.solve(chol, (test - mu).T)
    log_det = 2.0 * np.log(np.diag(chol)).sum()
    log_p = -0.5 * (d * math.log(2 * math.pi) + log_det + (w * w).sum(axis=0))
    return float(-log_p.mean()), ridge


def cmd_export(a):
    os.makedirs(a.dir, exist_ok=True)
    for name in TABLES:
        train, test = split(load_table(name))
        p_train, p_test = paths(a.dir, name)
        write_csv(p_train, train)
        write_csv(p_test, test)
        print(f"{name}: {len(train) + len(test)}×{train.shape[1]} -> {p_train} {train.shape}, {p_test} {test.shape}")


def cmd_gaussian(a):
    nll, ridge = gaussian_nll(read_csv(a.train), read_csv(a.test))
    if ridge:
        print(f"note: the covariance is singular; added the ridge {ridge:.3g}·I", file=sys.stderr)
    print(json.dumps({"nll": nll}))


def run(cmd, ok_codes=(0,), keep_going=False):
    """Runs `cmd`; returns (status, stdout, stderr, seconds). A status outside ok_codes is fatal,
    unless keep_going (then it is printed and returned)."""
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True)
    except OSError as e:
        sys.exit(f"error: could not run {shlex.join(cmd)}: {e}")
    seconds = time.perf_counter() - t0
    if p.returncode not in ok_codes:
        msg = f"error: `{shlex.join(cmd)}` exited with status {p.returncode} after {seconds:.1f} s"
        if not keep_going:
            sys.stderr.write(p.stdout[-4000:] + p.stderr[-4000:])
            sys.exit(msg)
        print(f"   {msg} (--keep-going: the checkpoint it left is evaluated)", flush=True)
    return p.returncode, p.stdout, p.stderr, seconds


def rnvp_eval(rnvp, checkpoint, data):
    """Held-out mean NLL from `rnvp eval --json`; inf when rnvp reports it is not finite."""
    cmd = [rnvp, "eval", "--checkpoint", checkpoint, "--data", data, "--json"]
    status, out, err, _ = run(cmd, ok_codes=(0, 1))
    v = None
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("{"):
            v = json.loads(line)
    if v is None or "nll" not in v:
        sys.stderr.write(out[-4000:] + err[-4000:])
        sys.exit(f"error: `{shlex.join(cmd)}` (status {status}) printed no JSON with an `nll` field")
    if status != 0 and v.get("finite", True):
        sys.stderr.write(out[-4000:] + err[-4000:])
        sys.exit(f"error: `{shlex.join(cmd)}` exited with status {status}")
    nll = v["nll"]
    if nll is None or not v.get("finite", True):  # JSON has no inf: rnvp writes null
        return math.inf, v.get("non_finite_rows")
    return float(nll), None


def snapshot(d):
    return {f: os.stat(os.path.join(d, f)).st_mtime_ns for f in os.listdir(d)}


def fmt(x):
    return "inf" if math.isinf(x) else f"{x:.3f}"


def cmd_compare(a):
    extra = shlex.split(a.extra)
    tables = a.tables.split(",") if a.tables else list(TABLES)
    for name in tables:
        if name not in TABLES:
            sys.exit(f"error: unknown table {name!r} (one of {', '.join(TABLES)})")
        for p in paths(a.dir, name):
            if not os.path.exists(p):
                sys.exit(f"error: {p} is missing: run `tables.py export --dir {a.dir}` first")
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())} ({os.cpu_count()} CPUs)")
    rows = []
    failed = False
    for name in tables:
        p_train, p_test = paths(a.dir, name)
        train, test = read_csv(p_train), read_csv(p_test)
        g_nll, ridge = gaussian_nll(train, test)
        out = os.path.join(a.dir, f"{name}.safetensors")
        best = os.path.join(a.dir, f"{name}.best.safetensors")
        for stale in (out, best):  # a file left by an earlier run must not pass for this run's
            if os.path.exists(stale):
                os.remove(stale)
        before = snapshot(a.dir)
        cmd = [a.rnvp, "train", "--data", p_train, "--out", out, *extra]
        if "-q" not in extra and "--quiet" not in extra:
            cmd.append("-q")  # the progress bar only
        print(f"## {name}: {shlex.join(cmd)}", flush=True)
        status, t_out, t_err, seconds = run(cmd, keep_going=a.keep_going)
        failed |= status != 0
        after = snapshot(a.dir)
        written = sorted(f for f, m in after.items() if before.get(f) != m)
        for line in (t_out + t_err).splitlines():
            if any(w in line.lower() for w in ("best", "kept", "keeps", "stopped", "diverged", "warning", "error")):
                print(f"   rnvp: {line.strip()}")
        print(f"   files written: {', '.join(written) or 'none'}")
        if not os.path.exists(out):
            sys.exit(f"error: rnvp train wrote no {out}")
        nll, bad = rnvp_eval(a.rnvp, out, p_test)
        best_nll, best_bad = (rnvp_eval(a.rnvp, best, p_test) if os.path.exists(best) else (None, None))
        for label, b in (("last", bad), ("best", best_bad)):
            if b is not None:
                print(f"   note: the {label} checkpoint's log-density is not finite on {b} of {len(test)} held-out rows")
        if ridge:
            print(f"   note: the Gaussian's covariance is singular; added the ridge {ridge:.3g}·I")
        rows.append((name, len(train) + len(test), train.shape[1], g_nll, nll, best_nll, seconds, status))
    with_best = any(r[5] is not None for r in rows)
    head = ["table", "rows×cols", "Gaussian NLL", "rnvp NLL"] + (["rnvp best NLL"] if with_best else [])
    head += ["rnvp train s", "rnvp ≤ Gaussian?"]
    print()
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join("---" for _ in head) + "|")
    for name, n, d, g, r, b, s, status in rows:
        cells = [name, f"{n}×{d}", fmt(g), fmt(r)]
        # the flow computes in float32: an untrained (Gaussian) model matches to about 1e-4 nats
        verdict = "yes" if r <= g + TOLERANCE else "no"
        if with_best:
            cells.append("—" if b is None else fmt(b))
            if b is not None:
                verdict += f" (best: {'yes' if b <= g + TOLERANCE else 'no'})"
        cells += [f"{s:.1f}" + ("" if status == 0 else f" (stopped, status {status})"), verdict]
        print("| " + " | ".join(cells) + " |")
    if failed:
        sys.exit("error: rnvp train failed on some tables (rows marked `stopped`)")


#: How far above the Gaussian's NLL rnvp's may be and still count as no worse (float32 rounding).
TOLERANCE = 1e-3


def main(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    q = sub.add_parser("export", help="write the four tables' 80/20 splits as CSV")
    q.add_argument("--dir", required=True)
    q = sub.add_parser("gaussian", help="held-out NLL of the maximum-likelihood full-covariance Gaussian")
    q.add_argument("--train", required=True)
    q.add_argument("--test", required=True)
    q = sub.add_parser("compare", help="rnvp train/eval with default flags against the Gaussian, as a table")
    q.add_argument("--rnvp", required=True, help="the rnvp binary")
    q.add_argument("--dir", required=True, help="where `export` wrote the tables; checkpoints go here too")
    q.add_argument("--extra", default="", help="more flags for rnvp train, one shell-quoted string")
    q.add_argument("--tables", help=f"comma-separated subset of {','.join(TABLES)}")
    q.add_argument("--keep-going", action="store_true",
                   help="a failing rnvp train does not stop the script: its row is marked, the checkpoint it "
                        "left evaluated, and the script exits 1 at the end")
    a = p.parse_args(argv)
    {"export": cmd_export, "gaussian": cmd_gaussian, "compare": cmd_compare}[a.cmd](a)


if __name__ == "__main__":
    main(sys.argv[1:])
