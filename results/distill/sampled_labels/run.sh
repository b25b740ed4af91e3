#!/usr/bin/env bash
# Distillation with labels drawn from the expert's policy (results/distill/README.md, "Sampled
# labels"): one task, VMAS navigation with 1 agent, its Gaussian expert trained here (seed 0),
# then `marl_diff.distill` at 16, 32, 64, 128 and 256 paired samples, seeds 0 1 2 (SEEDS), with
# the expert's draws as labels (expert_mode=sample) and, to compare, its mean actions
# (expert_mode=default); then the three-task study of distillations/sampled_labels_three_tasks.yaml
# (needs results/distill/run.sh's experts). Restartable: finished runs are kept. LANES jobs side
# by side, one torch thread each. Usage: bash results/distill/sampled_labels/run.sh
set -euo pipefail
cd "$(dirname "$0")/../../.."
OUT=results/distill/sampled_labels
export OMP_NUM_THREADS=1
mkdir -p "$OUT/runs"

# 1. The expert: the Gaussian baseline, [64, 64] networks, 8000 env steps (about a minute).
python -m marl_diff.run scenario=vmas_navigation scenario.n_agents=1 scenario.max_steps=50 \
  agent=gaussian agent.actor_hidden=[64,64] agent.critic_hidden=[64,64] agent.actor_lr=0.001 \
  agent.critic_lr=0.001 runner.total_steps=8000 runner.num_envs=16 runner.warmup_steps=1000 \
  runner.batch_size=256 runner.utd_ratio=0.5 runner.eval_every=0 runner.progress=false \
  device=cpu resume=auto run_dir=$OUT/expert

distil() {  # run_dir, then the distillation's settings
  local dir="$1"; shift
  mkdir -p "$(dirname "$dir")"
  python -m marl_diff.distill "$@" progress=false device=cpu run_dir="$dir" > "$dir.log" 2>&1 \
    || { tail -20 "$dir.log"; return 1; }
}
lane() {  # run a command in the background, at most LANES at a time
  "$@" &
  while [ "$(jobs -rp | wc -l)" -ge "${LANES:-2}" ]; do wait -n; done
}

# 2. The expert alone: 5000 unlabeled states from its rollouts, [16, 16] specialists and a
#    [256, 256, 256] generalist, 1500 updates of 128 samples each, 32 evaluation episodes.
ALONE="tasks=[$OUT/expert] unlabeled=5000 specialist_hidden=[16,16] specialist_updates=1500
  generalist_hidden=[256,256,256] generalist_updates=1500 batch_size=128 eval_episodes=32
  num_envs=32"
for mode in sample default; do
  for seed in ${SEEDS:-0 1 2}; do
    for paired in 16 32 64 128 256; do
      lane distil "$OUT/runs/$mode/paired$paired/seed$seed" $ALONE expert_mode=$mode \
        paired=$paired seed=$seed
    done
  done
done
wait

# 3. Across environments, sampled labels: this navigation expert with the Pendulum and Reacher
#    experts of results/distill/run.sh (its step 1 first), the catalog entry
#    distillations/sampled_labels_three_tasks.yaml, at 32, 64 and 128 paired samples per task.
for task in pendulum reacher; do
  [ -d results/distill/experts/$task ] || { echo "run results/distill/run.sh first: its $task expert is missing"; exit 1; }
done
for seed in ${SEEDS:-0 1 2}; do
  for paired in 32 64 128; do
    lane distil "$OUT/runs/three_tasks/paired$paired/seed$seed" \
      study=sampled_labels_three_tasks paired=$paired seed=$seed
  done
done
wait
for runs in sample default three_tasks; do
  python -m marl_diff.report distill runs=$OUT/runs/$runs out=$OUT/report_$runs > /dev/null
done
