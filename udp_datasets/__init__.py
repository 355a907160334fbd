"""udp-datasets: make image datasets unlearnable for diffusion models (UDP / EUDP).

    from udp_datasets import ProtectionConfig, Protector
    protector = Protector(ProtectionConfig(epsilon=8/255))
    protector.fit(train_subset)
    protected = ds.map(protector, batched=True, batch_size=32)
"""

from .config import ConfigError, ProtectionConfig, parse_epsilon
from .images import ImageError
from .method.pgd import BudgetError
from .protector import ColumnError, Protector
from .models import Surrogate, SurrogateError, SurrogateRef, load_surrogate

__version__ = "0.2.0"


def __getattr__(name: str):
    """``udp_datasets.publish`` without importing the Hub client at start-up.

    (Remote verification is ``udp_datasets.publish.hub.verify``.)
    """
    if name == "publish":
        from .publish import hub

        return getattr(hub, name)
    raise AttributeError(f"module 'udp_datasets' has no attribute {name!r}")

__all__ = [
    "BudgetError", "ColumnError", "ConfigError", "ImageError", "ProtectionConfig", "Protector",
    "Surrogate", "SurrogateError", "SurrogateRef", "load_surrogate", "parse_epsilon", "publish", "__version__",
]
