"""Unit tests of streamdl.models.decode; every image is made here, in memory, with Pillow."""

from __future__ import annotations

import io
import pickle
import struct
import time
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from streamdl.errors import StreamdlError
from streamdl.models.decode import (
    DECODE_REASONS,
    SUPPORTED_FORMATS,
    DecodeError,
    DecodeLimits,
    decode_image,
    sniff_content_type,
    thumbnail_jpeg,
)

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)
MIME = {
    "JPEG": "image/jpeg",
    "PNG": "image/png",
    "WEBP": "image/webp",
    "GIF": "image/gif",
    "BMP": "image/bmp",
    "TIFF": "image/tiff",
}


def encode(img: Image.Image, fmt: str, **params) -> bytes:
    buf = io.BytesIO()
    if fmt == "WEBP":
        params.setdefault("lossless", True)
    img.save(buf, format=fmt, **params)
    return buf.getvalue()


def halves(size: tuple[int, int], left=RED, right=BLUE, mode: str = "RGB") -> Image.Image:
    """``size`` is Pillow's (width, height); left half ``left``, right half ``right``."""
    w, h = size
    img = Image.new(mode, size, right)
    img.paste(left, (0, 0, w // 2, h))
    return img


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims ``width`` x ``height`` 1-bit pixels; its IDAT is bogus."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"\x00" * 16) + chunk(b"IEND", b"")


def close_to(pixel, expected, tol: int = 12) -> bool:
    return all(abs(int(a) - int(b)) <= tol for a, b in zip(np.atleast_1d(pixel), expected))


def luma(rgb) -> int:
    r, g, b = rgb
    return round(0.299 * r + 0.587 * g + 0.114 * b)


# --- every supported format ---------------------------------------------------


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("fmt", SUPPORTED_FORMATS)
def test_each_format_decodes_to_requested_shape(fmt: str, channels: int) -> None:
    color = (200, 40, 90)
    data = encode(Image.new("RGB", (50, 30), color), fmt)
    out = decode_image(data, (16, 24), channels)
    assert out.shape == (16, 24, channels)
    assert out.dtype == np.uint8 and out.flags.writeable
    expected = color if channels == 3 else (luma(color),)
    assert close_to(out[8, 12], expected, tol=20), (out[8, 12], expected)


def test_upscaling_and_native_size_work() -> None:
    data = encode(halves((20, 10)), "PNG")
    assert decode_image(data, (10, 20), 3).shape == (10, 20, 3)
    big = decode_image(data, (100, 200), 3)
    assert big.shape == (100, 200, 3)
    assert close_to(big[50, 10], RED) and close_to(big[50, 190], BLUE)


def test_bad_arguments_are_value_errors() -> None:
    data = encode(Image.new("RGB", (4, 4)), "PNG")
    with pytest.raises(ValueError):
        decode_image(data, (8, 8), 2)
    with pytest.raises(ValueError):
        decode_image(data, (0, 8), 3)


# --- EXIF orientation ----------------------------------------------------------


def oriented_jpeg(size: tuple[int, int], orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(halves(size), "JPEG", exif=exif.tobytes(), quality=95)


@pytest.mark.parametrize(
    ("orientation", "where_red"),
    [(1, "left"), (3, "right"), (6, "top"), (8, "bottom")],
)
def test_exif_orientation_is_applied(orientation: int, where_red: str) -> None:
    # Stored 40 wide x 20 high, red on the left. 6 = rotate 90 CW to show, 8 = 90 CCW.
    data = oriented_jpeg((40, 20), orientation)
    swapped = orientation in (6, 8)
    h, w = (40, 20) if swapped else (20, 40)
    out = decode_image(data, (h, w), 3)
    assert out.shape == (h, w, 3)
    probes = {
        "left": (h // 2, 3),
        "right": (h // 2, w - 4),
        "top": (3, w // 2),
        "bottom": (h - 4, w // 2),
    }
    opposite = {"left": "right", "right": "left", "top": "bottom", "bottom": "top"}
    assert close_to(out[probes[where_red]], RED, tol=40), out[probes[where_red]]
    assert close_to(out[probes[opposite[where_red]]], BLUE, tol=40), out[probes[opposite[where_red]]]


def test_exif_orientation_with_jpeg_draft_on_a_large_image() -> None:
    data = oriented_jpeg((1600, 800), 6)  # upright: 800 wide, 1600 high, red on top
    out = decode_image(data, (64, 32), 3)
    assert out.shape == (64, 32, 3)
    assert close_to(out[5, 16], RED, tol=40) and close_to(out[58, 16], BLUE, tol=40)


def test_large_jpeg_is_fast() -> None:
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 255, (3000, 4000, 3), dtype=np.uint8)
    data = encode(Image.fromarray(noise), "JPEG", quality=85)
    start = time.perf_counter()
    out = decode_image(data, (224, 224), 3, DecodeLimits(max_bytes=len(data)))
    assert out.shape == (224, 224, 3)
    assert time.perf_counter() - start < 2.0


# --- modes ----------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_palette_with_transparency_composites_on_white(fmt: str) -> None:
    img = Image.new("P", (20, 10), 1)
    img.putpalette([0, 0, 0] + list(RED) + [0] * (254 * 3))
    img.paste(0, (0, 0, 10, 10))  # index 0 (black) is transparent
    data = encode(img, fmt, transparency=0)
    out = decode_image(data, (10, 20), 3)
    assert close_to(out[5, 2], WHITE) and close_to(out[5, 17], RED)


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "TIFF"])
def test_rgba_alpha_is_composited_on_white(fmt: str) -> None:
    img = Image.new("RGBA", (20, 10), (255, 0, 0, 255))
    img.paste((0, 0, 0, 0), (0, 0, 10, 10))  # fully transparent black
    data = encode(img, fmt)
    out = decode_image(data, (10, 20), 3)
    assert tuple(out[5, 2]) == WHITE  # not black: alpha is composited, not dropped
    assert close_to(out[5, 17], RED)
    gray = decode_image(data, (10, 20), 1)
    assert gray[5, 2, 0] == 255 and close_to(gray[5, 17], (luma(RED),))


def test_half_transparent_pixel_blends_with_white() -> None:
    data = encode(Image.new("RGBA", (4, 4), (0, 0, 0, 128)), "PNG")
    out = decode_image(data, (4, 4), 3)
    assert close_to(out[1, 1], (127, 127, 127), tol=2)


def test_la_png_composites_on_white() -> None:
    img = Image.new("LA", (4, 4), (0, 0))
    out = decode_image(encode(img, "PNG"), (4, 4), 1)
    assert (out == 255).all()


def test_rgb_png_with_transparent_color_key() -> None:
    img = halves((20, 10), left=(0, 0, 0), right=RED)
    out = decode_image(encode(img, "PNG", transparency=(0, 0, 0)), (10, 20), 3)
    assert close_to(out[5, 2], WHITE) and close_to(out[5, 17], RED)


@pytest.mark.parametrize("channels", [1, 3])
def test_cmyk_jpeg(channels: int) -> None:
    data = encode(Image.new("CMYK", (30, 20), (0, 255, 255, 0)), "JPEG", quality=95)  # red
    out = decode_image(data, (20, 30), channels)
    assert out.shape == (20, 30, channels)
    assert close_to(out[10, 15], RED if channels == 3 else (luma(RED),), tol=25)


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_16bit_grayscale_is_scaled_not_clipped(fmt: str) -> None:
    values = np.array([[0, 1000, 32768, 65535]], dtype=np.uint16).repeat(4, axis=0)
    img = Image.fromarray(values)
    assert img.mode == "I;16"
    out = decode_image(encode(img, fmt), (4, 4), 1)
    assert list(out[0, :, 0]) == [0, 1000 >> 8, 128, 255]
    assert decode_image(encode(img, fmt), (4, 4), 3).shape == (4, 4, 3)


def test_1bit_bmp() -> None:
    img = Image.new("1", (16, 8), 0)
    img.paste(1, (8, 0, 16, 8))
    data = encode(img, "BMP")
    out = decode_image(data, (8, 16), 1)
    assert out[4, 2, 0] == 0 and out[4, 13, 0] == 255
    assert decode_image(data, (8, 16), 3).shape == (8, 16, 3)


@pytest.mark.parametrize("fmt", ["GIF", "WEBP", "TIFF"])
def test_multi_frame_returns_first_frame(fmt: str) -> None:
    frames = [Image.new("RGB", (12, 12), c) for c in (RED, (0, 255, 0), BLUE)]
    buf = io.BytesIO()
    frames[0].save(buf, format=fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)
    img = Image.open(io.BytesIO(buf.getvalue()))
    assert getattr(img, "n_frames", 1) == 3
    out = decode_image(buf.getvalue(), (12, 12), 3)
    assert close_to(out[6, 6], RED)


def test_mpo_camera_jpeg_counts_as_jpeg() -> None:
    buf = io.BytesIO()
    frames = [Image.new("RGB", (12, 12), c) for c in (RED, BLUE)]
    frames[0].save(buf, format="MPO", save_all=True, append_images=frames[1:])
    assert Image.open(io.BytesIO(buf.getvalue())).format == "MPO"
    assert sniff_content_type(buf.getvalue()) == "image/jpeg"
    out = decode_image(buf.getvalue(), (12, 12), 3)
    assert close_to(out[6, 6], RED, tol=20)


@pytest.mark.parametrize("cut", [12, 20, 40])
def test_png_with_cut_header_is_not_called_unrecognised(cut: int) -> None:
    data = encode(Image.new("RGB", (8, 8)), "PNG")[:cut]
    with pytest.raises(DecodeError) as info:
        decode_image(data, (8, 8), 3)
    assert info.value.reason in ("truncated", "corrupt"), str(info.value)


# --- refusals -------------------------------------------------------------------


def test_empty() -> None:
    with pytest.raises(DecodeError) as info:
        decode_image(b"", (8, 8), 3)
    assert info.value.reason == "empty"
    assert isinstance(info.value, StreamdlError)


def test_too_large_is_refused_before_pillow(monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args, **kwargs):
        raise AssertionError("Pillow must not be called")

    monkeypatch.setattr(Image, "open", forbidden)
    data = b"\x89PNG\r\n\x1a\n" + b"\x00" * 2000
    with pytest.raises(DecodeError) as info:
        decode_image(data, (8, 8), 3, DecodeLimits(max_bytes=1000))
    assert info.value.reason == "too_large"
    assert "2008" in str(info.value) and "1000" in str(info.value)


def test_random_bytes_are_not_an_image() -> None:
    data = np.random.default_rng(1).integers(0, 256, 500, dtype=np.uint8).tobytes()
    with pytest.raises(DecodeError) as info:
        decode_image(data, (8, 8), 3)
    assert info.value.reason == "not_an_image"


def test_truncated_png() -> None:
    rng = np.random.default_rng(2)
    data = encode(Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)), "PNG")
    with pytest.raises(DecodeError) as info:
        decode_image(data[: len(data) // 2], (8, 8), 3)
    assert info.value.reason in ("truncated", "corrupt")


def test_truncated_jpeg() -> None:
    rng = np.random.default_rng(3)
    data = encode(Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)), "JPEG")
    with pytest.raises(DecodeError) as info:
        decode_image(data[: len(data) // 2], (8, 8), 3)
    assert info.value.reason in ("truncated", "corrupt")


@pytest.mark.parametrize(("width", "height"), [(100_000, 100_000), (7_000, 7_000)])
def test_pixel_bomb_is_refused_quickly(width: int, height: int) -> None:
    # 10^10 pixels trips Pillow's own bomb error; 49M trips our limit (Pillow's is ~89M).
    data = png_header_only(width, height)
    start = time.perf_counter()
    with pytest.raises(DecodeError) as info:
        decode_image(data, (8, 8), 3)
    assert info.value.reason == "too_many_pixels"
    assert time.perf_counter() - start < 1.0


def test_pixel_limit_is_checked_before_pixels_are_decoded() -> None:
    # The IDAT is bogus, so "too_many_pixels" (not "corrupt") proves nothing was decoded.
    data = png_header_only(300, 200)
    with pytest.raises(DecodeError) as info:
        decode_image(data, (8, 8), 1, DecodeLimits(max_pixels=300 * 200 - 1))
    assert info.value.reason == "too_many_pixels"
    assert "60000" in str(info.value)
    with pytest.raises(DecodeError) as info:
        decode_image(data, (8, 8), 1, DecodeLimits(max_pixels=300 * 200))
    assert info.value.reason in ("truncated", "corrupt")


@pytest.mark.parametrize("fmt", ["EPS", "ICO", "PPM"])
def test_formats_pillow_reads_but_we_do_not(fmt: str) -> None:
    data = encode(Image.new("RGB", (32, 32), RED), fmt)
    with pytest.raises(DecodeError) as info:
        decode_image(data, (8, 8), 3)
    assert info.value.reason == "unsupported_format"
    assert fmt in str(info.value)


def test_decode_error_pickles_and_checks_reason() -> None:
    err = pickle.loads(pickle.dumps(DecodeError("truncated", "image data is truncated")))
    assert err.reason == "truncated" and str(err) == "image data is truncated"
    with pytest.raises(ValueError):
        DecodeError("nonsense", "x")


# --- thumbnails and sniffing ----------------------------------------------------


@pytest.mark.parametrize("shape", [(300, 120, 3), (120, 300, 3), (50, 50, 1), (90, 40), (10, 20, 3)])
def test_thumbnail_jpeg(shape: tuple[int, ...]) -> None:
    array = np.random.default_rng(4).integers(0, 255, shape, dtype=np.uint8)
    data = thumbnail_jpeg(array, max_side=64)
    img = Image.open(io.BytesIO(data))
    assert img.format == "JPEG"
    assert max(img.size) <= 64
    h, w = shape[:2]
    if max(h, w) > 64:
        assert max(img.size) == 64
        assert abs(img.size[0] / img.size[1] - w / h) < 0.1
    else:
        assert img.size == (w, h)


def test_thumbnail_rejects_bad_arrays() -> None:
    with pytest.raises(ValueError):
        thumbnail_jpeg(np.zeros((4, 4, 3), dtype=np.float32))
    with pytest.raises(ValueError):
        thumbnail_jpeg(np.zeros((4, 4, 4), dtype=np.uint8))


@pytest.mark.parametrize("fmt", SUPPORTED_FORMATS)
def test_sniff_content_type(fmt: str) -> None:
    assert sniff_content_type(encode(Image.new("RGB", (8, 8)), fmt)) == MIME[fmt]


@pytest.mark.parametrize("data", [b"", b"hello world", b"\x89PN", b"RIFF\x00\x00\x00\x00WAVE", b"BM"])
def test_sniff_junk(data: bytes) -> None:
    assert sniff_content_type(data) is None


# --- property: never anything but DecodeError ------------------------------------

FUZZ_LIMITS = DecodeLimits(max_bytes=1 << 20, max_pixels=1_000_000)


def _seeds() -> list[bytes]:
    gradient = np.linspace(0, 255, 24 * 16 * 3).astype(np.uint8).reshape(16, 24, 3)
    img = Image.fromarray(gradient)
    exif = Image.Exif()
    exif[0x0112] = 6
    return [
        encode(img, "PNG"),
        encode(img, "JPEG", exif=exif.tobytes()),
        encode(img.convert("P"), "GIF"),
        encode(img.convert("RGBA"), "WEBP"),
        encode(img, "BMP"),
        encode(img, "TIFF"),
    ]


SEEDS = _seeds()


def check_decode(data: bytes) -> None:
    try:
        out = decode_image(data, (12, 10), 3, FUZZ_LIMITS)
    except DecodeError as exc:
        assert exc.reason in DECODE_REASONS
        assert str(exc)
    else:
        assert out.shape == (12, 10, 3) and out.dtype == np.uint8


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow warns about corrupt EXIF
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2000))
def test_arbitrary_bytes_never_escape(data: bytes) -> None:
    check_decode(data)


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow warns about corrupt EXIF
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_images_never_escape(data: st.DataObject) -> None:
    raw = bytearray(data.draw(st.sampled_from(SEEDS), label="seed"))
    for _ in range(data.draw(st.integers(1, 8), label="mutations")):
        pos = data.draw(st.integers(0, len(raw) - 1))
        if data.draw(st.booleans()):
            raw[pos] = data.draw(st.integers(0, 255))
        else:
            raw[pos] ^= 1 << data.draw(st.integers(0, 7))
    if data.draw(st.booleans(), label="truncate"):
        raw = raw[: data.draw(st.integers(1, len(raw)))]
    check_decode(bytes(raw))


def test_the_thumbnail_keeps_the_colours_of_an_image_the_model_sees_grey():
    import io

    import numpy as np
    from PIL import Image

    from streamdl.models.decode import decode_with_thumbnail

    red = np.zeros((300, 200, 3), np.uint8)
    red[..., 0] = 220
    for fmt in ("PNG", "JPEG"):
        buf = io.BytesIO()
        Image.fromarray(red).save(buf, format=fmt)
        pixels, thumb = decode_with_thumbnail(buf.getvalue(), (28, 28), 1, thumbnail_side=96)
        assert pixels.shape == (28, 28, 1)
        small = Image.open(io.BytesIO(thumb))
        assert small.mode == "RGB" and max(small.size) == 96 and small.size[0] < small.size[1]  # aspect kept
        r, g, b = np.asarray(small).reshape(-1, 3).mean(axis=0)
        assert r > 180 and g < 40 and b < 40, (fmt, r, g, b)
    assert decode_with_thumbnail(buf.getvalue(), (28, 28), 1)[1] is None  # no thumbnail asked, none made
