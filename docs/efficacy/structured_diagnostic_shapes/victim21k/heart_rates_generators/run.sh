# The attacker's rate below 3e-4 (2e-4) and two generators trained 5x longer than the shipped one, as rows of the
# `heart` study (docs/efficacy.md, "The attacker's rate below 3e-4, generators trained longer, ..."). DATA: the
# folders ../../make_shapes.py writes; OUT: ../heart_lr3e-4_followups/run.sh's study folder (its sets, judge,
# pretrained victim and 3e-4 victims are reused). Run in the folder that holds OUT, the generators beside it.
#
# 1. The generators (run side by side, one torch thread each, on 2 cores: 1,089 s and 1,061 s of training;
#    generators/*.provenance.json are their provenance files; the same commands rebuild them bit for bit):
#      udp-datasets train-generator $DATA/corpus gen_shapes1500 --preset photoguard --corpus-mode whole \
#        --count 3000 --steps 1500
#      udp-datasets train-generator bundled gen_bundled1500 --preset photoguard --steps 1500
# 2. The study (below): 1,629 s wall on 2 cores, two workers at one torch thread (the 2e-4 controls and rows, and
#    the new rows at 3e-4). report.md / report.json here and lr-*/ were written again from its cache by 0.3.7's
#    final code (full row labels in the grids: commit "Grids: a row label is drawn in full"), so their Timings
#    lines are that re-scoring's; no figure changed. The first writing, by the code before 0.3.7's verdict fix,
#    called the shapes generator (erasure 0.32, 2.01x artifacts) "protection measured as effective" at 3e-4.
set -e
DATA=${1:?DATA folder}; CACHE=${2:-cache}; OUT=${3:-heart}
export OMP_NUM_THREADS=1
udp-datasets evaluate --regime fewshot --subject $DATA/heart --corpus $DATA/corpus --corpus-mode whole --judge shape \
  --holdout-fraction 0.667 --seeds 0,1,2 --modes full --purifications none --sweep none \
  --methods photoguard,advdm,photoguard:engine=generator,photoguard:engine=generator:generator=gen_shapes1500,photoguard:engine=generator:generator=gen_bundled1500,photoguard:engine=generator+pgd:generator=gen_shapes1500 \
  --past-failed-controls --out $OUT --cache-dir $CACHE --workers 2 --finetune-lr 2e-4,3e-4 || true
