"""A batched trainer for slowly-changing regression: many seeds x many methods in one set of numpy arrays.

The learner is upstream's 20 -> 5 -> 1 network (or the 20 -> 1 linear baseline), trained online with SGD,
batch size 1 and squared error, the error being recorded *before* the update, exactly as upstream's
``expr.py``. Instead of one autograd loop per seed, every run is a slice of a batched tensor of shape
``[runs, ...]`` and the gradients are written out by hand, so one Python step advances hundreds of runs
(see ``benchmarks/bench_scr.py`` for the speed-up over a one-seed ``autograd`` + ``optim.SGD`` loop).

Methods (per run; all use plain SGD, step size ``lr``):

- ``bp``: backprop.
- ``l2``: coupled weight decay, ``grad += weight_decay * p`` on every weight and bias (torch ``SGD`` semantics).
- ``snp``: shrink-and-perturb = the same L2 term, then ``N(0, perturb_scale^2)`` noise added to every weight and
  bias after each step (upstream ``Backprop`` with ``perturb_scale``; no multiplicative shrink factor).
- ``cbp``: continual backprop = BP plus generate-and-test after each step, on the hidden features of this
  step's forward pass. Semantics: those of :class:`lopbook.algos.ContinualBackprop` with its defaults
  (``utility="contribution"``, bias correction on, counts carried over on the eligible basis, no bias transfer)
  and ``init="kaiming_uniform"`` (upstream's SCR init; the engine's own default ``"default"`` is torch's
  ``U(+-1/sqrt(fan_in))``). ``tests/test_scr.py`` checks that both replace the same units at the same steps:

  1. ``age += 1``; utility ``u <- eta u + (1 - eta) |v_j| |h_j|`` (contribution: outgoing weight magnitude
     times activation magnitude), bias-corrected ``u_hat = u / (1 - eta^age)``;
  2. eligible units: ``age > maturity_threshold`` (strict; m = 100 here, *not* the m = 10 that upstream's SCR
     runner actually used because it read the wrong config key);
  3. owed replacements ``count += replacement_rate * n_eligible``; replace ``floor(count)`` eligible units
     with the smallest ``u_hat`` and subtract that (deterministic carry-over, the paper's Algorithm 1);
  4. a replaced unit gets incoming weights redrawn from the initial distribution, bias 0, outgoing weight 0,
     utility 0 and age 0. Upstream's next-layer bias "correction" added exactly 0 and is not ported.

Initialisation follows upstream's ``FFNN``: hidden weights kaiming-uniform for the activation
(``U(-gain sqrt(3/20), +gain sqrt(3/20))``; swish and elu use relu's gain), output weights kaiming-uniform
"linear" (``U(-sqrt(3/5), +sqrt(3/5))``), biases 0. The linear baseline is 20 -> 1 with ``U(-sqrt(3/20), ..)``.

Seeding: for seed ``s`` every method sees the same problem stream, and the same initial weights (drawn as
``U(-1, 1)`` from a stream of ``s`` and scaled by the activation's bound), so comparisons are paired as in
upstream's shared problems. S&P noise and CBP re-initialisations come from per-run streams derived from
``(s, method label)``, so a run's numbers do not depend on which other runs share the batch.

Logged per bin of ``bin_size`` examples (20,000 = 2T, upstream's plot bin): mean squared error; fraction of
hidden units that are inactive on the current example, averaged over the bin (relu family: ``h <= 0``, which
for relu is ``h == 0``; tanh: ``|h| > 0.9``; sigmoid: ``|2h - 1| > 0.9``, the same criterion); and at the end of
each bin, on a fixed probe batch of uniformly random inputs: effective rank of the hidden features, fraction
of units inactive on *every* probe input, mean ``|W|`` of the hidden and the output layer; plus cumulative
CBP replacements.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from lopbook.problems.scr import SCRStream

ACTIVATIONS = ("relu", "tanh", "sigmoid", "elu", "leaky_relu", "swish", "linear")
METHODS = ("bp", "l2", "snp", "cbp")
LEAKY_SLOPE = 0.01  # torch.nn.LeakyReLU default, as upstream
# kaiming_uniform_ gains used by upstream's FFNN (leaky_relu with a = 0, swish and elu as relu)
GAINS = {"relu": math.sqrt(2.0), "tanh": 5.0 / 3.0, "sigmoid": 1.0, "elu": math.sqrt(2.0),
         "leaky_relu": math.sqrt(2.0), "swish": math.sqrt(2.0), "linear": 1.0}
_TAG_INIT, _TAG_NOISE, _TAG_CBP = 21, 22, 23
_EPS = 1e-9  # the same rounding slack as lopbook.algos.ContinualBackprop


@dataclass(frozen=True)
class MethodSpec:
    """One learner configuration; every seed is trained with it.

    Args:
        label: the name used in results and plots (e.g. ``"bp_relu"``).
        method: ``"bp"``, ``"l2"``, ``"snp"`` or ``"cbp"``.
        activation: one of :data:`ACTIVATIONS` (``"linear"`` = the 20 -> 1 linear baseline).
        lr: SGD step size.
        weight_decay: coupled L2 coefficient (``l2`` and ``snp``).
        perturb_scale: S&P noise standard deviation.
        replacement_rate / maturity_threshold / decay_rate: CBP's rho, m and eta.
    """

    label: str
    method: str = "bp"
    activation: str = "relu"
    lr: float = 0.01
    weight_decay: float = 0.0
    perturb_scale: float = 0.0
    replacement_rate: float = 1e-4
    maturity_threshold: int = 100
    decay_rate: float = 0.99

    def validate(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"{self.label}: unknown method {self.method!r}; choose one of {METHODS}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"{self.label}: unknown activation {self.activation!r}; choose one of {ACTIVATIONS}")
        if self.activation == "linear" and self.method != "bp":
            raise ValueError(f"{self.label}: the linear baseline has no hidden units; use method 'bp'")
        if self.lr <= 0:
            raise ValueError(f"{self.label}: lr must be > 0, got {self.lr}")
        if self.weight_decay < 0 or self.perturb_scale < 0:
            raise ValueError(f"{self.label}: weight_decay and perturb_scale must be >= 0")
        if self.method == "bp" and (self.weight_decay or self.perturb_scale):
            raise ValueError(f"{self.label}: method 'bp' takes no weight_decay/perturb_scale; use 'l2' or 'snp'")
        if self.method == "cbp":
            if not 0 <= self.replacement_rate <= 1:
                raise ValueError(f"{self.label}: replacement_rate must be in [0, 1]")
            if not 0 <= self.decay_rate < 1:
                raise ValueError(f"{self.label}: decay_rate must be in [0, 1)")
            if self.maturity_threshold < 0:
                raise ValueError(f"{self.label}: maturity_threshold must be >= 0")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MethodSpec:
        spec = cls(**d)
        spec.validate()
        return spec


def init_bounds(activation: str, n_inputs: int = 20, n_hidden: int = 5) -> tuple[float, float]:
    """Upstream's kaiming-uniform bounds: (hidden or linear-baseline weights, output weights)."""
    return GAINS[activation] * math.sqrt(3.0 / n_inputs), math.sqrt(3.0 / n_hidden)


