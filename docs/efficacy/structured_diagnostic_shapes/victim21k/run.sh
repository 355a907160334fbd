# The grey thin-stroke shapes on a victim of the 0.3.3 recipe (21,000 pretraining steps), one study per subject.
# DATA: the folders make_shapes.py writes (python ../make_shapes.py DATA); CACHE: where the pretraining is kept
# (the first subject pretrains: 4,279 s for the victim at one torch thread beside other jobs; the others reuse it).
set -e
DATA=${1:?DATA folder}; CACHE=${2:-cache}
export OMP_NUM_THREADS=1
for s in heart star spiral; do
  udp-datasets evaluate --regime fewshot --subject $DATA/$s --corpus $DATA/corpus --corpus-mode whole --judge shape \
    --holdout-fraction 0.667 --seeds 0 --modes full --purifications none --sweep none \
    --methods photoguard,advdm,advdm:timesteps=eudp,udp,mist2 --past-failed-controls --out $s --cache-dir $CACHE \
    --workers 2 || true   # exit 1: a control failed (the run goes on past it, as a labelled diagnostic)
done
