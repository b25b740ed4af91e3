"""`python -m marl_diff.run scenario=NAME agent=NAME [runner=NAME] [key=value ...]`

Hydra composes the config from the YAML catalog (so `-m` sweeps work); before Hydra sees the
command line we check every name and key against the catalog, so a typo gets one clear message
with the valid choices. `python -m marl_diff.run list` prints the catalog.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from marl_diff import catalog, experiment, host_memory, precision
from marl_diff.agents import ALGORITHMS, agent_class
from marl_diff.checkpoint import claim_new_dir
from marl_diff.envs import BACKENDS, backend_class
from marl_diff.errors import (
    BackendMissing,
    ConfigError,
    MarlDiffError,
    choices,
    exit_cleanly_on_user_error,
)
from marl_diff.runners import DEFAULT_KIND, RUNNERS
from marl_diff.typed_config import defaults

DEFAULTS = {"scenario": "pendulum", "agent": "gaussian"}
TOP_LEVEL = {
    "seed": 0,
    "device": "auto",
    "run_dir": None,
    "resume": None,
    "threads": 0,
    "host_memory": "reuse",  # marl_diff.host_memory: keep freed blocks ("release": glibc's way)
    "matmul_precision": "highest",  # marl_diff.precision: float32 products (TF32/bf16: faster)
}
DEVICES = ("auto", "cpu", "cuda")
# The only settings a resumed run may change: its budgets, logging, the device and the process's
# threads, allocator, matrix-product precision and Adam implementation (speed and rounding only).
EXECUTION_KEYS = ("device", "threads", "host_memory", "matmul_precision", "agent.adam_impl")
RESUMABLE_PREFIXES = ("runner.", *(f"{key}=" for key in EXECUTION_KEYS))
RESUMABLE = (
    "Only runner.* settings, device, threads, host_memory, matmul_precision and agent.adam_impl "
    "may change on resume."
)
# What `resume=auto` lets differ between the run asked for and the one already in run_dir.
RERUN_FREE_KEYS = ("resume", "run_dir", *EXECUTION_KEYS, "runner.progress")
# Jobs of this process's `-m` sweep that were refused (the default launcher runs them here; a
# study's launchers run them elsewhere and the study checks the run folders instead).
REFUSED_JOBS: list[str] = []


def saved_top_level(cfg: DictConfig, key: str):
    """A top-level setting of a saved run's config: its default for runs saved before the
    setting existed."""
    return cfg.get(key, TOP_LEVEL[key])


# ------------------------------------------------------------------ command-line checks
def _parse(args: list[str]):
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        return OverridesParser.create().parse_overrides(overrides=args)
    except HydraException as err:
        raise ConfigError(f"cannot parse the command line: {str(err).splitlines()[0]}") from None


def _values(override) -> list[str]:
    if override.is_sweep_override():
        return [str(v) for v in override.sweep_string_iterator()]
    return [override.get_value_element_as_str()]


def prepare_arguments(args: list[str]) -> list[str]:
    """Validate names and keys against the catalog and return Hydra's argument list.

    Adds the scenario's `default_runner` when no runner is chosen, and turns keys under a
    mapping-valued entry (e.g. `scenario.env_kwargs.N=4`) into Hydra's `++` form.
    """
    flags = [a for a in args if a.startswith("-")]
    overrides = [a for a in args if not a.startswith("-")]
    parsed = _parse(overrides)
    chosen: dict[str, list[str]] = {}
    for ov in parsed:
        if ov.key_or_group in catalog.GROUPS:
            for name in _values(ov):
                catalog.load(ov.key_or_group, name)  # raises with the valid names
            chosen[ov.key_or_group] = _values(ov)
    for group, name in DEFAULTS.items():
        chosen.setdefault(group, [name])
    resuming = any(ov.key_or_group == "resume" and _values(ov) != ["auto"] for ov in parsed)
    if "runner" not in chosen:
        runners = {
            str(catalog.load("scenario", s).get("default_runner", "off_policy"))
            for s in chosen["scenario"]
        }
        runner = runners.pop() if len(runners) == 1 else "off_policy"
        catalog.load("runner", runner)
        chosen["runner"] = [runner]
        if not resuming:  # a resumed run keeps its saved runner
            overrides.append(f"runner={runner}")

    result = []
    for raw, ov in zip(overrides, parsed, strict=False):
        key = ov.key_or_group
        head = key.split(".")[0]
        if key.startswith("hydra") or key in catalog.GROUPS or raw.startswith(("+", "~")):
            result.append(raw)
        elif head in catalog.GROUPS:
            result.append(_check_key(raw, key, head, chosen[head]))
        elif key in TOP_LEVEL:
            result.append(raw)
        else:
            valid = [*TOP_LEVEL, *(f"{g}.<key>" for g in catalog.GROUPS), *catalog.GROUPS]
            raise ConfigError(f"unknown setting '{key}'. Valid settings: {choices(valid)}.")
    result.extend(overrides[len(parsed) :])  # the default runner we added
    return flags + result


def with_agent_defaults(cfg: DictConfig, overrides: list[str]) -> DictConfig:
    """`cfg` with its scenario's `agent_defaults` for its agent applied, except the keys the
    command line `overrides` set. An agent without an entry of its own takes the entry of the
    agent it extends (`catalog.lineage`): a preset keeps its family's needs. Called on each
    composed job (one run, or every job of a `-m` sweep with its own scenario and agent), never
    on a resumed run, which keeps its saved settings."""
    if cfg.get("resume") not in (None, "auto"):
        return cfg
    table = cfg.scenario.get("agent_defaults") or {}
    lineage = catalog.lineage("agent", str(cfg.agent.name))
    defaults = next((table[name] for name in lineage if name in table), None) or {}
    given = {o.lstrip("+~").partition("=")[0] for o in overrides}
    for key, value in defaults.items():
        if f"agent.{key}" not in given:
            cfg.agent[key] = value
    return cfg


def _check_key(raw: str, key: str, group: str, names: list[str]) -> str:
    path = key.split(".")[1:]
    for name in names:
        node = catalog.load(group, name)
        for depth, part in enumerate(path):
            if isinstance(node, DictConfig) and part in node:
                node = node[part]
                continue
            if depth > 0 and isinstance(node, DictConfig):
                return "++" + raw  # a new entry in a free-form mapping such as env_kwargs
            valid = list(node.keys()) if isinstance(node, DictConfig) else []
            where = ".".join([group, *path[:depth]])
            raise ConfigError(
                f"unknown key '{key}' for {group} '{name}'. Valid keys of {where}: "
                f"{choices(str(k) for k in valid)}."
            )
    return raw


# ------------------------------------------------------------------ the run itself
def resolve_device(name: str) -> torch.device:
    if name not in DEVICES:
        raise ConfigError(f"device must be one of {', '.join(DEVICES)}, not '{name}'")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "device=cuda was requested but no CUDA GPU is available; use device=cpu or device=auto"
        )
    return torch.device(name)


def default_run_dir(cfg: DictConfig) -> Path:
    """A new run folder under results/runs/<scenario>/<agent>/, named by the time, created
    here (`claim_new_dir`): runs started side by side in the same second get their own."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return claim_new_dir(Path("results/runs", str(cfg.scenario.name), str(cfg.agent.name), stamp))


