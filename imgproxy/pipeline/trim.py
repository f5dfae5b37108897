"""`trim`: find the box inside uniform borders, so fitting applies to the content."""

from __future__ import annotations

from PIL import Image, ImageChops

from imgproxy.pipeline.geometry import Box


def trim_box(image: Image.Image, tolerance: int) -> Box | None:
    """The bounding box of everything that differs from the top-left pixel by more than `tolerance`.

    None when nothing would be removed, or when the whole image is one colour (nothing would remain).
    """
    rgb = image.convert("RGBA") if image.mode == "RGBA" else image.convert("RGB")
    background = Image.new(rgb.mode, rgb.size, rgb.getpixel((0, 0)))
    difference = ImageChops.difference(rgb, background)
    # The largest channel difference per pixel, thresholded: a mask of the content.
    channels = difference.split()
    peak = channels[0]
    for channel in channels[1:]:
        peak = ImageChops.lighter(peak, channel)
    bbox = peak.point(lambda value: 255 if value > tolerance else 0).getbbox()
    if bbox is None or bbox == (0, 0, image.width, image.height):
        return None
    return (float(bbox[0]), float(bbox[1]), float(bbox[2]), float(bbox[3]))