def activate(name: str, pre: np.ndarray, out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(h, dh/dpre)`` for a hidden activation; ``h`` is written into ``out`` when given."""
    if name == "relu":
        h = np.maximum(pre, 0.0, out=out)
        return h, pre > 0
    if name == "tanh":
        h = np.tanh(pre, out=out)
        return h, 1.0 - h * h
    if name == "sigmoid":
        h = np.exp(-pre)
        h += 1.0
        h = np.reciprocal(h, out=out)
        return h, h * (1.0 - h)
    if name == "elu":
        pos = pre > 0
        neg = np.expm1(np.minimum(pre, 0.0))
        h = np.where(pos, pre, neg)
        if out is not None:
            out[...] = h
            h = out
        return h, np.where(pos, 1.0, neg + 1.0)
    if name == "leaky_relu":
        slope = np.where(pre > 0, 1.0, LEAKY_SLOPE)
        h = np.multiply(pre, slope, out=out)
        return h, slope
    if name == "swish":
        s = np.exp(-pre)
        s += 1.0
        np.reciprocal(s, out=s)
        h = np.multiply(pre, s, out=out)
        return h, s + h * (1.0 - s)
    raise ValueError(f"unknown activation {name!r}; choose one of {ACTIVATIONS}")


def inactive(name: str, h: np.ndarray) -> np.ndarray:
    """Boolean mask of inactive units: dead side of the relu family, saturated for tanh/sigmoid."""
    if name == "tanh":
        return np.abs(h) > 0.9
    if name == "sigmoid":
        return np.abs(2.0 * h - 1.0) > 0.9
    return h <= 0.0


def effective_rank(features: np.ndarray) -> np.ndarray:
    """Roy & Vetterli effective rank of each (N x d) matrix in a batch (..., N, d); 0 for an all-zero matrix."""
    s = np.linalg.svd(features, compute_uv=False)
    total = s.sum(-1, keepdims=True)
    p = np.divide(s, total, out=np.zeros_like(s), where=total > 0)
    ent = -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=-1)
    return np.where(total[..., 0] > 0, np.exp(ent), 0.0)


def _one_blas_thread() -> Any:
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # optional: only a speed matter
        import contextlib

        return contextlib.nullcontext()
    return threadpool_limits(1)


class _Group:
    """All hidden-layer runs (or all linear-baseline runs): one batch of contiguous method slices.

    Runs with different activations share one batch, so the forward pass and the update are one numpy call
    each for every run; only the activation is applied per contiguous block of runs (``act_slices``).
    """

    def __init__(self, specs: list[tuple[int, MethodSpec]], seeds: Sequence[int],
                 n_inputs: int, n_hidden: int, dtype: Any):
        self.linear = specs[0][1].activation == "linear"
        if any((sp.activation == "linear") != self.linear for _, sp in specs):
            raise ValueError("linear and hidden-layer learners cannot share a batch")
        self.specs = specs  # (method index, spec), each spec covers len(seeds) consecutive runs
        S = len(seeds)
        self.R = R = S * len(specs)
        self.seed_idx = np.tile(np.arange(S), len(specs))
        self.run_seeds = [int(s) for s in seeds] * len(specs)
        self.method_idx = np.repeat([mi for mi, _ in specs], S)
        self.slices = [(k * S, (k + 1) * S, mi, spec) for k, (mi, spec) in enumerate(specs)]
        self.act_slices: list[tuple[int, int, str]] = []  # maximal blocks of runs with one activation
        for a, b, _, sp in self.slices:
            if self.act_slices and self.act_slices[-1][2] == sp.activation and self.act_slices[-1][1] == a:
                self.act_slices[-1] = (self.act_slices[-1][0], b, sp.activation)
            else:
                self.act_slices.append((a, b, sp.activation))
        self.single_act = len(self.act_slices) == 1
        self.two_lr = np.repeat([2.0 * sp.lr for _, sp in specs], S).astype(dtype)
        self.decays = [(a, b, 1.0 - sp.lr * sp.weight_decay) for a, b, _, sp in self.slices if sp.weight_decay > 0]
        self.noisy = [(a, b, sp.perturb_scale) for a, b, _, sp in self.slices if sp.perturb_scale > 0]
        self.cbps = [(a, b, sp) for a, b, _, sp in self.slices if sp.method == "cbp"]
        self.n_in, self.n_h, self.dtype = n_inputs, n_hidden, dtype
        self.bound_w = np.repeat([init_bounds(sp.activation, n_inputs, n_hidden)[0] for _, sp in specs], S)
        bv = init_bounds("relu", n_inputs, n_hidden)[1]
        # Same U(-1, 1) draws for every method and activation of a seed: paired comparisons.
        W1 = np.empty((R, n_hidden if not self.linear else 1, n_inputs), dtype=dtype)
        v = np.empty((R, n_hidden), dtype=dtype)
        for r, s in enumerate(self.run_seeds):
            rng = np.random.default_rng([s, _TAG_INIT])
            u_w = rng.uniform(-1.0, 1.0, size=(n_hidden, n_inputs))
            u_v = rng.uniform(-1.0, 1.0, size=n_hidden)
            W1[r] = (u_w[:1] if self.linear else u_w) * self.bound_w[r]
            v[r] = u_v * bv
        self.W1 = W1
        self.K, self.S = len(specs), S
        # (method, seed, unit, input) view: one seed's input broadcasts over every method, with no copies
        self.W1k = W1.reshape(self.K, S, W1.shape[1], n_inputs)
        self.b1 = np.zeros((R, W1.shape[1]), dtype=dtype)
        self.v = v
        self.c = np.zeros(R, dtype=dtype)
        # per-run streams for S&P noise and CBP re-initialisation
        # keyed by the label, not the position, so a run does not depend on the other methods in the list
        tag = np.repeat([zlib.crc32(sp.label.encode()) for _, sp in specs], S)
        self.noise_rng = {r: np.random.default_rng([self.run_seeds[r], _TAG_NOISE, int(tag[r])])
                          for a, b, _ in self.noisy for r in range(a, b)}
        self.cbp_rng = {r: np.random.default_rng([self.run_seeds[r], _TAG_CBP, int(tag[r])])
                        for a, b, _ in self.cbps for r in range(a, b)}
        self.util = np.zeros((R, n_hidden), dtype=dtype)
        self.age = np.zeros((R, n_hidden), dtype=np.int64)
        self.owed = np.zeros(R, dtype=np.float64)
        self.replaced = np.zeros(R, dtype=np.int64)
        self.noise: list[np.ndarray] = []

    # --- one online step for every run of the group -------------------------------------------------------
    def step(self, x: np.ndarray, y: np.ndarray, e2_out: np.ndarray, h_out: np.ndarray | None, j: int) -> None:
        """Forward, record squared error (pre-update), SGD update, then S&P noise and CBP.

        ``x`` (seeds, n_in) and ``y`` (seeds,) are this step's example of each seed's problem.
        """
        W1k, b1, v = self.W1k, self.b1, self.v
        K, S, n_out = self.K, self.S, W1k.shape[2]
        pre = np.einsum("ksij,sj->ksi", W1k, x).reshape(self.R, n_out)
        pre += b1
        if self.linear:
            e = pre[:, 0]  # the linear baseline's only bias is b1
            e.reshape(K, S)[...] -= y
            np.multiply(e, e, out=e2_out)
            ge = self.two_lr * e
            self._decay()
            W1k -= ge.reshape(K, S, 1, 1) * x[None, :, None, :]
            b1 -= ge[:, None]
            self._perturb(j)
            return
        if self.single_act:
            h, dh = activate(self.act_slices[0][2], pre, out=h_out)
        else:
            h = h_out if h_out is not None else np.empty_like(pre)
            dh = np.empty_like(pre)
            for a, b, act in self.act_slices:
                _, dh[a:b] = activate(act, pre[a:b], out=h[a:b])
        e = np.einsum("ri,ri->r", v, h)
        e += self.c
        e.reshape(K, S)[...] -= y
        np.multiply(e, e, out=e2_out)
        ge = self.two_lr * e
        dpre = ge[:, None] * v
        dpre *= dh
        self._decay()
        v -= ge[:, None] * h
        self.c -= ge
        W1k -= dpre.reshape(K, S, n_out, 1) * x[None, :, None, :]
        b1 -= dpre
        self._perturb(j)
        for a, b, spec in self.cbps:
            self._gen_and_test(a, b, spec, h[a:b])

    def _decay(self) -> None:
        for a, b, f in self.decays:  # coupled L2: p <- p - lr (g + lam p) = p (1 - lr lam) - lr g
            self.W1[a:b] *= f
            self.b1[a:b] *= f
            self.v[a:b] *= f
            self.c[a:b] *= f

    def _perturb(self, j: int) -> None:
        for (a, b, _), z in zip(self.noisy, self.noise, strict=False):
            zj = z[j]
            nw = self.W1.shape[1] * self.n_in
            nb = self.W1.shape[1]
            self.W1[a:b] += zj[:, :nw].reshape(b - a, -1, self.n_in)
            self.b1[a:b] += zj[:, nw:nw + nb]
            if not self.linear:
                self.v[a:b] += zj[:, nw + nb:nw + nb + self.n_h]
                self.c[a:b] += zj[:, -1]

    def draw_noise(self, n_steps: int) -> None:
        """Pre-draw this chunk's S&P noise, one stream per run (scaled by sigma)."""
        n_par = self.W1.shape[1] * (self.n_in + 1) + (0 if self.linear else self.n_h + 1)
        self.noise = []
        for a, b, sigma in self.noisy:
            z = np.empty((n_steps, b - a, n_par), dtype=self.dtype)
            for r in range(a, b):
                z[:, r - a] = self.noise_rng[r].standard_normal((n_steps, n_par)) * sigma
            self.noise.append(z)

    def _gen_and_test(self, a: int, b: int, spec: MethodSpec, h: np.ndarray) -> None:
        eta = spec.decay_rate
        util, age = self.util[a:b], self.age[a:b]
        age += 1
        util *= eta
        util += (1.0 - eta) * np.abs(self.v[a:b]) * np.abs(h)
        if spec.replacement_rate == 0:
            return
        owed = self.owed[a:b]
        owed += spec.replacement_rate * np.count_nonzero(age > spec.maturity_threshold, axis=1)
        if owed.max() < 1.0 - _EPS:
            return
        for i in np.flatnonzero(owed >= 1.0 - _EPS):
            self.replace_units(a + i, spec)

    def replace_units(self, r: int, spec: MethodSpec) -> list[int]:
        """Replace ``floor(owed)`` eligible units of run ``r`` with the lowest bias-corrected utility."""
        k = int(math.floor(self.owed[r] + _EPS))  # 0.1 + ... + 0.1 must give 1, not 0.999..
        eligible = np.flatnonzero(self.age[r] > spec.maturity_threshold)
        k = min(k, eligible.size)
        self.owed[r] -= k
        if k == 0:
            return []
        u_hat = self.util[r, eligible] / (1.0 - spec.decay_rate ** self.age[r, eligible])
        chosen = eligible[np.argsort(u_hat, kind="stable")[:k]]
        rng = self.cbp_rng[r]
        self.W1[r, chosen] = rng.uniform(-self.bound_w[r], self.bound_w[r], size=(k, self.n_in))
        self.b1[r, chosen] = 0.0
        self.v[r, chosen] = 0.0
        self.util[r, chosen] = 0.0
        self.age[r, chosen] = 0
        self.replaced[r] += k
        return [int(u) for u in chosen]

    # --- metrics -------------------------------------------------------------------------------------------
    def probe_metrics(self, probe: np.ndarray) -> dict[str, np.ndarray]:
        """Effective rank, probe-dead fraction and weight magnitudes; ``probe`` is (runs, N, n_in)."""
        w_in = np.abs(self.W1).mean(axis=(1, 2))
        if self.linear:
            nan = np.full(self.R, np.nan)
            return {"erank": nan, "dead_probe": nan, "w_in": w_in, "w_out": nan}
        pre = np.einsum("rnj,rij->rni", probe, self.W1) + self.b1[:, None, :]
        dead = np.empty(self.R)
        for a, b, act in self.act_slices:
            h, _ = activate(act, pre[a:b])
            pre[a:b] = h
            dead[a:b] = inactive(act, h).all(axis=1).mean(1)
        return {"erank": effective_rank(pre), "dead_probe": dead,
                "w_in": w_in, "w_out": np.abs(self.v).mean(1)}

    # --- checkpoints ---------------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {"W1": self.W1, "b1": self.b1, "v": self.v, "c": self.c, "util": self.util, "age": self.age,
                "owed": self.owed, "replaced": self.replaced,
                "noise_rng": {r: g.bit_generator.state for r, g in self.noise_rng.items()},
                "cbp_rng": {r: g.bit_generator.state for r, g in self.cbp_rng.items()}}

    def load_state(self, st: dict[str, Any]) -> None:
        for k in ("W1", "b1", "v", "c", "util", "age", "owed", "replaced"):
            getattr(self, k)[...] = st[k]
        for r, s in st["noise_rng"].items():
            self.noise_rng[r].bit_generator.state = s
        for r, s in st["cbp_rng"].items():
            self.cbp_rng[r].bit_generator.state = s


