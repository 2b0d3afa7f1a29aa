# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # TOM's lower bound and dual, derived and checked on exact tabular MDPs
#
# This notebook is the derivation behind ALGORITHM.md §3–§4 and Figure 1. Every step of the
# proof is stated in LaTeX and then checked numerically on random finite MDPs, where every
# quantity (occupancies, returns, KL divergences, the dual's optimum) can be computed exactly
# by linear algebra with `tom.tabular`. Every check is an `assert`: if a step were wrong, the
# pipeline would stop here.
#
# 1. Notation: occupancies and the normalised return.
# 2. The lower bound $\log J(\pi,T) \ge \mathbb{E}_{d^\pi_{\hat T}}[\log r] -
#    D_{\mathrm{KL}}(d^\pi_{\hat T}(s,a,s') \,\|\, d^\pi_T(s,a,s'))$, in four steps.
# 3. From the bound to weighted maximum likelihood: which steps are approximations, and
#    check (b), the weighted-MLE optimum equals $T$ on the support of $d^\pi_T$.
# 4. The dual program of §4, derived, and solved with the library's own weighting code
#    (`tom.objectives.tom.dual_loss` / `occupancy_weights`, via `tom.tabular.solve_dual`).
# 5. Figure 1.

# %% tags=["parameters"]
fig_path = "figures/fig1.pdf"  # where Figure 1 is written
preset = "unknown"  # the pipeline preset (only recorded; this notebook reads no runs)
commit = "unknown"  # git commit the figure is made from
n_instances = 300  # random (MDP, policy, model) triples for the bound
n_dual = 8  # random MDPs on which the dual is solved, per divergence
seed = 0

# %%
import matplotlib.pyplot as plt
import numpy as np
import torch

from tom.analysis import style
from tom.objectives.tom import dual_residual, f_star, f_star_prime
from tom.tabular import (
    TabularMDP,
    kl_divergence,
    lower_bound,
    normalised_return,
    occupancy,
    random_mdp,
    random_simplex,
    solve_dual,
    transition_occupancy,
)

style.setup()
rng = np.random.default_rng(seed)
torch.set_default_dtype(torch.float64)


def report(name: str, value: float, tol: float) -> None:
    """Print a check and stop the notebook if it fails."""
    ok = value <= tol
    print(f"{'ok  ' if ok else 'FAIL'} {name}: {value:.2e} (tolerance {tol:.0e})")
    assert ok, name


# %% [markdown]
# ## 1. Notation
#
# A finite MDP $(\mathcal S, \mathcal A, T, r, \mu_0, \gamma)$ with arrays `T[s, a, s']`,
# `r[s, a]`, `mu0[s]` and a stochastic policy `pi[s, a]`. The discounted state-action
# occupancy of $\pi$ under dynamics $T$ is
#
# $$d^\pi_T(s,a) = (1-\gamma)\sum_{t\ge 0}\gamma^t \Pr{}_{\pi,T}(s_t=s, a_t=a),$$
#
# the unique solution of the Bellman flow equations
#
# $$d(s',a') = (1-\gamma)\,\mu_0(s')\pi(a'|s') + \gamma \sum_{s,a} d(s,a)\,T(s'|s,a)\,
# \pi(a'|s'),$$
#
# which `tom.tabular.occupancy` solves as a linear system. The normalised return is
# $J(\pi,T) = \mathbb{E}_{(s,a)\sim d^\pi_T}[r(s,a)]$, and the *transition occupancy* is
# $d^\pi_T(s,a,s') = d^\pi_T(s,a)\,T(s'|s,a)$.
#
# **Check.** The linear solve equals the truncated series, and $J$ equals the discounted sum
# of expected rewards.

# %%
mdp = random_mdp(rng, n_states=5, n_actions=3, gamma=0.9)
pi = random_simplex(rng, (5, 3))
d = occupancy(mdp.T, pi, mdp.mu0, mdp.gamma)
series, ret, p_s = np.zeros_like(d), 0.0, mdp.mu0.copy()
for t in range(600):
    p_sa = p_s[:, None] * pi
    series += (1 - mdp.gamma) * mdp.gamma**t * p_sa
    ret += (1 - mdp.gamma) * mdp.gamma**t * (p_sa * mdp.r).sum()
    p_s = np.einsum("sa,sat->t", p_sa, mdp.T)
