"""Learned dynamics models p(r, s' | s, a): the paper code's mixture-density network and MBPO's
probabilistic ensemble, behind one interface.

Both predict the targets y = [reward, Δs = s' − s] from x = [s, a], on inputs and targets
normalised with statistics of the fit's training split, and both share one fit (ALGORITHM.md
§5 step 4): a random holdout, bounded "epochs" of minibatches, per-sample weights (by
importance resampling or inside the loss), a w-weighted holdout NLL with early stopping, and
the best-holdout parameters restored at the end. The weighting is the only thing that makes
TOM differ from MLE, so it is implemented once, here, for both models.

Per-dimension weights (``fit(..., dim_weights=W)``, the VaGraM paper's loss) switch the fit to
a *mean-only* loss, Σ_d W_d (ŷ_d − y_d)² of each member's predicted mean, with W given in raw
target units and converted to the normalised targets (W·out_std²); such a model then rolls out
its mean. Per-dimension NLL weights (``fit(..., nll_dim_weights=W)``, VaGraM as the TOM paper's
code runs it) keep the density but train on Σ_d W_d · nll_d, the NLL of each normalised target
dimension d weighted by W_d, which may be negative; neither rescaled nor checked for sign.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tom.buffer import Transition, WeightedIndices
from tom.compile import compiled
from tom.config import ModelConfig
from tom.cuda_graph import GraphedLoop, check_device
from tom.optim import AdamState, adam, adam_state, descend
from tom.turns import in_turns, together

TerminationFn = Callable[[Tensor, Tensor, Tensor], Tensor]

_LOG_2PI = math.log(2.0 * math.pi)
_MIN_STD = 1e-6  # a normalisation std below this is replaced by 1 (MBPO's scaler)
_MIN_VAR = 1e-6  # MDN variance floor in normalised units: keeps the NLL bounded below


@dataclass
class FitResult:
    """What one fit did; `holdout_loss` is what the training loop logs."""

    holdout_loss: float  # Σ w·nll / Σ w of the final (restored) model on the holdout
    #                      (mean-only fit: the same with the weighted squared error of the mean)
    epochs: int  # epochs run (each `steps_per_epoch` minibatches)
    steps: int  # gradient steps taken
    train_loss: float  # last epoch's mean training objective, per member
    initial_holdout_loss: float  # same measure before this fit's first step
    member_holdout_losses: list[float]  # best weighted holdout NLL per member (MDN: one)
    elites: list[int]  # members used by `step` (MDN: [0])
    stopped_early: bool
    n_train: int
    n_holdout: int
    holdout_history: list[float] = field(default_factory=list)  # mean over members, per epoch
    holdout_index: Tensor | None = field(default=None, repr=False)  # rows held out

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly fields (the holdout index is left out)."""
        out = asdict(self)
        out.pop("holdout_index")
        return out


@dataclass
class FitEpoch:
    """One epoch of one model's fit, its random draws made ahead (for `tom.stacked_model`):
    the minibatches' training-split rows ``idx`` [steps, members, batch], drawn as the epoch
    draws them, and the training split they index. ``w``: per-row loss weights (the 'loss'
    weighting; None when resampling or unweighted); ``dw``, ``ndw``: per-dimension weights
    of a mean-only or NLL-weighted fit (None otherwise)."""

    idx: Tensor
    x: Tensor
    y: Tensor
    w: Tensor | None
    dw: Tensor | None
    ndw: Tensor | None

    def tensors(self) -> list[Tensor]:
        return [t for t in (self.idx, self.x, self.y, self.w, self.dw, self.ndw)
                if t is not None]

    def pattern(self) -> tuple[bool, bool, bool]:
        """Which optional weights the epoch has: its loss's form."""
        return self.w is not None, self.dw is not None, self.ndw is not None


def check_weights(weights: Tensor | None, n: int, device: torch.device) -> Tensor | None:
    """Validate per-sample weights before any compute, so a bad objective fails loudly."""
    if weights is None:
        return None
    if not isinstance(weights, Tensor):
        raise ValueError(f"weights must be a torch.Tensor or None, got {type(weights).__name__}")
    if weights.shape != (n,):
        raise ValueError(f"weights must have shape ({n},), one per transition, "
                         f"got {tuple(weights.shape)}")
    w = weights.detach().to(device=device, dtype=torch.float32)
    bad = int((~torch.isfinite(w)).sum())
    if bad:
        raise ValueError(f"weights must be finite: {bad} of {n} are nan or inf")
    negative = int((w < 0).sum())
    if negative:
        raise ValueError(f"weights must be non-negative: {negative} of {n} are negative "
                         f"(min {w.min().item():.3g})")
    total = w.sum()
    if not torch.isfinite(total):
        raise ValueError("weights are too large: their sum overflows float32")
    if total <= 0:
        raise ValueError("weights are all zero: at least one transition needs positive weight")
    return w


