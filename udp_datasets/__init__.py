"""udp-datasets: make image datasets unlearnable for diffusion models (UDP / EUDP).

    from udp_datasets import Protector, default_config
    protector = Protector(default_config(epsilon=8/255))  # what `udp-datasets protect` runs: the shipped pair
    protected = ds.map(protector, batched=True, batch_size=32)
"""

from .config import ConfigError, ProtectionConfig, default_config, parse_epsilon
from .images import ImageError
from .method.budget import BudgetError
from .protector import Protector
from .models import Surrogate, SurrogateError, SurrogateRef, load_surrogate
from .sources.errors import ColumnError
from .records.versions import package_version

__version__ = package_version()
"""Read from the installed distribution's metadata: ``pyproject.toml`` is its one source, and nothing
inside the package imports this root for it (``udp_datasets.records.versions``). A source tree used
without ``pip install`` reads ``0+unknown``."""


def __getattr__(name: str):
    """``udp_datasets.publish`` is the publishing subpackage, imported on first use so that
    ``import udp_datasets`` loads no Hub client. The function that publishes is
    ``udp_datasets.publish.publish`` (``from udp_datasets.publish import publish``); before 0.3,
    ``udp_datasets.publish`` was that function on first access and the subpackage once anything
    had imported it."""
    if name == "publish":  # not `from . import publish`: its hasattr check would call this function again
        import importlib

        return importlib.import_module(".publish", __name__)
    raise AttributeError(f"module 'udp_datasets' has no attribute {name!r}")


__all__ = [
    "BudgetError", "ColumnError", "ConfigError", "ImageError", "ProtectionConfig", "Protector",
    "Surrogate", "SurrogateError", "SurrogateRef", "default_config", "load_surrogate", "parse_epsilon", "publish",
    "__version__",
]