report("occupancy: linear solve vs series", np.abs(d - series).max(), 1e-12)
report("occupancy sums to one", abs(d.sum() - 1), 1e-12)
report("J = E_d[r] vs discounted sum", abs(normalised_return(mdp, pi) - ret), 1e-12)

# %% [markdown]
# ## 2. The lower bound, step by step
#
# Let $r > 0$ and let $\hat T$ be a model with $d^\pi_{\hat T}(s,a,s') > 0 \Rightarrow
# d^\pi_T(s,a,s') > 0$ (absolute continuity). Write $d = d^\pi_T$ and $\hat d =
# d^\pi_{\hat T}$ for the state-action occupancies.
#
# **Step 1 (return as an expectation).** By definition
# $J(\pi,T) = \sum_{s,a} d(s,a)\,r(s,a)$.
#
# **Step 2 (change of measure).** Let $\nu(s,a) = d(s,a)/\hat d(s,a)$ on the support of
# $\hat d$. Dropping the (non-negative, as $r>0$) terms outside that support,
#
# $$J(\pi,T) \;\ge\; \sum_{\hat d(s,a)>0} \hat d(s,a)\,\nu(s,a)\,r(s,a)
#   \;=\; \mathbb{E}_{\hat d}\big[\nu\, r\big],$$
#
# with equality when $\hat d$ and $d$ have the same support.
#
# **Step 3 (Jensen).** $\log$ is concave, so $\log \mathbb{E}[X] \ge \mathbb{E}[\log X]$:
#
# $$\log J(\pi,T) \;\ge\; \mathbb{E}_{\hat d}[\log r] + \mathbb{E}_{\hat d}[\log \nu]
#   \;=\; \mathbb{E}_{\hat d}[\log r] - D_{\mathrm{KL}}\big(\hat d(s,a)\,\|\,d(s,a)\big).$$
#
# **Step 4 (chain rule of KL).** Both transition occupancies factor as occupancy times
# dynamics, so
#
# $$D_{\mathrm{KL}}\big(\hat d(s,a)\hat T(s'|s,a)\,\|\,d(s,a)T(s'|s,a)\big)
#   = D_{\mathrm{KL}}\big(\hat d(s,a)\,\|\,d(s,a)\big)
#   + \mathbb{E}_{\hat d(s,a)}\Big[D_{\mathrm{KL}}\big(\hat T(\cdot|s,a)\,\|\,T(\cdot|s,a)\big)
#   \Big]$$
#
# and the last term is non-negative. Replacing the state-action KL by the larger
# transition-occupancy KL in Step 3 gives the bound of ALGORITHM.md §3:
#
# $$\boxed{\;\log J(\pi,T) \;\ge\; \mathbb{E}_{(s,a)\sim d^\pi_{\hat T}}[\log r(s,a)]
#   - D_{\mathrm{KL}}\big(d^\pi_{\hat T}(s,a,s')\,\|\,d^\pi_T(s,a,s')\big)\;}$$
#
# The first term is the return of $\pi$ *inside the model* with log-transformed reward; the
# second is the transition occupancy mismatch. Each step is checked below on random
# instances: random MDPs, random policies, and models $\hat T_\alpha = (1-\alpha)T +
# \alpha U$ between the true dynamics ($\alpha=0$) and an unrelated random $U$ ($\alpha=1$).

# %%
def model_between(T: np.ndarray, alpha: float, rng: np.random.Generator) -> np.ndarray:
    """(1−α)·T + α·U with U a random transition kernel of the same shape."""
    return (1 - alpha) * T + alpha * random_simplex(rng, T.shape)


def bound_steps(mdp: TabularMDP, pi: np.ndarray, T_hat: np.ndarray) -> dict[str, float]:
    """Every quantity of Steps 1–4 for one (MDP, policy, model)."""
    d = occupancy(mdp.T, pi, mdp.mu0, mdp.gamma)
    d_hat = occupancy(T_hat, pi, mdp.mu0, mdp.gamma)
    on = d_hat > 0
    nu = d[on] / d_hat[on]
    kl_sa = kl_divergence(d_hat, d)
    kl_joint = kl_divergence(transition_occupancy(d_hat, T_hat), transition_occupancy(d, mdp.T))
    cond = np.where(T_hat > 0, T_hat * (np.log(np.where(T_hat > 0, T_hat, 1))
                                        - np.log(mdp.T)), 0).sum(-1)  # KL(T̂(·|s,a)‖T(·|s,a))
    return {
        "J": (d * mdp.r).sum(),
        "step2": (d_hat[on] * nu * mdp.r[on]).sum(),
        "jensen_rhs": (d_hat[on] * (np.log(nu) + np.log(mdp.r[on]))).sum(),
        "log_r_model": (d_hat * np.log(mdp.r)).sum(),
        "kl_sa": kl_sa, "kl_joint": kl_joint, "kl_cond": (d_hat * cond).sum(),
        "bound": lower_bound(mdp, pi, T_hat),
    }


