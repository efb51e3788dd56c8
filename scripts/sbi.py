#!/usr/bin/env python3
"""Simulation-based inference benchmark (sbibm tasks, C2ST) for rnvp and for the `sbi` package.

Neural posterior estimation on two of sbibm's tasks, scored as sbibm scores it: the classifier
two-sample test (C2ST) of 10,000 posterior samples against sbibm's 10,000 reference posterior
samples, for each of the task's 10 observations. Tasks, metric and published numbers:
`shared/docs/sbi.md`. Written for this project.

All CSV files written here have no header, are comma-separated, hold floats at full precision (repr)
and put the θ columns first, then the x columns. Reference files are cached under
${XDG_CACHE_HOME:-~/.cache}/rnvp/sbibm/.

Usage:
  sbi.py simulate --task two_moons|gaussian_linear --n N --seed S --out sims.csv
      N rows [θ..., x...]: θ from the prior, x from the simulator, numpy Generator(PCG64(S)).
      two_moons: θ ∈ U(-1,1)², x ∈ R²; gaussian_linear: θ ~ N(0, 0.1 I), x ~ N(θ, 0.1 I), both R¹⁰.
  sbi.py fetch
      downloads the sbibm 1.1.0 wheel once (`pip download --no-deps`) into the cache and unpacks
      each task's observation.csv and reference_posterior_samples.csv.bz2 for observations 1..10.
      Idempotent; every subcommand below that needs these files calls it.
  sbi.py observations --task T --out obs.csv
      the task's 10 observations x_o, one row each, in order 1..10.
  sbi.py reference --task T --obs I --out ref.csv
      sbibm's 10,000 reference posterior samples for observation I.
  sbi.py c2st --ref ref.csv --samples post.csv [--cols K] [--jobs J]
      prints sbibm's C2ST accuracy of the samples against the reference (0.5: indistinguishable,
      1.0: separable). --cols K: only the first K columns of the samples file (rnvp's sampler
      appends the context columns to each row). --jobs J: J of the 5 cross-validation folds at once
      (same result). Its time depends on the data, as the MLP trains until its loss stops improving;
      measured on 2 busy cores, 10,000 + 10,000 rows: two_moons 9 s (grid posterior) to 25-150 s
      (sbi's NPE), gaussian_linear 31 min for exact posterior samples (0.4997), so 10 observations
      take about 5 hours there: use --obs for quick runs, --jobs 5 where there are cores.
  sbi.py check [--n-grid 2000] [--no-c2st] [--jobs J]
      checks the reference files against closed forms: gaussian_linear's reference samples have mean
      x_o/2 and variance 0.05; two_moons' reference samples lie where the closed-form likelihood is
      non-negligible; `simulate` agrees with that likelihood; a θ-grid posterior from the likelihood
      gives C2ST ≈ 0.5 against the reference of observation 1; C2ST itself gives ≈ 0.5 on two halves
      of one reference and ≈ 1 against a shifted copy. Prints each check; exit status 1 on failure.
  sbi.py install-sbi [--version V]
      pip-installs `sbi` (default: 0.27.0, the newest that keeps this venv's torch) into the running
      interpreter's environment with a constraints file pinning the installed torch, numpy and
      scikit-learn, so that pip keeps them or fails.
  sbi.py npe --task T --n N --seed S [--obs 1,2,3] [--jobs J] [--threads T]
      sbi's default NPE (`NPE(prior)`, `append_simulations(θ, x).train()`, `build_posterior()`)
      on exactly the simulations `simulate` writes for (T, N, S); samples 10,000 per observation;
      prints one JSON line {"task", "n", "seed", "method", "train_s", "obs", "c2st": [...], "mean"}
      (train_s: wall seconds of `train()` alone). Needs `install-sbi` first.
  sbi.py rnvp --rnvp PATH --task T --n N --seed S [--preset sbi] [--extra "FLAGS"] --work DIR
             [--obs 1,2,3] [--jobs J]
      the same benchmark through rnvp's CLI: DIR/sims.csv (as `simulate`), DIR/obs.csv (the chosen
      observations), `PATH train --data DIR/sims.csv --context dim(x) --preset P [--bounds=-1,1 for
      two_moons] FLAGS --out DIR/q.safetensors` (timed), `PATH sample --checkpoint DIR/q.safetensors
      -n 10000 --context-file DIR/obs.csv --out DIR/post.csv --seed S`, then C2ST of each
      observation's block of rows (first dim(θ) columns); prints the same JSON line as `npe`.
      Exits with a message naming the command when rnvp fails.
  sbi.py table --json FILE...
      a markdown table of the JSON lines in the files (task, simulations, method, mean C2ST,
      min–max, train s).

Environment: RNVP_THREADS sets the default of `npe --threads` (torch's threads), 1 if unset: on 2 busy
cores, 2 threads made sbi's epochs up to 60 times slower (0.4 s became 25-30 s), 1 thread kept 0.4-0.8 s.
"""
import argparse
import bz2
import contextlib
import inspect
import json
import math
import os
import shlex
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

