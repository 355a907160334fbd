# The attacker's fine-tuning rate swept on `heart` (0.3.6's `--finetune-lr A,B`), with the generator engine beside
# the PGD it was trained against (docs/efficacy.md, "The passing cell, followed up"). OUT: ../heart_lr3e-4_followups/
# run.sh's study folder (its sets, judge, pretrained victim and 3e-4 victims are reused; the generator rows and every
# 1e-3 victim are new): 999 s on 2 cores (280 s at 3e-4, 719 s at 1e-3), two workers at one torch thread each. report.md / report.json here are
# the summary; lr-0.0003/ and lr-0.001/ the two studies. The summary was written again from the two reports by
# fewshot_rates.summarise_rates after a one-character fix to its verdict text (a missing full stop); its figures are
# the run's.
set -e
DATA=${1:?DATA folder}; CACHE=${2:-cache}; OUT=${3:-heart}
export OMP_NUM_THREADS=1
udp-datasets evaluate --regime fewshot --subject $DATA/heart --corpus $DATA/corpus --corpus-mode whole --judge shape \
  --holdout-fraction 0.667 --seeds 0,1,2 --modes full --purifications none --sweep none \
  --methods photoguard,photoguard:engine=generator,photoguard:engine=generator+pgd --past-failed-controls \
  --out $OUT --cache-dir $CACHE --workers 2 --finetune-lr 3e-4,1e-3 || true  # exit 1: the 1e-3 controls fail
