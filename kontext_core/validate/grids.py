"""Side-by-side grids: reference | output | target (and the base model's output when given)."""

from __future__ import annotations

from PIL import Image, ImageDraw


def make_grid(columns: list[tuple[str, Image.Image]], label_height: int = 12) -> Image.Image:
    width = sum(img.width for _, img in columns)
    height = max(img.height for _, img in columns) + label_height
    grid = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    x = 0
    for label, img in columns:
        grid.paste(img.convert("RGB"), (x, label_height))
        draw.text((x + 2, 0), label, fill=(0, 0, 0))
        x += img.width
    return grid
