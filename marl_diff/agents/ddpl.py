"""DDPL: every agent owns a diffusion policy, trained online with importance-sampling score
matching (ISSM) against the centralised twin critic.

The DecSPG target of agent i is p*(a_i | o_i) ∝ pi_i^old(a_i | o_i) exp(Q_i(s, a_i) / alpha).
ISSM never samples p* directly. For each replay state it draws M candidates from a proposal
(the current policy, or a lagged copy of it), weights them by their Q values, and fits the
diffusion policy to the weighted candidates with denoising score matching:

    loss = mean_states sum_j w_j DSM(a^(j), o_i),   w = self-normalised IS weights.

Because the proposal is pi^old itself, its density cancels from the weights, leaving
w_j ∝ exp(Q_i(s, a^(j)) / alpha). Our reading of the paper, each choice a config switch:
- `target`: "mirror" is the DecSPG target above. "soft" is p* ∝ exp(Q_i / alpha) alone, the
  maximum-entropy policy. Its weights divide by the proposal density, estimated from the same
  M candidates with k-nearest-neighbour distances: log w_j = Q_j / alpha + d log r_j. The
  mirror update compounds: pi^k ∝ pi^0 exp(sum of Q / alpha). Any lasting bias of the learned
  critic between equally good modes therefore grows without bound, and all but one mode die
  (seen on `multigoal`). The soft target keeps every mode whose Q is within about alpha of
  the best.
- `weighting`: "softmax" normalises exp(Q / alpha) over the M candidates of a state, so alpha
  is in units of Q and its right value depends on the reward scale. "running" (after DPMD's
  running-normalised, clipped weights) first measures each candidate's Q against its own
  state's mean over the candidates. It divides by a running estimate of that spread (rate
  `running_rate`), clips to +-`clip`, then takes the same per-state softmax over alpha. That
  makes alpha scale-free. It is the default: on vmas_navigation the Q gaps between candidates
  are about 0.01, and softmax weights at alpha 0.1 were uniform (ESS 0.998).
- `others_actions`: Q_i(s, a_i, a_-i) takes the other agents' actions from the replay batch
  (HASAC-style) or from fresh samples of their current policies ("policy"). "candidates":
  from the other agents' own candidates of the same index, so that candidate j of every
  agent is weighed by Q at joint candidate j. The candidates' Q then runs on M x B critic rows
  instead of N x M x B, as MASAC's actor reads Q once at the joint action sampled afresh for
  all agents. Each agent then fits its marginal of the joint target pi_old(a) exp(Q(s, a) /
  alpha), not its own, and its weights carry the other agents' luck; with one agent nothing
  changes. At BenchMARL MASAC's 4-agent peer settings it took an update of
  `agent=ddpl_fast_bfloat16` to 0.88x its time (float32 with 8 candidates 0.73x), but at the
  vmas_navigation study setting (2 agents) that preset returned 1.075 over eighteen seeds
  against 1.259 (lower in 13, Wilcoxon p = 0.002), so no preset takes it (results/speed.md).
- `weights_critic`: Q_i for the weights from the twin critic reduced as its targets are (min,
  "reduced", the default), or from its first member alone ("first"), as TD3's actor reads Q1
  only, at half the critic's cost at the M x B candidates. At BenchMARL MASAC's peer settings
  Q1 alone took an update to 0.91x its time (on top of `compile_chain_loop`, 2 resampled
  candidates, 5-step chains and the compiled denoiser), but at the vmas_navigation study
  setting it returned 1.01 against 1.21 over twelve seeds (lower in 11, Wilcoxon p = 0.002):
  weights that favour the candidates one member overrates sharpen the policy toward that
  member's errors, which the min discounts. So the catalog keeps the min (results/speed.md).
- `proposal`: "current" policy, or "lagged" (a copy refreshed every `lag_updates` updates).
- `critic_rewards` (`ActorCriticAgent`): Q_i is the team critic's Q with agent i's action
  substituted (the paper's cooperative setting, the default), or agent i's own Q_i learned
  from its own reward ("per_agent", for tasks with individual rewards).
- temperature: fixed, or tuned per agent toward a target entropy. The entropy is estimated
  from the candidates with the Kozachenko-Leonenko estimator (marl_diff.diffusion.entropy).
  Tuned (the default), alpha rises to about 1.7 on vmas_navigation and the weights stay
  nearly uniform (ESS fraction about 0.9). A fixed `alpha` 0.5 sharpens them (0.55-0.65) and
  learned more on BenchMARL's navigation task (final return higher in 4 of 4 seeds), no more
  at the study setting (mean 1.36 against 1.33 over seeds 0-5, higher in 3). On multigoal
  (soft target, where alpha tunes to about 4 and the ESS fraction to 0.41) it sharpened the
  weights to 0.06 and kept 2 goals in both seeds against 4 and 3. A temperature that suits
  one task loses modes on another, hence tuned (results/speed.md).
- candidate jitter: fitting a diffusion model to its own samples is under-dispersed, so
  without help the policy's entropy collapses within a few thousand updates, whatever the
  weights (measured: the sample std shrinks about 30% per refit of a fixed target). The
  weights can only sharpen pi_old, never widen it. So each candidate gets Gaussian noise
  sigma_i before Q is evaluated. The proposal is then pi_old * N(0, sigma_i^2), the target
  is that times exp(Q / alpha), and the weights stay proper. sigma_i is tuned toward the
  same target entropy (as DACER tunes its exploration noise); it decays once the entropy
  is above target.
- `action_selection` during training: a plain sample, or the best of K own samples by Q_i
  (the critic needs the global state, so this applies to training only). Evaluation always
  samples from each agent's policy given its own observation.
The critic target uses the current diffusion policy's next actions with no entropy bonus (as in
DPMD): the temperature acts through the weights alone.

What an update costs is rows x chain steps through the denoiser; at the earlier defaults
(B = 256 states, M = 16, the full T = 20 chain everywhere) one update took 75x a Gaussian update
on a 2-core CPU. The catalog defaults (agents/ddpl.yaml) take the cheap choices that kept what
is learned; each is a setting, and the old behaviour is one override away:
- `candidate_steps` 5: ISSM needs a proposal it can weight, not the exact policy. The
  candidates come from a 5-step respaced chain of the same T-level model (ancestral noise,
  `sample_eta` 1, which kept the modes' shares; a deterministic DDIM chain skewed them). The
  target is then proposal x exp(Q / alpha), the proposal a slightly smoother pi_old.
  `candidate_steps=0` draws them from the policy's own chain. Fewer steps depend on where
  they fall (thirty-fifth and thirty-sixth sessions, on an AMD EPYC Zen 4, on top of
  `agent=ddpl_fast_bfloat16`'s other keys): with 4 a 4-agent update at BenchMARL MASAC's
  settings took 0.90x as long. Evenly spaced (levels 0, 3, 6, 9 of vmas_navigation's T = 10)
  they returned 1.252 over forty-eight study seeds against 1.272 with 5 (p = 0.51), but on
  multigoal's soft target they covered at most one goal in each of three seeds (returns -7 to
  -8, against 3 goals and -0.3 to 2.2 with 5). Spaced quadratically (`candidate_spacing`,
  levels 0, 1, 4, 9) they covered as many goals as 5 steps over six seeds (3, 2, 3, 2, 2, 1
  against 3, 3, 3, 2, 1, 1) and returned 1.233 over seventy-two study seeds against 5 steps'
  1.249 (p = 0.42): the bfloat16 preset takes them. 3 even steps (0.83x) returned 1.209 over
  twenty-four (against the catalog p = 0.03; results/speed.md).
- `sample_steps` 10: the policy acts and bootstraps from a 10-step respaced chain of its
  20 trained levels (DDIM / improved-DDPM respacing); on a 4-mode target its samples matched
  the full chain's (tests/test_diffusion.py). 0 samples all T steps. On VMAS (T = 10)
  `sample_steps` 5, the candidates' chain, took an update at BenchMARL MASAC's settings (with
  `compile_chain_loop` and 2 resampled candidates) to 0.90-0.92x its time, and returned 1.207
  against 1.242 over twelve study seeds (lower in 5, p = 0.79) in 0.88x the run time: not in
  the catalog, no gain shown in a whole run (results/speed.md, twenty-fifth session). The
  chain's length does not change what a trained policy returns: twenty-four catalog policies
  evaluated with 5 steps returned 1.299 against 1.294 with their 10, and twenty-four
  `agent=ddpl_fast` ones with 10 steps 1.211 against 1.212 with their 5 (256 episodes each;
  thirty-third session). What 5 steps cost, they cost in training.
- `n_candidates` 8 (was 16) and `policy_delay` 2 (the actor updates every second critic
  update, as DACER and TD3 do).
- `actor_hidden` [256, 256], the Gaussian actor's size. The DDPL paper gives no network; DPMD's
  3x256 mish denoiser (`[256, 256, 256]`, the other diffusion agents' default) costs
  1.4x as much per ddpl update: on Ant with bfloat16 chains, 5.8x and 5.8x a Gaussian update
  against 4.2x and 4.2x for 2x256 (`bench update`, two runs each, Intel Xeon), past the 5x
  the speed issue sets. It learns no more at the vmas_navigation study budget (eval return at
  24k env steps, the study's other settings, seeds 0-5, current defaults, 256 evaluation
  episodes): 2x256 1.18, 1.12, 1.28, 1.56, 1.21, 1.30 (mean 1.28), 3x256 1.49, 0.89, 1.49,
  1.50, 1.24, 1.22 (1.31), 3x256 ahead in 3 of 6 seeds. Two earlier 3-seed runs with float32
  chains had 3x256 ahead in every seed (1.56 against 1.26; 1.54 against 1.44;
  results/speed.md).
- `candidates_share_start` true: a state's M candidates start from one x_T and part at the
  first step's noise (marl_diff.diffusion.policy), so that step runs once per state; 6-8% off
  the candidate chain. vmas_navigation study, seeds 0-2, before the VMAS stream fix: 1.63,
  1.65, 1.66 against 1.46, 1.47, 1.65 with independent starts. Critic-target actions from a
  5-step chain instead of the 10-step one were also measured and not kept (1.27, 1.26, 1.59).
- `compile_denoiser` stays false: compiled, an update is 4.4x a Gaussian one on Ant instead
  of 5.0x and 5.1x on MPE instead of 6.0x, but the vmas_navigation study's seeds came out
  lower (`DiffusionActorCritic`). `compile_chains` is on: it compiles the candidate,
  critic-target and acting chains only, which then give the eager numbers bit for bit, so it
  changes the speed and not what is learned; the ISSM loss's gradient stays eager. On top of
  it `compile_denoiser` took an Ant update from 3.68x, 3.60x to 3.38x, 3.34x (Intel Xeon with
  AMX, two runs each), but in the vmas_navigation study setting (seeds 0-5, final policies on
  256 episodes) it returned 1.28, 1.36, 1.05, 1.48, 1.28, 0.98 (mean 1.24) against 1.23,
  1.49, 1.42, 1.58, 1.10, 1.37 (1.37) with the compiled chains alone: lower in 4 of 6 seeds,
  so it stays off. Twelve seeds with `compile_chain_loop` as well returned 1.22 against the
  catalog's 1.32 (lower in 9, Wilcoxon p = 0.08) and the loop alone's 1.26 (p = 0.41), and
  ran no faster there (results/speed.md, twenty-fourth session). Until the twenty-fifth
  session its layers broke the loop's graph at every step when both were on
  (`StackedMLP.after_first`), so those speeds, and the 0.73-0.79x MASAC's frames/s of three
  runs with 2 resampled candidates and 5-step chains as well, are not the combination's.
  Fixed, at MASAC's settings on top of the loop and 2 resampled candidates it took an update
  to 0.96x, and to 0.97x with 5-step chains (AMD EPYC Zen 3, results/speed.md). Over twelve
  study seeds it returned 1.23 there against 1.24 without it (p = 1.0), and with 5-step chains
  as well 1.21 (lower than without both in 9 of 12, p = 0.18).
- `resampled_candidates` K (0 in the catalog: all M, weighted): the score-matching loss on K of
  each state's M candidates, drawn with replacement by their weights, each weighing 1/K. That
  is importance resampling, an unbiased estimate of the weighted loss over all M at K/M of its
  rows; the candidates' chain and Q values are unchanged. With `policy_delay` 1 it buys the
  actor an update every critic update for about the catalog's cost: on BenchMARL's navigation
  task (the README's time-to-quality command) an update took 30.5 ms with K = 2 against
  42.9 ms with all 8 (`bench update`, one thread) and ddpl first reached 0.8 in 97-190 s
  (18-30k frames, seeds 0-2, two threads) against 290-320 s (48-54k) at the catalog's
  `policy_delay` 2. At the vmas_navigation study setting (seeds 0-5, 256 episodes) K = 2
  returned 1.24 against the catalog's 1.33 (lower in 4 of 6 seeds), and with `policy_delay` 1
  1.35 (higher in 3) at the catalog's run time. Not in the catalog: at the VMAS and MPE
  families' networks `policy_delay` 1 costs 5.6x a Gaussian update, past the 5x target. On
  multigoal (32 candidates) K = 2 kept 4 and 3 goals in seeds 0 and 1, as all 32 did
  (results/speed.md). At BenchMARL MASAC's settings ([256, 256] networks, `policy_delay` 2,
  `compile_chain_loop`) K = 2 took an update to 0.75-0.80x its time (two threads) and ddpl to
  0.71-0.92x MASAC's frames/s (five runs, three seeds), against 0.56x with all 8. With the
  loop compiled it returned 1.257 over twelve study seeds against the loop alone's 1.258 (and
  the loop 1.262 against the catalog's 1.285 over eighteen), but its seeds 0-2 evaluated at
  1.29 in their runs, under the study's 1.4; with bfloat16 chains as well 1.15 over six.
  Systematic instead of independent draws returned 1.20 over twelve (results/speed.md,
  twenty-third and twenty-fourth sessions).
- `candidate_states` "batch" (the catalog's): ISSM's candidates at the batch's states, and the
  critic target's action one sample of the policy's 10-step chain at the next states. "next"
  (DPMD draws its candidates at s') draws the M candidates once per actor update at the next
  states. The critic target then averages Q' over them, an M-sample estimate of
  E_{a' ~ pi} Q'(s', a') in place of one sample, and ISSM weights and fits them there. The
  replay holds no actions at s', so with `others_actions=replay` the other agents act there
  by their first candidates (with "policy", by fresh samples as always). That
  update runs no chain of its own for the target, and its target actions come from the 5-step
  candidate chain, drawn at `chain_precision` as ISSM's candidates are (with
  `update_precision=bfloat16`, "batch" samples the target inside the loss's autocast).
  With `policy_delay=1 resampled_candidates=2` on BenchMARL's navigation task's networks an
  update took 0.81-0.86x as long (`bench update`, one thread, two runs);
  at the families' catalog networks, where the 256-wide critic runs on M x B rows, 0.91-1.02x.
  At the vmas_navigation study setting (seeds 0-5, 256 episodes) it returned 1.330, 1.390,
  1.195, 1.364, 1.587, 1.365 (mean 1.372) against 1.354 without it (higher in 2 of 6). On
  BenchMARL's task it first reached 0.8 later in 2 of 3 seeds (175-268 s against 97-190 s,
  two threads), so it is not in the catalog (results/speed.md). On multigoal (32 candidates)
  it kept 3 and 3 goals in seeds 0 and 1, against 4 and 3.
- `actor_batch_size` stays 0 (ISSM on every state of the batch) and `policy_delay` stays 2.
  The cheaper settings measured all cut the actor's work per env step, and each learned less
  in the vmas_navigation study (eval return at 24k steps, results/speed.md, before the VMAS
  stream fix): these defaults 1.48 (5 seeds), 128 of the 256 states 1.16 (6 seeds),
  `policy_delay` 3 1.20 (3 seeds). `n_candidates` 4 took a run to 0.66x its time and returned
  1.27 against 1.33 (seeds 0-5, final policies on 256 episodes, lower in 4 of 6). Where the
  fit takes 2 resampled candidates either way (with `compile_chain_loop`, 5-step chains, the
  compiled denoiser and `compile_update`), 4 candidates returned 1.29 against 8's 1.22 over
  twelve seeds (lower in 5, p = 0.47) and took a 4-agent update at MASAC's peer settings to
  0.64x its time (results/speed.md, twenty-ninth session). On top of those, ISSM on half the
  states (`actor_batch_size` 128 of the study's 256) returned 1.23 against 1.29 (lower in 9 of
  12, p = 0.18), as 8 candidates without it did (1.22); the catalog's runs of the same seeds
  returned 1.32 (half the states lower in 8, p = 0.03; thirty-first session), but those were
  Zen 4 runs against Zen 3 ones; on one Zen 4 half the states returned 1.15 against the
  catalog's 1.32 (lower in 11 of 12, p = 0.001; thirty-second session). `policy_delay` 3
  returned 1.18 (lower in 9 of 12, p = 0.05). Half the states (64 of MASAC's 128) took a
  4-agent update at MASAC's peer settings to 0.72x its time, `policy_delay` 3 to 0.83x
  (thirtieth session).
- `update_precision` stays "run". "bfloat16" (mixed precision, `loss_precision`: the critic's
  loss with its target actions and the score-matching loss on bfloat16 tensors) took an update
  to 0.82x (VMAS) and 0.83x (Ant) its time at these defaults on an AMD EPYC (`bench update`,
  results/update_time_precision/*_bfloat16_updates_epyc.md). In the vmas_navigation study
  setting (seeds 0-5, final policies on 256 episodes) it returned 1.22, 1.18, 1.56, 1.31, 1.24,
  1.40 (mean 1.32) against 1.37, 1.35, 1.44, 1.38, 1.30, 1.13 (1.33): lower in 4 of 6 seeds,
  within their spread. Not in the catalog: one rounding more in every update, for a gain that
  a whole run at MASAC's peer settings did not show (results/speed.md).
- `weights_precision` stays "run". The candidates' Q for the weights (`candidates_q`) is the
  critic at M x B x N joint actions, twice over for the twin min: at MASAC's peer settings
  with 4 agents it took 5.7 ms of an actor update, as much as the candidates' chain.
  "bfloat16" computes its products on bfloat16 tensors (autocast), 1.8 ms there on an AMD EPYC
  Zen 4, and an update at 0.87x its time on top of bfloat16 chains and updates. Its Q moves by
  about 5% of the spread of Q among a state's candidates (trained study critics), which the
  weights read; the critic's last layer kept in float32 (measured, not built) leaves 3-4%.
  Over forty-eight vmas_navigation study seeds on the preset with bfloat16 chains and updates
  it returned 1.193 against 1.229 (lower in 25, p = 0.27; seeds 0-23 1.163 against 1.234,
  seeds 24-47 1.223 against 1.224): no loss shown, none excluded (results/speed.md,
  thirty-third session).
- `compile_weights`: the candidates' Q for the weights as one compiled graph of fixed shapes
  (the agent's own, built at its first actor update): the joint actions' share of the first
  layer, the state's share, the activations and the members' min fused around the matrix
  products, where eagerly each is a pass over the M x B x N rows. In float32 on a CPU it gives
  the eager Q bit for bit, so a run learns what it learns eagerly (tests/test_ddpl.py; two
  catalog study seeds returned 1.387 and 1.430 with it, as without). At MASAC's 4-agent peer
  settings it took `agent=ddpl_fast`'s update to 0.98x its time, and to 0.96x with 8
  candidates and bfloat16 chains, updates and candidates' Q, where the call alone took 0.79x
  (results/update_time_ddpl_fast/masac_peer_settings_n4_compile_weights*.md; thirty-fourth
  session). In bfloat16 a tanh critic rounds otherwise compiled (its activation is fused in
  float32); with the study's relu critic those runs came out bit for bit too. Off in the
  catalog: at its float32 VMAS and Ant settings, where the candidates' Q is a smaller share, a
  whole update took the same time (40.0 against 40.3 ms; 29.5 against 29.4 ms,
  results/update_time_compile_weights/), and the graph costs a compile.
- `compile_update` stays off, as for every agent in the catalog. It makes the critic's loss
  (its target actions drawn first), the actor's score-matching loss (`fit_loss`) and the
  temperature's and jitter's loss (`entropy_loss`) each one graph with its gradients and Adam
  steps. On top of `compile_chain_loop`, 2 resampled candidates, 5-step chains and the
  compiled denoiser it took ddpl to 0.96-1.10x BenchMARL MASAC's frames/s at MASAC's settings
  (five seeds, mean 1.02x, AMD EPYC Zen 3; 0.93-0.96x over three with the critic's loss alone
  compiled), and over twelve vmas_navigation study seeds that setting returned 1.22 against
  1.21 without it (p = 0.37). With 4 candidates as well (`n_candidates`, above; together
  `agent=ddpl_fast`) ddpl made 0.93-1.07x MASAC's frames/s with 4 agents (eight seeds, mean
  0.99x) and 1.23-1.40x with 2 (three seeds; 8 candidates 0.74-0.78x and 1.15x in those
  hours), and with half the states as well (`actor_batch_size`, above) 1.29-1.35x with 4
  (three seeds). Its backward rounds otherwise than eager's, its random draws come from the
  compiler's generator, and the catalog's results were made eagerly (results/speed.md).
`agent=ddpl_fast` (agents/ddpl_fast.yaml) is the catalog's ddpl with the seven cheap settings above:
`compile_chain_loop`, `compile_denoiser`, `compile_update`, `compile_weights`, `sample_steps` 5,
`n_candidates` 4 and `resampled_candidates` 2. It is a preset, not the default, because it learns
less: at the vmas_navigation study setting, run on one machine (AMD EPYC Zen 4) with the catalog, it
returned 1.212 over twenty-four seeds against the catalog's 1.294 (lower in 17, Wilcoxon p = 0.02).
Each setting above was judged on twelve seeds, several of them on an AMD EPYC Zen 3 against the
catalog's Zen 4 runs; compiled graphs round otherwise on another CPU, and the same preset returned
1.287 over twelve seeds there against 1.182 on the Zen 4, so twelve seeds and two machines resolve
differences of about 0.1 only (results/speed.md). Its 4 candidates cost most of what it loses: on
the Zen 4, with `n_candidates` 8 and bfloat16 chains, updates and candidates' Q (`chain_precision`,
`update_precision`, `weights_precision`) it returned 1.275 over the same twenty-four seeds (the
catalog 1.294, p = 0.48; the preset +0.063, p = 0.02) and made 0.94-1.14x MASAC's frames/s with 4
agents (four seeds, mean 1.01x; thirty-third session); bfloat16 products need a CPU with AVX512-BF16
or AMX. Since `compile_weights` joined the preset, that setting is `agent=ddpl_fast_bfloat16`
(agents/ddpl_fast_bfloat16.yaml): 0.96-1.30x with 4 agents (eight seeds, mean 1.08x, two under 1)
and 1.10-1.50x with 2 (four seeds); 6 candidates (1.225, p = 0.03 against the catalog) or 1
resampled candidate (1.183, p = 0.007) learned less (thirty-fourth session). `python -m
marl_diff.bench update` measures the ratio per family (results/update_time_*.md).
"""

