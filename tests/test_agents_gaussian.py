"""Unit tests of the Gaussian (DecSPG/MASAC-like) agent, the centralised critic, the stacked
networks and the replay buffer, on a small heterogeneous spec (padded obs/action dims)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.distributions import Normal, TanhTransform, TransformedDistribution

from marl_diff.agents import make_agent
from marl_diff.agents.gaussian import LOG_STD_MAX, LOG_STD_MIN, GaussianAgent, GaussianConfig
from marl_diff.agents.networks import CentralCritic, PerAgentMLP, substitute_each_agent
from marl_diff.buffer import TRANSITION_FIELDS, Batch, ReplayBuffer
from marl_diff.envs.base import EnvSpec
from marl_diff.errors import ConfigError
from marl_diff.nn import StackedLinear, StackedMLP

B = 7


def hetero_spec() -> EnvSpec:
    """3 agents: obs 4/2/3, actions 2/1/3 (padded to 4 and 3)."""
    return EnvSpec(
        agent_names=("a", "b", "c"),
        obs_dims=(4, 2, 3),
        act_dims=(2, 1, 3),
        state_dim=5,
        max_episode_steps=10,
        act_low=-torch.ones(3, 3),
        act_high=torch.ones(3, 3),
    )


def agent_for(spec: EnvSpec, **overrides) -> GaussianAgent:
    config = {
        "name": "gaussian",
        "algorithm": "gaussian",
        "actor_hidden": [16, 16],
        "critic_hidden": [16, 16],
        **overrides,
    }
    agent = make_agent(config, spec, "cpu")
    assert isinstance(agent, GaussianAgent)
    return agent


def random_batch(spec: EnvSpec, size: int = B, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    n, d, a, s = spec.n_agents, spec.obs_dim, spec.act_dim, spec.state_dim
    obs_mask, act_mask = spec.obs_mask().float(), spec.act_mask().float()
    return Batch(
        obs=torch.randn(size, n, d, generator=g) * obs_mask,
        state=torch.randn(size, s, generator=g),
        action=(torch.rand(size, n, a, generator=g) * 2 - 1) * act_mask,
        reward=torch.randn(size, n, generator=g),
        next_obs=torch.randn(size, n, d, generator=g) * obs_mask,
        next_state=torch.randn(size, s, generator=g),
        terminated=(torch.rand(size, generator=g) < 0.2).float(),
    )


# ---------------------------------------------------------------------------- the policy
@pytest.mark.parametrize("share", [False, True])
def test_act_shapes_bounds_and_padding(share):
    torch.manual_seed(0)
    spec = hetero_spec()
    agent = agent_for(spec, share_parameters=share)
    obs = random_batch(spec).obs
    for explore in (True, False):
        action = agent.act(obs, explore=explore)
        assert action.shape == (B, 3, 3) and action.dtype == torch.float32
        assert action.abs().max() <= 1.0
        assert torch.all(action[~spec.act_mask().expand(B, -1, -1)] == 0)  # padded dims
    assert torch.equal(agent.act(obs, explore=False), agent.act(obs, explore=False))
    assert not torch.equal(agent.act(obs, explore=True), agent.act(obs, explore=True))
    action, log_prob = agent.policy(obs)
    assert log_prob.shape == (B, 3) and torch.isfinite(log_prob).all()


def test_log_prob_matches_torch_tanh_gaussian_on_unpadded_dims():
    torch.manual_seed(1)
    spec = hetero_spec()
    policy = agent_for(spec).policy.double()
    obs = random_batch(spec).obs.double()
    torch.manual_seed(123)
    action, log_prob = policy(obs)
    # the same noise again, to rebuild the pre-tanh sample
    mean, log_std = policy.net(obs).chunk(2, dim=-1)
    std = log_std.clamp(LOG_STD_MIN, LOG_STD_MAX).exp()
    torch.manual_seed(123)
    pre_tanh = mean + std * torch.randn_like(mean)
    tanh = TanhTransform(cache_size=1)
    dist = TransformedDistribution(Normal(mean, std), [tanh])
    squashed = tanh(pre_tanh)
    mask = spec.act_mask()
    assert torch.allclose(action[..., :][mask.expand(B, -1, -1)], squashed[mask.expand(B, -1, -1)])
    per_dim = dist.log_prob(squashed)
    expected = (per_dim * mask).sum(-1)
    assert torch.allclose(log_prob, expected, atol=1e-8, rtol=1e-8)
    # padded dims contribute nothing: a policy on the unpadded agent alone agrees
    for i, dims in enumerate(spec.act_dims):
        assert torch.allclose(log_prob[:, i], per_dim[:, i, :dims].sum(-1))


def test_deterministic_action_is_tanh_of_mean():
    spec = hetero_spec()
    agent = agent_for(spec)
    obs = random_batch(spec).obs
    mean = agent.policy.net(obs).chunk(2, dim=-1)[0]
    expected = torch.tanh(mean) * spec.act_mask()
    assert torch.allclose(agent.act(obs, explore=False), expected)


def test_update_returns_finite_scalar_metrics_and_changes_parameters():
    torch.manual_seed(2)
    spec = hetero_spec()
    agent = agent_for(spec)
    before = {k: v.clone() for k, v in agent.state_dict().items()}
    metrics = agent.update(random_batch(spec))
    expected = {"loss/critic", "q/mean", "loss/actor", "policy/entropy", "alpha/mean"}
    assert expected | {"loss/alpha"} == set(metrics)
    for key, value in metrics.items():
        assert value.shape == () and torch.isfinite(value) and not value.requires_grad, key
    after = agent.state_dict()
    for key in ("log_alpha", "critic.q.net.0.weight", "policy.net.mlp.net.0.weight"):
        assert not torch.equal(before[key], after[key]), key
    assert int(agent.updates) == 1
    # the target critic moved by tau towards the critic
    tau = agent.config.tau
    w_old = before["critic_target.q.net.0.weight"]
    assert torch.allclose(
        after["critic_target.q.net.0.weight"],
        w_old + tau * (after["critic.q.net.0.weight"] - w_old),
        atol=1e-6,
    )
    # heterogeneous target entropy: -act_dim_i
    assert torch.equal(agent.target_entropy, torch.tensor([-2.0, -1.0, -3.0]))


def test_fixed_alpha_has_no_alpha_optimizer():
    agent = agent_for(hetero_spec(), auto_alpha=False, init_alpha=0.5)
    assert "alpha" not in agent.optimizers
    metrics = agent.update(random_batch(hetero_spec()))
    assert "loss/alpha" not in metrics
    assert torch.allclose(agent.log_alpha.exp(), torch.full((3,), 0.5))


@pytest.mark.parametrize(
    "override, needle",
    [
        ({"others_actions": "mine"}, "others_actions"),
        ({"actor_activation": "wiggle"}, "actor_activation"),
        ({"critic_activation": "wiggle"}, "critic_activation"),
        ({"policy_delay": 0}, "policy_delay"),
        ({"init_alpha": 0.0}, "init_alpha"),
        ({"actor_lr": "fast"}, "actor_lr"),
        ({"bogus": 1}, "agent.bogus"),
    ],
)
def test_bad_agent_configs_raise_config_error(override, needle):
    with pytest.raises(ConfigError, match=needle):
        agent_for(hetero_spec(), **override)


def test_config_defaults_match_dataclass():
    agent = agent_for(hetero_spec())
    assert isinstance(agent.config, GaussianConfig)
    assert agent.config.gamma == 0.99 and agent.config.others_actions == "replay"


# ---------------------------------------------------------------------------- Q_i evaluation
def manual_q_each(agent, state, base, own) -> torch.Tensor:
    n = base.shape[-2]
    out = []
    for i in range(n):
        joint = base.clone()
        joint[:, i] = own[:, i]
        out.append(agent.critic(state, joint).min(0).values)
    return torch.stack(out, dim=-1)


def test_substitute_each_agent():
    base = torch.zeros(2, 3, 2)
    own = torch.ones(2, 3, 2)
    joint = substitute_each_agent(base, own)  # [B, N(i), N, A]
    assert joint.shape == (2, 3, 3, 2)
    for i in range(3):
        for j in range(3):
            assert torch.all(joint[:, i, j] == (1.0 if i == j else 0.0))


@pytest.mark.parametrize("n_q, out, layer_norm", [(2, 1, False), (3, 2, False), (2, 1, True)])
def test_critic_is_the_stacked_mlp_on_state_and_joint_action_whatever_the_state_layout(
    n_q, out, layer_norm
):
    torch.manual_seed(0)
    critic = CentralCritic(5, 3, 2, [8, 8], n_q=n_q, out_features=out, layer_norm=layer_norm)
    state, joint = torch.randn(4, 5), torch.randn(6, 4, 3, 2)  # 6 joint actions per state
    expanded = state.expand(6, 4, 5)
    flat = torch.cat([expanded, joint.flatten(-2)], -1).reshape(-1, 11)
    expected = critic.q(flat).reshape(n_q, 6, 4, out)
    torch.testing.assert_close(critic.heads(expanded, joint), expected)
    torch.testing.assert_close(critic.heads(state, joint), expected)  # state computed once
    torch.testing.assert_close(critic(state, joint), expected[..., 0])


def test_q_each_agent_semantics():
    torch.manual_seed(3)
    spec = hetero_spec()
    agent = agent_for(spec)
    batch = random_batch(spec)
    fresh = agent.policy(batch.obs)[0].detach().requires_grad_(True)
    q = agent.q_each_agent(batch.state, batch.action, fresh)
    assert q.shape == (B, 3)
    assert torch.allclose(q, manual_q_each(agent, batch.state, batch.action, fresh), atol=1e-6)
    # Q_i depends on agent i's own action only: gradients reach no other agent
    for i in range(3):
        (grad,) = torch.autograd.grad(q[:, i].sum(), fresh, retain_graph=True)
        others = [j for j in range(3) if j != i]
        assert torch.all(grad[:, others] == 0)
        assert grad[:, i].abs().sum() > 0


@pytest.mark.parametrize("mode", ["replay", "policy"])
def test_own_q_sum_has_each_agents_q_value_and_gradient(mode):
    """sum_i Q_i(s, a_i, a_-i), a_-i replayed or the fresh actions detached: with `policy`
    one joint critic call must give the value and every a_i's gradient of N substitutions."""
    torch.manual_seed(3)
    spec = hetero_spec()
    agent = agent_for(spec, others_actions=mode)
    batch = random_batch(spec)
    fresh = agent.policy(batch.obs)[0].detach().requires_grad_(True)
    base = batch.action if mode == "replay" else fresh.detach()
    expected = manual_q_each(agent, batch.state, base, fresh).sum(-1)
    (expected_grad,) = torch.autograd.grad(expected.sum(), fresh)
    q_sum = agent.own_q_sum(batch, fresh)
    (grad,) = torch.autograd.grad(q_sum.sum(), fresh)
    assert q_sum.shape == (B,)
    torch.testing.assert_close(q_sum, expected)
    torch.testing.assert_close(grad, expected_grad)
    assert grad.abs().sum() > 0


