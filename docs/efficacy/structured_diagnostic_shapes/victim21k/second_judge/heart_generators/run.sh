# Run by 0.3.8 (cwd: the folder holding the generators gen_shapes1500/ and gen_bundled1500/ of ../../heart_rates_generators/)
# over the cached victims of ../../heart_rates_generators/ (scoring only): a few minutes on 2 cores.
# The generators of gen2_run.sh (issue 19) scored again by 0.3.8's two shape judges (their victims cached).
set -e
DATA=${1:?DATA folder}; CACHE=${2:-cache}; OUT=${3:-heart}
export OMP_NUM_THREADS=1
udp-datasets evaluate --regime fewshot --subject $DATA/heart --corpus $DATA/corpus --corpus-mode whole --judge shape \
  --holdout-fraction 0.667 --seeds 0,1,2 --modes full --purifications none --sweep none \
  --methods photoguard,advdm,photoguard:engine=generator,photoguard:engine=generator:generator=gen_shapes1500,photoguard:engine=generator:generator=gen_bundled1500,photoguard:engine=generator+pgd:generator=gen_shapes1500 \
  --past-failed-controls --out $OUT --cache-dir $CACHE --workers 2 --finetune-lr 2e-4,3e-4 || true
