"""Specialist-to-generalist distillation across environments (the distillation card in
../shared/reference/algorithms.md): few paired samples, many unlabeled states, one
task-conditioned generalist diffusion policy.

`python -m marl_diff.distill tasks=[RUN_DIR,...] paired=K unlabeled=U [run_dir=DIR] [key=value ...]`
`python -m marl_diff.distill study=NAME [key=value ...]`: the catalog entry
`distillations/NAME.yaml` gives the tasks and settings, the command line overrides them.

Each task is one of (`TaskEntry`; a plain string is a run folder):
- a trained run folder, `RUN_DIR` or `{run: RUN_DIR}`: its scenario is the task, its policy the
  expert, whose evaluation action labels `paired` states of its own rollouts (the scarce paired
  data); `unlabeled` more states of those rollouts are kept without labels. With
  `{run: RUN_DIR, dataset: SOURCE}` the unlabeled states are the dataset's observations instead.
- a scenario with a dataset, `{scenario: NAME, overrides: [scenario.KEY=VALUE], dataset: SOURCE}`
  (a Minari id or folder, or an OG-MARL .npz, as `runner.dataset`): the dataset's behaviour is
  the expert. `paired` of its transitions, drawn at random, are the paired samples, the
  observations of `unlabeled` others the unlabeled states, and its mean episode return is the
  expert's return in the normalisation.
Then, in one command, three rows:
- `specialists`: stage 1, a small diffusion policy per task fitted to its paired samples
  (denoising score matching), evaluated alone;
- `distilled`: stage 2, each specialist labels its task's unlabeled states (pseudo-samples,
  never the paired labels unless `with_paired=true`) and one larger generalist is fitted to all
  tasks' pseudo-samples, its loss a weighted sum of the per-task losses (`weights`, uniform by
  default);
- `paired_only`: the same generalist fitted to the paired samples alone (the baseline).
Each row is evaluated on every task; returns are normalised per task, random = 0, expert = 1.

The generalist is one diffusion policy whose "agents" are the slots (task, agent) of all tasks,
with shared parameters and a one-hot slot id (`share_parameters` of the stacked denoiser): so it
is conditioned on the task (and on which of the task's agents it plays), observations are
zero-padded to the largest task's and actions masked to each slot's own width, and agent i of
task k acts on its own observation and slot id only (decentralised execution is kept).

Where the unlabeled states come from (`unlabeled_from`): `expert` (default) its rollouts;
`generalist` the distilled generalist's own rollouts over `rounds` rounds (the first from the
expert's states), each labelled by the specialists and added to the data (on-policy correction
of the distribution shift the card's policy extension is about: the generalist visits states
the expert never did).

Writes a run folder: config.yaml, TensorBoard and metrics.jsonl (per-task losses), checkpoints
(specialists and generalists), eval.json (every row on every task) and eval_<task>.json.
Restartable: each finished stage (the collected data, the specialists, each generalist) is saved
in `stages/` with the update count and random state at its end, so the same command on the same
`run_dir` resumes after the last finished stage, and gives what an uninterrupted run gives; on a
finished run it prints the saved results. Other settings on an existing `run_dir` are refused.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from marl_diff import catalog, host_memory
from marl_diff.agents.diffusion_actor import DiffusionPolicyConfig, make_diffusion_policy
from marl_diff.checkpoint import atomic_save, load_file, save_checkpoint
from marl_diff.datasets import Transitions, load_transitions
from marl_diff.diffusion.policy import DiffusionPolicy
from marl_diff.envs import make_env
from marl_diff.envs.base import BatchedMultiAgentEnv, EnvSpec
from marl_diff.errors import (
    ConfigError,
    MarlDiffError,
    choices,
    exit_cleanly_on_user_error,
    unknown,
)
from marl_diff.experiment import LoadedRun, load_run
from marl_diff.logger import RunLogger
from marl_diff.run import compose, config_differences, resolve_device
from marl_diff.runners.evaluation import evaluate_episodes
from marl_diff.typed_config import to_dataclass

ROWS = ("distilled", "paired_only", "specialists")
SOURCES = ("expert", "generalist")
EXPERT_MODES = ("default", "sample")
# What a rerun on the same run_dir may change (the study's name too: its settings are compared).
RERUN_FREE_KEYS = ("run_dir", "device", "progress", "study", "host_memory")


@dataclass
class TaskEntry:
    """One task of `tasks`: a trained run (`run`), optionally with a dataset of unlabeled states,
    or a catalog scenario (`scenario`, its `overrides`) with the dataset that is its expert."""

    run: str | None = None
    scenario: str | None = None
    overrides: list[str] = field(default_factory=list)
    dataset: str | None = None


@dataclass
class DistillConfig:
    study: str = ""  # a catalog entry (distillations/NAME.yaml) the settings start from
    tasks: list[Any] = field(default_factory=list)  # TaskEntry forms, one per task
    paired: int = 100  # paired (state, expert action) samples per task
    unlabeled: int = 10000  # unlabeled states per task
    unlabeled_from: str = "expert"  # expert | generalist (see the module docstring)
    # How a run's expert acts, to label states and in the evaluation that sets expert = 1:
    # "default" its evaluation action (a Gaussian's tanh(mean), a diffusion policy's sample);
    # "sample" one draw of its policy, a_i ~ pi_i(. | o_i), the card's reading (a diffusion model
    # learns a distribution from samples of it), which for a Gaussian expert is noisier. Noisy
    # labels are where distillation pays: fitted to few of them, a large generalist follows
    # their noise, which small specialists average out (results/distill/README.md, "Sampled
    # labels").
    expert_mode: str = "default"
    rounds: int = 3  # unlabeled_from=generalist: collection rounds, the first from the expert
    # Scalarisation: one weight per task (normalised to sum 1); empty = uniform. The card leaves
    # the choice open; uniform treats every task alike whatever its loss scale.
    weights: list[float] = field(default_factory=list)
    rows: list[str] = field(default_factory=lambda: list(ROWS))
    # The card's stage 2 trains on pseudo-samples only; true adds the paired samples too.
    with_paired: bool = False
    # Sizes are our choice (the paper's are not public): "lightweight" specialists, a generalist
    # with room for every task.
    specialist_hidden: list[int] = field(default_factory=lambda: [64, 64])
    specialist_updates: int = 2000
    generalist_hidden: list[int] = field(default_factory=lambda: [256, 256, 256])
    generalist_updates: int = 5000
    batch_size: int = 256  # samples per task in every update
    lr: float = 1e-3
    diffusion_steps: int = 10
    sample_steps: int = 0  # chain steps when acting or labelling: 0 = all
    num_envs: int = 16  # env copies per task, for collection and evaluation
    eval_episodes: int = 10
    log_every: int = 500
    seed: int = 0
    device: str = "auto"
    run_dir: str | None = None
    progress: bool = True
    host_memory: str = "reuse"  # what the allocator does with freed memory (marl_diff.host_memory)


@dataclass
class Task:
    """One environment, its expert (a trained run's agent, or a dataset's behaviour), the
    dataset it draws states from (if any) and its generalist slots."""

    name: str
    source: str  # where the expert comes from: a run folder or a dataset
    env: BatchedMultiAgentEnv
    slots: slice  # this task's agents' columns in the generalist
    loaded: LoadedRun | None = None  # a run task's expert
    dataset: Transitions | None = None

    @property
    def spec(self) -> EnvSpec:
        return self.env.spec

    def expert(self, mode: str) -> Callable[[torch.Tensor], torch.Tensor]:
        """The run's policy as it labels states and is evaluated (`expert_mode`)."""
        agent = self.loaded.agent
        if mode == "sample":
            return agent.sample_policy
        return lambda obs: agent.act(obs, explore=False)


