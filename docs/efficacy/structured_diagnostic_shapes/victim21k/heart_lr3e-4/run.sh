# The first few-shot report whose controls pass: the grey `heart` on the 21,000-step shapes victim, fine-tuned at
# the attacker's rate 3e-4 instead of the default 1e-3 (docs/efficacy.md, "The first report whose controls pass").
# DATA: the folders ../../make_shapes.py writes; CACHE: the pretraining cache of ../run.sh; OUT: ../run.sh's heart
# study folder (its protected sets and judge are reused; the victims of this rate are new). 1,153 s on 2 cores,
# two workers at one torch thread each.
set -e
DATA=${1:?DATA folder}; CACHE=${2:-cache}; OUT=${3:-heart}
export OMP_NUM_THREADS=1
udp-datasets evaluate --regime fewshot --subject $DATA/heart --corpus $DATA/corpus --corpus-mode whole --judge shape \
  --holdout-fraction 0.667 --seeds 0,1,2 --modes full --purifications none --sweep none \
  --methods photoguard,advdm,advdm:timesteps=eudp,udp,mist2 --past-failed-controls --out $OUT --cache-dir $CACHE \
  --workers 2 --finetune-lr 3e-4
# ../star_lr3e-4 and ../spiral_lr3e-4: the same command for $DATA/star and $DATA/spiral (--out star / spiral),
# with --seeds 0 --workers 1, the two run side by side (about 700 s each); both fail the positive control.
