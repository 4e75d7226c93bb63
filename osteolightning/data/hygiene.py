"""Duplicate groups and label conflicts: the rules that keep splits leakage-free.

Two images are *copies* when their files are byte-identical (same SHA-1) or, when enabled,
near-identical (perceptual hash within ``max_distance`` bits, confirmed by correlation on the
downsampled images; a blank or constant image is a near copy of nothing, see
:mod:`.near_duplicates`). Copies form groups (connected components). A group whose copies carry
different labels is a *label conflict*; the policy decides what happens to it:

* ``error``: stop before training, listing the conflicting groups;
* ``drop``: remove every image of a conflicting group (no label can be trusted);
* ``keep``: keep them; like every copy group they stay whole on one side of every split.

Copies of one image filed under different *records* (the manifest's other columns: T-score,
age, sex, ...) are a *record conflict*: the image-to-record link cannot be trusted for any of
them (two people's records on one radiograph). :func:`record_conflicts` finds them; the
DataModule's ``on_record_conflict`` (the same three policies) decides.

Whatever the policy, copies never straddle a split: the split assigns groups, not images.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from osteolightning.data.near_duplicates import (
    DEFAULT_MIN_CORRELATION,
    near_duplicate_pairs,
    perceptual_hash,
)
from osteolightning.data.splits import group_ids
from osteolightning.errors import ConfigError, DataSourceError
from osteolightning.utils.logging import get_logger

log = get_logger(__name__)

POLICIES = ("error", "drop", "keep")


@dataclass
class CopyGroups:
    """Copy groups among ``N`` images.

    Attributes:
        component: ``(N,)`` copy-group index per image (singletons have their own).
        groups: index lists of the groups with more than one image.
        conflicts: the subset of ``groups`` whose labels disagree.
        near_pairs: confirmed near-duplicate pairs ``(i, j, distance)`` of non-identical files.
    """

    component: np.ndarray
    groups: list[list[int]] = field(default_factory=list)
    conflicts: list[list[int]] = field(default_factory=list)
    near_pairs: list[tuple[int, int, int]] = field(default_factory=list)


def find_copies(
    digests: Sequence[str],
    labels: np.ndarray,
    images: np.ndarray | None = None,
    max_distance: int | None = None,
    min_correlation: float = DEFAULT_MIN_CORRELATION,
    hashes: Sequence[int] | None = None,
    blank: Sequence[bool] | None = None,
) -> CopyGroups:
    """Group exact copies (same digest) and, given ``images`` and ``max_distance``, near copies.

    Args:
        digests: ``N`` content hashes.
        labels: ``(N,)`` class indices.
        images: ``(N, S, S)`` uint8 preprocessed images (for near-duplicate search), or None.
        max_distance: perceptual-hash Hamming distance for near copies (None: exact only).
        min_correlation: correlation a pHash candidate must reach to count as a near copy.
        hashes: ``N`` perceptual hashes of ``images`` when already known (the cache keeps
            them), so that only the candidates' images are read; ``None``: computed here.
        blank: ``N`` flags of blank images (:func:`~osteolightning.data.quality.is_blank`),
            which are near copies of nothing (byte copies of one blank file still group).
    """
    keys: list[list[str | None]] = [[f"sha1:{d}"] for d in digests]
    near_pairs: list[tuple[int, int, int]] = []
    if images is not None and max_distance is not None and len(digests) > 1:
        if hashes is None:
            hashes = [perceptual_hash(image) for image in images]
        candidates = near_duplicate_pairs(
            hashes, max_distance, images=images, min_correlation=min_correlation, blank=blank
        )
        # pairs of byte-identical files are exact copies already; keep the truly near ones
        near_pairs = [(i, j, d) for i, j, d in candidates if digests[i] != digests[j]]
        for i, j, _ in near_pairs:
            keys[j].append(f"near:{i}")
            keys[i].append(f"near:{i}")
    component = group_ids(keys)
    members: dict[int, list[int]] = {}
    for i, c in enumerate(component.tolist()):
        members.setdefault(c, []).append(i)
    groups = [m for m in members.values() if len(m) > 1]
    conflicts = [m for m in groups if len(set(labels[m].tolist())) > 1]
    return CopyGroups(component, groups, conflicts, near_pairs)


def apply_conflict_policy(
    copies: CopyGroups,
    policy: str,
    describe: Sequence[str],
    class_names: Sequence[str],
    labels: np.ndarray,
) -> np.ndarray:
    """Boolean keep-mask over the images after applying ``policy`` to label conflicts.

    Args:
        copies: from :func:`find_copies`.
        policy: ``error`` | ``drop`` | ``keep``.
        describe: a name per image (its path) for the error message.
        class_names: for the error message.
        labels: ``(N,)`` class indices.

    Raises:
        ConfigError: unknown policy.
        DataSourceError: ``error`` policy and at least one conflict; names the files.
    """
    if policy not in POLICIES:
        raise ConfigError(
            f"Expected argument `on_label_conflict` to be one of {list(POLICIES)}, but got {policy!r}."
        )
    keep = np.ones(len(copies.component), dtype=bool)
    if not copies.conflicts:
        return keep
    if policy == "error":
        shown = [
            ", ".join(f"'{describe[i]}' ({class_names[labels[i]]})" for i in group)
            for group in copies.conflicts[:5]
        ]
        more = f" … and {len(copies.conflicts) - 5} more" if len(copies.conflicts) > 5 else ""
        raise DataSourceError(
            f"{len(copies.conflicts)} groups of identical images carry different labels "
            "(segmentation: masks): "
            + "; ".join(shown)
            + more
            + ". Fix the labels, or choose data.on_label_conflict=drop (remove them) or "
            "data.on_label_conflict=keep (keep them, each group whole inside one split).",
            details=[
                f"group {g}: '{describe[i]}' ({class_names[labels[i]]})"
                for g, group in enumerate(copies.conflicts)
                for i in group
            ],
        )
    if policy == "drop":
        for group in copies.conflicts:
            keep[group] = False
    return keep


def conflict_rows(
    copies: CopyGroups,
    policy: str,
    describe: Sequence[str],
    class_names: Sequence[str],
    labels: np.ndarray,
) -> list[tuple[int, str, str, str]]:
    """Rows ``(group, path, label, action)`` for ``label_conflicts.csv``."""
    action = "dropped" if policy == "drop" else "kept"
    return [
        (g, describe[i], class_names[labels[i]], action)
        for g, group in enumerate(copies.conflicts)
        for i in group
    ]


def record_key(extra: dict[str, str], t_score: float | None) -> tuple:
    """A record's cells, normalised (case, spaces, number formatting), for comparison."""
    cells = []
    for key, value in sorted(extra.items()):
        text = str(value).strip().lower()
        with contextlib.suppress(ValueError):
            text = repr(float(text))
        cells.append((key, text))
    return (*cells, ("t_score", None if t_score is None else round(float(t_score), 6)))