@dataclass
class Samples:
    """States [M, N, O] of one task with their labels, actions [M, N, A]."""

    obs: torch.Tensor
    actions: torch.Tensor


# ------------------------------------------------------------------ the generalist's layout
def union_spec(tasks: list[Task]) -> EnvSpec:
    """All tasks' agents as the slots of one spec (padded to the largest observation and
    action); with shared parameters the slot id is the generalist's task conditioning."""
    specs = [task.spec for task in tasks]
    width = max(spec.act_dim for spec in specs)

    def bounds(attr: str, fill: float) -> torch.Tensor:
        parts = [F.pad(getattr(s, attr).cpu(), (0, width - s.act_dim), value=fill) for s in specs]
        return torch.cat(parts)

    return EnvSpec(
        agent_names=tuple(f"{t.name}/{a}" for t in tasks for a in t.spec.agent_names),
        obs_dims=tuple(d for s in specs for d in s.obs_dims),
        act_dims=tuple(d for s in specs for d in s.act_dims),
        state_dim=0,
        max_episode_steps=max(s.max_episode_steps for s in specs),
        act_low=bounds("act_low", -1.0),
        act_high=bounds("act_high", 1.0),
    )


def place(parts: list[tuple[slice, torch.Tensor]], slots: int, width: int) -> torch.Tensor:
    """Tensors [b, N_k, D_k] put in their slots of one [b, slots, width] tensor; every other
    entry (other tasks' slots, padding) is zero."""
    first = parts[0][1]
    full = first.new_zeros(first.shape[0], slots, width)
    for where, part in parts:
        full[:, where, : part.shape[-1]] = part
    return full


