"""Plasticity metrics with the paper's exact definitions (``upstream-spec.md`` §2.6, ``anchors.md`` §1.4).

Notation: ``Φ`` is an ``N x d`` feature matrix (N probe inputs, d units of one hidden layer, post-activation) and
``σ_1 >= ... >= σ_m`` its singular values. Conv features ``(N, C, H, W)`` have one unit per channel: unit-wise
statistics (dormant, dead, ReDo score) pool over batch *and* spatial positions; the rank metrics need a 2-D
matrix, which :func:`feature_matrix` makes by averaging over space (what global average pooling feeds the
classifier of a ResNet).

Names are explicit because the literature overloads "stable rank":

================================  ===========================================================================
function                          definition (source)
================================  ===========================================================================
:func:`effective_rank`            ``exp(-Σ p_k ln p_k)``, ``p_k = σ_k / Σσ`` (Roy & Vetterli 2007)
:func:`stable_rank_99`            the paper's "stable rank": smallest k with ``Σ_{i<=k} σ_i >= 0.99 Σσ``
                                  (Kumar et al. 2021 "srank"; upstream ``compute_abs_approximate_rank``)
:func:`approximate_rank_99`       the same on ``σ²`` (99 % of variance; Yang et al. 2019; pMNIST only)
:func:`classical_stable_rank`     ``‖Φ‖_F² / ‖Φ‖_2² = Σσ² / σ_1²`` (Rudelson & Vershynin); NOT the paper's
:func:`matrix_rank`               number of non-zero σ (torch's default tolerance)
:func:`feature_rank`              ``#{σ_i(Φ/√N) > ε}`` (Lyle et al. 2022, InFeR)
:func:`dormant_fraction`          units active (``h > 0``) on fewer than 1 % of inputs x positions (paper: CIFAR,
                                  RL); pooled over layers as (dormant units) / (all units)
:func:`dead_fraction`             units with ``h == 0`` on every probe input (paper: pMNIST, SCR)
:func:`redo_dormant_fraction`     ReDo score ``s_i = E|h_i| / mean_k E|h_k| <= τ`` (Sokar et al. 2023)
:func:`saturated_fraction`        entries of a tanh / sigmoid layer within 10 % of an asymptote (SCR tanh: |h|>0.9)
:func:`mean_abs_weight`           mean |w| over weight matrices / conv kernels, no biases (pMNIST, RL, SCR)
:func:`mean_abs_param`            mean |p| over all parameters, biases and norm layers included (CIFAR)
:func:`grad_norm`                 global L2 norm of the current gradients
================================  ===========================================================================

All functions take tensors (any device), compute in float64 by default and return Python floats (or dicts of
them). Feature collection (:func:`collect_features`) and :func:`plasticity_report` run the model in eval mode
under ``no_grad`` and restore each module's train/eval flag afterwards.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from contextlib import contextmanager

import torch
from torch import nn

from .nets.mlp import IdentityActivation

Features = torch.Tensor | Mapping[str, torch.Tensor]

#: Module types treated as hidden activations by :func:`collect_features` (plain ``nn.Identity`` is not one).
ACTIVATION_TYPES: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.Tanh, nn.Sigmoid, nn.ELU, nn.LeakyReLU, nn.SiLU, nn.SELU, nn.GELU, nn.Softplus, nn.ReLU6,
    nn.Hardtanh, nn.Mish, IdentityActivation,
)

# stable/approximate rank: compare cumulative shares with this relative slack, so that boundary cases such as
# k/n == 0.99 follow the mathematical definition despite rounding in the SVD
_REL_TOL = 1e-12


# ----------------------------------------------------------------------------------------------------------
# feature matrices and singular values
# ----------------------------------------------------------------------------------------------------------

def feature_matrix(features: torch.Tensor) -> torch.Tensor:
    """``(N, d)`` features unchanged; ``(N, C, *spatial)`` averaged over the spatial dims to ``(N, C)``."""
    if features.dim() == 2:
        return features
    if features.dim() >= 3:
        return features.flatten(2).mean(dim=2)
    raise ValueError(f"features must be (N, d) or (N, C, ...), got shape {tuple(features.shape)}")


def singular_values(features: torch.Tensor, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Singular values of :func:`feature_matrix` ``(features)``, descending, computed in ``dtype``."""
    return torch.linalg.svdvals(feature_matrix(features).detach().to(dtype))


