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
(3) compute and clip w for every transition in R. The model fit and rollout starts use w.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tom.buffer import ReplayBuffer, Transition
from tom.objectives.base import RefitContext, ReweightingObjective
from tom.sac import mlp

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
    """c(s,a,s'): one small encoder layer each for s, a, s', concatenated, then two layers.

    Inputs are standardised with the replay buffer's statistics of this round. Returns the
    logit, which is exactly the shaping reward ρ = log c/(1−c).
    """

    def __init__(self, obs_dim: int, act_dim: int, hidden: int, stats: Transition) -> None:
        super().__init__()
        enc = max(hidden // 4, 8)
        self.enc_s, self.enc_a, self.enc_s2 = (nn.Linear(obs_dim, enc), nn.Linear(act_dim, enc),
                                               nn.Linear(obs_dim, enc))
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(3 * enc, hidden), nn.ReLU(),
                                  nn.Linear(hidden, 1))
        self.register_buffer("mean", torch.cat([stats.obs.mean(0), stats.act.mean(0),
                                                stats.next_obs.mean(0)]))
        self.register_buffer("std", torch.cat([stats.obs.std(0), stats.act.std(0),
                                               stats.next_obs.std(0)]).clamp(min=1e-6))
        self.obs_dim, self.act_dim = obs_dim, act_dim

    def forward(self, x: Tensor) -> Tensor:
        """Logit of c for rows x = [s, a, s'] (concatenated)."""
        x = (x - self.mean) / self.std
        s, a, s2 = torch.split(x, [self.obs_dim, self.act_dim, self.obs_dim], dim=-1)
        return self.head(torch.cat([self.enc_s(s), self.enc_a(a), self.enc_s2(s2)], -1)).squeeze(-1)


def _sas(batch: Transition) -> Tensor:
    return torch.cat([batch.obs, batch.act, batch.next_obs], dim=-1)