class TaskPolicy:
    """A policy seen from one task, as `evaluate_episodes` plays it: actions from observations
    (the same in its `default` and `sample` modes: every row here samples)."""

    def __init__(self, act: Callable[[torch.Tensor], torch.Tensor]):
        self.act_on = act

    @torch.no_grad()
    def act(self, obs: torch.Tensor, explore: bool = False, state=None) -> torch.Tensor:
        return self.act_on(obs)

    sample_policy = act


def generalist_view(
    policy: DiffusionPolicy, union: EnvSpec, task: Task, steps: int
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The generalist acting in `task`: observations [E, N_k, O_k] in the task's slots (all
    others zero), actions [E, N_k, A_k] read back from them."""

    def act(obs: torch.Tensor) -> torch.Tensor:
        full = place([(task.slots, obs)], union.n_agents, union.obs_dim)
        return policy.sample(full, steps=steps or None)[:, task.slots, : task.spec.act_dim]

    return act


def specialist_view(policy: DiffusionPolicy, steps: int) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda obs: policy.sample(obs, steps=steps or None)


# ------------------------------------------------------------------ data
@torch.no_grad()
def rollout_states(
    act: Callable[[torch.Tensor], torch.Tensor], env: BatchedMultiAgentEnv, count: int, seed: int
) -> Samples:
    """`count` states of the policy's own rollouts with the actions it took, in random order
    (consecutive states of one episode are near copies)."""
    obs, _ = env.reset(seed=seed)
    states, actions, held = [], [], 0
    while held < count:
        action = act(obs)
        states.append(obs)
        actions.append(action)
        held += obs.shape[0]
        obs = env.step(action).obs
    order = torch.randperm(held, device=obs.device)[:count]
    return Samples(torch.cat(states)[order], torch.cat(actions)[order])


@torch.no_grad()
def pseudo_label(
    specialist: Callable[[torch.Tensor], torch.Tensor], states: torch.Tensor
) -> Samples:
    """Pseudo-samples: the specialist's sampled actions for unlabeled states."""
    return Samples(states, torch.cat([specialist(chunk) for chunk in states.split(4096)]))


def join(a: Samples, b: Samples) -> Samples:
    return Samples(torch.cat([a.obs, b.obs]), torch.cat([a.actions, b.actions]))


