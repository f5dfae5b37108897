"""Hostile inputs for the image pipeline, built byte by byte: nothing here is downloaded or stored.

Every case is a file name (its extension may lie), the bytes, the query it is requested with, and what
the service may answer: a clear 4xx, or a 200 whose body decodes to the expected format and size.

    from tests.hostile import CASES, IN_PROCESS, ISOLATED

    for case in CASES: (root / case.name).write_bytes(case.data())

`ISOLATED` are the cases dangerous enough (decompression and frame bombs, pixel-budget bypasses) to be
run in a child process under a memory and time limit, with Pillow's warnings left as in production:

    python -m tests.hostile CASE_NAME      # prints one JSON line: status, wall time, peak RSS

Builders are cheap by construction: a zlib stream inflating to a gigabyte is written directly (a fixed
3-byte period of back-references) rather than compressed, so the generator costs milliseconds.
"""

from __future__ import annotations

import functools
import io
import json
import os
import random
import re
import resource
import struct
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

GIB = 1024**3
MIB = 1024**2
ERRORS = frozenset({400, 413, 415})
# A 200 or a clear refusal: for inputs whose outcome depends on how forgiving the decoder is.
ANY_CLEAR = frozenset({200, 400, 413, 415})


@dataclass(frozen=True)
class Hostile:
    name: str  # file name under the source root; the extension may lie
    build: Callable[[], bytes]
    expect: frozenset[int]  # statuses the service may answer
    query: str = "w=64"
    size: tuple[int, int] | None = None  # exact output size on a 200, when known
    fmt: str | None = None  # Pillow's name of the output format on a 200, when known
    isolated: bool = False  # run in a child process under limits (see `run_isolated`)
    note: str = ""
    settings: dict[str, dict[str, object]] = field(default_factory=dict)  # extra settings groups
    bug: str = ""  # a known service bug this case shows (its test is a strict xfail until it is fixed)

    def data(self) -> bytes:
        return self.build()


# --- low-level writers -----------------------------------------------------------------------------------


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png(
    width: int,
    height: int,
    *,
    depth: int = 8,
    colour: int = 0,
    idat: bytes | None = None,
    before: Iterable[bytes] = (),
    after: Iterable[bytes] = (),
    interlace: int = 0,
    trailer: bytes = b"",
) -> bytes:
    """A PNG from parts; `idat` is the zlib stream (default: a tiny one that is far too short)."""
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, interlace)
    body = zlib.compress(b"\x00" * 64) if idat is None else idat
    chunks = [png_chunk(b"IHDR", ihdr), *before]
    chunks += [png_chunk(b"IDAT", body[i : i + (1 << 20)]) for i in range(0, len(body), 1 << 20)]
    return b"\x89PNG\r\n\x1a\n" + b"".join([*chunks, *after, png_chunk(b"IEND", b"")]) + trailer


class _Bits:
    """LSB-first bit writer, as deflate wants."""

    def __init__(self) -> None:
        self.value = 0
        self.count = 0

    def put(self, value: int, width: int) -> None:
        self.value |= value << self.count
        self.count += width

    def put_code(self, code: int, width: int) -> None:
        """Huffman codes go most significant bit first."""
        self.put(int(f"{code:0{width}b}"[::-1], 2), width)

    def take_bytes(self) -> bytes:
        """Every complete byte written so far (the partial one stays)."""
        whole = self.count // 8
        out = (self.value & ((1 << (whole * 8)) - 1)).to_bytes(whole, "little")
        self.value >>= whole * 8
        self.count -= whole * 8
        return out


