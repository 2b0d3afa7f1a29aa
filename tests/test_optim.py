"""`adam_update_` (Adam as tensor operations, for whole compiled steps) against
`torch.optim.Adam` itself, and the state it shares with it."""

from __future__ import annotations

import pytest
import torch

from tom.optim import adam, adam_state, adam_update_


def _params(seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(5, 3, generator=g).requires_grad_(),
            torch.randn(3, generator=g).requires_grad_(),
            torch.randn((), generator=g).requires_grad_()]


@pytest.mark.parametrize("weight_decay", [0.0, 1e-2])
def test_adam_update_matches_torch_adam_over_steps_and_skips_parameters_without_gradient(
        weight_decay):
    """Six steps with gradients of very different scales (the bias corrections matter most in
    the first steps); the last parameter has no gradient in steps 2 and 5, as `Adam.step`
    skips a parameter whose .grad is None. Then torch's own step carries on from the state
    `adam_update_` wrote."""
    ours, theirs = _params(0), _params(0)
    opt_ours = adam(ours, lr=1e-2, weight_decay=weight_decay)
    opt_theirs = adam(theirs, lr=1e-2, weight_decay=weight_decay)
    g = torch.Generator().manual_seed(1)
    for step in range(6):
        grads = [torch.randn(p.shape, generator=g) * 10.0 ** (step - 2) for p in ours]
        if step in (2, 5):
            grads[-1] = None
        adam_update_(grads, adam_state(opt_ours))
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
