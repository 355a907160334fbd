"""Writers: put protected data on disk without ever leaving half a result.

``atomic`` is the one temp-then-rename helper (files and folders); ``folders`` writes a
protected ``Dataset`` (``save_to_disk``, PNG image folder); ``tar_writer`` and
``parquet_writer`` write shard files whose bytes depend only on input and config.
"""

from .atomic import OutputExistsError, OutputWriteError, atomic_directory, atomic_file
from .folders import save_dataset, save_imagefolder

__all__ = ["OutputExistsError", "OutputWriteError", "atomic_directory", "atomic_file", "save_dataset", "save_imagefolder"]
