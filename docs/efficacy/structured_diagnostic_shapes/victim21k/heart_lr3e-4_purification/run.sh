# The passing cell's purification completed: DiffPure and IMPRESS beside JPEG 75 and Gaussian 0.05 (issue 17's list),
# for the best method (PhotoGuard; a study on a --subject folder follows up its best method only), 3 seeds, the
# attacker's rate 3e-4. OUT: the same study folder as ../heart_rates_generators/run.sh (its 3e-4 victims reused; the DiffPure
# and IMPRESS sets and victims are new): 679 s wall on 2 cores, two workers at one torch thread each. Written by
# 0.3.7 before its last two report commits (goal-line wording, grid labels); no figure depends on them.
set -e
DATA=${1:?DATA folder}; CACHE=${2:-cache}; OUT=${3:-heart}
export OMP_NUM_THREADS=1
udp-datasets evaluate --regime fewshot --subject $DATA/heart --corpus $DATA/corpus --corpus-mode whole --judge shape \
  --holdout-fraction 0.667 --seeds 0,1,2 --modes full --purifications jpeg75,noise0.05,diffpure,impress --sweep 4 \
  --methods photoguard,advdm --past-failed-controls --out $OUT --cache-dir $CACHE --workers 2 --finetune-lr 3e-4
