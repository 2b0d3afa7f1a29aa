"""`adam_update_` (Adam as tensor operations, for whole compiled steps) against
`torch.optim.Adam` itself, and the state it shares with it."""

from __future__ import annotations

import math

import pytest
import torch

from tom.optim import adam, adam_state, adam_update_
from tom.optim import bias_corrections_on_device as on_device
from tom.optim import bias_corrections_on_host as on_host


def _params(seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(5, 3, generator=g).requires_grad_(),
            torch.randn(3, generator=g).requires_grad_(),
            torch.randn((), generator=g).requires_grad_()]


@pytest.mark.parametrize("corrections", ["on host", "in step"])
@pytest.mark.parametrize("weight_decay", [0.0, 1e-2])
def test_adam_update_matches_torch_adam_over_steps_and_skips_parameters_without_gradient(
        weight_decay, corrections):
    """Six steps with gradients of very different scales (the bias corrections matter most in
    the first steps); the last parameter has no gradient in steps 2 and 5, as `Adam.step`
    skips a parameter whose .grad is None. Then torch's own step carries on from the state
    `adam_update_` wrote. The bias corrections computed by `adam_state` on the host (CPU step
    counts), or in the step itself (as where the counts are on a GPU)."""
    ours, theirs = _params(0), _params(0)
    opt_ours = adam(ours, lr=1e-2, weight_decay=weight_decay)
    opt_theirs = adam(theirs, lr=1e-2, weight_decay=weight_decay)
    g = torch.Generator().manual_seed(1)
    for step in range(6):
        grads = [torch.randn(p.shape, generator=g) * 10.0 ** (step - 2) for p in ours]
        if step in (2, 5):
            grads[-1] = None
        state = adam_state(opt_ours)
        if corrections == "in step":
            state = state._replace(bias_corrections=None)
        adam_update_(grads, state)
        for p, grad in zip(theirs, grads, strict=True):
            p.grad = grad
        opt_theirs.step()
        for a, b in zip(ours, theirs, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    for p in theirs:
        assert opt_theirs.state[p]["step"].item() in (6.0, 4.0)
    assert [opt_ours.state[p]["step"].item() for p in ours] == [6.0, 6.0, 4.0]
    for p, q in zip(ours, theirs, strict=True):
        for key in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(opt_ours.state[p][key], opt_theirs.state[q][key],
                                       rtol=1e-6, atol=1e-9)
    # torch's step continues from the state adam_update_ left, as from its own.
    grads = [torch.full(p.shape, 0.5) for p in ours]
    for ps, opt in ((ours, opt_ours), (theirs, opt_theirs)):
        for p, grad in zip(ps, grads, strict=True):
            p.grad = grad
        opt.step()
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_adam_state_is_the_optimisers_own_and_survives_a_state_dict_round_trip():
    params = _params(2)
    opt = adam(params, lr=1e-3)
    state = adam_state(opt)
    assert all(s.dtype == torch.float32 and s.item() == 0.0 for s in state.step)
    assert state.exp_avg[0] is opt.state[params[0]]["exp_avg"]
    assert state.params == params and state.hyperparameters == (1e-3, 0.9, 0.999, 1e-8, 0.0)
    adam_update_([torch.ones_like(p) for p in params], state)
    copy = adam(_params(2), lr=1e-3)
    copy.load_state_dict(opt.state_dict())
    restored = adam_state(copy)
    for key in ("exp_avg", "exp_avg_sq", "step"):
        for x, y in zip(getattr(restored, key), getattr(state, key), strict=True):
            assert torch.equal(x, y)


def test_adam_state_refuses_what_adam_update_does_not_implement():
    with pytest.raises(ValueError, match="amsgrad"):
        adam_state(torch.optim.Adam(_params(3), amsgrad=True))


@pytest.mark.parametrize("form", [on_host, on_device])
def test_bias_corrections_are_adams_at_the_coming_step_of_each_parameter(form):
    """Both forms (step counts read on the host; tensor operations where a GPU's Adam keeps
    them) against the closed forms, for parameters at different step counts: at step count s
    the coming step is t = s + 1, with lr / (1 − β1^t) and sqrt(1 − β2^t)."""
    lr, beta1, beta2 = 3e-4, 0.9, 0.999
    steps = [torch.tensor(s, dtype=torch.float32) for s in (0.0, 1.0, 9.0, 9999.0)]
    got = form(steps, lr, beta1, beta2)
    assert got.dtype == torch.float64 and got.shape == (2, 4)
    # t = 1: lr / (1 − 0.9) = 10·lr and sqrt(1 − 0.999) = sqrt(0.001), whatever the power.
    assert got[0, 0].item() == pytest.approx(10 * lr, rel=1e-14)
    assert got[1, 0].item() == pytest.approx(math.sqrt(1e-3), rel=1e-14)
    for i, t in enumerate((1, 2, 10, 10000)):
        assert got[0, i].item() == pytest.approx(lr / (1 - beta1 ** t), rel=1e-14)
        assert got[1, i].item() == pytest.approx(math.sqrt(1 - beta2 ** t), rel=1e-14)
