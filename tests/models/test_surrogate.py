import json

import pytest
import torch

from udp_datasets import SurrogateError, load_surrogate
from udp_datasets.models import build_surrogate, weights_sha256


def test_saved_surrogate_loads_through_from_pretrained(tmp_path):
    from diffusers import DDPMPipeline

    original = build_surrogate("tiny", 16, seed=3)
    ref = original.save(tmp_path / "s")
    assert list((tmp_path / "s" / "unet").glob("*.safetensors"))
    assert not list((tmp_path / "s").rglob("*.bin"))
    loaded = load_surrogate(tmp_path / "s")
    assert loaded.ref.sha256 == ref.sha256 == weights_sha256(tmp_path / "s")
    for a, b in zip(original.unet.parameters(), loaded.unet.parameters()):
        assert torch.equal(a, b)
    assert torch.equal(loaded.alphas_cumprod, original.alphas_cumprod)
    DDPMPipeline.from_pretrained(tmp_path / "s")  # a standard diffusers folder too


def test_bare_unet_folder_with_scheduler_config(tmp_path):
    s = build_surrogate("tiny", 16)
    s.unet.save_pretrained(tmp_path / "bare")
    s.scheduler.save_pretrained(tmp_path / "bare")
    assert load_surrogate(str(tmp_path / "bare")).sample_size == (16, 16)


def test_refuses_pickle_weights(tmp_path):
    s = build_surrogate("tiny", 16)
    s.unet.save_pretrained(tmp_path / "p", safe_serialization=False)
    s.scheduler.save_pretrained(tmp_path / "p")
    with pytest.raises(SurrogateError, match="no .safetensors"):
        load_surrogate(str(tmp_path / "p"))


def test_missing_folder_and_incomplete_latent_pipeline(tmp_path):
    with pytest.raises(SurrogateError, match="does not exist"):
        load_surrogate("./no/such/folder")
    (tmp_path / "sd").mkdir()
    (tmp_path / "sd" / "model_index.json").write_text(json.dumps({"vae": ["diffusers", "AutoencoderKL"]}))
    with pytest.raises(SurrogateError, match="latent surrogate .*no vae/config.json"):
        load_surrogate(str(tmp_path / "sd"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(SurrogateError, match="no UNet config"):
        load_surrogate(str(tmp_path / "empty"))


def test_hub_id_offline_gives_a_clear_error():
    with pytest.raises(SurrogateError, match="neither a local folder nor reachable"):
        load_surrogate("some-org/some-ddpm")


def test_built_in_is_seeded():
    a, b = build_surrogate("tiny", 16, seed=1), build_surrogate("tiny", 16, seed=1)
    c = build_surrogate("tiny", 16, seed=2)
    pa, pb, pc = (next(s.unet.parameters()) for s in (a, b, c))
    assert torch.equal(pa, pb) and not torch.equal(pa, pc)
    with pytest.raises(SurrogateError, match="unknown surrogate architecture"):
        build_surrogate("huge", 16)