SBIBM_VERSION = "1.1.0"
SBI_VERSION = "0.27.0"  # newest sbi on PyPI when written; installs beside torch 2.13 without changes
NUM_OBSERVATIONS = 10
NUM_SAMPLES = 10_000

# The tasks: θ's and x's widths. Priors and simulators are in `simulate`.
TASKS = {"two_moons": (2, 2), "gaussian_linear": (10, 10)}

# two_moons' simulator constants (sbi.md).
TM_A = math.pi / 2  # a ~ U(-TM_A, TM_A)
TM_R_LOC, TM_R_SCALE = 0.1, 0.01  # r ~ N(TM_R_LOC, TM_R_SCALE²)
TM_OFFSET = 0.25
GL_VAR = 0.1  # gaussian_linear: prior and noise variance


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# CSV files


def write_csv(path, a):
    """Rows of floats at full precision (repr of each float64), no header."""
    a = np.asarray(a, dtype=np.float64)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for row in a.reshape(len(a), -1).tolist():
            f.write(",".join(map(repr, row)))
            f.write("\n")


def read_csv(path, skip_header=False):
    """A 2-D float64 array; `skip_header` drops sbibm's header line, and a first line that is not
    numbers (the `x0,x1,...` header rnvp writes) is skipped too. Handles .bz2 files."""
    path = Path(path)
    opener = bz2.open if path.suffix == ".bz2" else open
    with opener(path, "rt") as f:
        first = f.readline()
        try:
            [float(v) for v in first.split(",")]
            numeric = True
        except ValueError:
            numeric = False
        f.seek(0)
        skip = 1 if (skip_header or not numeric) else 0
        return np.loadtxt(f, delimiter=",", ndmin=2, skiprows=skip, dtype=np.float64)


# ---------------------------------------------------------------------------------------------
# Tasks: prior and simulator, two_moons' closed-form likelihood and grid posterior


def simulate(task, n, seed):
    """(θ, x) for n simulations, θ from the prior and x from the simulator (sbi.md's definitions).

    One numpy Generator(PCG64(seed)); θ is drawn first, then the simulator's noise."""
    rng = np.random.Generator(np.random.PCG64(seed))
    if task == "two_moons":
        theta = rng.uniform(-1.0, 1.0, size=(n, 2))
        a = rng.uniform(-TM_A, TM_A, size=n)
        r = rng.normal(TM_R_LOC, TM_R_SCALE, size=n)
        p = np.stack([r * np.cos(a) + TM_OFFSET, r * np.sin(a)], axis=1)
        return theta, p + two_moons_shift(theta)
    if task == "gaussian_linear":
        d = TASKS[task][0]
        theta = rng.normal(0.0, math.sqrt(GL_VAR), size=(n, d))
        return theta, theta + rng.normal(0.0, math.sqrt(GL_VAR), size=(n, d))
    raise ValueError(f"unknown task {task!r}")


def two_moons_shift(theta):
    """(-|z₀|, z₁) with z = θ rotated by -π/4: x = p + shift(θ)."""
    c, s = math.cos(-math.pi / 4), math.sin(-math.pi / 4)
    z0 = c * theta[..., 0] - s * theta[..., 1]
    z1 = s * theta[..., 0] + c * theta[..., 1]
    return np.stack([-np.abs(z0), z1], axis=-1)


