"""``udp-datasets train-generator``: train a :class:`~.generator.PerturbationGenerator` on a corpus to
optimise a preset's objective, the same loss PGD optimises for that preset, through the same surrogate.

Each step draws a batch of corpus images (and mirrors half of them), computes delta = epsilon * tanh(G(x))
with :func:`~.generator.generator_delta`, and evaluates the preset's per-sample loss on x + delta with the
objective PGD uses (:class:`~.objectives.ProtectionObjective`, EOT included when the config's ``eot`` is
set; each sample's timesteps, noise and EOT draws come from its own generator, seeded by the step and the
position). G's weights then move to raise that loss (``maximize`` presets) or lower it, by Adam with
gradient clipping; the surrogate stays frozen.

Interrupted runs resume: a checkpoint (G, optimizer, generator state, losses, seconds) lives in
``OUT.partial/state.pt`` beside ``OUT``, written atomically every ``save_every`` steps; the same command
run again continues after the last checkpoint and ends with the same weights, bit for bit, as a run that
never stopped (on one machine and thread count). A ``OUT.partial/`` of another corpus or recipe is refused.
``OUT`` gets ``generator.safetensors``, ``config.json`` and ``provenance.json`` (command, corpus hash,
preset, surrogate SHA-256, steps, seconds, machine, versions, weights SHA-256), written atomically.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..config import ProtectionConfig
from ..models import load_surrogate
from ..models.pair_pretraining import PartialRun, _atomic_folder, _to_tensor, _versions, check_output
from .budget import Budget
from .generator import PerturbationGenerator, generator_delta, save_generator
from .objectives import ProtectionObjective
from .pgd import sample_generator
from .presets import preset_config

logger = logging.getLogger(__name__)

PROVENANCE_FILE = "provenance.json"


@dataclass(frozen=True)
class GeneratorRecipe:
    """What G is trained against and how; every field is recorded in ``provenance.json``."""

    preset: str = "photoguard"
    surrogate: str = "taef2"
    epsilon: float = 8 / 255
    eot: str = ""
    steps: int = 300
    batch_size: int = 8
    learning_rate: float = 2e-3
    width: int = 24
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def config(self) -> ProtectionConfig:
        """The preset's config: the objective G is trained on (and PGD would optimise)."""
        return preset_config(self.preset, ProtectionConfig(surrogate=self.surrogate, epsilon=self.epsilon,
                                                           eot=self.eot, seed=self.seed, device="cpu"))


def machine() -> dict[str, Any]:
    """The CPU, its cores and the torch threads in use (what the provenance says the training ran on)."""
    cpuinfo = Path("/proc/cpuinfo")
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                if line.startswith("model name")), "") if cpuinfo.exists() else platform.processor()
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "platform": platform.platform()}


def _step_loss(net: PerturbationGenerator, objective: ProtectionObjective, x: torch.Tensor, step: int,
               seed: int, eps: float) -> torch.Tensor:
    """The mean objective of a batch through G (negated for a maximised objective: Adam descends it)."""
    gens = [sample_generator(seed, f"train-generator:{step}:{i}") for i in range(x.shape[0])]
    fn = objective.loss_fn(gens, x)
    loss = fn(x + generator_delta(net, x, eps), step).float().mean()
    return -loss if objective.maximize else loss


def _train(net: PerturbationGenerator, objective: ProtectionObjective, data: torch.Tensor, recipe: GeneratorRecipe,
           eps: float, resume: dict[str, Any] | None, save: Callable[[dict[str, Any]], None], save_every: int,
           progress: bool) -> tuple[list[float], float]:
    gen = torch.Generator().manual_seed(recipe.seed)
    optimizer = torch.optim.Adam(net.parameters(), lr=recipe.learning_rate)
    losses: list[float] = []
    first, seconds = 1, 0.0
    if resume is not None:
        net.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        gen.set_state(resume["generator"])
        losses, first, seconds = list(resume["losses"]), resume["step"] + 1, float(resume["seconds"])
    net.train()
    start = time.perf_counter()
    bar = tqdm(range(first, recipe.steps + 1), desc="train-generator", disable=not progress, mininterval=5,
               initial=first - 1, total=recipe.steps)
    for step in bar:
        idx = torch.randint(0, data.shape[0], (recipe.batch_size,), generator=gen)
        flip = torch.rand(recipe.batch_size, generator=gen) < 0.5
        x = torch.where(flip.view(-1, 1, 1, 1), data[idx].flip(-1), data[idx])
        loss = _step_loss(net, objective, x, step, recipe.seed, eps)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        optimizer.step()
        losses.append(float(loss.detach()) * (-1 if objective.maximize else 1))
        bar.set_postfix(loss=f"{losses[-1]:.4g}", refresh=False)
        if save_every and (step % save_every == 0 or step == recipe.steps):
            save({"step": step, "model": {k: v.detach().clone() for k, v in net.state_dict().items()},
                  "optimizer": optimizer.state_dict(), "generator": gen.get_state(), "losses": list(losses),
                  "seconds": seconds + time.perf_counter() - start})
    net.eval()
    return losses, seconds + time.perf_counter() - start


def train_generator(images: Sequence[np.ndarray], out: str | os.PathLike, recipe: GeneratorRecipe | None = None, *,
                    corpus: dict[str, Any] | None = None, command: str | None = None, save_every: int = 25,
                    overwrite: bool = False, progress: bool = True,
                    on_checkpoint: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Train G on ``images`` ((H, W, 3) uint8, one square size) and write it to ``out``; returns the provenance.

    ``on_checkpoint`` is called with the step after each checkpoint (an exception from it stops the run,
    which the same call resumes)."""
    recipe = recipe or GeneratorRecipe()
    out = check_output(out, images, overwrite)
    config = recipe.config()  # a bad preset / eot / epsilon fails before any work
    run = PartialRun(out, images, recipe.to_dict(), overwrite, on_checkpoint)
    surrogate = load_surrogate(config=config)
    surrogate.freeze()
    objective = ProtectionObjective(surrogate, config)
    net = PerturbationGenerator(width=recipe.width, seed=recipe.seed)
    resume = run.resume()
    if resume is not None:
        logger.info("resuming the generator training of %s after step %d", out, resume["step"])
    losses, seconds = _train(net, objective, _to_tensor(images), recipe, Budget.of(config).epsilon, resume,
                             lambda state: run.save(state, state["step"]), save_every, progress)
    record = {"command": command, "preset": recipe.preset, "recipe": recipe.to_dict(), "config": config.to_dict(),
              "objective_maximised": objective.maximize,
              "corpus": {**(corpus or {}), "count": len(images), "sha256": run.digest,
                         "image_size": list(images[0].shape)},
              "surrogate": {"source": recipe.surrogate, "sha256": surrogate.ref.sha256},
              "steps": recipe.steps, "train_seconds": round(seconds, 1),
              "loss_first_25": float(np.mean(losses[:25])), "loss_last_25": float(np.mean(losses[-25:])),
              "machine": machine(), "versions": _versions()}
    _write(out, net, record, overwrite)
    run.finish()
    return record


def _write(out: Path, net: PerturbationGenerator, record: dict[str, Any], overwrite: bool) -> None:
    with _atomic_folder(out, overwrite) as tmp:
        record["weights_sha256"] = save_generator(net, tmp)
        (tmp / PROVENANCE_FILE).write_text(json.dumps(record, indent=2))
    logger.info("generator written to %s (weights sha256 %s)", out, record["weights_sha256"][:12])