# ------------------------------------------------------------------ the command
class Distillation:
    """Loads the tasks, collects their data and runs the rows (see the module docstring)."""

    def __init__(self, cfg: DistillConfig, run_dir: Path, device: torch.device):
        self.cfg, self.run_dir, self.device = cfg, run_dir, device
        self.tasks = load_tasks(cfg, device)
        self.union = union_spec(self.tasks)
        self.weights = task_weights(cfg, len(self.tasks)).to(device)
        run_dir.mkdir(parents=True, exist_ok=True)  # only once the tasks are known to load
        self.stages = run_dir / "stages"
        self.updates, self.window = 0, {}
        _drop_records_after(run_dir / "metrics.jsonl", self.resume_point())
        self.logger = RunLogger(run_dir, step_key="updates")
        generalist_rows = sum(row in cfg.rows for row in ("distilled", "paired_only"))
        needs_specialists = any(row in cfg.rows for row in ("distilled", "specialists"))
        total = generalist_rows * cfg.generalist_updates
        total += needs_specialists * len(self.tasks) * cfg.specialist_updates
        self.bar = tqdm(total=total, disable=not cfg.progress, unit="update")

    def close(self) -> None:
        self.bar.close()
        self.logger.close()
        for task in self.tasks:
            task.env.close()

    # -------------------------------------------------------------- stages
    def resume_point(self) -> int:
        """Updates done by the finished stages (0 for a new run)."""
        done = [load_file(path)["updates"] for path in self.stages.glob("*.pt")]
        return max(done, default=0)

    def stage(self, name: str, compute: Callable[[], dict]) -> dict:
        """A stage's payload (tensors only): loaded, with the update count and random state at
        its end, when an earlier run of this folder finished it; otherwise computed and saved."""
        path = self.stages / f"{name}.pt"
        if path.is_file():
            saved = load_file(path, self.device)
            self.updates = saved["updates"]
            torch.set_rng_state(saved["rng"].cpu())
            if "cuda_rng" in saved:
                torch.cuda.set_rng_state(saved["cuda_rng"].cpu(), self.device)
            self.bar.update(self.updates - self.bar.n)
            return saved["payload"]
        payload = compute()
        self.flush()
        state = {"updates": self.updates, "rng": torch.get_rng_state(), "payload": payload}
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        atomic_save(path, state)
        return payload

    # -------------------------------------------------------------- training
    def policy(self, spec: EnvSpec, hidden: list[int], share: bool) -> DiffusionPolicy:
        config = DiffusionPolicyConfig(
            actor_hidden=list(hidden),
            diffusion_steps=self.cfg.diffusion_steps,
            sample_steps=self.cfg.sample_steps,
            share_parameters=share,
        )
        return make_diffusion_policy(config, spec).to(self.device)

    def restore(
        self, spec: EnvSpec, hidden: list[int], state: dict, share: bool = False
    ) -> DiffusionPolicy:
        """A fitted policy from its saved state, for acting."""
        policy = self.policy(spec, hidden, share)
        policy.load_state_dict(state)
        return policy.eval()

    def fit(
        self,
        policy: DiffusionPolicy,
        optimizer: torch.optim.Optimizer,
        data: list[Samples],
        updates: int,
        tag: str,
    ) -> None:
        """Denoising score matching on labelled samples: one task's (a specialist, `data` of one
        task) or all tasks' (the generalist: `batch_size` samples of every task per update, each
        in its slots, minimising sum_k weights_k L_k, L_k the task's mean loss per agent)."""
        union, generalist = self.union, policy.n_agents == self.union.n_agents
        if generalist:
            groups, weights = [t.slots for t in self.tasks], self.weights
            names = [t.name for t in self.tasks]
        else:
            groups, names, weights = [slice(None)], [tag.split("/")[-1]], self.weights.new_ones(1)
        for _ in range(updates):
            size = (self.cfg.batch_size,)
            picks = [torch.randint(len(d.obs), size, device=self.device) for d in data]
            obs = [d.obs[p] for d, p in zip(data, picks, strict=True)]
            actions = [d.actions[p] for d, p in zip(data, picks, strict=True)]
            if generalist:
                obs = place(list(zip(groups, obs, strict=True)), union.n_agents, union.obs_dim)
                actions = place(
                    list(zip(groups, actions, strict=True)), union.n_agents, union.act_dim
                )
            else:
                obs, actions = obs[0], actions[0]
            per_agent = policy.dsm_loss(actions, obs).mean(0)
            losses = torch.stack([per_agent[g].mean() for g in groups])
            loss = (weights * losses).sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            self.record({f"{tag}/loss/{n}": v for n, v in zip(names, losses.detach(), strict=True)})

    def record(self, metrics: dict[str, torch.Tensor]) -> None:
        for key, value in metrics.items():
            total, count = self.window.get(key, (0.0, 0))
            self.window[key] = (total + value, count + 1)
        self.updates += 1
        self.bar.update(1)
        if self.updates % self.cfg.log_every == 0:
            self.flush()

    def flush(self) -> None:
        if self.window:
            self.logger.log(self.updates, {k: float(s) / n for k, (s, n) in self.window.items()})
        self.window = {}

    def fit_specialists(self, paired: list[Samples]) -> list[DiffusionPolicy]:
        cfg, specialists = self.cfg, []
        for task, data in zip(self.tasks, paired, strict=True):
            policy = self.policy(task.spec, cfg.specialist_hidden, share=False)
            optimizer = torch.optim.Adam(policy.parameters(), lr=cfg.lr)
            self.fit(policy, optimizer, [data], cfg.specialist_updates, f"specialist/{task.name}")
            specialists.append(policy.eval())
        return specialists

    def fit_generalist(self, rounds: list[Callable[[DiffusionPolicy], list[Samples]]], tag: str):
        """A generalist fitted over `rounds`: each gives more data (seeing the generalist so
        far) and is followed by its share of the updates."""
        cfg = self.cfg
        policy = self.policy(self.union, cfg.generalist_hidden, share=True)
        optimizer = torch.optim.Adam(policy.parameters(), lr=cfg.lr)
        data: list[Samples] | None = None
        for r, more in enumerate(rounds):
            new = more(policy.eval())
            data = new if data is None else [join(a, b) for a, b in zip(data, new, strict=True)]
            share = cfg.generalist_updates // len(rounds)
            share += cfg.generalist_updates % len(rounds) if r == len(rounds) - 1 else 0
            self.fit(policy.train(), optimizer, data, share, tag)
        return policy.eval()

    # -------------------------------------------------------------- the rows
    def collect(self) -> dict:
        """Per task, `paired` states with the expert's labels and `unlabeled` states without
        (see the module docstring for where each comes from)."""
        cfg, out = self.cfg, {"paired_obs": [], "paired_actions": [], "unlabeled": []}
        for task in self.tasks:
            if task.loaded is None:  # the dataset is the expert
                data = task.dataset.batch
                order = torch.randperm(len(task.dataset))
                paired = Samples(data.obs[order[: cfg.paired]], data.action[order[: cfg.paired]])
                unlabeled = data.obs[order[cfg.paired : cfg.paired + cfg.unlabeled]]
            else:
                count = cfg.paired + (cfg.unlabeled if task.dataset is None else 0)
                states = rollout_states(task.expert(cfg.expert_mode), task.env, count, cfg.seed)
                paired = Samples(states.obs[: cfg.paired], states.actions[: cfg.paired])
                unlabeled = states.obs[cfg.paired :]  # their expert labels are dropped here
                if task.dataset is not None:
                    order = torch.randperm(len(task.dataset))[: cfg.unlabeled]
                    unlabeled = task.dataset.batch.obs[order]
            out["paired_obs"].append(paired.obs.to(self.device))
            out["paired_actions"].append(paired.actions.to(self.device))
            out["unlabeled"].append(unlabeled.to(self.device))
        return out

    def run(self) -> dict:
        cfg, tasks = self.cfg, self.tasks
        data = self.stage("data", self.collect)
        paired = [Samples(*p) for p in zip(data["paired_obs"], data["paired_actions"], strict=True)]
        unlabeled = data["unlabeled"]
        rows: dict[str, list[Callable]] = {}
        states: dict[str, dict] = {}

        def generalist_row(name: str, rounds: list[Callable]) -> None:
            saved = self.stage(name, lambda: self.fit_generalist(rounds, name).state_dict())
            generalist = self.restore(self.union, cfg.generalist_hidden, saved, share=True)
            rows[name] = [
                generalist_view(generalist, self.union, t, cfg.sample_steps) for t in tasks
            ]
            states[name] = saved

        if "distilled" in cfg.rows or "specialists" in cfg.rows:
            saved = self.stage(
                "specialists",
                lambda: {"states": [s.state_dict() for s in self.fit_specialists(paired)]},
            )
            views = [
                specialist_view(
                    self.restore(t.spec, cfg.specialist_hidden, state), cfg.sample_steps
                )
                for t, state in zip(tasks, saved["states"], strict=True)
            ]
            states["specialists"] = {
                t.name: state for t, state in zip(tasks, saved["states"], strict=True)
            }
            if "specialists" in cfg.rows:
                rows["specialists"] = views
            if "distilled" in cfg.rows:
                generalist_row("distilled", self.distillation_rounds(views, unlabeled, paired))
        if "paired_only" in cfg.rows:
            generalist_row("paired_only", [lambda _: paired])
        self.flush()
        save_checkpoint(
            self.run_dir / "checkpoints",
            self.updates,
            {"policies": states, "union": self.union.summary()},
            keep=1,
        )
        return self.evaluate(rows)

    def distillation_rounds(
        self, specialists: list[Callable], unlabeled: list[torch.Tensor], paired: list[Samples]
    ) -> list[Callable[[DiffusionPolicy], list[Samples]]]:
        """Where the distilled generalist's data comes from, round by round: the experts'
        states labelled by the specialists; with `unlabeled_from=generalist`, a first round of
        those and then the generalist's own states, each labelled by the specialists."""
        cfg = self.cfg
        rounds = 1 if cfg.unlabeled_from == "expert" else cfg.rounds
        per_round = cfg.unlabeled // rounds

        def expert_round(_: DiffusionPolicy) -> list[Samples]:
            labelled = [
                pseudo_label(s, u[:per_round]) for s, u in zip(specialists, unlabeled, strict=True)
            ]
            if cfg.with_paired:
                return [join(mine, p) for mine, p in zip(labelled, paired, strict=True)]
            return labelled

        def own_round(generalist: DiffusionPolicy) -> list[Samples]:
            return [
                pseudo_label(
                    s,
                    rollout_states(
                        generalist_view(generalist, self.union, t, cfg.sample_steps),
                        t.env,
                        per_round,
                        cfg.seed + 1,
                    ).obs,
                )
                for s, t in zip(specialists, self.tasks, strict=True)
            ]

        return [expert_round] + [own_round] * (rounds - 1)

    # -------------------------------------------------------------- evaluation
    def evaluate(self, rows: dict[str, list[Callable]]) -> dict:
        """Every row on every task, on the same seeded episodes as the expert and a uniform
        random policy, which set each task's normalised scale (random 0, expert 1)."""
        cfg, report = self.cfg, {"tasks": {}, "rows": {}}
        for k, task in enumerate(self.tasks):

            def play(act, env=task.env) -> float:
                result = evaluate_episodes(TaskPolicy(act), env, cfg.eval_episodes, cfg.seed + 1000)
                return result["mean_return"]

            if task.loaded is None:
                expert = float(task.dataset.episode_returns.mean())
            else:
                expert = play(task.expert(cfg.expert_mode))
            random = play(lambda obs, env=task.env: env.random_actions())
            scale = expert - random
            entry = {
                "expert_from": task.source,
                "expert": expert,
                "random": random,
                "rows": {},
            }
            for row, views in rows.items():
                value = play(views[k])
                entry["rows"][row] = {
                    "mean_return": value,
                    "normalized": (value - random) / scale if abs(scale) > 1e-8 else float("nan"),
                }
            report["tasks"][task.name] = entry
            (self.run_dir / f"eval_{task.name}.json").write_text(json.dumps(entry, indent=1))
        for row in rows:
            values = [e["rows"][row]["normalized"] for e in report["tasks"].values()]
            report["rows"][row] = sum(values) / len(values)
        (self.run_dir / "eval.json").write_text(json.dumps(report, indent=1))
        return report


