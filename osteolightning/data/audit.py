"""Data-set audit: what a data set holds and what in it would make the numbers untrustworthy.

:func:`audit` reads a source (class folders or a CSV manifest) and reports

- counts per class, image sizes, modes and formats (from the file headers only, so it is fast);
- exact duplicates (same bytes, by SHA-1) and near duplicates (same picture re-saved:
  perceptual hash, then a pixel correlation check, see :mod:`.near_duplicates`);
- label conflicts: duplicate groups whose copies carry different labels;
- files that cannot be decoded, each with the reason;
- input that is valid but suspicious (:mod:`.quality`): 16-bit images of partial depth,
  extreme aspect ratios, blank images, all-background masks (of a manifest's mask column), classes with
  fewer images than a train/val/test split needs;
- with a run's ``splits.csv``: leakage, i.e. a duplicate group or a patient found in more
  than one split, and which label conflicts the run kept (in its split) or dropped.

Pixels come from the :class:`~osteolightning.data.cache.PreprocessedCache`, so an audit
decodes each image once and a training run on the same data reuses the work (and vice versa).
"""

from __future__ import annotations

import os
import statistics
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import pydicom
from PIL import Image
from rich.console import Console
from rich.table import Table

from osteolightning.data.hygiene import record_key
from osteolightning.data.io import is_dicom
from osteolightning.data.masks import read_foreground
from osteolightning.data.near_duplicates import (
    DEFAULT_MAX_DISTANCE,
    DEFAULT_MIN_CORRELATION,
    near_duplicate_pairs,
)
from osteolightning.data.plan import DataPlan, DataTask, plan_data
from osteolightning.data.quality import Finding, mask_findings
from osteolightning.data.sample import Sample
from osteolightning.data.specs import HygieneSpec, SplitSpec
from osteolightning.data.splits import SPLIT_NAMES
from osteolightning.errors import DataSourceError
from osteolightning.runs import rundir

if TYPE_CHECKING:  # the cache module pulls in Lightning (slow to import); only its type is needed
    from osteolightning.data.cache import PreprocessedCache

__all__ = ["AuditReport", "DuplicateGroup", "LeakageGroup", "audit"]

MAX_FILES_SHOWN = 4  # files listed per row of the rendered table
MAX_ROWS_SHOWN = 40  # rows of the rendered problems table


class Source(Protocol):
    """Anything that lists samples: FolderSource, ManifestSource."""

    def samples(self, class_names: Sequence[str]) -> list[Sample]: ...

    def describe(self) -> str: ...


@dataclass
class DuplicateGroup:
    """Copies of one image.

    Attributes:
        kind: ``"exact"`` (same bytes) or ``"near"`` (same picture, different bytes).
        key: the shared SHA-1 (exact), or ``near-<n>``.
        files: absolute paths, sorted.
        labels: class name of each file (``"unlabelled"`` for label -1).
        distance: largest pHash distance among the confirmed pairs (0 for exact).
        records: how many different records (a manifest's other columns) the copies carry.
    """

    kind: str
    key: str
    files: list[str]
    labels: list[str]
    distance: int = 0
    records: int = 1

    @property
    def conflict(self) -> bool:
        """The copies carry different labels."""
        return len(set(self.labels)) > 1

    @property
    def record_conflict(self) -> bool:
        """The copies carry one label but different records (two people's on one image)."""
        return not self.conflict and self.records > 1


@dataclass
class LeakageGroup:
    """A duplicate group or a patient whose images sit in more than one split.

    Attributes:
        kind: ``"exact"``, ``"near"`` or ``"patient"``.
        key: SHA-1, near-group key or patient id.
        splits: the splits involved, in train/val/test order.
        files: the files, and ``file_splits`` the split of each (``"?"`` when not in splits.csv).
    """

    kind: str
    key: str
    splits: list[str]
    files: list[str]
    file_splits: list[str]


