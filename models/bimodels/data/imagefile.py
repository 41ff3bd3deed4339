"""Opening image files for the readers: header checks with Pillow, imported only when needed."""

from __future__ import annotations

from pathlib import Path

from .errors import DataError


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file's header; a corrupt or missing image is a DataError."""
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise DataError(path, "reading images needs Pillow (pip install pillow)") from None
    if not path.is_file():
        raise DataError(path, "image file is missing")
    try:
        with Image.open(path) as im:
            return im.size
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(path, f"not a readable image ({e})") from None
