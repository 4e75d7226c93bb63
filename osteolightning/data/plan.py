"""The data plan: from a source and options to plain values.

:func:`plan_data` is the one place where a data set's images become a plan: which samples are
readable, their masks and content digests, which images are copies of one another (the copy
rule, :func:`~osteolightning.data.hygiene.find_copies`), what the conflict policies keep, the
groups no split may cut, the splits, and the findings (valid but suspicious input). Both
DataModules hold the plan it returns, ``osteo-data audit`` reads its copies and findings
(:mod:`osteolightning.data.audit`), and ``osteo-eval``'s leakage check compares its digests
with a run's ``splits.csv``. It keeps no state: equal inputs (the source's files and the cache
it is handed) give an equal plan; it writes nothing but what the
:class:`~osteolightning.data.cache.PreprocessedCache` keeps (decoded images, the patient-ID salt).

Order of the steps: readable samples (``on_bad_image``) → masks → pixels and image findings →
copies and conflicts (``on_label_conflict``, ``on_record_conflict``) → mask inputs (``apply``,
``crop``) → groups (patients and copies) → splits → value columns (the leakage guard, on the
true labels) → label permutation (a permutation test's null).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from osteolightning.data.columns import Columns, ColumnSpec, resolve_columns
from osteolightning.data.hygiene import (
    CopyGroups,
    apply_conflict_policy,
    apply_record_policy,
    conflict_rows,
    find_copies,
)
from osteolightning.data.mask_inputs import MaskReading, crop_to_masks, load_masks
from osteolightning.data.privacy import dicom_patient_id, pseudonym
from osteolightning.data.quality import Finding, image_findings
from osteolightning.data.sample import Sample
from osteolightning.data.specs import HygieneSpec, InputSpec, SplitSpec
from osteolightning.data.splits import (
    SPLIT_NAMES,
    TEST,
    crossing_groups,
    group_ids,
    permute_group_labels,
    split_codes,
    split_name,
    split_warnings,
)
from osteolightning.errors import DataSourceError, shorten

if TYPE_CHECKING:  # the cache module pulls in Lightning (slow to import); only its type is needed
    from osteolightning.data.cache import PreprocessedCache

__all__ = [
    "DataPlan",
    "DataTask",
    "conflict_targets",
    "list_samples",
    "pixel_keys",
    "plan_data",
    "split_rows",
]

_NO_IMAGES = np.zeros((0, 1, 1), np.uint8)


@dataclass(frozen=True)
class DataTask:
    """What a task asks of its samples (the classifier's and the segmenter's DataModules).

    Attributes:
        label_names: names of the label indices (for conflicts and ``splits.csv``).
        read_labels: the names the source reads its label column as (``None``: none read).
        require_labels: every sample needs a label; the split is then checked per class.
        masks: how each sample's mask is read (``None``: masks are not used).
        masks_agree: copies of one image must carry the same mask too (segmentation), else
            the label alone.
    """

    label_names: tuple[str, ...]
    read_labels: tuple[str, ...] | None
    require_labels: bool = True
    masks: MaskReading | None = None
    masks_agree: bool = False

    @property
    def split_names(self) -> list[str] | None:
        """The classes every split must hold (``None``: not checked)."""
        return list(self.label_names) if self.require_labels else None


@dataclass(frozen=True)
class DataPlan:
    """What :func:`plan_data` decided, as plain values (``N`` kept samples).

    Attributes:
        listed: every sample the source listed, readable or not.
        readable: the readable samples (with a usable mask where masks are used), pseudonymised.
        copies: the copy groups among ``readable`` (before the conflict policies).
        kept: ``(N,)`` indices of the kept samples in ``readable``.
        samples: the kept samples (labels permuted under ``permute_labels``).
        digests: their files' SHA-1.
        labels: ``(N,)`` their labels (``-1``: none).
        images: ``(N, S, S)`` uint8 network inputs (memory-mapped from the cache; a private
            copy under ``mask_input=apply``; a 1 x 1 placeholder without pixels).
        masks: ``(N, S, S)`` uint8 letterboxed masks, or ``None``.
        pixel_keys: a key per sample naming its preprocessed pixels (:func:`pixel_keys`).
        groups: ``(N,)`` independent groups (a patient, copies): never cut by a split.
        split_codes: ``(N,)`` split codes (:mod:`osteolightning.data.splits`).
        columns: the value columns, resolved.
        conflicts: rows ``(group, path, label, action)`` for ``label_conflicts.csv``.
        skipped: ``(path, reason)`` of what was left out, for ``skipped.csv``.
        findings: input that is valid but suspicious.
    """

    listed: list[Sample] = field(default_factory=list)
    readable: list[Sample] = field(default_factory=list)
    copies: CopyGroups = field(default_factory=lambda: CopyGroups(np.zeros(0, np.int64)))
    kept: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    samples: list[Sample] = field(default_factory=list)
    digests: list[str] = field(default_factory=list)
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    images: Any = field(default_factory=lambda: _NO_IMAGES)
    masks: np.ndarray | None = None
    pixel_keys: list[str] = field(default_factory=list)
    groups: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    split_codes: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    columns: Columns = field(default_factory=Columns)
    conflicts: list[tuple[int, str, str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)


def plan_data(
    source: Any,
    task: DataTask,
    cache: PreprocessedCache,
    hygiene: HygieneSpec | None = None,
    split: SplitSpec | None = None,
    inputs: InputSpec | None = None,
    columns: ColumnSpec | None = None,
    require_images: bool = True,
) -> DataPlan:
    """The plan of ``source``'s data set (see the module's docstring for the steps).

    Args:
        source: anything with ``samples(class_names)`` and ``describe()`` (and optionally
            ``skipped``: files it left out).
        task: what the task asks of the samples.
        cache: the preprocessed-image cache; its ``image_size`` is the side images are
            letterboxed to.
        hygiene: bad files, copies and conflicts (``None``: the defaults).
        split: the split (``None``: the defaults).
        inputs: the network inputs (masks applied or cropped, no pixels; ``None``: the
            defaults at the cache's size).
        columns: the value columns (``None``: none).
        require_images: a source without a readable image is an error (``False``: an empty
            plan, for an audit).

    Raises:
        DataSourceError: no readable image, an image without the label or mask the task needs,
            a conflict under the ``error`` policy, a given split that leaks, a covariate that
            separates the classes (each error names the files or columns).
    """
    hygiene, split = hygiene or HygieneSpec(), split or SplitSpec()
    inputs, columns = inputs or InputSpec(cache.image_size), columns or ColumnSpec()
    where = source.describe()
    listed = list_samples(source, task)
    samples, digests, skipped = _readable(source, listed, task, cache, hygiene, inputs)
    if not samples and not require_images:
        return DataPlan(listed=listed, skipped=skipped)
    if not samples:
        raise DataSourceError(
            f"The data source {where} yielded no readable images ({len(skipped)} skipped)."
        )
    findings: list[Finding] = []
    masks = None
    if task.masks is not None:
        size, policy = cache.image_size, hygiene.on_bad_image
        loaded = load_masks(samples, task.masks, size, policy, cache.workers)
        skipped += loaded.skipped
        if not loaded.keep:
            raise DataSourceError(
                f"The data source {where} yielded no image with a usable mask "
                f"({len(skipped)} skipped)."
            )
        samples = [samples[i] for i in loaded.keep]
        digests = [digests[i] for i in loaded.keep]
        masks, findings = loaded.masks, list(loaded.findings)
    samples = _pseudonymise(samples, cache.salt())
    paths = [str(s.path) for s in samples]
    hashes = blank = None
    if inputs.images:
        # memory-mapped, shared by workers and ranks; the splits are views, not copies
        cached = cache.open_array([s.path for s in samples])
        images, hashes, blank = cached.images, cached.hashes, cached.blank
        findings += image_findings(paths, cached.infos, cache.image_size, blank)
    else:  # one shared 1 x 1 placeholder (a broadcast view: no memory per image)
        images = np.broadcast_to(np.zeros((1, 1, 1), np.uint8), (len(samples), 1, 1))
    labels = np.array([s.label for s in samples], dtype=np.int64)
    near = images if hygiene.near_distance is not None and inputs.images else None
    copies, keep, conflicts = _copies(
        samples, digests, labels, masks, near, hashes, blank, task, hygiene
    )
    idx = np.flatnonzero(keep)
    readable = samples
    samples, digests = [samples[i] for i in idx], [digests[i] for i in idx]
    images, labels = images[idx], labels[idx]
    masks = masks[idx] if masks is not None else None
    images, masks = _mask_inputs(images, masks, samples, inputs)
    component = copies.component[idx]
    groups = group_ids(
        [
            [f"patient:{s.patient_id}" if s.patient_id else None, f"copy:{c}"]
            for s, c in zip(samples, component.tolist(), strict=True)
        ]
    )
    codes = _split(samples, labels, groups, split, task, findings)
    resolved = resolve_columns(columns, samples, codes, where)
    if split.permute_labels is not None:
        labels = permute_group_labels(labels, groups, int(split.permute_labels))
        samples = [
            dataclasses.replace(s, label=int(y)) for s, y in zip(samples, labels, strict=True)
        ]
    return DataPlan(
        listed=listed,
        readable=readable,
        copies=copies,
        kept=idx,
        samples=samples,
        digests=digests,
        labels=labels,
        images=images,
        masks=masks,
        pixel_keys=pixel_keys(digests, masks, cache.image_size, inputs),
        groups=groups,
        split_codes=codes,
        columns=resolved,
        conflicts=conflicts,
        skipped=skipped,
        findings=findings,
    )


def _copies(
    samples: list[Sample],
    digests: list[str],
    labels: np.ndarray,
    masks: np.ndarray | None,
    images: Any,
    hashes: list[int] | None,
    blank: list[bool] | None,
    task: DataTask,
    hygiene: HygieneSpec,
) -> tuple[CopyGroups, np.ndarray, list[tuple[int, str, str, str]]]:
    """The copy groups (exact, and near ones among ``images`` when given), the keep-mask the
    conflict policies leave, and the ``label_conflicts.csv`` rows (record-conflict groups
    numbered after the label ones)."""
    paths = [str(s.path) for s in samples]
    targets, names = conflict_targets(labels, masks, task)
    copies = find_copies(
        digests,
        targets,
        images,
        max_distance=hygiene.near_distance,
        min_correlation=hygiene.near_correlation,
        hashes=hashes,
        blank=blank,
    )
    keep = apply_conflict_policy(copies, hygiene.on_label_conflict, paths, names, targets)
    conflicts = conflict_rows(copies, hygiene.on_label_conflict, paths, names, targets)
    records = [(s.extra, s.t_score) for s in samples]
    kept, rows = apply_record_policy(copies, records, keep, hygiene.on_record_conflict, paths)
    base = len(copies.conflicts)
    conflicts += [(base + g, p, names[targets[i]], a) for g, i, p, a in rows]
    return copies, keep & kept, conflicts


def _mask_inputs(
    images: Any, masks: np.ndarray | None, samples: list[Sample], inputs: InputSpec
) -> tuple[Any, np.ndarray | None]:
    """The network's images and masks under ``mask_input``: ``apply`` zeroes each image
    outside its mask, ``crop`` crops both to the mask's box; else they are as they came."""
    if inputs.mask_input == "apply":
        images = np.asarray(images)  # a private copy: the mapped cache is read-only
        images[masks == 0] = 0  # bone-only input: zero outside the mask
    elif inputs.mask_input == "crop":
        paths = [str(s.path) for s in samples]
        images, masks = crop_to_masks(
            images, masks, paths, inputs.image_size, inputs.mask_crop_margin
        )
    return images, masks


def list_samples(source: Any, task: DataTask) -> list[Sample]:
    """The source's samples, their labels read as the task asks."""
    return source.samples(list(task.read_labels) if task.read_labels is not None else None)


def _readable(
    source: Any,
    listed: list[Sample],
    task: DataTask,
    cache: PreprocessedCache,
    hygiene: HygieneSpec,
    inputs: InputSpec,
) -> tuple[list[Sample], list[str], list[tuple[str, str]]]:
    """The listed samples minus unreadable files, their digests, and what was skipped (the
    source's own skips first)."""
    paths = [s.path for s in listed]
    if inputs.images:
        prepared = cache.prepare(paths, on_bad_image=hygiene.on_bad_image)
        digests, unread = prepared.digests, prepared.skipped
    else:  # no pixels: the files' content hashes are all hygiene needs
        digests, unread = cache.file_digests(paths, hygiene.on_bad_image)
    skipped = [(str(p), reason) for p, reason in [*getattr(source, "skipped", []), *unread]]
    good = [s for s, d in zip(listed, digests, strict=True) if d is not None]
    unlabelled = [str(s.path) for s in good if s.label < 0]
    if unlabelled and task.require_labels:
        raise DataSourceError(
            f"{len(unlabelled)} image(s) have no label, e.g. '{unlabelled[0]}'; every image "
            f"needs one of {list(task.label_names)} for training and evaluation."
        )
    unmasked = [s.path for s in good if s.mask is None]
    if unmasked and task.masks is not None:
        raise DataSourceError(
            f"{len(unmasked)} image(s) of {source.describe()} have no mask: "
            f"{shorten(unmasked)}. {task.masks.use} needs a mask for every image: give it "
            f"in a manifest's mask column, or use a segmentation tree ROOT/images/* + "
            f"ROOT/masks/* with the same file names.",
            details=unmasked,
        )
    return good, [d for d in digests if d is not None], skipped


def _pseudonymise(samples: list[Sample], salt: str) -> list[Sample]:
    """Replace patient IDs (manifest column, else DICOM PatientID) by salted hashes."""
    out = []
    for s in samples:
        raw = s.patient_id or dicom_patient_id(s.path)
        out.append(dataclasses.replace(s, patient_id=pseudonym(raw, salt) if raw else None))
    return out


def conflict_targets(
    labels: np.ndarray, masks: np.ndarray | None, task: DataTask
) -> tuple[np.ndarray, list[str]]:
    """What copies of one image must agree on: an index per image and the names of the
    indices. The class label; under ``task.masks_agree`` also the letterboxed mask, named
    ``mask <sha1>`` (identical images with different masks are a conflict)."""
    if not task.masks_agree:
        return labels, list(task.label_names)
    assert masks is not None  # a task whose masks must agree reads them
    keys = [
        (int(label), hashlib.sha1(mask.tobytes()).hexdigest()[:10])
        for label, mask in zip(labels.tolist(), masks, strict=True)
    ]
    distinct = sorted(set(keys))
    index = {key: i for i, key in enumerate(distinct)}
    names = [
        f"{task.label_names[label]}, mask {digest}" if label >= 0 else f"mask {digest}"
        for label, digest in distinct
    ]
    return np.array([index[k] for k in keys], dtype=np.int64), names


def pixel_keys(
    digests: Sequence[str], masks: np.ndarray | None, cache_size: int, inputs: InputSpec
) -> list[str]:
    """A key per sample naming its preprocessed pixels: the file's content hash, the
    preprocessing (size, version) and, where a mask changes the input, the mask's hash."""
    from osteolightning.data.cache import PREPROCESS_VERSION  # imports Lightning: only here

    base = f"s{cache_size}-v{PREPROCESS_VERSION}"
    if inputs.mask_input == "crop":
        base += f"-crop{inputs.image_size}m{inputs.mask_crop_margin:g}"
    if masks is None or inputs.mask_input is None:
        return [f"{d}-{base}" for d in digests]
    return [
        f"{d}-{base}-{inputs.mask_input}{hashlib.sha1(m.tobytes()).hexdigest()[:12]}"
        for d, m in zip(digests, masks, strict=True)
    ]


def split_rows(
    plan: DataPlan, label_names: Sequence[str]
) -> list[tuple[str, str, str, str, int, str]]:
    """One row per kept image: split, path, label, patient_id, group, sha1 (the run's
    ``splits.csv``). The label is ``""`` for an unlabelled image (label ``-1``)."""
    return [
        (
            split_name(c),
            str(s.path),
            label_names[s.label] if s.label >= 0 else "",
            s.patient_id or "",
            int(g),
            d,
        )
        for s, c, g, d in zip(
            plan.samples, plan.split_codes, plan.groups, plan.digests, strict=True
        )
    ]


def _split(
    samples: list[Sample],
    labels: np.ndarray,
    groups: np.ndarray,
    split: SplitSpec,
    task: DataTask,
    findings: list[Finding],
) -> np.ndarray:
    """Split codes (:func:`~osteolightning.data.splits.split_codes`; few images of a class in
    a split are added to ``findings``); a source's given split must not put a patient or a
    copy on two sides."""
    if split.evaluate_all:
        return np.full(len(labels), TEST, dtype=np.int64)
    # stratified by label when every image has one, else one stratum
    strata = labels if len(labels) and labels.min() >= 0 else np.zeros_like(labels)
    given = None
    if any(s.split for s in samples):
        given = np.array([SPLIT_NAMES.index(s.split) for s in samples])
        crossing = crossing_groups(groups, given)
        if crossing:
            files = [str(s.path) for s, g in zip(samples, groups, strict=True) if g in crossing]
            raise DataSourceError(
                f"{len(crossing)} patient(s) or copy group(s) have images in two of the data "
                f"set's given splits: {shorten(files)}. The given split leaks; fix it, or "
                "read the folders as one tree (data=folder) and let the split be made.",
                details=files,
            )
    names = task.split_names
    codes = split_codes(
        strata, groups, split.args, split.nested, split.train_fraction, given, names
    )
    for _, message in split_warnings(codes, labels, names or []):
        findings.append(Finding("few_images", message))
    return codes
