"""Benchmark inputs the project makes itself: digit PNGs and photo-like JPEGs."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def digit_pngs(count: int) -> list[bytes]:
    """``count`` digit PNGs (scikit-learn's 1,797, repeated as needed)."""
    from sklearn.datasets import load_digits

    from streamdl.models.digits import digit_to_png

    rows = load_digits().data
    pngs = [digit_to_png(r) for r in rows[: min(count, len(rows))]]
    return [pngs[i % len(pngs)] for i in range(count)]


def photo_jpegs(count: int, size: int = 256, seed: int = 0) -> list[bytes]:
    """``count`` distinct photo-like JPEGs (smooth colour fields plus noise), ``size`` pixels square."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = []
    for _ in range(min(count, 64)):
        a, b, c = rng.uniform(0, 6.28, 3)
        rgb = np.stack([np.sin(xx * 6 + a), np.cos(yy * 5 + b), np.sin((xx + yy) * 4 + c)], -1)
        pixels = ((rgb + 1) * 110 + rng.normal(0, 12, rgb.shape)).clip(0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format="JPEG", quality=85)
        out.append(buf.getvalue())
    return [out[i % len(out)] for i in range(count)]
