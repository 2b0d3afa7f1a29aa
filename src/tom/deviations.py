"""What this implementation does differently from the paper's code (and from the baselines'
authors' code), one Markdown item each.

This is the one list: the README's "Deviations from the paper's code" section repeats it word
for word (a test checks that), and ``notebooks/tables.py`` prints it under the generated
hyperparameter table, so a reader of the report sees every deviation next to the values.
Hyperparameter values that differ from the paper preset are marked in that table itself.
"""

from __future__ import annotations

DEVIATIONS: tuple[str, ...] = (
    "The χ² conjugate is the clamped ½max(y+1,0)² − ½ (correct for w ≥ 0) rather than ½y² + y; "
    "they agree wherever y ≥ −1.",
    "The KL dual is E_R[exp(e − 1)] with w = exp(e − 1) (the paper's code: log E_R[exp e] with "
    "w = exp e); both recover the occupancy ratio in the tabular check. Its exponent is capped "
    "at 30 for numerical safety (the cap never binds at a sane optimum).",
    "The discriminator's encoders are trained with the rest of the network (the paper's code "
    "hands only the last two layers to its optimiser, leaving the encoders at their "
    "initialisation).",
    "The discriminator's inputs are standardised with the replay buffer's statistics of each "
    "round (the gradient penalty stays on the raw inputs, as in the paper's code), its replay "
    "minibatches are uniform draws from R rather than a shuffled pass, and ρ is its logit "
    "(the paper's code computes log σ − log(1 − σ) in float32, infinite above a logit of "
    "about 17).",
    "The model fit, the discriminator and the dual see the replay buffer itself; the paper's "
    "code first draws len(R) rows from it with replacement, so each round misses about 37 % of "
    "the rows and its holdout shares rows with the training split. The rollout starts reuse "
    "the fit's a' samples for w (the paper's code draws fresh ones).",
    "PMAC's policy versions follow the paper's code (a new version at each block of SAC "
    "updates); once the ring buffer evicts rows, the oldest version's mass is shared by its "
    "surviving rows (the paper's code spreads an evicted row's mass over the buffer; no preset "
    "evicts). `pmac.version=refit` offers the PDML paper's one version per refit round.",
    "VaGraM (`vagram.loss=paper-code`) reproduces the paper code's quirks on purpose: signed "
    "value gradients as NLL weights, the four critic gradients accumulated into running sums, "
    "gradient columns aligned with [Δs, reward] on targets ordered [reward, Δs], bound clipping "
    "that binds only above a norm of 1e5, the extra mean NLL in the first learner epoch, and "
    "real-only SAC minibatches of 12 transitions. It differs in that the clip quantile is the "
    "buffer's once per refit (the paper's code: per minibatch; it only matters above 1e5) and "
    "the fit draws 100 minibatches per epoch with replacement (the paper's code takes "
    "min(100, ⌊n/256⌋) in a shuffled pass). `vagram.loss=paper-code-aligned` fixes the "
    "alignment; `vagram.loss=vagram-paper` is the VaGraM paper's loss: the model's mean only, "
    "squared gradients of SAC's pessimistic twin critic, bound clipping at the buffer's 0.95 "
    "quantile once per refit.",
    "The MDN's variance has a floor of 1e-6 (normalised units) under its learned noise term; "
    "`model.mdn_noise=per-dim` replaces the paper code's one shared noise parameter (starting "
    "at softplus(0) ≈ 0.69) by one per target dimension starting at 1e-3.",
    "Evaluation uses `eval_episodes` (paper preset: 5; the paper's code: 10) deterministic "
    "episodes from a separately seeded stream of initial states, played side by side with one "
    "policy call per step for all of them (`tom.evaluation`). Played one after another, as "
    "the paper's code plays them, they would start from the same states, and a batch's "
    "actions differ from one observation's only in the last bits.",
    "The initial steps take uniformly random actions (the paper's code takes them with the "
    "untrained policy) and count towards the real-step budget (the paper's code starts counting "
    "epochs after them, so its Hopper runs take 130 000 real steps, ours 125 000).",
    "A time-limit truncation is not a termination: the SAC target bootstraps through it (the "
    "paper's code stores the `done` of gym's TimeLimit wrapper, so a 1 000-step time-out is a "
    "terminal transition there).",
    "SAC's log-density of a squashed action uses the exact tanh Jacobian, 2(log 2 − u − "
    "softplus(−2u)) (the paper's code: log(1 − tanh(u)² + 1e-6), which understates the density "
    "where actions saturate).",
)
