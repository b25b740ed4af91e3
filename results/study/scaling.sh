#!/usr/bin/env bash
# The committed scaling studies: gaussian vs ddpl against the agent count, 3 seeds each, through
# the local launcher (2 runs at a time, one torch thread each), on a 2-core CPU:
# vmas_navigation N = 1, 2, 4, 8 (18-63 min, with the machine's speed) and multigoal N = 1, 2, 3
# (about 85 min, partly with other jobs on the CPU), then a small sweep through a local Ray
# instance (under a minute). Invoked again, each study keeps its finished runs and resumes
# interrupted ones. Tables and plots: results/study/scaling_*/.
set -euo pipefail
export OMP_NUM_THREADS=1
NETS="agent.actor_hidden=[128,128] agent.critic_hidden=[64,64] agent.actor_lr=0.001 agent.critic_lr=0.001"
python -m marl_diff.study scaling scenario=vmas_navigation agents=gaussian,ddpl n_agents=1,2,4,8 \
  seeds=0,1,2 workers=2 threshold=1.0 scenario.max_steps=50 runner.total_steps=12000 \
  runner.num_envs=16 runner.warmup_steps=2000 runner.utd_ratio=0.25 runner.batch_size=256 \
  runner.eval_every=2000 runner.eval_episodes=32 runner.eval_num_envs=32 runner.log_every=1000 $NETS
# multigoal: the learning tests' setting (every agent samples when evaluated), 6000 steps; ddpl
# keeps the scenario's own defaults and gets T=10 through agent_defaults (a ddpl-only key)
python -m marl_diff.study scaling scenario=multigoal agents=gaussian,ddpl n_agents=1,2,3 \
  seeds=0,1,2 workers=2 runner.total_steps=6000 runner.batch_size=128 runner.eval_every=1000 \
  runner.eval_episodes=100 runner.eval_num_envs=100 runner.eval_mode=sample \
  'agent.actor_hidden=[64,64]' 'agent.critic_hidden=[64,64]' agent.actor_lr=0.001 \
  agent.critic_lr=0.001 scenario.agent_defaults.ddpl.diffusion_steps=10
python -m marl_diff.study scaling scenario=multigoal agents=gaussian n_agents=1,2 seeds=0 \
  launcher=ray workers=2 out=results/study/ray_multigoal runner.total_steps=1000 runner.warmup_steps=200 \
  runner.eval_every=500 runner.eval_episodes=20 runner.eval_num_envs=20 \
  'agent.actor_hidden=[64,64]' 'agent.critic_hidden=[64,64]'