METRICS = ("err", "inactive", "erank", "dead_probe", "w_in", "w_out", "replacements")


class BatchedSCRTrainer:
    """Train ``len(methods) x len(seeds)`` runs of slowly-changing regression at once.

    Args:
        methods: the configurations (see :class:`MethodSpec`); labels must be unique.
        seeds: problem/learner seeds; run ``(method, seed)`` sees problem ``seed``.
        variant / period: the SCR variant and ``T`` (see :class:`~lopbook.problems.scr.SCRStream`).
        bin_size: examples per logged bin (20,000 = 2T, as upstream's plot).
        chunk: examples generated and buffered at a time (must divide ``bin_size``).
        probe_size: size of the fixed random probe batch for the rank and dead-unit metrics.
        n_hidden: learner width (5 as upstream).
    """

    def __init__(self, methods: Sequence[MethodSpec], seeds: Sequence[int], *, variant: str = "redraw",
                 period: int = 10_000, bin_size: int = 20_000, chunk: int = 1_000, probe_size: int = 500,
                 n_hidden: int = 5, dtype: Any = np.float64):
        if not methods:
            raise ValueError("give at least one MethodSpec")
        if not seeds:
            raise ValueError("give at least one seed")
        labels = [m.label for m in methods]
        if len(set(labels)) != len(labels):
            raise ValueError(f"method labels must be unique, got {labels}")
        for m in methods:
            m.validate()
        if bin_size % chunk:
            raise ValueError(f"chunk ({chunk}) must divide bin_size ({bin_size})")
        self.methods, self.seeds = list(methods), [int(s) for s in seeds]
        self.bin_size, self.chunk, self.dtype = bin_size, chunk, dtype
        self.streams = [SCRStream(s, variant=variant, period=period) for s in self.seeds]
        n_in = self.streams[0].n_inputs
        order = sorted(range(len(self.methods)), key=lambda i: ACTIVATIONS.index(self.methods[i].activation))
        hidden = [(i, self.methods[i]) for i in order if self.methods[i].activation != "linear"]
        linear = [(i, self.methods[i]) for i in order if self.methods[i].activation == "linear"]
        self.groups = [_Group(specs, self.seeds, n_in, n_hidden, dtype) for specs in (hidden, linear) if specs]
        probes = np.stack([s.probe_inputs(probe_size, dtype) for s in self.streams])
        self._probes = [probes[g.seed_idx] for g in self.groups]
        self.t = 0
        self.n_bins_done = 0
        self.history: dict[str, list[np.ndarray]] = {k: [] for k in METRICS}
        self._acc_err = [np.zeros(g.R) for g in self.groups]
        self._acc_inactive = [np.zeros(g.R) for g in self.groups]

    @property
    def n_runs(self) -> int:
        return sum(g.R for g in self.groups)

    def train(self, n_examples: int, on_chunk: Callable[[BatchedSCRTrainer], None] | None = None,
              on_bin: Callable[[BatchedSCRTrainer], None] | None = None) -> None:
        """Advance every run until ``n_examples`` examples have been seen in total (resumes from ``self.t``)."""
        if n_examples % self.bin_size:
            raise ValueError(f"n_examples ({n_examples}) must be a multiple of bin_size ({self.bin_size})")
        C = self.chunk
        bufs_e = [np.empty((C, g.R), dtype=self.dtype) for g in self.groups]
        bufs_h = [None if g.linear else np.empty((C, g.R, g.n_h), dtype=self.dtype) for g in self.groups]
        while self.t < n_examples:
            with _one_blas_thread():  # BLAS threads only fight each other on a small, shared CPU
                xs, ys = zip(*(s.next_chunk(C, self.dtype) for s in self.streams), strict=True)
            X, Y = np.stack(xs, 1), np.stack(ys, 1)  # (C, seeds, n_in), (C, seeds)
            for gi, g in enumerate(self.groups):
                g.draw_noise(C)
                E, H = bufs_e[gi], bufs_h[gi]
                step = g.step
                if H is None:
                    for j in range(C):
                        step(X[j], Y[j], E[j], None, j)
                else:
                    for j in range(C):
                        step(X[j], Y[j], E[j], H[j], j)
                    for a, b, act in g.act_slices:
                        self._acc_inactive[gi][a:b] += inactive(act, H[:, a:b]).mean(2).sum(0)
                self._acc_err[gi] += E.sum(0)
            self.t += C
            if self.t % self.bin_size == 0:
                self._close_bin()
                if on_bin is not None:
                    on_bin(self)
            if on_chunk is not None:
                on_chunk(self)

    def _close_bin(self) -> None:
        row: dict[str, list[np.ndarray]] = {k: [] for k in METRICS}
        for gi, g in enumerate(self.groups):
            row["err"].append(self._acc_err[gi] / self.bin_size)
            row["inactive"].append(self._acc_inactive[gi] / self.bin_size if not g.linear
                                   else np.full(g.R, np.nan))
            for k, val in g.probe_metrics(self._probes[gi]).items():
                row[k].append(val)
            row["replacements"].append(g.replaced.astype(float))
            self._acc_err[gi][:] = 0
            self._acc_inactive[gi][:] = 0
        for k in METRICS:
            self.history[k].append(self._to_grid(row[k]))
        self.n_bins_done += 1

    def _to_grid(self, per_group: list[np.ndarray]) -> np.ndarray:
        """Per-group run vectors -> (n_methods, n_seeds)."""
        out = np.full((len(self.methods), len(self.seeds)), np.nan)
        for g, vals in zip(self.groups, per_group, strict=False):
            for a, b, mi, _ in g.slices:
                out[mi] = vals[a:b]
        return out

    def results(self) -> dict[str, np.ndarray]:
        """Logged metrics, each of shape (n_methods, n_seeds, n_bins), plus labels and bin ends."""
        out = {k: np.stack(v, -1) if v else np.zeros((len(self.methods), len(self.seeds), 0))
               for k, v in self.history.items()}
        out["labels"] = np.array([m.label for m in self.methods])
        out["bin_end"] = np.arange(1, self.n_bins_done + 1) * self.bin_size
        return out

    # --- checkpoints ---------------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """The complete training state (parameters, RNG streams, problem streams, logs)."""
        return {"t": self.t, "n_bins_done": self.n_bins_done, "history": self.history,
                "streams": [s.state() for s in self.streams], "groups": [g.state() for g in self.groups],
                "methods": [asdict(m) for m in self.methods], "seeds": self.seeds}

    def load_state(self, st: dict[str, Any]) -> None:
        if st["seeds"] != self.seeds or st["methods"] != [asdict(m) for m in self.methods]:
            raise ValueError("checkpoint was made for other methods or seeds; start fresh")
        self.t, self.n_bins_done = int(st["t"]), int(st["n_bins_done"])
        self.history = {k: list(v) for k, v in st["history"].items()}
        for s, ss in zip(self.streams, st["streams"], strict=False):
            s.load_state(ss)
        for g, gs in zip(self.groups, st["groups"], strict=False):
            g.load_state(gs)


