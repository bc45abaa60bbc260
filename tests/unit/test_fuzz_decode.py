"""Fuzzing streamdl.models.decode.decode_image: thousands of generated inputs, none may crash, hang or escape.

Every input is either decoded to exactly ``(height, width, channels)`` uint8 or refused with a
:class:`DecodeError` whose reason is in :data:`DECODE_REASONS` and whose message is not empty.
Inputs: random bytes (bare and behind each format's magic), small valid images of every
supported format and mode made here with Pillow and then mutated (truncated, header bytes
flipped, header fields set to edge values, chunks duplicated, PNG CRCs recomputed so Pillow
believes the change), headers claiming huge sizes (the decompression-bomb path), and a few fixed
nasty cases. Seeded (``derandomize``) so that CI runs are reproducible.
"""

from __future__ import annotations

import io
import resource
import struct
import time
import zlib
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from streamdl.models.decode import DECODE_REASONS, DecodeError, DecodeLimits, decode_image
from tests.unit.fuzzing import DEADLINE_MS, fuzz, note

# Pillow warns (and does not raise) about corrupt EXIF and about images between its own two
# bomb thresholds; both are expected for mutated inputs.
pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning"),
]

FUZZ_LIMITS = DecodeLimits(max_bytes=1 << 20, max_pixels=1_000_000)
"""Mutated headers may claim up to a million pixels: real decoding work, bounded memory."""
DEFAULT_LIMITS = DecodeLimits()


# --- the property ----------------------------------------------------------------


def check(data: bytes, size: tuple[int, int] = (12, 10), channels: int = 3, limits: DecodeLimits = FUZZ_LIMITS) -> str:
    """Decoded to the exact shape, or refused with a known reason and a message; returns which."""
    try:
        out = decode_image(data, size, channels, limits)
    except DecodeError as exc:
        assert exc.reason in DECODE_REASONS, exc.reason
        assert exc.message and str(exc).strip(), repr(exc)
        note(f"refused: {exc.reason}")
        return exc.reason
    assert isinstance(out, np.ndarray)
    assert out.shape == (size[0], size[1], channels) and out.dtype == np.uint8, (out.shape, out.dtype)
    note("decoded")
    return "decoded"


targets = st.tuples(st.sampled_from([(12, 10), (1, 1), (8, 8), (31, 17), (64, 3)]), st.sampled_from([1, 3]))


# --- seeds: small valid images of every supported format and mode ------------------


def encode(img: Image.Image, fmt: str, **params) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **params)
    return buf.getvalue()


def picture(mode: str, size: tuple[int, int], seed: int = 0) -> Image.Image:
    w, h = size
    rng = np.random.default_rng(seed)
    rgb = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    if mode == "I;16":
        return Image.fromarray(rng.integers(0, 65536, (h, w)).astype(np.uint16))
    if mode == "P":
        return rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    if mode in ("RGBA", "LA"):
        img = rgb.convert(mode)
        img.putalpha(Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8)))
        return img
    return rgb.convert(mode)


