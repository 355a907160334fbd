# Run by 0.3.8 over the cached victims of ../heart_lr3e-4_purification/ (scoring only): 2:29 wall.
# `heart` at 3e-4 (pur4_run.sh's study: its victims cached) scored by 0.3.8's two shape judges.
set -e
DATA=${1:?DATA folder}; CACHE=${2:-cache}; OUT=${3:-heart}
export OMP_NUM_THREADS=1
udp-datasets evaluate --regime fewshot --subject $DATA/heart --corpus $DATA/corpus --corpus-mode whole --judge shape \
  --holdout-fraction 0.667 --seeds 0,1,2 --modes full --purifications jpeg75,noise0.05,diffpure100,impress \
  --sweep 4 --methods photoguard,advdm --past-failed-controls --out $OUT --cache-dir $CACHE --workers 2 --finetune-lr 3e-4