def _check_per_dim(name: str, values: Tensor | None, n: int, out_dim: int,
                   device: torch.device, signed: bool) -> Tensor | None:
    """Validate per-sample, per-target weights [n, out_dim]: a tensor of that shape, finite;
    unless ``signed``, also non-negative and not all zero."""
    if values is None:
        return None
    if not isinstance(values, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor or None, got {type(values).__name__}")
    if values.shape != (n, out_dim):
        raise ValueError(f"{name} must have shape ({n}, {out_dim}), one row per transition "
                         f"and one column per target [reward, Δs], got {tuple(values.shape)}")
    w = values.detach().to(device=device, dtype=torch.float32)
    if not torch.isfinite(w).all():
        raise ValueError(f"{name} must be finite")
    if not signed and (w < 0).any():
        raise ValueError(f"{name} must be non-negative")
    if not signed and not w.sum() > 0:
        raise ValueError(f"{name} are all zero (or their sum overflows float32)")
    return w


def check_dim_weights(dim_weights: Tensor | None, n: int, out_dim: int,
                      device: torch.device) -> Tensor | None:
    """Validate per-sample, per-target-dimension weights [n, 1 + obs_dim] of a mean-only fit."""
    return _check_per_dim("dim_weights", dim_weights, n, out_dim, device, signed=False)


def check_nll_dim_weights(nll_dim_weights: Tensor | None, n: int, out_dim: int,
                          device: torch.device) -> Tensor | None:
    """Validate per-sample, per-target NLL weights [n, 1 + obs_dim] (finite; any sign)."""
    return _check_per_dim("nll_dim_weights", nll_dim_weights, n, out_dim, device, signed=True)


def _weighted_mean(values: Tensor, w: Tensor | None) -> Tensor:
    """Mean over the last dim, Σ w·v / Σ w when weighted (broadcast over leading dims)."""
    if w is None:
        return values.mean(-1)
    return (w * values).sum(-1) / w.sum(-1).clamp_min(1e-30)


def _gaussian_log_prob(y: Tensor, mean: Tensor, var: Tensor, logvar: Tensor) -> Tensor:
    return -0.5 * ((y - mean) ** 2 / var + logvar + _LOG_2PI)


def mixture_parts(out: Tensor, noise_var: Tensor | float, out_dim: int, components: int
                  ) -> tuple[Tensor, Tensor, Tensor]:
    """The MDN's mixture logits (log weights up to a constant per row and dimension), means
    and variances, each [..., out_dim, K, N], from its head's output for N rows laid out
    component-major, [..., 3·out_dim·K, N] (unit u of the head in row u: the head's
    transposed product, `head_rows`), and its learned noise variance softplus(raw_noise),
    shaped to broadcast against [..., out_dim, K, N].

    Why component-major: on a CPU a reduction or broadcast over the K = 10 components of
    [N, out_dim, K] tensors runs a short loop per (row, dimension), while over [out_dim, K, N]
    it runs vectorised along the rows; a model-fit step at the paper's sizes is ~10 % faster
    this way (benchmarks/RESULTS.md, thirteenth session). The logits are left unnormalised:
    a Gumbel-max draw does not need them normalised.
    """
    logits, mean, raw_var = out.unflatten(-2, (3, out_dim, components)).unbind(-4)
    var = F.softplus(raw_var) + noise_var + _MIN_VAR
    return logits, mean, var


def head_rows(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """A linear layer's output for the rows of x [..., N, in], transposed: [..., out, N]
    (weight [..., out, in], bias [..., out]), without a copy: the product itself is taken
    transposed."""
    if x.dim() == 2:
        return torch.addmm(bias[:, None], weight, x.T)
    return torch.baddbmm(bias[..., None], weight, x.transpose(-1, -2))


def mixture_log_prob_dims(logits: Tensor, mean: Tensor, var: Tensor, y: Tensor) -> Tensor:
    """Per-dimension mixture log-density [..., out_dim, N] of targets y [..., out_dim, N]
    (component-major, as `mixture_parts`)."""
    comp = _gaussian_log_prob(y[..., None, :], mean, var, var.log())
    return torch.logsumexp(logits.log_softmax(-2) + comp, -2)


def mixture_mean(logits: Tensor, mean: Tensor) -> Tensor:
    """The mixture's mean [..., out_dim, N]: Σ_k softmax(logits)_k mean_k."""
    return (logits.softmax(-2) * mean).sum(-2)


def soft_logvar(raw: Tensor, max_logvar: Tensor, min_logvar: Tensor) -> Tensor:
    """Soft clamping of a raw log-variance into [min_logvar, max_logvar] (PETS/MBPO),
    differentiable everywhere."""
    logvar = max_logvar - F.softplus(max_logvar - raw)
    return min_logvar + F.softplus(logvar - min_logvar)


class DynamicsModel(nn.Module, ABC):
    """Shared fit, normalisation and sampling; subclasses define the predictive distribution.

    A model has `num_members` independently trained members (the MDN has one). Subclasses
    implement `_member_nll` (training loss per member), `_nll`, `_mean` and `_sample` (the
    predictive distribution used for rollouts), all on normalised inputs and targets.
    """

    num_members: int = 1
    # With `compile` (`tom.compile`): without CUDA graphs, `_fit_step` compiled whole (the
    # objective, its gradient and the Adam step, one graph); with them, the objective alone.
    _fit_step_whole: Callable[..., Tensor] | None = None
    _step_objective: Callable[..., Tensor] | None = None
    # Whether `fit` replays its minibatch steps from CUDA graphs (`tom.cuda_graph`), and how
    # many steps per replay.
    cuda_graph: bool = False
    graph_steps: int = 1
    # Whether a fit's minibatch targets [members, batch, out_dim] are a view of memory laid
    # out [out_dim, members, batch]: gathered from a transposed copy of the training split.
    # The MDN's loss works in that layout (`mixture_parts`); given targets row-major, its
    # compiled step transposes them inside its loss kernel, on one thread (on 2 CPU threads
    # that kernel took 346 µs, against 132 µs given the targets by dimension).
    targets_by_dimension: bool = False

    def __init__(self, obs_dim: int, act_dim: int, cfg: ModelConfig,
                 termination_fn: TerminationFn) -> None:
        super().__init__()
        self.obs_dim, self.act_dim, self.cfg = obs_dim, act_dim, cfg
        self.in_dim, self.out_dim = obs_dim + act_dim, 1 + obs_dim
        self.termination_fn = termination_fn
        # Buffers, so state_dict carries the normalisation the parameters were trained under.
        self.register_buffer("in_mean", torch.zeros(self.in_dim))
        self.register_buffer("in_std", torch.ones(self.in_dim))
        self.register_buffer("out_mean", torch.zeros(self.out_dim))
        self.register_buffer("out_std", torch.ones(self.out_dim))
        # Adam persists across fits: MBPO continues training rather than restarting.
        self._optimizer: torch.optim.Optimizer | None = None
        # Set by `fit`: after a mean-only fit the variance heads are untrained, so `step` rolls
        # out the mean and `nll` is undefined (nan).
        self.mean_only = False

    # -- subclass hooks ------------------------------------------------------------------------

    @abstractmethod
    def _member_nll(self, x: Tensor, y: Tensor) -> Tensor:
        """Per-member NLL [M, B] of normalised y [M or 1, B, out] given x [M or 1, B, in]."""

    @abstractmethod
    def _member_nll_dims(self, x: Tensor, y: Tensor) -> Tensor:
        """Per-member, per-target-dimension NLL [M, B, out] (the dimensions are independent
        given x, so summing over the last axis gives `_member_nll`)."""

    @abstractmethod
    def _nll(self, x: Tensor, y: Tensor) -> Tensor:
        """NLL [B] of the predictive distribution that `step` samples from."""

    @abstractmethod
    def _mean(self, x: Tensor) -> Tensor:
        """Mean [B, out] of the predictive distribution (normalised)."""

    @abstractmethod
    def _sample(self, x: Tensor) -> Tensor:
        """One sample [B, out] of the predictive distribution (normalised)."""

    def _member_mean(self, x: Tensor) -> Tensor:
        """Per-member mean [M, B, out] at x [M or 1, B, in] (single-member models: `_mean`)."""
        return self._mean(x)

    def _sample_mean(self, x: Tensor) -> Tensor:
        """Deterministic rollout prediction [B, out] after a mean-only fit (default: `_mean`)."""
        return self._mean(x)

    def _member_views(self) -> list[Tensor]:
        """Parameter storage viewed with a leading member dim, for per-member snapshots."""
        return [p.detach().unsqueeze(0) for p in self.parameters()]

    def _regulariser(self) -> Tensor:
        return torch.zeros((), device=self.in_mean.device)

    def _after_fit(self, member_losses: Tensor) -> None:
        """Called with each member's best holdout loss (the ensemble picks its elites)."""

    # -- normalisation -------------------------------------------------------------------------

    @staticmethod
    def raw_inputs_targets(data: Transition) -> tuple[Tensor, Tensor]:
        """x = [obs, act] and y = [reward, next_obs − obs], un-normalised."""
        x = torch.cat([data.obs, data.act], -1)
        y = torch.cat([data.reward.reshape(-1, 1), data.next_obs - data.obs], -1)
        return x, y

    def normalised(self, data: Transition) -> tuple[Tensor, Tensor]:
        """Normalised inputs and targets under the current statistics."""
        x, y = self.raw_inputs_targets(data)
        return (x - self.in_mean) / self.in_std, (y - self.out_mean) / self.out_std

    def set_normaliser(self, x: Tensor, y: Tensor) -> None:
        """Set mean/std from raw inputs and targets (near-constant dims get std 1)."""
        for values, mean, std in ((x, self.in_mean, self.in_std), (y, self.out_mean, self.out_std)):
            s = values.std(0, unbiased=False)
            mean.copy_(values.mean(0))
            std.copy_(torch.where(s < _MIN_STD, torch.ones_like(s), s))

    # -- evaluation and rollouts -----------------------------------------------------------------

    @torch.no_grad()
    def nll(self, data: Transition) -> Tensor:
        """Per-sample NLL [B] of the normalised targets under the predictive distribution.

        Summed over target dimensions, with the Gaussian constant, so it is a proper
        log-density of normalised y. Ensemble: the uniform mixture over the elites. After a
        mean-only fit there is no fitted density: nan.
        """
        if self.mean_only:
            return torch.full((data.size,), math.nan, device=self.in_mean.device)
        return self._nll(*self.normalised(data))

    @torch.no_grad()
    def member_nll(self, data: Transition) -> Tensor:
        """Per-member NLL [M, B] of the normalised targets (what each member is trained on)."""
        x, y = self.normalised(data)
        return self._member_nll(x[None], y[None])

    @torch.no_grad()
    def squared_error(self, data: Transition) -> Tensor:
        """Per-sample mean squared error [B] of the predicted mean Δs, in target-std units."""
        x, y = self.normalised(data)
        return ((self._mean(x)[:, 1:] - y[:, 1:]) ** 2).mean(-1)

    def predict_mean(self, obs: Tensor, act: Tensor) -> tuple[Tensor, Tensor]:
        """Mean reward [B] and next state [B, obs_dim], differentiable (for gradient-based
        objectives that need the model's prediction inside their own loss)."""
        x = (torch.cat([obs, act], -1) - self.in_mean) / self.in_std
        y = self._mean(x) * self.out_std + self.out_mean
        return y[:, 0], obs + y[:, 1:]

    @torch.no_grad()
    def mean_loss(self, data: Transition, dim_weights: Tensor) -> Tensor:
        """Per-sample Σ_d W_d (ŷ_d − y_d)² [B] of the predictive mean, W in raw target units.

        What a mean-only fit minimises (up to its constant scale), computed the way the fit does:
        on normalised targets with W·out_std², so it equals the raw-unit closed form.
        """
        x, y = self.normalised(data)
        dw = check_dim_weights(dim_weights, data.size, self.out_dim, x.device)
        return self._predictive_loss(x, y, dw * self.out_std ** 2)

    @torch.no_grad()
    def weighted_nll(self, data: Transition, nll_dim_weights: Tensor) -> Tensor:
        """Per-sample Σ_d W_d · nll_d [B] of the normalised targets: what an NLL-weighted fit
        minimises (averaged over its minibatch), computed as the fit does."""
        x, y = self.normalised(data)
        ndw = check_nll_dim_weights(nll_dim_weights, data.size, self.out_dim, x.device)
        return self._predictive_loss(x, y, None, ndw)

    @torch.no_grad()
    def step(self, obs: Tensor, act: Tensor) -> Transition:
        """Sample (r, s') for a batch of rollout states; done from the task's termination rule.

        After a mean-only fit the prediction is deterministic given the member (`_sample_mean`).
        """
        x = (torch.cat([obs, act], -1) - self.in_mean) / self.in_std
        pred = self._sample_mean(x) if self.mean_only else self._sample(x)
        y = pred * self.out_std + self.out_mean
        next_obs = obs + y[:, 1:]
        done = self.termination_fn(obs, act, next_obs).reshape(len(obs)).to(torch.float32)
        return Transition(obs, act, y[:, 0], next_obs, done)

    # -- fitting -------------------------------------------------------------------------------

    def loss(self, data: Transition, weights: Tensor | None = None) -> Tensor:
        """The 'loss'-mode training objective on one batch (every member sees the whole batch):
        Σ_members Σ w·nll / Σ w, plus the regulariser. Differentiable."""
        x, y = self.normalised(data)
        w = check_weights(weights, data.size, x.device)
        return self._objective(x[None], y[None], None if w is None else w[None])

    def _objective(self, x: Tensor, y: Tensor, w: Tensor | None,
                   dw: Tensor | None = None, ndw: Tensor | None = None) -> Tensor:
        return _weighted_mean(self._member_loss(x, y, dw, ndw), w).sum() + self._regulariser()

    def _member_loss(self, x: Tensor, y: Tensor, dw: Tensor | None,
                     ndw: Tensor | None = None) -> Tensor:
        """Per-member training loss [M, B]: the NLL; with normalised-space per-dimension
        weights ``dw`` (mean-only fit) Σ_d dw_d (mean_d − y_d)² of each member's mean; with
        per-dimension NLL weights ``ndw`` Σ_d ndw_d · nll_d."""
        if ndw is not None:
            return (ndw * self._member_nll_dims(x, y)).sum(-1)
        if dw is None:
            return self._member_nll(x, y)
        return (dw * (self._member_mean(x) - y) ** 2).sum(-1)

    def _predictive_loss(self, x: Tensor, y: Tensor, dw: Tensor | None,
                         ndw: Tensor | None = None) -> Tensor:
        """Per-sample loss [B] of the predictive distribution (mean-only: of its mean; NLL
        weights: the elites' mean of their member loss)."""
        if ndw is not None:
            members = self._member_loss(x[None], y[None], None, ndw[None])
            return members[self.elite_list()].mean(0)
        if dw is None:
            return self._nll(x, y)
        return (dw * (self._mean(x) - y) ** 2).sum(-1)

    def _fit_step(self, x: Tensor, y: Tensor, w: Tensor | None, dw: Tensor | None,
                  ndw: Tensor | None, optimizer: torch.optim.Optimizer | AdamState) -> Tensor:
        """One minibatch step of a fit: the objective on the minibatch's rows and an Adam step
        on it (`tom.optim.descend`); the loss, detached."""
        loss = (self._step_objective or self._objective)(x, y, w, dw, ndw)
        descend(loss, optimizer)
        return loss.detach()

    def draw_indices(self, weights: WeightedIndices | None, n: int,
                     shape: tuple[int, int]) -> Tensor:
        """Training-split indices [members, batch] of one minibatch: ∝ weights (prepared once
        for a fit's many draws), or uniform.

        Every minibatch of a fit comes from here (tests observe it to check frequencies).
        """
        if weights is None:
            return torch.randint(n, shape, device=self.in_mean.device)
        return weights.draw(shape[0] * shape[1]).view(shape)

    @torch.no_grad()
    def _holdout_losses(self, x: Tensor, y: Tensor, w: Tensor | None,
                        dw: Tensor | None = None, ndw: Tensor | None = None) -> Tensor:
        """Weighted holdout loss (NLL, mean-only or NLL-weighted loss) per member [M]."""
        return _weighted_mean(self._member_loss(x[None], y[None],
                                                None if dw is None else dw[None],
                                                None if ndw is None else ndw[None]), w)

    def fit(self, data: Transition, weights: Tensor | None = None,
            dim_weights: Tensor | None = None,
            nll_dim_weights: Tensor | None = None) -> FitResult:
        """Fit on all of `data` with per-sample `weights` (None = uniform), MBPO-style.

        Holdout: a random min(fraction·n, holdout_max) rows (≥ 1 when n ≥ 2; with n = 1 the
        training row doubles as holdout). Early stopping per member on the w-weighted holdout
        NLL; if the holdout carries no weight it falls back to the unweighted holdout NLL.

        ``dim_weights`` [n, 1 + obs_dim] (raw target units, e.g. VaGraM's squared value
        gradients) replace the NLL by the mean-only loss everywhere (training, holdout, early
        stopping). They are converted to normalised targets (× out_std²) and divided by their
        mean over the training rows, so the fit does not depend on their overall scale.

        ``nll_dim_weights`` [n, 1 + obs_dim] (VaGraM as the TOM paper's code computes it) keep
        the density and replace the NLL by Σ_d W_d · nll_d of the normalised targets
        everywhere, W used as given (any sign, no rescaling).
        """
        cfg, n = self.cfg, data.size
        if n == 0:
            raise ValueError("cannot fit a dynamics model on an empty dataset")
        if cfg.weighting not in ("resample", "loss"):
            raise ValueError(f"model.weighting must be 'resample' or 'loss', got {cfg.weighting!r}")
        device = self.in_mean.device
        w = check_weights(weights, n, device)
        dw = check_dim_weights(dim_weights, n, self.out_dim, device)
        ndw = check_nll_dim_weights(nll_dim_weights, n, self.out_dim, device)
        if dw is not None and ndw is not None:
            raise ValueError("pass dim_weights (mean-only fit) or nll_dim_weights, not both")
        n_hold = min(int(cfg.holdout_fraction * n), cfg.holdout_max)
        if n >= 2:
            n_hold = min(max(n_hold, 1), n - 1)
        perm = torch.randperm(n, device=device)
        hold_idx, train_idx = perm[:n_hold], perm[n_hold:]
        if n_hold == 0:
            hold_idx = train_idx
        x_raw, y_raw = self.raw_inputs_targets(data)
        self.set_normaliser(x_raw[train_idx], y_raw[train_idx])
        x, y = (x_raw - self.in_mean) / self.in_std, (y_raw - self.out_mean) / self.out_std
        x_tr, y_tr, x_ho, y_ho = x[train_idx], y[train_idx], x[hold_idx], y[hold_idx]
        w_tr = w_ho = None
        if w is not None:
            w_tr, w_ho = w[train_idx], w[hold_idx]
            if w_tr.sum() <= 0:
                raise ValueError("weights are zero on every row of the training split "
                                 f"({len(train_idx)} rows); nothing to fit")
            if w_ho.sum() <= 0:
                w_ho = None
        dw_tr = dw_ho = None
        if dw is not None:
            dw = dw * self.out_std ** 2  # W·e_raw² = W·σ²·e_norm², as e_raw = σ·e_norm
            scale = dw[train_idx].mean()
            if scale <= 0:
                raise ValueError("dim_weights are zero on every row of the training split")
            dw_tr, dw_ho = dw[train_idx] / scale, dw[hold_idx] / scale
        ndw_tr = ndw_ho = None
        if ndw is not None:
            ndw_tr, ndw_ho = ndw[train_idx], ndw[hold_idx]
        self.mean_only = dw is not None
        resample = cfg.weighting == "resample"
        loss_w = None if resample else w_tr  # per-row weights inside the loss
        # The minibatches' draws ∝ w_tr, prepared once for the fit's steps (w_tr was checked
        # above: a positive sum on the training split).
        draw_w = WeightedIndices(w_tr, check=False) if resample and w_tr is not None else None
        if self._optimizer is None:
            self._optimizer = adam(self.parameters(), lr=cfg.lr, capturable=self.cuda_graph)
        opt, shape = self._optimizer, (self.num_members, cfg.batch_size)
        total = torch.zeros((), device=device)  # an epoch's summed minibatch losses
        y_by_dim = y_tr.T.contiguous() if self.targets_by_dimension else None

        def minibatch_step() -> Tensor:
            idx = self.draw_indices(draw_w, len(train_idx), shape)
            y_rows = y_tr[idx] if y_by_dim is None else y_by_dim[:, idx].permute(1, 2, 0)
            rows = (x_tr[idx], y_rows, None if loss_w is None else loss_w[idx],
                    None if dw_tr is None else dw_tr[idx],
                    None if ndw_tr is None else ndw_tr[idx])
            if self._fit_step_whole is None:
                loss = self._fit_step(*rows, opt)
            else:
                loss = self._fit_step_whole(*rows, adam_state(opt))
            return total.add_(loss)

        # Graphs per fit: the training split is new tensors each fit.
        steps = GraphedLoop(minibatch_step, self.graph_steps, enabled=self.cuda_graph)

        def epoch_alone() -> Tensor:
            total.zero_()
            # In a population, passing the turn every few steps and at the end: the others'
            # work runs while this epoch's does.
            in_turns(steps, cfg.steps_per_epoch, steps.per_graph)
            return total

        def epoch_drawn() -> tuple[DynamicsModel, FitEpoch]:
            """The epoch's minibatch rows, drawn as `minibatch_step` draws them."""
            idx = torch.stack([self.draw_indices(draw_w, len(train_idx),
                                                 shape) for _ in range(cfg.steps_per_epoch)])
            return self, FitEpoch(idx, x_tr, y_tr, loss_w, dw_tr, ndw_tr)

        best = self._holdout_losses(x_ho, y_ho, w_ho, dw_ho, ndw_ho)
        initial = best.mean().item()
        views = self._member_views()
        snapshot = [v.clone() for v in views]
        since, epochs, train_loss, history, finite = 0, 0, math.nan, [], True
        for _ in range(cfg.max_epochs):
            self.train()
            # In a population that stacks its runs' work, with their epochs as one.
            epoch_total = together("fit", epoch_alone, epoch_drawn)
            self.eval()
            epochs += 1
            train_loss = epoch_total.item() / (cfg.steps_per_epoch * self.num_members)
            finite = finite and math.isfinite(train_loss)
            losses = self._holdout_losses(x_ho, y_ho, w_ho, dw_ho, ndw_ho)
            # Relative to |best| because an NLL may be negative; nan never counts as better.
            improved = (best - losses) / best.abs().clamp_min(1e-8) > cfg.min_improvement
            best = torch.where(improved, losses, best)
            for view, saved in zip(views, snapshot, strict=True):  # (a mask index would
                # wait for the GPU: it counts the mask's True entries on the host)
                saved.copy_(torch.where(improved.view(-1, *[1] * (view.dim() - 1)), view,
                                        saved))
            history.append(losses.mean().item())
            since = 0 if bool(improved.any()) else since + 1
            if since >= cfg.patience:
                break
        for view, saved in zip(views, snapshot, strict=True):
            view.copy_(saved)
        if not finite:  # a diverged step leaves nan moments in Adam: start it afresh next fit
            self._optimizer = None
        self._after_fit(best)
        final = _weighted_mean(self._predictive_loss(x_ho, y_ho, dw_ho, ndw_ho), w_ho).item()
        return FitResult(
            holdout_loss=final, epochs=epochs, steps=epochs * cfg.steps_per_epoch,
            train_loss=train_loss, initial_holdout_loss=initial,
            member_holdout_losses=best.tolist(), elites=self.elite_list(),
            stopped_early=epochs < cfg.max_epochs, n_train=len(train_idx), n_holdout=n_hold,
            holdout_history=history, holdout_index=hold_idx)

    def elite_list(self) -> list[int]:
        """Members `step` samples from."""
        return [0]

    def training_state(self) -> dict[str, Any]:
        """Parameters, normaliser and elites (`state_dict`), plus what persists between
        fits outside it: Adam's moments and whether the last fit was mean-only."""
        return {"module": self.state_dict(), "mean_only": self.mean_only,
                "optimizer": None if self._optimizer is None else self._optimizer.state_dict()}

    def load_training_state(self, state: dict[str, Any]) -> None:
        self.load_state_dict(state["module"])
        self.mean_only = bool(state["mean_only"])
        self._optimizer = None
        if state["optimizer"] is not None:
            self._optimizer = adam(self.parameters(), lr=self.cfg.lr,
                                   capturable=self.cuda_graph)
            self._optimizer.load_state_dict(state["optimizer"])


class MixtureDensityModel(DynamicsModel):
    """The paper code's model: one MLP, a K-component Gaussian mixture per target dimension.

    Variance = softplus(raw) + softplus(learned noise) (+ a 1e-6 floor); target
    dimensions are independent given (s, a), so the NLL sums per-dimension mixture NLLs.
    """

    targets_by_dimension = True

    def __init__(self, obs_dim: int, act_dim: int, cfg: ModelConfig,
                 termination_fn: TerminationFn) -> None:
        super().__init__(obs_dim, act_dim, cfg, termination_fn)
        self.components = cfg.mdn_components
        layers: list[nn.Module] = []
        width = self.in_dim
        for _ in range(cfg.hidden_layers):
            layers += [nn.Linear(width, cfg.hidden_size), nn.SiLU()]
            width = cfg.hidden_size
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, 3 * self.out_dim * self.components)
        # The learned variance floor softplus(raw_noise). 'shared' is the paper code's: one
        # parameter starting at softplus(0) ≈ 0.69 (normalised units), which it then learns
        # down. 'per-dim' starts each dimension at softplus(-6.9) ≈ 1e-3, which does not blur
        # near-deterministic dimensions before the fit has learned anything.
        if cfg.mdn_noise == "shared":
            self.raw_noise = nn.Parameter(torch.zeros(1))
        elif cfg.mdn_noise == "per-dim":
            self.raw_noise = nn.Parameter(torch.full((self.out_dim,), -6.9))
        else:
            raise ValueError("model.mdn_noise must be 'shared' or 'per-dim', "
                             f"got {cfg.mdn_noise!r}")

    def mixture(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Log mixture weights (normalised), means and variances, each [..., out_dim, K] for
        x [..., in]."""
        logits, mean, var = self._mixture_parts(x)
        log_w, mean, var = (t.movedim(-1, 0).reshape(*x.shape[:-1], self.out_dim,
                                                     self.components)
                            for t in (logits.log_softmax(-2), mean, var))
        return log_w, mean, var

    def _mixture_parts(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Mixture logits (unnormalised), means and variances, [out_dim, K, N] for the N rows
        of x [..., in] (`mixture_parts`)."""
        h = self.body(x.reshape(-1, self.in_dim))
        return mixture_parts(head_rows(h, self.head.weight, self.head.bias),
                             F.softplus(self.raw_noise)[:, None, None], self.out_dim,
                             self.components)

    def _rows(self, t: Tensor, x: Tensor) -> Tensor:
        """[out_dim, N] (component-major) -> [..., out_dim] for the rows of x [..., in]."""
        return t.T.reshape(*x.shape[:-1], self.out_dim)

    def _log_prob_dims_t(self, x: Tensor, y: Tensor) -> Tensor:
        """Per-dimension mixture log-density [out_dim, N] of y [..., out_dim] at x [..., in]."""
        y_t = y.expand(*x.shape[:-1], self.out_dim).reshape(-1, self.out_dim).T.contiguous()
        return mixture_log_prob_dims(*self._mixture_parts(x), y_t)

    def _log_prob(self, x: Tensor, y: Tensor) -> Tensor:
        return self._log_prob_dims_t(x, y).sum(0).reshape(x.shape[:-1])

    def _member_nll(self, x: Tensor, y: Tensor) -> Tensor:
        return -self._log_prob(x, y)

    def _member_nll_dims(self, x: Tensor, y: Tensor) -> Tensor:
        return -self._rows(self._log_prob_dims_t(x, y), x)

    def _nll(self, x: Tensor, y: Tensor) -> Tensor:
        return -self._log_prob(x, y)

    def _mean(self, x: Tensor) -> Tensor:
        logits, mean, _ = self._mixture_parts(x)
        return self._rows(mixture_mean(logits, mean), x)

    def _sample(self, x: Tensor) -> Tensor:
        logits, mean, var = self._mixture_parts(x)
        # Gumbel-max: one component per row and dimension, in one batched op (the logits'
        # normalising constant does not move the argmax).
        gumbel = -torch.log(-torch.log(torch.rand_like(logits).clamp_min(1e-20)))
        # (`max`'s indices: on the CPU `argmax` over a middle dim is ~10x slower than `max`.)
        k = (logits + gumbel).max(-2, keepdim=True).indices
        mu, v = mean.gather(-2, k).squeeze(-2), var.gather(-2, k).squeeze(-2)
        return self._rows(mu + v.sqrt() * torch.randn_like(mu), x)


def _mbpo_decays(layers: int) -> list[float]:
    """MBPO's L2 coefficients: hidden layer i gets min(2.5e-5·(i+1), 7.5e-5), the output 1e-4.

    For 4 hidden layers this is MBPO's (2.5e-5, 5e-5, 7.5e-5, 7.5e-5, 1e-4); other depths
    keep the same ramp and cap.
    """
    return [min(2.5e-5 * (i + 1), 7.5e-5) for i in range(layers)] + [1e-4]


class ProbabilisticEnsemble(DynamicsModel):
    """MBPO's ensemble: E Gaussian MLPs in one set of [E, in, out] weights (one bmm per layer).

    Each member has its own soft log-variance bounds (MBPO shares one pair; per-member bounds
    make the per-member best-holdout snapshot exact). Rollouts sample a uniformly random elite
    per row, so `nll` scores the uniform mixture over the elites.
    """

    def __init__(self, obs_dim: int, act_dim: int, cfg: ModelConfig,
                 termination_fn: TerminationFn) -> None:
        super().__init__(obs_dim, act_dim, cfg, termination_fn)
        e = self.num_members = cfg.ensemble_size
        sizes = [self.in_dim] + [cfg.hidden_size] * cfg.hidden_layers + [2 * self.out_dim]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=True):
            weight = torch.empty(e, fan_in, fan_out)
            std = 1.0 / (2.0 * math.sqrt(fan_in))  # MBPO's truncated-normal initialisation
            nn.init.trunc_normal_(weight, std=std, a=-2 * std, b=2 * std)
            self.weights.append(nn.Parameter(weight))
            self.biases.append(nn.Parameter(torch.zeros(e, 1, fan_out)))
        self.max_logvar = nn.Parameter(torch.full((e, 1, self.out_dim), 0.5))
        self.min_logvar = nn.Parameter(torch.full((e, 1, self.out_dim), -10.0))
        self.decays = _mbpo_decays(cfg.hidden_layers)
        self.register_buffer("elite_idx", torch.arange(min(cfg.elites, e)))

    def gaussian(self, x: Tensor, members: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Mean and bounded log-variance [M, B, out] of `members` (default all) at x.

        x is [M, B, in], or [B, in] / [1, B, in] to give every member the same inputs.
        """
        ws, bs = list(self.weights), list(self.biases)
        max_lv, min_lv = self.max_logvar, self.min_logvar
        if members is not None:
            ws, bs = [w[members] for w in ws], [b[members] for b in bs]
            max_lv, min_lv = max_lv[members], min_lv[members]
        m = ws[0].shape[0]
        h = x.reshape(-1, *x.shape[-2:]).expand(m, -1, -1)
        for i, (w, b) in enumerate(zip(ws, bs, strict=True)):
            h = torch.baddbmm(b, h, w)
            if i < len(ws) - 1:
                h = F.silu(h)
        mean, raw = h.chunk(2, -1)
        return mean, soft_logvar(raw, max_lv, min_lv)

    def _member_nll_dims(self, x: Tensor, y: Tensor) -> Tensor:
        mean, logvar = self.gaussian(x)
        return -_gaussian_log_prob(y, mean, logvar.exp(), logvar)

    def _member_nll(self, x: Tensor, y: Tensor) -> Tensor:
        return self._member_nll_dims(x, y).sum(-1)

    def _member_mean(self, x: Tensor) -> Tensor:
        return self.gaussian(x)[0]

    def _sample_mean(self, x: Tensor) -> Tensor:
        """A uniformly random elite's mean per row: deterministic members, random member."""
        mean = self.gaussian(x, self.elite_idx)[0]
        pick = torch.randint(len(self.elite_idx), (x.shape[0],), device=x.device)
        return mean[pick, torch.arange(x.shape[0], device=x.device)]

    def _regulariser(self) -> Tensor:
        """MBPO's L2 decays and bound penalty 0.01·(Σ max_logvar − Σ min_logvar).

        MBPO's data term is the per-dimension mean of 2·NLL, ours the NLL summed over the D
        target dims, i.e. D/2 times larger; scaling the regulariser by D/2 keeps MBPO's balance.
        """
        reg = sum(0.5 * d * (w ** 2).sum() for d, w in zip(self.decays, self.weights, strict=True))
        reg = reg + 0.01 * (self.max_logvar.sum() - self.min_logvar.sum())
        return 0.5 * self.out_dim * reg

    def _member_views(self) -> list[Tensor]:
        return [p.detach() for p in self.parameters()]

    def _after_fit(self, member_losses: Tensor) -> None:
        self.elite_idx.copy_(torch.argsort(member_losses)[: len(self.elite_idx)])

    def elite_list(self) -> list[int]:
        return self.elite_idx.tolist()

    def _nll(self, x: Tensor, y: Tensor) -> Tensor:
        mean, logvar = self.gaussian(x, self.elite_idx)
        log_p = _gaussian_log_prob(y, mean, logvar.exp(), logvar).sum(-1)  # [K, B]
        return -(torch.logsumexp(log_p, 0) - math.log(len(self.elite_idx)))

    def _mean(self, x: Tensor) -> Tensor:
        return self.gaussian(x, self.elite_idx)[0].mean(0)

    def _sample(self, x: Tensor) -> Tensor:
        mean, logvar = self.gaussian(x, self.elite_idx)
        rows = torch.arange(x.shape[0], device=x.device)
        pick = torch.randint(len(self.elite_idx), (x.shape[0],), device=x.device)
        mu, lv = mean[pick, rows], logvar[pick, rows]
        return mu + (0.5 * lv).exp() * torch.randn_like(mu)


_MODELS: dict[str, type[DynamicsModel]] = {
    "mdn": MixtureDensityModel,
    "ensemble": ProbabilisticEnsemble,
}


def make_model(cfg: ModelConfig, obs_dim: int, act_dim: int, termination_fn: TerminationFn,
               device: torch.device | str = "cpu", compile: bool = False,
               cuda_graph: bool = False, graph_steps: int = 1) -> DynamicsModel:
    """The dynamics model `cfg.kind` names, on `device`; with ``compile``, its minibatch loss
    compiled (`tom.compile`); with ``cuda_graph``, its fit's minibatch steps replayed from
    CUDA graphs, ``graph_steps`` per replay (`tom.cuda_graph`)."""
    if cfg.kind not in _MODELS:
        raise ValueError(f"model.kind must be one of {', '.join(_MODELS)}, got {cfg.kind!r}")
    check_device(cuda_graph, device)
    model = _MODELS[cfg.kind](obs_dim, act_dim, cfg, termination_fn).to(device)
    model.cuda_graph, model.graph_steps = cuda_graph, graph_steps
    if compile and cuda_graph:
        model._step_objective = compiled(model._objective, True)
    elif compile:
        model._fit_step_whole = compiled(
            model._fit_step, True,
            fallback=lambda *rows: model._fit_step(*rows[:-1], model._optimizer))
    return model