def two_moons_polar(theta, x_o):
    """(u, r) of p = x_o - shift(θ): u = p₀ - 0.25, r = |(u, p₁)|."""
    p = x_o - two_moons_shift(theta)
    u, v = p[..., 0] - TM_OFFSET, p[..., 1]
    return u, np.hypot(u, v)


def two_moons_log_likelihood(theta, x_o):
    """log p(x_o | θ) = log N(r; 0.1, 0.01²) - log(π r) where u ≥ 0, -inf elsewhere."""
    u, r = two_moons_polar(theta, x_o)
    with np.errstate(divide="ignore"):
        ll = (-0.5 * ((r - TM_R_LOC) / TM_R_SCALE) ** 2 - math.log(math.sqrt(2 * math.pi) * TM_R_SCALE)
              - np.log(math.pi * r))
    return np.where(u >= 0, ll, -np.inf)


def two_moons_grid_posterior(x_o, n_grid):
    """The exact posterior on an n_grid × n_grid grid of cells over the prior's box [-1, 1]².

    Returns (edges, prob): the cells' edges along each axis (n_grid + 1) and each cell's posterior
    probability, prob[i, j] for θ₀ in cell i and θ₁ in cell j (likelihood at the cell's centre
    times the uniform prior, normalized)."""
    edges = np.linspace(-1.0, 1.0, n_grid + 1)
    centres = 0.5 * (edges[:-1] + edges[1:])
    t0, t1 = np.meshgrid(centres, centres, indexing="ij")
    ll = two_moons_log_likelihood(np.stack([t0, t1], axis=-1), np.asarray(x_o, dtype=np.float64))
    w = np.exp(ll - ll.max())
    return edges, w / w.sum()


def sample_grid_posterior(edges, prob, n, rng):
    """n samples of a grid posterior: a cell by its probability, then uniform within the cell."""
    n_grid = len(edges) - 1
    cells = rng.choice(prob.size, size=n, p=prob.ravel())
    i, j = np.divmod(cells, n_grid)
    width = np.diff(edges)
    return np.stack([edges[i] + rng.uniform(size=n) * width[i],
                     edges[j] + rng.uniform(size=n) * width[j]], axis=1)


# ---------------------------------------------------------------------------------------------
# sbibm's files


def cache_dir():
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(base) / "rnvp" / "sbibm"


def obs_dir(task, i):
    return cache_dir() / "tasks" / task / f"num_observation_{i}"


NEEDED = ("observation.csv", "reference_posterior_samples.csv.bz2")


def fetch():
    """Downloads sbibm's wheel once and unpacks the files used here. Returns the cache folder."""
    root = cache_dir()
    missing = [(t, i, name) for t in TASKS for i in range(1, NUM_OBSERVATIONS + 1) for name in NEEDED
               if not (obs_dir(t, i) / name).exists()]
    if not missing:
        return root
    wheel = root / f"sbibm-{SBIBM_VERSION}-py2.py3-none-any.whl"
    if not wheel.exists():
        root.mkdir(parents=True, exist_ok=True)
        log(f"fetch: pip download --no-deps sbibm=={SBIBM_VERSION} into {root}")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", f"sbibm=={SBIBM_VERSION}",
               "-d", str(root)]
        rc = subprocess.run(cmd, stdout=sys.stderr).returncode
        if rc != 0 or not wheel.exists():
            sys.exit(f"fetch: `{shlex.join(cmd)}` failed (exit {rc}) or wrote no {wheel.name}")
    with zipfile.ZipFile(wheel) as z:
        for t, i, name in missing:
            member = f"sbibm/tasks/{t}/files/num_observation_{i}/{name}"
            dest = obs_dir(t, i) / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(dest.name + ".part")  # a rename, so an interrupted fetch leaves no half file
            tmp.write_bytes(z.read(member))
            tmp.replace(dest)
    log(f"fetch: unpacked {len(missing)} files under {root / 'tasks'}")
    return root


def observation(task, i):
    """x_o of observation i (1-based) as a 1-D array."""
    fetch()
    x = read_csv(obs_dir(task, i) / "observation.csv", skip_header=True)
    if x.shape != (1, TASKS[task][1]):
        sys.exit(f"{task} observation {i}: expected 1 row of {TASKS[task][1]} values, got shape {x.shape}")
    return x[0]


