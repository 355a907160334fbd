"""The quantised budget: one value, in grey levels, that PGD, fit, the generator and the 8-bit proof all use.

The config states the budget as a float (``epsilon``, 0-1 scale) because that is how papers write it; the
output is 8-bit, so what can be promised is a whole number of grey levels (``config.budget_levels``). A
:class:`Budget` is made from those levels once, and its ``epsilon`` (levels / 255) is the one float every
optimiser steps within: nothing below the config converts between the two units again.

The proof is :meth:`Budget.quantize`: round a perturbed float image to 8 bits, re-project it onto the
budget (rounding can push a pixel one level past it), then check the result independently
(:meth:`Budget.check`); an image that fails raises :class:`BudgetError` and is never written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


class BudgetError(RuntimeError):
    """A protected image that is not within its L-inf budget: never written out."""


@dataclass(frozen=True)
class Budget:
    """An L-inf budget of ``levels`` 8-bit grey levels; ``epsilon`` is the same budget on the 0-1 scale."""

    levels: int
    epsilon: float = field(init=False)

    def __post_init__(self) -> None:
        if isinstance(self.levels, bool) or not isinstance(self.levels, int) or self.levels < 0:
            raise ValueError(f"a budget is a whole number of grey levels >= 0, got {self.levels!r}")
        object.__setattr__(self, "epsilon", self.levels / 255.0)

    @classmethod
    def of(cls, config: Any) -> Budget:
        """The budget of a :class:`~udp_datasets.config.ProtectionConfig` (its ``budget_levels``)."""
        return cls(config.budget_levels)

    def quantize(self, clean: np.ndarray, perturbed: np.ndarray) -> np.ndarray:
        """Round a perturbed float image (0-1) to uint8 within the budget, proven (:meth:`check`) on the result."""
        if clean.dtype != np.uint8:
            raise TypeError("clean image must be uint8")
        out = np.rint(np.clip(perturbed, 0.0, 1.0) * 255.0)
        lo = clean.astype(np.int16) - self.levels
        hi = clean.astype(np.int16) + self.levels
        out = np.clip(out, lo, hi).clip(0, 255).astype(np.uint8)
        self.check(clean, out)
        return out

    def check(self, clean: np.ndarray, protected: np.ndarray) -> int:
        """Return the max |protected - clean| in levels, or raise :class:`BudgetError`."""
        if clean.shape != protected.shape:
            raise BudgetError(f"shape changed: {clean.shape} -> {protected.shape}")
        linf = int(np.abs(protected.astype(np.int16) - clean.astype(np.int16)).max(initial=0))
        if linf > self.levels:
            raise BudgetError(f"perturbation of {linf} levels exceeds the budget of {self.levels}")
        return linf
