"""Offline datasets: reading Minari datasets (by id or folder) and OG-MARL-layout `.npz` arrays
into the replay layout (`Batch`), observation normalisation, and writing Minari datasets.

Minari has no multi-agent format, so marl_diff stores an N > 1 episode as a standard Minari
episode with Dict spaces keyed by agent name:
- `observations[agent]` [T+1, obs_dim_i] and `actions[agent]` [T, act_dim_i], in the env's own
  action units (the Dict action space holds each agent's bounds);
- `rewards` [T] the team reward (the mean of the agents' rewards, what the critic learns);
- `infos["state"]` [T+1, S] the global state, `infos["agent_rewards"]` [T+1, N] each agent's
  reward for the step that led there (row 0, the reset, is zero).
An N = 1 episode is a plain Minari episode (Box spaces) plus `infos["state"]`, so standard
datasets (e.g. `mujoco/hopper/medium-v0`, which have no state) load too: their state is the
observation, the single-agent convention of `envs/gymnasium.py`.

OG-MARL layout (`.npz`, as converted from its Flashbax vaults): `observations` [B, T, N, O],
`actions` [B, T, N, A] (env units), `rewards`, `terminals`, `truncations` [B, T, N] and
`infos.state` (or `state`) [B, T, S]; each of the B rows is a stream of consecutive steps whose
episodes follow one another. A step's successor is the next step of its row; steps whose
episode was truncated there, and each row's last step, have no stored successor and are
dropped (a terminal step keeps its own observation as the unused successor).
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from marl_diff.buffer import TRANSITION_FIELDS, Batch, ReplayBuffer
from marl_diff.envs.base import BatchedMultiAgentEnv, EnvSpec, StepResult
from marl_diff.errors import BackendMissing, ConfigError, MarlDiffError

MINARI_ID = re.compile(r"^[\w.-]+(/[\w.-]+)*-v\d+$")
# D4RL's normalisation (random and expert returns) by Gymnasium env name, for datasets written
# here from the MuJoCo tasks (environments.md): `minari.get_normalized_score` then works.
REF_SCORES = {
    "Hopper": (-20.272305, 3234.3),
    "HalfCheetah": (-280.178953, 12135.0),
    "Walker2d": (1.629008, 4592.3),
    "Ant": (-325.6, 3879.7),
}


@dataclass
class Transitions:
    """A dataset in the replay layout, on the CPU, with the facts an offline run reports."""

    batch: Batch
    episodes: int
    episode_returns: np.ndarray  # team return of every complete episode
    ref_scores: tuple[float, float] | None  # (random, expert) returns when the dataset has them

    def __len__(self) -> int:
        return self.batch.obs.shape[0]

    def to_buffer(self, spec: EnvSpec, device: torch.device) -> ReplayBuffer:
        """A replay buffer holding exactly these transitions (offline runs sample from it)."""
        buffer = ReplayBuffer(len(self), spec, device)
        buffer.add(self.batch.map(lambda field: field.to(device)))
        return buffer


def _minari():
    try:
        import minari
    except ImportError:
        raise BackendMissing(
            "offline datasets need minari. Install it with: pip install 'marl_diff[offline]'"
        ) from None
    return minari


def store_root() -> Path:
    """The local Minari store (MINARI_DATASETS_PATH, else ~/.minari/datasets)."""
    root = os.environ.get("MINARI_DATASETS_PATH")
    return Path(root) if root else Path.home() / ".minari" / "datasets"


def load_transitions(source: str, spec: EnvSpec) -> Transitions:
    """`source`: an `.npz` file (OG-MARL layout), a Minari dataset folder, or a Minari id
    (local store first, then `minari.load_dataset(id, download=True)`)."""
    if not source:
        raise ConfigError(
            "runner.dataset is required: a Minari id (e.g. mujoco/hopper/medium-v0), a Minari "
            "dataset folder, or an .npz file in the OG-MARL layout"
        )
    path = Path(source)
    if path.suffix == ".npz":
        if not path.is_file():
            raise MarlDiffError(f"dataset file '{path}' does not exist")
        return _from_npz(path, spec)
    if path.is_dir():
        return _from_minari(_open_minari_folder(path), spec)
    if not MINARI_ID.match(source):
        raise ConfigError(
            f"runner.dataset '{source}' is neither an existing folder, an .npz file nor a Minari "
            "id (namespace/name-v0)"
        )
    return _from_minari(_open_minari_id(source), spec)


def _open_minari_folder(path: Path):
    minari = _minari()
    data = path / "data" if (path / "data").is_dir() else path
    try:
        return minari.MinariDataset(data)
    except Exception as err:  # not a dataset folder: say so, with Minari's reason
        raise MarlDiffError(f"'{path}' is not a Minari dataset folder: {err}") from None


def _open_minari_id(dataset_id: str):
    minari = _minari()
    if (store_root() / dataset_id).is_dir():
        return minari.load_dataset(dataset_id)
    try:
        return minari.load_dataset(dataset_id, download=True)
    except Exception as err:  # no network, unknown remote id, missing [hf] extra
        raise MarlDiffError(
            f"Minari dataset '{dataset_id}' is not in the local store ({store_root()}) and could "
            f"not be downloaded ({str(err).splitlines()[0] if str(err) else type(err).__name__}). "
            f"On a machine with network run `minari download {dataset_id}` and copy the folder "
            "into the store (MINARI_DATASETS_PATH), or write one with `python -m "
            "marl_diff.collect`."
        ) from None


def _box_bounds(space) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(space.low, np.float64), np.asarray(space.high, np.float64)


def _to_unit(actions: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Env-unit actions -> [-1, 1] (the agents' convention); unbounded entries pass as is."""
    finite = np.isfinite(low) & np.isfinite(high) & (high > low)
    scaled = 2.0 * (actions - low) / np.where(finite, high - low, 1.0) - 1.0
    return np.clip(np.where(finite, scaled, actions), -1.0, 1.0)