def resumed_config(cfg: DictConfig, user_overrides: list[str]) -> tuple[DictConfig, Path]:
    """The saved config of the run being resumed, with only runner/device changes applied."""
    run_dir = Path(str(cfg.resume))
    saved_file = run_dir / "config.yaml"
    if not saved_file.is_file():
        raise MarlDiffError(
            f"cannot resume: '{saved_file}' does not exist (resume= takes a run "
            "directory made by marl_diff.run)"
        )
    saved = OmegaConf.load(saved_file)
    for override in user_overrides:
        key = override.lstrip("+~").split("=")[0]
        if key in ("resume", "run_dir") or override.startswith(RESUMABLE_PREFIXES):
            continue
        if key in catalog.GROUPS:  # a catalog name: compare it with the saved one
            name = override.partition("=")[2]
            saved_name = OmegaConf.select(saved, f"{key}.name", default=None)
            if name != saved_name:
                raise MarlDiffError(
                    f"cannot resume with '{override}': the checkpoint in {run_dir} was made "
                    f"with {key}={saved_name}. {RESUMABLE}"
                )
            continue
        if OmegaConf.select(saved, key, default=None) != OmegaConf.select(cfg, key, default=None):
            raise MarlDiffError(
                f"cannot resume with '{override}': the checkpoint in {run_dir} was made with "
                f"{key}={OmegaConf.select(saved, key, default=None)}, an incompatible config. "
                f"{RESUMABLE}"
            )
    changes = [o for o in user_overrides if o.startswith(RESUMABLE_PREFIXES)]
    # TOP_LEVEL first: a run saved before a top-level setting existed resumes with its default.
    merged = OmegaConf.merge(
        TOP_LEVEL, saved, OmegaConf.from_dotlist([o.lstrip("+") for o in changes])
    )
    merged.resume = str(run_dir)
    merged.run_dir = str(run_dir)
    return merged, run_dir  # type: ignore[return-value]


