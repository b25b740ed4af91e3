"""Benchmarks whose tables go to `results/` with the command that made them.

`python -m marl_diff.bench rollout [scenario=vmas_navigation] [agent=gaussian] [num_envs=1024]
[steps=50] [repeats=3] [device=cpu] [out=results/rollout_throughput.md] [key=value ...]`

Measures, in one process and interleaved over the repeats (this machine is noisy):
- raw: the simulator's own batched stepping with its own random actions (VMAS directly; for
  other backends, the marl_diff backend with uniform random actions);
- env: the marl_diff backend with uniform random actions (wrapper overhead);
- runner: the training runner's collection step (policy forward, env step, replay insert,
  episode statistics) with the agent's exploring policy.
Extra `scenario.*` / `agent.*` overrides pass through to the config.

`python -m marl_diff.bench smax [map=3m] [num_envs=1024] [steps=20] [repeats=3] [agent=gaussian]
[out=results/smax_throughput.md]`: SMAX env-steps/s of jaxmarl's own jitted `lax.scan` rollout
(random available actions), of the marl_diff SMAX env (uniform random scores) and of the
runner's collection step with the agent's policy in the loop.

`python -m marl_diff.bench sampling [agents=1,2,4,8,16] [batches=64,1024] [steps=5,10,20]
[repeats=3] [device=cpu] [hidden=256,256,256] [obs_dim=16] [act_dim=4] [schedule=vp]
[out=results/sampling_speed.md]`

Time of one `DiffusionPolicy.sample()` call (ancestral DDPM, T denoising steps) for N agents
stacked in one policy vs a Python loop over N separate single-agent policies of the same sizes
(what per-agent modules would cost), interleaved over the repeats, median.

`python -m marl_diff.bench update [scenario=vmas_navigation] [agents=gaussian,ddpl]
[batch_size=256] [updates=5] [repeats=3] [device=cpu] [host_memory=reuse]
[matmul_precision=highest] [vary=adam_impl:for_loop,fused] [out=results/update_time.md]
[scenario.key=value | agent.key=value ...]`: milliseconds per gradient update of each agent on
random batches of the scenario's shapes, interleaved over the repeats, and each agent's ratio to
the first; `host_memory` and `matmul_precision` as in `marl_diff.run` (one per process:
switching it within a process distorted the timings, results/speed.md); `vary=KEY:V1,V2`
times each agent once per value of `agent.KEY` (e.g. `vary=compile_update:false,true`).

`python -m marl_diff.bench peer [agents=2,4] [methods=masac,mappo,gaussian,ddpl] ...`:
BenchMARL's MASAC and MAPPO in their own virtualenv against marl_diff agents on VMAS navigation
at the same settings (marl_diff/peer.py).
"""

from __future__ import annotations

import math
import os
import platform
import shlex
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from statistics import median

import torch
import yaml
from omegaconf import OmegaConf

from marl_diff import host_memory, precision
from marl_diff.errors import ConfigError, choices, exit_cleanly_on_user_error

ROLLOUT_SETTINGS = {
    "scenario": "vmas_navigation",
    "agent": "gaussian",
    "num_envs": "1024",
    "steps": "50",
    "repeats": "3",
    "device": "cpu",
    "out": "results/rollout_throughput.md",
}


def _split(
    args: list[str], settings: dict[str, str], passthrough_groups: tuple[str, ...] = ()
) -> tuple[dict[str, str], list[str]]:
    """Benchmark settings from KEY=VALUE args; `group.key=` args of `passthrough_groups` are
    returned apart, to be forwarded to the composed config."""
    values, passthrough = dict(settings), []
    for arg in args:
        key, sep, value = arg.partition("=")
        if sep and key in settings:
            values[key] = value
        elif sep and key.split(".")[0] in passthrough_groups and "." in key:
            passthrough.append(arg)
        else:
            valid = [f"{k}=" for k in settings] + [f"{g}.<key>=" for g in passthrough_groups]
            raise ConfigError(f"unknown argument '{arg}'. Valid: {choices(valid)}")
    return values, passthrough


# CPU flags that change what a float32 or bfloat16 matrix product costs (marl_diff.precision).
MATRIX_FLAGS = {"amx_bf16": "AMX-BF16", "avx512_bf16": "AVX512-BF16"}


