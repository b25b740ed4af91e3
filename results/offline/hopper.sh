#!/usr/bin/env bash
# Offline agents on Hopper-v5 datasets collected here (results/offline/README.md says what each
# holds). Two jobs side by side, one torch thread each. Usage: bash results/offline/hopper.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=results/offline/hopper
export OMP_NUM_THREADS=1 MINARI_DATASETS_PATH=${MINARI_DATASETS_PATH:-$PWD/$OUT/minari}
mkdir -p "$OUT"

# 1. The expert: the Gaussian baseline at catalog widths, 120k env steps (4 envs, one update
#    per 2 env steps), a checkpoint every 40k steps, all three kept.
if [ ! -f "$OUT/expert/eval.json" ]; then
  python -m marl_diff.run scenario=hopper agent=gaussian runner.total_steps=120000 \
    runner.utd_ratio=0.5 runner.warmup_steps=5000 runner.eval_every=20000 \
    runner.eval_episodes=5 runner.checkpoint_every=40000 runner.keep_checkpoints=3 \
    runner.progress=false run_dir="$OUT/expert" device=cpu
fi
# 2. Datasets, the policies' own sampled actions (explore=true, as D4RL's SAC data):
#    medium = the final (120k-step) policy; medium-replay = the 40k-, 80k- and 120k-step
#    policies, 50 episodes each, 10% of the steps' actions uniform random.
[ -d "$MINARI_DATASETS_PATH/local/hopper-medium-v0" ] || python -m marl_diff.collect \
  run_dir="$OUT/expert" episodes=100 explore=true out=local/hopper-medium-v0 device=cpu
[ -d "$MINARI_DATASETS_PATH/local/hopper-medium-replay-v0" ] || python -m marl_diff.collect \
  run_dir="$OUT/expert" episodes=150 explore=true checkpoints=all random_fraction=0.1 \
  out=local/hopper-medium-replay-v0 device=cpu

# 3. Offline runs: 10k updates, batch 256, [128, 128] networks everywhere (the cards' are 256
#    to 4x256 wide and train 1M updates, a GPU's budget), dtql with 2000 pretraining updates
#    (card: 50k), qensemble with 16 critic members (card: 64); 5 evaluation episodes every
#    2000 updates; seeds 0, 1, 2.
W="[128,128]"
declare -A AGENT_ARGS=(
  [diffusion_bc]="agent.actor_hidden=$W"
  [dtql]="agent.actor_hidden=$W agent.critic_hidden=$W agent.bc_hidden=$W agent.value_hidden=$W agent.pretrain_updates=2000 agent.critic_layer_norm=true"
  [qensemble]="agent.actor_hidden=$W agent.critic_hidden=$W agent.critic_members=16"
)
run() {  # dataset agent seed
  local dir="$OUT/runs/$1/$2/seed$3"
  [ -f "$dir/eval.json" ] && return 0
  rm -rf "$dir"
  python -m marl_diff.run scenario=hopper agent="$2" runner=offline \
    runner.dataset="local/hopper-$1-v0" runner.total_updates=10000 runner.eval_every=2000 \
    runner.eval_episodes=5 runner.eval_num_envs=5 runner.log_every=1000 runner.progress=false \
    seed="$3" run_dir="$dir" device=cpu ${AGENT_ARGS[$2]} > "$dir.log" 2>&1 || { cat "$dir.log"; return 1; }
}
for seed in 0 1 2; do
  for data in medium medium-replay; do
    for agent in dtql qensemble diffusion_bc; do
      mkdir -p "$OUT/runs/$data/$agent"
      run "$data" "$agent" "$seed" &
      while [ "$(jobs -rp | wc -l)" -ge "${LANES:-2}" ]; do wait -n; done
    done
  done
done
wait
for data in medium medium-replay; do
  python -m marl_diff.report curves runs="$OUT/runs/$data" metric=eval/normalized_score \
    out="$OUT/report_$data" > /dev/null
done
