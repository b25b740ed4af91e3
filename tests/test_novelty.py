"""DDiffPG's intrinsic reward (NovelD over RND) against hand computations."""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch

from marl_diff.agents.novelty import NoveltyReward
from marl_diff.errors import ConfigError

SMALL = {"hidden": (32, 32), "out_features": 8}


def hand_novelty(module: NoveltyReward, state: torch.Tensor) -> torch.Tensor:
    """||predictor(encode(s)) - target(encode(s))|| straight from the two networks."""
    x = module.encode(state)
    with torch.no_grad():
        return (module.predictor(x)[0] - module.target(x)[0]).norm(dim=-1)


def test_positional_encoding_by_hand():
    module = NoveltyReward(3, position_dims=(0, 2), frequencies=2, **SMALL)
    p1, rest, p2 = 0.25, 7.0, -0.5
    encoded = module.encode(torch.tensor([p1, rest, p2]))
    pi = math.pi
    expected = [
        p1,
        p2,
        math.sin(pi * p1),
        math.sin(pi * p2),
        math.cos(pi * p1),
        math.cos(pi * p2),
        math.sin(2 * pi * p1),
        math.sin(2 * pi * p2),
        math.cos(2 * pi * p1),
        math.cos(2 * pi * p2),
        rest,
    ]
    assert module.encoded_dim == 3 + 2 * 2 * 2 == encoded.shape[-1]
    torch.testing.assert_close(encoded, torch.tensor(expected))


def test_encoding_keeps_leading_dims_and_other_dims():
    state = torch.randn(2, 5, 6)
    module = NoveltyReward(6, position_dims=(1, 4), frequencies=10, **SMALL)
    encoded = module.encode(state)
    assert encoded.shape == (2, 5, 6 + 2 * 10 * 2)
    torch.testing.assert_close(encoded[..., :2], state[..., [1, 4]])
    torch.testing.assert_close(encoded[..., -4:], state[..., [0, 2, 3, 5]])  # unchanged, in order
    # the finest frequency is 2^9 pi
    torch.testing.assert_close(
        encoded[..., 2 + 2 * 2 * 9], torch.sin(2**9 * math.pi * state[..., 1])
    )
    # no position dims: the state itself; no frequencies: p then the rest
    torch.testing.assert_close(NoveltyReward(6, (), **SMALL).encode(state), state)
    only_p = NoveltyReward(6, (3,), frequencies=0, **SMALL).encode(state)
    torch.testing.assert_close(only_p, state[..., [3, 0, 1, 2, 4, 5]])
    out = NoveltyReward(6, (1, 4), **SMALL).novelty(state)
    assert out.shape == (2, 5)


def test_noveld_reward_by_hand_including_clipped_transitions():
    torch.manual_seed(0)
    module = NoveltyReward(4, position_dims=(0, 1), scale=0.01, alpha=0.5, **SMALL)
    s, s_next = torch.randn(16, 4), torch.randn(16, 4)
    expected = 0.01 * (hand_novelty(module, s_next) - 0.5 * hand_novelty(module, s)).clamp_min(0)
    reward = module.reward(s, s_next)
    assert reward.shape == (16,) and not reward.requires_grad
    torch.testing.assert_close(reward, expected)
    torch.testing.assert_close(module.novelty(s).detach(), hand_novelty(module, s))

    # alpha = 1: of s -> s' and s' -> s exactly one gains novelty, the other is clipped to 0
    module.alpha = 1.0
    forward, backward = module.reward(s, s_next), module.reward(s_next, s)
    gain = hand_novelty(module, s_next) - hand_novelty(module, s)
    torch.testing.assert_close(forward, 0.01 * gain.clamp_min(0))
    torch.testing.assert_close(backward, 0.01 * (-gain).clamp_min(0))
    assert ((forward == 0) ^ (backward == 0)).all()
    assert (forward == 0).any() and (backward == 0).any()

    rnd = NoveltyReward(4, position_dims=(0, 1), kind="rnd", scale=0.3, **SMALL)
    torch.testing.assert_close(rnd.reward(s, s_next), 0.3 * hand_novelty(rnd, s_next))


