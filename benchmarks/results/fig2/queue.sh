#!/usr/bin/env bash
# Background queue of fig2 (maze) runs, paper protocol, 2 at a time, one torch thread each.
# Each job: condition rule hidden seed. Resumes a run folder that already exists.
cd /work/wt/run
job() {
  cond=$1 rule=$2 n=$3 seed=$4
  out=/work/sweeps/fig2-paper/$cond/seed$seed
  if [ -f "$out/config.json" ]; then res=--resume; else res=""; mkdir -p "$(dirname "$out")"; fi
  python train.py --env bpm/PlasticMaze-v0 --plasticity "$rule" --hidden-size "$n" --updates 3000 \
     --seed "$seed" --threads 1 --no-progress --no-tensorboard --checkpoint-every 50 --out "$out" $res \
     >> /work/sweeps/fig2-paper/$cond-seed$seed.log 2>&1
}
export -f job
printf '%s\n' \
 "hebbian-N101 hebbian 101 1" "simple-N100 simple 100 1" \
 "retroactive-N100 retroactive 100 0" "none-N139 none 139 0" \
 "hebbian-N101 hebbian 101 2" "simple-N100 simple 100 2" \
 "none-N100 none 100 0" "retroactive-N100 retroactive 100 1" \
 "none-N139 none 139 1" "none-N100 none 100 1" \
 | xargs -P 2 -L 1 bash -c 'job $0 $1 $2 $3'