# ------------------------------------------------------------------ set-up
def task_entries(cfg: DistillConfig) -> list[TaskEntry]:
    """`tasks` as TaskEntry, checked: a string is a run folder; a mapping names `run`, or a
    `scenario` with its `dataset`."""
    entries = []
    for k, item in enumerate(cfg.tasks):
        if isinstance(item, str):
            item = {"run": item}
        if not isinstance(item, dict):
            raise ConfigError(f"tasks[{k}] must be a run folder or a mapping, not {item!r}")
        entry = to_dataclass(item, TaskEntry, f"tasks[{k}]")
        if (entry.run is None) == (entry.scenario is None):
            raise ConfigError(
                f"tasks[{k}] needs exactly one of 'run' (a trained run folder) and 'scenario' "
                "(a catalog scenario, with the dataset that is its expert)"
            )
        if entry.scenario is not None and not entry.dataset:
            raise ConfigError(f"tasks[{k}]: scenario '{entry.scenario}' needs a dataset")
        bad = [o for o in entry.overrides if not o.startswith("scenario.")]
        if bad:
            raise ConfigError(f"tasks[{k}].overrides must be scenario.KEY=VALUE, not {bad}")
        entries.append(entry)
    return entries


def load_tasks(cfg: DistillConfig, device: torch.device) -> list[Task]:
    tasks: list[Task] = []
    start = 0
    try:
        for k, entry in enumerate(task_entries(cfg)):
            loaded, seed = None, cfg.seed + k
            if entry.run is not None:
                try:
                    loaded = load_run(Path(entry.run), device, cfg.num_envs, seed)
                except MarlDiffError as err:
                    raise MarlDiffError(
                        f"task '{entry.run}': {err}. A run task is the folder of a trained run, "
                        "relative to the folder the command runs in"
                    ) from None
                scenario, env, source = loaded.cfg.scenario, loaded.env, entry.run
            else:
                scenario = compose([f"scenario={entry.scenario}", *entry.overrides]).scenario
                env = make_env(
                    OmegaConf.to_container(scenario, resolve=True), cfg.num_envs, device, seed
                )
                source = entry.dataset
            name = task_name(scenario)
            if any(t.name == name for t in tasks):
                name = f"{name}_{k}"
            n = env.spec.n_agents
            tasks.append(Task(name, source, env, slice(start, start + n), loaded))
            start += n
            if entry.dataset:
                tasks[-1].dataset = task_dataset(entry.dataset, env.spec, cfg, entry.run is None)
    except Exception:
        for task in tasks:
            task.env.close()
        raise
    return tasks