def reference_samples(task, i):
    """sbibm's reference posterior samples for observation i, shape [10000, dθ]."""
    fetch()
    ref = read_csv(obs_dir(task, i) / "reference_posterior_samples.csv.bz2", skip_header=True)
    if ref.shape != (NUM_SAMPLES, TASKS[task][0]):
        sys.exit(f"{task} reference {i}: expected shape {(NUM_SAMPLES, TASKS[task][0])}, got {ref.shape}")
    return ref


# ---------------------------------------------------------------------------------------------
# C2ST


def c2st(ref, samples, jobs=1, seed=1, n_folds=5):
    """sbibm's classifier two-sample test: the mean 5-fold cross-validated accuracy of an MLP telling
    reference samples (label 0) from the others (label 1).

    As sbibm: float32 data, both sets z-scored with the reference's mean and (n-1) std,
    MLPClassifier(relu, (10·dim, 10·dim), adam, max_iter=10000, random_state=1), KFold(5,
    shuffle=True, random_state=1). `jobs` folds run in parallel (the same result, sooner)."""
    from sklearn.model_selection import KFold, cross_val_score
    from sklearn.neural_network import MLPClassifier

    ref = np.asarray(ref, dtype=np.float32)
    samples = np.asarray(samples, dtype=np.float32)
    if ref.ndim != 2 or samples.ndim != 2 or ref.shape[1] != samples.shape[1]:
        raise ValueError(f"c2st: widths differ: reference {ref.shape}, samples {samples.shape}")
    if not np.isfinite(samples).all():
        raise ValueError("c2st: the samples hold NaN or inf")
    mean, std = ref.mean(axis=0), ref.std(axis=0, ddof=1)
    data = np.concatenate([(ref - mean) / std, (samples - mean) / std])
    target = np.concatenate([np.zeros(len(ref)), np.ones(len(samples))])
    dim = ref.shape[1]
    clf = MLPClassifier(activation="relu", hidden_layer_sizes=(10 * dim, 10 * dim), solver="adam",
                        max_iter=10000, random_state=seed)
    folds = KFold(n_splits=n_folds, shuffle=True, random_state=seed)
    return float(np.mean(cross_val_score(clf, data, target, cv=folds, scoring="accuracy", n_jobs=jobs)))


def parse_obs(text):
    """'1,2,3' → [1, 2, 3]; None → all observations."""
    if text is None:
        return list(range(1, NUM_OBSERVATIONS + 1))
    obs = [int(s) for s in text.split(",") if s.strip()]
    bad = [i for i in obs if not 1 <= i <= NUM_OBSERVATIONS]
    if not obs or bad:
        sys.exit(f"--obs: observations are 1..{NUM_OBSERVATIONS}, got {text!r}")
    return obs


def score_blocks(task, obs, samples_per_obs, jobs):
    """C2ST of each observation's samples against its reference, logged as it goes."""
    scores = []
    for i, samples in zip(obs, samples_per_obs):
        bad = int((~np.isfinite(samples).all(axis=1)).sum())
        if bad:
            sys.exit(f"{task} observation {i}: {bad} of {len(samples)} samples hold NaN or inf")
        t = time.perf_counter()
        scores.append(c2st(reference_samples(task, i), samples, jobs))
        log(f"  {task} observation {i}: C2ST {scores[-1]:.4f} ({time.perf_counter() - t:.1f} s)")
    return scores


def result_line(task, n, seed, method, train_s, obs, scores):
    return json.dumps({"task": task, "n": n, "seed": seed, "method": method, "train_s": round(train_s, 3),
                       "obs": obs, "c2st": scores, "mean": float(np.mean(scores))})


# ---------------------------------------------------------------------------------------------
# Subcommands


def cmd_simulate(a):
    theta, x = simulate(a.task, a.n, a.seed)
    write_csv(a.out, np.concatenate([theta, x], axis=1))


def cmd_fetch(a):
    print(fetch())


def cmd_observations(a):
    write_csv(a.out, np.stack([observation(a.task, i) for i in range(1, NUM_OBSERVATIONS + 1)]))