def deflate_zeros(at_least: int) -> bytes:
    """A zlib stream inflating to at least `at_least` zero bytes (Adler-32 included), in O(output) time.

    One dynamic-Huffman block: literal 0 (1-bit code), end of block (2 bits), and length 258 at distance 1
    (2 + 1 bits). Eight back-references are 24 bits, so the stream is a header, a 3-byte period repeated,
    and a tail: a gigabyte of zeros is 1.5 MB here, and costs nothing to write."""
    bits = _Bits()
    bits.put(1, 1)  # BFINAL: the only block
    bits.put(2, 2)  # BTYPE: dynamic Huffman
    bits.put(286 - 257, 5)  # HLIT: literal/length codes 0..285
    bits.put(1 - 1, 5)  # HDIST: one distance code
    order = (16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15)
    cl_lengths = {18: 1, 1: 2, 2: 2}  # code-length alphabet: 18 -> "0", 1 -> "10", 2 -> "11"
    bits.put(18 - 4, 4)  # HCLEN: code-length code lengths up to `1` in `order`
    for symbol in order[:18]:
        bits.put(cl_lengths.get(symbol, 0), 3)
    cl_code = {18: (0b0, 1), 1: (0b10, 2), 2: (0b11, 2)}

    def length(value: int) -> None:
        bits.put_code(*cl_code[value])

    def zeros(run: int) -> None:  # symbol 18: a run of 11..138 zero lengths
        while run:
            step = min(run, 138)
            bits.put_code(*cl_code[18])
            bits.put(step - 11, 7)
            run -= step

    # lengths: 0 -> 1, 1..255 -> 0, 256 -> 2, 257..284 -> 0, 285 -> 2; distance 0 -> 1
    length(1)
    zeros(255)
    length(2)
    zeros(28)
    length(2)
    length(1)
    # Canonical codes: literal 0 = "0", 256 = "10", 285 = "11"; distance 0 = "0".
    literal, end, match, distance = (0b0, 1), (0b10, 2), (0b11, 2), (0b0, 1)
    produced = 0
    bits.put_code(*literal)  # the one byte the matches copy
    produced += 1
    while bits.count % 8:  # align the period on a byte boundary with more 1-bit literals
        bits.put_code(*literal)
        produced += 1
    head = bits.take_bytes()
    for _ in range(8):
        bits.put_code(*match)
        bits.put_code(*distance)
    period = bits.take_bytes()
    assert len(period) == 3 and bits.count == 0
    repeats = max(0, -(-(at_least - produced) // (8 * 258)))
    produced += repeats * 8 * 258
    bits.put_code(*end)
    tail = bits.take_bytes() + (bits.value.to_bytes(1, "little") if bits.count else b"")
    adler = ((produced % 65521) << 16) | 1  # a = 1 + sum(zeros) = 1; b = sum of a after each byte = n
    return b"\x78\x01" + head + period * repeats + tail + struct.pack(">I", adler)


def zeros_png(width: int, height: int, *, colour: int = 0, extra: int = 0) -> bytes:
    """A valid, all-black PNG whose pixel data is nothing but zeros (filter 0 rows), plus `extra`
    inflated bytes after the image: a decoder that inflated everything would eat them all."""
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[colour]
    raw = height * (1 + width * channels)
    return png(width, height, colour=colour, idat=deflate_zeros(raw + extra))


def pillow(image: Image.Image, fmt: str, **params: object) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **params)
    return out.getvalue()


def gradient(size: tuple[int, int], mode: str = "RGB") -> Image.Image:
    """Something with detail, so encoders and scans have work to do."""
    width, height = size
    image = Image.linear_gradient("L").resize(size).convert("RGB")
    image.paste((200, 30, 30), (width // 4, height // 4, width // 2, height // 2))
    return image.convert(mode)


def rand_bytes(seed: int, count: int) -> bytes:
    return random.Random(seed).randbytes(count)


# --- JPEG surgery --------------------------------------------------------------------------------------


def jpeg_segments(data: bytes) -> tuple[list[bytes], bytes]:
    """Split a JPEG into its marker segments up to SOS, and the rest (scans and EOI)."""
    assert data[:2] == b"\xff\xd8"
    pos, segments = 2, []
    while True:
        marker = data[pos : pos + 2]
        if marker == b"\xff\xda":
            return segments, data[pos:]
        size = struct.unpack(">H", data[pos + 2 : pos + 4])[0]
        segments.append(data[pos : pos + 2 + size])
        pos += 2 + size


def segment(marker: int, payload: bytes) -> bytes:
    assert len(payload) <= 65533
    return struct.pack(">BBH", 0xFF, marker, len(payload) + 2) + payload


def jpeg_with(base: bytes, extra: Iterable[bytes], drop: Callable[[bytes], bool] = lambda s: False) -> bytes:
    """Insert segments right after SOI (before the image's own), optionally dropping some of the originals."""
    segments, rest = jpeg_segments(base)
    return b"\xff\xd8" + b"".join(extra) + b"".join(s for s in segments if not drop(s)) + rest


def jpeg_size_patched(base: bytes, width: int, height: int) -> bytes:
    """Rewrite the frame header (SOF0/SOF2) to declare another size; the scan data stays as it was."""
    segments, rest = jpeg_segments(base)
    patched = []
    for seg in segments:
        frame_header = seg[1] in (0xC0, 0xC1, 0xC2)
        patched.append(seg[:5] + struct.pack(">HH", height, width) + seg[9:] if frame_header else seg)
    return b"\xff\xd8" + b"".join(patched) + rest


def scans(data: bytes) -> list[bytes]:
    """Each SOS segment with its entropy-coded data, up to the next marker that is not RST or stuffing."""
    _, rest = jpeg_segments(data)
    out, pos = [], 0
    while rest[pos : pos + 2] == b"\xff\xda":
        end = pos + 2
        while True:
            end = rest.index(b"\xff", end + 1)
            follower = rest[end + 1]
            if follower != 0 and not 0xD0 <= follower <= 0xD7:
                break
        if rest[end + 1] in (0xC4, 0xDB):  # DHT/DQT between scans belong to the next scan
            size = struct.unpack(">H", rest[end + 2 : end + 4])[0]
            nxt = end + 2 + size
            out.append(rest[pos:end])
            out.append(rest[end:nxt])
            pos = nxt
            continue
        out.append(rest[pos:end])
        pos = end
    return out


def progressive_with_scans(count: int) -> bytes:
    """A progressive JPEG whose last (AC refinement) scan is repeated until there are `count` SOS markers."""
    base = pillow(gradient((64, 48)), "JPEG", progressive=True, quality=90)
    segments, _ = jpeg_segments(base)
    parts = scans(base)
    present = sum(part.startswith(b"\xff\xda") for part in parts)
    last = parts[-1]
    body = b"".join(parts) + last * max(0, count - present)
    return b"\xff\xd8" + b"".join(segments) + body + b"\xff\xd9"


def baseline_with_scans(extra: int) -> bytes:
    """A baseline JPEG whose one scan is repeated `extra` more times before EOI."""
    base = pillow(gradient((64, 48)), "JPEG")
    return base[:-2] + scans(base)[-1] * extra + b"\xff\xd9"


def exif_blob(entries: list[tuple[int, int, int, bytes]], next_ifd: int = 0) -> bytes:
    """A little-endian TIFF structure for APP1: (tag, type, count, 4-byte value or offset) entries."""
    ifd = struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        ifd += struct.pack("<HHI", tag, kind, count) + value.ljust(4, b"\x00")[:4]
    return b"Exif\x00\x00" + b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", next_ifd)


def giant_exif_jpeg() -> bytes:
    """200 APP1 segments of 64 KB, the first a real EXIF with an orientation, the rest junk EXIF: 13 MB."""
    base = pillow(gradient((64, 48)), "JPEG")
    first = exif_blob([(0x0112, 3, 1, struct.pack("<H", 6))])
    junk = [segment(0xE1, b"Exif\x00\x00" + rand_bytes(i, 65500)) for i in range(199)]
    return jpeg_with(base, [segment(0xE1, first), *junk])


def lying_exif_jpeg() -> bytes:
    """EXIF whose entries claim 2^30 values at offsets far past the end, and whose next-IFD pointer loops."""
    base = pillow(gradient((64, 48)), "JPEG")
    entries = [
        (0x0112, 3, 1, struct.pack("<H", 8)),  # orientation 8: 48x64 after it
        (0x010F, 2, 1 << 30, struct.pack("<I", 0x7FFFFFF0)),  # Make: a gigabyte of ASCII, nowhere
        (0x8769, 4, 1, struct.pack("<I", 8)),  # ExifIFD pointing back at IFD0: a loop
        (0x8825, 4, 1, struct.pack("<I", 0xFFFFFFF0)),  # GPS IFD out of range
        (0x9286, 7, 1 << 28, struct.pack("<I", 10)),  # UserComment, undefined, 256 M values
    ]
    return jpeg_with(base, [segment(0xE1, exif_blob(entries, next_ifd=8))])


def giant_icc_jpeg() -> bytes:
    """An ICC profile in 255 APP2 chunks: 16.7 MB of junk that LittleCMS must refuse."""
    base = pillow(gradient((64, 48)), "JPEG")
    chunk = 65519 - 14
    blob = rand_bytes(7, chunk * 255)
    parts = [
        segment(0xE2, b"ICC_PROFILE\x00" + bytes([i + 1, 255]) + blob[i * chunk : (i + 1) * chunk]) for i in range(255)
    ]
    return jpeg_with(base, parts)


def cmyk_jpeg(adobe_inverted: bool) -> bytes:
    image = Image.new("CMYK", (64, 48), (0, 255, 255, 0))
    data = pillow(image, "JPEG", quality=95)
    if not adobe_inverted:
        return data
    # An Adobe APP14 segment with transform 0: decoders treat the CMYK values as inverted.
    adobe = segment(0xEE, b"Adobe" + struct.pack(">HHHB", 100, 0, 0, 0))
    return jpeg_with(data, [adobe], drop=lambda s: s[1] == 0xEE)


# --- GIF surgery ---------------------------------------------------------------------------------------


def gif_blocks(data: bytes) -> tuple[bytes, list[bytes]]:
    """Split a GIF into its header (with the global colour table) and its top-level blocks (no trailer)."""
    flags = data[10]
    pos = 13 + (3 * 2 ** ((flags & 7) + 1) if flags & 0x80 else 0)
    header, blocks = data[:pos], []
    while data[pos] != 0x3B:
        start = pos
        if data[pos] == 0x21:  # extension: label, then sub-blocks
            pos += 2
        else:  # image descriptor, local colour table, LZW minimum code size, then sub-blocks
            local = data[pos + 9]
            pos += 10 + (3 * 2 ** ((local & 7) + 1) if local & 0x80 else 0) + 1
        while data[pos]:
            pos += data[pos] + 1
        pos += 1
        blocks.append(data[start:pos])
    return header, blocks


def gif_frame(size: tuple[int, int], colour: int, offset: tuple[int, int] = (0, 0), disposal: int = 1) -> bytes:
    """One image block (graphic control + descriptor + local colour table + LZW data) encoded by Pillow,
    placed at `offset`. The colour table travels with the frame, so frames keep their own colours."""
    frame = Image.new("P", size, colour)
    frame.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255] * 64)
    data = pillow(frame, "GIF")
    header, blocks = gif_blocks(data)
    flags = data[10]
    table = header[13:] if flags & 0x80 else b""
    image = next(b for b in blocks if b[0] == 0x2C)
    local = (0x80 | (flags & 7)) if table else 0
    image = image[:1] + struct.pack("<HH", *offset) + image[5:9] + bytes([local]) + table + image[10:]
    control = b"\x21\xf9\x04" + bytes([disposal << 2]) + b"\x0a\x00\x00\x00"  # 100 ms
    return control + image


def gif(screen: tuple[int, int], frames: Iterable[bytes], loop: bool = True) -> bytes:
    palette = bytes([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255] * 64)
    header = b"GIF89a" + struct.pack("<HHBBB", screen[0], screen[1], 0xF7, 0, 0) + palette
    netscape = b"\x21\xff\x0bNETSCAPE2.0\x03\x01\x00\x00\x00" if loop else b""
    return header + netscape + b"".join(frames) + b"\x3b"


def gif_js_polyglot() -> bytes:
    """GIF89a/*...*/=1;alert(1)//: the logical screen width spells `/*`, so the file is also a script."""
    frame = gif_frame((1, 1), 1)
    header = b"GIF89a/*\x0a\x00" + bytes([0xF7, 0, 0]) + bytes([0, 0, 0, 255, 0, 0] * 128)
    return header + frame + b"\x3b" + b"*/=1;alert(document.domain)//"


# --- other containers ----------------------------------------------------------------------------------


def bmp_header(
    width: int, height: int, *, bits: int = 24, offset: int = 54, compression: int = 0, colours: int = 0
) -> bytes:
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, bits, compression, 0, 2835, 2835, colours, 0)
    return b"BM" + struct.pack("<IHHI", 0, 0, 0, offset) + info


