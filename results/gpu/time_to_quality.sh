#!/usr/bin/env bash
# Time to quality on a GPU: the README's 100-episode time-to-quality command (BenchMARL's
# 2-agent navigation task, per-agent critics, 3-step returns, every evaluation on 100 episodes,
# time to 0.8, 0.9 and 1.0) for BenchMARL's MAPPO and marl_diff's ddpl, both sides on the GPU.
# On the CPU ddpl's update is bound by arithmetic, and ddpl takes 5.4-8.2x MAPPO's seconds to
# 0.8 on one torch thread per side, 4.6-6.7x on two, 1.8-4.4x on two with its actor every
# update on 2 resampled candidates, 0.70-1.58x (two six-seed runs, medians 1.13x and 1.08x)
# with the actor's rate 4e-2 at a quarter of the updates on top, and a median 0.92x over twelve
# seeds with the chains' loop compiled on top of that (results/speed.md; the loop's compiled
# chains are not measured on a GPU, where graph_chains replays them). On
# an H200 its update cost 0.80x a Gaussian update with graph_chains (results/gpu/README.md):
# there its update's thousands of candidate rows cost little.
# Run it in a device call of its own after lent_gpu.sh; one seed by default, to fit one call.
# usage: bash results/gpu/time_to_quality.sh OUT_DIR PEER_VENV [OVERRIDE ...]
#   OVERRIDEs go to marl_diff's side, e.g. agent.policy_delay=1 agent.resampled_candidates=2
#   agent.actor_lr=0.04 runner.utd_ratio=0.0625 (the CPU's best).
#   SEEDS (0), FRAMES (60000), DEVICE (cuda) and TTQ_S (540, the time limit) change it.
set -uo pipefail
out=${1:?OUT_DIR}
venv=${2:?PEER_VENV}
shift 2
mkdir -p "$out"
timeout "${TTQ_S:-540}" python -m marl_diff.bench peer agents=2 methods=mappo,ddpl \
  "seeds=${SEEDS:-0}" "frames=${FRAMES:-60000}" "device=${DEVICE:-cuda}" settings=own \
  runner.num_envs=16 runner.warmup_steps=2000 runner.utd_ratio=0.25 runner.batch_size=256 \
  'agent.actor_hidden=[128,128]' 'agent.critic_hidden=[64,64]' agent.actor_lr=0.001 \
  agent.critic_lr=0.001 agent.critic_rewards=per_agent agent.n_step=3 eval_episodes=100 \
  threshold=0.8,0.9,1.0 "venv=$venv" "runs=$out/ttq_runs" "$@" \
  "out=$out/peer_time_to_quality_100_episodes_cuda.md" || echo "time to quality: exit $?"