def _check(what: str, found: list[int] | int, expected: list[int] | int) -> None:
    if found != expected:
        raise MarlDiffError(
            f"dataset does not fit the scenario: its {what} {found}, the scenario's {expected}"
        )


def _from_minari(dataset, spec: EnvSpec) -> Transitions:
    from gymnasium import spaces

    obs_space, act_space = dataset.observation_space, dataset.action_space
    multi = isinstance(obs_space, spaces.Dict)
    names = list(spec.agent_names)
    if multi:
        _check("agents are", sorted(obs_space.keys()), sorted(names))  # Dict sorts its keys
        _check("observation sizes are", [obs_space[a].shape[0] for a in names], list(spec.obs_dims))
        _check("action sizes are", [act_space[a].shape[0] for a in names], list(spec.act_dims))
        bounds = [_box_bounds(act_space[a]) for a in names]
    else:
        _check("agent count is", 1, spec.n_agents)
        _check("observation size is", obs_space.shape[0], spec.obs_dims[0])
        _check("action size is", act_space.shape[0], spec.act_dims[0])
        bounds = [_box_bounds(act_space)]
    fields: dict[str, list[np.ndarray]] = {k: [] for k in TRANSITION_FIELDS}
    returns = []
    for episode in dataset.iterate_episodes():
        obs = [episode.observations[a] for a in names] if multi else [episode.observations]
        act = [episode.actions[a] for a in names] if multi else [episode.actions]
        steps = len(episode.rewards)
        obs = np.stack([_pad(o, spec.obs_dim) for o in obs], 1)  # [T+1, N, D]
        act = np.stack(
            [
                _pad(_to_unit(a, lo, hi), spec.act_dim)
                for a, (lo, hi) in zip(act, bounds, strict=True)
            ],
            1,
        )
        infos = episode.infos or {}
        state = np.asarray(infos["state"]) if "state" in infos else obs.reshape(steps + 1, -1)
        _check("state size is", state.shape[-1], spec.state_dim)
        if "agent_rewards" in infos:
            reward = np.asarray(infos["agent_rewards"])[1:]
        else:
            reward = np.repeat(np.asarray(episode.rewards)[:, None], spec.n_agents, 1)
        fields["obs"].append(obs[:-1])
        fields["state"].append(state[:-1])
        fields["action"].append(act)
        fields["reward"].append(reward)
        fields["next_obs"].append(obs[1:])
        fields["next_state"].append(state[1:])
        fields["terminated"].append(np.asarray(episode.terminations, np.float64))
        returns.append(float(np.sum(episode.rewards)))
    if not returns:
        raise MarlDiffError("the dataset holds no episodes")
    metadata = dataset.storage.metadata
    ref = None
    if metadata.get("ref_min_score") is not None:
        ref = (float(metadata["ref_min_score"]), float(metadata["ref_max_score"]))
    return Transitions(_batch(fields), len(returns), np.asarray(returns), ref)


def _pad(x: np.ndarray, width: int) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return np.pad(x, ((0, 0), (0, width - x.shape[-1]))) if x.shape[-1] < width else x