def cpu_model(cpuinfo: str | None = None) -> str:
    """The CPU's model name and its bfloat16 matrix extensions, from /proc/cpuinfo where there is
    one: the project's machines change CPU type from day to day, and matrix products (most of an
    update) run at different speeds on each (results/speed.md)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return platform.processor() or "unknown CPU"
    fields = {}
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    name = fields.get("model name") or platform.processor() or "unknown CPU"
    flags = set(fields.get("flags", "").split())
    extensions = [label for flag, label in MATRIX_FLAGS.items() if flag in flags]
    return f"{name} ({', '.join(extensions)})" if extensions else name


def machine() -> str:
    """What a results table says about the machine that made it."""
    return (
        f"{platform.machine()}, {cpu_model()}, {os.cpu_count()} CPU cores, "
        f"torch {torch.__version__}"
    )


def agent_catalogs(names: list[str], overrides: list[str]) -> dict:
    """Each named agent's catalog settings, after checking the `agent.*` overrides: benchmarks
    apply one to every agent that has the key, so a key that none has (a typo) is an error,
    not an override that silently does nothing."""
    from marl_diff import catalog

    catalogs = {name: catalog.load("agent", name) for name in names}
    for arg in overrides:
        key = arg.partition("=")[0]
        if key.startswith("agent.") and not any(key[6:] in keys for keys in catalogs.values()):
            known = sorted(set().union(*(set(keys) for keys in catalogs.values())))
            raise ConfigError(
                f"unknown key '{key}': none of the agents ({', '.join(names)}) has it. "
                f"Valid keys: {choices(known)}"
            )
    return catalogs


def _header(title: str, benchmark: str, args: list[str], device: torch.device, how: str) -> list:
    command = f"python -m marl_diff.bench {benchmark} " + " ".join(shlex.quote(a) for a in args)
    where = str(device)
    if device.type == "cuda":
        where += f" ({torch.cuda.get_device_name(device)})"
    return [
        f"# {title}",
        "",
        f"Command: `{command.strip()}`",
        "",
        f"Machine: {machine()}, "
        f"{torch.get_num_threads()} torch threads, device {where}; {date.today().isoformat()}. "
        + how,
        "",
    ]


def _write(lines: list[str], out: str) -> str:
    table = "\n".join(lines) + "\n"
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(table, encoding="utf-8")
    return table


def _time_steps(step: Callable[[], None], steps: int, device: torch.device) -> float:
    """Seconds for `steps` calls, after two warm-up calls."""
    for _ in range(2):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def _raw_stepper(scenario: dict, num_envs: int, device: torch.device, seed: int):
    """The simulator itself with its own random actions, or None when it has no batched API."""
    if scenario["backend"] != "vmas":
        return None
    import vmas

    env = vmas.make_env(
        scenario["scenario"],
        num_envs=num_envs,
        device=device,
        continuous_actions=True,
        max_steps=scenario["max_steps"],
        seed=seed,
        n_agents=scenario["n_agents"],
        **scenario["kwargs"],
    )
    env.reset()

    def step() -> None:
        _, _, dones, _ = env.step(env.get_random_actions())
        if bool(dones.all()):
            env.reset()

    return step


@contextmanager
def _collection_steppers(cfg, num_envs: int, steps: int, repeats: int, device: torch.device):
    """Two callables over `num_envs` copies of cfg's scenario: "env", the marl_diff backend
    stepped with uniform random actions, and "runner", the training runner's collection step
    with cfg's agent exploring. Everything they built is closed on exit."""
    from marl_diff.envs import make_env
    from marl_diff.experiment import build
    from marl_diff.runners import OffPolicyConfig, OffPolicyRunner

    runner_cfg = OffPolicyConfig(
        num_envs=num_envs,
        warmup_steps=0,
        eval_num_envs=1,
        buffer_size=num_envs * (steps + 2) * repeats,
        progress=False,
    )
    parts = build(cfg, OffPolicyRunner, runner_cfg, device)
    env = make_env(OmegaConf.to_container(cfg.scenario, resolve=True), num_envs, device, 1)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            runner = OffPolicyRunner(cfg, Path(tmp), runner_cfg, parts)
            runner.start_collection()
            env.reset(seed=1)
            yield {"env": lambda: env.step(env.random_actions()), "runner": runner.collect_step}
    finally:
        env.close()
        parts.close()


