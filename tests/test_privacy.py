"""No DICOM patient tag reaches a log, W&B, predictions or the run directory; PatientID is
used only as a salted hash, to keep a patient's knees in one split."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

from osteolightning.evaluate import evaluate
from osteolightning.predict import main as predict_main
from osteolightning.train import train
from tests.helpers import write_dicom

INSTITUTION = "Saint Example Hospital"
BIRTH_DATE = "19511231"


def _identifying(patient: str) -> dict[str, str]:
    return {
        "PatientName": f"DOE^{patient}",
        "PatientID": f"MRN-{patient}-7731",
        "AccessionNumber": f"ACC{patient}",
        "ReferringPhysicianName": "HOUSE^GREGORY",
    }


def test_no_patient_tag_in_any_output(make_cfg, phantom_dir, tmp_path):
    root = tmp_path / "dicoms"
    with open(phantom_dir / "manifest.csv") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:  # the phantom's persons: a third of them have both knees
        folder = root / row["label"]
        folder.mkdir(parents=True, exist_ok=True)
        pixels = np.asarray(Image.open(phantom_dir / row["image"]))
        tags = {
            **_identifying(row["patient_id"]),
            "PatientBirthDate": BIRTH_DATE,
            "InstitutionName": INSTITUTION,
            "StudyDate": "20240102",
        }
        write_dicom(
            folder / f"{Path(row['image']).stem}.dcm", pixels.astype(np.uint16) * 16, tags=tags
        )
    cfg = make_cfg(
        "train",
        [
            "debug=tiny",
            "logger=default",
            "data=folder",
            f"data.root={root}",
            "trainer.max_epochs=1",
            # the full state too: every file the run can leave is searched for the tags
            "callbacks.last_checkpoint.keep_after_finish=true",
        ],
        run="phi-train",
    )
    train(cfg)
    run_dir = Path(cfg.paths.output_dir)
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    eval_cfg = make_cfg(
        "eval",
        [
            "common=tiny",
            "callbacks=tiny",
            "trainer=tiny",
            "data=folder",
            f"data.root={root}",
            f"ckpt_path={ckpt}",
        ],
        run="phi-eval",
    )
    evaluate(eval_cfg)
    predict_main([str(ckpt), str(root), "--out", str(tmp_path / "phi-eval" / "pred.csv")])

    secrets = {INSTITUTION, BIRTH_DATE, "HOUSE^GREGORY", "MRN-", "DOE^"}
    for row in rows:
        secrets |= {_identifying(row["patient_id"])["PatientID"]}
    scanned = 0
    for out_dir in (run_dir, tmp_path / "phi-eval"):
        for file in out_dir.rglob("*"):
            if file.is_file():
                data = file.read_bytes()
                scanned += 1
                for secret in secrets:
                    assert secret.encode() not in data, f"{secret!r} leaked into {file}"
    assert scanned > 10 and any((run_dir / "wandb").rglob("*.wandb"))

    # grouping still works through the salted hash: a patient's knees share one split
    with open(run_dir / "splits.csv") as handle:
        split_rows = list(csv.DictReader(handle))
    by_patient: dict[str, set[str]] = {}
    for r in split_rows:
        assert r["patient_id"].startswith("P-")
        by_patient.setdefault(r["patient_id"], set()).add(r["split"])
    assert len(by_patient) < len(split_rows)  # some patients have two knees
    assert all(len(splits) == 1 for splits in by_patient.values())