def ico(entries: list[tuple[int, int, bytes]]) -> bytes:
    """An icon directory: (declared width, declared height, image data: PNG or DIB) per entry."""
    head = struct.pack("<HHH", 0, 1, len(entries))
    offset = 6 + 16 * len(entries)
    directory, blobs = b"", b""
    for width, height, blob in entries:
        directory += struct.pack("<BBBBHHII", width % 256, height % 256, 0, 0, 1, 32, len(blob), offset + len(blobs))
        blobs += blob
    return head + directory + blobs


def tiff_pages(sizes: list[tuple[int, int]]) -> bytes:
    pages = [Image.new("RGB", size, (10 * i % 255, 80, 160)) for i, size in enumerate(sizes)]
    return pillow(pages[0], "TIFF", save_all=True, append_images=pages[1:], compression="tiff_deflate")


def tiff_header_only(width: int, height: int) -> bytes:
    """A TIFF IFD declaring width x height RGB, one strip at an offset past the end of the file."""
    entries = [
        (256, 4, 1, width),
        (257, 4, 1, height),
        (258, 3, 1, 8),
        (259, 3, 1, 1),
        (262, 3, 1, 1),
        (273, 4, 1, 0x7FFFFFF0),
        (277, 3, 1, 1),
        (278, 4, 1, height),
        (279, 4, 1, min(width * height * 3, 0xFFFFFFFF)),
    ]
    ifd = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHII", *entry) for entry in entries)
    return b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0)