def cmd_reference(a):
    write_csv(a.out, reference_samples(a.task, parse_obs(str(a.obs))[0]))


def cmd_c2st(a):
    ref, samples = read_csv(a.ref), read_csv(a.samples)
    if a.cols is not None:
        if samples.shape[1] < a.cols:
            sys.exit(f"--cols {a.cols}: {a.samples} has only {samples.shape[1]} columns")
        samples = samples[:, :a.cols]
    if samples.shape[1] != ref.shape[1]:
        sys.exit(f"c2st: {a.samples} has {samples.shape[1]} columns, {a.ref} {ref.shape[1]} "
                 f"(--cols K takes the first K)")
    t = time.perf_counter()
    acc = c2st(ref, samples, a.jobs)
    log(f"c2st: {len(ref)} reference vs {len(samples)} samples, {ref.shape[1]} columns, "
        f"{time.perf_counter() - t:.1f} s")
    print(repr(acc))


def cmd_check(a):
    failures = []

    def report(ok, what):
        print(f"{'ok  ' if ok else 'FAIL'} {what}", flush=True)
        if not ok:
            failures.append(what)

    # gaussian_linear: posterior N(x_o/2, 0.05 I). Standard errors at 10,000 samples: mean
    # √(0.05/10⁴) ≈ 0.0022, variance 0.05·√(2/10⁴) ≈ 0.0007; tolerances are 5 of them.
    dm = dv = 0.0
    for i in range(1, NUM_OBSERVATIONS + 1):
        ref, x_o = reference_samples("gaussian_linear", i), observation("gaussian_linear", i)
        dm = max(dm, np.abs(ref.mean(axis=0) - x_o / 2).max())
        dv = max(dv, np.abs(ref.var(axis=0, ddof=1) - GL_VAR / 2).max())
    report(dm < 5 * math.sqrt(0.05 / NUM_SAMPLES),
           f"gaussian_linear, 10 observations: reference mean - x_o/2, largest |difference| {dm:.4f}")
    report(dv < 5 * 0.05 * math.sqrt(2 / NUM_SAMPLES),
           f"gaussian_linear, 10 observations: reference variance - 0.05, largest |difference| {dv:.5f}")

    # two_moons: every reference sample has u ≥ 0 (up to float32 rounding) and r within 6 σ of 0.1.
    worst_u, worst_r, n_inf = math.inf, 0.0, 0
    for i in range(1, NUM_OBSERVATIONS + 1):
        ref, x_o = reference_samples("two_moons", i), observation("two_moons", i)
        u, r = two_moons_polar(ref, x_o)
        worst_u = min(worst_u, u.min())
        worst_r = max(worst_r, np.abs(r - TM_R_LOC).max() / TM_R_SCALE)
        n_inf += int(np.isinf(two_moons_log_likelihood(ref, x_o)).sum())
    report(worst_u > -1e-5 and worst_r < 6,
           f"two_moons, 10 observations: reference samples in the likelihood's support: smallest u "
           f"{worst_u:.2e} (≥ 0 up to float32), largest |r - 0.1|/0.01 {worst_r:.2f} (< 6), "
           f"{n_inf} of {NUM_OBSERVATIONS * NUM_SAMPLES} with zero likelihood")

    # simulate agrees with the closed form: p = x - shift(θ) has u ≥ 0 and r ~ N(0.1, 0.01²).
    theta, x = simulate("two_moons", 100_000, 0)
    p = x - two_moons_shift(theta)
    u, r = p[:, 0] - TM_OFFSET, np.hypot(p[:, 0] - TM_OFFSET, p[:, 1])
    report(u.min() >= -1e-12 and abs(r.mean() - TM_R_LOC) < 1e-4 and abs(r.std() - TM_R_SCALE) < 1e-4,
           f"two_moons simulate (10⁵): min u {u.min():.2e}, r mean {r.mean():.5f}, r std {r.std():.5f}")
    theta, x = simulate("gaussian_linear", 100_000, 0)
    report(abs(theta.var() - GL_VAR) < 2e-3 and abs((x - theta).var() - GL_VAR) < 2e-3,
           f"gaussian_linear simulate (10⁵): θ variance {theta.var():.4f}, x - θ variance "
           f"{(x - theta).var():.4f} (0.1)")

    # two_moons observation 1: the grid posterior against the shipped reference.
    x_o, ref = observation("two_moons", 1), reference_samples("two_moons", 1)
    edges, prob = two_moons_grid_posterior(x_o, a.n_grid)
    grid = sample_grid_posterior(edges, prob, NUM_SAMPLES, np.random.Generator(np.random.PCG64(0)))
    report(np.abs(grid.mean(axis=0) - ref.mean(axis=0)).max() < 0.05,
           f"two_moons observation 1: grid posterior ({a.n_grid}²) mean {np.round(grid.mean(axis=0), 4)}, "
           f"reference mean {np.round(ref.mean(axis=0), 4)}")
    if a.no_c2st:
        return sys.exit(1 if failures else 0)

    t = time.perf_counter()
    acc = c2st(ref, grid, a.jobs)
    report(acc < 0.53, f"two_moons observation 1: C2ST(reference, grid posterior) = {acc:.4f} (≈ 0.5), "
                       f"{time.perf_counter() - t:.1f} s")

    # C2ST itself: two random halves of one reference, and a reference against a shifted copy.
    rng = np.random.Generator(np.random.PCG64(0))
    for task in TASKS:
        ref = reference_samples(task, 1)
        perm = rng.permutation(len(ref))
        half = len(ref) // 2
        t = time.perf_counter()
        acc = c2st(ref[perm[:half]], ref[perm[half:]], a.jobs)
        report(abs(acc - 0.5) < 0.03, f"{task} observation 1: C2ST of two random halves of the reference "
                                      f"= {acc:.4f} (≈ 0.5), {time.perf_counter() - t:.1f} s")
        t = time.perf_counter()
        acc = c2st(ref, ref + 3 * ref.std(axis=0, ddof=1), a.jobs)
        report(acc > 0.95, f"{task} observation 1: C2ST against the reference shifted by 3 std = {acc:.4f} "
                           f"(≈ 1), {time.perf_counter() - t:.1f} s")
    sys.exit(1 if failures else 0)


