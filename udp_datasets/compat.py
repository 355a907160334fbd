"""Old module paths, importable for one more release (0.2.x) after the regroup by role.

``udp_datasets.runner``, ``udp_datasets.verify`` and the other flat modules of 0.1 moved into
role folders (see the README's "Layout"). Importing an old path still works and warns once
with a ``DeprecationWarning`` naming the new home; a name is looked up in the new modules in
order, so an old module whose contents were split still serves every name it had.
This file is the one list of the moves; it goes away in 0.3.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings
from types import ModuleType
from typing import Any

MOVED: dict[str, tuple[str, ...]] = {
    "udp_datasets.pgd": ("udp_datasets.method.pgd",),
    "udp_datasets.timesteps": ("udp_datasets.method.timesteps",),
    "udp_datasets.objectives": ("udp_datasets.method.objectives",),
    "udp_datasets.clusters": ("udp_datasets.method.clusters",),
    "udp_datasets.fit": ("udp_datasets.method.fit",),
    "udp_datasets.surrogate": ("udp_datasets.models.loader", "udp_datasets.models.base", "udp_datasets.models.pixel"),
    "udp_datasets.latent": ("udp_datasets.models.latent",),
    "udp_datasets.tiny_models": ("udp_datasets.evaluate.tiny_models", "udp_datasets.models.latent"),
    "udp_datasets.evaluate.victim": ("udp_datasets.evaluate.victims.pixel",),
    "udp_datasets.evaluate.latent_victim": ("udp_datasets.evaluate.victims.latent",),
    "udp_datasets.evaluate.autoencoder": ("udp_datasets.evaluate.victims.autoencoder",),
    "udp_datasets.evaluate.dreambooth": ("udp_datasets.evaluate.victims.sd_lora",
                                         "udp_datasets.evaluate.victims.sd_lora_training",
                                         "udp_datasets.evaluate.victims.sd_lora_sampling",
                                         "udp_datasets.evaluate.experiments.evaluate_sd_command"),
    "udp_datasets.evaluate.features": ("udp_datasets.evaluate.metrics.features",),
    "udp_datasets.evaluate.attacks": ("udp_datasets.evaluate.purify.filters",),
    "udp_datasets.evaluate.experiment": ("udp_datasets.evaluate.experiments.victim_runs",
                                         "udp_datasets.evaluate.metrics.scorer",
                                         "udp_datasets.evaluate.metrics.fidelity", "udp_datasets.evaluate.data",
                                         "udp_datasets.evaluate.purify.filters", "udp_datasets.evaluate.victims.pixel"),
    "udp_datasets.evaluate.ablation": ("udp_datasets.evaluate.experiments.ablation",
                                       "udp_datasets.evaluate.experiments.protected_sets"),
    "udp_datasets.evaluate.latent_ablation": ("udp_datasets.evaluate.experiments.latent_ablation",),
    "udp_datasets.evaluate.leads": ("udp_datasets.evaluate.experiments.switch_ablation",),
    "udp_datasets.evaluate.pipeline": ("udp_datasets.evaluate.experiments.evaluate_command",
                                       "udp_datasets.evaluate.data",
                                       "udp_datasets.evaluate.experiments.protected_sets"),
    "udp_datasets.bundled": ("udp_datasets.sources.bundled",),
    "udp_datasets.provenance": ("udp_datasets.jobs.manifest",),
    "udp_datasets.job": ("udp_datasets.jobs.dataset_job",),
    "udp_datasets.runner": ("udp_datasets.jobs.shard_job", "udp_datasets.jobs.codecs", "udp_datasets.jobs.distributed",
                            "udp_datasets.jobs.summary", "udp_datasets.cli.launch", "udp_datasets.cli.pipelines",
                            "udp_datasets.cli.exit_codes", "udp_datasets.sources.hf"),
    "udp_datasets.verify": ("udp_datasets.publish.verify", "udp_datasets.sources.layouts"),
    "udp_datasets.card": ("udp_datasets.publish.card", "udp_datasets.sources.hf"),
    "udp_datasets.hub": ("udp_datasets.publish.hub",),
    "udp_datasets.demo": ("udp_datasets.cli.demo",),
    "udp_datasets.sinks.shards": ("udp_datasets.sinks.tar_writer", "udp_datasets.sinks.parquet_writer",
                                  "udp_datasets.sinks.atomic"),
}


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves an old module path as a thin module that forwards names to the new modules."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None):
        if fullname in MOVED:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec: Any) -> ModuleType | None:
        return None

    def exec_module(self, module: ModuleType) -> None:
        targets = MOVED[module.__name__]
        warnings.warn(f"{module.__name__} moved to {' / '.join(targets)}; the old path works until "
                      "udp-datasets 0.3", DeprecationWarning, stacklevel=3)

        def __getattr__(name: str) -> Any:
            for target in targets:
                new = importlib.import_module(target)
                if hasattr(new, name):
                    return getattr(new, name)
            raise AttributeError(f"module {module.__name__!r} (moved to {targets[0]}) has no attribute {name!r}")

        module.__getattr__ = __getattr__  # type: ignore[method-assign]


def install() -> None:
    """Put the finder on ``sys.meta_path`` once (called by ``udp_datasets/__init__``)."""
    if not any(isinstance(f, _MovedModules) for f in sys.meta_path):
        sys.meta_path.append(_MovedModules())
