# `star` and `spiral` at the attacker's rate where `heart` passes its controls (2e-4): controls, PhotoGuard, AdvDM and
# PhotoGuard with EOT over noise, with the purification leg, 3 seeds, 8/255. One study folder per subject.
# Run as `bash star_spiral_lr2e-4.sh DATA CACHE star` and `... spiral`: first by 0.3.7 + this session's first commit (star
# 31:09, spiral 24:20 wall on 2 cores, 2 workers x 1 thread; a third process shared the cores part of the time), then by
# 0.3.8 over the cached victims (7:07, 7:25).
set -e
DATA=${1:?DATA folder}; CACHE=${2:-cache}; SUBJECT=${3:?subject}
export OMP_NUM_THREADS=1
udp-datasets evaluate --regime fewshot --subject $DATA/$SUBJECT --corpus $DATA/corpus --corpus-mode whole --judge shape \
  --holdout-fraction 0.667 --seeds 0,1,2 --modes full --purifications jpeg75,noise0.05 --sweep none \
  --methods photoguard,advdm,photoguard:eot=noise --past-failed-controls --out $SUBJECT --cache-dir $CACHE --workers 2 --finetune-lr 2e-4
