# Run by 0.3.8 into the study folder of ../heart_rates_generators/ (its 2e-4 victims cached; the EOT rows were
# first run by 0.3.7 + the eot '+' commit, 6:54 wall, then the purified sets here): 21:22 wall on 2 cores, 2 workers x 1 thread.
# `heart` at 2e-4 with 0.3.8's two shape judges: PhotoGuard, AdvDM and PhotoGuard with EOT over noise or JPEG, every
# method purified (--followups all), 3 seeds, 8/255.
set -e
DATA=${1:?DATA folder}; CACHE=${2:-cache}; OUT=${3:-heart}
export OMP_NUM_THREADS=1
udp-datasets evaluate --regime fewshot --subject $DATA/heart --corpus $DATA/corpus --corpus-mode whole --judge shape \
  --holdout-fraction 0.667 --seeds 0,1,2 --modes full --purifications jpeg75,noise0.05 --followups all --sweep none \
  --methods photoguard,advdm,photoguard:eot=noise,photoguard:eot=jpeg --past-failed-controls --out $OUT --cache-dir $CACHE --workers 2 --finetune-lr 2e-4
