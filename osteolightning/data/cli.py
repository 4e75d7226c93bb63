"""``osteo-data VERB [ARG] [--flag] key=value ...``: data-set tools.

Verbs:
    phantom   generate a synthetic knee phantom:  osteo-data phantom out=DIR n=600 seed=0 size=256
              [bit_depth=8|16] [workers=N]
    audit     audit a data set:  osteo-data audit ROOT [--strict] [out=audit.json]
              [near_duplicates=true] [max_distance=6] [min_correlation=0.99]
              [splits=RUN_DIR|splits.csv] [cache_dir=$OSTEO_CACHE_DIR/preprocessed]
              [image_size=128] [class_names=[normal,osteopenia,osteoporosis]]
              ROOT is a class-folder tree or a CSV manifest. Prints the findings, writes them to
              `out` as JSON; --strict exits 1 on label conflicts, split leakage or unreadable
              files.

Arguments are ``key=value`` pairs, as in the Hydra entry points; a key the verb does not take is
an error that lists the keys it does. A verb's positional argument (``ROOT``) may also be given
as ``root=...``. Exit status: 0 done, 1 problems found under ``--strict``, 2 bad arguments.
"""

from __future__ import annotations

import inspect
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from rich.console import Console

from osteolightning.data.audit import audit
from osteolightning.data.near_duplicates import DEFAULT_MAX_DISTANCE, DEFAULT_MIN_CORRELATION
from osteolightning.data.phantom import CLASS_NAMES
from osteolightning.data.phantom_files import generate_phantom
from osteolightning.data.sources import FolderSource, ManifestSource
from osteolightning.errors import ConfigError, OsteoError
from osteolightning.utils.files import atomic_write_json


def _phantom(
    out: str,
    n: int = 600,
    seed: int = 0,
    size: int = 256,
    bit_depth: int = 8,
    workers: int | None = None,
) -> str:
    manifest = generate_phantom(
        out, n=n, seed=seed, size=size, bit_depth=bit_depth, workers=workers
    )
    return 0, f"Wrote {n} phantom knees and {manifest}"


def _audit(
    root: str,
    strict: bool = False,
    out: str = "audit.json",
    near_duplicates: bool = True,
    max_distance: int = DEFAULT_MAX_DISTANCE,
    min_correlation: float = DEFAULT_MIN_CORRELATION,
    splits: str | None = None,
    cache_dir: str | None = None,
    image_size: int = 128,
    class_names: Sequence[str] = CLASS_NAMES,
) -> tuple[int, str]:
    if not isinstance(near_duplicates, bool):
        raise ConfigError(
            f"Expected argument `near_duplicates` to be true or false, but got {near_duplicates!r}."
        )
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 32:
        raise ConfigError(
            f"Expected argument `image_size` to be an integer >= 32, but got {image_size!r}."
        )
    if isinstance(class_names, str) or not all(isinstance(c, str) for c in class_names):
        raise ConfigError(
            f"Expected argument `class_names` to be a list of names such as "
            f"[normal,osteopenia,osteoporosis], but got {class_names!r}."
        )
    from osteolightning.data.cache import PreprocessedCache  # imports Lightning: only when used

    path = Path(str(root))
    source = ManifestSource(path) if path.suffix.lower() == ".csv" else FolderSource(path)
    # Same default as conf/data/_knee.yaml: ${oc.env:OSTEO_CACHE_DIR,.cache}/preprocessed.
    cache_dir = cache_dir or os.path.join(
        os.environ.get("OSTEO_CACHE_DIR", ".cache"), "preprocessed"
    )
    report = audit(
        source,
        list(class_names),
        PreprocessedCache(cache_dir, image_size),
        near_duplicates=near_duplicates,
        max_distance=max_distance,
        min_correlation=min_correlation,
        splits=splits,
    )
    report.render(Console())
    written = atomic_write_json(out, report.to_dict())
    problems = report.problems(strict=True)
    if strict and problems:
        return 1, f"audit --strict failed: {'; '.join(problems)} (details in {written})."
    found = "; ".join(problems) or "no label conflicts, leakage or unreadable files"
    return 0, f"Audited {report.n_images} images: {found}. Wrote {written}."


VERBS: dict[str, Callable[..., tuple[int, str]]] = {"phantom": _phantom, "audit": _audit}
#: Each verb's positional arguments (in order) and ``--flags`` (boolean parameters).
POSITIONAL: dict[str, tuple[str, ...]] = {"audit": ("root",)}
FLAGS: dict[str, tuple[str, ...]] = {"audit": ("strict",)}


def parse_overrides(verb: str, args: Sequence[str]) -> dict[str, Any]:
    """``["n=10", "out=x"]`` → ``{"n": 10, "out": "x"}``, checked against the verb's parameters.

    ``--flag`` sets a boolean parameter of the verb to true; an argument without ``=`` fills
    the verb's next positional parameter (see :data:`POSITIONAL`).
    """
    positional, flags = POSITIONAL.get(verb, ()), FLAGS.get(verb, ())
    given = [a for a in args if not a.startswith("--") and "=" not in a]
    bad = [a for a in args if a.startswith("--") and a[2:].replace("-", "_") not in flags]
    if bad:
        accepted = f"the flags {', '.join(f'--{f}' for f in flags)}" if flags else "no flags"
        raise ConfigError(f"`osteo-data {verb}` takes {accepted}, not {bad}.")
    if len(given) > len(positional):
        raise ConfigError(
            "Expected arguments of the form key=value"
            + (f" after {' '.join(p.upper() for p in positional)}" if positional else "")
            + f", but got {given[len(positional) :]}."
        )
    dotlist = [a for a in args if "=" in a and not a.startswith("--")]
    values = OmegaConf.to_container(OmegaConf.from_dotlist(dotlist))
    for name, value in zip(positional, given, strict=False):
        if name in values:
            raise ConfigError(f"`osteo-data {verb}` got {name} twice: '{value}' and {name}=...")
        values[name] = value
    values.update({a[2:].replace("-", "_"): True for a in args if a.startswith("--")})
    params = inspect.signature(VERBS[verb]).parameters
    unknown = sorted(set(values) - set(params))
    if unknown:
        raise ConfigError(f"`osteo-data {verb}` takes {list(params)}, not {unknown}.")
    missing = [
        p
        for p, spec in params.items()
        if spec.default is inspect.Parameter.empty and p not in values
    ]
    if missing:
        raise ConfigError(f"`osteo-data {verb}` needs {', '.join(f'{m}=...' for m in missing)}.")
    return values  # type: ignore[return-value]


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        sys.stdout.write(__doc__ + "\n")
        return 0 if argv else 2
    verb, args = argv[0], argv[1:]
    logging.basicConfig(
        level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"
    )
    try:
        if verb not in VERBS:
            raise ConfigError(f"Unknown verb `{verb}`; expected one of {sorted(VERBS)}.")
        code, message = VERBS[verb](**parse_overrides(verb, args))
    except OsteoError as err:
        sys.stderr.write(f"osteo-data: error: {err}\n")
        return 2
    log = logging.getLogger("osteo-data")
    (log.error if code else log.info)(message)
    return code


if __name__ == "__main__":
    sys.exit(main())
