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
    "The discriminator's encoders are trained with the rest of the network (the paper's code "
    "hands only the last two layers to its optimiser, leaving the encoders at their "
    "initialisation).",
    "The discriminator's inputs are standardised with the replay buffer's statistics of each "
    "round.",
    "The KL conjugate's exponent is capped at 30 for numerical safety (it never binds at a sane "
    "optimum).",
    "PMAC's weights decay by `pmac.decay` (0.9) per policy version, where a version is one refit "
    "round (every K real steps), as in the PDML code's policy snapshots; per SAC update the "
    "decay would leave weight on only the last few dozen transitions.",
    "VaGraM trains the model's mean only (no variance head, as in the authors' code), so its "
    "rollouts use the predicted mean and its `model_nll_recent` is `nan`; bound clipping at the "
    "0.95 quantile of the value-gradient norms is taken over the buffer once per refit rather "
    "than per minibatch, and V(s') is SAC's pessimistic twin critic at the deterministic action.",
    "Evaluation uses `eval_episodes` (paper preset: 5; the paper's code: 10) deterministic "
    "episodes on a separately seeded environment.",
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
