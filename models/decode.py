"""Image bytes -> the uint8 array a model takes, refusing bad input with a reason.

Only Pillow, numpy and the standard library: no Faust, Beam or Kafka here. Every
failure caused by the bytes is a :class:`DecodeError` whose :attr:`~DecodeError.reason`
is one of :data:`DECODE_REASONS` (for metrics and the dead-letter topic) and whose
message says what was wrong.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from streamdl.errors import StreamdlError

logger = logging.getLogger(__name__)

SUPPORTED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
"""Pillow format names :func:`decode_image` accepts (an MPO, i.e. a multi-picture
camera JPEG, counts as JPEG and decodes its first picture)."""

_FORMAT_ALIASES = {"MPO": "JPEG"}

DECODE_REASONS = (
    "empty",
    "too_large",
    "too_many_pixels",
    "unsupported_format",
    "not_an_image",
    "truncated",
    "corrupt",
)
"""Every value :attr:`DecodeError.reason` takes."""

# EXIF orientation -> the transpose that shows the picture upright (as in PIL.ImageOps).
_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SWAPS_AXES = {5, 6, 7, 8}
_HIGH_DEPTH_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I", "F"}
_RESAMPLE = Image.Resampling.BILINEAR
_REDUCING_GAP = 3.0


class DecodeError(StreamdlError):
    """The bytes are not an image this service decodes; ``reason`` says why in one word."""

    def __init__(self, reason: str, message: str) -> None:
        if reason not in DECODE_REASONS:
            raise ValueError(f"unknown decode reason {reason!r}; known: {', '.join(DECODE_REASONS)}")
        super().__init__(message)
        self.reason = reason
        self.message = message

    def __reduce__(self):  # keep reason across pickling (Beam, multiprocessing)
        return (type(self), (self.reason, self.message))


@dataclass(frozen=True)
class DecodeLimits:
    """What :func:`decode_image` refuses before decoding pixels."""

    max_bytes: int = 10 * 1024 * 1024
    """Largest encoded image, bytes."""
    max_pixels: int = 40_000_000
    """Largest width * height of the encoded image (decompression-bomb guard).

    Pillow's own guard (``PIL.Image.MAX_IMAGE_PIXELS``, twice that is refused outright)
    still applies on top; it is never changed here."""

    def __post_init__(self) -> None:
        if self.max_bytes < 1 or self.max_pixels < 1:
            raise ValueError(f"decode limits must be positive, got {self}")


def decode_image(
    data: bytes,
    size: tuple[int, int],
    channels: int,
    limits: DecodeLimits = DecodeLimits(),
) -> np.ndarray:
    """Decode ``data`` to a ``(height, width, channels)`` uint8 array (see :func:`decode_with_thumbnail`)."""
    return decode_with_thumbnail(data, size, channels, limits)[0]


def decode_with_thumbnail(
    data: bytes,
    size: tuple[int, int],
    channels: int,
    limits: DecodeLimits = DecodeLimits(),
    thumbnail_side: int = 0,
) -> tuple[np.ndarray, bytes | None]:
    """Decode ``data`` to a ``(height, width, channels)`` uint8 array.

    ``size`` is ``(height, width)``; ``channels`` is 1 (grayscale, ITU-R 601 luma) or 3
    (RGB). The image is checked (bytes, format, pixel count) before any pixel is
    decoded, shown upright per its EXIF orientation, reduced to its first frame,
    composited on white where it has transparency, and resized to ``size`` without
    keeping the aspect ratio. Resizing is antialiased BILINEAR: it matches
    ``tf.image.resize``'s default that Keras preprocessing trains with, and is cheaper
    than BICUBIC at no visible cost at model input sizes. Large JPEGs are decoded at
    a reduced scale (``draft``) and large reductions go through ``reducing_gap``.

    With ``thumbnail_side`` > 0 it also returns a JPEG thumbnail of the upright image in its own
    colours (longer side ``thumbnail_side``), from the same decode; else ``None``.

    Raises :class:`DecodeError` for any problem with ``data``, and ``ValueError`` for
    a bad ``size`` or ``channels`` (a caller bug).
    """
    height, width = _check_args(size, channels)
    if not data:
        raise DecodeError("empty", "image is empty (0 bytes)")
    if len(data) > limits.max_bytes:
        raise DecodeError(
            "too_large", f"image is {len(data)} bytes; the limit is {limits.max_bytes} (DecodeLimits.max_bytes)"
        )
    try:
        return _decode(bytes(data), height, width, channels, limits, thumbnail_side)
    except DecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DecodeError("too_many_pixels", f"image refused as a decompression bomb: {exc}") from exc
    except Exception as exc:  # the boundary: nothing but DecodeError leaves for bad bytes
        if isinstance(exc, OSError) and "truncated" in str(exc).lower():
            raise DecodeError("truncated", f"image data is truncated: {exc}") from exc
        if isinstance(exc, EOFError):
            raise DecodeError("truncated", f"image data ends early: {exc or type(exc).__name__}") from exc
        raise DecodeError("corrupt", f"image could not be decoded: {type(exc).__name__}: {exc}") from exc


def _check_args(size: tuple[int, int], channels: int) -> tuple[int, int]:
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    try:
        height, width = (int(v) for v in size)
    except (TypeError, ValueError):
        raise ValueError(f"size must be (height, width), got {size!r}") from None
    if height < 1 or width < 1:
        raise ValueError(f"size must be positive, got {size!r}")
    return height, width


def _open(data: bytes) -> Image.Image:
    """Open lazily with the supported plugins only; name the format of anything else."""
    try:
        return Image.open(io.BytesIO(data), formats=SUPPORTED_FORMATS)
    except UnidentifiedImageError:
        pass
    other = None
    try:  # header-only identification; unsupported formats are never loaded
        with Image.open(io.BytesIO(data)) as probe:
            other = probe.format
    except Exception:  # noqa: BLE001 - whatever Pillow raises here, the format is unknown: a DecodeError below
        pass
    if other:
        raise _unsupported(other)
    claimed = sniff_content_type(data)
    if claimed:
        raise DecodeError("corrupt", f"data starts like {claimed} but its header could not be read ({len(data)} bytes)")
    hint = data[:8].hex(" ")
    raise DecodeError("not_an_image", f"data is not a recognised image ({len(data)} bytes starting {hint})")


def _unsupported(fmt: str | None) -> DecodeError:
    return DecodeError(
        "unsupported_format", f"image format {fmt} is not supported; supported: {', '.join(SUPPORTED_FORMATS)}"
    )


def _orientation(img: Image.Image) -> int:
    """EXIF orientation 1..8; malformed metadata counts as upright."""
    try:
        value = img.getexif().get(0x0112, 1)
    except Exception as exc:  # noqa: BLE001 - any failure reading EXIF means malformed metadata: upright
        logger.debug("ignoring unreadable EXIF: %s", exc)
        return 1
    return value if isinstance(value, int) and value in _ORIENTATION else 1


def _decode(
    data: bytes, height: int, width: int, channels: int, limits: DecodeLimits, thumbnail_side: int = 0
) -> tuple[np.ndarray, bytes | None]:
    with _open(data) as img:
        fmt = _FORMAT_ALIASES.get(img.format or "", img.format)
        if fmt not in SUPPORTED_FORMATS:
            raise _unsupported(img.format)
        w, h = img.size
        if w < 1 or h < 1:
            raise DecodeError("corrupt", f"{fmt} header gives an empty size {w}x{h}")
        if w * h > limits.max_pixels:
            raise DecodeError(
                "too_many_pixels",
                f"image is {w}x{h} = {w * h} pixels; the limit is {limits.max_pixels} (DecodeLimits.max_pixels)",
            )
        if fmt == "JPEG":
            # Decode at 1/2, 1/4 or 1/8 scale when that still covers the target size.
            swap = _orientation(img) in _SWAPS_AXES
            grey = channels == 1 and not thumbnail_side  # a colour thumbnail needs the colours
            side = max(height, width, thumbnail_side)
            img.draft(
                "L" if grey else None, (side, side) if thumbnail_side else (height, width) if swap else (width, height)
            )
        img.load()  # a freshly opened image is at its first frame
        orientation = _orientation(img)
        upright = img.transpose(_ORIENTATION[orientation]) if orientation != 1 else img
        thumbnail = _colour_thumbnail(upright, thumbnail_side) if thumbnail_side else None
        out = _normalize_mode(upright, channels)
        if out.size != (width, height):
            out = out.resize((width, height), _RESAMPLE, reducing_gap=_REDUCING_GAP)
        if out.mode == "RGBA":
            white = Image.new("RGBA", out.size, (255, 255, 255, 255))
            out = Image.alpha_composite(white, out).convert("RGB")
        if out.mode != ("L" if channels == 1 else "RGB"):
            out = out.convert("L" if channels == 1 else "RGB")
        array = np.array(out, dtype=np.uint8)  # a writable copy (asarray is read-only)
    return array.reshape(height, width, channels), thumbnail


def _colour_thumbnail(upright: Image.Image, side: int) -> bytes:
    """The upright image in its own colours (grey stays grey, transparency on white) as a small JPEG."""
    img = _normalize_mode(upright, 1 if upright.mode in ("1", "L", "LA", "I", "I;16", "F") else 3)
    if img.mode == "RGBA":
        img = Image.alpha_composite(Image.new("RGBA", img.size, (255, 255, 255, 255)), img).convert("RGB")
    elif img.mode not in ("L", "RGB"):
        img = img.convert("RGB")
    img = img.copy()
    img.thumbnail((side, side), _RESAMPLE, reducing_gap=_REDUCING_GAP)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=80)
    return buf.getvalue()


def _normalize_mode(img: Image.Image, channels: int) -> Image.Image:
    """To "L", "RGB" or (where there is transparency) "RGBA"."""
    if img.mode in _HIGH_DEPTH_MODES:
        return _to_8bit(img)
    if _has_alpha(img):
        return img.convert("RGBA")
    if channels == 1:
        return img if img.mode == "L" else img.convert("L")
    return img if img.mode == "RGB" else img.convert("RGB")


def _has_alpha(img: Image.Image) -> bool:
    """Alpha channel, transparent colour/index, or a palette with alpha."""
    if img.mode in ("LA", "La", "PA", "RGBA", "RGBa") or "transparency" in img.info:
        return True
    return img.mode == "P" and img.palette is not None and img.palette.mode.endswith("A")


def _to_8bit(img: Image.Image) -> Image.Image:
    """Scale 16-bit/32-bit/float grayscale to 0..255 (Pillow's own convert clips)."""
    a = np.asarray(img)
    if img.mode.startswith("I;16"):
        out = a.astype(np.uint16) >> 8
    elif img.mode == "F" and np.isfinite(a).all() and a.size and a.min() >= 0 and a.max() <= 1.0:
        out = a * 255.0 + 0.5
    else:  # "I" or "F": 8-bit range as is, 16-bit range scaled, anything else clipped
        a = np.nan_to_num(a.astype(np.float64), nan=0.0, posinf=65535.0, neginf=0.0)
        out = a / 257.0 + 0.5 if a.size and a.max() > 255 else a
    return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8))


def thumbnail_jpeg(image: np.ndarray, max_side: int = 64, quality: int = 80) -> bytes:
    """A small JPEG of a decoded uint8 ``(h, w)``, ``(h, w, 1)`` or ``(h, w, 3)`` array.

    The aspect ratio is kept and the longer side is at most ``max_side``.
    """
    if max_side < 1:
        raise ValueError(f"max_side must be positive, got {max_side!r}")
    a = np.asarray(image)
    if a.dtype != np.uint8 or a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (1, 3)) or 0 in a.shape:
        raise ValueError(f"expected a uint8 (h, w[, 1|3]) array, got {a.dtype} {a.shape}")
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    img = Image.fromarray(np.ascontiguousarray(a))
    img.thumbnail((max_side, max_side), _RESAMPLE, reducing_gap=_REDUCING_GAP)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def sniff_content_type(data: bytes) -> str | None:
    """The image MIME type that ``data``'s magic bytes announce, or ``None``."""
    head = bytes(data[:16])
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "image/webp"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if head.startswith(b"BM") and len(data) >= 26:
        return "image/bmp"
    if head.startswith((b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")):
        return "image/tiff"
    return None