from __future__ import annotations

import copy
import functools
import math
from dataclasses import dataclass

import torch

from marl_diff import precision
from marl_diff.agents.base import best_candidate, check_at_least, check_choices, resample
from marl_diff.agents.diffusion_actor import (
    CHAIN_PRECISIONS,
    DiffusionActorConfig,
    DiffusionActorCritic,
)
from marl_diff.buffer import Batch
from marl_diff.diffusion.entropy import knn_entropy, knn_log_distances
from marl_diff.envs.base import EnvSpec
from marl_diff.errors import ConfigError
from marl_diff.nn import compiler_available

CHOICES = {
    "target": ("mirror", "soft"),
    "weighting": ("softmax", "running"),
    "proposal": ("current", "lagged"),
    "action_selection": ("sample", "best_of_k"),
    "candidate_states": ("batch", "next"),
    "weights_critic": ("reduced", "first"),
    "weights_precision": CHAIN_PRECISIONS,
}


@dataclass
class DDPLConfig(DiffusionActorConfig):
    n_candidates: int = 16  # M candidates per state and agent
    # K > 0: the score-matching loss on K of the M candidates per state and agent, drawn with
    # replacement by their weights (importance resampling), each weighing 1/K; 0: on all M.
    resampled_candidates: int = 0
    target: str = "mirror"
    weighting: str = "running"
    clip: float = 3.0  # "running" weighting: clip of the standardised Q
    running_rate: float = 1e-3  # "running" weighting: update rate of the Q spread estimate
    alpha: float = 1.0  # the temperature (initial value when tuned)
    auto_alpha: bool = True
    alpha_lr: float = 3e-3
    target_entropy_scale: float = 0.9  # target entropy of agent i = -scale * act_dim_i
    jitter: bool = True  # Gaussian noise on the candidates, tuned toward the target entropy
    jitter_init: float = 0.1
    jitter_lr: float = 3e-3
    proposal: str = "current"
    lag_updates: int = 1000
    # "next": the candidates drawn at the batch's next states, ISSM's and the critic target's
    candidate_states: str = "batch"
    # the candidates' Q for the weights: "reduced" over the twin critic (min), "first": Q1 alone
    weights_critic: str = "reduced"
    # The matrix-product precision of the candidates' Q for the weights ("run": the run's own)
    weights_precision: str = "run"
    # The candidates' Q for the weights as one compiled graph (float32: the eager Q bit for bit)
    compile_weights: bool = False
    action_selection: str = "sample"
    best_of_k: int = 16