def split_state(state: dict[str, Any], seeds: Sequence[int]) -> dict[str, Any]:
    """The part of a :meth:`BatchedSCRTrainer.state` that belongs to ``seeds`` (a subset of its seeds).

    Runs never interact, so a trainer for ``seeds`` loaded with this state continues exactly as those runs
    would have in the whole batch (used to resume a one-process checkpoint in parallel workers).
    """
    all_seeds = [int(s) for s in state["seeds"]]
    missing = sorted(set(int(s) for s in seeds) - set(all_seeds))
    if missing:
        raise ValueError(f"seeds {missing} are not in this state (it has {all_seeds})")
    idx = [all_seeds.index(int(s)) for s in seeds]
    S, n = len(all_seeds), len(idx)
    remap = {k * S + s: k * n + j for j, s in enumerate(idx) for k in range(len(state["methods"]))}

    def part(a: np.ndarray) -> np.ndarray:
        K = a.shape[0] // S
        return np.ascontiguousarray(a.reshape(K, S, *a.shape[1:])[:, idx].reshape(K * n, *a.shape[1:]))

    groups = []
    for g in state["groups"]:
        new = {k: part(np.asarray(v)) for k, v in g.items() if k not in ("noise_rng", "cbp_rng")}
        for k in ("noise_rng", "cbp_rng"):
            new[k] = {remap[r]: st for r, st in g[k].items() if r in remap}
        groups.append(new)
    return {"t": state["t"], "n_bins_done": state["n_bins_done"],
            "history": {k: [np.asarray(a)[:, idx] for a in v] for k, v in state["history"].items()},
            "streams": [state["streams"][i] for i in idx], "groups": groups, "methods": state["methods"],
            "seeds": [all_seeds[i] for i in idx]}
