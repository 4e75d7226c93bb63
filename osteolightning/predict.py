"""``osteo-predict CKPT PATH...``: classify radiographs with a trained checkpoint.

Each PATH is an image file or a folder (searched recursively). One CSV row per image goes to
stdout, or to ``--out FILE``: ``path,prob_<class>...,prediction``. No labels are needed.

Example:
    osteo-predict logs/train/runs/<run>/checkpoints/last.ckpt scans/ knee_07.dcm --out preds.csv
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from osteolightning.data.cache import letterbox_resize
from osteolightning.data.io import IMAGE_EXTENSIONS, is_dicom, read_image
from osteolightning.data.transforms import ToNormalizedTensor
from osteolightning.errors import DataSourceError, OsteoError
from osteolightning.evaluate import load_classifier
from osteolightning.utils.files import atomic_write_text


def iter_images(paths: Sequence[str | Path]) -> Iterator[Path]:
    """Image files named directly or found under folders (sorted).

    Raises:
        DataSourceError: a path that does not exist, or a folder with no image in it.
    """
    for raw in paths:
        path = Path(raw)
        if path.is_file():
            yield path
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
            yield from found
        else:
            raise DataSourceError(f"'{path}' does not exist; pass image files or folders.")


@torch.no_grad()
def predict(
    ckpt_path: str | Path, paths: Sequence[str | Path], batch_size: int = 16
) -> list[list[str]]:
    """Rows ``[path, prob_<class>..., prediction]`` for every image under ``paths``."""
    model = load_classifier(ckpt_path).eval()
    hp = model.hparams
    to_tensor = ToNormalizedTensor(hp.mean, hp.std, hp.in_chans)
    files = list(iter_images(paths))
    rows: list[list[str]] = []
    for start in range(0, len(files), batch_size):
        chunk = files[start : start + batch_size]
        batch = torch.stack(
            [to_tensor(letterbox_resize(read_image(p), hp.image_size)) for p in chunk]
        )
        probs = model.predict_proba(batch)  # with the checkpoint's test-time augmentation
        for path, p in zip(chunk, probs.tolist(), strict=True):
            rows.append(
                [
                    str(path),
                    *[f"{v:.6f}" for v in p],
                    hp.class_names[max(range(len(p)), key=p.__getitem__)],
                ]
            )
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="osteo-predict", description=__doc__.split("\n")[0])
    parser.add_argument("ckpt", help="checkpoint written by osteo-train")
    parser.add_argument("paths", nargs="+", help="image files or folders")
    parser.add_argument("--out", help="write the CSV here instead of stdout")
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args(argv)
    try:
        rows = predict(args.ckpt, args.paths, args.batch_size)
        names = load_classifier(args.ckpt).hparams.class_names
    except OsteoError as err:
        parser.exit(2, f"osteo-predict: error: {err}\n")
    header = ["path", *[f"prob_{c}" for c in names], "prediction"]
    if args.out:
        import io

        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerows([header, *rows])
        atomic_write_text(args.out, buffer.getvalue())
    else:
        csv.writer(sys.stdout, lineterminator="\n").writerows([header, *rows])
    return 0


if __name__ == "__main__":
    sys.exit(main())