def tiff_looping_ifds() -> bytes:
    """Two pages whose next-IFD pointers point at each other: an endless page chain."""
    data = bytearray(tiff_pages([(16, 16), (16, 16)]))
    first = struct.unpack("<I", data[4:8])[0]
    count = struct.unpack("<H", data[first : first + 2])[0]
    second_ptr = first + 2 + 12 * count
    second = struct.unpack("<I", data[second_ptr : second_ptr + 4])[0]
    count2 = struct.unpack("<H", data[second : second + 2])[0]
    data[second + 2 + 12 * count2 : second + 6 + 12 * count2] = struct.pack("<I", first)
    return bytes(data)


def webp_canvas(width: int, height: int) -> bytes:
    """A VP8X header declaring a width x height canvas, then a tiny real frame."""
    small = pillow(Image.new("RGB", (1, 1)), "WEBP", lossless=True)
    inner = small[12:]
    vp8x = b"VP8X" + struct.pack("<I", 10) + b"\x00\x00\x00\x00" + (width - 1).to_bytes(3, "little")
    vp8x += (height - 1).to_bytes(3, "little")
    body = b"WEBP" + vp8x + inner
    return b"RIFF" + struct.pack("<I", len(body)) + body


def apng_lying_frame_count(declared: int) -> bytes:
    """An APNG whose acTL declares `declared` frames but holds one."""
    base = pillow(Image.new("RGB", (8, 8), (0, 200, 0)), "PNG")
    idat_at = base.index(b"IDAT") - 4
    actl = png_chunk(b"acTL", struct.pack(">II", declared, 0))
    fctl = png_chunk(b"fcTL", struct.pack(">IIIIIHHBB", 0, 8, 8, 0, 0, 1, 10, 0, 0))
    return base[:idat_at] + actl + fctl + base[idat_at:]


def zip_archive() -> bytes:
    import zipfile  # noqa: PLC0415  (only this builder needs it)

    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("payload.html", "<script>alert(1)</script>")
    return out.getvalue()


SVG = (
    b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="100" height="100" '
    b'onload="alert(1)"><script>alert(document.cookie)</script><rect width="100" height="100"/></svg>'
)


def truncated(data: bytes, keep: float = 0.5) -> bytes:
    return data[: max(1, int(len(data) * keep))]


# --- the cases -----------------------------------------------------------------------------------------


@functools.cache
def _formats_of_gradient() -> dict[str, bytes]:
    image = gradient((64, 48))
    return {
        "png": pillow(image, "PNG"),
        "jpg": pillow(image, "JPEG"),
        "gif": pillow(image.convert("P"), "GIF"),
        "webp": pillow(image, "WEBP"),
        "tiff": pillow(image, "TIFF"),
        "bmp": pillow(image, "BMP"),
        "ico": pillow(image, "ICO", sizes=[(48, 48)]),
        "avif": pillow(image, "AVIF"),
    }


def _broken() -> list[Hostile]:
    """Zero bytes, truncations, random bytes under image names, random bytes after a real signature."""
    g = _formats_of_gradient
    cases: list[Hostile] = []
    add = cases.append
    for ext in ("png", "jpg", "gif", "webp", "avif", "tiff", "bmp", "ico"):
        add(Hostile(f"empty.{ext}", lambda: b"", frozenset({415}), note="zero-byte file"))
        add(Hostile(f"random.{ext}", lambda ext=ext: rand_bytes(zlib.crc32(ext.encode()), 4096), frozenset({415})))
        add(
            Hostile(
                f"truncated_half.{ext}",
                lambda ext=ext: truncated(g()[ext]),
                frozenset({415}),
                note="cut in the middle of the pixel data: no partial images",
            )
        )
        add(Hostile(f"truncated_head.{ext}", lambda ext=ext: g()[ext][:20], frozenset({415}), note="cut in the header"))
    for magic, ext in (
        (b"\x89PNG\r\n\x1a\n", "png"),
        (b"\xff\xd8\xff\xe0", "jpg"),
        (b"GIF89a", "gif"),
        (b"RIFF\x00\x10\x00\x00WEBPVP8 ", "webp"),
        (b"II*\x00", "tiff"),
        (b"MM\x00*", "tiff"),
        (b"BM", "bmp"),
        (b"\x00\x00\x01\x00", "ico"),
        (b"\x00\x00\x00\x1cftypavif", "avif"),
    ):
        add(
            Hostile(
                f"magic_then_random_{magic[:4].hex()}.{ext}",
                lambda magic=magic: magic + rand_bytes(len(magic), 8192),
                ERRORS,
                note="a real signature, then noise",
            )
        )
    return cases