rows = []
for _ in range(n_instances):
    mdp = random_mdp(rng, n_states=int(rng.integers(3, 9)), n_actions=int(rng.integers(2, 5)),
                     gamma=float(rng.uniform(0.5, 0.95)))
    pi = random_simplex(rng, mdp.r.shape, concentration=float(rng.uniform(0.3, 3)))
    alpha = float(rng.uniform(0, 1))
    rows.append({"alpha": alpha, **bound_steps(mdp, pi, model_between(mdp.T, alpha, rng))})
steps = {k: np.array([r[k] for r in rows]) for k in rows[0]}

# Step 2: full supports here, so the change of measure is an identity.
report("step 2: E_d̂[ν r] = J (same support)", np.abs(steps["step2"] - steps["J"]).max(), 1e-12)
# Step 3: the Jensen term is E log r − KL(d̂‖d), and it lies below log J.
report("step 3: E_d̂[log ν + log r] = E_d̂[log r] − KL(d̂‖d)",
       np.abs(steps["jensen_rhs"] - (steps["log_r_model"] - steps["kl_sa"])).max(), 1e-12)
report("step 3: Jensen, log J − (E log r − KL) >= 0 (max violation)",
       max(0.0, -(np.log(steps["J"]) - steps["jensen_rhs"]).min()), 1e-12)
# Step 4: the chain rule, term by term, and the conditional KL is non-negative.
report("step 4: KL_joint = KL_sa + E KL(T̂‖T)",
       np.abs(steps["kl_joint"] - steps["kl_sa"] - steps["kl_cond"]).max(), 1e-12)
report("step 4: E KL(T̂‖T) >= 0 (max violation)", max(0.0, -steps["kl_cond"].min()), 1e-12)
# The assembled bound is tom.tabular.lower_bound, and it holds on every instance.
report("bound = E log r − KL_joint (tom.tabular.lower_bound)",
       np.abs(steps["bound"] - (steps["log_r_model"] - steps["kl_joint"])).max(), 1e-12)
gap = np.log(steps["J"]) - steps["bound"]
report(f"bound <= log J on all {n_instances} instances (max violation)",
       max(0.0, -gap.min()), 1e-12)
print(f"gap log J − bound: min {gap.min():.3g}, median {np.median(gap):.3g}")

# %% [markdown]
# **Step 2 with unequal supports.** If the model never reaches a state the real system
# reaches, Step 2 is a strict inequality. Below, state 0 has no initial mass and the model
# never transitions into it, while the real dynamics do.
#
# **Tightness.** With $\hat T = T$ the KL term vanishes and only Jensen's gap remains; it is
# zero exactly when $r$ is constant on the support of $d$.

# %%
mdp = random_mdp(rng, n_states=5, n_actions=2)
mdp.mu0[0] = 0.0
mdp.mu0 /= mdp.mu0.sum()
T_hat = mdp.T.copy()
T_hat[:, :, 0] = 0.0
T_hat /= T_hat.sum(-1, keepdims=True)
pi = random_simplex(rng, (5, 2))
s = bound_steps(mdp, pi, T_hat)
d_hat = occupancy(T_hat, pi, mdp.mu0, mdp.gamma)
report("model never visits state 0", d_hat[0].max(), 1e-15)
print(f"J = {s['J']:.4f} > E_d̂[ν r] = {s['step2']:.4f}")
assert s["J"] > s["step2"] and np.log(s["J"]) >= s["bound"]

flat = TabularMDP(mdp.T, mdp.mu0, np.full_like(mdp.r, 0.7), mdp.gamma)
report("T̂ = T, constant r: bound = log J",
       abs(lower_bound(flat, pi, flat.T) - np.log(normalised_return(flat, pi))), 1e-12)
