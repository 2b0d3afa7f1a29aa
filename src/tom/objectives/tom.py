"""TOM: transition occupancy matching weights (ALGORITHM.md §4–§5).

The model objective is importance-weighted maximum likelihood on the replay buffer R with
w(s,a,s') ≈ d^π_T / d^R, the ratio of the current policy's transition occupancy to the
buffer's. The weights come from the Lagrangian dual of the Bellman flow equations
(the "DICE" program), regularised by an f-divergence:

    min_Q  (1−γ) E_{s0~D_0, a0~π}[Q(s0,a0)] + E_R[ f*( e_Q(s,a,s') ) ]
    e_Q   = ρ(s,a,s') + γ (1−done) E_{a'~π(s')}[Q(s',a')] − Q(s,a)
    w*    = f*'( e_Q* )

Setting the gradient in Q to zero gives exactly the flow equations for d = w·d^R, so at the
optimum d is the policy's occupancy whatever the shaping reward ρ is (exact tabular case);
``notebooks/derivation.py`` derives this and checks it numerically with the functions below,
and ``tests/test_tom_tabular.py`` checks it to 1e-4. With function approximation ρ matters:
the discriminator's log-odds log c/(1−c) between the recent window D^π and R point the dual
at policy-relevant transitions; the binary variant uses ρ = 1 on D^π, 0 elsewhere.

One refit: (1) train a fresh discriminator, (2) take Adam steps on the warm-started dual Q,
(3) compute w for every transition in R. The policy π is fixed during a refit, so its Gaussian
(before the tanh) is computed once at every s′ of R and every initial state, and the a′ ~ π(s′)
and a0 ~ π(s0) of steps (2) and (3) are drawn from it (`PolicyGaussians`). The model fit uses
w clipped at ``tom.w_max``; the rollout starts are drawn ∝ the unclipped w (as the paper's
code does: it clips inside the model fit only).

The discriminator follows the paper's code (``Discriminator_SAS``, itself GAIL's discriminator
with an s, a, s' encoder each): Tanh encoders, the two BCE terms summed, and a WGAN-GP
gradient penalty on the *raw logit* at random interpolates of D^π and R rows. A penalty on the
sigmoid c instead (whose slope is at most ¼) forbids confident outputs and flattens ρ towards
0; ``tests/test_tom_discriminator.py`` shows the difference.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tom.buffer import ReplayBuffer, Transition
from tom.compile import compiled
from tom.config import TOMConfig
from tom.cuda_graph import GraphedLoop, GraphedStep
from tom.objectives.base import RefitContext, ReweightingObjective
from tom.optim import AdamState, adam, adam_state, descend
from tom.sac import draw_squashed, mlp, xavier_init_
from tom.turns import in_turns, pass_turn, pass_turn_every, together

# exp() of the KL conjugate overflows float32 near 88; residuals that large mean divergence
# anyway, so the argument is capped well below (the cap never binds at a sane optimum).
_KL_EXP_CAP = 30.0


# -- the dual program: conjugates, residual, loss, weights --------------------------------------


def f_star(y: Tensor, divergence: str) -> Tensor:
    """Convex conjugate f*(y). χ²: ½max(y+1,0)² − ½ (clamped: w ≥ 0); KL: exp(y−1)."""
    if divergence == "chi2":
        return 0.5 * torch.clamp(y + 1.0, min=0.0) ** 2 - 0.5
    if divergence == "kl":
        return torch.exp(torch.clamp(y, max=_KL_EXP_CAP) - 1.0)
    raise ValueError(f"divergence must be 'chi2' or 'kl', got {divergence!r}")


def f_star_prime(y: Tensor, divergence: str) -> Tensor:
    """Derivative of the conjugate, the weight at the optimum: w = f*'(e)."""
    if divergence == "chi2":
        return torch.clamp(y + 1.0, min=0.0)
    if divergence == "kl":
        return torch.exp(torch.clamp(y, max=_KL_EXP_CAP) - 1.0)
    raise ValueError(f"divergence must be 'chi2' or 'kl', got {divergence!r}")


