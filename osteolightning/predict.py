"""``osteo-predict CKPT PATH...``: run a trained checkpoint over radiographs.

Each PATH is an image file or a folder (searched recursively). No labels are needed.

- A classification checkpoint (``osteo-train``) prints one CSV row per image to stdout, or to
  ``--out FILE``: ``path,prob_<class>...,prediction``. A checkpoint with a T-score head adds
  ``t_score_pred,t_score_low,t_score_high,who_prediction`` (the interval calibrated on its run's
  validation split; a BMD target adds ``bmd_pred,bmd_low,bmd_high`` before them). A model that
  fuses covariates reads them from a CSV manifest's columns (``age,sex,bmi``); an image given
  without them has them imputed (counted on stderr).
- A segmentation checkpoint (``osteo-segment``) writes into the new folder ``--out DIR``:
  ``masks/<name>.png`` (the predicted label map at the image's original size, values = class
  indices), ``overlays/<name>.png`` (the mask in colour over the image) and ``manifest.csv``
  (``image,mask[,label]``, and an input manifest's other columns: ``t_score``, ``bmd``,
  ``patient_id``, ``age``, ...) that ``osteo-train data=manifest data.root=DIR/manifest.csv`` reads
  as input, e.g. with ``data.mask_input=apply`` (bone-only classification). ``--label-from-folder``
  takes each image's class from its parent folder (a class-folder tree), so the manifest can
  train a classifier.

Example:
    osteo-predict logs/train/runs/<run>/checkpoints/last.ckpt scans/ knee_07.dcm --out preds.csv
    osteo-predict logs/segment/runs/<run>/checkpoints/epoch_019.ckpt knees/ --out knee_masks \
        --label-from-folder
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch

from osteolightning.callbacks.target_outputs import prediction_columns, recorded_conformal
from osteolightning.data.cache import letterbox_resize
from osteolightning.data.columns import MISSING_VALUES, encode_row
from osteolightning.data.inputs import Inputs, find_inputs
from osteolightning.data.io import ON_BAD_IMAGE, read_image
from osteolightning.data.transforms import ToNormalizedTensor
from osteolightning.errors import ConfigError, DataSourceError, ImageReadError
from osteolightning.explain import add_explain_arguments, explain_rows
from osteolightning.models.checkpointing import load_model
from osteolightning.models.portable import load_predictor
from osteolightning.runs.checks import check_output_location
from osteolightning.runs.failures import user_errors
from osteolightning.utils.files import atomic_write_bytes, atomic_write_json, atomic_write_text

#: the columns the mask manifest writes itself (an input manifest's others are carried over)
MANIFEST_OWN = ("image", "mask", "label")
#: overlays are written at most this many pixels on their long side
OVERLAY_MAX_SIDE = 1024


def read_inputs(
    inputs: Inputs, on_bad_image: str = "error"
) -> Iterator[tuple[Path, Path, np.ndarray]]:
    """``(root, image, pixels)`` of every input that reads; an unreadable one (permissions, a
    broken or truncated file) stops the command (``error``, naming it) or is listed in
    ``inputs.skipped`` with its reason (``skip``)."""
    for root, image in inputs.pairs:
        try:
            yield root, image, read_image(image)
        except ImageReadError as err:
            if on_bad_image == "error":
                raise
            inputs.skipped.append((image, err.reason))


def _batches(items: Iterator[Any], size: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


@torch.no_grad()
def predict(
    ckpt_path: str | Path,
    paths: Sequence[str | Path],
    batch_size: int = 16,
    model: L.LightningModule | None = None,
    inputs: Inputs | None = None,
    on_bad_image: str = "error",
) -> list[list[str]]:
    """Rows ``[path, prob_<class>..., prediction]`` for every image under ``paths``
    (``model``: the checkpoint's classifier when the caller has loaded it already; ``inputs``:
    the images when the caller has found them already, whose ``skipped`` gets what is left
    out), and for a checkpoint with a regression head the columns of :func:`target_header`."""
    model = (model or load_model(ckpt_path)).eval()
    pre = model.preprocessing
    to_tensor = ToNormalizedTensor(pre.mean, pre.std, pre.in_chans)
    inputs = inputs or find_inputs(list(paths), on_bad_image)
    embedder = getattr(getattr(model, "net", None), "embedder", None)
    if getattr(embedder, "needs_mask", False):
        raise ConfigError(
            f"'{ckpt_path}' measures the bone inside each image's mask, which osteo-predict "
            "does not have. Evaluate it with its masks (osteo-eval ckpt_path=... data=manifest "
            "data.root=CSV data.mask_input=provide), or train it with a segmenter of its own "
            "(model.net.segmenter=<osteo-segment checkpoint>), which osteo-predict runs."
        )
    spec = _regression(model)
    conformal = recorded_conformal(ckpt_path) if spec is not None else None
    # (a portable export's hparams is a namespace without covariates)
    names = list(getattr(getattr(model, "hparams", None), "covariates", None) or [])
    rows: list[list[str]] = []
    for chunk in _batches(read_inputs(inputs, on_bad_image), batch_size):
        batch = torch.stack([to_tensor(letterbox_resize(img, pre.image_size)) for *_, img in chunk])
        if spec is None and not names:
            probs = model.predict_proba(batch)  # with the checkpoint's test-time augmentation
            values = None
        else:
            coding = getattr(model.hparams, "covariate_coding", None)
            covariates = _covariates(inputs, [path for _, path, _ in chunk], names, coding)
            probs, values = model.predict_batch({"image": batch, "covariates": covariates})
        extra = [[] for _ in chunk]
        if values is not None:
            predicted = values.double().numpy()
            columns = prediction_columns(
                spec, list(pre.class_names), predicted * np.nan, predicted, None, conformal
            )
            columns = {k: v for k, v in columns.items() if k not in (spec.target, "t_score")}
            extra = [[_fmt(v[j]) for v in columns.values()] for j in range(len(chunk))]
        for (_, path, _), p, more in zip(chunk, probs.tolist(), extra, strict=True):
            rows.append(
                [
                    str(path),
                    *[f"{v:.6f}" for v in p],
                    pre.class_names[max(range(len(p)), key=p.__getitem__)],
                    *more,
                ]
            )
    return rows


def _regression(model: Any) -> Any:
    spec = getattr(model, "spec", None)
    return spec if spec is not None and spec.enabled else None


def target_header(model: Any, ckpt_path: str | Path) -> list[str]:
    """The columns :func:`predict` adds for a checkpoint with a regression head (``[]``
    without one): ``<target>_pred`` and, with a calibration in its run, ``_low`` / ``_high``;
    the same for ``t_score`` of a BMD target; ``who_prediction``."""
    spec = _regression(model)
    if spec is None:
        return []
    conformal = recorded_conformal(ckpt_path)
    one = np.zeros(1)
    columns = prediction_columns(
        spec, list(model.preprocessing.class_names), one * np.nan, one, None, conformal
    )
    return [k for k in columns if k not in (spec.target, "t_score")]


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "" if np.isnan(value) else f"{value:.4f}"
    return str(value)


def _covariates(inputs: Inputs, images: list[Path], names: list[str], coding: Any) -> torch.Tensor:
    """``(B, P')`` encoded covariates of the images from their manifest rows, with the
    checkpoint's coding (NaN: unknown, imputed by the model); a bad cell is an error naming
    the image."""
    rows = []
    for image in images:
        try:
            rows.append(encode_row(inputs.columns.get(image, {}), names, coding or {}))
        except ValueError as err:
            raise DataSourceError(f"Covariates of '{image}': {err}.") from None
    return torch.as_tensor(np.array(rows, dtype=np.float64).reshape(len(images), -1)).float()


def _output_names(pairs: list[tuple[Path, Path]]) -> list[Path]:
    """Each image's path relative to its root, as a ``.png`` name; repeated names are an error."""
    names = [image.relative_to(root).with_suffix(".png") for root, image in pairs]
    seen: dict[Path, Path] = {}
    for (_, image), name in zip(pairs, names, strict=True):
        if name in seen:
            raise DataSourceError(
                f"'{image}' and '{seen[name]}' would both write masks/{name}; pass their folders "
                "(not the files), or rename one."
            )
        seen[name] = image
    return names


def _check_new_folder(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(
            f"--out '{out}' exists and is not an empty folder; osteo-predict never writes over "
            "files it did not create. Pass a new folder."
        )


@torch.no_grad()
def export_masks(
    ckpt_path: str | Path,
    paths: Sequence[str | Path],
    out_dir: str | Path,
    batch_size: int = 8,
    label_from_folder: bool = False,
    overlays: bool = True,
    allow_unsafe_pickle: bool = False,
    model: L.LightningModule | None = None,
    inputs: Inputs | None = None,
    on_bad_image: str = "error",
) -> Path:
    """Segment every image under ``paths`` and write masks, overlays and a manifest.

    Args:
        ckpt_path: a segmentation checkpoint (``osteo-segment``).
        paths: image files, folders (searched recursively) or CSV manifests (their ``image``
            column; a ``label`` column is carried into the written manifest).
        out_dir: a new (or empty) folder.
        batch_size: images per forward pass.
        label_from_folder: write a ``label`` column with each image's parent-folder name.
        overlays: also write ``overlays/``.
        allow_unsafe_pickle: see ``osteo-eval``.
        model: the checkpoint's model when the caller has loaded it already.
        inputs: the images when the caller has found them already (its ``skipped`` gets what
            is left out).
        on_bad_image: ``error`` (stop at an unreadable image, naming it) or ``skip``.

    Returns:
        The manifest path (``out_dir/manifest.csv``: ``image,mask[,label]`` and every other
        column of the input manifests (``t_score``, ``bmd``, ``patient_id``, ``age``, ...),
        image paths absolute, mask paths relative to the manifest).

    Raises:
        ConfigError: a classification checkpoint, or an ``out_dir`` holding other files.
        DataSourceError / ImageReadError: a missing path or an unreadable image (named).
    """
    from PIL import Image

    from osteolightning.callbacks.seg_evaluation import png_bytes
    from osteolightning.data.masks import unletterbox
    from osteolightning.metrics.seg_figures import overlay

    model = (model or load_model(ckpt_path, allow_unsafe_pickle)).eval()
    if not hasattr(model, "predict_masks"):
        raise ConfigError(
            f"'{ckpt_path}' is a classification checkpoint; writing masks needs one from "
            "osteo-segment. Without --out DIR a classification checkpoint prints its CSV."
        )
    out = Path(out_dir)
    _check_new_folder(out)
    pre = model.preprocessing
    to_tensor = ToNormalizedTensor(pre.mean, pre.std, pre.in_chans)
    inputs = inputs or find_inputs(list(paths), on_bad_image)
    manifest_labels = inputs.labels
    # an input manifest's other columns (t_score, bmd, patient_id, age, sex, bmi, ...) go on
    carried = list(
        dict.fromkeys(
            c for cells in inputs.columns.values() for c in cells if c not in MANIFEST_OWN
        )
    )
    names = dict(zip(inputs.pairs, _output_names(inputs.pairs), strict=True))
    rows: list[list[str]] = []
    for chunk in _batches(read_inputs(inputs, on_bad_image), batch_size):
        originals = [img for *_, img in chunk]
        batch = torch.stack([to_tensor(letterbox_resize(img, pre.image_size)) for img in originals])
        labels, _ = model.predict_masks(batch)
        for (root, image, _), original, square in zip(
            chunk, originals, labels.numpy(), strict=True
        ):
            name = names[(root, image)]
            mask = unletterbox(square, original.shape)
            atomic_write_bytes(out / "masks" / name, png_bytes(mask))
            if overlays:
                picture = overlay(np.clip(original * 255.0, 0, 255).astype(np.uint8), mask)
                scale = OVERLAY_MAX_SIDE / max(picture.shape[:2])
                pil = Image.fromarray(picture)
                if scale < 1:
                    size = (round(pil.width * scale), round(pil.height * scale))
                    pil = pil.resize(size, Image.Resampling.BILINEAR)
                atomic_write_bytes(out / "overlays" / name, png_bytes(np.asarray(pil)))
            row = [str(image.resolve()), f"masks/{name.as_posix()}"]
            if label_from_folder:
                row.append(image.parent.name)
            elif manifest_labels:
                row.append(manifest_labels.get(image, ""))
            rows.append(row + [inputs.columns.get(image, {}).get(c, "") for c in carried])
    with_label = label_from_folder or bool(manifest_labels)
    header = ["image", "mask", *(["label"] if with_label else []), *carried]
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows([header, *rows])
    manifest = atomic_write_text(out / "manifest.csv", buffer.getvalue())
    atomic_write_json(
        out / "masks.json",
        {
            "ckpt_path": str(Path(ckpt_path).resolve()),
            "class_names": list(pre.class_names),
            "image_size": pre.image_size,
            "inference": str(model.hparams.inference),
            "n_images": len(rows),
        },
    )
    return Path(manifest)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="osteo-predict", description=__doc__.split("\n")[0])
    parser.add_argument("ckpt", help="checkpoint written by osteo-train or osteo-segment")
    parser.add_argument("paths", nargs="+", help="image files, folders or CSV manifests")
    parser.add_argument(
        "--out",
        help="classification: write the CSV here instead of stdout; segmentation: the new "
        "folder for masks/, overlays/ and manifest.csv (required)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="classification: replace an existing --out file"
    )
    parser.add_argument(
        "--on-bad-image",
        choices=ON_BAD_IMAGE,
        default="error",
        help="an unreadable image or broken link: stop, naming it (error), or leave it out and "
        "list it (skip)",
    )
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument(
        "--label-from-folder",
        action="store_true",
        help="segmentation: add a label column with each image's parent-folder name",
    )
    parser.add_argument("--no-overlays", action="store_true", help="segmentation: skip overlays/")
    add_explain_arguments(parser)
    args = parser.parse_args(argv)
    with user_errors("osteo-predict", Path(args.out).parent if args.out else None):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    """osteo-predict's work; every input is either used or reported, and the count is printed."""
    if args.out:  # before any work: not after every prediction was computed
        check_output_location(args.out, "--out", file=None)
    model = load_predictor(args.ckpt)  # a checkpoint, or an osteo-export .onnx / .pt
    inputs = find_inputs(args.paths, args.on_bad_image)
    if hasattr(model, "predict_masks"):
        if not args.out:
            raise ConfigError("A segmentation checkpoint needs --out DIR (a new folder).")
        manifest = export_masks(
            args.ckpt,
            args.paths,
            args.out,
            batch_size=args.batch_size,
            label_from_folder=args.label_from_folder,
            overlays=not args.no_overlays,
            model=model,
            inputs=inputs,
            on_bad_image=args.on_bad_image,
        )
        done = f"wrote {len(inputs.pairs) - _unread(inputs)} masks, overlays and {manifest}"
    else:
        if args.out and Path(args.out).exists() and not args.overwrite:
            raise ConfigError(
                f"--out '{args.out}' exists; osteo-predict does not write over it. Pass a new "
                "file, or --overwrite to replace it."
            )
        rows = predict(
            args.ckpt,
            [],
            args.batch_size,
            model=model,
            inputs=inputs,
            on_bad_image=args.on_bad_image,
        )
        header = ["path", *[f"prob_{c}" for c in model.preprocessing.class_names], "prediction"]
        header += target_header(model, args.ckpt)
        _report_covariates(model, inputs)
        if args.explain:  # one saliency overlay per image, its path and border share in the CSV
            written = {row[0] for row in rows}
            pairs = [(root, image) for root, image in inputs.pairs if str(image) in written]
            header, rows = explain_rows(model, args, pairs, header, rows)
        if args.out:
            buffer = io.StringIO()
            csv.writer(buffer, lineterminator="\n").writerows([header, *rows])
            atomic_write_text(args.out, buffer.getvalue())
        else:
            csv.writer(sys.stdout, lineterminator="\n").writerows([header, *rows])
        done = f"wrote {len(rows)} predictions to {args.out or 'stdout'}"
    for path, reason in inputs.skipped:
        sys.stderr.write(f"osteo-predict: skipped '{path}': {reason}\n")
    left_out = f" ({len(inputs.skipped)} skipped, listed above)" if inputs.skipped else ""
    sys.stderr.write(f"osteo-predict: {done}{left_out}.\n")
    return 0


def _report_covariates(model: Any, inputs: Inputs) -> None:
    """Say on stderr how many images come without the model's covariates (imputed)."""
    # (a portable export's hparams is a namespace without covariates)
    names = list(getattr(getattr(model, "hparams", None), "covariates", None) or [])
    if not names:
        return
    missing = {
        name: sum(
            (inputs.columns.get(image, {}).get(name) or "").strip().lower() in MISSING_VALUES
            for _, image in inputs.pairs
        )
        for name in names
    }
    counts = ", ".join(f"{name}={n}" for name, n in missing.items())
    sys.stderr.write(
        f"osteo-predict: the model fuses covariates {names}, read from the manifest's columns; "
        f"unknown (imputed with the training mean): {counts} of {len(inputs.pairs)} images.\n"
    )


def _unread(inputs: Inputs) -> int:
    """How many of ``inputs.pairs`` were skipped while reading."""
    found = {image for _, image in inputs.pairs}
    return sum(1 for path, _ in inputs.skipped if path in found)


if __name__ == "__main__":
    sys.exit(main())
