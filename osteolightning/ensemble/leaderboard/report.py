"""``report.html``: a sweep's study report in one self-contained file.

Everything a collaborator needs to judge a comparison, readable offline in any browser: the
figures are PNGs embedded as ``data:`` URIs, the style is inline, there is no script and no
link outside the file. Sections: the data audit, the leaderboard with intervals, the pairwise
comparisons, the critical-difference diagram, the ROC curves of every row on one figure, the
reliability diagrams, the per-fold spread, the configuration differences between rows, the jobs
that did not finish, and the commands that reproduce each row.
"""

from __future__ import annotations

import base64
import html
import shlex
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from osteolightning.ensemble.leaderboard.board import Leaderboard
from osteolightning.ensemble.leaderboard.comparison_outputs import (
    BOOTSTRAP_TEXT,
    DELONG_TEXT,
    TTEST_TEXT,
    all_notes,
    bootstrap_cells,
    cd_text,
    delong_cells,
    label,
    ttest_cells,
)
from osteolightning.ensemble.leaderboard.comparisons import Comparisons
from osteolightning.ensemble.leaderboard.outputs import (
    FIGURE,
    mean_cell,
    pooled_cell,
    shown_metrics,
)
from osteolightning.ensemble.leaderboard.study import (
    MAX_LISTED,
    audit_summary,
    config_differences,
    failed_jobs,
    reproduction,
    sweep_jobs,
    sweep_value,
)
from osteolightning.metrics.compare_figures import (
    critical_difference_figure,
    figure_png,
    reliability_rows_figure,
    roc_rows_figure,
    spread_figure,
)
from osteolightning.utils.files import atomic_write_text

#: The report's file name, in the leaderboard folder.
REPORT = "report.html"
STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222;
       padding: 0 1em; line-height: 1.4; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: left; vertical-align: top; }