def test_q_each_agent_with_candidate_dim():
    torch.manual_seed(4)
    spec = hetero_spec()
    agent = agent_for(spec)
    batch = random_batch(spec)
    own = (torch.rand(5, B, 3, 3) * 2 - 1) * spec.act_mask()  # 5 candidates per agent
    q = agent.q_each_agent(batch.state, batch.action, own)
    assert q.shape == (5, B, 3)
    for m in range(5):
        expected = manual_q_each(agent, batch.state, batch.action, own[m])
        assert torch.allclose(q[m], expected, atol=1e-6)


# ---------------------------------------------------------------------------- networks
def test_stacked_mlp_equals_per_member_linear_mlps():
    torch.manual_seed(5)
    stacked = StackedMLP(3, 4, [8, 6], 2, activation="tanh")
    linears = [m for m in stacked.net if isinstance(m, StackedLinear)]
    members = []
    for k in range(3):
        layers: list[nn.Module] = []
        for j, layer in enumerate(linears):
            lin = nn.Linear(layer.weight.shape[1], layer.weight.shape[2])
            with torch.no_grad():
                lin.weight.copy_(layer.weight[k].T)
                lin.bias.copy_(layer.bias[k, 0])
            layers.append(lin)
            if j < len(linears) - 1:
                layers.append(nn.Tanh())
        members.append(nn.Sequential(*layers))
    x = torch.randn(3, 10, 4)
    out = stacked(x)
    assert out.shape == (3, 10, 2)
    for k in range(3):
        assert torch.allclose(out[k], members[k](x[k]), atol=1e-6)
    shared = torch.randn(10, 4)  # [B, in] is broadcast to every member
    out = stacked(shared)
    for k in range(3):
        assert torch.allclose(out[k], members[k](shared), atol=1e-6)