def _batch(fields: dict[str, list[np.ndarray]]) -> Batch:
    return Batch(
        *(
            torch.as_tensor(np.concatenate(fields[name]), dtype=torch.float32)
            for name in TRANSITION_FIELDS
        )
    )


def _from_npz(path: Path, spec: EnvSpec) -> Transitions:
    data = np.load(path)
    required = ("observations", "actions", "rewards", "terminals", "truncations")
    missing = [k for k in required if k not in data]
    state_key = next((k for k in ("infos.state", "state") if k in data), None)
    if missing or state_key is None:
        raise MarlDiffError(
            f"'{path}' is not in the OG-MARL layout: missing {missing or ['infos.state']} (needs "
            "observations [B, T, N, O], actions [B, T, N, A], rewards, terminals, truncations "
            "[B, T, N] and infos.state [B, T, S])"
        )
    obs, act = data["observations"].astype(np.float64), data["actions"].astype(np.float64)
    state = data[state_key].astype(np.float64)
    _check("agent count is", obs.shape[2], spec.n_agents)
    _check("observation size is", obs.shape[3], spec.obs_dim)
    _check("action size is", act.shape[3], spec.act_dim)
    _check("state size is", state.shape[-1], spec.state_dim)
    low, high = spec.act_low.double().numpy(), spec.act_high.double().numpy()
    act = _to_unit(act, low, high) * spec.act_mask().numpy()
    terminal = data["terminals"].astype(bool).any(-1)  # [B, T]
    truncated = data["truncations"].astype(bool).any(-1)
    keep = ~truncated
    keep[:, -1] &= terminal[:, -1]  # a row's last step has a successor only if it is terminal
    nxt = np.concatenate([obs[:, 1:], obs[:, -1:]], 1)
    nxt_state = np.concatenate([state[:, 1:], state[:, -1:]], 1)
    nxt = np.where(terminal[..., None, None], obs, nxt)
    nxt_state = np.where(terminal[..., None], state, nxt_state)
    fields = {
        "obs": [obs[keep]],
        "state": [state[keep]],
        "action": [act[keep]],
        "reward": [data["rewards"].astype(np.float64)[keep]],
        "next_obs": [nxt[keep]],
        "next_state": [nxt_state[keep]],
        "terminated": [terminal[keep].astype(np.float64)],
    }
    team = data["rewards"].astype(np.float64).mean(-1)
    returns, running = [], np.zeros(team.shape[0])
    for t in range(team.shape[1]):
        running += team[:, t]
        ended = terminal[:, t] | truncated[:, t]
        returns.extend(running[ended].tolist())
        running[ended] = 0.0
    return Transitions(_batch(fields), len(returns), np.asarray(returns), None)


# ------------------------------------------------------------------ observation normalisation
class ObservationNormalizer:
    """Per-feature standardisation of observations and global state by dataset statistics.

    The agent then trains and acts on standardised inputs; the statistics are saved with the
    checkpoint (`state_dict`) so evaluation and `collect` wrap the env the same way.
    """

    def __init__(self, obs_mean, obs_std, state_mean, state_std):
        self.obs_mean, self.obs_std = obs_mean, obs_std
        self.state_mean, self.state_std = state_mean, state_std

    @classmethod
    def fit(cls, batch: Batch, obs_mask: torch.Tensor) -> ObservationNormalizer:
        def stats(x: torch.Tensor):
            return x.mean(0), x.std(0).clamp_min(1e-3)

        obs_mean, obs_std = stats(batch.obs)
        obs_mean = obs_mean * obs_mask  # padded entries stay exactly zero
        obs_std = torch.where(obs_mask, obs_std, torch.ones_like(obs_std))
        return cls(obs_mean, obs_std, *stats(batch.state))

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.cpu() for k, v in vars(self).items()}

    @classmethod
    def from_state_dict(cls, state: dict, device: torch.device) -> ObservationNormalizer:
        return cls(
            *(state[k].to(device) for k in ("obs_mean", "obs_std", "state_mean", "state_std"))
        )

    def obs(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.obs_mean) / self.obs_std

    def state(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.state_mean) / self.state_std

    def batch(self, batch: Batch) -> Batch:
        return batch._replace(
            obs=self.obs(batch.obs),
            next_obs=self.obs(batch.next_obs),
            state=self.state(batch.state),
            next_state=self.state(batch.next_state),
        )


