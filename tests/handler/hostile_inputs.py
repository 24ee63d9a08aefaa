"""Small requests that would cost a lot: each built here from scratch, none taken from the code
under test (issue #11, "small requests that cost a lot").
"""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image

SOS = b"\xff\xda"
EOI = b"\xff\xd9"


def encode(img: Image.Image, fmt: str, **params) -> bytes:
    out = io.BytesIO()
    img.save(out, fmt, **params)
    return out.getvalue()


def sliver_png(long_side: int = 3000) -> bytes:
    """One pixel wide: under a hundred bytes, yet Resize(256) makes it 256 x (256 * long_side)."""
    return encode(Image.new("L", (1, long_side), 128), "PNG", optimize=True)


def sliver_webp(long_side: int = 16383) -> bytes:
    """The same as WebP (16383 is the format's largest side): a few hundred bytes."""
    return encode(Image.new("RGB", (long_side, 1), (90, 120, 200)), "WEBP", lossless=True)


def progressive_jpeg(size: tuple[int, int] = (64, 48), mode: str = "RGB") -> bytes:
    return encode(Image.new(mode, size, 120), "JPEG", progressive=True, quality=90)


def scans_of(jpeg: bytes) -> tuple[bytes, list[bytes]]:
    """(everything before the first scan, [each scan: SOS header + entropy data]).

    Exact for Pillow's (libjpeg's) own output, whose entropy data never holds FF DA: a data FF
    is always stuffed as FF 00.
    """
    assert jpeg.endswith(EOI)
    starts = []
    at = jpeg.find(SOS)
    while at != -1:
        starts.append(at)
        at = jpeg.find(SOS, at + 2)
    ends = [*starts[1:], len(jpeg) - len(EOI)]
    return jpeg[: starts[0]], [jpeg[a:b] for a, b in zip(starts, ends, strict=True)]


def jpeg_with_scans(total: int, size: tuple[int, int] = (1024, 1024)) -> bytes:
    """A progressive JPEG of a flat image whose last scan is repeated until there are ``total``.

    The repeated scan (luma AC refinement, all EOB runs) is ~16 bytes, yet libjpeg walks every
    block of the image once for it: LJT-01-003 in libjpeg-turbo's "Two Issues with the JPEG
    Standard". Repeating it is legal JPEG (libjpeg only warns).
    """
    head, scans = scans_of(progressive_jpeg(size))
    assert total >= len(scans)
    return head + b"".join(scans) + scans[-1] * (total - len(scans)) + EOI


def jpeg_with_comments(count: int) -> bytes:
    """A valid small JPEG with ``count`` empty COM segments before its frame header."""
    base = encode(Image.new("RGB", (64, 48), (10, 200, 30)), "JPEG")
    return base[:2] + b"\xff\xfe\x00\x02" * count + base[2:]


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_with_chunks(count: int) -> bytes:
    """A valid small PNG with ``count`` empty ancillary chunks (type "unKn") after IHDR."""
    base = encode(Image.new("RGB", (64, 48), (10, 200, 30)), "PNG")
    ihdr_end = 8 + 12 + 13
    return base[:ihdr_end] + png_chunk(b"unKn", b"") * count + base[ihdr_end:]


def png_claiming(width: int, height: int, idat: bytes) -> bytes:
    """A PNG header declaring width x height (8-bit gray) over the given IDAT payload."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", idat)
        + png_chunk(b"IEND", b"")
    )


def eps_with_comment_lines(count: int) -> bytes:
    """An EPS header over many comment lines: Pillow's EPS plugin reads them one at a time."""
    return b"%!PS-Adobe-3.0 EPSF-3.0\n" + b"%%X\n" * count