def test_training_lowers_novelty_of_seen_states_but_not_of_far_ones():
    torch.manual_seed(0)
    module = NoveltyReward(4, position_dims=(0, 1))  # DDiffPG's sizes and learning rate
    g = torch.Generator().manual_seed(1)
    seen = 0.5 * torch.rand(64, 4, generator=g)
    far = 0.5 * torch.rand(64, 4, generator=g) - 1.0
    before = module.novelty(seen).mean().item()
    losses = [module.update(seen)["novelty/loss"] for _ in range(200)]
    after_seen = module.novelty(seen).mean().item()
    after_far = module.novelty(far).mean().item()
    assert after_seen < 0.5 * before
    assert after_far > 2 * after_seen
    assert losses[-1] < 0.1 * losses[0] and not losses[-1].requires_grad
    # the NovelD reward of stepping from a seen state to a far one beats the reverse step
    assert module.reward(seen, far).mean() > module.reward(far, seen).mean()


def test_target_is_fixed():
    torch.manual_seed(0)
    module = NoveltyReward(3, position_dims=(2,), frequencies=3, **SMALL)
    assert not any(p.requires_grad for p in module.target.parameters())
    optimised = {id(p) for group in module.optimizer.param_groups for p in group["params"]}
    assert optimised == {id(p) for p in module.predictor.parameters()}
    target_before = copy.deepcopy(module.target.state_dict())
    predictor_before = copy.deepcopy(module.predictor.state_dict())
    states = torch.randn(32, 3)
    for _ in range(5):
        module.update(states)
    for name, value in module.target.state_dict().items():
        assert torch.equal(value, target_before[name])
    assert any(
        not torch.equal(value, predictor_before[name])
        for name, value in module.predictor.state_dict().items()
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "icm"}, "noveld, rnd"),
        ({"activation": "gelu"}, "elu, mish, relu, silu, tanh"),
        ({"position_dims": (0, 3)}, "0..2"),
        ({"position_dims": (-1,)}, "0..2"),
        ({"position_dims": (1, 1)}, "repeated"),
        ({"frequencies": -1}, ">= 0"),
        ({"state_dim": 0, "position_dims": ()}, ">= 1"),
        ({"hidden": (32, 0)}, ">= 1"),
        ({"lr": 0.0}, "> 0"),
    ],
)
def test_bad_arguments_raise_config_errors(kwargs, message):
    args = {"state_dim": 3, "position_dims": (0, 1), **SMALL, **kwargs}
    with pytest.raises(ConfigError, match=message):
        NoveltyReward(**args)


def test_checkpoint_round_trip_gives_identical_rewards_and_next_update():
    args = {"state_dim": 5, "position_dims": (0, 1), "frequencies": 4, **SMALL}
    torch.manual_seed(0)
    trained = NoveltyReward(**args)
    states = torch.randn(32, 5)
    for _ in range(3):
        trained.update(states)
    buffer = io.BytesIO()
    torch.save({"module": trained.state_dict(), "opt": trained.optimizer_state()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer)

    torch.manual_seed(123)  # different initial weights
    restored = NoveltyReward(**args)
    restored.load_state_dict(saved["module"])
    restored.load_optimizer_state(saved["opt"])

    s, s_next = torch.randn(8, 5), torch.randn(8, 5)
    assert torch.equal(trained.reward(s, s_next), restored.reward(s, s_next))
    batch = torch.randn(32, 5)
    loss_a = trained.update(batch)["novelty/loss"]
    loss_b = restored.update(batch)["novelty/loss"]
    assert torch.equal(loss_a, loss_b)
    for (name, a), b in zip(
        trained.predictor.state_dict().items(),
        restored.predictor.state_dict().values(),
        strict=True,
    ):
        assert torch.equal(a, b), name
    assert torch.equal(trained.reward(s, s_next), restored.reward(s, s_next))
