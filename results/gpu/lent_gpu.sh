#!/usr/bin/env bash
# What to measure when a GPU is lent for minutes, most wanted first, each step under its own
# time limit so that a short lease still brings back the steps that finished:
#   0. the tests that need a GPU (tests/test_cuda_graphs.py: replayed chains against eager;
#      tests/test_compile_update.py: the compiled Gaussian and ddpl updates against eager, in
#      float32 and with bfloat16 losses);
#   1. the peer benchmark on the GPU (BenchMARL's MASAC, marl_diff's gaussian and ddpl on VMAS
#      navigation with 2 agents, MASAC's settings, both sides on the GPU): the target
#      "ddpl at least 1x MASAC's frames/s" is a GPU target (results/speed.md);
#   2. the Gaussian's update at MASAC's settings, eager and with `agent.compile_update=true`
#      (the gaussian's 2x MASAC target: on a GPU its update is launch-bound), then compiled in
#      float32 and in mixed precision (`agent.update_precision=bfloat16`);
#   3. the update-cost tables of update_cost.sh, eager first (no compile time), then the
#      catalog's defaults (chains compiled and replayed from CUDA graphs), then those with
#      bfloat16 chains (`agent.chain_precision=bfloat16`, not measured on a GPU yet), VMAS
#      navigation before MaMuJoCo Ant.
# usage: bash results/gpu/lent_gpu.sh OUT_DIR PEER_VENV
#   PEER_VENV: a venv whose bin/python imports benchmarl 1.5.2 (`bench peer venv=`).
# FRAMES (12000: 2 BenchMARL iterations) sets the peer budget; PEER_S, COMPILE_S and TABLE_S
# (330, 180, 90) the time limits of the peer step, of step 2 and of each table. On an H200
# (results/gpu/README.md) the peer step took about 250 s at 12000 frames (MASAC 77 s, ddpl
# 83 s, the gaussian about 55 s, reading BenchMARL's defaults 37 s), each table 30-75 s. The
# whole script can run past one device call's 600 s: what finished by then comes back.
set -uo pipefail
out=${1:?OUT_DIR}
venv=${2:?PEER_VENV}
mkdir -p "$out"
timeout 240 python -m pytest -q -p no:cacheprovider tests/test_cuda_graphs.py tests/test_compile_update.py \
  >"$out/pytest_cuda.txt" 2>&1 || echo "GPU tests: exit $? (see $out/pytest_cuda.txt)"
timeout "${PEER_S:-330}" python -m marl_diff.bench peer device=cuda agents=2 \
  methods=masac,gaussian,ddpl "frames=${FRAMES:-12000}" "venv=$venv" "runs=$out/peer_runs" \
  "out=$out/peer_cuda.md" || echo "peer: exit $?"
masac_nets=(batch_size=128 "agent.actor_hidden=[256,256]" "agent.critic_hidden=[256,256]"
            agent.critic_activation=tanh agent.actor_activation=tanh agent.share_parameters=true
            agent.others_actions=policy agent.grad_clip=5.0 agent.init_alpha=1.0)
timeout "${COMPILE_S:-180}" python -m marl_diff.bench update device=cuda updates=50 repeats=7 \
  agents=gaussian scenario=vmas_navigation scenario.n_agents=2 "${masac_nets[@]}" \
  vary=compile_update:false,true "out=$out/vmas_navigation_gaussian_compile_update.md" \
  >/dev/null || echo "gaussian compile_update: exit $?"
timeout "${COMPILE_S:-180}" python -m marl_diff.bench update device=cuda updates=50 repeats=7 \
  agents=gaussian scenario=vmas_navigation scenario.n_agents=2 "${masac_nets[@]}" \
  agent.compile_update=true vary=update_precision:run,bfloat16 \
  "out=$out/vmas_navigation_gaussian_bfloat16_updates.md" \
  >/dev/null || echo "gaussian update_precision: exit $?"
bench=(python -m marl_diff.bench update device=cuda updates=10 repeats=7
       agents=gaussian,ddpl,dacer,qvpo)
variants=(
  "eager|agent.compile_chains=false agent.compile_denoiser=false agent.graph_chains=false"
  "defaults|"
  "bfloat16_chains|agent.chain_precision=bfloat16"
)
for variant in "${variants[@]}"; do
  for scenario in "vmas_navigation scenario.n_agents=2" mamujoco_ant_2x4; do
    # shellcheck disable=SC2086  # the scenario and the setting split into arguments
    timeout "${TABLE_S:-90}" "${bench[@]}" scenario=$scenario ${variant#*|} \
      "out=$out/${scenario%% *}_${variant%%|*}.md" >/dev/null || echo "${scenario%% *} ${variant%%|*}: exit $?"
  done
done