class NormalizedEnv(BatchedMultiAgentEnv):
    """An env whose observations and states come standardised by an `ObservationNormalizer`."""

    def __init__(self, env: BatchedMultiAgentEnv, normalizer: ObservationNormalizer):
        self.inner, self.normalizer = env, normalizer
        self.spec, self.num_envs, self.device = env.spec, env.num_envs, env.device
        self.single_instance = env.single_instance

    def reset(self, seed: int | None = None):
        obs, state = self.inner.reset(seed=seed)
        return self.normalizer.obs(obs), self.normalizer.state(state)

    def step(self, actions: torch.Tensor) -> StepResult:
        result = self.inner.step(actions)
        n = self.normalizer
        return result._replace(
            obs=n.obs(result.obs),
            state=n.state(result.state),
            next_obs=n.obs(result.next_obs),
            next_state=n.state(result.next_state),
        )

    def random_actions(self, generator=None):
        return self.inner.random_actions(generator)

    def close(self) -> None:
        self.inner.close()


# ------------------------------------------------------------------ writing
@dataclass
class EpisodeRecord:
    """One finished episode in env units: obs [T+1, N, D], state [T+1, S], actions [T, N, A],
    rewards [T, N], terminated / truncated flags of its last step."""

    obs: np.ndarray
    state: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    terminated: bool


def write_minari(
    dataset_id: str,
    episodes: list[EpisodeRecord],
    spec: EnvSpec,
    *,
    gym_id: str | None,
    algorithm: str,
    description: str,
    ref_scores: tuple[float, float] | None,
):
    """Write `episodes` as a Minari dataset `dataset_id` in the local store (layout in the module
    docstring). `gym_id` names the Gymnasium env of an N = 1 scenario so Minari records it."""
    minari = _minari()
    from gymnasium import spaces
    from minari.data_collector import EpisodeBuffer

    if not MINARI_ID.match(dataset_id):
        raise ConfigError(
            f"out must be a Minari id such as local/pendulum-medium-v0, not '{dataset_id}'"
        )
    if (store_root() / dataset_id).exists():
        raise MarlDiffError(
            f"dataset '{dataset_id}' already exists in {store_root()}; choose another out= (an "
            "existing dataset is never overwritten)"
        )
    names = list(spec.agent_names)
    low, high = spec.act_low.numpy(), spec.act_high.numpy()

    def box(size: int, lo=-np.inf, hi=np.inf):
        return spaces.Box(lo, hi, (size,), np.float32)

    multi = spec.n_agents > 1
    if multi:
        obs_space = spaces.Dict({a: box(d) for a, d in zip(names, spec.obs_dims, strict=True)})
        act_space = spaces.Dict(
            {
                a: box(d, low[i, :d], high[i, :d])
                for i, (a, d) in enumerate(zip(names, spec.act_dims, strict=True))
            }
        )
    else:
        obs_space = box(spec.obs_dims[0])
        act_space = box(spec.act_dims[0], low[0, : spec.act_dims[0]], high[0, : spec.act_dims[0]])
    buffers = []
    for k, ep in enumerate(episodes):
        steps = ep.actions.shape[0]
        per_obs = {
            a: ep.obs[:, i, :d].astype(np.float32)
            for i, (a, d) in enumerate(zip(names, spec.obs_dims, strict=True))
        }
        per_act = {
            a: ep.actions[:, i, :d].astype(np.float32)
            for i, (a, d) in enumerate(zip(names, spec.act_dims, strict=True))
        }
        agent_rewards = np.concatenate([np.zeros((1, spec.n_agents)), ep.rewards], 0)
        terminations = [False] * steps
        truncations = [False] * steps
        (terminations if ep.terminated else truncations)[-1] = True
        buffers.append(
            EpisodeBuffer(
                id=k,
                observations=per_obs if multi else per_obs[names[0]],
                actions=per_act if multi else per_act[names[0]],
                rewards=ep.rewards.mean(-1).tolist(),
                terminations=terminations,
                truncations=truncations,
                infos={"state": ep.state.astype(np.float32), "agent_rewards": agent_rewards},
            )
        )
    ref_min, ref_max = ref_scores if ref_scores else (None, None)
    with warnings.catch_warnings():  # Minari's advice on author e-mail and eval env
        warnings.simplefilter("ignore", UserWarning)
        return minari.create_dataset_from_buffers(
            dataset_id,
            buffers,
            env=None if multi else gym_id,
            observation_space=obs_space,
            action_space=act_space,
            algorithm_name=algorithm,
            author="marl_diff",
            description=description,
            ref_min_score=ref_min,
            ref_max_score=ref_max,
            data_format="hdf5",
        )
