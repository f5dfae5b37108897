"""Open a source safely and decode only as many pixels as the output needs.

Every check that bounds CPU and memory happens on the header, before pixel data is touched: the
decoder allow-list, the pixel budget (frames included), and the scan count of progressive JPEGs.
Any exception Pillow raises on hostile bytes becomes a 4xx here, never a 500.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from typing import TypeVar

from PIL import Image

from imgproxy.errors import SourceTooLarge, UnsupportedImage

# Only decoders with a real use; Image.open would otherwise try every plugin Pillow has,
# Ghostscript-backed EPS, FITS and TGA's header-less guessing included.
DECODERS = ("JPEG", "PNG", "WEBP", "GIF", "AVIF", "TIFF", "BMP", "ICO")

ORIENTATION_TAG = 0x0112
_TRANSPOSE: dict[int, tuple[Image.Transpose, ...]] = {
    2: (Image.Transpose.FLIP_LEFT_RIGHT,),
    3: (Image.Transpose.ROTATE_180,),
    4: (Image.Transpose.FLIP_TOP_BOTTOM,),
    5: (Image.Transpose.TRANSPOSE,),
    6: (Image.Transpose.ROTATE_270,),
    7: (Image.Transpose.TRANSVERSE,),
    8: (Image.Transpose.ROTATE_90,),
}

T = TypeVar("T")
N = TypeVar("N", int, float)


def guarded(call: Callable[[], T]) -> T:
    """Run a Pillow call on untrusted data; map whatever it raises to a client error."""
    try:
        return call()
    # The warning only surfaces as an exception where warnings are errors (tests): same meaning.
    except (Image.DecompressionBombError, Image.DecompressionBombWarning, MemoryError):
        raise SourceTooLarge("the image declares more pixels than this server decodes") from None
    except (SourceTooLarge, UnsupportedImage):
        raise
    except Exception:  # Pillow raises OSError, ValueError, SyntaxError, struct.error, EOFError, ...
        raise UnsupportedImage("the source is not a complete image in a supported format") from None


def open_image(data: bytes, max_pixels: int, max_jpeg_scans: int, decoders: tuple[str, ...] = DECODERS) -> Image.Image:
    """Identify the image from its header and refuse it before decoding if it is over budget.

    The budget here is for one frame; animations are budgeted as a whole by the caller."""
    if data[:4] == b"\x00\x00\x01\x00":
        _check_icon(data, max_pixels)  # Pillow decodes an icon's image inside Image.open itself
    image = guarded(lambda: Image.open(io.BytesIO(data), formats=decoders))
    # The bytes are in memory already: hand them to the decoder in one call rather than Pillow's 64 KB
    # reads. Each read retakes the GIL, and with render threads side by side those hand-offs cost ~10% of
    # JPEG throughput (bench/PROFILE.md).
    image.decodermaxblock = max(image.decodermaxblock, len(data))
    width, height = image.size
    if width < 1 or height < 1:
        raise UnsupportedImage("the image has no pixels")
    if width * height > max_pixels:
        raise SourceTooLarge(f"the image has {width}x{height} pixels, over this server's budget")
    if image.format == "JPEG" and image.info.get("progressive"):
        # Each scan of a progressive JPEG is a pass over the whole image: thousands of scans in a
        # few hundred KB pin a core for minutes. Every SOS marker in the file counts (an upper bound).
        if data.count(b"\xff\xda") > max_jpeg_scans:
            raise UnsupportedImage("the progressive JPEG has more scans than this server decodes")
    return image


def _check_icon(data: bytes, max_pixels: int) -> None:
    """An icon's directory says 16x16 but an embedded PNG can be anything: read each PNG's own header
    (IHDR) before Pillow decodes it."""
    count = int.from_bytes(data[4:6], "little")
    for index in range(min(count, 256)):
        entry = data[6 + 16 * index : 22 + 16 * index]
        offset = int.from_bytes(entry[12:16], "little")
        head = data[offset : offset + 24]
        if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
            width, height = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
            if width * height > max_pixels:
                raise SourceTooLarge(f"the icon holds a {width}x{height} image, over this server's budget")


def frame_count(image: Image.Image) -> int:
    return int(guarded(lambda: getattr(image, "n_frames", 1)))


def orientation(image: Image.Image) -> int:
    value = guarded(lambda: image.getexif().get(ORIENTATION_TAG, 1))
    return value if isinstance(value, int) and value in _TRANSPOSE else 1


def oriented_size(size: tuple[N, N], orient: int) -> tuple[N, N]:
    return (size[1], size[0]) if orient in (5, 6, 7, 8) else size


def shrink_on_load(image: Image.Image, needed: tuple[float, float]) -> None:
    """Let the JPEG decoder scale by 1/2, 1/4 or 1/8 in the DCT while keeping at least `needed` pixels."""
    if image.format != "JPEG":
        return
    request = (max(1, math.ceil(needed[0])), max(1, math.ceil(needed[1])))
    mode = "RGB" if image.mode in ("RGB", "YCbCr") else image.mode
    guarded(lambda: image.draft(mode, request))


def load(image: Image.Image, orient: int) -> Image.Image:
    """Decode the pixels (first frame) and apply the EXIF orientation."""
    guarded(image.load)
    return oriented(image, orient)


def oriented(image: Image.Image, orient: int) -> Image.Image:
    for op in _TRANSPOSE.get(orient, ()):
        image = image.transpose(op)
    return image
