"""The project's DVC plots as one HTML page that renders offline: inline SVG, no script, no CDN.

`dvc plots show` / `dvc plots diff` write a page that loads vega from a CDN, blank without network.
This page draws the same CSV files (the stages' declared plots, with their x / y columns) as SVG
polylines; every numeric column besides x is a line (the eval-loss file has the base model's too).
"""

from __future__ import annotations

import csv
import html
from pathlib import Path

WIDTH, HEIGHT, PAD = 640, 300, 48
COLOURS = ("#c8282a", "#2a5fc8", "#2a9a4a", "#8a2ac8")


def read_columns(path: Path, x: str) -> tuple[list[float], dict[str, list[float]]]:
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    xs = [float(r[x]) for r in rows]
    columns = [c for c in (rows[0] if rows else {}) if c != x]
    series = {}
    for column in columns:
        try:
            series[column] = [float(r[column]) for r in rows]
        except (TypeError, ValueError):
            continue  # not a numeric column
    return xs, series


def svg(title: str, x_name: str, xs: list[float], series: dict[str, list[float]]) -> str:
    values = [v for ys in series.values() for v in ys]
    if not xs or not values:
        return f"<p>{html.escape(title)}: no data</p>"
    low, high = min(values), max(values)
    span_y = (high - low) or 1.0
    span_x = (max(xs) - min(xs)) or 1.0

    def point(x: float, y: float) -> str:
        px = PAD + (x - min(xs)) / span_x * (WIDTH - 1.5 * PAD)
        py = HEIGHT - PAD - (y - low) / span_y * (HEIGHT - 1.5 * PAD)
        return f"{px:.1f},{py:.1f}"

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" role="img">',
        f"<title>{html.escape(title)}</title>",
        f'<rect x="{PAD}" y="{PAD // 2}" width="{WIDTH - 1.5 * PAD}" height="{HEIGHT - 1.5 * PAD}" '
        'fill="none" stroke="black"/>',
        f'<text x="4" y="{PAD // 2 + 10}" font-size="11">{high:.4g}</text>',
        f'<text x="4" y="{HEIGHT - PAD}" font-size="11">{low:.4g}</text>',
        f'<text x="{PAD}" y="{HEIGHT - PAD + 16}" font-size="11">{html.escape(x_name)} {min(xs):g}</text>',
        f'<text x="{WIDTH - 3 * PAD}" y="{HEIGHT - PAD + 16}" font-size="11">{max(xs):g}</text>',
    ]
    for i, (name, ys) in enumerate(series.items()):
        colour = COLOURS[i % len(COLOURS)]
        points = " ".join(point(x, y) for x, y in zip(xs, ys, strict=True))
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{points}"/>')
        label = f'x="{PAD + 8}" y="{PAD // 2 + 16 + 14 * i}" font-size="12" fill="{colour}"'
        parts.append(f"<text {label}>{html.escape(name)}</text>")
    parts.append("</svg>")
    return "\n".join(parts)


def render_page(project: Path, plots: list[tuple[str, str]]) -> str:
    """The page for `plots`, (path under the project, x column) pairs: the stages' declared plots."""
    sections = []
    for rel, x in plots:
        path = Path(project) / rel
        if not path.exists():
            sections.append(f"<h2>{html.escape(rel)}</h2><p>not written yet (run the pipeline)</p>")
            continue
        xs, series = read_columns(path, x)
        sections.append(f"<h2>{html.escape(rel)}</h2>\n{svg(rel, x, xs, series)}")
    body = "\n".join(sections)
    return (
        '<!doctype html>\n<html><head><meta charset="utf-8"><title>kontext plots</title></head>\n'
        f'<body style="font-family: sans-serif">\n<h1>Plots</h1>\n{body}\n</body></html>\n'
    )


def write_page(project: Path, plots: list[tuple[str, str]], out: Path) -> Path:
    from kontext_core.fsutil import write_text

    write_text(Path(out), render_page(project, plots))
    return Path(out)
