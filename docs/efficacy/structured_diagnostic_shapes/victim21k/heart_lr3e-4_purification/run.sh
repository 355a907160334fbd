# The passing cell's purification completed (issue 17's list: JPEG 75, Gaussian 0.05, DiffPure, IMPRESS) on the best
# method (PhotoGuard; a study on a --subject folder follows up its best method only), `heart`, the attacker's rate
# 3e-4, 3 seeds; DiffPure from t* = 300 (the default), 200 and 100 (0.3.7's diffpureT: at 300 it purifies the thin
# heart out of the clean images too, and nothing is measured against them). OUT: the same study folder as
# ../heart_rates_generators/run.sh (its 3e-4 victims reused). Run twice: first without diffpure200 / diffpure100
# (679 s wall), then as below (634 s more), on 2 cores, two workers at one torch thread each.
# report.md / report.json were written again from the cache by 0.3.7's final code (the purification table's
# (n/3) marks); their Timings line is that re-scoring's (129 s). No figure changed.
set -e
DATA=${1:?DATA folder}; CACHE=${2:-cache}; OUT=${3:-heart}
export OMP_NUM_THREADS=1
udp-datasets evaluate --regime fewshot --subject $DATA/heart --corpus $DATA/corpus --corpus-mode whole --judge shape \
  --holdout-fraction 0.667 --seeds 0,1,2 --modes full --purifications jpeg75,noise0.05,diffpure,diffpure200,diffpure100,impress \
  --sweep 4 --methods photoguard,advdm --past-failed-controls --out $OUT --cache-dir $CACHE --workers 2 --finetune-lr 3e-4