def installed_versions(names):
    import importlib.metadata as md
    return {name: md.version(name) for name in names}


def cmd_install_sbi(a):
    pins = installed_versions(["torch", "numpy", "scikit-learn"])
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write("".join(f"{k}=={v}\n" for k, v in pins.items()))
        constraints = f.name
    try:
        cmd = [sys.executable, "-m", "pip", "install", "-c", constraints, f"sbi=={a.version}"]
        log(f"install-sbi: pinning {', '.join(f'{k}=={v}' for k, v in pins.items())}\n  {shlex.join(cmd)}")
        rc = subprocess.run(cmd).returncode
    finally:
        os.unlink(constraints)
    if rc != 0:
        sys.exit(f"install-sbi: pip failed (exit {rc}); nothing pinned was changed")
    after = installed_versions(pins)
    if after != pins:
        sys.exit(f"install-sbi: versions changed: {pins} -> {after}")
    print(f"sbi {installed_versions(['sbi'])['sbi']} installed; {', '.join(f'{k} {v}' for k, v in after.items())} kept")


def import_sbi():
    """The `sbi` package, not this file: Python puts this script's folder first on sys.path, where
    `import sbi` would find scripts/sbi.py."""
    here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
    sys.modules.pop("sbi", None)
    import sbi
    return sbi


class NullTracker:
    """An sbi training tracker that records nothing: sbi's default writes TensorBoard logs to ./sbi-logs."""
    log_dir = None

    def log_metric(self, name, value, step=None):
        pass

    def log_metrics(self, metrics, step=None):
        pass

    def log_params(self, params):
        pass

    def add_figure(self, name, figure, step=None):
        pass

    def flush(self):
        pass