def rollout(args: list[str]) -> str:
    from marl_diff.run import compose, resolve_device

    values, passthrough = _split(args, ROLLOUT_SETTINGS, ("scenario", "agent"))
    try:
        num_envs, steps, repeats = (int(values[k]) for k in ("num_envs", "steps", "repeats"))
    except ValueError:
        raise ConfigError("num_envs, steps and repeats must be integers") from None
    device = resolve_device(values["device"])
    cfg = compose(
        [
            f"scenario={values['scenario']}",
            f"agent={values['agent']}",
            f"device={device.type}",
            *passthrough,
        ]
    )
    scenario = OmegaConf.to_container(cfg.scenario, resolve=True)
    raw = _raw_stepper(scenario, num_envs, device, seed=2)
    with _collection_steppers(cfg, num_envs, steps, repeats, device) as collectors:
        steppers: dict[str, Callable[[], None]] = {"raw": raw, **collectors} if raw else collectors
        seconds: dict[str, list[float]] = {name: [] for name in steppers}
        with torch.no_grad():
            for _ in range(repeats):
                for name, step in steppers.items():
                    seconds[name].append(_time_steps(step, steps, device))

    rate = {name: num_envs * steps / median(times) for name, times in seconds.items()}
    base = "raw" if "raw" in rate else "env"
    labels = {
        "raw": f"raw {scenario['backend']} (its own random actions)",
        "env": "marl_diff env (uniform random actions)",
        "runner": f"runner collection, {cfg.agent.name} policy",
    }
    lines = _header(
        f"Rollout throughput: {cfg.scenario.name}, {num_envs} envs, {device.type}",
        "rollout",
        args,
        device,
        f"Median of {repeats} interleaved repeats of {steps} batched steps each.",
    )
    lines += [f"| what | env-steps/s | ratio to {base} |", "|---|---:|---:|"]
    for name in steppers:
        lines.append(f"| {labels[name]} | {rate[name]:,.0f} | {rate[name] / rate[base]:.2f} |")
    return _write(lines, values["out"])


SAMPLING_SETTINGS = {
    "agents": "1,2,4,8,16",
    "batches": "64,1024",
    "steps": "5,10,20",
    "repeats": "3",
    "device": "cpu",
    "hidden": "256,256,256",
    "obs_dim": "16",
    "act_dim": "4",
    "schedule": "vp",
    "out": "results/sampling_speed.md",
}


def _ints(values: dict[str, str], key: str) -> list[int]:
    try:
        return [int(v) for v in values[key].split(",") if v]
    except ValueError:
        raise ConfigError(f"{key} must be a comma-separated list of integers") from None


def _sampling_calls(stacked, singles, obs: torch.Tensor) -> dict[str, Callable[[], None]]:
    """One stacked call vs a loop in which each agent's own policy samples from its own obs."""
    own_obs = [obs[:, i : i + 1].contiguous() for i in range(len(singles))]

    def loop() -> None:
        for single, o in zip(singles, own_obs, strict=True):
            single.sample(o)

    return {"stacked": lambda: stacked.sample(obs), "loop": loop}


