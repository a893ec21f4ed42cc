"""A PNG of the training loss curve, drawn with PIL (no plotting library in the dependencies)."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

WIDTH, HEIGHT, MARGIN = 640, 320, 40


def render_loss_plot(csv: Path, out: Path) -> Path:
    rows = [line.split(",") for line in Path(csv).read_text().splitlines()[1:] if line.strip()]
    steps = [int(r[0]) for r in rows]
    losses = [float(r[1]) for r in rows]
    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    draw.rectangle([MARGIN, MARGIN // 2, WIDTH - MARGIN // 2, HEIGHT - MARGIN], outline="black")
    if losses:
        low, high = min(losses), max(losses)
        span_y = (high - low) or 1.0
        span_x = (steps[-1] - steps[0]) or 1

        def point(step: int, loss: float) -> tuple[float, float]:
            x = MARGIN + (step - steps[0]) / span_x * (WIDTH - 1.5 * MARGIN)
            y = HEIGHT - MARGIN - (loss - low) / span_y * (HEIGHT - 1.5 * MARGIN)
            return x, y

        draw.line([point(s, v) for s, v in zip(steps, losses, strict=True)], fill=(200, 40, 40), width=2)
        draw.text((4, MARGIN // 2), f"{high:.4g}", fill="black")
        draw.text((4, HEIGHT - MARGIN - 10), f"{low:.4g}", fill="black")
        draw.text((MARGIN, HEIGHT - MARGIN + 6), f"step {steps[0]}", fill="black")
        draw.text((WIDTH - 3 * MARGIN, HEIGHT - MARGIN + 6), f"step {steps[-1]}", fill="black")
    draw.text((MARGIN + 6, MARGIN // 2 + 4), "train/loss", fill="black")
    image.save(out, format="PNG")
    return out
