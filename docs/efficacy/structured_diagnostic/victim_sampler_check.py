"""Is the victim check's failure (samples' FD 33x the round trips') an artifact of the sampler?

FD of the cached 64 px glyph victim's samples at several DDIM step counts and etas, in the feature space of
``fewshot_setup.pretrained_quality`` (same corpus halves, same sample seed). The study samples with 50
steps, eta 1. 1000 steps cannot run: the victim's scheduler has ``steps_offset=1``.

    OMP_NUM_THREADS=2 python victim_sampler_check.py CACHE/fewshot-pretrain-KEY 64 > victim_sampler_check.jsonl
"""
import json
import sys
import time
from pathlib import Path
from udp_datasets.evaluate.glyphs import glyph_corpus
from udp_datasets.evaluate.experiments import fewshot_setup as S
from udp_datasets.evaluate.metrics.subject import subject_features

if __name__ == "__main__":
    folder = Path(sys.argv[1]); size = int(sys.argv[2])
    corpus = glyph_corpus(3000, 0, size)
    vae, unet = S.victim_codec(str(folder)), S.load_victim_unet(folder)
    n = 300
    a, b = S.to_tensor(corpus[:n]), S.to_tensor(corpus[n:2 * n])
    space = S.FeatureSpace(subject_features(a))
    print(json.dumps({"corpus_split_fd": space.fd(b, a), "split128": space.fd(b[:128], a)}), flush=True)
    for steps, eta, count in ((50, 1.0, 128), (50, 0.0, 128), (200, 1.0, 128), (200, 0.0, 128), (500, 1.0, 128)):
        t = time.time()
        x = S.to_tensor(S.decode(vae, S.sample(unet, count, 777, steps, eta)))
        print(json.dumps({"steps": steps, "eta": eta, "count": count, "samples_fd": space.fd(x, a), "s": round(time.time() - t)}), flush=True)