def _flat(node, prefix: str = "") -> dict:
    if isinstance(node, dict):
        return {k: v for key, sub in node.items() for k, v in _flat(sub, f"{prefix}{key}.").items()}
    return {prefix[:-1]: node}


def config_differences(
    saved: DictConfig, cfg: DictConfig, free: tuple[str, ...] = RERUN_FREE_KEYS
) -> list[str]:
    """`key: saved -> asked` for every resolved setting in which `cfg` differs from a saved run's
    config, except those a rerun may change (`free`: keys or key prefixes)."""
    old = _flat(OmegaConf.to_container(saved, resolve=True))
    new = _flat(OmegaConf.to_container(cfg, resolve=True))
    return [
        f"{key}: {old.get(key)!r} -> {new.get(key)!r}"
        for key in sorted(old.keys() | new.keys())
        if old.get(key) != new.get(key) and not key.startswith(free)
    ]


def run_state(run_dir: Path) -> str:
    """'finished' (its final evaluation is written), 'interrupted' (checkpoints, no final
    evaluation) or 'new'."""
    if (run_dir / "eval.json").is_file():
        return "finished"
    return "interrupted" if any((run_dir / "checkpoints").glob("*")) else "new"


def with_implicit_defaults(saved: DictConfig) -> DictConfig:
    """A saved run's config with every setting added since it was saved, at the default its
    typed config gives a config without it (TOP_LEVEL, the agent's, runner's and scenario
    backend's dataclasses): the settings the run was made with and would resume with. A
    study saved before `agent.critic_rewards` existed then reruns, and one that asks for
    another value than the default is still refused."""
    layers: list[dict] = [dict(TOP_LEVEL)]
    algorithm = OmegaConf.select(saved, "agent.algorithm")
    if algorithm in ALGORITHMS:
        layers.append({"agent": defaults(agent_class(algorithm).Config)})
    kind = OmegaConf.select(saved, "runner.kind", default=DEFAULT_KIND)
    if kind in RUNNERS:
        layers.append({"runner": defaults(RUNNERS[kind][1])})
    backend = OmegaConf.select(saved, "scenario.backend")
    if backend in BACKENDS:
        try:
            layers.append({"scenario": defaults(backend_class(backend).Config)})
        except BackendMissing:  # this install cannot run the scenario; the run says so itself
            pass
    return OmegaConf.merge(*(OmegaConf.create(layer) for layer in layers), saved)


def check_rerun(cfg: DictConfig, run_dir: Path) -> str:
    """`resume=auto`'s check: the state of `run_dir`, after making sure a run already there was
    made with the same resolved config, so a study never mixes runs of different settings."""
    saved_file = run_dir / "config.yaml"
    if saved_file.is_file():
        saved = with_implicit_defaults(OmegaConf.load(saved_file))
        differences = config_differences(saved, cfg)
        if differences:
            raise MarlDiffError(
                f"run_dir '{run_dir}' holds a run made with other settings "
                f"({'; '.join(differences)}); rerun with the same settings or choose another "
                "run_dir"
            )
    return run_state(run_dir)