th { background: #f2f2f2; }
.scroll { overflow-x: auto; }
table.comparisons td, table.leaderboard td { white-space: nowrap; }
table.comparisons td:nth-child(-n+2), table.leaderboard td:nth-child(2) {
  white-space: normal; overflow-wrap: anywhere; min-width: 9em; max-width: 16em; }
figure { margin: 1em 0; } img { max-width: 100%; height: auto; }
figcaption { font-size: 0.85em; color: #555; }
code, pre { font-size: 0.85em; background: #f6f6f6; }
pre { padding: 0.5em; overflow-x: auto; white-space: pre-wrap; }
.note { color: #7a4a00; }
"""


def _esc(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def table(head: Sequence[str], rows: Sequence[Sequence[Any]], cls: str = "") -> str:
    """An HTML table of escaped text cells."""
    out = [f'<div class="scroll"><table class="{cls}"><thead><tr>']
    out += [f"<th>{_esc(h)}</th>" for h in head]
    out.append("</tr></thead><tbody>")
    for row in rows:
        out.append("<tr>" + "".join(f"<td>{_esc(c)}</td>" for c in row) + "</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


def image(png: bytes, alt: str, caption: str = "") -> str:
    """A PNG embedded as a ``data:`` URI, with its caption."""
    data = base64.b64encode(png).decode("ascii")
    cap = f"<figcaption>{_esc(caption)}</figcaption>" if caption else ""
    return f'<figure><img src="data:image/png;base64,{data}" alt="{_esc(alt)}">{cap}</figure>'


def _p(text: str, cls: str = "") -> str:
    return f'<p class="{cls}">{_esc(text)}</p>' if cls else f"<p>{_esc(text)}</p>"


def _list(items: Sequence[str], cls: str = "") -> str:
    return f'<ul class="{cls}">' + "".join(f"<li>{_esc(i)}</li>" for i in items) + "</ul>"


def _audit(board: Leaderboard) -> str:
    audit = audit_summary(sweep_jobs(board))
    if not audit["jobs"]:
        return _p("No job has a splits.csv: the data cannot be audited from this sweep.", "note")
    jobs = audit["jobs"]
    leaks = sum(j["leaking_groups"] + j["leaking_patients"] for j in jobs)
    parts = [
        _p(
            f"{len(jobs)} jobs with a splits.csv. Copy groups or patients on both sides of a "
            f"split: {leaks} (0 means no leakage). Images tested in more than one fold of one "
            f"configuration and seed: {audit['retested']}. Files left out (skipped.csv): "
            f"{len(audit['skipped'])}; copies with conflicting labels (label_conflicts.csv): "
            f"{len(audit['label_conflicts'])}."
        ),
        table(
            ["job", "status", "seed", "fold", "train", "val", "test", "test classes"]
            + ["leaking groups", "leaking patients", "skipped", "label conflicts"],
            [
                [j["job"], j["status"], j["seed"], j["fold"], j["train"], j["val"], j["test"]]
                + [", ".join(f"{k} {v}" for k, v in j["classes"].items())]
                + [j["leaking_groups"], j["leaking_patients"], j["skipped"], j["label_conflicts"]]
                for j in jobs
            ],
        ),
    ]
    if audit["missing"]:
        parts.append(_p(f"Jobs without splits.csv: {', '.join(audit['missing'])}.", "note"))
    for title, head, rows in (
        ("Files left out", ["file", "reason"], audit["skipped"]),
        (
            "Copies with conflicting labels",
            ["file", "group", "label", "action"],
            audit["label_conflicts"],
        ),
    ):
        if rows:
            more = f" (first {MAX_LISTED} of {len(rows)})" if len(rows) > MAX_LISTED else ""
            parts += [f"<h3>{_esc(title)}{_esc(more)}</h3>", table(head, rows[:MAX_LISTED])]
    return "".join(parts)


def _leaderboard(board: Leaderboard, folder: Path) -> str:
    metrics = shown_metrics(board)
    pooled = any(row["pooled"] for row in board.rows)
    head = ["#", "name", "jobs", "seeds", "folds"]
    for m in metrics:
        head.append(f"{label(m)} (mean ± std)")
        if pooled:
            head.append(f"{label(m)} (pooled [95 % CI])")
    rows = []
    for row in board.rows:
        cells = [row["rank"], row["name"], f"{row['n_finished']}/{row['n_jobs']}"]
        cells += [",".join(map(str, row["seeds"])) or "-", ",".join(map(str, row["folds"])) or "-"]
        for m in metrics:
            cells.append(mean_cell(row, m))
            if pooled:
                cells.append(pooled_cell(row, m))
        rows.append(cells)
    parts = [
        _p(
            f"Sorted by {board.sort_by}. mean ± std: over the finished jobs (seeds × folds); "
            "pooled: all their test predictions together, 95 % interval from a stratified "
            "bootstrap over images. Every metric of every row: leaderboard.csv."
        ),
        table(head, rows, "leaderboard"),
    ]
    if (folder / FIGURE).is_file():
        caption = f"{board.sort_by} per row: mean ± std over jobs, pooled with its 95 % interval."
        parts.append(image((folder / FIGURE).read_bytes(), "leaderboard", caption))
    if board.notes:
        parts.append(_list(board.notes, "note"))
    return "".join(parts)


def _comparisons(c: Comparisons | None) -> str:
    if c is None:
        return _p("Not computed (compare=false).", "note")
    if not c.pairs:
        return _p("Fewer than two rows with test predictions: nothing to compare.", "note")
    parts = [_list(c.summary)]
    for (title, text), cells in (
        (BOOTSTRAP_TEXT, bootstrap_cells(c)),
        (TTEST_TEXT, ttest_cells(c)),
        (DELONG_TEXT, delong_cells(c)),
    ):
        if cells[1]:
            parts += [f"<h3>{_esc(title)}</h3>", _p(text.format(alpha=c.alpha))]
            parts.append(table(*cells, "comparisons"))
    if notes := all_notes(c):
        parts += ["<h3>Notes</h3>", _list(notes, "note")]
    return "".join(parts)


def _critical_difference(c: Comparisons | None) -> str:
    if c is None or c.critical_difference is None:
        why = [n for n in (c.notes if c else []) if "critical-difference" in n]
        return _p(why[0] if why else "Not computed (compare=false).", "note")
    cd = c.critical_difference
    png = figure_png(critical_difference_figure(cd))
    return image(png, "critical difference diagram", "Demšar (2006)") + _list(cd_text(cd))


def _curves(c: Comparisons | None, class_names: list[str] | None) -> tuple[str, str]:
    if c is None or class_names is None:
        why = "Classification sweeps only." if class_names is None else "compare=false."
        return _p(why, "note"), _p(why, "note")
    pooled = {}
    for name, data in c.data.items():
        _, labels, probs = data.pooled()
        if labels is not None:
            pooled[name] = (labels, probs)
    roc = image(
        figure_png(roc_rows_figure(pooled, class_names)),
        "ROC curves",
        "One vs rest, every row's pooled out-of-fold predictions; AUROC in the legend.",
    )
    reliability = image(
        figure_png(reliability_rows_figure(pooled)),
        "reliability diagrams",
        "Top-label accuracy per confidence bin (bar shade: share of images in the bin); "
        "dashed: perfect calibration.",
    )
    return roc, reliability


def _spread(c: Comparisons | None) -> str:
    if c is None:
        return _p("Not computed (compare=false).", "note")
    metric = c.summary_metric
    values = {
        name: [v for _, _, v in per[metric] if v is not None] for name, per in c.per_unit.items()
    }
    units = sorted({(s, f) for per in c.per_unit.values() for s, f, _ in per[metric]}, key=str)
    rows = []
    for name, per in c.per_unit.items():
        by_unit = {(s, f): v for s, f, v in per[metric]}
        rows.append([name] + [_fmt(by_unit.get(u), u in by_unit) for u in units])
    head = ["row"] + [f"seed {s} fold {f}" for s, f in units]
    return image(figure_png(spread_figure(values, metric)), "per-fold spread") + table(head, rows)


def _fmt(value: float | None, present: bool) -> str:
    if not present:
        return "-"
    return "undefined" if value is None else f"{value:.3f}"


def _configs(board: Leaderboard) -> str:
    keys, values = config_differences(board)
    if not values:
        return _p("No saved configs (.hydra/config.yaml) to compare.", "note")
    if not keys:
        return _p("The configuration rows' saved configs do not differ (seeds and folds aside).")
    return _p("Saved config keys (.hydra/config.yaml) whose values differ between rows:") + table(
        ["key", *values], [[k, *(v[k] for v in values.values())] for k in keys]
    )


def _failed(board: Leaderboard) -> str:
    failed = failed_jobs(board)
    if not failed:
        return _p("Every job finished.")
    return table(
        ["job", "status", "seed", "fold", "reason", "run it again"],
        [[f["job"], f["status"], f["seed"], f["fold"], f["reason"], f["command"]] for f in failed],
    )


def _reproduce(board: Leaderboard) -> str:
    parts = [
        _p(
            "Each job again from its overrides, or from its saved config in a new run directory "
            "with a metric-by-metric comparison against its metrics.json (osteo-train reproduce=)."
        )
    ]
    for item in reproduction(board):
        parts.append(f"<h3>{_esc(item['row'])}</h3>")
        if item["note"]:
            parts.append(_p(item["note"]))
        lines = [*item["commands"], *item.get("reproduce", [])]
        if lines:
            parts.append(f"<pre>{_esc(chr(10).join(lines))}</pre>")
    return "".join(parts)


def report_html(board: Leaderboard, comparisons: Comparisons | None, folder: Path) -> str:
    """The report's HTML (see the module docstring)."""
    roc, reliability = _curves(comparisons, board.class_names)
    sections = [
        ("audit", "Data audit", _audit(board)),
        ("leaderboard", "Leaderboard", _leaderboard(board, folder)),
        ("comparisons", "Pairwise comparisons", _comparisons(comparisons)),
        ("critical-difference", "Critical-difference diagram", _critical_difference(comparisons)),
        ("roc", "ROC curves", roc),
        ("reliability", "Reliability diagrams", reliability),
        ("spread", "Per-fold spread", _spread(comparisons)),
        ("configs", "Configuration differences", _configs(board)),
        ("failed", "Jobs that did not finish", _failed(board)),
        ("reproduce", "Reproducing each row", _reproduce(board)),
    ]
    name = Path(board.sources[0]).name if board.sources else "sweep"
    toc = "".join(f'<li><a href="#{key}">{_esc(title)}</a></li>' for key, title, _ in sections)
    body = "".join(f'<h2 id="{key}">{_esc(t)}</h2>{content}' for key, t, content in sections)
    sources = ", ".join(board.sources)
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>Study report: {_esc(name)}</title><style>{STYLE}</style></head><body>"
        f"<h1>Study report: {_esc(name)}</h1>"
        + _p(f"Sweep: {sources}. Written {time.strftime('%Y-%m-%d %H:%M:%S %Z')}.")
        + _p(f"Rebuild: osteo-ensemble {shlex.quote('sweep=' + sweep_value(board))} report=true")
        + f"<ul>{toc}</ul>{body}</body></html>\n"
    )


def write_report(board: Leaderboard, comparisons: Comparisons | None, folder: str | Path) -> Path:
    """Write ``<folder>/report.html`` (the leaderboard's figure is read from ``folder``).

    Returns:
        The report's path.
    """
    folder = Path(folder)
    return atomic_write_text(folder / REPORT, report_html(board, comparisons, folder))
