#!/usr/bin/env bash
# Offline agents on a two-agent VMAS navigation dataset collected here (results/offline/README.md
# says what it holds). Two jobs side by side, one torch thread each.
# Usage: bash results/offline/vmas_navigation.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=results/offline/vmas_navigation
export OMP_NUM_THREADS=1 MINARI_DATASETS_PATH=${MINARI_DATASETS_PATH:-$PWD/$OUT/minari}
SCENARIO="scenario=vmas_navigation scenario.n_agents=2 scenario.max_steps=50"
mkdir -p "$OUT"

# 1. The expert team: Gaussian, [64, 64] networks, 20k env steps over 16 envs, a checkpoint
#    every 5k steps, all four kept.
if [ ! -f "$OUT/expert/eval.json" ]; then
  python -m marl_diff.run $SCENARIO agent=gaussian runner.total_steps=20000 runner.num_envs=16 \
    runner.warmup_steps=2000 runner.batch_size=256 runner.eval_every=0 \
    runner.checkpoint_every=5000 runner.keep_checkpoints=4 agent.actor_hidden=[64,64] \
    agent.critic_hidden=[64,64] runner.progress=false run_dir="$OUT/expert" device=cpu
fi
# 2. The dataset: 200 episodes (10k joint transitions) split over the four checkpoints, 30% of
#    the steps' joint actions uniform random.
[ -d "$MINARI_DATASETS_PATH/local/navigation2-mixed-v0" ] || python -m marl_diff.collect \
  run_dir="$OUT/expert" episodes=200 num_envs=50 checkpoints=all random_fraction=0.3 \
  out=local/navigation2-mixed-v0 device=cpu

# 3. Offline runs: 10k updates, [64, 64] networks (dtql pretrains 2000 of them; qensemble has 16
#    critic members), 32 evaluation episodes every 2000 updates, seeds 0, 1, 2.
SMALL="agent.actor_hidden=[64,64] agent.critic_hidden=[64,64]"
declare -A AGENT_ARGS=(
  [diffusion_bc]="agent.actor_hidden=[64,64]"
  [dtql]="$SMALL agent.bc_hidden=[64,64] agent.value_hidden=[64,64] agent.pretrain_updates=2000 agent.critic_layer_norm=true"
  [qensemble]="$SMALL agent.critic_members=16"
)
run() {  # agent seed
  local dir="$OUT/runs/$1/seed$2"
  [ -f "$dir/eval.json" ] && return 0
  rm -rf "$dir"
  python -m marl_diff.run $SCENARIO agent="$1" runner=offline \
    runner.dataset=local/navigation2-mixed-v0 runner.total_updates=10000 runner.eval_every=2000 \
    runner.eval_episodes=32 runner.eval_num_envs=32 runner.log_every=1000 runner.progress=false \
    seed="$2" run_dir="$dir" device=cpu ${AGENT_ARGS[$1]} > "$dir.log" 2>&1 || { cat "$dir.log"; return 1; }
}
for agent in dtql qensemble diffusion_bc; do
  mkdir -p "$OUT/runs/$agent"
  for seed in 0 1 2; do
    run "$agent" "$seed" &
    while [ "$(jobs -rp | wc -l)" -ge "${LANES:-2}" ]; do wait -n; done
  done
done
wait
python -m marl_diff.report curves runs="$OUT/runs" out="$OUT/report" > /dev/null