def cmd_npe(a):
    import torch
    try:
        sbi = import_sbi()
        from sbi.inference import NPE
        from sbi.utils import BoxUniform
    except ImportError as e:
        sys.exit(f"npe: the sbi package is missing ({e}); run `{sys.argv[0]} install-sbi` first")
    torch.set_num_threads(a.threads)
    obs = parse_obs(a.obs)
    d_theta = TASKS[a.task][0]
    if a.task == "two_moons":
        prior = BoxUniform(low=-torch.ones(d_theta), high=torch.ones(d_theta))
    else:
        prior = torch.distributions.MultivariateNormal(torch.zeros(d_theta), GL_VAR * torch.eye(d_theta))
    theta, x = simulate(a.task, a.n, a.seed)
    torch.manual_seed(a.seed)
    inference = NPE(prior=prior, show_progress_bars=False, tracker=NullTracker())
    estimator = inspect.signature(NPE).parameters["density_estimator"].default
    with contextlib.redirect_stdout(sys.stderr):  # sbi prints its convergence note: stdout is the JSON line's
        t = time.perf_counter()
        inference.append_simulations(torch.as_tensor(theta, dtype=torch.float32),
                                     torch.as_tensor(x, dtype=torch.float32)).train()
        train_s = time.perf_counter() - t
        log(f"\nnpe: sbi {sbi.__version__} trained on {a.n} {a.task} simulations in {train_s:.1f} s")
        posterior = inference.build_posterior()
        blocks = []
        for i in obs:
            x_o = torch.as_tensor(observation(a.task, i), dtype=torch.float32)
            blocks.append(posterior.sample((NUM_SAMPLES,), x=x_o, show_progress_bars=False).numpy())
    scores = score_blocks(a.task, obs, blocks, a.jobs)
    print(result_line(a.task, a.n, a.seed, f"sbi {sbi.__version__} NPE ({estimator})", train_s, obs, scores))


def run_rnvp(cmd):
    """Runs one rnvp command, its output on stderr (stdout stays the JSON line); exits on failure."""
    log(f"rnvp: {shlex.join(cmd)}")
    try:
        rc = subprocess.run(cmd, stdout=sys.stderr).returncode
    except OSError as e:
        sys.exit(f"rnvp: cannot run {cmd[0]}: {e}")
    if rc != 0:
        sys.exit(f"rnvp: `{shlex.join(cmd)}` failed with exit status {rc}")


def cmd_rnvp(a):
    obs = parse_obs(a.obs)
    d_theta, d_x = TASKS[a.task]
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    sims, obs_file, ckpt, post = work / "sims.csv", work / "obs.csv", work / "q.safetensors", work / "post.csv"
    theta, x = simulate(a.task, a.n, a.seed)
    write_csv(sims, np.concatenate([theta, x], axis=1))
    x_obs = np.stack([observation(a.task, i) for i in obs])
    write_csv(obs_file, x_obs)

    train = [a.rnvp, "train", "--data", str(sims), "--context", str(d_x), "--preset", a.preset, "--out", str(ckpt)]
    if a.task == "two_moons":
        train.append("--bounds=-1,1")  # the prior's box; '=' so the value's leading '-' is not an option
    extra = shlex.split(a.extra)
    train += extra
    t = time.perf_counter()
    run_rnvp(train)
    train_s = time.perf_counter() - t
    run_rnvp([a.rnvp, "sample", "--checkpoint", str(ckpt), "-n", str(NUM_SAMPLES), "--context-file", str(obs_file),
              "--out", str(post), "--seed", str(a.seed)])

    samples = read_csv(post)
    if samples.shape[0] != NUM_SAMPLES * len(obs) or samples.shape[1] < d_theta:
        sys.exit(f"rnvp: {post} has shape {samples.shape}; expected {NUM_SAMPLES * len(obs)} rows "
                 f"({NUM_SAMPLES} per observation) of at least {d_theta} columns")
    blocks = np.split(samples, len(obs))
    if samples.shape[1] >= d_theta + d_x:  # the appended context must be each block's observation
        for i, block, x_o in zip(obs, blocks, x_obs):
            if not np.allclose(block[:, d_theta:d_theta + d_x], x_o, rtol=1e-5, atol=1e-6):
                sys.exit(f"rnvp: {post}: the context columns of block {obs.index(i) + 1} are not observation {i}")
    scores = score_blocks(a.task, obs, [b[:, :d_theta] for b in blocks], a.jobs)
    method = " ".join(["rnvp", f"--preset {a.preset}"] + extra)
    print(result_line(a.task, a.n, a.seed, method, train_s, obs, scores))


