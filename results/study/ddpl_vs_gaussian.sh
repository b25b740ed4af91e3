#!/usr/bin/env bash
# Short-budget learning curves, ddpl vs gaussian, 3 seeds, on vmas_navigation (2 agents) and
# mamujoco_ant_2x4, sized to about an hour on a 2-core CPU (the two scenarios run side by side,
# one torch thread each). Both agents share the critic, runner and budget; the diffusion
# policy uses T=10 and M=8 candidates (the catalog's MuJoCo defaults, T=20 with 3x256
# denoisers, cost several times more per update; see results/update_time_*.md).
# Then: python -m marl_diff.report curves runs=results/runs/study/vmas_navigation out=results/study/vmas_navigation
#       python -m marl_diff.report curves runs=results/runs/study/mamujoco_ant_2x4 out=results/study/mamujoco_ant_2x4
set -euo pipefail
export OMP_NUM_THREADS=1
NETS="agent.actor_hidden=[128,128] agent.critic_hidden=[64,64] agent.actor_lr=0.001 agent.critic_lr=0.001"
DDPL="agent.diffusion_steps=10 agent.n_candidates=8"
NAV="scenario=vmas_navigation scenario.n_agents=2 scenario.max_steps=50 runner.total_steps=24000
     runner.num_envs=16 runner.warmup_steps=2000 runner.utd_ratio=0.25 runner.batch_size=256
     runner.eval_every=2000 runner.eval_episodes=32 runner.eval_num_envs=32 runner.log_every=2000"
ANT="scenario=mamujoco_ant_2x4 runner.total_steps=30000 runner.num_envs=4 runner.warmup_steps=5000
     runner.utd_ratio=0.25 runner.batch_size=256 runner.eval_every=5000 runner.eval_episodes=4
     runner.eval_num_envs=4 runner.log_every=2500"
sweep() {  # scenario-args agent extra-args...
  local args=$1 agent=$2 name; shift 2
  name=$(echo "$args" | sed -n 's/.*scenario=\([a-z0-9_]*\).*/\1/p')
  python -m marl_diff.run -m $args agent=$agent seed=0,1,2 $NETS "$@" runner.progress=false \
    "run_dir=results/runs/study/$name/$agent/seed\${seed}"
}
AGENTS=${*:-gaussian ddpl}  # e.g. `bash ddpl_vs_gaussian.sh ddpl` reruns one agent
for scenario in "$NAV" "$ANT"; do
  (for agent in $AGENTS; do
     if [ "$agent" = ddpl ]; then sweep "$scenario" ddpl $DDPL; else sweep "$scenario" "$agent"; fi
   done) &
done
wait
