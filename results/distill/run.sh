#!/usr/bin/env bash
# Specialist-to-generalist distillation study (results/distill/README.md): three tasks of
# different sizes, experts trained here, then `marl_diff.distill` at 100, 1000 and 10000 paired
# samples per task, seeds 0 1 2 (SEEDS), each run giving the specialists, the distilled
# generalist and the paired-only generalist. Restartable: finished experts and runs are kept,
# an interrupted distillation resumes after its last finished stage. LANES jobs side by side,
# one torch thread each. Usage: bash results/distill/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=results/distill
export OMP_NUM_THREADS=1
mkdir -p "$OUT/experts" "$OUT/runs"
SMALL="agent.actor_hidden=[64,64] agent.critic_hidden=[64,64] agent.actor_lr=0.001 agent.critic_lr=0.001"
COMMON="runner.eval_every=0 runner.progress=false device=cpu resume=auto"

# 1. The experts (seed 0): the Gaussian baseline on pendulum (1 agent, 3-d observation, 1-d
#    action) and on MuJoCo Reacher (1 agent, 10-d, 2-d); ddpl on VMAS navigation with 2 agents
#    (18-d, 2-d each), at the settings of results/study/ddpl_vs_gaussian.sh.
python -m marl_diff.run scenario=pendulum agent=gaussian runner.total_steps=8000 \
  runner.warmup_steps=1000 runner.batch_size=128 $SMALL $COMMON run_dir=$OUT/experts/pendulum
python -m marl_diff.run scenario=gymnasium scenario.env_id=Reacher-v5 agent=gaussian \
  runner.total_steps=20000 runner.warmup_steps=2000 runner.batch_size=256 $SMALL $COMMON \
  run_dir=$OUT/experts/reacher
python -m marl_diff.run scenario=vmas_navigation scenario.n_agents=2 scenario.max_steps=50 \
  agent=ddpl agent.actor_hidden=[128,128] agent.critic_hidden=[64,64] agent.actor_lr=0.001 \
  agent.critic_lr=0.001 agent.diffusion_steps=10 agent.n_candidates=8 runner.total_steps=24000 \
  runner.num_envs=16 runner.warmup_steps=2000 runner.utd_ratio=0.25 runner.batch_size=256 \
  $COMMON run_dir=$OUT/experts/navigation

# 2. The distillations, the catalog entry distillations/pendulum_reacher_navigation.yaml: 50k
#    unlabeled states per task from the experts' rollouts; specialists [64, 64] and the
#    generalist [256, 256, 256], 6000 updates each of 128 samples per task.
run() {  # paired seed
  local dir="$OUT/runs/paired$1/seed$2"
  mkdir -p "$(dirname "$dir")"
  python -m marl_diff.distill study=pendulum_reacher_navigation paired="$1" seed="$2" \
    progress=false device=cpu run_dir="$dir" > "$dir.log" 2>&1 || { tail -20 "$dir.log"; return 1; }
}
for seed in ${SEEDS:-0 1 2}; do
  for paired in 100 1000 10000; do
    run "$paired" "$seed" &
    while [ "$(jobs -rp | wc -l)" -ge "${LANES:-2}" ]; do wait -n; done
  done
done
wait
python -m marl_diff.report distill runs=$OUT/runs out=$OUT/report > /dev/null