def dual_residual(rho: Tensor, q: Tensor, next_v: Tensor, done: Tensor, gamma: float) -> Tensor:
    """e_Q = ρ + γ(1−done)·V(s') − Q(s,a), with V(s') = E_{a'~π}Q(s',a') (sampled or exact)."""
    return rho + gamma * (1.0 - done) * next_v - q


def dual_loss(q0: Tensor, residual: Tensor, gamma: float, divergence: str,
              p0: Tensor | None = None, p_replay: Tensor | None = None) -> Tensor:
    """(1−γ) E_0[Q(s0,a0)] + E_R[f*(e)].

    Expectations are batch means, or exact sums when the probabilities ``p0`` / ``p_replay``
    of each row are given (the tabular check uses the latter; training the former).
    """
    initial = q0.mean() if p0 is None else (p0 * q0).sum()
    conj = f_star(residual, divergence)
    replay = conj.mean() if p_replay is None else (p_replay * conj).sum()
    return (1.0 - gamma) * initial + replay


def occupancy_weights(residual: Tensor, divergence: str, w_max: float | None = None) -> Tensor:
    """w = f*'(e), clipped at ``w_max`` (the paper's code clips at 10)."""
    w = f_star_prime(residual, divergence)
    return w if w_max is None else torch.clamp(w, max=w_max)


# -- networks -----------------------------------------------------------------------------------


