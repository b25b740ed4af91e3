"""`python -m marl_diff.collect run_dir=RUN episodes=K [out=ID] [explore=true|false]
[checkpoints=latest|all] [random_fraction=P] [num_envs=E] [seed=S] [device=cpu|cuda|auto]`

Writes a dataset from a trained run's policy on its own scenario (any agent count) into the
local Minari store (MINARI_DATASETS_PATH honoured), under the Minari id `out` (default
`marl_diff/<scenario>-<agent>-v0`), so `runner=offline runner.dataset=ID` finds it. The
layout is documented in marl_diff/datasets.py.

Mixed-quality data on purpose ("medium-replay"-like): `checkpoints=all` splits the episodes
evenly over the run's kept checkpoints, oldest first (early and late policies), and
`random_fraction=P` replaces each env copy's joint action by a uniform random one with
probability P at every step. `explore=true` collects with the agents' exploration (their
training-time action choice) instead of their evaluation action.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from tqdm import tqdm

from marl_diff import precision
from marl_diff.checkpoint import checkpoint_paths
from marl_diff.datasets import REF_SCORES, EpisodeRecord, NormalizedEnv, write_minari
from marl_diff.envs.base import EnvSpec
from marl_diff.errors import ConfigError, MarlDiffError, exit_cleanly_on_user_error
from marl_diff.experiment import load_run, run_config
from marl_diff.run import resolve_device, saved_top_level
from marl_diff.typed_config import key_values

SETTINGS = {
    "run_dir": None,
    "episodes": None,
    "out": None,
    "explore": "false",
    "checkpoints": "latest",
    "random_fraction": "0",
    "num_envs": "10",
    "seed": "0",
    "device": "auto",
}
BOOLEANS = {"true": True, "false": False}
CHECKPOINTS = ("latest", "all")


def parse(args: list[str]) -> dict:
    values = key_values(args, SETTINGS)
    for key in ("run_dir", "episodes"):
        if values[key] is None:
            raise ConfigError(f"{key}= is required (collect run_dir=RUN episodes=K)")
    try:
        for key in ("episodes", "num_envs", "seed"):
            values[key] = int(values[key])
        values["random_fraction"] = float(values["random_fraction"])
    except ValueError as err:
        raise ConfigError(
            f"episodes, num_envs and seed must be integers, random_fraction a number ({err})"
        ) from None
    if values["episodes"] <= 0 or values["num_envs"] <= 0:
        raise ConfigError("episodes and num_envs must be positive")
    if not 0.0 <= values["random_fraction"] <= 1.0:
        raise ConfigError(f"random_fraction must be in [0, 1], not {values['random_fraction']}")
    if values["explore"].lower() not in BOOLEANS:
        raise ConfigError(f"explore must be true or false, not '{values['explore']}'")
    values["explore"] = BOOLEANS[values["explore"].lower()]
    if values["checkpoints"] not in CHECKPOINTS:
        raise ConfigError(f"checkpoints must be one of {', '.join(CHECKPOINTS)}")
    return values


def collect_episodes(
    run_dir: Path,
    episodes: int,
    *,
    explore: bool = False,
    checkpoints: str = "latest",
    random_fraction: float = 0.0,
    num_envs: int = 10,
    seed: int = 0,
    device: str = "auto",
    progress: bool = True,
) -> tuple[list[EpisodeRecord], EnvSpec]:
    """Play `episodes` episodes with the run's policy (see the module docstring for the mix),
    with the run's own `matmul_precision`; returns them and the scenario's spec."""
    paths = checkpoint_paths(run_dir / "checkpoints")
    if not paths:
        raise MarlDiffError(f"no checkpoint found in '{run_dir / 'checkpoints'}'")
    precision.configure(saved_top_level(run_config(run_dir), "matmul_precision"))
    chosen = paths if checkpoints == "all" else paths[-1:]
    shares = [episodes // len(chosen) + (k < episodes % len(chosen)) for k in range(len(chosen))]
    records: list[EpisodeRecord] = []
    bar = tqdm(total=episodes, disable=not progress, unit="episode")
    torch_device = resolve_device(device)
    try:
        for k, (path, share) in enumerate(zip(chosen, shares, strict=True)):
            if share == 0:
                continue
            loaded = load_run(run_dir, torch_device, min(num_envs, share), seed + k, path)
            spec = loaded.env.spec
            try:
                records += _play(loaded, share, explore, random_fraction, seed + k, bar)
            finally:
                loaded.env.close()
    finally:
        bar.close()
    return records, spec


@torch.no_grad()
def _play(loaded, episodes: int, explore: bool, random_fraction: float, seed: int, bar):
    env, agent = loaded.env, loaded.agent
    to_agent_obs, to_agent_state = (lambda x: x), (lambda x: x)
    if isinstance(env, NormalizedEnv):  # record raw observations; the agent sees standardised
        to_agent_obs, to_agent_state = env.normalizer.obs, env.normalizer.state
        env = env.inner
    spec = env.spec
    low, high = spec.act_low.to(env.device), spec.act_high.to(env.device)
    generator = torch.Generator(device=env.device).manual_seed(seed)
    torch.manual_seed(seed)
    obs, state = env.reset(seed=seed)
    host_obs, host_state = obs.cpu().numpy(), state.cpu().numpy()
    current = [_Episode(host_obs[e], host_state[e]) for e in range(env.num_envs)]
    done_records: list[EpisodeRecord] = []
    while len(done_records) < episodes:
        agent_state = to_agent_state(state) if explore else None
        actions = agent.act(to_agent_obs(obs), explore=explore, state=agent_state)
        if random_fraction > 0:
            random = env.random_actions(generator)
            swap = torch.rand(env.num_envs, device=env.device, generator=generator)
            actions = torch.where((swap < random_fraction)[:, None, None], random, actions)
        result = env.step(actions)
        # one host copy per step; the per-env bookkeeping below indexes numpy arrays
        env_actions = (low + (actions + 1.0) * 0.5 * (high - low)).cpu().numpy()
        reward, next_obs = result.reward.cpu().numpy(), result.next_obs.cpu().numpy()
        next_state = result.next_state.cpu().numpy()
        host_obs, host_state = result.obs.cpu().numpy(), result.state.cpu().numpy()
        ended = (result.terminated | result.truncated).tolist()
        terminated = result.terminated.tolist()
        for e, episode in enumerate(current):
            episode.add(env_actions[e], reward[e], next_obs[e], next_state[e])
            if ended[e]:
                if len(done_records) < episodes:
                    done_records.append(episode.record(terminated[e]))
                    bar.update(1)
                current[e] = _Episode(host_obs[e], host_state[e])
        obs, state = result.obs, result.state
    return done_records


class _Episode:
    """One env copy's episode in progress, as host arrays."""

    def __init__(self, obs: np.ndarray, state: np.ndarray):
        self.obs, self.state = [obs], [state]
        self.actions: list[np.ndarray] = []
        self.rewards: list[np.ndarray] = []

    def add(self, action, reward, next_obs, next_state) -> None:
        self.actions.append(action)
        self.rewards.append(reward)
        self.obs.append(next_obs)
        self.state.append(next_state)

    def record(self, terminated: bool) -> EpisodeRecord:
        return EpisodeRecord(
            np.stack(self.obs),
            np.stack(self.state),
            np.stack(self.actions),
            np.stack(self.rewards),
            terminated,
        )


