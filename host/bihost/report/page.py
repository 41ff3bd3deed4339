"""One self-contained HTML page: the figures are PNG files beside it and embedded in it, so
the page can be mailed or attached alone and the PNGs dropped into a paper."""

from __future__ import annotations

import base64
import html
import io
import math
import time
from dataclasses import dataclass
from pathlib import Path

from .. import __version__
from ..tracks.base import FP
from .figures import Drawn, draw_all
from .selection import ReportData

SECTIONS = (
    ("main", "The main table"),
    ("accuracy", "Accuracy: learning tasks and architectures"),
    ("robustness", "Corruption robustness"),
    ("consumption", "Training consumption"),
    ("hardware", "Hardware inference"),
)

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; font-size: .9em; } td, th { border: 1px solid #ccc; padding: .25em .6em; }
td.num { text-align: right; font-variant-numeric: tabular-nums; } td.best { font-weight: bold; background: #e3f4e3; }
figure { margin: 1.2em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: .88em; color: #444; } .missing { color: #a33; } .meta { color: #555; font-size: .9em; }
code { background: #f4f4f4; padding: 0 .2em; }
"""


@dataclass
class Report:
    index: Path
    figures: list[Path]
    missing: list[str]  # figures with nothing to draw, and why


def png_bytes(drawn: Drawn) -> bytes:
    assert drawn.figure is not None  # the caller skips figures that had nothing to draw
    buf = io.BytesIO()
    drawn.figure.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


def write_report(data: ReportData, out: Path) -> Report:
    out.mkdir(parents=True, exist_ok=True)
    (out / "figures").mkdir(exist_ok=True)
    drawn = draw_all(data)
    images: dict[str, str] = {}
    paths, missing = [], []
    for d in drawn:
        if d.figure is None:
            missing.append(f"{d.name}: {d.caption}")
            continue
        png = png_bytes(d)
        path = out / "figures" / f"{d.name}.png"
        path.write_bytes(png)
        paths.append(path)
        images[d.name] = base64.b64encode(png).decode("ascii")
    index = out / "index.html"
    index.write_text(render(data, drawn, images), encoding="utf-8")
    return Report(index, paths, missing)


def _e(text) -> str:
    return html.escape(str(text))


def main_table_html(data: ReportData) -> str:
    tracks, best = data.tracks, data.best()
    head = "".join(f"<th>{_e(t.title)}</th>" for t in tracks)
    rows = []
    for a in data.algorithms:
        cells = []
        for t in tracks:
            v = t.overall.get(a)
            if v is None or math.isnan(v):
                cells.append('<td class="num">n/a</td>')
            elif best.get(t.track) == a:
                cells.append(f'<td class="num best">{v:.3f} ★</td>')
            else:
                cells.append(f'<td class="num">{v:.3f}</td>')
        rows.append(f"<tr><th>{_e(a)}</th>{''.join(cells)}</tr>")
    return f"<table><tr><th>algorithm</th>{head}</tr>{''.join(rows)}</table>"


def render(data: ReportData, drawn: list[Drawn], images: dict[str, str]) -> str:
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(data.generated_at))
    parts = [
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>BiBench report ({_e(data.scale)})"
        f"</title><style>{STYLE}</style></head><body>",
        "<h1>BiBench report: how much accuracy and speed each binarization algorithm keeps</h1>",
        f"<p class='meta'>Generated {when} by bihost {_e(__version__)} from <code>{_e(data.store)}</code>. "
        f"Scale: <b>{_e(data.scale or 'none (hardware rows only)')}</b>, seed {data.seed}. Algorithms: "
        f"{_e(', '.join(data.algorithms))}. Architectures scored by the complexity and hardware tracks: "
        f"{_e(', '.join(data.archs) or 'none')}.</p>",
    ]
    if data.left_out:
        parts.append(
            "<p class='meta'>Left out so that no number mixes scales, recipes or repeated measurements: "
            + "; ".join(_e(x) for x in data.left_out)
            + ".</p>"
        )
    for section, heading in SECTIONS:
        parts.append(f"<h2>{_e(heading)}</h2>")
        if section == "main":
            parts.append(main_table_html(data))
            parts.append(
                "<p class='meta'>Higher is better in every column; ★ marks the best per column. "
                "How each column follows from the per-run numbers:</p><ul class='meta'>"
                + "".join(
                    f"<li><b>{_e(t.title)}</b>: {_e(t.formula)}"
                    + "".join(f"<br><i>{_e(n)}</i>" for n in t.notes)
                    + "</li>"
                    for t in data.tracks
                )
                + "</ul>"
            )
        for d in (d for d in drawn if d.section == section):
            if d.figure is None:
                parts.append(f"<h3>{_e(d.title)}</h3><p class='missing'>Not drawn: {_e(d.caption)}.</p>")
                continue
            parts.append(
                f"<figure id='{_e(d.name)}'><h3>{_e(d.title)}</h3>"
                f"<img alt='{_e(d.title)}' src='data:image/png;base64,{images[d.name]}'>"
                f"<figcaption>{_e(d.caption)} <span class='meta'>(figures/{_e(d.name)}.png)</span>"
                f"</figcaption></figure>"
            )
        if section == "hardware":
            parts.append(_refusals(data))
    parts.append("</body></html>")
    return "\n".join(parts)


def _refusals(data: ReportData) -> str:
    """One line per (runtime, arch, status, reason), naming the algorithms it refused."""
    grouped: dict[tuple, set[str]] = {}
    for m in data.measurements:
        if m.status != "ok" and m.algorithm != FP:
            grouped.setdefault((m.runtime, m.arch, m.status, m.reason), set()).add(m.algorithm)
    if not grouped:
        return ""
    order = {a: i for i, a in enumerate(data.algorithms)}
    items = "".join(
        f"<li><b>{_e(rt)}</b> · <b>{_e(arch)}</b>: {_e(status)} for "
        f"{_e(', '.join(sorted(algos, key=lambda a: order.get(a, 99))))}: {_e(why[:300])}</li>"
        for (rt, arch, status, why), algos in sorted(grouped.items())
    )
    return f"<h3>Why a cell is not ok</h3><ul class='meta'>{items}</ul>"