def task_name(scenario: DictConfig) -> str:
    """A task's name in eval.json, the logs and the report: its catalog scenario's, except for
    an entry that wraps any environment of its library (its name is its backend's: gymnasium,
    pettingzoo, isaaclab), which is named after the environment it was given."""
    name = str(scenario.name)
    if name == scenario.get("backend"):
        given = scenario.get("env_id") or scenario.get("env") or scenario.get("task")
        if given:
            name = re.sub(r"[^A-Za-z0-9._-]+", "_", str(given))
    return name


def task_dataset(source: str, spec: EnvSpec, cfg: DistillConfig, is_expert: bool) -> Transitions:
    data = load_transitions(source, spec)
    if is_expert and len(data) <= cfg.paired:
        raise ConfigError(
            f"dataset '{source}' holds {len(data)} transitions: paired={cfg.paired} needs more, "
            "and unlabeled states besides"
        )
    if is_expert and data.episodes == 0:
        raise MarlDiffError(
            f"dataset '{source}' holds no complete episode, so it gives no expert return"
        )
    return data


def task_weights(cfg: DistillConfig, n_tasks: int) -> torch.Tensor:
    if not cfg.weights:
        return torch.full((n_tasks,), 1.0 / n_tasks)
    weights = torch.tensor(cfg.weights, dtype=torch.float32)
    if len(weights) != n_tasks or bool((weights < 0).any()) or float(weights.sum()) <= 0:
        raise ConfigError(
            f"weights must be {n_tasks} non-negative numbers, one per task, not {list(cfg.weights)}"
        )
    return weights / weights.sum()