def test_stacked_layer_norm_mlp_equals_per_member_linear_layernorm_mish():
    """DTQL's Q heads: linear -> LayerNorm (each member its own gain and bias) -> mish."""
    torch.manual_seed(6)
    stacked = StackedMLP(2, 4, [8, 6], 1, activation="mish", layer_norm=True)
    with torch.no_grad():  # gains and biases away from their initial 1 and 0
        for norm in stacked.net[1::3]:
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.5, 0.5)
    x = torch.randn(2, 10, 4)
    out = stacked(x)
    for k in range(2):
        h = x[k]
        for i in (0, 3):
            lin, norm = stacked.net[i], stacked.net[i + 1]
            h = h @ lin.weight[k] + lin.bias[k, 0]
            h = nn.functional.layer_norm(h, (h.shape[-1],), norm.weight[k, 0], norm.bias[k, 0])
            h = nn.functional.mish(h)
        expected = h @ stacked.net[6].weight[k] + stacked.net[6].bias[k, 0]
        torch.testing.assert_close(out[k], expected)


@pytest.mark.parametrize("share", [False, True])
def test_per_agent_mlp_matches_member_by_member(share):
    torch.manual_seed(6)
    net = PerAgentMLP(3, 4, [8], 5, share=share)
    x = torch.randn(2, 6, 3, 4)  # extra leading dims
    out = net(x)
    assert out.shape == (2, 6, 3, 5)
    for i in range(3):
        xi = x[..., i, :].reshape(1, -1, 4)
        if share:
            ids = torch.zeros(1, xi.shape[1], 3)
            ids[..., i] = 1.0
            expected = net.mlp(torch.cat([xi, ids], -1))[0]
        else:
            expected = net.mlp.net(xi.expand(3, -1, -1))[i]
        assert torch.allclose(out[..., i, :].reshape(-1, 5), expected, atol=1e-6)
    if not share:  # agent i's output depends on agent i's input only
        y = x.clone()
        y[..., 0, :] += 1.0
        assert torch.equal(net(y)[..., 1:, :], out[..., 1:, :])


