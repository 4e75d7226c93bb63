"""Patient identifiers never leave the process in clear text.

DICOM headers carry names, IDs, birth dates and institutions. osteolightning reads exactly one
tag, ``PatientID``, and only to keep a patient's images together when splitting; what it
keeps, logs and writes (``splits.csv``, W&B, predictions) is a salted SHA-256 of it. The same
holds for a manifest's ``patient_id`` column. The salt is random, created once per cache
folder and never written into a run directory, so the hashes cannot be reversed by trying
candidate IDs, yet stay stable between runs that share the cache.
"""

from __future__ import annotations

import hashlib
import secrets
from pathlib import Path

from osteolightning.data.io import is_dicom
from osteolightning.utils.files import atomic_write_text


def load_salt(cache_root: str | Path) -> str:
    """The installation's salt, created on first use in ``cache_root/patient_salt``."""
    path = Path(cache_root) / "patient_salt"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:  # O_EXCL: when ranks race, the first writer's salt wins for everyone
            with open(path, "x") as handle:
                handle.write(secrets.token_hex(16))
        except FileExistsError:
            pass
        if not path.read_text().strip():  # pragma: no cover - a racing writer mid-write
            atomic_write_text(path, secrets.token_hex(16))
    return path.read_text().strip()


def pseudonym(patient_id: str, salt: str) -> str:
    """``"P-"`` + the first 16 hex digits of SHA-256(salt + id): stable, not reversible."""
    return "P-" + hashlib.sha256(f"{salt}:{patient_id}".encode()).hexdigest()[:16]


def dicom_patient_id(path: str | Path) -> str | None:
    """The ``PatientID`` tag of a DICOM file (header only), or None when absent or not DICOM."""
    if not is_dicom(path):
        return None
    import pydicom

    try:
        header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["PatientID"])
    except Exception:  # an unreadable header is reported when the pixels are decoded
        return None
    value = str(header.get("PatientID", "") or "").strip()
    return value or None
