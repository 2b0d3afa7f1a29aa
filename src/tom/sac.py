"""Soft actor-critic (Haarnoja et al. 2018) with automatic entropy tuning, as MBPO uses it.

Actions live in [-1, 1]^act_dim (the environments are rescaled to that box), so the policy is
a tanh-squashed diagonal Gaussian. Two Q critics fight over-estimation (the target takes their
minimum); their slow-moving Polyak copies give the Bellman target. The temperature alpha is
learned so that the policy's entropy tracks a target (-act_dim unless configured).

The two critics are one module with stacked weights, so a single batched matmul per layer
evaluates both: that is most of the cost of an update, and SAC runs millions of them.
All randomness comes from the global torch RNG, so callers seed runs with ``torch.manual_seed``.

With ``cuda_graph`` (on a GPU) each minibatch shape's update is captured once as a CUDA graph
and replayed (`tom.cuda_graph`): the same kernels, launched once instead of a few hundred times.
A block of updates whose minibatches share one shape (`SAC.update_block`, the training loop's
usual case) is one graph: one launch for the block.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tom.buffer import Transition
from tom.compile import compiled
from tom.config import SACConfig
from tom.cuda_graph import GraphedStep, check_device
from tom.optim import AdamState, adam, adam_state, descend

# Haarnoja et al.'s and MBPO's bounds: wide enough to be inactive in practice, they only stop
# the standard deviation from collapsing to zero or exploding while the critics are poor.
LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0


def mlp(in_dim: int, out_dim: int, hidden_size: int, hidden_layers: int) -> nn.Sequential:
    """A ReLU multilayer perceptron with ``hidden_layers`` hidden layers.

    The ReLUs work in place: a linear layer's backward needs its input, not its output, and a
    ReLU's needs only its result, so overwriting the layer's output loses nothing and saves a
    pass over a fresh activation tensor (the same bits; a SAC update 5-9 % faster on 2 CPU
    threads, benchmarks/RESULTS.md).
    """
    layers: list[nn.Module] = []
    for i in range(hidden_layers):
        layers += [nn.Linear(in_dim if i == 0 else hidden_size, hidden_size),
                   nn.ReLU(inplace=True)]
    layers.append(nn.Linear(hidden_size, out_dim))
    return nn.Sequential(*layers)


def tanh_normal_log_prob(pre_tanh: Tensor, mean: Tensor, log_std: Tensor) -> Tensor:
    """log density of ``tanh(u)`` for u ~ N(mean, exp(log_std)^2), summed over the last dim.

    Change of variables: log p(a) = log N(u) - log(1 - tanh(u)^2). The Jacobian term is written
    as 2 (log 2 - u - softplus(-2u)), which is exact and stays finite where tanh(u) rounds to
    ±1 (the usual ``log(1 - a^2 + 1e-6)`` biases the density there).
    """
    z = (pre_tanh - mean) / log_std.exp()
    log_normal = -0.5 * z.pow(2) - log_std - 0.5 * math.log(2 * math.pi)
    log_jacobian = 2 * (math.log(2) - pre_tanh - F.softplus(-2 * pre_tanh))
    return (log_normal - log_jacobian).sum(-1)


def soft_q_target(reward: Tensor, done: Tensor, next_q: Tensor, next_logp: Tensor,
                  alpha: Tensor | float, gamma: float) -> Tensor:
    """Soft Bellman target r + gamma (1 - done) (Q'(s', a') - alpha log pi(a'|s')).

    ``done`` marks termination (not time-limit truncation), where the return stops and the
    next state's soft value must not be bootstrapped.
    """
    return reward + gamma * (1.0 - done) * (next_q - alpha * next_logp)


def draw_squashed(gaussian: Tensor) -> Tensor:
    """An action tanh(mean + std·ε), ε ~ N(0, I), from each row of ``gaussian`` (`SAC.gaussian`:
    the mean, then the standard deviation): `SAC.sample_action`'s draw, from a Gaussian
    computed ahead."""
    mean, std = gaussian.chunk(2, dim=-1)
    return (mean + std * torch.randn_like(mean)).tanh()


class Actor(nn.Module):
    """Gaussian policy head before the tanh: obs -> (mean, log_std), each [..., act_dim]."""

    def __init__(self, obs_dim: int, act_dim: int, hidden_size: int, hidden_layers: int) -> None:
        super().__init__()
        self.net = mlp(obs_dim, 2 * act_dim, hidden_size, hidden_layers)

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        mean, log_std = self.net(obs).chunk(2, dim=-1)
        return mean, log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)


class StackedLinear(nn.Module):
    """``n`` independent linear layers applied at once: [n, B, in] -> [n, B, out]."""

    def __init__(self, n: int, in_dim: int, out_dim: int) -> None:
        super().__init__()
        # nn.Linear's default initialisation, U(-1/sqrt(in), 1/sqrt(in)), for each member.
        bound = 1.0 / math.sqrt(in_dim)
        self.weight = nn.Parameter(torch.empty(n, in_dim, out_dim).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(n, 1, out_dim).uniform_(-bound, bound))

    def forward(self, x: Tensor) -> Tensor:
        return torch.baddbmm(self.bias, x, self.weight)


class TwinQ(nn.Module):
    """Two independent Q networks evaluated together: (obs, act) -> [2, ...] Q-values."""

    def __init__(self, obs_dim: int, act_dim: int, hidden_size: int, hidden_layers: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_dim = obs_dim + act_dim
        for i in range(hidden_layers):
            layers += [StackedLinear(2, in_dim if i == 0 else hidden_size, hidden_size),
                       nn.ReLU(inplace=True)]  # in place, as in `mlp`
        layers.append(StackedLinear(2, hidden_size, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, obs: Tensor, act: Tensor) -> Tensor:
        x = torch.cat([obs, act], dim=-1)
        lead = x.shape[:-1]
        x = x.reshape(1, -1, x.shape[-1]).expand(2, -1, -1)  # both critics see the same rows
        return self.net(x).reshape(2, *lead)


def xavier_init_(module: nn.Module) -> None:
    """Glorot-uniform weights and zero biases for every linear layer, in place.

    This is the initialisation of the SAC code the paper's code builds on (``weights_init_``,
    U(+-sqrt(6 / (fan_in + fan_out)))); PyTorch's default draws smaller hidden weights and
    nonzero biases.
    """
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            fan_out, fan_in = layer.weight.shape
        elif isinstance(layer, StackedLinear):
            fan_in, fan_out = layer.weight.shape[1:]
        else:
            continue
        bound = math.sqrt(6.0 / (fan_in + fan_out))
        with torch.no_grad():
            layer.weight.uniform_(-bound, bound)
            layer.bias.zero_()


class UpdateStats(Mapping[str, float]):
    """One update's statistics, copied from the device only when first read: a loop that
    looks at them once per block of updates synchronises with a GPU once per block, not once
    per update."""

    NAMES = ("q_loss", "actor_loss", "alpha", "entropy")

    def __init__(self, values: Tensor) -> None:
        self._values, self._floats = values, None

    def _read(self) -> dict[str, float]:
        if self._floats is None:
            self._floats = dict(zip(self.NAMES, self._values.tolist(), strict=True))
        return self._floats

    def __getitem__(self, name: str) -> float:
        return self._read()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.NAMES)

    def __len__(self) -> int:
        return len(self.NAMES)


class SAC:
    """The agent: actor, twin critics with Polyak targets, learned temperature, optimisers."""

    # Eager updates per minibatch shape before its graph is captured.
    GRAPH_WARMUP = 3

    def __init__(self, obs_dim: int, act_dim: int, cfg: SACConfig,
                 device: str | torch.device = "cpu", compile: bool = False,
                 cuda_graph: bool = False) -> None:
        self.cfg, self.device, self.act_dim = cfg, torch.device(device), act_dim
        check_device(cuda_graph, device)
        sizes = (cfg.hidden_size, cfg.hidden_layers)
        self.actor = Actor(obs_dim, act_dim, *sizes).to(self.device)
        self.critic = TwinQ(obs_dim, act_dim, *sizes).to(self.device)
        if cfg.init == "xavier":
            xavier_init_(self.actor)
            xavier_init_(self.critic)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        # alpha = exp(log_alpha) keeps the temperature positive without a constraint.
        self.log_alpha = torch.tensor(math.log(cfg.init_alpha), device=self.device,
                                      requires_grad=True)
        self.target_entropy = float(-act_dim if cfg.target_entropy is None
                                    else cfg.target_entropy)
        self.actor_opt = adam(self.actor.parameters(), lr=cfg.lr, capturable=cuda_graph)
        self.critic_opt = adam(self.critic.parameters(), lr=cfg.lr, capturable=cuda_graph)
        self.alpha_opt = adam([self.log_alpha], lr=cfg.lr, capturable=cuda_graph)
        self.num_updates = 0
        self._step = GraphedStep(lambda *batch: self._update_once(Transition(*batch)),
                                 warmup=self.GRAPH_WARMUP, enabled=cuda_graph)
        # A block of updates as one graph: one eager block (all its updates) warms it up.
        self._block_step = GraphedStep(self._update_block, warmup=1, enabled=cuda_graph)
        # `compile` (`tom.compile`): without CUDA graphs, each update as one compiled graph
        # (its three losses, gradients and Adam steps, and the Polyak average); with them, the
        # critic loss alone (not the actor's: compiled alone, its update took 24 % longer on
        # 2 CPU threads; benchmarks/RESULTS.md).
        self._critic_loss = compiled(self.critic_loss, True) if compile and cuda_graph else None
        self._update_whole = (compiled(self._update, True,
                                       fallback=lambda batch, states: self._update(batch))
                              if compile and not cuda_graph else None)

    @property
    def alpha(self) -> Tensor:
        """The current temperature, detached: losses other than alpha's treat it as given."""
        return self.log_alpha.detach().exp()

    # -- acting and evaluating -------------------------------------------------------------

    @torch.no_grad()
    def act(self, obs: Tensor, deterministic: bool = False) -> Tensor:
        """Action for ``obs`` ([obs_dim] or [B, obs_dim]); deterministic means tanh(mean)."""
        obs = torch.as_tensor(obs, dtype=torch.float32, device=self.device)
        if deterministic:
            return self.actor(obs)[0].tanh()
        return self.sample_action(obs)

    def sample(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        """Reparameterised action a ~ pi(.|obs) and its log-density [B], both differentiable."""
        pre_tanh, mean, log_std = self._pre_tanh(obs)
        return pre_tanh.tanh(), tanh_normal_log_prob(pre_tanh, mean, log_std)

    def sample_action(self, obs: Tensor) -> Tensor:
        """`sample`'s action alone: the same draw and operations, so the same bits, without
        the log-density that acting, rollouts and TOM's dual would discard (a dozen
        elementwise kernels each time)."""
        return self._pre_tanh(obs)[0].tanh()

    @torch.no_grad()
    def gaussian(self, obs: Tensor) -> Tensor:
        """The policy's Gaussian before its tanh at each row of ``obs``: [B, 2·act_dim], the
        mean, then the standard deviation. For a consumer that draws many actions at the same
        states while the policy stays fixed (TOM's dual, `draw_squashed`)."""
        mean, log_std = self.actor(obs)
        return torch.cat([mean, log_std.exp()], dim=-1)

    def _pre_tanh(self, obs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        mean, log_std = self.actor(obs)
        return mean + log_std.exp() * torch.randn_like(mean), mean, log_std

    def q(self, obs: Tensor, act: Tensor) -> Tensor:
        """Pessimistic Q-value min_i Q_i(obs, act), [B]."""
        return self.critic(obs, act).min(dim=0).values

    def value(self, obs: Tensor) -> Tensor:
        """V(s) = min_i Q_i(s, tanh(mean(s))), [B]; differentiable w.r.t. ``obs``.

        The deterministic action makes V a noise-free function of s, so dV/ds is well defined
        for value-gradient model losses.
        """
        return self.q(obs, self.actor(obs)[0].tanh())

    # -- learning --------------------------------------------------------------------------

    def critic_loss(self, batch: Transition, alpha: Tensor | float) -> Tensor:
        """Both critics' squared error against the soft Bellman target (sum of two MSEs).

        The target comes from the target critics and a fresh a' ~ pi(.|s'), without gradient.
        """
        obs, act, reward, next_obs, done = batch
        with torch.no_grad():
            next_act, next_logp = self.sample(next_obs)
            next_q = self.critic_target(next_obs, next_act).min(dim=0).values
            target = soft_q_target(reward, done, next_q, next_logp, alpha, self.cfg.gamma)
        return (self.critic(obs, act) - target).pow(2).mean(dim=1).sum()

    def actor_loss(self, obs: Tensor, alpha: Tensor | float) -> tuple[Tensor, Tensor]:
        """E[alpha log pi(a|s) - min Q(s, a)] through the reparameterised a ~ pi(.|s), and
        log pi(a|s) [B] (which the temperature's loss uses)."""
        new_act, logp = self.sample(obs)
        return (alpha * logp - self.q(obs, new_act)).mean(), logp

    def update(self, batch: Transition) -> UpdateStats:
        """One gradient step on the critics, then the actor, then alpha; then Polyak targets."""
        stats = self._step(*batch)
        self.num_updates += 1
        return UpdateStats(stats)

    def update_block(self, batches: Transition) -> UpdateStats:
        """One update per minibatch of ``batches`` ([update, row, ...] tensors), in order, as
        that many `update` calls do them (the same operations); the last one's statistics.
        With ``cuda_graph``, the whole block is replayed from one graph: one launch, not one
        per update."""
        stats = self._block_step(*batches)
        self.num_updates += len(batches.obs)
        return UpdateStats(stats)

    def _update_block(self, *batches: Tensor) -> Tensor:
        stats = torch.empty(0)
        for i in range(len(batches[0])):
            stats = self._update_once(Transition(*(t[i] for t in batches)))
        return stats

    def _update_once(self, batch: Transition) -> Tensor:
        """One update: compiled whole (given the optimisers' state tensors) or eager."""
        if self._update_whole is None:
            return self._update(batch)
        return self._update_whole(batch, (adam_state(self.critic_opt), adam_state(self.actor_opt),
                                          adam_state(self.alpha_opt)))

    def _update(self, batch: Transition,
                states: tuple[AdamState, AdamState, AdamState] | None = None) -> Tensor:
        """The update itself; returns its statistics as one tensor, without a host read.

        With the critic's, the actor's and the temperature's `adam_state` (the update compiled
        as one graph), gradients come from `torch.autograd.grad` and Adam's steps from
        `tom.optim.adam_update_`: the same algorithm, rounded differently.
        """
        critic_state, actor_state, alpha_state = (None, None, None) if states is None else states
        obs = batch.obs
        alpha = self.alpha

        q_loss = (self._critic_loss or self.critic_loss)(batch, alpha)
        descend(q_loss, self.critic_opt if critic_state is None else critic_state)

        # Actor: maximise E[min Q(s, a) - alpha log pi(a|s)] through the reparameterised a.
        # Freezing the critics skips their weight gradients, which the actor step never uses
        # (the gradient in the actor's parameters alone, as a compiled update takes it, skips
        # them too).
        if actor_state is None:
            self.critic.requires_grad_(False)
        try:
            actor_loss, logp = self.actor_loss(obs, alpha)
            descend(actor_loss, self.actor_opt if actor_state is None else actor_state)
        finally:  # also where a failed graph capture interrupts the update
            if actor_state is None:
                self.critic.requires_grad_(True)

        # Temperature: d(loss)/d(log_alpha) = entropy - target, so alpha falls while the
        # policy is more random than the target and rises once it is less.
        logp = logp.detach()
        if self.cfg.auto_entropy:
            alpha_loss = -(self.log_alpha * (logp + self.target_entropy)).mean()
            descend(alpha_loss, self.alpha_opt if alpha_state is None else alpha_state)

        # Targets: theta' <- (1 - tau) theta' + tau theta, every update.
        with torch.no_grad():
            for target_p, p in zip(self.critic_target.parameters(), self.critic.parameters(),
                                   strict=True):
                target_p.lerp_(p, self.cfg.tau)
        return torch.stack([q_loss.detach(), actor_loss.detach(), self.alpha, -logp.mean()])

    # -- checkpointing ---------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """A deep-copied snapshot of everything needed to resume training exactly.

        Copied because torch state dicts alias live tensors, and optimisers load them without
        copying: a snapshot loaded into another agent would otherwise share its Adam moments.
        """
        return copy.deepcopy({
            "actor": self.actor.state_dict(),
            "critic": self.critic.state_dict(),
            "critic_target": self.critic_target.state_dict(),
            "log_alpha": self.log_alpha.detach(),
            "actor_opt": self.actor_opt.state_dict(),
            "critic_opt": self.critic_opt.state_dict(),
            "alpha_opt": self.alpha_opt.state_dict(),
            "num_updates": self.num_updates,
        })

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a `state_dict` snapshot (the agent must have the same sizes)."""
        state = copy.deepcopy(state)
        self.actor.load_state_dict(state["actor"])
        self.critic.load_state_dict(state["critic"])
        self.critic_target.load_state_dict(state["critic_target"])
        with torch.no_grad():
            self.log_alpha.copy_(state["log_alpha"])
        self.actor_opt.load_state_dict(state["actor_opt"])
        self.critic_opt.load_state_dict(state["critic_opt"])
        self.alpha_opt.load_state_dict(state["alpha_opt"])
        self.num_updates = int(state["num_updates"])
        self._step.reset()  # the optimisers' moments are new tensors that no graph has seen
        self._block_step.reset()

