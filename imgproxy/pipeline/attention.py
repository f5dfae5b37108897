"""Content-aware crop placement for `fit=cover`: `g=smart` (detail) and `g=face` (a real detector).

Both look at a small copy of the image, so they cost a few milliseconds whatever the source size, and
only move the crop box that geometry planned: its size never changes.
"""

from __future__ import annotations

import functools
from dataclasses import replace
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

from imgproxy.options import Fit, Gravity, Options
from imgproxy.pipeline.geometry import Box, Geometry

ANALYSIS_SIDE = 256  # pixels on the long side of the copy that is analysed


def refine(image: Image.Image, geometry: Geometry, options: Options) -> tuple[Geometry, dict[str, str]]:
    """Move the cover crop box onto the interesting part; returns notes for the response headers."""
    if options.fit is not Fit.COVER or options.gravity not in (Gravity.SMART, Gravity.FACE):
        return geometry, {}
    small, factor = _analysis_copy(image)
    notes: dict[str, str] = {}
    box = None
    if options.gravity is Gravity.FACE:
        faces = detect_faces(small)
        if faces is None:
            notes["X-Gravity"] = "smart; face detection unavailable (install the faces extra)"
        elif not faces:
            notes["X-Gravity"] = "smart; no face found"
        else:
            box = _place(geometry.box, geometry.region, _centre_of(faces, factor))
            notes["X-Gravity"] = f"face; {len(faces)} found"
    if box is None:
        box = _place(geometry.box, geometry.region, _centre_of_detail(small, geometry, factor))
    return replace(geometry, box=box), notes


def _analysis_copy(image: Image.Image) -> tuple[Image.Image, float]:
    factor = max(image.size) / ANALYSIS_SIDE
    if factor <= 1:
        return image.convert("RGB"), 1.0
    size = (max(1, round(image.width / factor)), max(1, round(image.height / factor)))
    return image.convert("RGB").resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0), factor


def _place(box: Box, region: Box, centre: tuple[float, float]) -> Box:
    """Centre a box of the planned size on `centre`, kept inside the region it was planned in."""
    left, top, right, bottom = box
    w, h = right - left, bottom - top
    x = min(max(centre[0] - w / 2, region[0]), region[2] - w)
    y = min(max(centre[1] - h / 2, region[1]), region[3] - h)
    return (x, y, x + w, y + h)


def _centre_of_detail(small: Image.Image, geometry: Geometry, factor: float) -> tuple[float, float]:
    """The centre of the window of the crop's size holding the most edges and saturation."""
    grey = np.asarray(small.convert("L").filter(ImageFilter.FIND_EDGES), dtype=np.float64)
    hsv = np.asarray(small.convert("HSV"), dtype=np.float64)
    energy = grey + 0.5 * hsv[..., 1] * (hsv[..., 2] / 255.0)  # saturated, non-dark areas draw the eye
    energy[[0, -1], :] = 0  # FIND_EDGES lights up the frame of the image itself
    energy[:, [0, -1]] = 0
    left, top, right, bottom = (round(v / factor) for v in geometry.region)
    energy = energy[top : max(bottom, top + 1), left : max(right, left + 1)]
    box = geometry.box
    win_w = max(1, min(energy.shape[1], round((box[2] - box[0]) / factor)))
    win_h = max(1, min(energy.shape[0], round((box[3] - box[1]) / factor)))
    # Summed-area table: the energy of every window position in one vectorised step.
    table = np.pad(energy.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    sums = table[win_h:, win_w:] - table[:-win_h, win_w:] - table[win_h:, :-win_w] + table[:-win_h, :-win_w]
    y, x = np.unravel_index(int(np.argmax(sums)), sums.shape)
    return ((left + x + win_w / 2) * factor, (top + y + win_h / 2) * factor)


def _centre_of(faces: list[tuple[int, int, int, int]], factor: float) -> tuple[float, float]:
    """The area-weighted centre of the faces, in image pixels."""
    weights = [w * h for _, _, w, h in faces]
    total = sum(weights)
    cx = sum((x + w / 2) * a for (x, _, w, _), a in zip(faces, weights, strict=True)) / total
    cy = sum((y + h / 2) * a for (_, y, _, h), a in zip(faces, weights, strict=True)) / total
    return (cx * factor, cy * factor)


def detect_faces(small: Image.Image) -> list[tuple[int, int, int, int]] | None:
    """Frontal faces as (x, y, w, h) on `small`; None when OpenCV (the `faces` extra) is not installed."""
    detector = _detector()
    if detector is None:
        return None
    grey = np.asarray(small.convert("L"))
    found = detector.detectMultiScale(grey, scaleFactor=1.1, minNeighbors=5, minSize=(16, 16))
    return [tuple(int(v) for v in face) for face in found]  # type: ignore[misc]


@functools.cache
def _detector() -> Any:
    try:
        import cv2  # noqa: PLC0415  (optional extra: imported on first use only)
    except ImportError:
        return None
    cascades = cv2.data.haarcascades  # type: ignore[attr-defined]  # shipped in the wheel, untyped
    detector = cv2.CascadeClassifier(cascades + "haarcascade_frontalface_default.xml")
    return None if detector.empty() else detector