# ---------------------------------------------------------------------------- replay buffer
def numbered(spec: EnvSpec, start: int, count: int) -> Batch:
    """Transitions whose every entry is their index, to follow them through the ring."""
    n, d, a, s = spec.n_agents, spec.obs_dim, spec.act_dim, spec.state_dim
    ids = torch.arange(start, start + count, dtype=torch.float32)
    return Batch(
        obs=ids[:, None, None].expand(count, n, d),
        state=ids[:, None].expand(count, s),
        action=ids[:, None, None].expand(count, n, a),
        reward=ids[:, None].expand(count, n),
        next_obs=ids[:, None, None].expand(count, n, d),
        next_state=ids[:, None].expand(count, s),
        terminated=ids,
    )


def test_buffer_ring_wraps_around():
    spec = hetero_spec()
    buffer = ReplayBuffer(5, spec, torch.device("cpu"))
    buffer.add(numbered(spec, 0, 3))
    assert (buffer.size, buffer.position) == (3, 3)
    buffer.add(numbered(spec, 3, 3))
    assert (buffer.size, buffer.position) == (5, 1)
    assert buffer.storage.terminated.tolist() == [5, 1, 2, 3, 4]
    assert torch.all(buffer.storage.obs[0] == 5) and torch.all(buffer.storage.state[0] == 5)
    buffer.add(numbered(spec, 6, 5))  # a whole capacity at once
    assert buffer.storage.terminated.tolist() == [10, 6, 7, 8, 9]
    with pytest.raises(ValueError):
        buffer.add(numbered(spec, 0, 6))
    sample = buffer.sample(64, torch.Generator().manual_seed(0))
    assert sample.obs.shape == (64, 3, 4) and sample.state.shape == (64, 5)
    assert set(sample.terminated.tolist()) <= {6.0, 7.0, 8.0, 9.0, 10.0}
    assert sample.discount is None  # single steps
    for field in TRANSITION_FIELDS:  # fields stay aligned
        value = getattr(sample, field)
        assert torch.all(value == sample.terminated.view(-1, *[1] * (value.dim() - 1)))