def _floods() -> list[Hostile]:
    """Pixel floods: huge dimensions declared in a tiny file. Refused from the header, before decoding."""
    g = _formats_of_gradient
    cases: list[Hostile] = []
    add = cases.append
    add(Hostile("flood_png_100000x100000.png", lambda: png(100_000, 100_000), frozenset({413})))
    add(Hostile("flood_png_2147483647x1.png", lambda: png(2**31 - 1, 1), frozenset({413, 415})))
    add(Hostile("flood_png_1x50000001.png", lambda: png(1, 50_000_001), frozenset({413})))
    add(
        Hostile(
            "flood_jpeg_65500x65500.jpg",
            lambda: jpeg_size_patched(g()["jpg"], 65500, 65500),
            frozenset({413}),
        )
    )
    add(Hostile("flood_gif_screen_65535x65535.gif", lambda: gif((65535, 65535), [gif_frame((1, 1), 1)]), ERRORS))
    add(
        Hostile(
            "flood_gif_frame_beyond_screen.gif",
            lambda: gif((1, 1), [gif_frame((1, 1), 1, offset=(65000, 65000))]),
            ERRORS,
            note="a 1x1 frame placed at 65000,65000: the canvas grows to hold it",
        )
    )
    add(Hostile("flood_webp_16384x16384.webp", lambda: webp_canvas(16384, 16384), frozenset({413, 415})))
    add(Hostile("flood_bmp_100000x100000.bmp", lambda: bmp_header(100_000, 100_000) + b"\0" * 64, ERRORS))
    add(Hostile("flood_bmp_topdown_huge.bmp", lambda: bmp_header(100_000, -100_000) + b"\0" * 64, ERRORS))
    add(Hostile("flood_tiff_100000x100000.tiff", lambda: tiff_header_only(100_000, 100_000), frozenset({413})))
    add(
        Hostile(
            "flood_ico_dib_declares_more.ico",
            lambda: ico([(16, 16, bmp_header(60_000, 120_000)[14:] + b"\0" * 64)]),
            ERRORS,
            note="the directory says 16x16; the DIB inside says 60000x60000",
        )
    )
    return cases


def _bombs() -> list[Hostile]:
    """Decompression bombs: the pixel data inflates far beyond what the declared size needs."""
    ok = frozenset({200})
    cases: list[Hostile] = []
    add = cases.append
    add(
        Hostile(
            "zlib_bomb_1gib.png",
            lambda: zeros_png(4096, 4096, extra=GIB),
            ok,
            size=(64, 64),
            fmt="JPEG",
            isolated=True,
            note="IDAT of 1.5 MB inflating to 1 GiB for a 16 MB image: only what the image needs is inflated",
        )
    )
    add(
        Hostile(
            "zlib_bomb_ztxt.png",
            lambda: png(
                8,
                8,
                colour=0,
                idat=deflate_zeros(8 * 9),
                before=[png_chunk(b"zTXt", b"c\x00\x00" + deflate_zeros(GIB)[2:])],
            ),
            frozenset({200, 415}),
            note="a text chunk inflating to 1 GiB (Pillow caps text chunks)",
        )
    )
    add(
        Hostile(
            "zlib_bomb_iccp.png",
            lambda: png(
                8,
                8,
                colour=2,
                idat=deflate_zeros(8 * 25),
                before=[png_chunk(b"iCCP", b"icc\x00\x00" + deflate_zeros(GIB))],
            ),
            frozenset({200, 415}),
            note="an ICC profile inflating to 1 GiB",
        )
    )
    add(
        Hostile(
            "zlib_bomb_at_pixel_budget.png",
            lambda: zeros_png(10_000, 5_000, extra=64 * MIB),
            ok,
            query="w=100",
            size=(100, 50),
            fmt="JPEG",
            isolated=True,
            note="exactly 50 M pixels (the budget) of grey in 70 KB",
        )
    )
    add(
        Hostile(
            "zlib_bomb_rgba_over_pixel_budget.png",
            lambda: zeros_png(10_000, 5_001, colour=6),
            frozenset({413}),
            note="one row over the budget",
        )
    )
    return cases


def _animations() -> list[Hostile]:
    """Frame bombs and huge logical screens."""
    ok = frozenset({200})
    cases: list[Hostile] = []
    add = cases.append
    add(
        Hostile(
            "frame_bomb_5000x1x1.gif",
            lambda: gif((1, 1), [gif_frame((1, 1), i % 3 + 1) for i in range(5000)]),
            ok,
            size=(1, 1),
            note="5000 frames, over max_frames: the first frame only",
        )
    )
    add(
        Hostile(
            "frame_bomb_2000x256x256.gif",
            lambda: gif((256, 256), [gif_frame((256, 256), i % 3 + 1) for i in range(2000)]),
            ok,
            size=(64, 64),
            isolated=True,
            note="131 M pixels over 2000 frames: the first frame only",
        )
    )
    add(
        Hostile(
            "frame_bomb_400x64x64.gif",
            lambda: gif((64, 64), [gif_frame((64, 64), i % 3 + 1) for i in range(400)]),
            ok,
            query="w=32",
            size=(32, 32),
            fmt="GIF",
            note="400 frames within every budget: all rendered",
        )
    )
    add(
        Hostile(
            "identical_frames.gif",
            lambda: gif((16, 16), [gif_frame((16, 16), 1), gif_frame((16, 16), 1)]),
            ok,
            size=(16, 16),
            fmt="GIF",
        )
    )
    add(
        Hostile(
            "identical_frames_mixed_disposal.gif",
            lambda: gif((16, 16), [gif_frame((16, 16), 1), gif_frame((16, 16), 1, disposal=2)]),
            ok,
            size=(16, 16),
            fmt="GIF",
        )
    )
    add(
        Hostile(
            "huge_screen_at_budget.gif",
            lambda: gif((10_000, 5_000), [gif_frame((1, 1), 1)]),
            ok,
            query="w=100",
            size=(100, 50),
            isolated=True,
            note="a 50 M pixel logical screen holding one 1x1 frame",
        )
    )
    add(
        Hostile(
            "huge_screen_two_frames.gif",
            lambda: gif((10_000, 5_000), [gif_frame((1, 1), 1), gif_frame((1, 1), 2)]),
            ok,
            query="w=100",
            size=(100, 50),
            isolated=True,
            note="two frames of a 50 M pixel screen: over the animation budget, first frame only",
        )
    )
    add(
        Hostile(
            "frame_seek_bomb.gif",
            lambda: gif((10_000, 5_000), [gif_frame((1, 1), i % 3 + 1) for i in range(500)]),
            frozenset({413}),
            query="frame=10&w=100",
            isolated=True,
            note="frame=10 of a 19 KB GIF with a 50 M pixel screen: every earlier frame is composed (0.33 s each;"
            " frame=499 pins a core for minutes, past the render timeout)",
        )
    )
    add(Hostile("apng_declares_2e31_frames.png", lambda: apng_lying_frame_count(2**31 - 1), ANY_CLEAR, size=(8, 8)))
    add(Hostile("apng_declares_400_frames.png", lambda: apng_lying_frame_count(400), ANY_CLEAR, size=(8, 8)))
    add(Hostile("tiff_looping_ifds.tiff", tiff_looping_ifds, ANY_CLEAR, size=(16, 16)))
    add(
        Hostile(
            "tiff_600_pages.tiff",
            lambda: tiff_pages([(16, 16)] * 600),
            ok,
            size=(16, 16),
            note="a page bomb: over max_frames, the first page only",
        )
    )
    return cases