class Discriminator(nn.Module):
    """c(s,a,s'), the paper code's architecture: a Tanh encoder of width hidden/2 for each of
    s, a and s', concatenated, a Tanh layer of width hidden, and the logit.

    Inputs are standardised with the replay buffer's statistics of this round (a deviation:
    the paper's code feeds raw features). Returns the logit, which is exactly the shaping
    reward ρ = log c/(1−c).
    """

    def __init__(self, obs_dim: int, act_dim: int, hidden: int, stats: Transition) -> None:
        super().__init__()
        enc = max(hidden // 2, 1)
        self.enc_s, self.enc_a, self.enc_s2 = (
            nn.Sequential(nn.Linear(obs_dim, enc), nn.Tanh()),
            nn.Sequential(nn.Linear(act_dim, enc), nn.Tanh()),
            nn.Sequential(nn.Linear(obs_dim, enc), nn.Tanh()))
        self.head = nn.Sequential(nn.Linear(3 * enc, hidden), nn.Tanh(), nn.Linear(hidden, 1))
        self.register_buffer("mean", torch.cat([stats.obs.mean(0), stats.act.mean(0),
                                                stats.next_obs.mean(0)]))
        self.register_buffer("std", torch.cat([stats.obs.std(0), stats.act.std(0),
                                               stats.next_obs.std(0)]).clamp(min=1e-6))
        self.obs_dim, self.act_dim = obs_dim, act_dim

    def forward(self, x: Tensor) -> Tensor:
        """Logit of c for rows x = [s, a, s'] (concatenated, raw units)."""
        x = (x - self.mean) / self.std
        s, a, s2 = torch.split(x, [self.obs_dim, self.act_dim, self.obs_dim], dim=-1)
        return self.head(torch.cat([self.enc_s(s), self.enc_a(a), self.enc_s2(s2)], -1)).squeeze(-1)


def sas(batch: Transition) -> Tensor:
    """Rows [s, a, s'], the discriminator's input."""
    return torch.cat([batch.obs, batch.act, batch.next_obs], dim=-1)


def interpolates(pos: Tensor, neg: Tensor) -> Tensor:
    """Random interpolates x̂ = ε·pos + (1 − ε)·neg of D^π and R rows, ε ~ U(0, 1) per row,
    requiring grad: where `gradient_penalty` takes the logit's gradient."""
    eps = torch.rand(pos.shape[0], 1, device=pos.device)
    return (eps * pos + (1.0 - eps) * neg).requires_grad_(True)


def gradient_penalty(disc: Discriminator, x_hat: Tensor) -> Tensor:
    """(‖∇_x logit(x̂)‖ − 1)², averaged over the interpolates x̂ (`interpolates`).

    The gradient is taken in raw input units, as in the paper's code (the standardisation
    inside the network only reparametrises it), and of the raw logit, not of the sigmoid.
    """
    (grad,) = torch.autograd.grad(disc(x_hat).sum(), x_hat, create_graph=True)
    return ((grad.norm(dim=-1) - 1.0) ** 2).mean()


def discriminator_loss(disc: Discriminator, pos: Tensor, neg: Tensor, replay_label: float,
                       grad_penalty: float, x_hat: Tensor | None = None) -> Tensor:
    """BCE(D^π → 1) + BCE(R → replay_label), each a batch mean, summed (as the paper's code),
    plus ``grad_penalty`` × the gradient penalty on the logit at the interpolates ``x_hat``
    (default: drawn here, after the forward pass)."""
    # One forward pass for both batches (their rows do not interact): half the operations.
    on_pos, on_neg = disc(torch.cat([pos, neg])).split([len(pos), len(neg)])
    bce_pos = F.binary_cross_entropy_with_logits(on_pos, torch.ones_like(on_pos))
    bce_neg = F.binary_cross_entropy_with_logits(on_neg, torch.full_like(on_neg, replay_label))
    loss = bce_pos + bce_neg
    if grad_penalty > 0:
        loss = loss + grad_penalty * gradient_penalty(
            disc, interpolates(pos, neg) if x_hat is None else x_hat)
    return loss


def discriminator_step(disc: Discriminator, pos: Tensor, neg: Tensor, x_hat: Tensor | None,
                       cfg: TOMConfig, optimizer: torch.optim.Optimizer,
                       state: AdamState | None = None) -> Tensor:
    """One Adam step of the discriminator on a minibatch (`discriminator_loss`,
    `tom.optim.descend`); with the optimiser's ``state`` (the step compiled whole, which
    does not touch ``optimizer`` itself), by `tom.optim.adam_update_`. The loss, detached."""
    loss = discriminator_loss(disc, pos, neg, cfg.replay_label, cfg.grad_penalty, x_hat)
    descend(loss, optimizer if state is None else state)
    return loss.detach()


def train_discriminator(buf: ReplayBuffer, recent: Tensor, cfg: TOMConfig, obs_dim: int,
                        act_dim: int, cuda_graph: bool = False,
                        step_whole: Callable[..., Tensor] | None = None) -> Discriminator:
    """A fresh discriminator trained on D^π (rows where ``recent``) against all of R.

    Each pass goes once over D^π in shuffled minibatches of ``cfg.disc_batch``, each paired
    with as many uniform draws from R (which contains D^π, as a replay buffer does). In a
    population that stacks its runs' work (stack_seeds), trained with the other runs'
    discriminators as one (`tom.stacked_tom.StackedDiscriminator`). ``step_whole``:
    `discriminator_step` compiled (`tom.compile`), or None for the eager step.
    """
    device = buf.device
    disc = Discriminator(obs_dim, act_dim, cfg.disc_hidden, buf.all()).to(device)
    opt = adam(disc.parameters(), lr=cfg.disc_lr, capturable=cuda_graph)
    recent_idx = torch.nonzero(recent).squeeze(-1)
    together("disc", lambda: _train_discriminator_alone(disc, opt, buf, recent_idx, cfg,
                                                        cuda_graph, step_whole),
             lambda: (disc, opt, cfg, draw_disc_work(buf, recent_idx, cfg)))
    disc.requires_grad_(False)
    return disc


def _train_discriminator_alone(disc: Discriminator, opt: torch.optim.Optimizer,
                               buf: ReplayBuffer, recent_idx: Tensor, cfg: TOMConfig,
                               cuda_graph: bool,
                               step_whole: Callable[..., Tensor] | None = None) -> None:
    """The discriminator's passes. Each pass draws its order, then each step its replay
    rows and (with a gradient penalty) its interpolation weights (what `draw_disc_work`
    draws ahead)."""
    n_recent = recent_idx.numel()

    def minibatch_step(rows: Tensor) -> Tensor:
        pos = sas(buf.get(rows))
        neg = sas(buf.sample(pos.shape[0]))
        if step_whole is None:
            return discriminator_step(disc, pos, neg, None, cfg, opt)
        # The interpolates drawn before the compiled step: a tensor made to require grad
        # inside it would split its graph. (No draw comes between: the same stream.)
        x_hat = interpolates(pos, neg) if cfg.grad_penalty > 0 else None
        return step_whole(disc, pos, neg, x_hat, cfg, opt, adam_state(opt))

    step = GraphedStep(minibatch_step, enabled=cuda_graph)  # tom.cuda_graph
    done = 0
    for _ in range(cfg.disc_passes):
        order = recent_idx[torch.randperm(n_recent, device=recent_idx.device)]
        for lo in range(0, n_recent, cfg.disc_batch):
            step(order[lo:lo + cfg.disc_batch])
            done += 1
            pass_turn_every(done)  # in a population: the others queue work meanwhile


@dataclass
class DiscWork:
    """One member's discriminator steps' inputs, drawn ahead: per step, the D^π rows, the
    replay rows ([s, a, s'] each) and the gradient penalty's interpolation weights (None
    without a penalty). The last step of a pass may have fewer rows."""

    pos: list[Tensor]
    neg: list[Tensor]
    eps: list[Tensor | None]

    def tensors(self) -> list[Tensor]:
        return [*self.pos, *self.neg, *(e for e in self.eps if e is not None)]


def draw_disc_work(buf: ReplayBuffer, recent_idx: Tensor, cfg: TOMConfig) -> DiscWork:
    """The inputs of a discriminator's training (for `tom.stacked_tom`), drawn from the
    global generators as `_train_discriminator_alone` draws them."""
    n_recent, device = recent_idx.numel(), recent_idx.device
    work = DiscWork([], [], [])
    for _ in range(cfg.disc_passes):
        order = recent_idx[torch.randperm(n_recent, device=device)]
        for lo in range(0, n_recent, cfg.disc_batch):
            pos = sas(buf.get(order[lo:lo + cfg.disc_batch]))
            work.pos.append(pos)
            work.neg.append(sas(buf.sample(pos.shape[0])))
            work.eps.append(torch.rand(pos.shape[0], 1, device=device)
                            if cfg.grad_penalty > 0 else None)
    return work


@torch.no_grad()
def discriminator_logits(disc: Discriminator, buf: ReplayBuffer, chunk: int = 65_536
                         ) -> Tensor:
    """The discriminator's logit for every transition of ``buf`` (ρ of the "disc" reward), in
    batches of ``chunk`` rows."""
    data = buf.all()
    return torch.cat([disc(sas(data.index(slice(lo, lo + chunk))))
                      for lo in range(0, data.size, chunk)])


def discriminator_statistics(logits: Tensor, recent: Tensor) -> dict[str, float]:
    """Balanced accuracy of c > ½ for D^π vs the rest of R, and the logit's mean and std on
    each, from the ``logits`` of every transition (diagnostics of how strongly ρ shapes the
    dual, not training targets)."""
    older = ~recent if (~recent).any() else recent
    hit = (logits > 0) == recent
    acc = 0.5 * (hit[recent].float().mean() + hit[older].float().mean())
    on_recent, on_older = logits[recent].double(), logits[older].double()
    return {"disc_acc": acc.item(),
            "disc_logit_recent_mean": on_recent.mean().item(),
            "disc_logit_recent_std": on_recent.std(unbiased=False).item(),
            "disc_logit_old_mean": on_older.mean().item(),
            "disc_logit_old_std": on_older.std(unbiased=False).item()}


class DualQ(nn.Module):
    """Q(s,a) of the dual program: a ReLU MLP on [s, a].

    ``init='xavier'`` is the paper code's (its ``QNetwork``: Glorot-uniform weights, zero
    biases); ``'torch'`` keeps PyTorch's default.
    """

    def __init__(self, obs_dim: int, act_dim: int, hidden: int, init: str = "xavier") -> None:
        super().__init__()
        self.net = mlp(obs_dim + act_dim, 1, hidden, hidden_layers=2)
        if init == "xavier":
            xavier_init_(self.net)
        elif init != "torch":
            raise ValueError(f"init must be 'xavier' or 'torch', got {init!r}")

    def forward(self, obs: Tensor, act: Tensor) -> Tensor:
        return self.net(torch.cat([obs, act], dim=-1)).squeeze(-1)


# -- the policy's actions, and each dual step's inputs ------------------------------------------


@dataclass
class PolicyGaussians:
    """The policy's Gaussian before its tanh (`tom.sac.SAC.gaussian`: mean, then standard
    deviation, [·, 2·act_dim]) at every s′ of the replay buffer (by storage slot) and at every
    recorded initial state, from which a refit draws a′ ~ π(s′) and a0 ~ π(s0)
    (`tom.sac.draw_squashed`).

    The policy does not change during a refit, so its actor runs once per row here rather
    than at every dual step (twice 256 rows, 1 000 steps at the paper preset: a seventh of a
    dual step's time on 2 CPU threads, benchmarks/RESULTS.md) and again for the weights. The
    draws are those `SAC.sample_action` would make: the same distribution and random numbers.
    """

    next_obs: Tensor
    initial: Tensor

    @classmethod
    def of(cls, agent, buf: ReplayBuffer, chunk: int = 65_536) -> PolicyGaussians:
        """``agent``'s (anything with `SAC.gaussian`) at ``buf``'s s′ and initial states, in
        batches of ``chunk`` rows."""
        states = buf.require_initial_states()
        next_obs = buf.all().next_obs
        return cls(torch.cat([agent.gaussian(next_obs[lo:lo + chunk])
                              for lo in range(0, len(next_obs), chunk)]),
                   agent.gaussian(states))


@dataclass
class DualWork:
    """A dual step's inputs (`draw_dual_inputs`), or several steps' stacked [step, ...]
    (`draw_dual_work`, for runs stacked: `tom.stacked_tom`)."""

    batch: Transition  # a minibatch of the replay buffer R, [row, ·]
    rho: Tensor  # its shaping rewards, [row]
    s0: Tensor  # initial states, [row, obs_dim]
    a0: Tensor  # a0 ~ π(s0), [row, act_dim]
    next_act: Tensor  # a′ ~ π(s′), next_action_samples per row (rows repeated), [k·row, act_dim]

    def tensors(self) -> list[Tensor]:
        return [*self.batch, self.rho, self.s0, self.a0, self.next_act]


def draw_dual_inputs(buf: ReplayBuffer, rho_all: Tensor, policy: PolicyGaussians,
                     cfg: TOMConfig) -> DualWork:
    """One dual step's inputs, drawn in this order: the minibatch's rows (uniform, with
    replacement), the initial states' rows, a0's noise, then a′'s."""
    rows, device = cfg.dual_batch, buf.device
    idx = torch.randint(len(buf), (rows,), device=device)
    s0_idx = torch.randint(len(policy.initial), (rows,), device=device)
    a0 = draw_squashed(policy.initial[s0_idx])
    next_act = draw_squashed(policy.next_obs[idx].repeat(cfg.next_action_samples, 1))
    return DualWork(buf.get(idx), rho_all[idx], buf.initial_states()[s0_idx], a0, next_act)


def draw_dual_work(buf: ReplayBuffer, rho_all: Tensor, policy: PolicyGaussians,
                   cfg: TOMConfig) -> DualWork:
    """The inputs of ``cfg.dual_steps`` dual steps, stacked (for `tom.stacked_tom`), drawn
    from the global generators as `TOMObjective._train_dual_alone` draws them."""
    steps = [draw_dual_inputs(buf, rho_all, policy, cfg) for _ in range(cfg.dual_steps)]
    stacked = [torch.stack(parts) for parts in zip(*(w.tensors() for w in steps), strict=True)]
    fields = len(Transition._fields)
    return DualWork(Transition(*stacked[:fields]), *stacked[fields:])


# -- the objective ------------------------------------------------------------------------------


class TOMObjective(ReweightingObjective):
    """Weights w ≈ d^π_T/d^R from the dual program: the model fit uses them clipped at
    ``tom.w_max``, the rollout starts unclipped."""

    def __init__(self, cfg, obs_dim: int, act_dim: int) -> None:
        super().__init__(cfg, obs_dim, act_dim)
        self.tom, self.gamma = cfg.tom, cfg.sac.gamma
        self.q = DualQ(obs_dim, act_dim, self.tom.dual_hidden, self.tom.dual_init).to(self.device)
        self.cuda_graph, self.graph_steps = cfg.cuda_graph, cfg.cuda_graph_steps
        self.q_opt = adam(self.q.parameters(), lr=self.tom.dual_lr,
                          weight_decay=self.tom.dual_weight_decay, capturable=self.cuda_graph)
        self.rounds = 0
        self.raw_weights: Tensor | None = None  # f*'(e) before the clip
        # `compile` (`tom.compile`): without CUDA graphs, `_dual_step` compiled whole (loss,
        # gradient and Adam step, one graph); with them, the loss alone.
        self._dual_step_loss = (compiled(self.dual_minibatch_loss, True)
                                if cfg.compile and self.cuda_graph else None)
        self._dual_step_whole = (
            compiled(self._dual_step, True,
                     fallback=lambda inputs, state: self._dual_step(inputs, self.q_opt))
            if cfg.compile and not self.cuda_graph else None)
        # The discriminator (its gradient penalty's double backward) is compiled only whole.
        self._disc_step_whole = (
            compiled(discriminator_step, True,
                     fallback=lambda *args: discriminator_step(*args[:-1]))
            if cfg.compile and not self.cuda_graph else None)

    def update(self, ctx: RefitContext) -> None:
        # Until the recent window holds N_π transitions of the learning policy, D^π is not a
        # sample of the current policy: fit like MLE (as the paper's code does).
        if ctx.learner_steps < self.tom.recent_window:
            self.weights = self.raw_weights = None
            self._stats = {}
            return
        buf = ctx.buffer
        recent = buf.recent_mask(self.tom.recent_window)
        disc_stats, rho = self._shaping_reward(buf, recent)
        policy = PolicyGaussians.of(ctx.agent, buf)
        dual_stats = self._train_dual(buf, policy, rho)
        self.raw_weights = self._all_weights(buf, policy, rho)
        self.weights = torch.clamp(self.raw_weights, max=self.tom.w_max)
        self.rounds += 1
        self._stats = {**disc_stats, **dual_stats, "tom_rounds": float(self.rounds)}

    def start_weights(self) -> Tensor | None:
        return self.raw_weights

    # Step 1: the shaping reward ρ (discriminator log-odds, or the binary indicator). ρ is
    # fixed while the dual trains: computed once for every transition of the buffer, in large
    # batches, rather than once per dual minibatch (1 000 × 256 rows at the paper preset); the
    # discriminator's statistics come from the same logits.
    def _shaping_reward(self, buf: ReplayBuffer, recent: Tensor
                        ) -> tuple[dict[str, float], Tensor]:
        """The discriminator's statistics, and ρ for every transition of ``buf``."""
        if self.tom.reward == "binary":
            return {}, recent.float()
        disc = train_discriminator(buf, recent, self.tom, self.obs_dim, self.act_dim,
                                   self.cuda_graph, self._disc_step_whole)
        pass_turn()  # in a population: the others' work runs while its training does
        logits = discriminator_logits(disc, buf)
        return discriminator_statistics(logits, recent), logits

    # Step 2: Adam steps on the dual, warm-started from the last round; in a population that
    # stacks its runs' work (stack_seeds), with the other runs' as one (tom.stacked_tom).
    def _train_dual(self, buf: ReplayBuffer, policy: PolicyGaussians, rho_all: Tensor
                    ) -> dict[str, float]:
        loss = together(
            "dual", lambda: self._train_dual_alone(buf, policy, rho_all),
            lambda: (self, draw_dual_work(buf, rho_all, policy, self.tom)))
        return {"dual_loss": loss.item()}

    def _train_dual_alone(self, buf: ReplayBuffer, policy: PolicyGaussians, rho_all: Tensor
                          ) -> Tensor:
        """The dual steps, each on inputs from `draw_dual_inputs`; the last one's loss."""
        t = self.tom

        def minibatch_step() -> Tensor:
            inputs = draw_dual_inputs(buf, rho_all, policy, t)
            if self._dual_step_whole is None:
                return self._dual_step(inputs, self.q_opt)
            return self._dual_step_whole(inputs, adam_state(self.q_opt))

        # Graphs per refit (tom.cuda_graph): the buffer and ρ are new tensors each refit.
        steps = GraphedLoop(minibatch_step, self.graph_steps, enabled=self.cuda_graph)
        # In a population, passing the turn every few steps and at the end: the others' work
        # runs while these steps do.
        return in_turns(steps, t.dual_steps, steps.per_graph)

    def _dual_step(self, inputs: DualWork, optimizer: torch.optim.Optimizer | AdamState
                   ) -> Tensor:
        """One Adam step on the dual loss of a minibatch (`tom.optim.descend`); the loss,
        detached."""
        loss = (self._dual_step_loss or self.dual_minibatch_loss)(inputs)
        descend(loss, optimizer)
        return loss.detach()

    def dual_minibatch_loss(self, inputs: DualWork) -> Tensor:
        """The dual loss on one minibatch of R (with its ρ and its sampled a′) and of initial
        states s0 (with their a0); differentiable in the dual Q."""
        batch, samples = inputs.batch, self.tom.next_action_samples
        next_rows = batch.next_obs.repeat(samples, 1)
        # One forward pass of the dual Q for the three batches (their rows do not interact):
        # a third of the operations.
        q, next_q, q0 = self.q(torch.cat([batch.obs, next_rows, inputs.s0]),
                               torch.cat([batch.act, inputs.next_act, inputs.a0])
                               ).split([len(batch.obs), len(next_rows), len(inputs.s0)])
        residual = dual_residual(inputs.rho, q, next_q.view(samples, -1).mean(0), batch.done,
                                 self.gamma)
        return dual_loss(q0, residual, self.gamma, self.tom.divergence)

    # Step 3: unclipped weights for every transition in R, batched, no grad.
    @torch.no_grad()
    def _all_weights(self, buf: ReplayBuffer, policy: PolicyGaussians, rho_all: Tensor,
                     chunk: int = 65_536) -> Tensor:
        data, parts, samples = buf.all(), [], self.tom.next_action_samples
        for lo in range(0, data.size, chunk):
            sl = slice(lo, lo + chunk)
            batch = data.index(sl)
            # V(s′) = E_{a′~π(s′)} Q(s′, a′), averaged over the sampled a′ of each row.
            next_act = draw_squashed(policy.next_obs[sl].repeat(samples, 1))
            next_v = self.q(batch.next_obs.repeat(samples, 1), next_act).view(samples, -1).mean(0)
            residual = dual_residual(rho_all[sl], self.q(batch.obs, batch.act), next_v,
                                     batch.done, self.gamma)
            parts.append(occupancy_weights(residual, self.tom.divergence))
        weights = torch.cat(parts)
        if not torch.isfinite(weights).all() or weights.sum() <= 0:
            raise FloatingPointError(
                "TOM weights are non-finite or all zero: the dual diverged "
                f"(try a smaller tom.dual_lr than {self.tom.dual_lr})")
        return weights

    def state_dict(self) -> dict[str, Any]:
        return {"q": self.q.state_dict(), "q_opt": self.q_opt.state_dict(), "rounds": self.rounds}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.q.load_state_dict(state["q"])
        self.q_opt.load_state_dict(state["q_opt"])
        self.rounds = state["rounds"]
