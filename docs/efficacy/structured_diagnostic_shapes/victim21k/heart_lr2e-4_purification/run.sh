# The one rate where PhotoGuard reaches erasure 0.8 on `heart` (2e-4), its purification leg: JPEG 75 and Gaussian
# noise 0.05 on PhotoGuard (the best method), 3 seeds. OUT: the same study folder as ../heart_rates_generators/run.sh (the purified sets of the 3e-4
# follow-ups reused; the 2e-4 victims are new): 547 s wall on 2 cores, two workers at one torch thread each.
# Written by 0.3.7 before its grid-label commit (no figure depends on it).
set -e
DATA=${1:?DATA folder}; CACHE=${2:-cache}; OUT=${3:-heart}
export OMP_NUM_THREADS=1
udp-datasets evaluate --regime fewshot --subject $DATA/heart --corpus $DATA/corpus --corpus-mode whole --judge shape \
  --holdout-fraction 0.667 --seeds 0,1,2 --modes full --purifications jpeg75,noise0.05 --sweep none \
  --methods photoguard,advdm --past-failed-controls --out $OUT --cache-dir $CACHE --workers 2 --finetune-lr 2e-4