def parse(args: list[str]) -> DistillConfig:
    try:
        node = OmegaConf.from_dotlist(args)
    except Exception as err:
        raise ConfigError(f"cannot parse the command line: {err}") from None
    if node.get("study"):
        study = catalog.load("distillation", str(node.study))
        node = OmegaConf.merge(study, node)
    cfg = to_dataclass(node, DistillConfig, "distill")
    if not cfg.tasks:
        raise ConfigError(
            "tasks=[RUN_DIR,...] is required: trained run folders (or scenarios with datasets), "
            "one per task"
        )
    task_entries(cfg)
    for key in ("paired", "unlabeled", "generalist_updates", "batch_size", "rounds"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"{key} must be >= 1, not {getattr(cfg, key)}")
    unknown_rows = [row for row in cfg.rows if row not in ROWS]
    if unknown_rows or not cfg.rows:
        raise ConfigError(f"unknown rows {unknown_rows}. Valid: {choices(ROWS)}")
    for key, valid in (
        ("unlabeled_from", SOURCES),
        ("expert_mode", EXPERT_MODES),
        ("host_memory", host_memory.MODES),
    ):
        if getattr(cfg, key) not in valid:
            raise unknown(key, getattr(cfg, key), valid)
    task_weights(cfg, len(cfg.tasks))
    return cfg