def test_buffer_extras_follow_their_slots():
    """Agent-declared fields: zero for every new transition, returned slots address them, and
    they survive a state_dict round trip beside the transitions they belong to."""
    spec = hetero_spec()
    fields = {"episode": ((), torch.long), "target": ((2, 3), torch.float32)}
    buffer = ReplayBuffer(5, spec, torch.device("cpu"), fields)
    slots = buffer.add(numbered(spec, 0, 4))
    assert slots.tolist() == [0, 1, 2, 3]
    buffer.extras["episode"][slots] = torch.arange(10, 14)
    buffer.extras["target"][slots] = 1.0
    slots = buffer.add(numbered(spec, 4, 3))  # wraps: overwrites slots 4, 0, 1
    assert slots.tolist() == [4, 0, 1]
    assert buffer.extras["episode"].tolist() == [0, 0, 12, 13, 0]
    assert buffer.extras["target"][slots].abs().sum() == 0
    buffer.extras["episode"][slots] = torch.tensor([14, 15, 16])
    state = buffer.state_dict()
    assert state["extras/episode"].tolist() == [12, 13, 14, 15, 16]  # insertion order
    same = ReplayBuffer(5, spec, torch.device("cpu"), fields)
    same.load_state_dict(state)
    assert torch.equal(same.extras["episode"], buffer.extras["episode"])
    assert torch.equal(same.extras["target"], buffer.extras["target"])
    idx = buffer.sample_slots(16, torch.Generator().manual_seed(0))
    batch = buffer.gather(idx)
    assert torch.equal(batch.terminated, buffer.storage.terminated[idx])


def test_buffer_sample_only_from_filled_part_and_is_reproducible():
    spec = hetero_spec()
    buffer = ReplayBuffer(100, spec, torch.device("cpu"))
    buffer.add(numbered(spec, 1, 4))
    a = buffer.sample(50, torch.Generator().manual_seed(1))
    b = buffer.sample(50, torch.Generator().manual_seed(1))
    assert set(a.terminated.tolist()) <= {1.0, 2.0, 3.0, 4.0}
    assert all(torch.equal(getattr(a, name), getattr(b, name)) for name in TRANSITION_FIELDS)


def test_buffer_never_reads_slots_it_has_not_written():
    """The storage is allocated, not zeroed: whatever the memory held before (NaN here) must
    never reach a sample, a state_dict or an extra field."""
    spec = hetero_spec()
    buffer = ReplayBuffer(10, spec, torch.device("cpu"), {"target": ((2,), torch.float32)})
    stores = [getattr(buffer.storage, name) for name in TRANSITION_FIELDS]
    for store in (*stores, *buffer.extras.values()):
        store.fill_(float("nan"))
    slots = buffer.add(numbered(spec, 1, 3))
    sample = buffer.sample(256, torch.Generator().manual_seed(0))
    assert not any(torch.isnan(getattr(sample, name)).any() for name in TRANSITION_FIELDS)
    assert buffer.extras["target"][slots].abs().sum() == 0
    assert not any(torch.isnan(value).any() for value in buffer.state_dict().values())


def test_buffer_state_dict_round_trip():
    spec = hetero_spec()
    buffer = ReplayBuffer(5, spec, torch.device("cpu"))
    buffer.add(numbered(spec, 0, 4))
    buffer.add(numbered(spec, 4, 3))  # wrapped: holds 2..6, oldest at position 2
    state = buffer.state_dict()
    assert set(state) == {*TRANSITION_FIELDS, "position"}
    assert state["terminated"].tolist() == [2, 3, 4, 5, 6]  # insertion order
    assert state["obs"].shape == (5, 3, 4)

    same = ReplayBuffer(5, spec, torch.device("cpu"))
    same.load_state_dict(state)
    assert same.size == 5
    for x, y in zip(same.state_dict().values(), state.values(), strict=True):
        assert torch.equal(x, y)  # the same slots, write position included
    same.add(numbered(spec, 7, 1))  # the next write replaces the oldest (2)
    assert sorted(same.state_dict()["terminated"].tolist()) == [3, 4, 5, 6, 7]

    bigger = ReplayBuffer(8, spec, torch.device("cpu"))
    bigger.load_state_dict(state)
    assert bigger.size == 5 and bigger.position == 5
    assert bigger.state_dict()["terminated"].tolist() == [2, 3, 4, 5, 6]

    smaller = ReplayBuffer(3, spec, torch.device("cpu"))
    smaller.load_state_dict(state)  # keeps the newest
    assert smaller.state_dict()["terminated"].tolist() == [4, 5, 6]

    empty = ReplayBuffer(3, spec, torch.device("cpu"))
    empty.load_state_dict(ReplayBuffer(3, spec, torch.device("cpu")).state_dict())
    assert empty.size == 0