def _sv(features: torch.Tensor, sv: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    return singular_values(features, dtype) if sv is None else sv


def _effective_rank_sv(sv: torch.Tensor) -> float:
    total = sv.sum()
    if total <= 0:
        return 0.0
    p = sv / total
    p = p[p > 0]  # 0 ln 0 = 0
    return float(torch.exp(-(p * p.log()).sum()))


def _cumulative_rank_sv(values: torch.Tensor, share: float) -> int:
    total = values.sum()
    if total <= 0:
        return 0
    cum = torch.cumsum(values, 0)
    # smallest k with cum[k-1] >= share * total == (number of prefixes still below the share) + 1
    return int((cum < share * total * (1 - _REL_TOL)).sum()) + 1


def effective_rank(features: torch.Tensor, *, sv: torch.Tensor | None = None,
                   dtype: torch.dtype = torch.float64) -> float:
    """Effective rank (Roy & Vetterli 2007): ``exp(-Σ_k p_k ln p_k)`` with ``p_k = σ_k / Σ_j σ_j``, ``0 ln 0 = 0``.

    Used by the paper for permuted MNIST and CIFAR (upstream ``compute_effective_rank``). Lies in ``[1, rank]``;
    an all-zero matrix gives 0. Pass ``sv`` to reuse precomputed singular values.
    """
    return _effective_rank_sv(_sv(features, sv, dtype))


def stable_rank_99(features: torch.Tensor, *, share: float = 0.99, sv: torch.Tensor | None = None,
                   dtype: torch.dtype = torch.float64) -> int:
    """The paper's "stable rank" (Kumar et al. 2021's srank): the smallest ``k`` such that
    ``Σ_{i<=k} σ_(i) >= share · Σ_i σ_i`` (unsquared σ, sorted descending, ``share = 0.99``).

    Upstream calls it ``compute_abs_approximate_rank``; its CIFAR version counts the prefixes whose share is
    below 0.99 and adds 1, which is the same number. Not :func:`classical_stable_rank`. All-zero matrix: 0.
    """
    return _cumulative_rank_sv(_sv(features, sv, dtype), share)


def approximate_rank_99(features: torch.Tensor, *, share: float = 0.99, sv: torch.Tensor | None = None,
                        dtype: torch.dtype = torch.float64) -> int:
    """Approximate rank (Yang et al. 2019; upstream ``compute_approximate_rank``, permuted MNIST): the smallest
    ``k`` with ``Σ_{i<=k} σ_(i)² >= share · Σ_i σ_i²`` — the number of directions holding 99 % of the variance."""
    return _cumulative_rank_sv(_sv(features, sv, dtype) ** 2, share)


def classical_stable_rank(features: torch.Tensor, *, sv: torch.Tensor | None = None,
                          dtype: torch.dtype = torch.float64) -> float:
    """Classical (numerical) stable rank ``‖Φ‖_F² / ‖Φ‖_2² = Σ σ_i² / σ_1²`` (Rudelson & Vershynin 2007).

    A continuous lower bound on the rank; *not* the quantity the paper calls "stable rank" (see
    :func:`stable_rank_99`). All-zero matrix: 0.
    """
    s = _sv(features, sv, dtype)
    if s.numel() == 0 or s[0] <= 0:
        return 0.0
    return float((s**2).sum() / s[0] ** 2)


def matrix_rank(features: torch.Tensor, *, sv: torch.Tensor | None = None, dtype: torch.dtype = torch.float64,
                rtol: float | None = None) -> int:
    """Rank: the number of singular values above ``rtol · σ_1``; ``rtol`` defaults to
    ``max(N, d) · eps(dtype)``, the tolerance of ``torch.linalg.matrix_rank``. (The authors' code did not
    use ``matrix_rank``: it counted the non-zero singular values, with no tolerance.)"""
    s = _sv(features, sv, dtype)
    if s.numel() == 0 or s[0] <= 0:
        return 0
    if rtol is None:
        n, d = feature_matrix(features).shape
        rtol = max(n, d) * torch.finfo(s.dtype).eps
    return int((s > rtol * s[0]).sum())


def feature_rank(features: torch.Tensor, eps: float = 0.01, *, dtype: torch.dtype = torch.float64) -> int:
    """Feature rank (Lyle et al. 2022, InFeR): ``#{i : σ_i(Φ / √N) > eps}``."""
    m = feature_matrix(features)
    s = singular_values(m, dtype) / (m.shape[0] ** 0.5)
    return int((s > eps).sum())


def rank_metrics(features: torch.Tensor, *, dtype: torch.dtype = torch.float64) -> dict[str, float]:
    """All rank metrics of one layer from a single SVD: ``effective_rank``, ``stable_rank_99``,
    ``approximate_rank_99``, ``classical_stable_rank``, ``matrix_rank`` and the layer ``width`` d."""
    s = singular_values(features, dtype)
    return {
        "effective_rank": effective_rank(features, sv=s),
        "stable_rank_99": float(stable_rank_99(features, sv=s)),
        "approximate_rank_99": float(approximate_rank_99(features, sv=s)),
        "classical_stable_rank": classical_stable_rank(features, sv=s),
        "matrix_rank": float(matrix_rank(features, sv=s)),
        "width": float(feature_matrix(features).shape[1]),
    }


# ----------------------------------------------------------------------------------------------------------
# unit-wise statistics
# ----------------------------------------------------------------------------------------------------------

def _unit_view(features: torch.Tensor) -> torch.Tensor:
    """``(samples, units)``: conv ``(N, C, H, W)`` becomes ``(N*H*W, C)`` so units are channels."""
    if features.dim() == 2:
        return features
    if features.dim() >= 3:
        return features.transpose(0, 1).flatten(1).T
    raise ValueError(f"features must be (N, d) or (N, C, ...), got shape {tuple(features.shape)}")


def _layers(features: Features) -> list[torch.Tensor]:
    if isinstance(features, torch.Tensor):
        return [features]
    if isinstance(features, Mapping):
        if not features:
            raise ValueError("no features given (empty mapping): does the model have activation modules?")
        return list(features.values())
    raise TypeError(f"features must be a Tensor or a mapping name -> Tensor, got {type(features).__name__}")


def active_fraction(features: torch.Tensor) -> torch.Tensor:
    """Per unit, the fraction of samples (x spatial positions) with ``h > 0``; shape ``(d,)`` or ``(C,)``."""
    return (_unit_view(features.detach()) > 0).double().mean(dim=0)


def dormant_fraction(features: Features, threshold: float = 0.01, *, inclusive: bool = False) -> float:
    """Fraction of dormant units as in the paper: unit i is dormant when its active fraction
    ``a_i = mean 1[h_i > 0]`` (over probe inputs and, for conv layers, spatial positions) is below ``threshold``.

    Sources: upstream ``post_run_analysis.compute_dormant_units_proportion`` (CIFAR, ``a_i < 0.01``) and the RL
    plots (``a_i <= 0.01`` over the last 1000 env steps: pass ``inclusive=True``). A mapping of layers gives
    (dormant units over all layers) / (all units). Meaningful for ReLU-like units; for tanh/sigmoid use
    :func:`saturated_fraction`.
    """
    n_dormant, n_units = 0, 0
    for f in _layers(features):
        a = active_fraction(f)
        n_dormant += int((a <= threshold).sum() if inclusive else (a < threshold).sum())
        n_units += a.numel()
    return n_dormant / n_units


def dead_fraction(features: Features) -> float:
    """Fraction of dead units: ``h_i == 0`` on *every* probe input (and position) — upstream permuted MNIST over
    2000 inputs; on a single input this is SCR's per-step ReLU "dead" fraction. Pooled over layers by unit count."""
    n_dead, n_units = 0, 0
    for f in _layers(features):
        u = _unit_view(f.detach())
        n_dead += int((u == 0).all(dim=0).sum())
        n_units += u.shape[1]
    return n_dead / n_units


def redo_scores(features: torch.Tensor) -> torch.Tensor:
    """ReDo score per unit (Sokar et al. 2023): ``s_i = E|h_i| / ((1/H) Σ_k E|h_k|)``, expectations over inputs
    (and, for conv layers, spatial positions). A layer whose features are all zero scores 0 everywhere."""
    a = _unit_view(features.detach()).abs().double().mean(dim=0)
    denom = a.mean()
    return a / denom if denom > 0 else torch.zeros_like(a)


def redo_dormant_fraction(features: Features, tau: float = 0.0) -> float:
    """Fraction of τ-dormant units (ReDo): ``s_i <= tau`` with :func:`redo_scores`, scored per layer and pooled over
    layers by unit count. ``tau = 0`` counts exactly-zero units. The paper's RL ReDo baseline uses ``tau = 0.1``."""
    n, total = 0, 0
    for f in _layers(features):
        s = redo_scores(f)
        n += int((s <= tau).sum())
        total += s.numel()
    return n / total


def saturated_fraction(features: Features, activation: str = "tanh", threshold: float = 0.9) -> float:
    """Fraction of (input, unit) entries that are saturated, averaged over all entries.

    ``tanh``: ``|h| > threshold`` (upstream SCR logs this with 0.9 on the current example).
    ``sigmoid``: ``|2h - 1| > threshold``, i.e. the same rule on the tanh scale (``2σ(x) - 1 = tanh(x/2)``), so
    ``h < 0.05`` or ``h > 0.95`` for the default. Pooled over layers by entry count.
    """
    if activation not in ("tanh", "sigmoid"):
        raise ValueError(f"saturated_fraction is defined for 'tanh' or 'sigmoid', got {activation!r}")
    n, total = 0, 0
    for f in _layers(features):
        h = f.detach()
        z = h.abs() if activation == "tanh" else (2 * h - 1).abs()
        n += int((z > threshold).sum())
        total += z.numel()
    return n / total


# ----------------------------------------------------------------------------------------------------------
# weights and gradients
# ----------------------------------------------------------------------------------------------------------

_WEIGHT_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def mean_abs_weight(model: nn.Module, per_layer: bool = False) -> float | dict[str, float]:
    """Mean ``|w|`` over the weight matrices / kernels of every Linear and Conv layer; biases and norm layers
    excluded. Pooled: ``Σ|W| / #weights`` over all layers (permuted MNIST: ``Σ|W| / 9,588,000``).
    ``per_layer=True``: ``{module name: mean |W|}`` (the RL and SCR plots)."""
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, _WEIGHT_LAYERS)]
    if not layers:
        raise ValueError("model has no Linear or Conv layers")
    with torch.no_grad():
        if per_layer:
            return {name: float(m.weight.abs().double().mean()) for name, m in layers}
        total = sum(float(m.weight.abs().double().sum()) for _, m in layers)
        count = sum(m.weight.numel() for _, m in layers)
    return total / count


