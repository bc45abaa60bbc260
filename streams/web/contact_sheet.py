"""A contact sheet: the query image and its neighbours, with similarity and label, as one PNG."""

from __future__ import annotations

import io

from PIL import Image, ImageDraw, ImageFont

from streamdl.streams.search import SearchResult

TILE = 96
CAPTION = 30
COLUMNS = 6


def contact_sheet(result: SearchResult, query_image: bytes | None, query_caption: str) -> bytes:
    """PNG bytes: the query first (outlined), then each neighbour in rank order."""
    tiles = [(query_image, query_caption, True)]
    tiles += [
        (n.thumbnail, f"{n.similarity:.3f}  label {n.label or '-'}\n{n.image_id[:16]}", False)
        for n in result.neighbours
    ]
    rows = (len(tiles) + COLUMNS - 1) // COLUMNS
    sheet = Image.new("RGB", (COLUMNS * TILE, rows * (TILE + CAPTION)), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for i, (data, caption, is_query) in enumerate(tiles):
        x, y = (i % COLUMNS) * TILE, (i // COLUMNS) * (TILE + CAPTION)
        if data:
            try:
                thumb = Image.open(io.BytesIO(data)).convert("RGB")
                scale = (TILE - 8) / max(thumb.size)
                thumb = thumb.resize(
                    (max(1, round(thumb.width * scale)), max(1, round(thumb.height * scale))),
                    Image.Resampling.NEAREST if scale > 1 else Image.Resampling.LANCZOS,
                )
                sheet.paste(thumb, (x + (TILE - thumb.width) // 2, y + (TILE - thumb.height) // 2))
            except OSError:
                draw.text((x + 4, y + TILE // 2), "(no image)", fill="gray", font=font)
        if is_query:
            draw.rectangle((x + 1, y + 1, x + TILE - 2, y + TILE - 2), outline="red", width=2)
        draw.multiline_text((x + 3, y + TILE + 1), caption, fill="black", font=font, spacing=1)
    out = io.BytesIO()
    sheet.save(out, format="PNG")
    return out.getvalue()
