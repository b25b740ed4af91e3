#!/usr/bin/env bash
# Offline agents on Pendulum datasets collected here (results/offline/README.md says what each
# holds). Two jobs side by side, one torch thread each. Usage: bash results/offline/pendulum.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=results/offline/pendulum
export OMP_NUM_THREADS=1 MINARI_DATASETS_PATH=${MINARI_DATASETS_PATH:-$PWD/$OUT/minari}
mkdir -p "$OUT"

# 1. The expert: the Gaussian baseline, 4500 env steps, a checkpoint every 1500.
if [ ! -f "$OUT/expert/eval.json" ]; then
  python -m marl_diff.run scenario=pendulum agent=gaussian runner.total_steps=4500 \
    runner.batch_size=128 runner.eval_every=0 runner.checkpoint_every=1500 \
    runner.progress=false run_dir="$OUT/expert" device=cpu
fi
# 2. Datasets: medium = the final policy's evaluation actions; mixed = the three checkpoints
#    (after 1500, 3000, 4500 steps) with 10% of the steps' actions uniform random.
[ -d "$MINARI_DATASETS_PATH/local/pendulum-medium-v0" ] || python -m marl_diff.collect \
  run_dir="$OUT/expert" episodes=30 out=local/pendulum-medium-v0 device=cpu
[ -d "$MINARI_DATASETS_PATH/local/pendulum-mixed-v0" ] || python -m marl_diff.collect \
  run_dir="$OUT/expert" episodes=30 checkpoints=all random_fraction=0.1 \
  out=local/pendulum-mixed-v0 device=cpu

# 3. Offline runs: 10k updates, batch 256, [64, 64] networks everywhere (the cards' widths
#    are 256 to 3x256 and their budgets 1M updates: a GPU's), evaluation every 2000 updates.
SMALL="agent.actor_hidden=[64,64] agent.critic_hidden=[64,64]"
declare -A AGENT_ARGS=(
  [diffusion_bc]="agent.actor_hidden=[64,64]"
  [dtql]="$SMALL agent.bc_hidden=[64,64] agent.value_hidden=[64,64] agent.pretrain_updates=2000"
  [qensemble]="$SMALL agent.critic_members=16"
)
run() {  # dataset agent seed
  local dir="$OUT/runs/$1/$2/seed$3"
  [ -f "$dir/eval.json" ] && return 0
  rm -rf "$dir"
  python -m marl_diff.run scenario=pendulum agent="$2" runner=offline \
    runner.dataset="local/pendulum-$1-v0" runner.total_updates=10000 runner.eval_every=2000 \
    runner.eval_episodes=10 runner.log_every=1000 runner.progress=false seed="$3" \
    run_dir="$dir" device=cpu ${AGENT_ARGS[$2]} > "$dir.log" 2>&1 || { cat "$dir.log"; return 1; }
}
for data in mixed medium; do
  for agent in dtql qensemble diffusion_bc; do
    mkdir -p "$OUT/runs/$data/$agent"
    for seed in 0 1 2; do
      run "$data" "$agent" "$seed" &
      while [ "$(jobs -rp | wc -l)" -ge 2 ]; do wait -n; done
    done
  done
done
wait
for data in mixed medium; do
  python -m marl_diff.report curves runs="$OUT/runs/$data" out="$OUT/report_$data" > /dev/null
done
