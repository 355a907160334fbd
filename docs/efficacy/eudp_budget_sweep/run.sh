# AdvDM with uniform vs EUDP timesteps at 2, 4 and 8/255, 3 seeds, on the shipped glyph victim (issue 18's
# comparison; a diagnostic: the study's positive control fails, so it runs past it).
export OMP_NUM_THREADS=1
udp-datasets evaluate --regime fewshot --full --modes full --seeds 0,1,2 --methods advdm,advdm:timesteps=eudp \
  --sweep 2,4 --purifications none --past-failed-controls --workers 2 --cache-dir ${CACHE:-cache} --out ${OUT:-eudp_sweep}
