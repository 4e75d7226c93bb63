"""The comparisons' outputs: ``comparisons.{csv,md,json}`` and ``critical_difference.png``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from osteolightning.ensemble.leaderboard.comparisons import (
    BOOTSTRAP,
    DELONG,
    LABELS,
    MCNEMAR,
    TTEST,
    Comparisons,
)
from osteolightning.metrics.compare_figures import critical_difference_figure, figure_png
from osteolightning.utils.files import (
    atomic_write_bytes,
    atomic_write_csv,
    atomic_write_json,
    atomic_write_text,
)

#: The files, in the leaderboard folder.
CSV, MARKDOWN, JSON, CD_FIGURE = (
    "comparisons.csv",
    "comparisons.md",
    "comparisons.json",
    "critical_difference.png",
)
#: comparisons.csv: one line per (pair, metric, test).
HEADER = [
    "a",
    "b",
    "status",
    "metric",
    "test",
    "value_a",
    "value_b",
    "difference",
    "ci95_low",
    "ci95_high",
    "statistic",
    "p_value",
    "p_holm",
    "n_images",
    "n_units",
    "note",
]
UNDEFINED = "undefined"


def fmt(value: float | None, digits: int = 3) -> str:
    """A number, or ``undefined``."""
    return UNDEFINED if value is None else f"{value:.{digits}f}"


def fmt_p(p: float | None) -> str:
    """A p-value: 3 significant digits, ``< 0.001`` below."""
    if p is None:
        return UNDEFINED
    return "< 0.001" if p < 0.001 else f"{p:.3g}"


def label(metric: str) -> str:
    return LABELS.get(metric, metric.removeprefix("test/"))


def comparisons_table(comparisons: Comparisons) -> tuple[list[str], list[list[Any]]]:
    """``(header, rows)`` of ``comparisons.csv`` (and the W&B table); ``None`` = undefined."""
    rows: list[list[Any]] = []
    for pair in comparisons.pairs:
        head = [pair["a"], pair["b"], pair["status"]]
        n_images, n_units, note = pair.get("n_images"), pair.get("n_units"), pair["note"] or ""
        if pair["status"] == "not comparable":
            rows.append([*head, "", "", *[None] * 8, None, None, note])
            continue
        for metric, r in pair["bootstrap"].items():
            ci = r["ci"] or [None, None]
            rows.append(
                [*head, metric, BOOTSTRAP, r["a"], r["b"], r["diff"], *ci, None]
                + [r["p_value"], r.get("p_holm"), n_images, n_units, note]
            )
        for metric, r in pair.get("ttest", {}).items():
            rows.append(
                [*head, metric, TTEST, None, None, r.get("mean"), None, None, r.get("t")]
                + [r.get("p_value"), r.get("p_holm"), n_images, r["n_units"], note]
            )
        for name, r in (pair.get("delong") or {}).items():
            rows.append(
                [*head, f"test/auroc_{name}", DELONG, r["auc_a"], r["auc_b"], r["diff"], None]
                + [None, r["z"], r["p_value"], r.get("p_holm"), n_images, n_units, note]
            )
        if m := pair.get("mcnemar"):
            rows.append(
                [*head, "test/acc", MCNEMAR, m["acc_a"], m["acc_b"], m["acc_a"] - m["acc_b"]]
                + [None, None, m["statistic"], m["p_value"], m.get("p_holm")]
                + [m["n_images"], n_units, note]
            )
    return HEADER, rows


def _star(result: dict[str, Any], alpha: float) -> str:
    p = result.get("p_holm")
    return " *" if p is not None and p < alpha else ""


def _bootstrap_cell(r: dict[str, Any], alpha: float) -> str:
    if r["diff"] is None:
        return f"{UNDEFINED} ({fmt(r['a'])} vs {fmt(r['b'])})"
    ci = f" [{r['ci'][0]:+.3f}, {r['ci'][1]:+.3f}]" if r["ci"] else ""
    return f"{r['diff']:+.3f}{ci}, p {fmt_p(r['p_value'])} (Holm {fmt_p(r.get('p_holm'))}){_star(r, alpha)}"


def cd_text(cd: dict[str, Any]) -> list[str]:
    """The Friedman / Nemenyi result in words."""
    ranks = sorted(zip(cd["avg_ranks"], cd["names"], strict=True))
    return [
        f"Friedman test over {cd['n_blocks']} (seed, fold) blocks and {cd['n_methods']} rows on "
        f"{label(cd['metric'])}: χ² = {cd['statistic']:.3f}, p {fmt_p(cd['p_value'])} "
        f"(Iman–Davenport F = {cd['iman_davenport_f']:.3f}, p {fmt_p(cd['iman_davenport_p'])}); "
        f"Nemenyi critical difference CD = {cd['cd']:.3f} at α = {cd['alpha']:g}.",
        "Average ranks (1 = best): " + ", ".join(f"{n} {r:.2f}" for r, n in ranks) + ".",
        "Not significantly different (joined by a bar): "
        + ("; ".join("{" + ", ".join(g) + "}" for g in cd["groups"]) or "none")
        + ".",
    ]


Cells = tuple[list[str], list[list[str]]]


def bootstrap_cells(c: Comparisons) -> Cells:
    """The paired-bootstrap table: a row per pair, a column per metric."""
    head = ["a", "b", "status", "images (rows)"] + [label(m) for m in c.metrics]
    rows = []
    for p in c.pairs:
        cells = [p["a"], p["b"], p["status"]]
        if p["status"] == "not comparable":
            cells += ["", *["" for _ in c.metrics]]
        else:
            cells.append(f"{p['n_images']} ({p['n_rows']})")
            cells += [_bootstrap_cell(p["bootstrap"][m], c.alpha) for m in c.metrics]
        rows.append(cells)
    return head, rows


def ttest_cells(c: Comparisons) -> Cells:
    """The corrected t-test table (pairs with at least two common units)."""
    head = ["a", "b", "units", "n_train / n_test"] + [label(m) for m in c.metrics]
    rows = []
    for p in (p for p in c.pairs if p.get("ttest")):
        first = next(iter(p["ttest"].values()))
        cells = [p["a"], p["b"], str(p["n_units"]), f"{first['n_train']} / {first['n_test']}"]
        for m in c.metrics:
            r = p["ttest"][m]
            cells.append(
                f"{UNDEFINED} ({r['n_units']} units defined)"
                if r["p_value"] is None
                else f"{r['mean']:+.3f}, t = {r['t']:.2f}, p {fmt_p(r['p_value'])} "
                f"(Holm {fmt_p(r.get('p_holm'))}){_star(r, c.alpha)}"
            )
        rows.append(cells)
    return head, rows


def delong_cells(c: Comparisons) -> Cells:
    """DeLong per class and McNemar (classifier pairs)."""
    pairs = [p for p in c.pairs if p.get("delong")]
    classes = list(pairs[0]["delong"]) if pairs else []
    head = ["a", "b"] + [f"AUROC {n}" for n in classes] + ["McNemar (only a / only b right)"]
    rows = []
    for p in pairs:
        cells = [p["a"], p["b"]]
        for name in classes:
            r = p["delong"][name]
            cells.append(
                f"{UNDEFINED} ({r['n_pos']} positives)"
                if r["p_value"] is None
                else f"{r['diff']:+.3f}, p {fmt_p(r['p_value'])} (Holm "
                f"{fmt_p(r.get('p_holm'))}){_star(r, c.alpha)}"
            )
        m = p["mcnemar"]
        cells.append(
            f"{m['a_only']} / {m['b_only']}, p {fmt_p(m['p_value'])} (Holm "
            f"{fmt_p(m.get('p_holm'))}){_star(m, c.alpha)}"
        )
        rows.append(cells)
    return head, rows


def all_notes(c: Comparisons) -> list[str]:
    """The comparisons' notes and each pair's (restricted, not comparable, no t-test); a note
    that several pairs share is given once, with their count."""
    pairs: dict[str, list[str]] = {}
    for p in c.pairs:
        for note in p["notes"]:
            pairs.setdefault(note, []).append(f"{p['a']} vs {p['b']}")
    return c.notes + [
        f"{names[0]}: {note}" if len(names) == 1 else f"{len(names)} pairs: {note}"
        for note, names in pairs.items()
    ]


#: Section titles and explanations shared by comparisons.md and report.html.
BOOTSTRAP_TEXT = (
    "Paired bootstrap over images",
    "Difference a − b with its 95 % interval (one stratified cluster bootstrap over images, "
    "applied to both rows; an image tested under several seeds is one cluster), p-value and "
    "Holm-adjusted p-value over all pairs; * significant at α = {alpha:g} after Holm.",
)
TTEST_TEXT = (
    "Corrected resampled t-test (Nadeau & Bengio 2003) over (seed, fold) units",
    "Mean difference a − b of the per-unit metric over the units both rows have, t (variance "
    "corrected by n_test / n_train for the overlapping training sets), p and Holm-adjusted p.",
)
DELONG_TEXT = (
    "DeLong (AUROC, one vs rest) and McNemar (accuracy)",
    "One row per image (probabilities averaged over the seeds it was tested under). AUROC "
    "difference a − b with p (Holm); McNemar: the images only a / only b got right.",
)


def _md_table(head: list[str], rows: list[list[str]]) -> list[str]:
    def esc(text: Any) -> str:
        return str(text).replace("|", "\\|")

    lines = ["| " + " | ".join(map(esc, head)) + " |", "|" + "---|" * len(head)]
    return lines + ["| " + " | ".join(map(esc, r)) + " |" for r in rows]


def comparisons_markdown(comparisons: Comparisons) -> str:
    """``comparisons.md``: the summary, then one table per test, then the CD result."""
    c = comparisons
    lines = ["# Pairwise comparisons", ""] + [f"- {s}" for s in c.summary]
    for (title, text), cells in (
        (BOOTSTRAP_TEXT, bootstrap_cells(c)),
        (TTEST_TEXT, ttest_cells(c)),
        (DELONG_TEXT, delong_cells(c)),
    ):
        if cells[1]:
            lines += ["", f"## {title}", "", text.format(alpha=c.alpha), ""]
            lines += _md_table(*cells)
    if c.critical_difference:
        lines += ["", "## Critical difference (Demšar 2006)", ""]
        lines += cd_text(c.critical_difference) + ["", f"![critical difference]({CD_FIGURE})"]
    if notes := all_notes(c):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def write_comparisons(comparisons: Comparisons, folder: str | Path) -> dict[str, Path]:
    """Write ``comparisons.{csv,md,json}`` and, where there is one, ``critical_difference.png``.

    Returns:
        Output name → path (``comparisons_csv``, ``comparisons_md``, ``comparisons_json``,
        ``critical_difference``).
    """
    folder = Path(folder)
    header, rows = comparisons_table(comparisons)
    files = {
        "comparisons_csv": atomic_write_csv(folder / CSV, header, rows),
        "comparisons_md": atomic_write_text(folder / MARKDOWN, comparisons_markdown(comparisons)),
        "comparisons_json": atomic_write_json(folder / JSON, comparisons.to_json()),
    }
    if comparisons.critical_difference:
        png = figure_png(critical_difference_figure(comparisons.critical_difference))
        files["critical_difference"] = atomic_write_bytes(folder / CD_FIGURE, png)
    return files
