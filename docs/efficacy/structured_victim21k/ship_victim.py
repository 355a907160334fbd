"""Write ``udp_datasets/models/weights/glyph_victim/`` from a few-shot pretraining cache folder.

    OMP_NUM_THREADS=1 python docs/efficacy/structured_victim21k/ship_victim.py \
        CACHE/fewshot-pretrain-c36dc85654b4479b udp_datasets/models/weights/glyph_victim

The folder must be the pretraining of the default glyph study (``PretrainRecipe()`` on
``glyph_corpus(3000, 0, 64)``: its name's key is checked). Each UNet is saved in float16 as a diffusers
``UNet2DModel`` folder, beside ``provenance.json`` (key, recipe, corpus, the latent statistics the UNets were
trained under, training records, the victim check measured on the float32 weights, versions). ``fewshot_pretrain.install_shipped_pretraining`` reads it back.
"""
import json
import sys
from pathlib import Path

import torch
from diffusers import UNet2DModel

import udp_datasets
from udp_datasets.evaluate.subjects import read_corpus
from udp_datasets.evaluate.victims.fewshot_pretrain import PretrainRecipe, cache_key
from udp_datasets.models import weights_sha256

if __name__ == "__main__":
    source, target = Path(sys.argv[1]), Path(sys.argv[2])
    recipe = PretrainRecipe()
    corpus, record = read_corpus("glyphs", recipe.corpus_count, recipe.corpus_seed, 64, named_by_user=False)
    key = cache_key(recipe, corpus)
    if source.name not in (f"fewshot-pretrain-{key}", f"fewshot-pretrain-{key}-scratch"):
        sys.exit(f"{source} is not the default glyph pretraining (fewshot-pretrain-{key})")
    training = {}
    for kind in ("victim", "surrogate"):
        unet = UNet2DModel.from_pretrained(source / kind / "unet", use_safetensors=True, torch_dtype=torch.float16)
        unet.save_pretrained(target / kind, safe_serialization=True)
        (target / kind / "diffusion_pytorch_model.safetensors").chmod(0o644)
        log = json.loads((source / f"{kind}_training.json").read_text())
        training[kind] = {k: log[k] for k in ("kind", "seconds", "final_loss", "parameters", "recipe", "seed")}
    provenance = {
        "what": "the few-shot study's pretrained victim and surrogate UNets for its default glyph corpus",
        "cache_key": key, "recipe": recipe.to_dict(), "corpus": {**record, "count": len(corpus)},
        "training": training, "victim_check": json.loads((source / "quality.json").read_text()),
        "latent_statistics": {k: v for k, v in torch.load(source / "corpus.pt", weights_only=True).items()
                              if k in ("shift", "scale", "channel_mean", "channel_std")},
        "dtype": "float16", "source_folder": source.name, "exported_by": f"udp-datasets {udp_datasets.__version__}",
        "torch": torch.__version__, "sha256": weights_sha256(target),
    }
    (target / "provenance.json").write_text(json.dumps(provenance, indent=2) + "\n")
    print(provenance["sha256"])
