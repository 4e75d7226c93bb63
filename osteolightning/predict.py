"""``osteo-predict CKPT PATH...``: run a trained checkpoint over radiographs.

Each PATH is an image file or a folder (searched recursively). No labels are needed.

- A classification checkpoint (``osteo-train``) prints one CSV row per image to stdout, or to
  ``--out FILE``: ``path,prob_<class>...,prediction``.
- A segmentation checkpoint (``osteo-segment``) writes into the new folder ``--out DIR``:
  ``masks/<name>.png`` (the predicted label map at the image's original size, values = class
  indices), ``overlays/<name>.png`` (the mask in colour over the image) and ``manifest.csv``
  (``image,mask[,label]``) that ``osteo-train data=manifest data.root=DIR/manifest.csv`` reads
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

import lightning as L
import numpy as np
import torch

from osteolightning.data.cache import letterbox_resize
from osteolightning.data.io import IMAGE_EXTENSIONS, is_dicom, read_image
from osteolightning.data.transforms import ToNormalizedTensor
from osteolightning.errors import ConfigError, DataSourceError, OsteoError
from osteolightning.explain import add_explain_arguments, explain_rows
from osteolightning.models.checkpointing import load_model
from osteolightning.models.portable import load_predictor
from osteolightning.utils.files import atomic_write_bytes, atomic_write_json, atomic_write_text

#: overlays are written at most this many pixels on their long side
OVERLAY_MAX_SIDE = 1024


def iter_images(paths: Sequence[str | Path]) -> Iterator[Path]:
    """Image files named directly or found under folders (sorted).

    Raises:
        DataSourceError: a path that does not exist, or a folder with no image in it.
    """
    for _, path in iter_images_with_roots(paths):
        yield path


def iter_images_with_roots(paths: Sequence[str | Path]) -> Iterator[tuple[Path, Path]]:
    """``(root, image)`` pairs: the folder an image was found under (its parent when named
    directly), so outputs can keep the image's path relative to it."""
    for raw in paths:
        path = Path(raw)
        if path.is_file():
            yield path.parent, path
        elif path.is_dir():
            found = sorted(
                p
                for p in path.rglob("*")
                if p.is_file() and (p.suffix.lower() in IMAGE_EXTENSIONS or is_dicom(p))
            )
            if not found:
                raise DataSourceError(
                    f"No images under '{path}'; accepted: {sorted(IMAGE_EXTENSIONS)}."
                )
            yield from ((path, f) for f in found)
        else:
            raise DataSourceError(f"'{path}' does not exist; pass image files or folders.")


@torch.no_grad()
def predict(
    ckpt_path: str | Path,
    paths: Sequence[str | Path],
    batch_size: int = 16,
    model: L.LightningModule | None = None,
) -> list[list[str]]:
    """Rows ``[path, prob_<class>..., prediction]`` for every image under ``paths``
    (``model``: the checkpoint's classifier when the caller has loaded it already)."""
    model = (model or load_model(ckpt_path)).eval()
    pre = model.preprocessing
    to_tensor = ToNormalizedTensor(pre.mean, pre.std, pre.in_chans)
    files = list(iter_images(paths))
    rows: list[list[str]] = []
    for start in range(0, len(files), batch_size):
        chunk = files[start : start + batch_size]
        batch = torch.stack(
            [to_tensor(letterbox_resize(read_image(p), pre.image_size)) for p in chunk]
        )
        probs = model.predict_proba(batch)  # with the checkpoint's test-time augmentation
        for path, p in zip(chunk, probs.tolist(), strict=True):
            rows.append(
                [
                    str(path),
                    *[f"{v:.6f}" for v in p],
                    pre.class_names[max(range(len(p)), key=p.__getitem__)],
                ]
            )
    return rows


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


def _inputs(paths: Sequence[str | Path]) -> tuple[list[tuple[Path, Path]], dict[Path, str]]:
    """``(root, image)`` pairs of files, folders and CSV manifests (their ``image`` column,
    relative to the CSV), and the labels a manifest gives (its ``label`` column, if any)."""
    pairs: list[tuple[Path, Path]] = []
    labels: dict[Path, str] = {}
    for raw in paths:
        path = Path(raw)
        if path.is_file() and path.suffix.lower() == ".csv":
            with open(path, newline="") as handle:
                reader = csv.DictReader(handle)
                if "image" not in (reader.fieldnames or []):
                    raise DataSourceError(
                        f"Manifest '{path}' has no `image` column; expected the header "
                        f"image[,label,...], but got {reader.fieldnames}."
                    )
                for line, row in enumerate(reader, start=2):
                    image = (path.parent / row["image"]).resolve()
                    if not image.is_file():
                        raise DataSourceError(
                            f"Manifest '{path}' line {line}: image '{row['image']}' does not exist."
                        )
                    base = path.parent.resolve()
                    # images outside the manifest's folder are named by their file name
                    pairs.append((base if image.is_relative_to(base) else image.parent, image))
                    if row.get("label"):
                        labels[image] = row["label"]
        else:
            pairs.extend(iter_images_with_roots([path]))
    return pairs, labels


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

    Returns:
        The manifest path (``out_dir/manifest.csv``: ``image,mask[,label]``, image paths
        absolute, mask paths relative to the manifest).

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
    pairs, manifest_labels = _inputs(paths)
    names = _output_names(pairs)
    rows: list[list[str]] = []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        originals = [read_image(image) for _, image in chunk]
        batch = torch.stack([to_tensor(letterbox_resize(img, pre.image_size)) for img in originals])
        labels, _ = model.predict_masks(batch)
        for (_, image), name, original, square in zip(
            chunk, names[start : start + batch_size], originals, labels.numpy(), strict=True
        ):
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
            rows.append(row)
    with_label = label_from_folder or bool(manifest_labels)
    header = ["image", "mask", *(["label"] if with_label else [])]
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
    parser.add_argument("ckpt", help="checkpoint written by osteo-train")
    parser.add_argument("paths", nargs="+", help="image files or folders")
    parser.add_argument(
        "--out",
        help="classification: write the CSV here instead of stdout; segmentation: the new "
        "folder for masks/, overlays/ and manifest.csv (required)",
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
    try:
        model = load_predictor(args.ckpt)  # a checkpoint, or an osteo-export .onnx / .pt
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
            )
            print(f"Wrote masks, overlays and {manifest}")
            return 0
    except OsteoError as err:
        parser.exit(2, f"osteo-predict: error: {err}\n")
    try:
        rows = predict(args.ckpt, args.paths, args.batch_size, model=model)
        names = model.preprocessing.class_names
    except OsteoError as err:
        parser.exit(2, f"osteo-predict: error: {err}\n")
    header = ["path", *[f"prob_{c}" for c in names], "prediction"]
    if args.explain:  # one saliency overlay per image, its path and border share in the CSV
        try:
            pairs = list(iter_images_with_roots(args.paths))
            header, rows = explain_rows(model, args, pairs, header, rows)
        except OsteoError as err:
            parser.exit(2, f"osteo-predict: error: {err}\n")
    if args.out:
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerows([header, *rows])
        atomic_write_text(args.out, buffer.getvalue())
    else:
        csv.writer(sys.stdout, lineterminator="\n").writerows([header, *rows])
    return 0


if __name__ == "__main__":
    sys.exit(main())