class DualQ(nn.Module):
    """Q(s,a) of the dual program: an MLP on [s, a]."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: int) -> None:
        super().__init__()
        self.net = mlp(obs_dim + act_dim, 1, hidden, hidden_layers=2)

    def forward(self, obs: Tensor, act: Tensor) -> Tensor:
        return self.net(torch.cat([obs, act], dim=-1)).squeeze(-1)


# -- the objective ------------------------------------------------------------------------------


class TOMObjective(ReweightingObjective):
    """Weights w ≈ d^π_T/d^R from the dual program; model fit and rollout starts use them."""

    def __init__(self, cfg, obs_dim: int, act_dim: int) -> None:
        super().__init__(cfg, obs_dim, act_dim)
        self.tom, self.gamma = cfg.tom, cfg.sac.gamma
        self.q = DualQ(obs_dim, act_dim, self.tom.dual_hidden).to(self.device)
        self.q_opt = torch.optim.Adam(self.q.parameters(), lr=self.tom.dual_lr,
                                      weight_decay=self.tom.dual_weight_decay)
        self.rounds = 0

    def update(self, ctx: RefitContext) -> None:
        # Until the recent window holds N_π transitions of the learning policy, D^π is not a
        # sample of the current policy: fit like MLE (as the paper's code does).
        if ctx.learner_steps < self.tom.recent_window:
            self.weights, self._stats = None, {}
            return
        buf = ctx.buffer
        recent = buf.recent_mask(self.tom.recent_window)
        disc_stats, rho_fn = self._shaping_reward(buf, recent)
        dual_stats = self._train_dual(buf, ctx.agent, rho_fn, recent)
        self.weights = self._all_weights(buf, ctx.agent, rho_fn, recent)
        self.rounds += 1
        self._stats = {**disc_stats, **dual_stats, "tom_rounds": float(self.rounds)}

    # Step 1: the shaping reward ρ (discriminator log-odds, or the binary indicator).
    def _shaping_reward(self, buf: ReplayBuffer, recent: Tensor):
        if self.tom.reward == "binary":
            return {}, lambda batch, is_recent: is_recent.float()
        disc = self._train_discriminator(buf, recent)
        stats = {"disc_acc": _discriminator_accuracy(disc, buf, recent)}
        return stats, lambda batch, is_recent: disc(_sas(batch))

    def _train_discriminator(self, buf: ReplayBuffer, recent: Tensor) -> Discriminator:
        """Fresh network each round: BCE (D^π → 1, R → replay_label) + gradient penalty."""
        t = self.tom
        data = buf.all()
        disc = Discriminator(self.obs_dim, self.act_dim, t.disc_hidden, data).to(self.device)
        opt = torch.optim.Adam(disc.parameters(), lr=t.disc_lr)
        recent_idx = torch.nonzero(recent).squeeze(-1)
        n_recent = recent_idx.numel()
        steps_per_pass = -(-n_recent // t.disc_batch)
        for _ in range(t.disc_passes):
            order = recent_idx[torch.randperm(n_recent, device=self.device)]
            for k in range(steps_per_pass):
                pos = _sas(buf.get(order[k * t.disc_batch:(k + 1) * t.disc_batch]))
                neg = _sas(buf.sample(pos.shape[0]))
                logits = disc(torch.cat([pos, neg]))
                labels = torch.cat([torch.ones(len(pos), device=self.device),
                                    torch.full((len(neg),), t.replay_label, device=self.device)])
                loss = F.binary_cross_entropy_with_logits(logits, labels)
                if t.grad_penalty > 0:
                    loss = loss + t.grad_penalty * _gradient_penalty(disc, pos, neg)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        disc.requires_grad_(False)
        return disc

    # Step 2: Adam steps on the dual, warm-started from the last round.
    def _train_dual(self, buf: ReplayBuffer, agent, rho_fn, recent: Tensor) -> dict[str, float]:
        t = self.tom
        n = len(buf)
        loss = torch.zeros(())
        for _ in range(t.dual_steps):
            idx = torch.randint(n, (t.dual_batch,), device=self.device)
            batch = buf.get(idx)
            s0 = buf.sample_initial_states(t.dual_batch)
            with torch.no_grad():
                rho = rho_fn(batch, recent[idx])
                a0, _ = agent.sample(s0)
                a_next, _ = agent.sample(batch.next_obs)
            residual = dual_residual(rho, self.q(batch.obs, batch.act),
                                     self.q(batch.next_obs, a_next), batch.done, self.gamma)
            loss = dual_loss(self.q(s0, a0), residual, self.gamma, t.divergence)
            self.q_opt.zero_grad(set_to_none=True)
            loss.backward()
            self.q_opt.step()
        return {"dual_loss": loss.item()}

    # Step 3: weights for every transition in R, batched, no grad, clipped.
    @torch.no_grad()
    def _all_weights(self, buf: ReplayBuffer, agent, rho_fn, recent: Tensor,
                     chunk: int = 65_536) -> Tensor:
        data, parts = buf.all(), []
        for lo in range(0, data.size, chunk):
            sl = slice(lo, lo + chunk)
            batch = data.index(sl)
            a_next, _ = agent.sample(batch.next_obs)
            residual = dual_residual(rho_fn(batch, recent[sl]), self.q(batch.obs, batch.act),
                                     self.q(batch.next_obs, a_next), batch.done, self.gamma)
            parts.append(occupancy_weights(residual, self.tom.divergence, self.tom.w_max))
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


def _gradient_penalty(disc: Discriminator, pos: Tensor, neg: Tensor) -> Tensor:
    """λ-free penalty (‖∇_x c(x̂)‖ − 1)² on random interpolates x̂ of D^π and R samples."""
    eps = torch.rand(pos.shape[0], 1, device=pos.device)
    x = (eps * pos + (1.0 - eps) * neg).requires_grad_(True)
    c = torch.sigmoid(disc(x))
    (grad,) = torch.autograd.grad(c.sum(), x, create_graph=True)
    return ((grad.norm(dim=-1) - 1.0) ** 2).mean()


@torch.no_grad()
def _discriminator_accuracy(disc: Discriminator, buf: ReplayBuffer, recent: Tensor) -> float:
    """Balanced accuracy of c > ½ for D^π vs the rest of R (a diagnostic, not a target)."""
    logits = disc(_sas(buf.all()))
    hit = (logits > 0) == recent
    older = ~recent
    acc_recent = hit[recent].float().mean()
    acc_old = hit[older].float().mean() if older.any() else acc_recent
    return (0.5 * (acc_recent + acc_old)).item()
