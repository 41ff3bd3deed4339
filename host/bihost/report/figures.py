"""The report's figures: each a function of the selected rows that returns a matplotlib
figure and a caption naming the rows it came from. Adding a figure is one `@figure` function.

Figures are built on `matplotlib.figure.Figure` directly (no pyplot): no global state, no
display needed, safe in a worker thread.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from matplotlib.figure import Figure

from ..tracks.base import FP
from .selection import ReportData, provenance, span

CMAP_RATIO = "RdYlGn"  # red below FP, green above


class NoData(Exception):
    """This figure has nothing to draw from the selected rows (the reason is shown instead)."""


@dataclass
class Drawn:
    name: str
    title: str
    section: str
    figure: Figure | None
    caption: str


@dataclass(frozen=True)
class FigureSpec:
    name: str
    title: str
    section: str
    draw: Callable[[ReportData], tuple[Figure, str]]


FIGURES: list[FigureSpec] = []


def figure(name: str, title: str, section: str):
    def register(fn: Callable[[ReportData], tuple[Figure, str]]):
        FIGURES.append(FigureSpec(name, title, section, fn))
        return fn

    return register


def draw_all(data: ReportData) -> list[Drawn]:
    out = []
    for spec in FIGURES:
        try:
            fig, caption = spec.draw(data)
        except NoData as why:
            out.append(Drawn(spec.name, spec.title, spec.section, None, str(why)))
            continue
        out.append(Drawn(spec.name, spec.title, spec.section, fig, caption))
    return out


def _finite(v) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v))


def _training_caption(data: ReportData) -> str:
    return f"From {provenance(data.runs, 'training runs')}; {data.scale} scale, seed {data.seed}."


def _annotated_heatmap(
    ax,
    values: np.ndarray,
    rows: list[str],
    cols: list[str],
    text: list[list[str]],
    center: float = 1.0,
    cmap: str = CMAP_RATIO,
) -> None:
    finite = values[np.isfinite(values)]
    spread = max(abs(finite - center).max() if finite.size else 1.0, 1e-6)
    ax.imshow(
        np.ma.masked_invalid(values), cmap=cmap, vmin=center - spread, vmax=center + spread, aspect="auto"
    )
    ax.set_xticks(range(len(cols)), cols, rotation=35, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    for i in range(len(rows)):
        for j in range(len(cols)):
            ax.text(j, i, text[i][j], ha="center", va="center", fontsize=7)


# -- the main table ----------------------------------------------------------------------------
@figure("main-table", "Algorithms × tracks: overall metrics", "main")
def main_table(data: ReportData) -> tuple[Figure, str]:
    tracks = [t for t in data.tracks if any(_finite(v) for v in t.overall.values())]
    if not tracks:
        raise NoData("no track has a number for this store")
    values = np.array([[t.overall.get(a, math.nan) for t in tracks] for a in data.algorithms], dtype=float)
    winner = data.best()
    best = [data.algorithms.index(winner[t.track]) for t in tracks]
    fig = Figure(figsize=(1.6 + 1.5 * len(tracks), 1.2 + 0.4 * len(data.algorithms)), layout="constrained")
    ax = fig.add_subplot()
    # Colour each column by its rank, so tracks on different scales (ratios ~1 vs ~20) share one map.
    ranks = np.full_like(values, np.nan)
    for j in range(values.shape[1]):
        col = values[:, j]
        ok = np.isfinite(col)
        if ok.sum() > 1:
            ranks[ok, j] = (col[ok].argsort().argsort()) / (ok.sum() - 1)
        elif ok.any():
            ranks[ok, j] = 0.5
    ax.imshow(np.ma.masked_invalid(ranks), cmap=CMAP_RATIO, vmin=-0.2, vmax=1.2, aspect="auto")
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            v = values[i, j]
            ax.text(
                j,
                i,
                "n/a" if math.isnan(v) else f"{v:.3f}" + (" ★" if best[j] == i else ""),
                ha="center",
                va="center",
                fontsize=8,
                fontweight="bold" if best[j] == i else "normal",
            )
    ax.set_xticks(range(len(tracks)), [t.title for t in tracks], rotation=20, ha="right", fontsize=8)
    ax.set_yticks(range(len(data.algorithms)), data.algorithms, fontsize=8)
    missing = [t.title for t in data.tracks if t not in tracks]
    caption = (
        f"Each cell is the track's overall metric (higher is better; ★ best in its column; colour: rank "
        f"within the column). Accuracy tracks: {_training_caption(data)[5:]}"
    )
    if missing:
        caption += f" Without a number here: {', '.join(missing)}."
    return fig, caption


# -- accuracy: learning task and architecture family -------------------------------------------
def _ratio_bars(data: ReportData, track: str, group: str, what: str) -> tuple[Figure, str]:
    result = data.track(track)
    groups = [d for d in result.details if "mean_ratio" in d and group in d]
    if not groups:
        raise NoData(f"no binarized run with its FP run in the store ({data.scale or 'no'} scale)")
    names = sorted({d[group] for d in groups})
    fig = Figure(figsize=(max(6.0, 1.2 * len(names) + 3), 3.6), layout="constrained")
    ax = fig.add_subplot()
    width = 0.8 / len(data.algorithms)
    cmap = _palette(len(data.algorithms))
    for k, algo in enumerate(data.algorithms):
        by = {d[group]: d["mean_ratio"] for d in groups if d["algorithm"] == algo}
        ax.bar(
            np.arange(len(names)) + (k - (len(data.algorithms) - 1) / 2) * width,
            [by.get(n, np.nan) for n in names],
            width,
            label=algo,
            color=cmap[k],
        )
    ax.axhline(1.0, color="black", lw=0.8, ls="--")
    ax.set_xticks(range(len(names)), [n.replace("_", " ") for n in names], fontsize=8)
    ax.set_ylabel("metric / FP metric")
    fig.legend(fontsize=7, ncols=len(data.algorithms), loc="outside upper center")
    fps = sorted(
        {(d["task"], d["arch"], d["fp_metric"], d["metric_name"]) for d in result.details if "fp_metric" in d}
    )
    caption = (
        f"Relative {what}: binarized metric over its FP model's, averaged over the {group}'s "
        f"(task, arch) pairs; the dashed line is FP. FP baselines: "
        + "; ".join(f"{t}/{a} {n} {m:.3f}" for t, a, m, n in fps)
        + f". {_training_caption(data)}"
    )
    return fig, caption


@figure("learning-task", "Learning task: accuracy kept per task", "accuracy")
def learning_task(data: ReportData) -> tuple[Figure, str]:
    return _ratio_bars(data, "task", "task", "accuracy per task")


@figure("architecture", "Neural architecture: accuracy kept per family", "accuracy")
def architecture(data: ReportData) -> tuple[Figure, str]:
    return _ratio_bars(data, "arch", "family", "accuracy per architecture family")


def _palette(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return [cmap(i % 10) for i in range(n)]


# -- robustness --------------------------------------------------------------------------------
@figure("robustness", "Corruption robustness: G_fp / G_bi per corruption", "robustness")
def robustness(data: ReportData) -> tuple[Figure, str]:
    result = data.track("robustness")
    groups = [d for d in result.details if "mean_ratio" in d]
    if not groups:
        raise NoData(
            "no corrupted-set score in the store for these models (the robustness track takes the "
            "image tasks' models)"
        )
    from bimodels.data.corruptions import CORRUPTIONS

    cols = [c for c in CORRUPTIONS if any(d["corruption"] == c for d in groups)]
    by = {(d["algorithm"], d["corruption"]): d["mean_ratio"] for d in groups}
    values = np.array([[by.get((a, c), np.nan) for c in cols] for a in data.algorithms], dtype=float)
    fig = Figure(figsize=(1.2 + 0.55 * len(cols), 0.8 + 0.38 * len(data.algorithms)), layout="constrained")
    ax = fig.add_subplot()
    _annotated_heatmap(
        ax,
        values,
        data.algorithms,
        [c.replace("_", " ") for c in cols],
        [["" if math.isnan(v) else f"{v:.2f}" for v in row] for row in values],
    )
    models = sorted({(c.task, c.arch) for c in data.corruption_runs})
    images = sorted({c.n_images for c in data.corruption_runs})
    sources = sorted({c.corruption_source for c in data.corruption_runs})
    caption = (
        f"G_fp / G_bi per corruption type (above 1, green: the binarized model loses less accuracy than FP), "
        f"G = clean accuracy − mean accuracy over severities 1–5; gaps below 0.01 count as 0.01. Models: "
        f"{', '.join(f'{t}/{a}' for t, a in models)}; {', '.join(map(str, images))} test images per set; "
        f"corruptions: {'; '.join(sources)}. From "
        f"{provenance(data.corruption_runs, 'corrupted-set scores')}; {data.scale} scale, seed {data.seed}."
    )
    return fig, caption


# -- training consumption ----------------------------------------------------------------------
@figure("consumption", "Training consumption: time and sensitivity to hyperparameters", "consumption")
def consumption(data: ReportData) -> tuple[Figure, str]:
    ok = [g for g in data.grid_runs if g.status == "ok"]
    if not ok:
        raise NoData("no finished training-consumption grid run in the store")
    result = data.track("consumption")
    algos = [FP, *data.algorithms]
    fig = Figure(figsize=(11, 3.8), layout="constrained")
    left, right = fig.subplots(1, 2)
    pairs = defaultdict(list)
    for d in result.details:
        if "time_ratio" in d and _finite(d["time_ratio"]):
            pairs[d["algorithm"]].append(d["time_ratio"])
    names = [a for a in data.algorithms if pairs.get(a)]
    left.bar(range(len(names)), [np.mean(pairs[a]) for a in names], color="#7a9cc6")
    for i, a in enumerate(names):
        left.scatter([i] * len(pairs[a]), pairs[a], s=9, color="black", zorder=3)
    left.axhline(1.0, color="black", lw=0.8, ls="--")
    left.set_xticks(range(len(names)), names, rotation=30, fontsize=8)
    left.set_ylabel("T_fp / T_bi (seconds per epoch)")
    left.set_title("training time relative to FP (dots: settings)", fontsize=9)
    metrics = {a: [g.metric for g in ok if g.algorithm == a] for a in algos}
    shown = [a for a in algos if metrics[a]]
    right.boxplot([metrics[a] for a in shown], tick_labels=shown, widths=0.6, showfliers=False)
    for i, a in enumerate(shown, start=1):
        right.scatter(np.full(len(metrics[a]), i), metrics[a], s=9, color="black", zorder=3)
        right.text(
            i,
            1.0,
            f"σ {np.std(metrics[a]):.3f}",
            ha="center",
            va="bottom",
            fontsize=7,
            transform=right.get_xaxis_transform(),
        )
    right.tick_params(axis="x", labelrotation=30, labelsize=8)
    right.set_ylabel("final test accuracy")
    right.set_title("accuracy over the settings (σ: population std)", fontsize=9, pad=14)
    settings = sorted({g.setting for g in ok})
    models = sorted({(g.task, g.arch) for g in ok})
    failed = sum(1 for g in data.grid_runs if g.status != "ok")
    caption = (
        f"Left: mean over settings of FP's training seconds per epoch over the algorithm's, only between runs "
        f"timed on the same hardware and threads. Right: final accuracy under each of the {len(settings)} "
        f"settings ({', '.join(settings)}), trained from scratch; "
        f"{', '.join(f'{t}/{a}' for t, a in models)}. From {provenance(ok, 'grid runs')}; {data.scale} "
        f"scale, seed {data.seed}" + (f"; {failed} failed runs not shown" if failed else "") + "."
    )
    return fig, caption


# -- hardware ----------------------------------------------------------------------------------
def _hardware_caption(rows) -> str:
    boards = sorted({f"{m.board} ({m.chip})" for m in rows})
    stamps = [m.created_at for m in rows if m.created_at]
    campaigns = sorted({m.campaign for m in rows})
    return (
        f"From {len(rows)} hardware rows (each board's newest measurement of a model), boards: "
        f"{', '.join(boards)}; {len(campaigns)} campaign(s)"
        + (f", {span(min(stamps), max(stamps))}" if stamps else "")
        + "."
    )


@figure("hardware", "Hardware inference: latency and speedup per chip × runtime × algorithm", "hardware")
def hardware(data: ReportData) -> tuple[Figure, str]:
    ok = [m for m in data.measurements if m.status == "ok" and m.latency_ms.get("median")]
    binary = [m for m in ok if m.algorithm != FP]
    if not binary:
        raise NoData("no successful hardware measurement in the store (run `bihost profile`)")
    cols = sorted({(m.chip, m.board, m.runtime, m.arch, m.threads) for m in binary})
    fp = {(m.board, m.arch, m.threads): m for m in ok if m.algorithm == FP}
    by = {(m.algorithm, (m.chip, m.board, m.runtime, m.arch, m.threads)): m for m in binary}
    rows = [FP, *[a for a in data.algorithms if any(k[0] == a for k in by)]]
    values = np.full((len(rows), len(cols)), np.nan)
    text = [[""] * len(cols) for _ in rows]
    for j, col in enumerate(cols):
        base = fp.get((col[1], col[3], col[4]))
        if base is not None:
            values[0, j], text[0][j] = 1.0, f"{base.latency_ms['median']:.2f} ms"
        for i, algo in enumerate(rows[1:], start=1):
            m = by.get((algo, col))
            if m is not None and m.speedup_vs_fp32:
                values[i, j] = m.speedup_vs_fp32
                text[i][j] = f"{m.speedup_vs_fp32:.2f}×\n{m.latency_ms['median']:.2f} ms"
    fig = Figure(figsize=(2.2 + 1.5 * len(cols), 1.0 + 0.5 * len(rows)), layout="constrained")
    ax = fig.add_subplot()
    logs = np.log2(values)
    finite = logs[np.isfinite(logs)]
    spread = max(abs(finite).max() if finite.size else 1.0, 0.5)
    ax.imshow(np.ma.masked_invalid(logs), cmap=CMAP_RATIO, vmin=-spread, vmax=spread, aspect="auto")
    for i in range(len(rows)):
        for j in range(len(cols)):
            ax.text(j, i, text[i][j], ha="center", va="center", fontsize=7)
    ax.set_xticks(range(len(cols)), [f"{c[0]} · {c[2]}\n{c[3]}, {c[4]} thr" for c in cols], fontsize=7)
    ax.set_yticks(range(len(rows)), [f"{r} (ONNX Runtime)" if r == FP else r for r in rows], fontsize=8)
    caption = (
        "Median latency per chip, runtime, architecture and thread count, and the speedup over the same "
        "board's ONNX Runtime FP32 latency (colour: log2 speedup; green is faster than FP32). Latencies are "
        "only compared within a board. " + _hardware_caption(ok)
    )
    return fig, caption


STATUS_CODE = {"ok": 2, "numerics_error": 1, "error": 0.5, "unsupported": 0}


@figure("deployability", "Deployability: which algorithm ran on which runtime", "hardware")
def deployability(data: ReportData) -> tuple[Figure, str]:
    rows = [m for m in data.measurements if m.algorithm != FP and m.algorithm in data.algorithms]
    if not rows:
        raise NoData("no hardware measurement (ok or refused) in the store")
    cols = sorted({(m.runtime, m.arch) for m in rows})
    cells: dict[tuple, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for m in rows:
        cells[(m.algorithm, m.runtime, m.arch)][m.status] += 1
    algos = [a for a in data.algorithms if any((a, *c) in cells for c in cols)]
    values = np.full((len(algos), len(cols)), np.nan)
    text = [[""] * len(cols) for _ in algos]
    boards = len({m.board for m in rows})
    for i, a in enumerate(algos):
        for j, col in enumerate(cols):
            counts = cells.get((a, *col))
            if not counts:
                text[i][j] = "—"
                continue
            values[i, j] = min(STATUS_CODE[s] for s in counts)
            text[i][j] = "\n".join(
                (s if boards == 1 else f"{s} ×{n}")
                for s, n in sorted(counts.items(), key=lambda kv: -STATUS_CODE[kv[0]])
            )
    fig = Figure(figsize=(1.8 + 1.2 * len(cols), 0.8 + 0.42 * len(algos)), layout="constrained")
    ax = fig.add_subplot()
    ax.imshow(np.ma.masked_invalid(values), cmap=CMAP_RATIO, vmin=-0.5, vmax=2.5, aspect="auto")
    for i in range(len(algos)):
        for j in range(len(cols)):
            ax.text(j, i, text[i][j], ha="center", va="center", fontsize=7)
    ax.set_xticks(range(len(cols)), [f"{r}\n{a}" for r, a in cols], fontsize=7)
    ax.set_yticks(range(len(algos)), algos, fontsize=8)
    caption = (
        "The status of each algorithm on each runtime and architecture"
        + (f", with how many of the {boards} boards gave it" if boards > 1 else "")
        + ": ok; numerics_error (ran, "
        "disagreed with torch); error (the board or runtime failed); unsupported (the exporter or runtime "
        "refused; the reasons are listed below); — not measured. " + _hardware_caption(rows)
    )
    return fig, caption


@figure("theory-vs-measurement", "Theoretical speedup against measured speedup", "hardware")
def theory_vs_measurement(data: ReportData) -> tuple[Figure, str]:
    import torch

    import bimodels
    from bimodels.complexity import complexity

    measured = [
        m
        for m in data.measurements
        if m.status == "ok" and m.algorithm != FP and m.speedup_vs_fp32 and m.algorithm in data.algorithms
    ]
    if not measured:
        raise NoData("no successful hardware measurement in the store to set against the theory")
    theory: dict[tuple[str, str], float] = {}
    for arch in sorted({m.arch for m in measured}):
        torch.manual_seed(0)
        fp = bimodels.create_model(arch)
        for algo in sorted({m.algorithm for m in measured if m.arch == arch}):
            theory[(arch, algo)] = complexity(bimodels.binarize(fp, algo).eval()).speedup_ratio
    fig = Figure(figsize=(6.5, 4.6), layout="constrained")
    ax = fig.add_subplot()
    groups = sorted({(m.board, m.chip, m.runtime) for m in measured})
    colours = _palette(len(groups))
    markers = "osD^v<>P*X"
    archs = sorted({m.arch for m in measured})
    for g, colour in zip(groups, colours):
        for k, arch in enumerate(archs):
            pts = [
                (theory[(m.arch, m.algorithm)], m.speedup_vs_fp32)
                for m in measured
                if (m.board, m.chip, m.runtime) == g and m.arch == arch
            ]
            if pts:
                x, y = zip(*pts)
                ax.scatter(
                    x,
                    y,
                    color=colour,
                    marker=markers[k % len(markers)],
                    s=28,
                    label=f"{g[1]} · {g[2]} · {arch}",
                )
    # (every measured row has a speedup; the repeated test narrows its type)
    xs = [v for v in theory.values()] + [m.speedup_vs_fp32 for m in measured if m.speedup_vs_fp32]
    lo, hi = min(xs) * 0.7, max(xs) * 1.4
    ax.plot([lo, hi], [lo, hi], color="black", lw=0.8, ls="--")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("theoretical speedup: FLOPs / (BOPs/64 + FLOPs_fp)")
    ax.set_ylabel("measured speedup over ONNX Runtime FP32")
    ax.legend(fontsize=7, loc="upper left")
    gaps = [m.speedup_vs_fp32 / theory[(m.arch, m.algorithm)] for m in measured if m.speedup_vs_fp32]
    caption = (
        f"Each point is one (board, runtime, architecture, algorithm); on the dashed line the board "
        f"delivers the theoretical speedup. Measured / theoretical: median {np.median(gaps):.2f}, range "
        f"{min(gaps):.2f}–{max(gaps):.2f}. Theory from `bimodels.complexity` on each architecture's default "
        f"input. " + _hardware_caption(measured)
    )
    return fig, caption
