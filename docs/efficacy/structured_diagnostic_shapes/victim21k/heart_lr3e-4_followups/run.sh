# The follow-ups of the one passing cell (`heart` at the attacker's rate 3e-4): JPEG 75 and Gaussian-noise 0.05
# purification of the best method (PhotoGuard) and the budget sweep at 4/255, 3 seeds (docs/efficacy.md, "The passing
# cell, followed up"). DATA: the folders ../../make_shapes.py writes. Run on a fresh machine (2026-12-07, late
# evening), so the victim was pretrained again (5,226 s at one torch thread; the same cache key as ../run.sh's, its
# final loss equal to 6 digits) and the controls and main rows were fine-tuned again: 6,766 s in all on 2 cores,
# two workers at one torch thread each, 1,541 s of it after the pretraining.
# report.md / report.json were written again from that run's cache by commit 38fac81 (0.3.7; its metadata still
# said 0.3.6), which gives the purification
# table's erasures their seed spread (no figure changed; the 'compared with None' line reads 'not measured'); their
# Timings line is that re-scoring's (151 s, all cached), the run's own is above.
set -e
DATA=${1:?DATA folder}; CACHE=${2:-cache}; OUT=${3:-heart}
export OMP_NUM_THREADS=1
udp-datasets evaluate --regime fewshot --subject $DATA/heart --corpus $DATA/corpus --corpus-mode whole --judge shape \
  --holdout-fraction 0.667 --seeds 0,1,2 --modes full --purifications jpeg75,noise0.05 --sweep 4 \
  --methods photoguard,advdm --past-failed-controls --out $OUT --cache-dir $CACHE --workers 2 --finetune-lr 3e-4
