"""Which images share a transform batch: size buckets under an image count and a pixel budget.

Memory of the transform grows with the *pixels* of a batch (the perturbation lives at each image's
own resolution), not with its number of images, so a batch is bounded by both: at most
``batch_size`` images and at most ``batch_pixels`` pixels (the sum of height x width). An image
over the pixel budget on its own cannot be protected within it and is reported, never run.

Images of one exact shape are batched together first, in order (so a dataset of equal-sized
images is cut exactly as before). With ``mixed``, what is left over (shapes with fewer images than
a full batch, e.g. a folder of photos of all different sizes) is packed into shared batches, sorted
by pixel count, so that similar sizes go together: small images fill large batches, large ones
small batches. Every sample's randomness comes from its own key, and the surrogate never mixes
samples, so how images are grouped changes only speed and memory.

:func:`run_batches` runs a plan: a batch that runs out of memory (host or device) is retried one image at a
time, and an image that still cannot fit is handed back by name, never a crash; with ``overlap`` each
finished batch's CPU work (8-bit rounding, proof, PNG) runs in a background thread while the next batch is
optimised.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Sequence, TypeVar

import torch

T = TypeVar("T")


def plan_batches(shapes: Sequence[tuple[int, ...]], batch_size: int, batch_pixels: int,
                 mixed: bool = True) -> tuple[list[list[int]], list[int]]:
    """Group image indices (by their (H, W, C) ``shapes``) into batches.

    Returns ``(batches, too_big)``: lists of indices, each batch at most ``batch_size`` images and
    ``batch_pixels`` pixels, and the indices of images over ``batch_pixels`` on their own.
    """
    if batch_size < 1 or batch_pixels < 1:
        raise ValueError(f"batch_size={batch_size} and batch_pixels={batch_pixels} must be >= 1")
    pixels = [int(s[0]) * int(s[1]) for s in shapes]
    too_big = [i for i, p in enumerate(pixels) if p > batch_pixels]
    buckets: dict[tuple[int, ...], list[int]] = {}
    for i, shape in enumerate(shapes):
        if pixels[i] <= batch_pixels:
            buckets.setdefault(tuple(shape), []).append(i)
    batches: list[list[int]] = []
    leftovers: list[int] = []
    for members in buckets.values():
        for chunk in _fill(members, pixels, batch_size, batch_pixels):
            if mixed and len(chunk) < batch_size:
                leftovers.extend(chunk)
            else:
                batches.append(chunk)
    if leftovers:
        leftovers.sort(key=lambda i: (pixels[i], i))
        batches.extend(_fill(leftovers, pixels, batch_size, batch_pixels))
    return batches, too_big


def _fill(members: list[int], pixels: list[int], batch_size: int, batch_pixels: int) -> list[list[int]]:
    """Cut ``members`` in order into runs of at most ``batch_size`` images and ``batch_pixels`` pixels."""
    out: list[list[int]] = []
    current: list[int] = []
    used = 0
    for i in members:
        if current and (len(current) == batch_size or used + pixels[i] > batch_pixels):
            out.append(current)
            current, used = [], 0
        current.append(i)
        used += pixels[i]
    if current:
        out.append(current)
    return out


def out_of_memory(exc: BaseException) -> bool:
    """Whether an exception is an allocation failure (host or device), not a bug."""
    return isinstance(exc, (MemoryError, torch.OutOfMemoryError)) or any(
        t in str(exc).lower() for t in ("out of memory", "can't allocate memory"))


def run_batches(batches: list[list[int]], optimise: Callable[[list[int]], T], finish: Callable[[list[int], T], None],
                give_up: Callable[[int, BaseException], None], overlap: bool = False) -> None:
    """``finish(batch, optimise(batch))`` for every batch of the plan, in order.

    A batch whose ``optimise`` runs out of memory is retried image by image (after the planned batches); an
    image that runs out alone goes to ``give_up(index, exc)``. Other exceptions propagate. With ``overlap``
    (and more than one batch), ``finish`` runs in one background thread, overlapping the next ``optimise``.
    """
    queue = list(batches)
    pool = ThreadPoolExecutor(1, thread_name_prefix="udp-finish") if overlap and len(queue) > 1 else None
    pending: list[Future] = []
    try:
        for batch in queue:  # grows while it runs: the images of a batch that ran out of memory, one by one
            try:
                result = optimise(batch)
            except (MemoryError, RuntimeError) as exc:
                if not out_of_memory(exc):
                    raise
                if len(batch) > 1:
                    queue.extend([j] for j in batch)
                else:
                    give_up(batch[0], exc)
                continue
            if pool is None:
                finish(batch, result)
            else:
                pending.append(pool.submit(finish, batch, result))
        for future in pending:
            future.result()
    finally:
        if pool is not None:
            pool.shutdown(wait=True)