def sampling(args: list[str]) -> str:
    from marl_diff.diffusion import DiffusionPolicy, make_schedule
    from marl_diff.run import resolve_device

    values, _ = _split(args, SAMPLING_SETTINGS)
    agents, batches, steps_list, hidden = (
        _ints(values, k) for k in ("agents", "batches", "steps", "hidden")
    )
    try:
        repeats, obs_dim, act_dim = (int(values[k]) for k in ("repeats", "obs_dim", "act_dim"))
    except ValueError:
        raise ConfigError("repeats, obs_dim and act_dim must be integers") from None
    device = resolve_device(values["device"])
    try:
        make_schedule(values["schedule"], 1)
    except ValueError as err:
        raise ConfigError(str(err)) from None

    rows = []
    for steps in steps_list:
        for n in agents:
            torch.manual_seed(0)
            stacked, *singles = (
                DiffusionPolicy(
                    members,
                    obs_dim,
                    act_dim,
                    schedule=make_schedule(values["schedule"], steps),
                    hidden=hidden,
                ).to(device)
                for members in [n] + [1] * n
            )
            for batch in batches:
                obs = torch.randn(batch, n, obs_dim, device=device)
                calls = _sampling_calls(stacked, singles, obs)
                seconds: dict[str, list[float]] = {name: [] for name in calls}
                for _ in range(repeats):
                    for name, call in calls.items():
                        seconds[name].append(_time_steps(call, 5, device))
                ms = {name: 1e3 * median(times) for name, times in seconds.items()}
                rows.append((n, batch, steps, ms["stacked"], ms["loop"]))

    lines = _header(
        f"Diffusion sampling: stacked agents vs a loop over per-agent policies, {device.type}",
        "sampling",
        args,
        device,
        f"One ancestral `sample()` call ({values['schedule']} schedule), denoiser MLP "
        f"{'x'.join(map(str, hidden))} mish, obs_dim {obs_dim}, act_dim {act_dim}; median of "
        f"{repeats} interleaved repeats, 5 calls each, after two warm-up calls.",
    )
    lines += [
        "| agents | batch | T | stacked ms/call | per-agent loop ms/call | speed-up |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for n, batch, steps, stacked_ms, loop_ms in rows:
        lines.append(
            f"| {n} | {batch} | {steps} | {stacked_ms:,.2f} | {loop_ms:,.2f} | "
            f"{loop_ms / stacked_ms:.2f}x |"
        )
    return _write(lines, values["out"])


UPDATE_SETTINGS = {
    "scenario": "vmas_navigation",
    "agents": "gaussian,ddpl",
    "batch_size": "256",
    "updates": "5",
    "repeats": "3",
    "device": "cpu",
    "out": "results/update_time.md",
    "host_memory": "reuse",  # as `python -m marl_diff.run` (marl_diff.host_memory)
    "matmul_precision": "highest",  # as `python -m marl_diff.run` (marl_diff.precision)
    # KEY:V1,V2,...: each agent once per value of agent.KEY, interleaved (empty: the catalog's).
    "vary": "",
}


# The settings that set an update's cost, shown beside each agent's time.
UPDATE_COST_KEYS = (
    "actor_hidden",
    "critic_hidden",
    "diffusion_steps",
    "sample_steps",
    "candidate_steps",
    "candidate_spacing",
    "candidates_share_start",
    "candidate_states",
    "n_candidates",
    "resampled_candidates",
    "n_samples",
    "actor_batch_size",
    "policy_delay",
    "compile_denoiser",
    "compile_chains",
    "compile_chain_loop",
    "compile_weights",
    "graph_chains",
    "chain_precision",
    "weights_precision",
    "update_precision",
    "adam_impl",
    "compile_update",
)


def _variants(vary: str) -> tuple[str, list[str]]:
    """`vary=KEY:V1,V2` -> ("KEY", ["V1", "V2"]); empty -> ("", [""]), the catalog's value."""
    if not vary:
        return "", [""]
    key, _, values = vary.partition(":")
    variants = [value for value in values.split(",") if value]
    if not key or not variants:
        raise ConfigError(
            f"vary must be KEY:VALUE,VALUE,... (e.g. vary=adam_impl:for_loop,fused), not '{vary}'"
        )
    return key, variants


def update(args: list[str]) -> str:
    """Time of one gradient update (critic + actor) per agent on random replay batches of the
    scenario's shapes; `agent.*` overrides apply to every agent that has the key.

    Each agent draws its batch through its own `sample_batch`, as in a run, from a replay
    buffer of the same random transitions: DDiffPG's batch is grouped by behaviour mode and
    carries its improved target actions (before any mode is found: its exploration group)."""
    from marl_diff.agents import make_agent
    from marl_diff.buffer import Batch, ReplayBuffer
    from marl_diff.envs import make_env
    from marl_diff.run import compose, resolve_device

    values, passthrough = _split(args, UPDATE_SETTINGS, ("scenario", "agent"))
    host_memory.configure(values["host_memory"])
    precision.configure(values["matmul_precision"])
    try:
        batch, updates, repeats = (int(values[k]) for k in ("batch_size", "updates", "repeats"))
    except ValueError:
        raise ConfigError("batch_size, updates and repeats must be integers") from None
    device = resolve_device(values["device"])
    varied, variants = _variants(values["vary"])
    catalogs = agent_catalogs(
        [a for a in values["agents"].split(",") if a],
        [*passthrough, *([f"agent.{varied}="] if varied else [])],
    )
    agents, configs = {}, {}
    for name, keys in catalogs.items():
        cfg = compose(
            [
                f"scenario={values['scenario']}",
                f"agent={name}",
                *(
                    arg
                    for arg in passthrough
                    if arg.startswith("scenario.") or arg.partition("=")[0][6:] in keys
                ),
            ]
        )
        env = make_env(OmegaConf.to_container(cfg.scenario, resolve=True), 1, device, seed=0)
        spec = env.spec
        env.close()
        # like the `agent.*` overrides, `vary` applies to the agents that have the key
        for value in variants if varied in keys else [""]:
            agent_cfg = OmegaConf.to_container(cfg.agent, resolve=True)
            row = name
            if value:
                agent_cfg[varied] = yaml.safe_load(value)
                row = f"{name}, {varied}={value}"
            agents[row] = make_agent(agent_cfg, spec, device)
            configs[row] = agent_cfg
    names = list(agents)
    n, d, a, s = spec.n_agents, spec.obs_dim, spec.act_dim, spec.state_dim
    generator = torch.Generator(device=device).manual_seed(0)

    def rand(*shape):
        return torch.rand(*shape, device=device, generator=generator) * 2 - 1

    transitions = Batch(
        rand(batch, n, d),
        rand(batch, s),
        rand(batch, n, a) * spec.act_mask(device),
        rand(batch, n),
        rand(batch, n, d),
        rand(batch, s),
        torch.zeros(batch, device=device),
    )
    batches = {}
    for name, agent in agents.items():
        buffer = ReplayBuffer(batch, spec, device, agent.buffer_fields())
        buffer.add(transitions)
        draw = torch.Generator(device=device).manual_seed(0)
        batches[name] = agent.sample_batch(buffer, batch, draw)
    # An actor-critic agent updates its policy at every `policy_delay`-th update, so each of
    # its timed blocks is a whole number of those cycles: then every block holds its share of
    # policy updates whatever update it starts at (5 updates at delay 2 hold 3 or 2, and the
    # median of the blocks took the 3).
    delays = {name: configs[name].get("policy_delay", 1) for name in names}
    block = {name: delay * math.ceil(updates / delay) for name, delay in delays.items()}
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(repeats):
        for name, agent in agents.items():
            seconds[name].append(
                _time_steps(lambda ag=agent, b=batches[name]: ag.update(b), block[name], device)
                / block[name]
            )
    ms = {name: 1e3 * median(times) for name, times in seconds.items()}
    lines = _header(
        f"Update time per agent: {values['scenario']}, batch {batch}, {device.type}",
        "update",
        args,
        device,
        f"{spec.n_agents} agents; median of {repeats} interleaved repeats of "
        f"{updates} updates each (rounded up to whole policy_delay cycles), after two warm-up "
        f"updates; random batches of the scenario's shapes; host_memory={values['host_memory']}, "
        f"matmul_precision={values['matmul_precision']}.",
    )
    lines += [f"| agent | settings | ms per update | ratio to {names[0]} |", "|---|---|---:|---:|"]
    for name in names:
        c = configs[name]
        detail = ", ".join(f"{k}={c[k]}" for k in UPDATE_COST_KEYS if k in c)
        lines.append(f"| {name} | {detail} | {ms[name]:,.1f} | {ms[name] / ms[names[0]]:.2f} |")
    return _write(lines, values["out"])


SMAX_SETTINGS = {
    "map": "3m",
    "num_envs": "1024",
    "steps": "20",
    "repeats": "3",
    "agent": "gaussian",
    "out": "results/smax_throughput.md",
}


def _smax_scan_rollout(map_name: str, num_envs: int, steps: int, seed: int):
    """jaxmarl alone: `steps` env steps of `num_envs` copies in one jitted `lax.scan` (vmapped),
    uniform random *available* actions, jaxmarl's own auto-reset. Returns a timed callable."""
    import jax
    import jax.numpy as jnp
    import jaxmarl
    from jaxmarl.environments.smax import map_name_to_scenario

    env = jaxmarl.make("HeuristicEnemySMAX", scenario=map_name_to_scenario(map_name))

    def one_copy(key, state):
        def body(carry, _):
            key, state = carry
            key, act_key, step_key = jax.random.split(key, 3)
            avail = env.get_avail_actions(state)
            act_keys = jax.random.split(act_key, len(env.agents))
            actions = {
                a: jax.random.categorical(k, jnp.log(avail[a].astype(jnp.float32)))
                for a, k in zip(env.agents, act_keys, strict=True)
            }
            _, state, _, _, _ = env.step(step_key, state, actions)
            return (key, state), None

        (key, state), _ = jax.lax.scan(body, (key, state), None, length=steps)
        return key, state

    keys = jax.random.split(jax.random.PRNGKey(seed), num_envs)
    _, states = jax.jit(jax.vmap(env.reset))(keys)
    rollout = jax.jit(jax.vmap(one_copy))
    carry = (keys, states)
    for _ in range(2):  # compile; twice, as reset's state has weak types that a step's has not
        carry = jax.block_until_ready(rollout(*carry))

    def run() -> float:
        nonlocal carry
        start = time.perf_counter()
        carry = jax.block_until_ready(rollout(*carry))
        return time.perf_counter() - start

    return run


def smax(args: list[str]) -> str:
    """Env-steps/s on SMAX: jaxmarl's own scan rollout vs the marl_diff env vs the runner."""
    from marl_diff.run import compose

    values, passthrough = _split(args, SMAX_SETTINGS, ("scenario", "agent"))
    try:
        num_envs, steps, repeats = (int(values[k]) for k in ("num_envs", "steps", "repeats"))
    except ValueError:
        raise ConfigError("num_envs, steps and repeats must be integers") from None
    device = torch.device("cpu")
    cfg = compose(
        [
            "scenario=smax_3m",
            f"scenario.map={values['map']}",
            f"agent={values['agent']}",
            "device=cpu",
            *passthrough,
        ]
    )
    raw = _smax_scan_rollout(values["map"], num_envs, steps, seed=2)
    with _collection_steppers(cfg, num_envs, steps, repeats, device) as steppers:
        seconds: dict[str, list[float]] = {"raw": [], **{name: [] for name in steppers}}
        with torch.no_grad():
            for _ in range(repeats):
                seconds["raw"].append(raw())
                for name, step in steppers.items():
                    seconds[name].append(_time_steps(step, steps, device))

    rate = {name: num_envs * steps / median(times) for name, times in seconds.items()}
    labels = {
        "raw": "jaxmarl alone: jitted lax.scan rollout, random available actions",
        "env": "marl_diff SmaxEnv, uniform random scores (masked on the JAX side)",
        "runner": f"runner collection step, {cfg.agent.name} policy (act, step, replay insert)",
    }
    import jax

    lines = _header(
        f"SMAX throughput: {values['map']}, {num_envs} envs, cpu",
        "smax",
        args,
        device,
        f"jax {jax.__version__}. Median of {repeats} interleaved repeats of {steps} batched "
        f"steps each (the scan: one call of {steps} steps), after warm-up / compilation.",
    )
    lines += ["| what | env-steps/s | ratio to jaxmarl |", "|---|---:|---:|"]
    for name in seconds:
        lines.append(f"| {labels[name]} | {rate[name]:,.0f} | {rate[name] / rate['raw']:.2f} |")
    return _write(lines, values["out"])


def peer(args: list[str]) -> str:
    """BenchMARL's MASAC and MAPPO against marl_diff agents (marl_diff/peer.py)."""
    from marl_diff.peer import peer as run_peer

    return run_peer(args)


BENCHMARKS = {
    "rollout": rollout,
    "sampling": sampling,
    "update": update,
    "smax": smax,
    "peer": peer,
}


@exit_cleanly_on_user_error
def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] not in BENCHMARKS:
        raise ConfigError(f"name a benchmark first. Valid choices: {choices(BENCHMARKS)}")
    print(BENCHMARKS[args[0]](args[1:]))


if __name__ == "__main__":
    main()
