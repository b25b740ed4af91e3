"""A torch-only stand-in for an Isaac Lab `DirectMARLEnv`, following its documented interface:
`possible_agents` / `agents`, per-agent gymnasium `observation_spaces` / `action_spaces`,
`state_space` and `cfg.state_space`, `num_envs`, `device`, `max_episode_length`,
`reset(seed, options) -> (obs_dict, extras)`, `step(action_dict) -> (obs_dict, reward_dict,
terminated_dict, time_out_dict, extras)`, `state()`, and Isaac Lab's same-step auto-reset: an env
resets inside `step` when all agents terminated or all timed out, and the returned observations
of those envs are already the reset ones (the pre-reset ones go to `extras[agent]["final_obs"]`
only with `cfg.compute_final_obs`).

Two heterogeneous agents over a toy 1-D system, values chosen to be easy to check:
- "cart": obs [x, v, t, episodes] (4), action Box(1) unbounded (an Isaac Lab int spec);
  v <- v + a, x <- x + v. Reward x. Terminated when |x| > x_limit.
- "pendulum": obs [theta, omega, t] (3), action Box(2) in [-2, 2] x [0, 5] (or Discrete(3,
  start=-1), a [B, 1] int64 tensor, with `discrete=True`); theta <- theta + a0, omega <- a1.
  Reward 10 + theta. Terminated when |x| > x_limit or |theta| > theta_limit.
- t is the step count in the episode; every agent times out when t >= max_episode_length.
- state(): 7 values [x, v, theta, omega, t, episodes, 1] (`state_space=7`), or the
  concatenated observations (`state_space=-1`, like Isaac Lab).
"""

from __future__ import annotations

from types import SimpleNamespace

import gymnasium
import numpy as np
import torch


class FakeMARLEnv:
    def __init__(
        self,
        num_envs: int = 4,
        max_episode_length: int = 5,
        state_space: int = 7,
        compute_final_obs: bool = False,
        discrete: bool = False,
        x_limit: float = 3.0,
        theta_limit: float = 3.0,
    ):
        self.num_envs = num_envs
        self.device = "cpu"
        self.max_episode_length = max_episode_length
        self.x_limit = x_limit
        self.theta_limit = theta_limit
        self.cfg = SimpleNamespace(state_space=state_space, compute_final_obs=compute_final_obs)
        self.possible_agents = ["cart", "pendulum"]
        self.agents = list(self.possible_agents)
        inf = np.inf
        self.observation_spaces = {
            "cart": gymnasium.spaces.Box(-inf, inf, shape=(4,)),
            "pendulum": gymnasium.spaces.Box(-inf, inf, shape=(3,)),
        }
        pendulum_action = (
            gymnasium.spaces.Discrete(3, start=-1)
            if discrete
            else gymnasium.spaces.Box(
                low=np.array([-2.0, 0.0], dtype=np.float32),
                high=np.array([2.0, 5.0], dtype=np.float32),
            )
        )
        self.action_spaces = {
            "cart": gymnasium.spaces.Box(-inf, inf, shape=(1,)),
            "pendulum": pendulum_action,
        }
        if state_space < 0:
            self.state_space = gymnasium.spaces.flatten_space(
                gymnasium.spaces.Tuple([self.observation_spaces[a] for a in self.possible_agents])
            )
        else:
            self.state_space = gymnasium.spaces.Box(-inf, inf, shape=(state_space,))

        self.x, self.v, self.theta, self.omega, self.episodes = torch.zeros(5, num_envs).unbind(0)
        self.episode_length_buf = torch.zeros(num_envs, dtype=torch.long)
        self.extras: dict = {agent: {} for agent in self.possible_agents}
        self.obs_dict: dict[str, torch.Tensor] = {}
        self.last_actions: dict[str, torch.Tensor] | None = None
        self.reset_calls: list[int | None] = []
        self.closed = False

    @property
    def unwrapped(self):
        return self

    # -- the documented operations ------------------------------------------------------------

    def reset(self, seed: int | None = None, options=None):
        self.reset_calls.append(seed)
        self._reset_idx(torch.arange(self.num_envs))
        self.episodes.zero_()
        self.obs_dict = self._get_observations()
        return self.obs_dict, self.extras

    def step(self, actions: dict[str, torch.Tensor]):
        assert set(actions) == set(self.possible_agents), actions.keys()
        self._check_actions(actions)
        self.last_actions = {agent: a.clone() for agent, a in actions.items()}
        self.v += actions["cart"][:, 0]
        self.x += self.v
        pend = actions["pendulum"]
        if pend.dtype == torch.int64:
            self.theta += pend[:, 0].float()
        else:
            self.theta += pend[:, 0]
            self.omega = pend[:, 1].clone()
        self.episode_length_buf += 1

        out_x = self.x.abs() > self.x_limit
        terminated = {"cart": out_x, "pendulum": out_x | (self.theta.abs() > self.theta_limit)}
        time_out = self.episode_length_buf >= self.max_episode_length
        time_outs = {agent: time_out for agent in self.possible_agents}
        rewards = {"cart": self.x.clone(), "pendulum": 10.0 + self.theta}

        reset = torch.stack(list(terminated.values())).all(0) | torch.stack(
            list(time_outs.values())
        ).all(0)
        self.extras = {agent: {"x_at_step": self.x.clone()} for agent in self.possible_agents}
        self.extras["log"] = {"mean_x": float(self.x.mean())}
        if self.cfg.compute_final_obs:
            for agent, obs in self._get_observations().items():
                self.extras[agent]["final_obs"] = obs
        ids = reset.nonzero().flatten()
        if ids.numel():
            self._reset_idx(ids)
            self.episodes[ids] += 1
        self.obs_dict = self._get_observations()
        return self.obs_dict, rewards, terminated, time_outs, self.extras

    def state(self):
        if self.cfg.state_space < 0:
            return torch.cat([self.obs_dict[a] for a in self.possible_agents], dim=-1)
        t = self.episode_length_buf.float()
        ones = torch.ones(self.num_envs)
        return torch.stack([self.x, self.v, self.theta, self.omega, t, self.episodes, ones], -1)

    def close(self):
        self.closed = True

    # -- internals ----------------------------------------------------------------------------

    def _reset_idx(self, ids: torch.Tensor) -> None:
        for buf in (self.x, self.v, self.theta, self.omega):
            buf[ids] = 0.0
        self.episode_length_buf[ids] = 0

    def _get_observations(self) -> dict[str, torch.Tensor]:
        t = self.episode_length_buf.float()
        return {
            "cart": torch.stack([self.x, self.v, t, self.episodes], dim=-1),
            "pendulum": torch.stack([self.theta, self.omega, t], dim=-1),
        }

    def _check_actions(self, actions: dict[str, torch.Tensor]) -> None:
        for agent, space in self.action_spaces.items():
            a = actions[agent]
            assert a.device.type == self.device, (agent, a.device)
            if isinstance(space, gymnasium.spaces.Discrete):
                assert a.shape == (self.num_envs, 1) and a.dtype == torch.int64, (agent, a)
                assert bool(((a >= space.start) & (a < space.start + space.n)).all()), a
            else:
                assert a.shape == (self.num_envs, *space.shape), (agent, a.shape)
                assert a.dtype == torch.float32, (agent, a.dtype)
                low = torch.as_tensor(space.low, dtype=torch.float32)
                high = torch.as_tensor(space.high, dtype=torch.float32)
                assert bool(((a >= low - 1e-6) & (a <= high + 1e-6)).all()), (agent, a)
