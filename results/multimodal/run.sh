#!/usr/bin/env bash
# Multimodality study: ddiffpg vs ddpl vs dacer vs gaussian, from scratch, at one budget per
# scenario ([64, 64] networks for every agent, 4 env copies, one update per env step):
#   multigoal (4 equal goals): 4000 env steps, seeds in MULTIGOAL_SEEDS (default 0 1 2);
#   pointmaze_two_routes / pointmaze_two_goals: 20k env steps, seeds in MAZE_SEEDS (default 0 1 2).
# Every evaluation samples each agent's policy (runner.eval_mode=sample), so the Gaussian is not
# held to the single route its mean takes. ddiffpg clusters every 1000 (multigoal) or 2000
# (mazes) env steps, and learns mode embeddings so that `evaluate modes=all` can ask it for
# each mode it found. Restartable: finished runs are skipped. Two jobs side by side (LANES), one
# torch thread each. Usage: bash results/multimodal/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=results/multimodal
export OMP_NUM_THREADS=1
SMALL="agent.actor_hidden=[64,64] agent.critic_hidden=[64,64] runner.num_envs=4 runner.progress=false device=cpu runner.eval_mode=sample"
declare -A BUDGET=(
  [multigoal]="runner.total_steps=4000 runner.warmup_steps=500 runner.eval_every=1000 runner.eval_episodes=100 runner.eval_num_envs=100"
  [pointmaze_two_routes]="runner.total_steps=20000 runner.warmup_steps=1000 runner.eval_every=2500 runner.eval_episodes=50 runner.eval_num_envs=50"
  [pointmaze_two_goals]="runner.total_steps=20000 runner.warmup_steps=1000 runner.eval_every=2500 runner.eval_episodes=50 runner.eval_num_envs=50"
)
declare -A DDIFFPG=(
  [multigoal]="agent.recluster_every=1000 agent.mode_embeddings=true"
  [pointmaze_two_routes]="agent.recluster_every=2000 agent.mode_embeddings=true"
  [pointmaze_two_goals]="agent.recluster_every=2000 agent.mode_embeddings=true"
)
run() {  # scenario agent seed
  local dir="$OUT/runs/$1/$2/seed$3"
  [ -f "$dir/eval.json" ] && return 0
  rm -rf "$dir" && mkdir -p "$(dirname "$dir")"
  local extra=""
  [ "$2" = ddiffpg ] && extra="${DDIFFPG[$1]}"
  python -m marl_diff.run scenario="$1" agent="$2" $SMALL ${BUDGET[$1]} $extra seed="$3" \
    run_dir="$dir" > "$dir.log" 2>&1 || { tail -20 "$dir.log"; return 1; }
  if [ "$2" = ddiffpg ]; then  # success and routes or goals when each found mode is asked for
    python -m marl_diff.evaluate run_dir="$dir" modes=all device=cpu >> "$dir.log" 2>&1
  fi
}
# the slowest first, so that the two lanes finish together
JOBS=()
for seed in ${MAZE_SEEDS:-0 1 2}; do
  for scenario in pointmaze_two_routes pointmaze_two_goals; do JOBS+=("$scenario ddiffpg $seed"); done
done
for seed in ${MAZE_SEEDS:-0 1 2}; do
  for scenario in pointmaze_two_routes pointmaze_two_goals; do
    for agent in dacer ddpl gaussian; do JOBS+=("$scenario $agent $seed"); done
  done
done
for seed in ${MULTIGOAL_SEEDS:-0 1 2}; do
  for agent in ddiffpg ddpl dacer gaussian; do JOBS+=("multigoal $agent $seed"); done
done
for job in "${JOBS[@]}"; do
  run $job &
  while [ "$(jobs -rp | wc -l)" -ge "${LANES:-2}" ]; do wait -n; done
done
wait
python -m marl_diff.report modes runs="$OUT/runs" out="$OUT/modes" > /dev/null
python -m marl_diff.report curves runs="$OUT/runs/multigoal" out="$OUT/multigoal_curves" > /dev/null
for maze in pointmaze_two_routes pointmaze_two_goals; do
  python -m marl_diff.report curves runs="$OUT/runs/$maze" metric=eval/success_rate \
    out="$OUT/${maze}_curves" > /dev/null
done
for seed in 0 2; do  # seed 2: the one where ddiffpg took both routes of pointmaze_two_routes
  suffix=$([ "$seed" = 0 ] || echo "_seed$seed")
  python -m marl_diff.report trajectories runs="$OUT/runs" seed="$seed" episodes=20 \
    out="$OUT/trajectories$suffix" > /dev/null
done