def record_conflicts(
    copies: CopyGroups, records: Sequence[tuple[dict[str, str], float | None]], keep: np.ndarray
) -> list[list[int]]:
    """Copy groups whose kept members carry different records.

    Args:
        copies: from :func:`find_copies`.
        records: each image's ``(extra columns, t_score)`` (a :class:`Sample`'s).
        keep: ``(N,)`` images still kept (after the label-conflict policy).

    Returns:
        The index lists of the conflicting groups (kept members only).
    """
    out = []
    for group in copies.groups:
        kept = [i for i in group if keep[i]]
        if len({record_key(*records[i]) for i in kept}) > 1:
            out.append(kept)
    return out


def apply_record_policy(
    copies: CopyGroups,
    records: Sequence[tuple[dict[str, str], float | None]],
    keep: np.ndarray,
    policy: str,
    describe: Sequence[str],
) -> tuple[np.ndarray, list[tuple[int, int, str, str]]]:
    """``policy`` (``error`` | ``drop`` | ``keep``) on copies filed under different records.

    Returns:
        A keep-mask ``(N,)`` and rows ``(group, image index, path, action)`` for
        ``label_conflicts.csv``.

    Raises:
        DataSourceError: ``error`` and at least one conflict; names the files.
    """
    groups = record_conflicts(copies, records, keep)
    out = np.ones(len(keep), dtype=bool)
    if not groups:
        return out, []
    if policy == "error":
        shown = "; ".join(", ".join(f"'{describe[i]}'" for i in g) for g in groups[:5])
        more = f" … and {len(groups) - 5} more" if len(groups) > 5 else ""
        raise DataSourceError(
            f"{len(groups)} groups of identical images are filed under different records (other "
            f"columns of the manifest differ): {shown}{more}. Fix the records, or choose "
            "data.on_record_conflict=drop (leave every copy out) or keep.",
            details=[
                f"group {g}: '{describe[i]}'" for g, group in enumerate(groups) for i in group
            ],
        )
    action = "dropped" if policy == "drop" else "kept"
    rows = [(g, i, describe[i], action) for g, group in enumerate(groups) for i in group]
    if policy == "drop":
        out[[i for group in groups for i in group]] = False
    return out, rows


def log_copies(
    copies: CopyGroups, policy: str, record_rows: Sequence[tuple[int, int, str, str]] = ()
) -> None:
    """Say how many copy groups there are and what ``policy`` did with the conflicting ones,
    and what :func:`apply_record_policy` did (its ``record_rows``)."""
    if record_rows:
        groups, action = len({row[0] for row in record_rows}), record_rows[0][3]
        log.warning(
            f"{groups} groups of identical images ({len(record_rows)} files) are filed under "
            f"different records ({action}; listed in label_conflicts.csv): the image-to-record "
            "link cannot be trusted for them."
        )
    if not copies.groups:
        return
    n_files = sum(map(len, copies.groups))
    action = {"drop": "dropped", "keep": "kept, each group inside one split"}.get(policy, "")
    log.warning(
        f"{len(copies.groups)} groups of identical or near-identical images ({n_files} files; "
        f"{len(copies.near_pairs)} near-duplicate pairs); {len(copies.conflicts)} groups "
        f"carry conflicting labels ({action}; listed in label_conflicts.csv). Each group "
        "stays whole inside one split, so no copy leaks across splits."
    )