def cmd_table(a):
    rows = []
    for name in a.json:
        with open(name) as f:
            for line in f:
                if "{" in line:  # a result line, perhaps after other output on the same line
                    rows.append(json.loads(line[line.index("{"):]))
    rows.sort(key=lambda r: (r["task"], r["n"]))
    print("| task | simulations | method | mean C2ST | min–max | train s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        n = r["n"]
        sims = f"10^{round(math.log10(n))}" if n > 0 and 10 ** round(math.log10(n)) == n else str(n)
        obs = r.get("obs", list(range(1, NUM_OBSERVATIONS + 1)))
        if len(obs) != NUM_OBSERVATIONS:
            sims += f" (obs {','.join(map(str, obs))})"
        print(f"| {r['task']} | {sims} | {r.get('method', '?')} | {r['mean']:.3f} | "
              f"{min(r['c2st']):.3f}–{max(r['c2st']):.3f} | {r['train_s']:.1f} |")


def positive(text):
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return n


def main(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)

    def task_arg(q):
        q.add_argument("--task", choices=sorted(TASKS), required=True)

    def jobs_arg(q):
        q.add_argument("--jobs", type=positive, default=1, help="C2ST's cross-validation folds run in parallel")

    def run_args(q):
        task_arg(q)
        q.add_argument("--n", type=positive, required=True, help="simulations")
        q.add_argument("--seed", type=int, default=0)
        q.add_argument("--obs", help="observations to score, e.g. 1,2,3 (default: all 10)")
        jobs_arg(q)

    q = sub.add_parser("simulate", help="N rows [θ, x] from the prior and the simulator")
    task_arg(q)
    q.add_argument("--n", type=positive, required=True)
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--out", required=True)
    sub.add_parser("fetch", help="download sbibm's wheel once; unpack observations and reference samples")
    q = sub.add_parser("observations", help="the task's 10 observations, one row each")
    task_arg(q)
    q.add_argument("--out", required=True)
    q = sub.add_parser("reference", help="sbibm's reference posterior samples for one observation")
    task_arg(q)
    q.add_argument("--obs", type=int, required=True)
    q.add_argument("--out", required=True)
    q = sub.add_parser("c2st", help="sbibm's C2ST accuracy of samples against a reference")
    q.add_argument("--ref", required=True)
    q.add_argument("--samples", required=True)
    q.add_argument("--cols", type=int, help="use only the first K columns of the samples")
    jobs_arg(q)
    q = sub.add_parser("check", help="the reference files against closed forms; C2ST sanity")
    q.add_argument("--n-grid", type=int, default=2000, help="cells per axis of two_moons' grid posterior")
    q.add_argument("--no-c2st", action="store_true", help="skip the (slow) C2ST checks")
    jobs_arg(q)
    q = sub.add_parser("install-sbi", help="pip-install sbi keeping torch, numpy and scikit-learn as they are")
    q.add_argument("--version", default=SBI_VERSION)
    q = sub.add_parser("npe", help="sbi's default NPE on the benchmark; one JSON line")
    run_args(q)
    q.add_argument("--threads", type=int, default=int(os.environ.get("RNVP_THREADS", "1")),
                   help="torch's threads (default: RNVP_THREADS or 1)")
    q = sub.add_parser("rnvp", help="rnvp's CLI on the benchmark; one JSON line")
    run_args(q)
    q.add_argument("--rnvp", required=True, help="path of the rnvp binary")
    q.add_argument("--preset", default="sbi")
    q.add_argument("--extra", default="",
                   help="more flags for `rnvp train`, one string (--extra=\"--flag\" when it is a single flag)")
    q.add_argument("--work", required=True, help="folder for sims.csv, obs.csv, q.safetensors, post.csv")
    q = sub.add_parser("table", help="markdown table of JSON result lines")
    q.add_argument("--json", nargs="+", required=True)
    a = p.parse_args(argv)
    {"simulate": cmd_simulate, "fetch": cmd_fetch, "observations": cmd_observations, "reference": cmd_reference,
     "c2st": cmd_c2st, "check": cmd_check, "install-sbi": cmd_install_sbi, "npe": cmd_npe, "rnvp": cmd_rnvp,
     "table": cmd_table}[a.cmd](a)


if __name__ == "__main__":
    main(sys.argv[1:])