def rle8_bmp(w: int, h: int) -> bytes:
    """An 8-bit run-length-encoded BMP (Pillow reads RLE but does not write it)."""
    rows = b"".join(bytes([3, 1, 2, 2, 0, 3, 9, 8, 7]) + b"\x00" * (w > 5) + b"\x00\x00" for _ in range(h))
    body = rows + b"\x00\x01"
    palette = b"".join(bytes([i, 255 - i, i // 2, 0]) for i in range(256))
    info = struct.pack("<IiiHHIIiiII", 40, w, h, 1, 8, 1, len(body), 2835, 2835, 256, 0)
    offset = 14 + len(info) + len(palette)
    return b"BM" + struct.pack("<IHHI", offset + len(body), 0, 0, offset) + info + palette + body


def animation(fmt: str, **params) -> bytes:
    frames = [picture("RGB", (12, 10), seed) for seed in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, format=fmt, save_all=True, append_images=frames[1:], duration=50, **params)
    return buf.getvalue()


def _seeds() -> dict[str, tuple[str, bytes]]:
    """name -> (format, bytes): every supported format x the modes it can hold, and variants."""
    modes = {
        "PNG": ["1", "L", "LA", "RGB", "RGBA", "P", "I;16"],
        "JPEG": ["L", "RGB", "CMYK"],
        "WEBP": ["RGB", "RGBA"],
        "GIF": ["L", "P", "RGB"],
        "BMP": ["1", "L", "P", "RGB", "RGBA"],
        "TIFF": ["1", "L", "LA", "RGB", "RGBA", "P", "CMYK", "I;16"],
    }
    seeds: dict[str, tuple[str, bytes]] = {}
    for fmt, names in modes.items():
        for mode in names:
            for size in ((13, 9), (40, 32)):
                seeds[f"{fmt}-{mode}-{size[0]}x{size[1]}"] = (fmt, encode(picture(mode, size), fmt))
    exif = Image.Exif()
    exif[0x0112] = 6
    rgb = picture("RGB", (40, 32))
    p = picture("P", (13, 9))
    seeds.update(
        {
            "PNG-P-tRNS": ("PNG", encode(p, "PNG", transparency=0)),
            "PNG-RGB-tRNS": ("PNG", encode(picture("RGB", (13, 9)), "PNG", transparency=(0, 0, 0))),
            "PNG-APNG": ("PNG", animation("PNG")),
            "PNG-exif": ("PNG", encode(rgb, "PNG", exif=exif.tobytes())),
            "JPEG-progressive": ("JPEG", encode(rgb, "JPEG", progressive=True, quality=90)),
            "JPEG-exif6": ("JPEG", encode(rgb, "JPEG", exif=exif.tobytes())),
            "JPEG-optimize-444": ("JPEG", encode(rgb, "JPEG", optimize=True, subsampling=0)),
            "JPEG-MPO": ("JPEG", animation("MPO")),
            "WEBP-lossy": ("WEBP", encode(rgb, "WEBP", quality=50)),
            "WEBP-lossless": ("WEBP", encode(rgb, "WEBP", lossless=True)),
            "WEBP-exif": ("WEBP", encode(picture("RGBA", (13, 9)), "WEBP", exif=exif.tobytes())),
            "WEBP-anim": ("WEBP", animation("WEBP")),
            "GIF-tRNS": ("GIF", encode(p, "GIF", transparency=0)),
            "GIF-anim": ("GIF", animation("GIF", loop=0)),
            "BMP-RLE8": ("BMP", rle8_bmp(13, 9)),
            "TIFF-multipage": ("TIFF", animation("TIFF")),
            "TIFF-exif": ("TIFF", encode(rgb, "TIFF", exif=exif.tobytes())),
        }
    )
    for compression in ("tiff_lzw", "tiff_deflate", "packbits", "jpeg"):
        seeds[f"TIFF-{compression}"] = ("TIFF", encode(rgb, "TIFF", compression=compression))
    seeds["TIFF-group4"] = ("TIFF", encode(picture("1", (40, 32)), "TIFF", compression="group4"))
    seeds["TIFF-bigendian"] = ("TIFF", _big_endian_tiff(picture("L", (13, 9))))
    return seeds


def _big_endian_tiff(img: Image.Image) -> bytes:
    """A minimal uncompressed big-endian ("MM") grayscale TIFF, written by hand."""
    w, h = img.size
    pixels = img.tobytes()
    entries = [
        (256, 4, 1, w),
        (257, 4, 1, h),
        (258, 3, 1, 8 << 16),
        (259, 3, 1, 1 << 16),
        (262, 3, 1, 1 << 16),
        (273, 4, 1, 0),
        (277, 3, 1, 1 << 16),
        (278, 4, 1, h),
        (279, 4, 1, len(pixels)),
    ]
    ifd_size = 2 + 12 * len(entries) + 4
    data_at = 8 + ifd_size
    entries[5] = (273, 4, 1, data_at)
    ifd = struct.pack(">H", len(entries)) + b"".join(struct.pack(">HHII", *e) for e in entries) + b"\0\0\0\0"
    return b"MM\x00*" + struct.pack(">I", 8) + ifd + pixels


SEEDS = _seeds()
SEED_NAMES = sorted(SEEDS)
SEEDS_BY_FORMAT = {fmt: sorted(n for n, (f, _) in SEEDS.items() if f == fmt) for fmt in {f for f, _ in SEEDS.values()}}


# --- where each format keeps its header fields -------------------------------------


@dataclass(frozen=True)
class Field:
    offset: int
    width: int  # bytes
    order: str  # "big", "little"


def _u(data: bytes, at: int, width: int, order: str) -> int:
    return int.from_bytes(data[at : at + width], order)


def png_chunks(data: bytes) -> list[tuple[int, int, bytes]]:
    """(offset, body length, kind) of each whole chunk."""
    out, pos = [], 8
    while pos + 12 <= len(data):
        n = _u(data, pos, 4, "big")
        if pos + 12 + n > len(data):
            break
        out.append((pos, n, data[pos + 4 : pos + 8]))
        pos += 12 + n
    return out


def png_fix_crcs(data: bytes) -> bytes:
    """Recompute every chunk's CRC so that Pillow believes the (mutated) chunk."""
    out = bytearray(data)
    for pos, n, _ in png_chunks(data):
        out[pos + 8 + n : pos + 12 + n] = struct.pack(">I", zlib.crc32(bytes(out[pos + 4 : pos + 8 + n])))
    return bytes(out)


def png_fields(data: bytes) -> list[Field]:
    layouts = {
        b"IHDR": [(0, 4), (4, 4), (8, 1), (9, 1), (10, 1), (11, 1), (12, 1)],
        b"acTL": [(0, 4), (4, 4)],
        b"fcTL": [(0, 4), (4, 4), (8, 4), (12, 4), (16, 4), (20, 2), (22, 2), (24, 1), (25, 1)],
        b"pHYs": [(0, 4), (4, 4), (8, 1)],
    }
    out = []
    for pos, n, kind in png_chunks(data):
        out.append(Field(pos, 4, "big"))
        out += [Field(pos + 8 + at, width, "big") for at, width in layouts.get(kind, []) if at + width <= n]
    return out


def jpeg_segments(data: bytes) -> list[tuple[int, int, int]]:
    """(offset, marker, length) of each segment before the entropy-coded data."""
    out, pos = [], 2
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        marker, n = data[pos + 1], _u(data, pos + 2, 2, "big")
        out.append((pos, marker, n))
        if marker == 0xDA:  # start of scan: entropy-coded data follows
            break
        pos += 2 + n
    return out


def jpeg_fields(data: bytes) -> list[Field]:
    out = []
    for pos, marker, n in jpeg_segments(data):
        out.append(Field(pos + 2, 2, "big"))
        body = pos + 4
        if marker in (0xC0, 0xC1, 0xC2):  # precision, height, width, components, then 3 bytes each
            out += [
                Field(body, 1, "big"),
                Field(body + 1, 2, "big"),
                Field(body + 3, 2, "big"),
                Field(body + 5, 1, "big"),
            ]
            out += [Field(body + 6 + i, 1, "big") for i in range(min(9, n - 8))]
        elif marker == 0xDA:
            out += [Field(body + i, 1, "big") for i in range(min(n - 2, 10))]
        elif marker in (0xC4, 0xDB, 0xDD):  # DHT/DQT class-id byte, DRI interval
            out.append(Field(body, 2 if marker == 0xDD else 1, "big"))
    return out


def gif_fields(data: bytes) -> list[Field]:
    out = [Field(6, 2, "little"), Field(8, 2, "little"), Field(10, 1, "little"), Field(11, 1, "little")]
    pos = 13 + (3 << ((data[10] & 7) + 1) if data[10] & 0x80 else 0)
    while pos < len(data):
        if data[pos] == 0x21 and pos + 2 < len(data):  # extension: label, then sub-blocks
            if data[pos + 1] == 0xF9:
                out += [Field(pos + 3, 1, "little"), Field(pos + 4, 2, "little"), Field(pos + 6, 1, "little")]
            pos += 2
            while pos < len(data) and data[pos]:
                pos += data[pos] + 1
            pos += 1
        elif data[pos] == 0x2C:  # image descriptor: left, top, width, height, flags; then LZW size
            out += [Field(pos + 1 + 2 * i, 2, "little") for i in range(4)] + [Field(pos + 9, 1, "little")]
            local = 3 << ((data[pos + 9] & 7) + 1) if pos + 9 < len(data) and data[pos + 9] & 0x80 else 0
            out.append(Field(pos + 10 + local, 1, "little"))
            break
        else:
            break
    return [f for f in out if f.offset + f.width <= len(data)]


def bmp_fields(data: bytes) -> list[Field]:
    layout = [(2, 4), (10, 4), (14, 4), (18, 4), (22, 4), (26, 2), (28, 2), (30, 4), (34, 4), (46, 4), (50, 4)]
    return [Field(at, width, "little") for at, width in layout if at + width <= len(data)]


def tiff_fields(data: bytes) -> list[Field]:
    order = "little" if data[:2] == b"II" else "big"
    out = [Field(4, 4, order)]
    ifd, seen = _u(data, 4, 4, order), set()
    while 8 <= ifd and ifd + 2 <= len(data) and ifd not in seen and len(seen) < 3:
        seen.add(ifd)
        n = _u(data, ifd, 2, order)
        out.append(Field(ifd, 2, order))
        for i in range(n):
            entry = ifd + 2 + 12 * i
            out += [
                Field(entry, 2, order),
                Field(entry + 2, 2, order),
                Field(entry + 4, 4, order),
                Field(entry + 8, 4, order),
            ]
            if _u(data, entry, 2, order) in (256, 257) and _u(data, entry + 2, 2, order) == 3:
                out.append(Field(entry + 8, 2, order))  # a SHORT value sits first
        out.append(Field(ifd + 2 + 12 * n, 4, order))
        ifd = _u(data, ifd + 2 + 12 * n, 4, order)
    return [f for f in out if f.offset + f.width <= len(data)]


def webp_chunks(data: bytes) -> list[tuple[int, int, bytes]]:
    out, pos = [], 12
    while pos + 8 <= len(data):
        n = _u(data, pos + 4, 4, "little")
        out.append((pos, n, data[pos : pos + 4]))
        pos += 8 + n + (n & 1)
    return out


def webp_fields(data: bytes) -> list[Field]:
    out = [Field(4, 4, "little")]
    for pos, _n, kind in webp_chunks(data):
        body = pos + 8
        out.append(Field(pos + 4, 4, "little"))
        if kind == b"VP8X":
            out += [Field(body, 1, "little"), Field(body + 4, 3, "little"), Field(body + 7, 3, "little")]
        elif kind == b"VP8L":
            out += [Field(body, 1, "little"), Field(body + 1, 4, "little")]
        elif kind == b"VP8 ":
            out += [Field(body, 3, "little"), Field(body + 6, 2, "little"), Field(body + 8, 2, "little")]
        elif kind == b"ANMF":
            out += [Field(body + 3 * i, 3, "little") for i in range(5)] + [Field(body + 15, 1, "little")]
        elif kind == b"ANIM":
            out += [Field(body, 4, "little"), Field(body + 4, 2, "little")]
    return [f for f in out if f.offset + f.width <= len(data)]


FIELDS = {
    "PNG": png_fields,
    "JPEG": jpeg_fields,
    "GIF": gif_fields,
    "BMP": bmp_fields,
    "TIFF": tiff_fields,
    "WEBP": webp_fields,
}
SEED_FIELDS = {name: FIELDS[fmt](data) for name, (fmt, data) in SEEDS.items()}


def spans(fmt: str, data: bytes) -> list[tuple[int, int]]:
    """Whole structural units (chunks, segments, IFDs) that can be duplicated."""
    if fmt == "PNG":
        return [(pos, pos + 12 + n) for pos, n, _ in png_chunks(data)]
    if fmt == "JPEG":
        return [(pos, pos + 2 + n) for pos, _m, n in jpeg_segments(data) if pos + 2 + n <= len(data)]
    if fmt == "WEBP":
        return [(pos, pos + 8 + n + (n & 1)) for pos, n, _ in webp_chunks(data) if pos + 8 + n <= len(data)]
    return []


# --- mutations ---------------------------------------------------------------------


def field_values(width: int) -> st.SearchStrategy[int]:
    top = (1 << (8 * width)) - 1
    edges = sorted(
        {
            v & top
            for v in (
                0,
                1,
                2,
                3,
                7,
                8,
                15,
                16,
                255,
                256,
                0x7FFF,
                0x8000,
                50_000,
                0xFFFF,
                0x10000,
                0x3FFF,
                0xFFFFFF,
                0x7FFFFFFF,
                0x80000000,
                top,
                top - 1,
            )
        }
    )
    return st.one_of(st.sampled_from(edges), st.integers(0, top))


def anywhere(draw, n: int) -> int:
    """An index in ``range(n)`` spread evenly (Hypothesis's own integers favour the small end)."""
    return n * draw(st.integers(0, 9_999)) // 10_000


@st.composite
def set_fields(draw, name: str, data: bytearray) -> None:
    fields = SEED_FIELDS[name]
    if not fields:
        return
    for _ in range(draw(st.integers(1, 3))):
        f = draw(st.sampled_from(fields))
        if f.offset + f.width <= len(data):
            data[f.offset : f.offset + f.width] = draw(field_values(f.width)).to_bytes(f.width, f.order)


MAGIC_LENGTH = {"PNG": 8, "JPEG": 3, "GIF": 6, "BMP": 2, "TIFF": 4, "WEBP": 12}


@st.composite
def mutated(draw, formats: tuple[str, ...] | None = None, ops: tuple[str, ...] = ("fields", "flip", "dup", "truncate")):
    names = SEED_NAMES if formats is None else [n for f in formats for n in SEEDS_BY_FORMAT[f]]
    name = draw(st.sampled_from(names), label="seed")
    fmt, original = SEEDS[name]
    data = bytearray(original)
    applied = [op for op in ops if len(ops) == 1 or draw(st.booleans())] or [draw(st.sampled_from(ops))]
    if "fields" in applied:
        draw(set_fields(name, data))
    if "flip" in applied:  # byte flips in the header region
        keep = MAGIC_LENGTH[fmt] if draw(st.integers(0, 9)) else 0  # mostly past the magic (random bytes cover it)
        head = min(len(data), draw(st.sampled_from([16, 64, 256])))
        for _ in range(draw(st.integers(1, 6))):
            pos = min(len(data) - 1, keep + anywhere(draw, max(1, head - keep)))
            if draw(st.booleans()):
                data[pos] ^= 1 << draw(st.integers(0, 7))
            else:
                data[pos] = draw(st.integers(0, 255))
    if "dup" in applied:  # a chunk/segment repeated, else any slice
        units = spans(fmt, bytes(data)) or [
            (a, min(len(data), a + 1 + draw(st.integers(0, 63)))) for a in [draw(st.integers(0, len(data) - 1))]
        ]
        start, end = draw(st.sampled_from(units))
        at = draw(st.sampled_from([end, start, len(data)]))
        data[at:at] = data[start:end] * draw(st.integers(1, 3))
    if fmt == "PNG" and draw(st.booleans(), label="fix CRCs"):
        data = bytearray(png_fix_crcs(bytes(data)))
    if "truncate" in applied:
        data = data[: max(1, anywhere(draw, len(data)))]
    return bytes(data)


MAGICS = [
    b"\x89PNG\r\n\x1a\n",
    b"\xff\xd8\xff",
    b"\xff\xd8\xff\xe0\x00\x10JFIF\x00",
    b"RIFF\x00\x01\x00\x00WEBPVP8 ",
    b"RIFF\x20\x00\x00\x00WEBPVP8L",
    b"RIFF\x40\x00\x00\x00WEBPVP8X",
    b"GIF89a",
    b"GIF87a",
    b"BM",
    b"II*\x00",
    b"MM\x00*",
    b"II+\x00",
    b"\x00\x00\x01\x00",
    b"P6\n",
    b"%!PS-Adobe-3.0 EPSF-3.0\n",
    b"\x00\x00\x00\x0cjP  ",
]


# --- (a) random bytes ------------------------------------------------------------------


@fuzz(300)
@given(st.binary(min_size=1, max_size=4096), targets)
def test_random_bytes(data: bytes, target) -> None:
    check(data, *target)


@fuzz(400)
@given(st.sampled_from(MAGICS), st.binary(max_size=2048), targets)
def test_random_bytes_behind_a_format_magic(magic: bytes, tail: bytes, target) -> None:
    check(magic + tail, *target)


# --- (b) valid images, mutated ------------------------------------------------------------


def test_every_seed_decodes() -> None:
    """The unmutated seeds are valid: the fuzzing below starts from real images of every format."""
    assert {fmt for fmt, _ in SEEDS.values()} == {"PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF"}
    for name in SEED_NAMES:
        assert check(SEEDS[name][1], (12, 10), 3) == "decoded", name
        assert SEED_FIELDS[name] or name.startswith("BMP"), name


@fuzz(300)
@given(mutated(ops=("truncate",)), targets)
def test_truncated_images(data: bytes, target) -> None:
    check(data, *target)


@fuzz(400)
@given(mutated(ops=("flip",)), targets)
def test_header_bytes_flipped(data: bytes, target) -> None:
    check(data, *target)


@fuzz(600)
@given(mutated(ops=("fields",)), targets)
def test_header_fields_set_to_edge_values(data: bytes, target) -> None:
    check(data, *target)


@fuzz(250)
@given(mutated(ops=("dup",)), targets)
def test_chunks_duplicated(data: bytes, target) -> None:
    check(data, *target)


@fuzz(350)
@given(mutated(), targets)
def test_mutations_combined(data: bytes, target) -> None:
    check(data, *target)


# --- the decompression-bomb path: huge sizes the header claims ----------------------------


def claim_size(fmt: str, data: bytes, w: int, h: int) -> bytes:
    """``data`` (a seed of ``fmt``) whose header claims ``w`` x ``h``, believable by Pillow."""
    d = bytearray(data)
    if fmt == "PNG":
        d[16:24] = struct.pack(">II", w, h)
        return png_fix_crcs(bytes(d))
    if fmt == "JPEG":
        for pos, marker, _ in jpeg_segments(data):
            if marker in (0xC0, 0xC1, 0xC2):
                d[pos + 5 : pos + 9] = struct.pack(">HH", h, w)
        return bytes(d)
    if fmt == "GIF":
        d[6:10] = struct.pack("<HH", w, h)
        return bytes(d)
    if fmt == "BMP":
        d[18:26] = struct.pack("<ii", w, h)
        return bytes(d)
    if fmt == "TIFF":
        order = "little" if data[:2] == b"II" else "big"
        ifd = _u(data, 4, 4, order)
        for i in range(_u(data, ifd, 2, order)):
            entry = ifd + 2 + 12 * i
            tag = _u(data, entry, 2, order)
            if tag in (256, 257):
                d[entry + 2 : entry + 8] = (4).to_bytes(2, order) + (1).to_bytes(4, order)  # LONG x 1
                d[entry + 8 : entry + 12] = (w if tag == 256 else h).to_bytes(4, order)
        return bytes(d)
    if fmt == "WEBP":  # lossless: 14-bit sizes, so at most 16384 x 16384
        pos = data.index(b"VP8L") + 9
        bits = _u(data, pos, 4, "little") & ~0xFFFFFFF | (w - 1) & 0x3FFF | ((h - 1) & 0x3FFF) << 14
        d[pos : pos + 4] = bits.to_bytes(4, "little")
        return bytes(d)
    raise AssertionError(fmt)


BOMB_SEEDS = {
    "PNG": "PNG-RGB-13x9",
    "JPEG": "JPEG-RGB-13x9",
    "GIF": "GIF-P-13x9",
    "BMP": "BMP-RGB-13x9",
    "TIFF": "TIFF-RGB-13x9",
    "WEBP": "WEBP-lossless",
}
MAX_SIDE = {"PNG": 2**31 - 1, "TIFF": 2**32 - 1, "BMP": 2**31 - 1, "JPEG": 0xFFFF, "GIF": 0xFFFF, "WEBP": 16384}


@st.composite
def bombs(draw):
    fmt = draw(st.sampled_from(sorted(BOMB_SEEDS)))
    top = MAX_SIDE[fmt]
    w = draw(st.integers(DEFAULT_LIMITS.max_pixels // top + 1, top))
    h = draw(st.integers(DEFAULT_LIMITS.max_pixels // w + 1, top))
    return fmt, w, h


@fuzz(200, deadline=500)
@given(bombs(), targets)
def test_huge_claimed_sizes_are_refused_before_decoding(bomb, target) -> None:
    fmt, w, h = bomb
    assert w * h > DEFAULT_LIMITS.max_pixels
    data = claim_size(fmt, SEEDS[BOMB_SEEDS[fmt]][1], w, h)
    assert check(data, *target, limits=DEFAULT_LIMITS) == "too_many_pixels"


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "BMP", "TIFF"])
@pytest.mark.parametrize(("w", "h"), [(50_000, 50_000), (7_000, 7_000)])
def test_fifty_thousand_squared_is_refused_without_allocating(fmt: str, w: int, h: int) -> None:
    # 2.5e9 pixels trips Pillow's own bomb guard, 49e6 ours; neither may decode a pixel.
    data = claim_size(fmt, SEEDS[BOMB_SEEDS[fmt]][1], w, h)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    start = time.perf_counter()
    assert check(data, (224, 224), 3, DEFAULT_LIMITS) == "too_many_pixels"
    assert time.perf_counter() - start < 0.5
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100_000


# --- (c) fixed nasty cases ---------------------------------------------------------------


def _png(chunks: list[tuple[bytes, bytes]]) -> bytes:
    return b"\x89PNG\r\n\x1a\n" + b"".join(
        struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body)) for kind, body in chunks
    )


def _nasty() -> dict[str, bytes]:
    ihdr = struct.pack(">IIBBBBB", 64, 64, 8, 2, 0, 0, 0)
    zeros = zlib.compress(b"\x00" * (64 * (64 * 3 + 1)) * 16, 9)  # 16x the rows needed: a zlib bomb in small
    png = SEEDS["PNG-RGB-13x9"][1]
    gif = SEEDS["GIF-P-13x9"][1]
    tiff = SEEDS["TIFF-RGB-13x9"][1]
    looped_tiff = bytearray(tiff)
    n = _u(tiff, _u(tiff, 4, 4, "little"), 2, "little")
    next_at = _u(tiff, 4, 4, "little") + 2 + 12 * n
    looped_tiff[next_at : next_at + 4] = tiff[4:8]  # the next IFD is this one again
    return {
        "magic only png": b"\x89PNG\r\n\x1a\n",
        "magic only jpeg": b"\xff\xd8\xff",
        "jpeg soi eoi": b"\xff\xd8\xff\xd9",
        "gif header only": b"GIF89a",
        "bmp magic only": b"BM",
        "tiff magic only": b"II*\x00",
        "webp riff only": b"RIFF\x04\x00\x00\x00WEBP",
        "single zero byte": b"\x00",
        "png without IDAT": _png([(b"IHDR", ihdr), (b"IEND", b"")]),
        "png zlib bomb": _png([(b"IHDR", ihdr), (b"IDAT", zeros), (b"IEND", b"")]),
        "png zero size": _png([(b"IHDR", struct.pack(">IIBBBBB", 0, 0, 8, 2, 0, 0, 0)), (b"IEND", b"")]),
        "png bad colour type": _png([(b"IHDR", struct.pack(">IIBBBBB", 4, 4, 8, 5, 0, 0, 0)), (b"IEND", b"")]),
        "png huge chunk length": png[:33] + b"\x7f\xff\xff\xffIDAT" + png[41:],
        "png IHDR twice": png[:33] + png[8:33] + png[33:],
        "png 10000 tEXt chunks": png[:33] + _png([(b"tEXt", b"k\x00v")] * 10_000)[8:] + png[33:],
        "gif zero screen": gif[:6] + b"\x00\x00\x00\x00" + gif[10:],
        "bmp negative width": SEEDS["BMP-RGB-13x9"][1][:18] + struct.pack("<i", -13) + SEEDS["BMP-RGB-13x9"][1][22:],
        "bmp top-down": SEEDS["BMP-RGB-13x9"][1][:22] + struct.pack("<i", -9) + SEEDS["BMP-RGB-13x9"][1][26:],
        "bmp int32 min height": SEEDS["BMP-RGB-13x9"][1][:22]
        + struct.pack("<i", -(2**31))
        + SEEDS["BMP-RGB-13x9"][1][26:],
        "tiff IFD loop": bytes(looped_tiff),
        "tiff IFD at end": tiff[:4] + struct.pack("<I", len(tiff)) + tiff[8:],
        "jpeg only markers": b"\xff\xd8" + b"\xff\xe0\x00\x02" * 5000 + b"\xff\xd9",
        "many frames gif": animation("GIF"),
        "random 64 KiB": np.random.default_rng(7).integers(0, 256, 65536, dtype=np.uint8).tobytes(),
        "png magic then 64 KiB zeros": b"\x89PNG\r\n\x1a\n" + b"\x00" * 65536,
    }


NASTY = _nasty()


@pytest.mark.parametrize("name", sorted(NASTY))
@pytest.mark.parametrize("channels", [1, 3])
def test_nasty_cases(name: str, channels: int) -> None:
    start = time.perf_counter()
    check(NASTY[name], (16, 16), channels)
    assert time.perf_counter() - start < DEADLINE_MS / 1000


def test_nasty_cases_are_refused_with_the_right_reasons() -> None:
    reasons = {
        name: check(NASTY[name])
        for name in (
            "magic only png",
            "png zero size",
            "png huge chunk length",
            "single zero byte",
            "random 64 KiB",
            "png without IDAT",
        )
    }
    assert reasons["single zero byte"] == reasons["random 64 KiB"] == "not_an_image"
    assert reasons["png zero size"] in ("corrupt", "truncated")
    assert reasons["magic only png"] in ("corrupt", "truncated")
    assert reasons["png without IDAT"] in ("corrupt", "truncated")
