#!/usr/bin/env bash
# Short-budget learning curves on Gymnasium Hopper-v5 (N=1): gaussian, ddpl, dacer and qvpo,
# 3 seeds each, the same runner budget, network widths, learning rates and T for all, sized to
# about an hour on a 2-core CPU (two runs side by side, one torch thread each).
# Budget: 25k env steps, 1k random warm-up steps, 4 envs, one update per 4 env steps: 6k
# gradient updates of batch 256 per run; 5 evaluation episodes every 2.5k steps.
# Shared: 2x64 actors (diffusion denoisers 2x64 mish), 2x128 critics, lr 3e-4, T=10 diffusion
# steps. Everything else is each agent's catalog default (agents/*.yaml): qvpo keeps its 64
# samples per state, ddpl uses M=8 candidates. dacer runs twice: at its card's reward scale 0.2
# and at 1.0 ("dacer_rs1"), because 0.2 learned pendulum too slowly in a short budget.
# QVPO costs most (64 samples per state through the chain and the critic), so its seeds are
# split over the two lanes.
# Then: python -m marl_diff.report curves runs=results/runs/study/hopper group=folder out=results/study/hopper
set -euo pipefail
export OMP_NUM_THREADS=1
COMMON="scenario=hopper runner=mujoco runner.total_steps=25000 runner.num_envs=4
  runner.warmup_steps=1000 runner.utd_ratio=0.25 runner.batch_size=256 runner.eval_every=2500
  runner.eval_episodes=5 runner.eval_num_envs=5 runner.log_every=2500 runner.checkpoint_every=25000
  runner.progress=false agent.actor_hidden=[64,64] agent.critic_hidden=[128,128]
  agent.actor_lr=0.0003 agent.critic_lr=0.0003"
T="agent.diffusion_steps=10"
sweep() {  # folder seeds agent-args...
  local folder=$1 seeds=$2; shift 2
  python -m marl_diff.run -m $COMMON seed=$seeds "$@" \
    "run_dir=results/runs/study/hopper/$folder/seed\${seed}"
}
(sweep qvpo 0,1 agent=qvpo $T) &
(sweep qvpo 2 agent=qvpo $T
 sweep gaussian 0,1,2 agent=gaussian
 sweep ddpl 0,1,2 agent=ddpl $T agent.n_candidates=8
 sweep dacer 0,1,2 agent=dacer $T
 sweep dacer_rs1 0,1,2 agent=dacer $T agent.reward_scale=1.0) &
wait
