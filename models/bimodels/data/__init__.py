"""Dataset readers for the accuracy tracks: the real formats, read from a local path.

Nothing here downloads. Each reader validates what it reads and raises `DataError` naming
the file and what is wrong with it, before any training starts.
"""

from .cifar import read_cifar10
from .errors import DataError
from .idx import read_idx

__all__ = ["DataError", "read_cifar10", "read_idx"]