def collect(values: dict) -> tuple[str, list[EpisodeRecord]]:
    """Collect and write the dataset the parsed command line asks for; returns its id."""
    run_dir = Path(values["run_dir"])
    cfg = run_config(run_dir)
    out = values["out"] or f"marl_diff/{cfg.scenario.name}-{cfg.agent.name}-v0"
    records, spec = collect_episodes(
        run_dir,
        values["episodes"],
        explore=values["explore"],
        checkpoints=values["checkpoints"],
        random_fraction=values["random_fraction"],
        num_envs=values["num_envs"],
        seed=values["seed"],
        device=values["device"],
    )
    scenario = OmegaConf.to_container(cfg.scenario, resolve=True)
    gym_id = scenario.get("env_id") if scenario.get("backend") == "gymnasium" else None
    ref = REF_SCORES.get(str(gym_id).split("-v")[0]) if gym_id else None
    write_minari(
        out,
        records,
        spec,
        gym_id=gym_id,
        algorithm=f"marl_diff {cfg.agent.name}",
        description=(
            f"{len(records)} episodes of the run {run_dir.name} ({cfg.scenario.name} / "
            f"{cfg.agent.name}); checkpoints={values['checkpoints']}, "
            f"explore={values['explore']}, random_fraction={values['random_fraction']}"
        ),
        ref_scores=ref,
    )
    return out, records


@exit_cleanly_on_user_error
def main(argv: list[str] | None = None) -> None:
    values = parse(sys.argv[1:] if argv is None else argv)
    out, records = collect(values)
    returns = [float(r.rewards.mean(-1).sum()) for r in records]
    steps = sum(r.actions.shape[0] for r in records)
    print(
        f"wrote {len(records)} episodes ({steps} transitions, return {np.mean(returns):.2f} "
        f"+- {np.std(returns):.2f}) as Minari dataset '{out}'; train on it with "
        f"runner=offline runner.dataset={out}"
    )


if __name__ == "__main__":
    main()
