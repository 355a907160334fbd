"""Writers: put a protected ``Dataset`` on disk without ever leaving half a result.

Every writer fills a temporary sibling folder and renames it into place at the
end, so a crash leaves either nothing or the complete output under the final name.
"""

from .atomic import atomic_directory
from .folders import save_dataset, save_imagefolder

__all__ = ["atomic_directory", "save_dataset", "save_imagefolder"]