def _metadata() -> list[Hostile]:
    """Metadata: giant and lying EXIF, giant ICC profiles; also with strip=0, which keeps EXIF."""
    ok = frozenset({200})
    cases: list[Hostile] = []
    add = cases.append
    for query in ("w=64", "w=64&strip=0", "fm=webp&strip=0"):
        tag = query.replace("&", "_").replace("=", "")
        add(Hostile(f"giant_exif_{tag}.jpg", giant_exif_jpeg, ok, query=query, size=(48, 64)))
        add(Hostile(f"lying_exif_{tag}.jpg", lying_exif_jpeg, ok, query=query, size=(48, 64)))
        add(Hostile(f"giant_icc_{tag}.jpg", giant_icc_jpeg, ok, query=query, size=(64, 48)))
    add(
        Hostile(
            "giant_icc.png",
            lambda: pillow(gradient((64, 48)), "PNG", icc_profile=rand_bytes(3, 4 * MIB)),
            frozenset({200, 415}),
            size=(64, 48),
        )
    )
    add(
        Hostile(
            "giant_exif.webp",
            lambda: pillow(gradient((64, 48)), "WEBP", exif=b"Exif\x00\x00" + rand_bytes(5, 8 * MIB)),
            frozenset({200, 415}),
            query="w=64&strip=0",
            size=(64, 48),
        )
    )
    return cases


def _scans() -> list[Hostile]:
    """Progressive JPEG scan floods: every scan is a pass over the whole image."""
    cases: list[Hostile] = []
    add = cases.append
    add(Hostile("scans_5000.jpg", lambda: progressive_with_scans(5000), frozenset({415}), note="over max_jpeg_scans"))
    add(Hostile("scans_99.jpg", lambda: progressive_with_scans(99), ANY_CLEAR, size=(64, 48)))
    add(
        Hostile(
            "baseline_5000_sos.jpg",
            lambda: baseline_with_scans(5000),
            ANY_CLEAR,
            size=(64, 48),
            note="a baseline JPEG followed by 5000 more scans",
        )
    )
    return cases


