"""The tensor engine: decoded 8-bit images in; protected, budget-proven 8-bit images out.

One :class:`ProtectionEngine` sits over a :class:`~udp_datasets.models.session.SurrogateSession` (the loaded,
tuned surrogate) and knows nothing of ``datasets``, columns or files. Per batch it computes the perturbation
with ``config.engine``: ``pgd`` (``steps`` PGD steps from zero, a random point or the image's cluster's shared
delta), ``generator`` (one forward pass of G, :mod:`.generator`) or ``generator+pgd`` (G's output as the start
of ``generator_pgd_steps`` PGD steps). Every engine works within the one :class:`~.budget.Budget` of the
config, and every result is rounded to 8 bits and proven within it (:meth:`ProtectionEngine.prove`) before it
is encoded; an image that fails is a :class:`~udp_datasets.images.FailedImage`, never unprotected output.
Batching, and the retry after running out of memory, is :mod:`.batches`.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..images import DecodedImage, FailedImage, ProtectedImage, describe_error, protected_image
from ..models.base import Surrogate
from ..models.runtime import autocast, grad_scale
from ..models.session import SurrogateSession
from .batches import plan_batches, run_batches
from .budget import Budget, BudgetError
from .generator import SHIPPED_GENERATOR, generator_delta, generator_sha256, load_generator
from .objectives import ProtectionObjective
from .pgd import pgd, random_start, sample_generator

UNCHANGED_REASON = ("protection left every pixel unchanged after 8-bit rounding (e.g. a saturated or flat "
                    "image); it cannot be published as protected")


class ProtectionEngine:
    """PGD or the generator against ``session``'s surrogate; pickles as the session plus, for the generator
    engines, the generator's weight hash (so a ``datasets`` fingerprint changes when those weights do)."""

    def __init__(self, session: SurrogateSession):
        self.session = session
        config = session.config
        self.generator_sha256 = generator_sha256(config.generator) if config.engine != "pgd" else None
        self._reset()

    def _reset(self) -> None:
        self._objective: ProtectionObjective | None = None
        self._generation = 0

    def __getstate__(self) -> dict[str, Any]:
        return {"session": self.session} | (
            {"generator_sha256": self.generator_sha256} if self.generator_sha256 is not None else {})

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.session, self.generator_sha256 = state["session"], state.get("generator_sha256")
        self._reset()

    @property
    def config(self) -> Any:
        return self.session.config

    @property
    def generator_ref(self) -> dict[str, Any] | None:
        """What the generator engines use (its source and the SHA-256 of its weights), as a job records it;
        None for the ``pgd`` engine."""
        if self.config.engine == "pgd":
            return None
        return {"source": self.config.generator or SHIPPED_GENERATOR, "sha256": self.generator_sha256}

    @property
    def budget(self) -> Budget:
        return Budget.of(self.session.config)

    # ------------------------------------------------------------ the model
    def prepare(self, rank: int | None = None) -> Surrogate:
        """The session's surrogate on this rank's device, and the objective built on it (rebuilt when the
        session placed the model anew)."""
        surrogate = self.session.prepare(rank)
        if self._objective is None or self._generation != self.session.generation:
            self._objective = ProtectionObjective(surrogate, self.session.config)
            self._generation = self.session.generation
        return surrogate

    @property
    def objective(self) -> ProtectionObjective:
        """The loss the engines optimise (prepared on the default device if :meth:`prepare` was not called)."""
        if self._objective is None or self._generation != self.session.generation:
            self.prepare()
        assert self._objective is not None
        return self._objective

    # ------------------------------------------------------------ protect
    def protect(self, decoded: Sequence[DecodedImage | FailedImage], keys: Sequence[str], labels: Sequence[str],
                captions: Sequence[Any] | None = None, rank: int | None = None) -> list[ProtectedImage | FailedImage]:
        """Protect every decoded image (failures pass through): batched under the device's pixel budget, with
        ``overlap`` the rounding and encoding of a batch running while the next one is optimised."""
        results: list[Any] = [d if isinstance(d, FailedImage) else None for d in decoded]
        todo = [i for i, d in enumerate(decoded) if isinstance(d, DecodedImage)]
        if not todo:
            return results
        items: list[DecodedImage] = [decoded[i] for i in todo]  # type: ignore[misc]
        surrogate = self.prepare(rank)
        tuning = self.session.tuning
        batches, too_big = plan_batches([d.shape for d in items], self.config.batch_size, tuning.batch_pixels,
                                        mixed=tuning.mixed_shapes)
        for j in too_big:
            i, (h, w) = todo[j], items[j].shape[:2]
            results[i] = FailedImage(key=keys[i], index=i, reason=(
                f"image {labels[i]} is {w}x{h} = {w * h} pixels, more than the batch pixel budget of "
                f"{tuning.batch_pixels} (batch_pixels): it cannot be protected within this device's memory; raise "
                "--batch-pixels on a machine with more memory, or downscale it"))

        def optimise(batch: list[int]) -> list[np.ndarray]:
            return self.perturb([items[j].pixels for j in batch], [keys[todo[j]] for j in batch], surrogate,
                                None if captions is None else [captions[todo[j]] for j in batch])

        def finish(batch: list[int], perturbed: list[np.ndarray]) -> None:
            for j, pert in zip(batch, perturbed):
                results[todo[j]] = self.finish(items[j], keys[todo[j]], todo[j], pert)

        def give_up(j: int, exc: BaseException) -> None:
            i, (h, w) = todo[j], items[j].shape[:2]
            results[i] = FailedImage(key=keys[i], index=i, reason=f"ran out of memory on this {w}x{h} image "
                                     f"({describe_error(exc)}); set --batch-pixels below {w * h}")

        run_batches(batches, optimise, finish, give_up, overlap=tuning.overlap)
        return results

    def finish(self, item: DecodedImage, key: str, index: int, perturbed: np.ndarray) -> ProtectedImage | FailedImage:
        """Round one image to 8 bits, prove the budget, encode the PNG; a failure is a named record."""
        try:
            out, linf = self.prove(item.pixels, perturbed)
            if linf == 0:  # never pass an unchanged image off as protected
                return FailedImage(key=key, index=index, reason=UNCHANGED_REASON)
            return protected_image(key, item, out, linf)
        except BudgetError as exc:  # never let an over-budget image through
            return FailedImage(key=key, index=index, reason=f"budget check failed: {exc}")
        except MemoryError:  # a huge image at the edge of the memory: named, never a crash
            h, w = item.pixels.shape[:2]
            return FailedImage(key=key, index=index, reason=f"ran out of memory rounding this {w}x{h} image")

    def prove(self, clean: np.ndarray, perturbed: np.ndarray) -> tuple[np.ndarray, int]:
        """(the 8-bit image, its L-inf distance in levels), proven within the budget (:class:`BudgetError`)."""
        budget = self.budget
        out = budget.quantize(clean, perturbed)
        return out, budget.check(clean, out)

    # ------------------------------------------------------------ tensors
    def perturb(self, pixels: list[np.ndarray], keys: list[str], surrogate: Surrogate,
                captions: list[Any] | None = None) -> list[np.ndarray]:
        """One batch's perturbed pixels, (H, W, C) float in [0, 1], from its (H, W, C) uint8 images."""
        config, tuning, budget = self.config, self.session.tuning, self.budget
        device = surrogate.device
        same = len({p.shape for p in pixels}) == 1
        if same:
            x: Any = torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2).float().div(255).to(device)
        else:  # a mixed batch: one (1, C, H, W) tensor per image
            x = [torch.from_numpy(np.stack([p])).permute(0, 3, 1, 2).float().div(255).to(device) for p in pixels]
        gens = [sample_generator(config.seed, k) for k in keys]
        objective = self.objective
        delta = self._delta(x, lambda: objective.loss_fn(gens, x, captions), objective.maximize,
                            lambda: self._start(x, gens, budget, surrogate, same), lambda: autocast(device, tuning),
                            in_place=tuning.reuse_buffers, grad_scale=grad_scale(tuning))
        if same:
            return list((x + delta).clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy())
        return [(xi + di).clamp(0, 1)[0].permute(1, 2, 0).cpu().numpy() for xi, di in zip(x, delta)]

    def _delta(self, x: Any, loss_fn: Callable[[], Any], maximize: bool, init: Callable[[], Any],
               precision: Callable[[], Any], **pgd_kwargs: Any) -> Any:
        """The perturbation of a batch by ``config.engine``. ``loss_fn`` and ``init`` (PGD's own start) are
        called only by the engines that need them; ``precision()`` is the context PGD runs in (the tuning's
        autocast); G itself runs in float32. ``pgd_kwargs`` go to :func:`~.pgd.pgd`."""
        config, eps = self.config, self.budget.epsilon
        if config.engine == "pgd":
            start, steps = init(), config.steps
        else:
            mixed = isinstance(x, (list, tuple))
            net, self.generator_sha256 = load_generator(config.generator, x[0].device if mixed else x.device)
            with torch.no_grad():
                start = [generator_delta(net, xi, eps) for xi in x] if mixed else generator_delta(net, x, eps)
            if config.engine == "generator":
                return start
            steps = config.generator_pgd_steps
        with precision():
            return pgd(x, loss_fn(), epsilon=eps, alpha=config.step_size, steps=steps, maximize=maximize,
                       init=start, **pgd_kwargs)

    def _start(self, x: Any, gens: list[torch.Generator], budget: Budget, surrogate: Surrogate, same: bool) -> Any:
        """Where PGD starts: zero, a random point of the ball, and/or the image's cluster's shared delta."""
        if not same:  # per image, with the same draws as in a batch of its own shape
            inits = [self._start(xi, [g], budget, surrogate, True) for xi, g in zip(x, gens)]
            return None if all(d is None for d in inits) else [torch.zeros_like(xi) if d is None else d
                                                                for xi, d in zip(x, inits)]
        eps = budget.epsilon
        init = random_start(x.shape[1:], gens, eps) if self.config.random_start or self.objective.needs_random_start \
            else None
        if "clusters.centroids" in surrogate.extras:  # start from the cluster's shared shortcut
            from .clusters import cluster_init

            shared = cluster_init(x, surrogate.extras["clusters.centroids"], surrogate.extras["clusters.deltas"], eps)
            init = shared if init is None else (shared + init).clamp(-eps, eps)
        return init