exact_model_gap = np.log(normalised_return(mdp, pi)) - lower_bound(mdp, pi, mdp.T)
print(f"T̂ = T, varying r: gap = Jensen's gap only = {exact_model_gap:.4f} > 0")

# %% [markdown]
# ## 3. From the bound to weighted maximum likelihood
#
# For a fixed policy, the bound's model-dependent part is the occupancy mismatch. TOM's model
# objective is obtained from it by the following steps; **(A)** marks an approximation, **(=)**
# an identity.
#
# - **(A1) Occupancy matching only.** The model is fit to minimise
#   $D_{\mathrm{KL}}(d^\pi_{\hat T}(s,a,s') \| d^\pi_T(s,a,s'))$; the other term,
#   $\mathbb{E}_{d^\pi_{\hat T}}[\log r]$, is left to the policy update inside the model
#   (fitting the model to it would reward optimistic models). The mismatch is zero for every
#   $\hat T$ that equals $T$ on the support of $d^\pi_T$ (the model is free elsewhere).
# - **(A2) Forward instead of reverse KL.** Use
#   $D_{\mathrm{KL}}(d^\pi_T(s,a,s') \| d^\pi_{\hat T}(s,a,s'))$: same zero set, but an
#   expectation under the *real* transition occupancy, which data can estimate.
# - **(A3) Hold the state-action occupancy at the real one.** By the chain rule,
#   $$D_{\mathrm{KL}}(d^\pi_T\|d^\pi_{\hat T}) = D_{\mathrm{KL}}(d^\pi_T(s,a)\|d^\pi_{\hat T}(s,a))
#     + \mathbb{E}_{d^\pi_T(s,a)} D_{\mathrm{KL}}(T(\cdot|s,a)\|\hat T(\cdot|s,a)).$$
#   Dropping the first term (how the model changes where $\pi$ goes, i.e. compounding error)
#   leaves $D_{\mathrm{KL}}(d^\pi_T(s,a)T \,\|\, d^\pi_T(s,a)\hat T)$.
# - **(=) Drop the constant.** That equals
#   $-\mathcal H - \mathbb{E}_{(s,a,s')\sim d^\pi_T}[\log \hat T(s'|s,a)]$ with
#   $\mathcal H = \mathbb{E}_{d^\pi_T(s,a)} H(T(\cdot|s,a))$ independent of $\hat T$: maximum
#   likelihood under the *current policy's* transition occupancy.
# - **(=) Importance weighting.** Real replay transitions also have $s' \sim T(\cdot|s,a)$, so
#   $$w(s,a,s') = \frac{d^\pi_T(s,a,s')}{d^R(s,a,s')} = \frac{d^\pi_T(s,a)}{d^R(s,a)},\qquad
#     \mathbb{E}_{d^\pi_T}[\log \hat T] = \mathbb{E}_{d^R}[w\,\log \hat T],$$
#   valid when $d^R$ covers $d^\pi_T$.
# - **(A4) Estimation.** $w$ is estimated by the dual of §4, and $\mathbb{E}_{d^R}$ by the
#   replay buffer (as a weighted loss or by resampling $\propto w$).
#
# The resulting objective is **weighted MLE on the replay buffer**:
# $\max_{\hat T} \mathbb{E}_{(s,a,s')\sim R}[w(s,a,s')\log \hat T(s'|s,a)]$.
#
# **Checks.** On random instances whose policy never takes some actions (so $d^\pi_T$ has
# holes), with a replay distribution $d^R$ that mixes the occupancies of several past
# policies: the identities above hold, the steps' zero sets agree, and **check (b)**: the
# weighted-MLE optimum, found by numerical optimisation of a free tabular model, equals $T$ on
# the support of $d^\pi_T$ and is left undetermined off it.

# %%
def sparse_policy(rng: np.random.Generator, S: int, A: int, drop: float = 0.4) -> np.ndarray:
    """A random policy that never takes some actions (at least one action per state)."""
    pi = random_simplex(rng, (S, A))
    keep = rng.uniform(size=(S, A)) > drop
    keep[np.arange(S), rng.integers(0, A, S)] = True
    pi = pi * keep
    return pi / pi.sum(-1, keepdims=True)