@dataclass
class AuditReport:
    """What :func:`audit` found; ``to_dict()`` is JSON-serialisable, ``render()`` prints it."""

    root: str
    class_names: list[str]
    n_images: int
    class_counts: dict[str, int]
    sizes: dict[str, dict[str, float]]
    modes: dict[str, int]
    formats: dict[str, int]
    exact_duplicates: list[DuplicateGroup] = field(default_factory=list)
    near_duplicates: list[DuplicateGroup] | None = None  # None: not searched
    unreadable: list[dict[str, str]] = field(default_factory=list)
    leakage: list[LeakageGroup] | None = None  # None: no splits given
    splits_file: str | None = None
    not_in_splits: int = 0
    #: with splits: the label conflicts whose copies the run kept in its split
    conflicts_in_split: list[DuplicateGroup] | None = None
    findings: list[Finding] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def label_conflicts(self) -> list[DuplicateGroup]:
        """Exact and near duplicate groups whose copies carry different labels."""
        return [g for g in self.exact_duplicates + (self.near_duplicates or []) if g.conflict]

    @property
    def record_conflicts(self) -> list[DuplicateGroup]:
        """Copies of one image, one label, filed under different records."""
        return [g for g in self.exact_duplicates if g.record_conflict]

    def problems(self, strict: bool = True) -> list[str]:
        """One sentence per kind of problem; ``strict`` also counts unreadable files. With a
        run's splits, only the label conflicts the run kept in its split count (those it
        dropped cannot mislead it)."""
        found = []
        if self.conflicts_in_split is not None:
            if self.conflicts_in_split:
                found.append(
                    f"{len(self.conflicts_in_split)} label-conflict group(s) in the run's split"
                )
        elif self.label_conflicts:
            found.append(f"{len(self.label_conflicts)} label-conflict group(s)")
        if self.record_conflicts and self.conflicts_in_split is None:
            found.append(
                f"{len(self.record_conflicts)} record-conflict group(s) (copies of one image "
                "filed under different records; a run leaves them out: data.on_record_conflict)"
            )
        if self.leakage:
            found.append(f"{len(self.leakage)} group(s) leak across splits")
        if self.splits_file and self.n_images and self.not_in_splits == self.n_images:
            found.append(f"none of the audited images is in {self.splits_file} (another data set?)")
        if strict and self.unreadable:
            found.append(f"{len(self.unreadable)} unreadable file(s)")
        return found

    def has_problems(self, strict: bool = True) -> bool:
        """True when there are label conflicts or leakage (and, if ``strict``, unreadable files)."""
        return bool(self.problems(strict))

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of lists, strings and numbers, ready for ``json.dump``."""
        out = asdict(self)
        out["label_conflicts"] = [asdict(g) for g in self.label_conflicts]
        out["problems"] = self.problems(strict=True)
        return out

    def render(self, console: Console) -> None:
        """Print a summary table and a table of duplicates, conflicts, leakage, bad files."""
        console.print(self._summary_table())
        problems = self._problem_table()
        if problems.row_count:
            console.print(problems)
        for finding in self.findings:
            console.print(f"[yellow]WARNING[/yellow] ({finding.kind}): {finding.message}")

    # -- rendering -------------------------------------------------------------------------
    def _summary_table(self) -> Table:
        table = Table(title=f"Data-set audit: {self.root}")
        table.add_column("item")
        table.add_column("value")
        n_exact_files = sum(len(g.files) for g in self.exact_duplicates)
        conflicts = self.label_conflicts
        rows = [
            ("images", str(self.n_images)),
            ("classes", _counts(self.class_counts)),
            ("height (min / median / max)", _range(self.sizes.get("height"))),
            ("width (min / median / max)", _range(self.sizes.get("width"))),
            ("modes", _counts(self.modes)),
            ("formats", _counts(self.formats)),
            ("exact-duplicate groups", f"{len(self.exact_duplicates)} ({n_exact_files} files)"),
            (
                "near-duplicate groups",
                "not searched"
                if self.near_duplicates is None
                else f"{len(self.near_duplicates)} (pHash <= {self.settings.get('max_distance')}"
                f" bits, r >= {self.settings.get('min_correlation')})",
            ),
            (
                "label conflicts",
                f"{len(conflicts)} ({sum(g.kind == 'exact' for g in conflicts)} exact, "
                f"{sum(g.kind == 'near' for g in conflicts)} near)"
                + (
                    ""
                    if self.conflicts_in_split is None
                    else f"; {len(self.conflicts_in_split)} kept in the run's split, "
                    f"{len(conflicts) - len(self.conflicts_in_split)} dropped by it"
                ),
            ),
            ("record conflicts", str(len(self.record_conflicts))),
            ("unreadable files", str(len(self.unreadable))),
            ("warnings (valid but suspicious)", ", ".join(f.kind for f in self.findings) or "0"),
            (
                "leakage across splits",
                "not checked (no splits given)"
                if self.leakage is None
                else f"{len(self.leakage)} group(s) in {self.splits_file}"
                + (f"; {self.not_in_splits} image(s) not in it" if self.not_in_splits else ""),
            ),
        ]
        for item, value in rows:
            table.add_row(item, value)
        return table

    def _problem_table(self) -> Table:
        table = Table(title="Duplicates, label conflicts, leakage, unreadable files")
        for column in ("kind", "files", "labels / splits", "note"):
            table.add_column(column)
        base = self.root if os.path.isdir(self.root) else os.path.dirname(self.root)
        rows: list[tuple[str, str, str, str]] = []
        groups = sorted(
            self.exact_duplicates + (self.near_duplicates or []),
            key=lambda g: not (g.conflict or g.record_conflict),
        )
        for g in groups:
            note = "LABEL CONFLICT" if g.conflict else ""
            note = "RECORD CONFLICT" if g.record_conflict else note
            if g.kind == "near":
                note = ", ".join(filter(None, [note, f"pHash distance <= {g.distance}"]))
            rows.append((g.kind, _files(g.files, base), _short(g.labels), note))
        for leak in self.leakage or []:
            pairs = [f"{s}: {f}" for s, f in zip(leak.file_splits, leak.files, strict=True)]
            rows.append(
                (f"leak ({leak.kind})", _files(pairs, base), ", ".join(leak.splits), leak.key)
            )
        for bad in self.unreadable:
            rows.append(("unreadable", _files([bad["path"]], base), "", bad["reason"]))
        for row in rows[:MAX_ROWS_SHOWN]:
            table.add_row(*row)
        if len(rows) > MAX_ROWS_SHOWN:
            table.add_row(f"… and {len(rows) - MAX_ROWS_SHOWN} more", "", "", "")
        return table


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k}={v}" for k, v in counts.items()) or "-"


def _range(stats: dict[str, float] | None) -> str:
    return f"{stats['min']:g} / {stats['median']:g} / {stats['max']:g}" if stats else "-"


def _short(items: Sequence[str], limit: int = MAX_FILES_SHOWN) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" … and {len(items) - limit} more" if len(items) > limit else "")


def _files(files: Sequence[str], base: str) -> str:
    shown = [f.replace(base + os.sep, "", 1) if base else f for f in files]
    return _short(shown).replace(", ", "\n")


# -- reading -------------------------------------------------------------------------------
def _header(path: Path) -> tuple[int, int, str, str] | None:
    """``(height, width, mode, format)`` from the file header, or None if it is unreadable."""
    try:
        if is_dicom(path):
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            return int(ds.Rows), int(ds.Columns), "DICOM", "DICOM"
        with Image.open(path) as img:  # parses the header only; pixels are not decoded
            return img.height, img.width, img.mode, str(img.format)
    except Exception:  # reported as unreadable by the decoding step
        return None


def _kept_conflicts(
    conflicts: Sequence[DuplicateGroup], sha_of: dict[str, str], rows: list[dict[str, str]]
) -> list[DuplicateGroup]:
    """The conflict groups whose copies in the run's split (by path or content) still carry
    different labels; a group the run dropped has none there."""
    by_path = {os.path.abspath(r["path"]): r for r in rows}
    by_sha: dict[str, list[dict[str, str]]] = defaultdict(list)
    for r in rows:
        if r.get("sha1"):
            by_sha[r["sha1"]].append(r)
    kept = []
    for g in conflicts:
        in_run = {
            os.path.abspath(f): by_path[os.path.abspath(f)]
            for f in g.files
            if os.path.abspath(f) in by_path
        }
        for sha in {sha_of.get(f) for f in g.files} - {None}:
            in_run.update({os.path.abspath(r["path"]): r for r in by_sha.get(sha, [])})
        if len({r.get("label", "") for r in in_run.values()}) > 1:
            kept.append(g)
    return kept


def _source_findings(
    samples: Sequence[Sample], class_names: Sequence[str], counts: Counter
) -> tuple[list[Finding], dict[str, str]]:
    """Classes too small to split, and all-background masks (of samples with masks); with the
    masks that cannot be read (path → reason)."""
    few = {n: counts.get(n, 0) for n in class_names if counts.get(n, 0) < len(SPLIT_NAMES)}
    found = []
    if few:
        shown = ", ".join(f"{name}={n}" for name, n in few.items())
        found.append(
            Finding(
                "few_images",
                f"{len(few)} class(es) have fewer than {len(SPLIT_NAMES)} images ({shown}): a "
                f"train/val/test split needs at least {len(SPLIT_NAMES)} independent images of "
                f"every class, so osteo-train stops with an error (evaluating a checkpoint on "
                f"this data is fine).",
            )
        )
    masked = [s for s in samples if s.mask is not None]
    empty, bad = [], {}
    for s in masked:
        try:
            empty.append(not read_foreground(s.mask).any())
        except DataSourceError as exc:
            bad[str(s.mask)] = str(exc)
            empty.append(False)
    try:
        found += mask_findings([s.mask for s in masked], empty, [0] * len(masked), None)
    except DataSourceError as exc:  # every mask empty: a finding here, an error in training
        found.append(Finding("empty_mask", str(exc), exc.details))
    return found, bad


def _leakage(
    groups: Sequence[DuplicateGroup], sha_of: dict[str, str], rows: list[dict[str, str]]
) -> tuple[list[LeakageGroup], int]:
    """Groups and patients spread over splits, and how many audited files splits.csv lacks."""
    split_of = {r["path"]: r["split"] for r in rows}
    by_sha: dict[str, set[str]] = defaultdict(set)
    files_by_sha: dict[str, dict[str, str]] = defaultdict(dict)
    for r in rows:
        if r.get("sha1"):
            by_sha[r["sha1"]].add(r["split"])
            files_by_sha[r["sha1"]][r["path"]] = r["split"]

    def where(path: str) -> str:
        if path in split_of:
            return split_of[path]
        found = sorted(by_sha.get(sha_of.get(path, ""), ()))
        return "/".join(found) or "?"

    def order(splits: set[str]) -> list[str]:
        known = [s for s in SPLIT_NAMES if s in splits]
        return known + sorted(splits - set(known) - {"?"})

    leaks: list[LeakageGroup] = []
    for g in groups:
        files = {f: where(f) for f in g.files}
        if g.kind == "exact":  # copies that only splits.csv knows of count too
            files.update({f: s for f, s in files_by_sha.get(g.key, {}).items() if f not in files})
        splits = {part for s in files.values() for part in s.split("/")}
        if len(order(splits)) > 1:
            leaks.append(
                LeakageGroup(g.kind, g.key, order(splits), list(files), list(files.values()))
            )
    known = {g.key for g in groups}
    for sha, splits in by_sha.items():  # duplicates in splits.csv beyond the audited source
        if sha not in known and len(splits) > 1:
            files = files_by_sha[sha]
            leaks.append(
                LeakageGroup("exact", sha, order(splits), list(files), list(files.values()))
            )
    patients: dict[str, dict[str, str]] = defaultdict(dict)
    for r in rows:
        if r.get("patient_id"):
            patients[r["patient_id"]][r["path"]] = r["split"]
    for pid, files in sorted(patients.items()):
        if len(set(files.values())) > 1:
            leaks.append(
                LeakageGroup(
                    "patient", pid, order(set(files.values())), list(files), list(files.values())
                )
            )
    not_in = sum(where(p) == "?" for p in sha_of)
    return leaks, not_in


# -- the audit -----------------------------------------------------------------------------
def audit(
    source: Source,
    class_names: Sequence[str],
    cache: PreprocessedCache,
    near_duplicates: bool = True,
    max_distance: int = DEFAULT_MAX_DISTANCE,
    min_correlation: float = DEFAULT_MIN_CORRELATION,
    splits: str | Path | None = None,
) -> AuditReport:
    """Audit a data set for duplicates, label conflicts, unreadable files and split leakage.

    Args:
        source: a :class:`~osteolightning.data.folders.FolderSource` or
            :class:`~osteolightning.data.sources.ManifestSource` (anything with ``samples``).
        class_names: the run's classes, in index order.
        cache: where decoded, letterboxed images are kept; its ``image_size`` is the
            resolution the near-duplicate search works at (128 is plenty).
        near_duplicates: search for near duplicates (needs every image decoded once).
        max_distance: pHash bits two near duplicates may differ in, in ``[0, 64]``.
        min_correlation: Pearson r (at 32x32) a pHash candidate needs, in ``[-1, 1]``.
        splits: a run directory holding ``splits.csv``, or that file; checks leakage.

    Returns:
        The :class:`AuditReport`.

    Raises:
        DataSourceError: the source is malformed, or ``splits`` is not a splits.csv.
        ConfigError: ``max_distance`` or ``min_correlation`` is out of range.

    Example:
        >>> report = audit(FolderSource("data/knee"), CLASS_NAMES, cache)  # doctest: +SKIP
        >>> report.has_problems()  # doctest: +SKIP
        True
    """
    near_duplicate_pairs([], max_distance, min_correlation=min_correlation)  # validates both
    splits_rows = rundir.read_splits(splits) if splits is not None else None
    # the plan a run would make, keeping every copy and conflict (they are what is reported)
    plan = plan_data(
        source,
        DataTask(tuple(class_names), tuple(class_names), require_labels=False),
        cache,
        HygieneSpec(
            "skip", "keep", "keep", max_distance if near_duplicates else None, min_correlation
        ),  # fmt: skip
        SplitSpec(evaluate_all=True),
        require_images=False,
    )
    samples = plan.listed
    paths = [s.path for s in samples]
    names = {i: n for i, n in enumerate(class_names)}
    label_of = {str(s.path): names.get(s.label, "unlabelled") for s in samples}
    digests = cache.hashes(paths)
    sha_of = {str(p): d for p, d in zip(paths, digests, strict=True)}

    headers = [h for h in map(_header, paths) if h is not None]
    heights, widths = [h[0] for h in headers], [h[1] for h in headers]
    sizes = {
        axis: {"min": min(v), "median": float(statistics.median(v)), "max": max(v)}
        for axis, v in (("height", heights), ("width", widths))
        if v
    }
    counts = Counter(label_of.values())

    by_sha: dict[str, list[str]] = defaultdict(list)
    for p, d in sha_of.items():
        if d is not None:  # an unreadable file is reported by the decoding step
            by_sha[d].append(p)
    record_of = {str(s.path): record_key(s.extra, s.t_score) for s in samples}
    exact = [
        DuplicateGroup(
            "exact",
            d,
            sorted(fs),
            [label_of[f] for f in sorted(fs)],
            records=len({record_of[f] for f in fs}),
        )
        for d, fs in sorted(by_sha.items(), key=lambda kv: sorted(kv[1])[0])
        if len(fs) > 1
    ]
    # finding unreadable files is part of the audit (the source's own skips are not images)
    bad = {path: reason for path, reason in plan.skipped if path in label_of}
    source_findings, bad_masks = _source_findings(samples, class_names, counts)
    near = _plan_near_groups(plan, label_of) if near_duplicates else None
    class_counts = {n: counts.get(n, 0) for n in class_names}
    if counts.get("unlabelled"):
        class_counts["unlabelled"] = counts["unlabelled"]

    report = AuditReport(
        root=str(getattr(source, "root", getattr(source, "path", ""))),
        class_names=list(class_names),
        n_images=len(samples),
        class_counts=class_counts,
        sizes=sizes,
        modes=dict(Counter(h[2] for h in headers).most_common()),
        formats=dict(Counter(h[3] for h in headers).most_common()),
        exact_duplicates=exact,
        near_duplicates=near,
        unreadable=[{"path": p, "reason": r} for p, r in sorted({**bad, **bad_masks}.items())],
        findings=plan.findings + source_findings,
        settings={
            "near_duplicates": near_duplicates,
            "max_distance": max_distance,
            "min_correlation": min_correlation,
            "image_size": cache.image_size,
        },
    )
    if splits_rows is not None:
        report.splits_file = str(splits_rows[0])
        report.leakage, report.not_in_splits = _leakage(
            exact + (near or []), sha_of, splits_rows[1]
        )
        report.conflicts_in_split = _kept_conflicts(report.label_conflicts, sha_of, splits_rows[1])
    return report


def _plan_near_groups(plan: DataPlan, label_of: dict[str, str]) -> list[DuplicateGroup]:
    """The plan's copy groups that hold a near-duplicate pair (a pure exact-copy group, or a
    pair of blank images, is never one), with every file of each, and the largest pHash
    distance of their pairs."""
    copies, paths = plan.copies, [str(s.path) for s in plan.readable]
    distance: dict[int, int] = defaultdict(int)
    for i, _, d in copies.near_pairs:
        distance[int(copies.component[i])] = max(distance[int(copies.component[i])], d)
    members: dict[int, list[str]] = defaultdict(list)
    for index, comp in enumerate(copies.component.tolist()):
        if comp in distance:
            members[comp].append(paths[index])
    groups = []
    for n, (comp, files) in enumerate(sorted(members.items(), key=lambda kv: sorted(kv[1])[0])):
        files = sorted(files)
        groups.append(
            DuplicateGroup(
                "near", f"near-{n + 1}", files, [label_of[f] for f in files], distance[comp]
            )
        )
    return groups