def mean_abs_param(model: nn.Module) -> float:
    """Mean ``|p|`` over *all* parameters (biases and BatchNorm/LayerNorm affine included): the CIFAR-100 plot's
    "weight magnitude" (upstream ``post_run_analysis``)."""
    params = list(model.parameters())
    if not params:
        raise ValueError("model has no parameters")
    with torch.no_grad():
        return sum(float(p.abs().double().sum()) for p in params) / sum(p.numel() for p in params)


def grad_norm(model: nn.Module | Iterable[torch.Tensor]) -> float:
    """Global L2 norm ``sqrt(Σ_p ‖∇p‖²)`` of the gradients currently stored (parameters without ``.grad`` are
    skipped; 0.0 if none has one)."""
    params = model.parameters() if isinstance(model, nn.Module) else model
    sq = 0.0
    for p in params:
        if p.grad is not None:
            sq += float(p.grad.detach().double().pow(2).sum())
    return sq**0.5


# ----------------------------------------------------------------------------------------------------------
# feature collection and the standard report
# ----------------------------------------------------------------------------------------------------------

@contextmanager
def eval_mode(model: nn.Module):
    """Put every submodule in eval mode; restore each one's own flag afterwards (mixed modes survive)."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, flag in flags:
            m.training = flag


def activation_modules(model: nn.Module) -> dict[str, nn.Module]:
    """``{name: module}`` of the hidden activation modules (types in :data:`ACTIVATION_TYPES`), in forward order
    of registration."""
    return {name: m for name, m in model.named_modules() if isinstance(m, ACTIVATION_TYPES)}


def collect_features(model: nn.Module, x: torch.Tensor,
                     modules: Mapping[str, nn.Module] | None = None) -> dict[str, torch.Tensor]:
    """Post-activation features of every hidden activation module on the probe batch ``x``.

    Runs ``model(x)`` once in eval mode under ``torch.no_grad()`` (train flags restored afterwards) with forward
    hooks on ``modules`` (default :func:`activation_modules`). Returns ``{module name: detached output}``; a
    module applied several times in one forward (a shared ReLU) yields ``name``, ``name#1``, ``name#2``, ...
    """
    mods = activation_modules(model) if modules is None else dict(modules)
    out: dict[str, torch.Tensor] = {}
    handles = []

    def make_hook(name: str):
        def hook(_module, _inp, output):
            key, i = name, 0
            while key in out:
                i += 1
                key = f"{name}#{i}"
            out[key] = output.detach()
        return hook

    try:
        for name, m in mods.items():
            handles.append(m.register_forward_hook(make_hook(name)))
        with eval_mode(model), torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return out


def plasticity_report(model: nn.Module, probe_x: torch.Tensor, *, feature_layer: str | None = None,
                      dormant_threshold: float = 0.01, dtype: torch.dtype = torch.float64) -> dict[str, float]:
    """The standard plasticity numbers on a fixed probe batch, computed in eval mode under ``no_grad``:

    - ``dormant_fraction``: :func:`dormant_fraction` (threshold 0.01) pooled over all hidden activation layers;
    - ``dead_fraction``: :func:`dead_fraction` pooled over all hidden layers;
    - ``effective_rank``, ``stable_rank_99``, ``approximate_rank_99``, ``classical_stable_rank``,
      ``width``: of ``feature_layer`` (default: the last hidden activation; conv maps are spatially averaged).
      Divide a rank by ``width`` for the paper's "% of units";
    - ``saturated_fraction_tanh`` / ``saturated_fraction_sigmoid``: only if the model has such layers, pooled
      over them (:func:`saturated_fraction`);
    - ``mean_abs_weight``: :func:`mean_abs_weight` (pooled, no biases).

    ``dtype`` is the SVD precision (float32 is about twice as fast for wide layers on a CPU).
    """
    mods = activation_modules(model)
    if not mods:
        raise ValueError("model has no activation modules (types in lopbook.metrics.ACTIVATION_TYPES); "
                         "use modules such as nn.ReLU instead of functional activations")
    feats = collect_features(model, probe_x, mods)
    if feature_layer is None:
        feature_layer = list(feats)[-1]
    elif feature_layer not in feats:
        raise ValueError(f"unknown feature_layer {feature_layer!r}; choose one of {list(feats)}")
    ranks = rank_metrics(feats[feature_layer], dtype=dtype)
    report = {
        "dormant_fraction": dormant_fraction(feats, dormant_threshold),
        "dead_fraction": dead_fraction(feats),
        **{k: ranks[k] for k in ("effective_rank", "stable_rank_99", "approximate_rank_99",
                                 "classical_stable_rank", "width")},
        "mean_abs_weight": mean_abs_weight(model),  # type: ignore[dict-item]
    }
    for kind, typ in (("tanh", nn.Tanh), ("sigmoid", nn.Sigmoid)):
        names = [n for n, m in mods.items() if isinstance(m, typ)]
        sat = {k: v for k, v in feats.items() if k.split("#")[0] in names}
        if sat:
            report[f"saturated_fraction_{kind}"] = saturated_fraction(sat, kind)
    return report