def replay_distribution(mdp: TabularMDP, rng: np.random.Generator, pi: np.ndarray,
                        n_past: int = 5) -> np.ndarray:
    """d^R: the average occupancy of past random policies and the current one."""
    past = [random_simplex(rng, pi.shape) for _ in range(n_past)] + [pi]
    return np.mean([occupancy(mdp.T, p, mdp.mu0, mdp.gamma) for p in past], axis=0)


def weighted_mle(T: np.ndarray, weight_sa: np.ndarray, iters: int = 50) -> np.ndarray:
    """argmax over free tabular T̂ of Σ_{s,a} weight(s,a) Σ_s' T(s'|s,a) log T̂(s'|s,a),
    by L-BFGS on softmax logits from uniform T̂ (the closed form is not used here)."""
    logits = torch.zeros(T.shape, requires_grad=True)
    target, weight = torch.as_tensor(T), torch.as_tensor(weight_sa)
    opt = torch.optim.LBFGS([logits], max_iter=500, tolerance_grad=1e-14,
                            tolerance_change=1e-16, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = -(weight[..., None] * target * torch.log_softmax(logits, -1)).sum()
        loss.backward()
        return loss

    for _ in range(iters):
        opt.step(closure)
    return torch.softmax(logits, -1).detach().numpy()


S, A = 6, 3
mdp = random_mdp(rng, S, A, gamma=0.9)
pi = sparse_policy(rng, S, A)
d = occupancy(mdp.T, pi, mdp.mu0, mdp.gamma)
d_R = replay_distribution(mdp, rng, pi)
w = d / d_R
support = d > 0
print(f"d^π has {support.sum()} of {S * A} state-action pairs in its support")

# (A1) the mismatch is zero for a model equal to T on the support, arbitrary elsewhere.
T_free = np.where(support[..., None], mdp.T, random_simplex(rng, mdp.T.shape))
report("(A1) KL(d_T̂ ‖ d_T) = 0 when T̂ = T on supp d^π",
       kl_divergence(transition_occupancy(occupancy(T_free, pi, mdp.mu0, mdp.gamma), T_free),
                     transition_occupancy(d, mdp.T)), 1e-12)

# (A3) chain rule of the forward KL, and (=) the constant: for a random model T̂.
T_hat = model_between(mdp.T, 0.5, rng)
d_hat = occupancy(T_hat, pi, mdp.mu0, mdp.gamma)
forward = kl_divergence(transition_occupancy(d, mdp.T), transition_occupancy(d_hat, T_hat))
surrogate = kl_divergence(transition_occupancy(d, mdp.T), transition_occupancy(d, T_hat))
report("(A3) forward KL = KL(d‖d̂)(s,a) + surrogate",
       abs(forward - kl_divergence(d, d_hat) - surrogate), 1e-12)
cond_entropy = -(transition_occupancy(d, mdp.T) * np.log(mdp.T)).sum()
log_lik = (transition_occupancy(d, mdp.T) * np.log(T_hat)).sum()
report("(=) surrogate = −H − E_{d^π}[log T̂]", abs(surrogate - (-cond_entropy - log_lik)), 1e-12)
# (=) importance weighting: a replay expectation with weights w = d^π/d^R.
replay_log_lik = (transition_occupancy(d_R * w, mdp.T) * np.log(T_hat)).sum()
report("(=) E_{d^R}[w log T̂] = E_{d^π}[log T̂]", abs(replay_log_lik - log_lik), 1e-12)

# Check (b): the weighted-MLE optimum (weights w·d^R = d^π per state-action pair).
T_wmle = weighted_mle(mdp.T, w * d_R)
report("(b) weighted MLE = T on supp d^π (max abs error)",
       np.abs(T_wmle - mdp.T)[support].max(), 1e-6)
off = np.abs(T_wmle - mdp.T)[~support].max()
print(f"off the support the weights are zero and the fit is undetermined "
      f"(stays at its uniform start): max |T̂ − T| = {off:.2f}")
report("(b) off the support T̂ stays uniform", np.abs(T_wmle[~support] - 1 / S).max(), 1e-12)

# %% [markdown]
# **Why weight, if a free model recovers $T$ anyway?** With enough capacity MLE would also
# recover $T$; the weights matter when the model cannot be right everywhere. Take a model
# class that ignores the action, $\hat T(s'|s)$. Weighted MLE within this class picks
# $\hat T_w(s'|s) = \sum_a \pi(a|s)\,T(s'|s,a)$: wrong about individual actions, but it moves
# the state exactly as the current policy does, so $d^\pi_{\hat T_w}(s,a) = d^\pi_T(s,a)$ and
# the model evaluates $\pi$ exactly. Unweighted MLE averages over the replay buffer's old
# policies instead. Checked: the weighted fit evaluates $\pi$ exactly, and it has the
# smaller policy-weighted error $\mathbb{E}_{d^\pi_T} D_{\mathrm{KL}}(T\|\hat T)$ (it minimises
# exactly that within the class). The transition-occupancy mismatch of the bound is not zero
# for either (no action-blind model is right about each action); it is printed for both.

# %%
def action_blind_fit(T: np.ndarray, weight_sa: np.ndarray) -> np.ndarray:
    """Weighted MLE within the class T̂(s'|s) (closed form), broadcast over actions."""
    mix = (weight_sa[..., None] * T).sum(1) / weight_sa.sum(1, keepdims=True)
    return np.repeat(mix[:, None, :], T.shape[1], axis=1)


def policy_weighted_error(T_hat: np.ndarray) -> float:
    return kl_divergence(transition_occupancy(d, mdp.T), transition_occupancy(d, T_hat))


T_w, T_u = action_blind_fit(mdp.T, d), action_blind_fit(mdp.T, d_R)
J = normalised_return(mdp, pi)
mismatch = {name: kl_divergence(transition_occupancy(occupancy(Tm, pi, mdp.mu0, mdp.gamma), Tm),
                                transition_occupancy(d, mdp.T))
            for name, Tm in (("weighted", T_w), ("unweighted", T_u))}
print(f"occupancy mismatch: weighted {mismatch['weighted']:.2e}, "
      f"unweighted {mismatch['unweighted']:.2e}")
print(f"J(π,T) = {J:.4f}; in the weighted model {normalised_return(mdp, pi, T_w):.4f}, "
      f"in the unweighted model {normalised_return(mdp, pi, T_u):.4f}")
report("action-blind weighted fit: J(π, T̂_w) = J(π, T)",
       abs(normalised_return(mdp, pi, T_w) - J), 1e-12)
print(f"policy-weighted error E_d^π KL(T‖T̂): weighted {policy_weighted_error(T_w):.4f}, "
      f"unweighted {policy_weighted_error(T_u):.4f}")
report("action-blind fits: d^π_T̂w(s,a) = d^π_T(s,a)",
       np.abs(occupancy(T_w, pi, mdp.mu0, mdp.gamma) - d).max(), 1e-12)
assert policy_weighted_error(T_w) <= policy_weighted_error(T_u)
assert abs(normalised_return(mdp, pi, T_u) - J) > 1e-8  # the unweighted model is biased

# %% [markdown]
# ## 4. The weights: the dual program of §4
#
# Fix $\pi$ and a replay distribution $d^R$ with full support. The occupancy $d^\pi_T$ is the
# only $d \ge 0$ satisfying the flow equations of §1. Write $d = w\, d^R$, add a shaping
# reward $\rho(s,a)$ and an $f$-divergence regulariser, and consider the primal
#
# $$\max_{w \ge 0}\; \mathbb{E}_{d^R}[w\rho] - \mathbb{E}_{d^R}[f(w)] \quad\text{s.t.}\quad
#   w(s,a)d^R(s,a) = (1-\gamma)\mu_0(s)\pi(a|s)
#     + \gamma\sum_{\bar s,\bar a} w(\bar s,\bar a)d^R(\bar s,\bar a)T(s|\bar s,\bar a)\pi(a|s).$$
#
# With a multiplier $Q(s,a)$ per constraint, the Lagrangian rearranges (sum over the
# constraints, exchange the order of summation in the $\gamma$ term) into
#
# $$L(w,Q) = (1-\gamma)\,\mathbb{E}_{s_0\sim\mu_0, a_0\sim\pi}[Q(s_0,a_0)]
#   + \mathbb{E}_{d^R}\big[w\, e_Q - f(w)\big],\qquad
#   e_Q(s,a) = \rho(s,a) + \gamma\,\mathbb{E}_{s'\sim T, a'\sim\pi}[Q(s',a')] - Q(s,a).$$
#
# Maximising over $w \ge 0$ pointwise gives the convex conjugate,
# $\sup_{w\ge 0}\,(w e - f(w)) = f^*(e)$, attained at $w = f^{*\prime}(e)$, hence the dual
#
# $$\min_Q\; (1-\gamma)\,\mathbb{E}_{\mu_0,\pi}[Q(s_0,a_0)] + \mathbb{E}_{d^R}[f^*(e_Q)],
#   \qquad w^* = f^{*\prime}(e_{Q^*}).$$
#
# For $\chi^2$, $f(x)=\tfrac12(x-1)^2$: $f^*(y) = \tfrac12\max(y+1,0)^2-\tfrac12$ and
# $f^{*\prime}(y)=\max(y+1,0)$. For KL, $f(x) = x\log x$: $f^*(y)=f^{*\prime}(y)=e^{y-1}$
# (ALGORITHM.md §4; the library caps the exponent for safety).
#
# Setting the gradient in $Q(s,a)$ to zero gives
# $(1-\gamma)\mu_0(s)\pi(a|s) + \gamma\sum_{\bar s,\bar a} d^R w^* T\pi - d^R(s,a)w^*(s,a) = 0$:
# exactly the flow equations for $d = w^* d^R$. Since they have one solution,
# $w^* = d^\pi_T/d^R$ **whatever $\rho$ and $f$ are**; $\rho$ only changes $Q^*$ (and, with
# function approximation and finite data, which errors the dual makes). In training the
# expectations are minibatch means and $\rho$ is the discriminator's log-odds.
#
# **Check.** `tom.tabular.solve_dual` minimises this dual to convergence with one-hot $Q$,
# using the library's own `dual_residual`, `dual_loss` and `occupancy_weights` (the code
# training uses) with exact expectations, and returns $w^*$. Below: the relative error to the
# exact ratio (ALGORITHM.md §4 asks for below $10^{-4}$), the flow equations for
# $w^* d^R$, and independence from $\rho$.

# %%
def flow_residual(mdp: TabularMDP, pi: np.ndarray, d_sa: np.ndarray) -> float:
    """max |d − (1−γ)μ0π − γ Σ d T π|: zero iff d is π's occupancy."""
    inflow = np.einsum("sa,sat->t", d_sa, mdp.T)[:, None] * pi
    return np.abs(d_sa - (1 - mdp.gamma) * mdp.mu0[:, None] * pi - mdp.gamma * inflow).max()


dual_points = []
for divergence in ("chi2", "kl"):
    for i in range(n_dual):
        S, A = int(rng.integers(4, 9)), int(rng.integers(2, 4))
        mdp = random_mdp(rng, S, A, gamma=float(rng.uniform(0.8, 0.95)))
        pi = random_simplex(rng, (S, A))
        d_R = replay_distribution(mdp, rng, pi)
        exact = occupancy(mdp.T, pi, mdp.mu0, mdp.gamma) / d_R
        rho = rng.normal(size=(S, A))
        w_star = solve_dual(mdp, pi, d_R, rho, divergence)
        rel = np.abs(w_star - exact) / exact
        report(f"{divergence} MDP {i}: max relative error of w* vs d^π/d^R", rel.max(), 1e-4)
        report(f"{divergence} MDP {i}: flow equations for w*·d^R",
               flow_residual(mdp, pi, w_star * d_R), 1e-6)
        dual_points += [{"divergence": divergence, "exact": e, "dual": v}
                        for e, v in zip(exact.ravel(), w_star.ravel(), strict=True)]

# ρ changes the dual's Q*, not its weights (the binary reward of the ablation, and zero):
binary = (rng.uniform(size=(S, A)) < 0.3).astype(float)
for name, shaping in (("zero", np.zeros((S, A))), ("binary", binary)):
    w_other = solve_dual(mdp, pi, d_R, shaping, "chi2")
    report(f"w* with ρ = {name} equals d^π/d^R too",
           (np.abs(w_other - exact) / exact).max(), 1e-4)

# The conjugates themselves: f*(y) = sup_{w>=0} (w·y − f(w)), attained at w = f*'(y), on a grid.
w_grid = torch.linspace(0.0, 60.0, 600_001)
y = torch.linspace(-3.0, 2.0, 11)
for divergence, f in (("chi2", lambda w: 0.5 * (w - 1) ** 2), ("kl", lambda w: torch.xlogy(w, w))):
    values = w_grid[None, :] * y[:, None] - f(w_grid)[None, :]
    best = values.max(dim=1)
    report(f"{divergence}: f*(y) = sup_w (w y − f(w))",
           (best.values - f_star(y, divergence)).abs().max().item(), 1e-6)
    report(f"{divergence}: argmax_w = f*'(y)",
           (w_grid[best.indices] - f_star_prime(y, divergence)).abs().max().item(), 1e-3)

# The weight function itself: w = f*'(e) is the clamped χ² derivative and exp(e−1) for KL.
e = torch.linspace(-3, 3, 13)
report("χ²: f*'(e) = max(e+1, 0)",
       (f_star_prime(e, "chi2") - torch.clamp(e + 1, min=0)).abs().max().item(), 0.0)
report("KL: f*'(e) = exp(e−1)",
       (f_star_prime(e, "kl") - torch.exp(e - 1)).abs().max().item(), 1e-15)
report("residual e = ρ + γ(1−done)V' − Q",
       (dual_residual(e, e, e, torch.zeros_like(e), 0.5) - 0.5 * e).abs().max().item(), 1e-12)

# %% [markdown]
# ## 5. Figure 1
#
# (a) Every random instance of Section 2 lies on or below the diagonal: the bound never
# exceeds $\log J$, and it is tight only for accurate models (small $\alpha$, colour).
# (b) The dual's weights, solved with the training code, against the exact occupancy ratio
# $d^\pi_T/d^R$ from a linear solve, for both divergences.

# %%
fig, (ax_a, ax_b) = plt.subplots(1, 2, figsize=(8, 3.5))
log_j = np.log(steps["J"])
points = ax_a.scatter(log_j, steps["bound"], c=steps["alpha"], cmap="viridis", s=10,
                      vmin=0, vmax=1, linewidths=0)
lims = [min(log_j.min(), steps["bound"].min()) - 0.1, max(log_j.max(), 0) + 0.1]
ax_a.plot(lims, lims, color="0.2", lw=1, ls="--", label="bound = log J")
ax_a.fill_between(lims, lims, lims[0], color="0.85", zorder=0, label=r"bound $\leq \log J$")
ax_a.set(xlim=lims, ylim=lims, xlabel=r"$\log J(\pi, T)$",
         ylabel=r"$\mathbb{E}_{d^\pi_{\hat T}}[\log r] - D_{KL}(d^\pi_{\hat T}\,\|\,d^\pi_T)$",
         title="(a) lower bound vs log return")
bar = fig.colorbar(points, ax=ax_a, pad=0.02)
bar.set_label(r"model error $\alpha$")
ax_a.legend(loc="upper left", fontsize=8)

markers = {"chi2": ("o", r"$\chi^2$ (default)"), "kl": ("x", "KL (ablation)")}
colors = {"chi2": style.color("tom"), "kl": style.color("tom-kl")}
for divergence, (marker, name) in markers.items():
    pts = [p for p in dual_points if p["divergence"] == divergence]
    paint = ({"facecolors": "none", "edgecolors": colors[divergence], "s": 30}
             if marker == "o" else {"color": colors[divergence], "s": 16})
    ax_b.scatter([p["exact"] for p in pts], [p["dual"] for p in pts], marker=marker,
                 label=name, linewidths=1, **paint)
ratio = np.array([p["exact"] for p in dual_points])
lims_b = [ratio.min() / 1.5, ratio.max() * 1.5]
ax_b.plot(lims_b, lims_b, color="0.2", lw=1, ls="--", label="w = exact ratio")
ax_b.set(xscale="log", yscale="log", xlim=lims_b, ylim=lims_b,
         xlabel=r"exact ratio $d^\pi_T(s,a)\,/\,d^R(s,a)$ (linear solve)",
         ylabel=r"dual weight $w^* = f^{*\prime}(e_{Q^*})$",
         title="(b) dual weights vs exact ratio")
ax_b.legend(loc="upper left", fontsize=8)
fig.tight_layout()
style.footer(fig, preset, commit, note=(
    f"(a) {n_instances} random tabular MDPs and policies; models T̂ = (1−α)T + αU, U random. "
    f"(b) {n_dual} random MDPs per divergence, random shaping reward ρ,\n"
    f"replay distribution = mixture of the occupancies of 5 past policies and the current one."))
style.save(fig, fig_path, title="Figure 1: TOM's lower bound and dual weights, exact tabular check",
           preset=preset, commit=commit)