def launch(cfg: DictConfig, user_overrides: list[str]) -> dict:
    """Train one run from a composed config; returns the final evaluation report.

    `resume=auto` (with `run_dir=`) makes a run restartable in place, as a study's jobs are:
    a finished run returns its saved evaluation, an interrupted one resumes from its last
    checkpoint, and otherwise the run starts."""
    if not isinstance(cfg.seed, int):
        raise ConfigError(f"seed must be an integer, not '{cfg.seed}'")
    if not isinstance(cfg.threads, int) or cfg.threads < 0:
        raise ConfigError(
            f"threads must be an integer >= 0 (0: torch's default), not '{cfg.threads}'"
        )
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    host_memory.configure(cfg.host_memory)
    precision.configure(cfg.matmul_precision)
    if cfg.resume == "auto":
        if not cfg.run_dir:
            raise ConfigError("resume=auto needs run_dir=DIR (the run to continue or start)")
        state = check_rerun(cfg, Path(str(cfg.run_dir)))
        if state == "finished":
            print(f"marl_diff: {cfg.run_dir} already finished; its final evaluation is kept")
            return json.loads((Path(str(cfg.run_dir)) / "eval.json").read_text(encoding="utf-8"))
        cfg.resume = str(cfg.run_dir) if state == "interrupted" else None
    if cfg.resume:
        cfg, run_dir = resumed_config(cfg, user_overrides)
    else:
        run_dir = Path(str(cfg.run_dir)) if cfg.run_dir else None
    if run_dir is not None and not cfg.resume and (run_dir / "checkpoints").exists():
        raise MarlDiffError(
            f"run_dir '{run_dir}' already holds a run; pass resume={run_dir} "
            "to continue it, or choose another run_dir"
        )
    device = resolve_device(str(cfg.device))
    claimed = run_dir is None
    run_dir = default_run_dir(cfg) if claimed else run_dir
    try:
        runner = experiment.make_runner(cfg, run_dir, device)  # validates the config
    except BaseException:
        if claimed and not any(run_dir.iterdir()):
            run_dir.rmdir()  # a config refused leaves no folder behind
        raise
    run_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    print(f"marl_diff: {cfg.scenario.name} / {cfg.agent.name} on {device} -> {run_dir}")
    report = runner.train(resume=bool(cfg.resume))
    print(
        f"final evaluation: return {report['mean_return']:.3f} +- {report['std_return']:.3f} "
        f"over {report['episodes']} episodes; results in {run_dir}"
    )
    return report


# ------------------------------------------------------------------ Hydra wiring
def register_catalog() -> None:
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    for group in catalog.GROUPS:
        for name in catalog.names(group):
            store.store(group=group, name=name, node=catalog.load(group, name))
    store.store(
        name="marl_diff",
        node={
            "defaults": [
                {"scenario": DEFAULTS["scenario"]},
                {"agent": DEFAULTS["agent"]},
                {"runner": "off_policy"},
                {"override hydra/job_logging": "none"},
                {"override hydra/hydra_logging": "none"},
                "_self_",
            ],
            **TOP_LEVEL,
            "hydra": {
                "output_subdir": None,
                "run": {"dir": "."},
                "sweep": {"dir": "results/runs/multirun", "subdir": "${hydra.job.num}"},
                "job": {"chdir": False},
            },
        },
    )


def compose(args: list[str]) -> DictConfig:
    """The config `python -m marl_diff.run ARGS` would train, for use from Python."""
    from hydra import compose as hydra_compose
    from hydra import initialize
    from hydra.core.global_hydra import GlobalHydra

    register_catalog()
    GlobalHydra.instance().clear()
    with initialize(version_base="1.3", config_path=None):
        cfg = hydra_compose("marl_diff", overrides=prepare_arguments(args))
    return with_agent_defaults(cfg, args)


def hydra_task(cfg: DictConfig) -> float:
    """One job. In a `-m` sweep a job whose settings are refused prints why and the other jobs
    go on (a study then names the runs that did not finish); a single run exits with code 2."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hydra_cfg = HydraConfig.get()
    overrides = list(hydra_cfg.overrides.task)
    try:
        return launch(with_agent_defaults(cfg, overrides), overrides)["mean_return"]
    except MarlDiffError as err:
        print(f"error: {err}", file=sys.stderr)
        if hydra_cfg.mode == RunMode.MULTIRUN:
            REFUSED_JOBS.append(str(err))
            return float("nan")
        sys.exit(2)


@exit_cleanly_on_user_error
def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if args in (["list"], ["--list"]):
        print(catalog.listing())
        return
    hydra_args = prepare_arguments(args)
    register_catalog()
    import hydra

    sys.argv = [sys.argv[0], *hydra_args]
    hydra.main(version_base="1.3", config_path=None, config_name="marl_diff")(hydra_task)()
    if REFUSED_JOBS:
        raise MarlDiffError(
            f"{len(REFUSED_JOBS)} job(s) of the sweep were refused (see their errors above); "
            "the others ran"
        )


if __name__ == "__main__":
    main()
