"""DDiffPG's intrinsic reward: NovelD over Random Network Distillation (RND).

RND measures how unfamiliar a state is: a fixed, randomly initialised *target* network maps the
(encoded) state to features and a *predictor* network is trained to reproduce them on the states
the agent has visited. The prediction error, novelty(s) = ||predictor(s) - target(s)||_2, shrinks
where the predictor has seen many states and stays large in regions it has not.

Plain RND rewards novelty(s') itself, so an agent is paid for *staying* in a novel region and
keeps harvesting it until the predictor catches up. NovelD instead rewards the novelty
*difference* between successive states,

    r_int(s, s') = scale * max(novelty(s') - alpha * novelty(s), 0),

which is positive when a transition crosses from a familiar region into a less-visited one (the
frontier) and zero when the agent lingers in or moves back towards familiar ground; alpha < 1
still leaves a small reward for moving within an equally novel region. DDiffPG uses it to push
the exploration policy out along many frontiers, which is what produces distinct modes to find.

Positions (e.g. a maze's x-y) are low-dimensional and vary slowly: an MLP on raw x-y maps nearby
cells to nearly the same features, so the predictor generalises across them and RND cannot tell
them apart. A NeRF-style positional encoding, sin(2^k pi p) and cos(2^k pi p) for k < F
alongside p itself, makes the network input vary fast with position (the finest frequency
resolves distances of about 2^-F in p's units, so positions should be scaled to about [-1, 1]),
giving each nearby cell its own target features. The other state dims pass through unchanged.

The reward depends on the predictor, which keeps learning, so it is not stored in the replay
buffer: callers recompute `reward(state, next_state)` on every sampled batch (DDiffPG: "recomputed
at sampling time") and train the predictor with `update(states)` on visited states.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from marl_diff.errors import ConfigError
from marl_diff.nn import ACTIVATIONS, StackedMLP

NOVELTY_KINDS = ("noveld", "rnd")


class NoveltyReward(nn.Module):
    """Intrinsic reward from a fixed random target network and a trained predictor.

    Input layout of the networks (`encode`, E = S + 2 F P features for P position dims):

        [p_1..p_P,
         sin(2^0 pi p_1..p_P), cos(2^0 pi p_1..p_P), ..., sin(2^(F-1) pi p), cos(2^(F-1) pi p),
         the other state dims in their original order]

    Both networks are `StackedMLP`s with one member (hidden 512-256-128, 128 outputs, ELU by
    default, DDiffPG's sizes). The target never trains: its parameters have requires_grad False,
    it is evaluated under no_grad and the optimiser holds only the predictor's parameters.

    The module owns its AdamW optimiser (`self.optimizer`). Its parameters are in `state_dict`
    like any submodule; its optimiser state round-trips with `optimizer_state()` /
    `load_optimizer_state(d)`. An `Agent` can instead register it as
    `self.optimizers["novelty"] = novelty.optimizer`, and `training_state` saves it with the
    others. Move the module to its device before the first `update` (the optimiser holds the
    parameters themselves, which `.to` converts in place).
    """

    def __init__(
        self,
        state_dim: int,
        position_dims: Sequence[int] = (),
        frequencies: int = 10,
        hidden: Sequence[int] = (512, 256, 128),
        out_features: int = 128,
        activation: str = "elu",
        kind: str = "noveld",
        scale: float = 0.01,
        alpha: float = 0.5,
        lr: float = 1e-4,
    ):
        super().__init__()
        position_dims = tuple(position_dims)
        hidden = tuple(hidden)
        _check_arguments(
            state_dim, position_dims, frequencies, hidden, out_features, activation, kind, lr
        )
        self.state_dim = state_dim
        self.position_dims = position_dims
        self.frequencies = frequencies
        self.kind = kind
        self.scale = float(scale)
        self.alpha = float(alpha)
        rest = [i for i in range(state_dim) if i not in position_dims]
        # Constants derived from the arguments: not saved, rebuilt by the constructor.
        self.register_buffer("position_index", torch.tensor(position_dims, dtype=torch.long), False)
        self.register_buffer("rest_index", torch.tensor(rest, dtype=torch.long), False)
        self.register_buffer(
            "angular", math.pi * 2.0 ** torch.arange(frequencies, dtype=torch.float32), False
        )
        self.encoded_dim = state_dim + 2 * frequencies * len(position_dims)
        self.target = StackedMLP(1, self.encoded_dim, hidden, out_features, activation)
        self.target.requires_grad_(False)
        self.predictor = StackedMLP(1, self.encoded_dim, hidden, out_features, activation)
        self.optimizer = torch.optim.AdamW(self.predictor.parameters(), lr=lr)

    def encode(self, state: torch.Tensor) -> torch.Tensor:
        """state [..., S] -> network input [..., E] (layout in the class docstring)."""
        rest = state.index_select(-1, self.rest_index)
        if not self.position_dims:
            return rest
        p = state.index_select(-1, self.position_index)  # [..., P]
        phase = p[..., None, :] * self.angular.to(p.dtype)[:, None]  # [..., F, P]
        waves = torch.stack([phase.sin(), phase.cos()], -2)  # [..., F, 2, P]
        return torch.cat([p, waves.flatten(-3), rest], -1)

    def _features(self, net: StackedMLP, encoded: torch.Tensor) -> torch.Tensor:
        """[..., E] -> [..., O] through a one-member stacked MLP."""
        flat = encoded.reshape(-1, encoded.shape[-1])
        return net(flat)[0].reshape(*encoded.shape[:-1], -1)

    def prediction_error(self, state: torch.Tensor) -> torch.Tensor:
        """predictor(encode(s)) - target(encode(s)), [..., O]; differentiable in the
        predictor only."""
        encoded = self.encode(state)
        with torch.no_grad():
            target = self._features(self.target, encoded)
        return self._features(self.predictor, encoded) - target

    def novelty(self, state: torch.Tensor) -> torch.Tensor:
        """||predictor(encode(s)) - target(encode(s))||_2: [..., S] -> [...]."""
        return torch.linalg.vector_norm(self.prediction_error(state), dim=-1)

    @torch.no_grad()
    def reward(self, state: torch.Tensor, next_state: torch.Tensor) -> torch.Tensor:
        """Intrinsic reward of transitions s -> s', [..., S] each -> [...], without gradient.

        noveld: scale * max(nov(s') - alpha nov(s), 0); rnd: scale * nov(s'). It follows the
        predictor as it learns, so compute it on each sampled batch rather than storing it.
        """
        if self.kind == "rnd":
            return self.scale * self.novelty(next_state)
        nov = self.novelty(torch.stack([state, next_state]))  # one pass for both
        return self.scale * (nov[1] - self.alpha * nov[0]).clamp_min(0.0)

    def update(self, states: torch.Tensor) -> dict[str, torch.Tensor]:
        """One AdamW step of the predictor on visited states [B, S]: the MSE between its output
        and the target's, averaged over features and batch."""
        loss = self.prediction_error(states.detach()).pow(2).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return {"novelty/loss": loss.detach()}

    def optimizer_state(self) -> dict:
        """The predictor optimiser's `state_dict` (save it next to the module's)."""
        return self.optimizer.state_dict()

    def load_optimizer_state(self, state: dict) -> None:
        self.optimizer.load_state_dict(state)


def _check_arguments(
    state_dim: int,
    position_dims: tuple[int, ...],
    frequencies: int,
    hidden: tuple[int, ...],
    out_features: int,
    activation: str,
    kind: str,
    lr: float,
) -> None:
    if kind not in NOVELTY_KINDS:
        raise ConfigError(f"novelty.kind must be one of {', '.join(NOVELTY_KINDS)}, not '{kind}'")
    if activation not in ACTIVATIONS:
        raise ConfigError(
            f"novelty.activation must be one of {', '.join(sorted(ACTIVATIONS))}, "
            f"not '{activation}'"
        )
    if state_dim < 1:
        raise ConfigError(f"novelty state_dim must be >= 1, got {state_dim}")
    bad = [d for d in position_dims if not isinstance(d, int) or not 0 <= d < state_dim]
    if bad:
        raise ConfigError(
            f"novelty.position_dims must be state indices in 0..{state_dim - 1}, got {bad}"
        )
    if len(set(position_dims)) != len(position_dims):
        raise ConfigError(f"novelty.position_dims has repeated indices: {list(position_dims)}")
    if frequencies < 0:
        raise ConfigError(f"novelty.frequencies must be >= 0, got {frequencies}")
    if out_features < 1 or any(h < 1 for h in hidden):
        raise ConfigError(
            f"novelty layer sizes must be >= 1, got hidden {list(hidden)}, out {out_features}"
        )
    if lr <= 0:
        raise ConfigError(f"novelty.lr must be > 0, got {lr}")
