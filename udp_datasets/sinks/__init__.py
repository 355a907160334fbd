"""Writers: put protected data on disk without ever leaving half a result.

Its level, and so what it may import: ``layout.toml`` at the repository root.
"""

from .atomic import OutputExistsError, OutputWriteError, atomic_directory, atomic_file
from .folders import save_dataset

__all__ = ["OutputExistsError", "OutputWriteError", "atomic_directory", "atomic_file", "save_dataset"]
