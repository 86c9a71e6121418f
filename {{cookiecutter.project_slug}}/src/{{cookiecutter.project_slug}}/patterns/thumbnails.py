"""Thumbnails from untrusted image bytes, safe to publish.

Guarantees:
- only JPEG, PNG and WebP are decoded, and their pixel count is checked from the header
  before any pixel is decoded, so a decompression bomb (a small file that expands into
  gigabytes) is refused instead of taking the worker's memory;
- a file that is not one of those images raises :class:`NotAnImage` with a sentence for the
  user: a wrong extension, a truncated file, a declared ``image/png`` that is really a PDF;
- each rendition is WebP, at most ``size`` pixels on its longer side (never enlarged), turned
  upright by its EXIF orientation, with no metadata kept (EXIF carries GPS positions);
- the same bytes and sizes give the same renditions, so they can live under content-addressed
  keys.

Needs: Pillow. CPU-bound: call it from a thread (``anyio.to_thread.run_sync``) in async code.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterable

from PIL import Image, ImageOps, UnidentifiedImageError

FORMATS = ("JPEG", "PNG", "WEBP")
WEBP_QUALITY = 80


class NotAnImage(ValueError):
    """The bytes are not an image this service publishes; ``str()`` says why."""


def render_thumbnails(data: bytes, sizes: Iterable[int], *, max_pixels: int) -> dict[int, bytes]:
    """WebP renditions of ``data``, one per size in ``sizes``."""
    with warnings.catch_warnings():
        # Pillow's own bomb guard only warns below twice its limit: ours is the one that counts.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            # formats=: Pillow would otherwise try every decoder it has on untrusted bytes.
            with Image.open(io.BytesIO(data), formats=FORMATS) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise NotAnImage(
                        f"The image is {width}x{height} pixels; at most {max_pixels} are allowed."
                    )
                image.load()
                upright = ImageOps.exif_transpose(image)
        except NotAnImage:
            raise
        except (UnidentifiedImageError, Image.DecompressionBombError) as exc:
            raise NotAnImage("The file is not a JPEG, PNG or WebP image.") from exc
        except (OSError, SyntaxError, ValueError) as exc:
            raise NotAnImage("The image file is damaged or truncated.") from exc
    mode = "RGBA" if upright.mode in ("RGBA", "LA", "P", "PA") else "RGB"
    source = upright.convert(mode)
    renditions: dict[int, bytes] = {}
    for size in sorted(set(sizes)):
        rendition = source.copy()
        rendition.thumbnail((size, size), Image.Resampling.LANCZOS)
        out = io.BytesIO()
        # No exif=/icc_profile= passed: nothing of the original's metadata is written.
        rendition.save(out, format="WEBP", quality=WEBP_QUALITY, method=4)
        renditions[size] = out.getvalue()
    return renditions
