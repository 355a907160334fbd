"""One interrupt-then-resume check for every resumable training run (``pretrain``, ``train-generator``):
both save a ``OUT.partial`` checkpoint folder and rename it to ``OUT`` only when training ends."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest


def interrupter(at_step: int) -> Callable[[int], None]:
    """An ``on_checkpoint`` hook that stops the run (KeyboardInterrupt) at the checkpoint after ``at_step``."""
    def interrupt(step: int) -> None:
        if step == at_step:
            raise KeyboardInterrupt

    return interrupt


def interrupt_then_resume(train: Callable[..., dict[str, Any]], out: Path, at_step: int) -> dict[str, Any]:
    """Run ``train(out, on_checkpoint=...)`` until it is interrupted at ``at_step``; check that only the
    checkpoint exists (nothing under the final name); run ``train(out)`` again and return its result, after
    checking that the checkpoint is gone."""
    partial = out.with_name(out.name + ".partial")
    with pytest.raises(KeyboardInterrupt):
        train(out, on_checkpoint=interrupter(at_step))
    assert (partial / "state.pt").exists() and not out.exists()
    resumed = train(out)
    assert not partial.exists()
    return resumed