class DDPLAgent(DiffusionActorCritic):
    Config = DDPLConfig
    OTHERS_ACTIONS = (*DiffusionActorCritic.OTHERS_ACTIONS, "candidates")

    def __init__(self, config: DDPLConfig, spec: EnvSpec, device: torch.device):
        super().__init__(config, spec, device)
        check_choices(config, CHOICES)
        check_at_least(config, ("n_candidates", "best_of_k", "lag_updates"))
        check_at_least(config, ("resampled_candidates",), minimum=0)
        if config.alpha <= 0:
            raise ConfigError(f"agent.alpha must be positive, got {config.alpha}")
        if (config.auto_alpha or config.jitter or config.target == "soft") and (
            config.n_candidates < 2
        ):
            raise ConfigError(
                "agent.auto_alpha, agent.jitter and agent.target=soft need agent.n_candidates "
                ">= 2 (they use nearest-neighbour estimates over the candidates)"
            )
        if config.candidate_states == "next" and config.proposal == "lagged":
            raise ConfigError(
                "agent.candidate_states=next needs agent.proposal=current: its candidates are "
                "also the critic target's actions, which come from the current policy"
            )
        if config.jitter and config.jitter_init <= 0:
            raise ConfigError(f"agent.jitter_init must be positive, got {config.jitter_init}")
        if config.proposal == "lagged":
            self.old_policy = copy.deepcopy(self.policy).requires_grad_(False)
        self.log_alpha = torch.nn.Parameter(
            torch.full((spec.n_agents,), math.log(config.alpha)), requires_grad=config.auto_alpha
        )
        self.log_jitter = torch.nn.Parameter(
            torch.full((spec.n_agents,), math.log(config.jitter_init if config.jitter else 1.0)),
            requires_grad=config.jitter,
        )
        act_dims = torch.tensor(spec.act_dims, dtype=torch.float32)
        self.register_buffer("act_dims", act_dims)
        self.register_buffer("target_entropy", -config.target_entropy_scale * act_dims)
        self.register_buffer("q_spread", torch.zeros(spec.n_agents))  # 0: not yet measured
        # candidate_states=next: [M, B, N, A] drawn at the batch's next states within an update
        self.next_candidates: torch.Tensor | None = None
        self.to(device)
        self.setup_optimizers()
        self.optimizers["actor"] = self.adam(self.policy.parameters(), config.actor_lr)
        if config.auto_alpha:
            self.optimizers["alpha"] = self.adam([self.log_alpha], config.alpha_lr)
        if config.jitter:
            self.optimizers["jitter"] = self.adam([self.log_jitter], config.jitter_lr)

    # ---------------------------------------------------------------- acting
    @torch.no_grad()
    def act(self, obs: torch.Tensor, explore: bool, state: torch.Tensor | None = None):
        cfg = self.config
        if not (explore and cfg.action_selection == "best_of_k" and state is not None):
            return self.sample_policy(obs)
        candidates = self.candidates(obs, cfg.best_of_k)  # [K, B, N, A]
        q = self.q_each_agent(state, self.sample_policy(obs), candidates)  # [K, B, N]
        return best_candidate(candidates, q)

    # ---------------------------------------------------------------- ISSM
    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        """With `candidate_states=next`, an update that steps the actor first draws the
        candidates at the batch's next states; the critic's and the actor's steps share them."""
        if self.config.candidate_states == "next" and self.steps_actor:
            with torch.no_grad():
                self.next_candidates = self.candidates(batch.next_obs, self.config.n_candidates)
        try:
            return super().update(batch)
        finally:
            self.next_candidates = None

    def target_action(self, next_obs: torch.Tensor, next_state: torch.Tensor):
        """The policy's sample at next_obs, or the update's M candidates drawn there (no soft
        bonus either way)."""
        if self.next_candidates is None:
            return super().target_action(next_obs, next_state)
        return self.next_candidates, next_obs.new_zeros(next_obs.shape[:-1])

    def update_actor(self, batch: Batch) -> dict[str, torch.Tensor]:
        cfg = self.config
        batch = self.actor_batch(batch)
        proposal = self.old_policy if cfg.proposal == "lagged" else self.policy
        with torch.no_grad():
            if self.next_candidates is None:
                samples = self.candidates(batch.obs, cfg.n_candidates, proposal)  # [M, B, N, A]
            else:  # at the next states, where "replay" others act by their first candidates
                samples = self.next_candidates[:, : batch.obs.shape[0]]
                batch = batch._replace(
                    obs=batch.next_obs, state=batch.next_state, action=samples[0]
                )
            candidates = samples
            if cfg.jitter:
                noise = torch.randn_like(samples) * self.log_jitter.exp()[:, None]
                candidates = (samples + noise).clamp(-1.0, 1.0) * self.act_mask
            if cfg.others_actions == "candidates":
                base = None  # each joint candidate: the others play their own of that index
            elif cfg.others_actions == "replay":
                base = batch.action
            else:
                base = self.sample_policy(batch.obs)
            members = 1 if cfg.weights_critic == "first" else None
            q = self.candidates_q(batch.state, base, candidates, members)  # [M, B, N]
            # soft target: divide by the proposal's kNN density estimate
            inverse_density = (
                self.act_dims * knn_log_distances(candidates) if cfg.target == "soft" else None
            )
            weights = self.importance_weights(q, inverse_density)
        if cfg.resampled_candidates:
            fit = (resample(candidates, weights, cfg.resampled_candidates), batch.obs, None)
        else:
            fit = (candidates, batch.obs, weights)
        metrics = self.minimize("fit_loss", fit, "actor")

        ess = weights.sum(0).square() / weights.square().sum(0).clamp_min(1e-12)  # [B, N]
        metrics["issm/ess_fraction"] = (ess / cfg.n_candidates).mean()
        metrics["alpha/mean"] = self.log_alpha.exp().mean().detach()
        if cfg.n_candidates >= 2:
            entropy = knn_entropy(samples, self.act_dims).mean(0)  # [B, N] -> [N]
            metrics["policy/entropy"] = entropy.mean()
            tuned = [name for name in ("alpha", "jitter") if name in self.optimizers]
            if tuned:  # shortfall > 0: raise alpha and the jitter
                metrics.update(self.minimize("entropy_loss", self.target_entropy - entropy, *tuned))
            if cfg.jitter:
                metrics["issm/jitter"] = self.log_jitter.exp().mean().detach()
        if cfg.proposal == "lagged" and (self.updates + 1) % cfg.lag_updates == 0:
            self.old_policy.load_state_dict(self.policy.state_dict())
        return metrics

    def candidates_q(
        self,
        state: torch.Tensor,
        base: torch.Tensor | None,
        candidates: torch.Tensor,
        members: int | None,
    ) -> torch.Tensor:
        """Q_i at each agent's candidates [M, B, N] for the weights, the others playing `base`
        (`q_each_agent`) or, base None, their own candidates of the same index
        (`q_joint_candidates`); its products at `weights_precision`, float32 out. With
        `compile_weights` one compiled graph of fixed shapes (`_compiled`), built at the first
        actor update."""
        scope = precision.setting_scope(
            self.config.weights_precision, torch.device(self.device).type
        )
        key, name, args = (
            ("joint_candidates_q", "q_joint_candidates", ())
            if base is None
            else ("candidates_q", "q_each_agent", (base,))
        )
        q_function = getattr(self, name)
        if self.compiles_weights:
            q_function = functools.partial(self._compiled(key, getattr(type(self), name)), self)
        with scope:
            return q_function(state, *args, candidates, members=members).float()

    def q_joint_candidates(
        self, state: torch.Tensor, candidates: torch.Tensor, members: int | None = None
    ) -> torch.Tensor:
        """Q at each joint candidate, as every agent's Q_i: state [B, S], candidates [M, B, N,
        A] -> [M, B, N]. One critic row per candidate instead of N (the team critic; a
        per-agent critic gives each agent its own output at the same rows)."""
        q = self.critic.value(state, candidates, members)  # [M, B] ([M, B, N] per agent)
        return q if self.critic.per_agent else q.unsqueeze(-1).expand(*q.shape, self.spec.n_agents)

    @functools.cached_property
    def compiles_weights(self) -> bool:
        return self.config.compile_weights and compiler_available()

    def fit_loss(self, fit: tuple) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """ISSM's score-matching loss and its metrics. `fit` is (candidates [M or K, B, N, A],
        obs [B, N, D], weights [M, B, N]); weights None for resampled candidates, where each
        drawn one weighs 1/K. A loss of `minimize`, so `compile_update` makes it, its
        gradients and the actor's Adam step one graph."""
        fitted, obs, weights = fit
        dsm = self.policy.dsm_loss(fitted, obs)  # [M or K, B, N]
        per_state = dsm.mean(0) if weights is None else (weights * dsm).sum(0)
        loss = per_state.mean(0).sum()
        return loss, {"loss/actor": loss.detach()}

    def entropy_loss(self, shortfall: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The temperature's and the jitter's losses for each agent's entropy shortfall [N]
        (target minus the kNN estimate), summed: each term reaches only its own parameter, so
        one backward gives each the gradient of its own loss, and `minimize` steps both at
        once (one compiled graph with `compile_update`, not two backward passes and steps)."""
        cfg = self.config
        loss, metrics = shortfall.new_zeros(()), {}
        if cfg.auto_alpha:
            alpha_loss = -(self.log_alpha * shortfall).sum()
            metrics["loss/alpha"] = alpha_loss.detach()
            loss = loss + alpha_loss
        if cfg.jitter:
            loss = loss - (self.log_jitter * shortfall).sum()
        return loss, metrics

    def importance_weights(
        self, q: torch.Tensor, log_inverse_density: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Candidates' Q values [M, B, N] (and, for the soft target, their log inverse proposal
        density up to a constant) -> ISSM weights [M, B, N], summing to 1 over each state's M
        candidates.

        softmax: logits Q / alpha. running: Q minus its state's candidate mean, over the running
        mean spread of Q among a state's candidates, clipped to +-clip, then over alpha.
        """
        cfg = self.config
        if cfg.weighting == "running":
            centred = q - q.mean(0)
            spread = centred.square().mean((0, 1)).sqrt()  # [N]
            first = self.q_spread == 0
            self.q_spread.copy_(
                torch.where(first, spread, self.q_spread.lerp(spread, cfg.running_rate))
            )
            q = (centred / self.q_spread.clamp_min(1e-8)).clamp(-cfg.clip, cfg.clip)
        logits = q / self.log_alpha.exp().detach()
        if log_inverse_density is not None:
            logits = logits + log_inverse_density
        return torch.softmax(logits, dim=0)