def _polyglots() -> list[Hostile]:
    """Polyglots and lying names."""
    g = _formats_of_gradient
    ok = frozenset({200})
    cases: list[Hostile] = []
    add = cases.append
    add(Hostile("polyglot_gif_js.gif", gif_js_polyglot, ok, query="fm=png", size=(8192, 8), fmt="PNG"))
    add(
        Hostile(
            "polyglot_jpeg_zip.jpg",
            lambda: g()["jpg"] + zip_archive(),
            ok,
            size=(64, 48),
            fmt="JPEG",
            note="a JPEG with a ZIP appended: re-encoded, the archive cannot survive",
        )
    )
    add(Hostile("polyglot_png_html.png", lambda: g()["png"] + b"<html><script>alert(1)</script>", ok, size=(64, 48)))
    add(
        Hostile(
            "html_with_jpeg_magic.jpg", lambda: b"\xff\xd8\xff\xe0<html><script>alert(1)</script>", frozenset({415})
        )
    )
    add(Hostile("script.svg", lambda: SVG, frozenset({415}), note="SVG is not an allowed decoder"))
    add(Hostile("svg_named.png", lambda: SVG, frozenset({415})))
    add(Hostile("svg_named.jpg", lambda: b"\xef\xbb\xbf" + SVG, frozenset({415})))
    add(Hostile("html_named.gif", lambda: b"<!doctype html><script>alert(1)</script>", frozenset({415})))
    add(Hostile("eps_named.png", lambda: b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", frozenset({415})))
    add(Hostile("pdf_named.jpg", lambda: b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF", frozenset({415})))
    add(Hostile("psd_named.png", lambda: b"8BPS\x00\x01" + bytes(20), frozenset({415})))
    for real, ext, fmt in (
        ("png", "jpg", "JPEG"),
        ("jpg", "png", "JPEG"),
        ("webp", "gif", "JPEG"),
        ("gif", "webp", "JPEG"),
    ):
        add(Hostile(f"lying_{real}_as.{ext}", lambda real=real: g()[real], ok, size=(64, 48), fmt=fmt))
    add(Hostile("lying_bmp_as.png", lambda: g()["bmp"], ok, size=(64, 48)))
    add(Hostile("lying_tiff_as.jpg", lambda: g()["tiff"], ok, size=(64, 48)))
    return cases


def _modes() -> list[Hostile]:
    """Colour-mode edge cases."""
    ok = frozenset({200})
    cases: list[Hostile] = []
    add = cases.append
    add(Hostile("cmyk.jpg", lambda: cmyk_jpeg(False), ok, size=(64, 48), fmt="JPEG"))
    add(Hostile("cmyk_adobe_inverted.jpg", lambda: cmyk_jpeg(True), ok, size=(64, 48), fmt="JPEG"))
    add(
        Hostile(
            "cmyk_junk_icc.jpg",
            lambda: pillow(Image.new("CMYK", (64, 48), (0, 255, 255, 0)), "JPEG", icc_profile=rand_bytes(9, 3000)),
            ok,
            size=(64, 48),
        )
    )
    add(Hostile("cmyk.tiff", lambda: pillow(Image.new("CMYK", (64, 48), (0, 255, 255, 0)), "TIFF"), ok, size=(64, 48)))
    for mode, ext in (("I;16", "png"), ("I", "tiff"), ("F", "tiff"), ("I;16", "tiff"), ("LA", "png"), ("1", "png")):
        tag = mode.replace(";", "")
        add(
            Hostile(
                f"mode_{tag}.{ext}",
                lambda mode=mode, ext=ext: pillow(gradient((64, 48), mode), ext.upper()),
                ok,
                size=(64, 48),
            )
        )
    for name, colour, channels in (("rgb48", 2, 3), ("rgba64", 6, 4), ("la16", 4, 2)):  # 16 bits per channel
        row = 1 + 64 * channels * 2  # the filter byte, then the row's samples
        add(
            Hostile(
                f"mode_{name}.png",
                lambda colour=colour, row=row: png(64, 48, depth=16, colour=colour, idat=deflate_zeros(48 * row)),
                ok,
                size=(64, 48),
            )
        )
    add(Hostile("mode_lab.tiff", lambda: pillow(Image.new("LAB", (64, 48), (50, 20, 200)), "TIFF"), ok, size=(64, 48)))
    add(Hostile("mode_ycbcr.tiff", lambda: pillow(gradient((64, 48)), "TIFF", compression="jpeg"), ok, size=(64, 48)))
    add(
        Hostile(
            "palette_short.png",
            lambda: png(
                16,
                16,
                colour=3,
                idat=zlib.compress(b"".join(b"\x00" + bytes([255] * 16) for _ in range(16))),
                before=[png_chunk(b"PLTE", bytes([255, 0, 0, 0, 255, 0]))],
            ),
            ANY_CLEAR,
            size=(16, 16),
            note="pixels index 255 of a 2-colour palette",
        )
    )
    add(
        Hostile(
            "palette_trns_longer_than_plte.png",
            lambda: png(
                16,
                16,
                colour=3,
                idat=zlib.compress(bytes(17 * 16)),
                before=[png_chunk(b"PLTE", bytes([255, 0, 0])), png_chunk(b"tRNS", bytes(300))],
            ),
            ANY_CLEAR,
            size=(16, 16),
        )
    )
    add(
        Hostile(
            "palette_no_plte.png",
            lambda: png(16, 16, colour=3, idat=zlib.compress(bytes(17 * 16))),
            ANY_CLEAR,
            size=(16, 16),
        )
    )
    add(Hostile("interlaced.png", lambda: pillow(gradient((64, 48)), "PNG", interlace=1), ok, size=(64, 48)))
    add(Hostile("palette_1bit.bmp", lambda: pillow(gradient((64, 48), "1"), "BMP"), ok, size=(64, 48)))
    add(Hostile("bmp_topdown.bmp", lambda: bmp_header(4, -4) + bytes(4 * 12), ok, size=(4, 4)))
    add(
        Hostile(
            "bmp_rle8_junk.bmp",
            lambda: (
                bmp_header(16, 16, bits=8, offset=54 + 1024, compression=1, colours=256)
                + bytes(1024)
                + rand_bytes(11, 300)
            ),
            ANY_CLEAR,
            size=(16, 16),
        )
    )
    add(Hostile("bmp_offset_past_end.bmp", lambda: bmp_header(16, 16, offset=10**9) + bytes(64), frozenset({415})))
    add(Hostile("bmp_zero_bits.bmp", lambda: bmp_header(16, 16, bits=0) + bytes(64), frozenset({415})))
    add(Hostile("bmp_huge_palette.bmp", lambda: bmp_header(16, 16, bits=8, colours=2**31 - 1) + bytes(64), ERRORS))
    add(
        Hostile(
            "ico_many_sizes.ico",
            lambda: pillow(gradient((256, 256)), "ICO", sizes=[(16, 16), (32, 32), (256, 256)]),
            ok,
            size=(64, 64),
        )
    )
    add(Hostile("ico_no_entries.ico", lambda: struct.pack("<HHH", 0, 1, 0), frozenset({415})))
    add(
        Hostile(
            "ico_entry_past_end.ico",
            lambda: struct.pack("<HHHBBBBHHII", 0, 1, 1, 16, 16, 0, 0, 1, 32, 999, 10**8),
            frozenset({415}),
        )
    )
    return cases


def _shapes() -> list[Hostile]:
    """Shapes: extreme aspect ratios and the smallest image there is."""
    ok = frozenset({200})
    cases: list[Hostile] = []
    add = cases.append
    add(Hostile("thin_1x20000.png", lambda: zeros_png(1, 20000), ok, query="h=100", size=(1, 100)))
    add(Hostile("wide_20000x1.png", lambda: zeros_png(20000, 1), ok, query="w=100", size=(100, 1)))
    add(Hostile("thin_1x20000_nosize.png", lambda: zeros_png(1, 20000), ANY_CLEAR, query="fm=png"))
    add(Hostile("wide_20000x1_cover.png", lambda: zeros_png(20000, 1), ok, query="w=64&h=64&fit=cover", size=(1, 1)))
    add(
        Hostile(
            "wide_20000x1_contain.png", lambda: zeros_png(20000, 1), ok, query="w=64&h=64&fit=contain", size=(64, 64)
        )
    )
    for ext in ("png", "jpg", "gif", "webp", "bmp", "tiff", "ico", "avif"):
        add(
            Hostile(
                f"one_pixel.{ext}",
                lambda ext=ext: pillow(
                    Image.new("RGB" if ext != "gif" else "P", (1, 1), 1), ext.replace("jpg", "jpeg").upper()
                ),
                ok,
                size=(1, 1),
            )
        )
    add(
        Hostile(
            "one_pixel_enlarged.png",
            lambda: zeros_png(1, 1),
            ok,
            query="w=2000&h=2000&fit=fill&fm=png",
            size=(2000, 2000),
        )
    )
    add(
        Hostile(
            "one_pixel_all_effects.png",
            lambda: zeros_png(1, 1, colour=6),
            ok,
            query="w=64&enlarge=1&blur=5&sharpen=2&radius=30&pad=3&trim=10&g=smart&h=64&fit=cover&fm=webp",
            size=(70, 70),
        )
    )
    return cases


def _bypasses() -> list[Hostile]:
    """Budget bypasses through containers whose inner image is not the size their header says."""
    cases: list[Hostile] = []
    add = cases.append
    add(
        Hostile(
            "bypass_ico_png_8000x8000.ico",
            lambda: ico([(16, 16, zeros_png(8000, 8000, colour=6))]),
            frozenset({413}),
            isolated=True,
            note="the directory says 16x16, the PNG inside is 64 M RGBA pixels (over the 50 M budget)",
        )
    )
    add(
        Hostile(
            "bypass_gif_second_frame_grows.gif",
            lambda: gif((16, 16), [gif_frame((16, 16), 1), gif_frame((8000, 8000), 2)]),
            frozenset({200, 413}),
            isolated=True,
            note="a 16x16 screen whose second frame is 8000x8000: 64 M pixels past the check",
        )
    )
    return cases


def _cases() -> list[Hostile]:
    groups = (
        _broken(),
        _floods(),
        _bombs(),
        _animations(),
        _metadata(),
        _scans(),
        _polyglots(),
        _modes(),
        _shapes(),
        _bypasses(),
    )
    return [case for group in groups for case in group]


CASES: list[Hostile] = _cases()
BY_NAME: dict[str, Hostile] = {case.name: case for case in CASES}
ISOLATED: list[Hostile] = [case for case in CASES if case.isolated]
IN_PROCESS: list[Hostile] = [case for case in CASES if not case.isolated]


# --- measuring ---------------------------------------------------------------------------------------


def peak_rss_kib() -> int:
    """VmHWM of this process: the most resident memory since start or the last `reset_peak_rss`."""
    with open("/proc/self/status") as status:
        match = re.search(r"VmHWM:\s+(\d+)", status.read())
    return int(match.group(1)) if match else 0


def rss_kib(pid: int | str = "self") -> int:
    with open(f"/proc/{pid}/status") as status:
        match = re.search(r"VmRSS:\s+(\d+)", status.read())
    return int(match.group(1)) if match else 0


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where that is not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
    except OSError:
        return False
    return True


def report(suite: str, **numbers: object) -> None:
    """Append one JSON line of figures to $IMGPROXY_FUZZ_REPORT, if set (the closing note's numbers)."""
    target = os.environ.get("IMGPROXY_FUZZ_REPORT")
    if target:
        with open(target, "a") as out:
            out.write(json.dumps({"suite": suite, **numbers}) + "\n")


def run_one(case: Hostile, root: Path) -> dict[str, object]:
    """Write the case, serve it through the real app, request it twice; report what happened."""
    from starlette.testclient import TestClient  # noqa: PLC0415  (keep `import tests.hostile` light)

    from imgproxy.app import create_app  # noqa: PLC0415
    from imgproxy.settings import Settings  # noqa: PLC0415

    (root / case.name).write_bytes(case.data())
    groups: dict[str, dict[str, object]] = {"limits": {"workers": 1}, **case.settings}
    groups["source"] = {"local_root": root, **case.settings.get("source", {})}
    settings = Settings(_env_file=None, log={"level": "warning"}, **groups)  # type: ignore[arg-type]
    with TestClient(create_app(settings)) as client:
        service = client.app.state.service  # type: ignore[attr-defined]
        reset_peak_rss()
        before = peak_rss_kib()
        started = time.perf_counter()
        first = client.get(f"/img/{case.name}?{case.query}")
        wall = time.perf_counter() - started
        peak = peak_rss_kib()
        second = client.get(f"/img/{case.name}?{case.query}")
        body: bytes = first.content
        decoded: dict[str, object] = {}
        if first.status_code == 200:
            image = Image.open(io.BytesIO(body))
            image.load()
            decoded = {"format": image.format, "size": list(image.size)}
        return {
            "case": case.name,
            "status": first.status_code,
            "second_status": second.status_code,
            "content_type": first.headers.get("content-type"),
            "x_cache": [first.headers.get("x-cache"), second.headers.get("x-cache")],
            "cached_entries": len(service.cache),
            "wall_s": round(wall, 3),
            "peak_rss_delta_mib": round((peak - before) / 1024, 1),
            "peak_rss_mib": round(peak / 1024, 1),
            **decoded,
        }


def run_isolated(name: str, memory_bytes: int = 3 * GIB, timeout: float = 60.0) -> dict[str, object]:
    """Run one case in a child process: address space capped, CPU time capped, killed at `timeout`.

    The child leaves Pillow's warnings as they are in production (no warnings-as-errors), so a
    DecompressionBombWarning is a warning there, exactly as on a server."""
    import subprocess  # noqa: PLC0415

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
        resource.setrlimit(resource.RLIMIT_CPU, (int(timeout), int(timeout) + 5))

    repo = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONWARNINGS": "default", "OPENBLAS_NUM_THREADS": "1"}
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "tests.hostile", name],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=limit,
        check=False,
    )
    elapsed = time.perf_counter() - started
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        return {"case": name, "crashed": True, "returncode": done.returncode, "stderr": done.stderr[-2000:]}
    result: dict[str, object] = json.loads(lines[-1])
    result["process_s"] = round(elapsed, 2)
    return result


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        print("\n".join(case.name for case in CASES))
        return 0
    with tempfile.TemporaryDirectory(prefix="hostile-") as root:
        for name in argv:
            print(json.dumps(run_one(BY_NAME[name], Path(root))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
