#!/usr/bin/env bash
# Update cost on a GPU: the speed settings results/speed.md has measured on CPUs only, each
# against the Gaussian update in the same run, one table per scenario and setting (each names
# the command that made it), for MaMuJoCo Ant 2x4 and VMAS navigation with 2 agents:
#   defaults               the catalog's (ddpl and qvpo: bfloat16 products in the chains;
#                          ddpl, dacer and qvpo: the chains without gradient compiled and
#                          replayed from CUDA graphs; dacer: its whole denoiser compiled)
#   no_graphs              agent.graph_chains=false
#   float32_chains         agent.chain_precision=run
#   tf32                   matmul_precision=high (TF32 products everywhere)
#   adam                   vary=adam_impl:foreach,fused (each agent once per implementation)
#   compiled_denoiser      agent.compile_denoiser=true
#   eager                  agent.compile_chains=false agent.compile_denoiser=false
#                          agent.graph_chains=false
#   compile_update         agent.compile_update=true (each loss with its steps one compiled
#                          graph; last, being the least tried on a GPU)
# usage: bash results/gpu/update_cost.sh [OUT_DIR]   (default results/gpu)
# DEVICE, UPDATES and REPEATS override cuda, 10 and 7 (DEVICE=cpu UPDATES=1 REPEATS=1 runs the
# script itself through on a CPU in a few minutes).
set -euo pipefail
out=${1:-results/gpu}
mkdir -p "$out"
bench=(python -m marl_diff.bench update "device=${DEVICE:-cuda}" "updates=${UPDATES:-10}"
       "repeats=${REPEATS:-7}" agents=gaussian,ddpl,dacer,qvpo)
variants=(
  "defaults|"
  "no_graphs|agent.graph_chains=false"
  "float32_chains|agent.chain_precision=run"
  "tf32|matmul_precision=high"
  "adam|vary=adam_impl:foreach,fused"
  "compiled_denoiser|agent.compile_denoiser=true"
  "eager|agent.compile_chains=false agent.compile_denoiser=false agent.graph_chains=false"
  "compile_update|agent.compile_update=true"
)
for scenario in mamujoco_ant_2x4 "vmas_navigation scenario.n_agents=2"; do
  for variant in "${variants[@]}"; do
    # shellcheck disable=SC2086  # the scenario and the setting split into arguments
    "${bench[@]}" scenario=$scenario ${variant#*|} "out=$out/${scenario%% *}_${variant%%|*}.md"
  done
done