def _drop_records_after(path: Path, updates: int) -> None:
    """Keep the metrics records up to `updates` (a resumed run redoes what came after)."""
    if not path.is_file():
        return
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    kept = []
    for line in lines:
        try:
            if json.loads(line)["updates"] <= updates:
                kept.append(line)
        except (json.JSONDecodeError, KeyError):
            continue  # a line cut short by a kill
    if len(kept) != len(lines):
        path.write_text("".join(kept), encoding="utf-8")


@exit_cleanly_on_user_error
def main(argv: list[str] | None = None) -> None:
    cfg = parse(sys.argv[1:] if argv is None else argv)
    host_memory.configure(cfg.host_memory)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = Path(cfg.run_dir or f"results/runs/distill/{stamp}")
    asked = OmegaConf.structured(cfg)
    saved_config = run_dir / "config.yaml"
    if saved_config.is_file():
        # a setting added since that run was made counts as its default (the old behaviour)
        saved = OmegaConf.merge(OmegaConf.structured(DistillConfig), OmegaConf.load(saved_config))
        differences = config_differences(saved, asked, RERUN_FREE_KEYS)
        if differences:
            raise MarlDiffError(
                f"run_dir '{run_dir}' holds a distillation made with other settings "
                f"({'; '.join(differences)}); rerun with the same settings or choose another "
                "run_dir"
            )
    if (run_dir / "eval.json").is_file():
        report = json.loads((run_dir / "eval.json").read_text())
        print(f"run_dir '{run_dir}' holds this distillation, finished; its results:")
    else:
        device = resolve_device(cfg.device)
        torch.manual_seed(cfg.seed)
        distillation = Distillation(cfg, run_dir, device)
        try:
            # saved after the tasks loaded: a typo in `tasks` must not leave a config that
            # refuses the corrected command on the same run_dir
            OmegaConf.save(asked, saved_config)
            report = distillation.run()
        finally:
            distillation.close()
    for row, value in report["rows"].items():
        print(f"{row}: normalised return {value:.3f} (mean over {len(report['tasks'])} tasks)")
    print(f"results in {run_dir}")


if __name__ == "__main__":
    main()
