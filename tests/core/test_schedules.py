"""Schedules without ComfyUI: reference timesteps, the strength rule, sigmas, errors."""

import pytest
import torch

from add_turbo import schedules


@pytest.mark.parametrize("steps,expected", [(1, [999]), (2, [999, 499]), (3, [999, 666, 332]), (4, [999, 749, 499, 249])])
def test_trailing_txt2img_matches_reference(steps, expected):
    assert schedules.turbo_timesteps(steps, 1.0, "trailing") == expected


@pytest.mark.parametrize("steps,expected", [(1, [999]), (2, [999, 899]), (3, [999, 899, 799]), (4, [999, 899, 799, 699])])
def test_sai_txt2img_matches_reference(steps, expected):
    assert schedules.turbo_timesteps(steps, 1.0, "sai") == expected


def test_trailing_matches_diffusers_formula_for_all_steps():
    import numpy as np

    for n in range(1, schedules.MAX_STEPS + 1):
        diffusers = (np.round(np.arange(1000, 0, -1000 / n)) - 1).astype(int).tolist()
        assert schedules.turbo_timesteps(n) == diffusers


@pytest.mark.parametrize("steps,strength,expected", [(2, 0.5, [499, 249]), (1, 0.5, [499]), (1, 0.25, [249]),
                                                     (4, 0.5, [499, 374, 249, 124]), (1, 0.001, [0])])
def test_strength_spreads_actual_steps_over_window(steps, strength, expected):
    assert schedules.turbo_timesteps(steps, strength) == expected


def test_strength_is_continuous_not_floored_to_tenths():
    assert schedules.turbo_timesteps(1, 0.29) == [289]
    assert schedules.turbo_timesteps(1, 0.29) != schedules.turbo_timesteps(1, 0.2)
    assert schedules.turbo_timesteps(1, 0.05, "sai") == [49]  # built-in gives no step at all here


@pytest.mark.parametrize("steps", range(1, 11))
@pytest.mark.parametrize("strength", [0.01, 0.1, 0.25, 0.33, 0.5, 0.75, 0.999, 1.0])
def test_grid_never_zero_steps_and_strictly_descending(steps, strength):
    ts = schedules.turbo_timesteps(steps, strength)
    assert len(ts) == steps
    assert all(a > b for a, b in zip(ts, ts[1:]))
    assert 0 <= ts[-1] and ts[0] == round(strength * 1000) - 1
    sigmas = schedules.turbo_sigmas(steps, strength)
    assert sigmas.shape == (steps + 1,) and sigmas[-1] == 0
    assert torch.all(sigmas[:-1] > sigmas[1:])


def test_training_sigmas_reference_values():
    sigmas = schedules.training_sigmas()
    assert sigmas.shape == (1000,)
    assert abs(sigmas[999].item() - 14.6146) < 1e-3
    expected = [14.6146, 4.0817, 1.6129, 0.6932, 0.0]
    assert torch.allclose(schedules.turbo_sigmas(4), torch.tensor(expected), atol=1e-4)


@pytest.mark.parametrize("steps,strength,spacing,message", [
    (0, 1.0, "trailing", "steps must be"), (11, 1.0, "trailing", "steps must be"), (2.0, 1.0, "trailing", "steps must be"),
    (1, 0.0, "trailing", "strength must be"), (1, 1.5, "trailing", "strength must be"), (1, -0.1, "sai", "strength must be"),
    (4, 0.002, "trailing", "use strength >= 0.004"), (1, 1.0, "linear", "spacing must be"),
    (4, 0.25, "sai", "fits at most 3 step"), (1, 0.0004, "sai", "fits at most 0 step"),
])
def test_invalid_values_name_the_fix(steps, strength, spacing, message):
    with pytest.raises(ValueError, match=message):
        schedules.turbo_timesteps(steps, strength, spacing)
