"""``osteo-data VERB [ARG] [--flag] key=value ...``: data-set tools.

Verbs (``osteo-data VERB --help`` explains one):
    phantom   generate a synthetic knee phantom
    audit     audit a data set: duplicates, label conflicts, unreadable files, suspicious
              images, leakage across a run's splits

Arguments are ``key=value`` pairs, as in the Hydra entry points; a key the verb does not take is
an error that lists the keys it does. A verb's positional argument (``ROOT``) may also be given
as ``root=...``. Exit status: 0 done; 1 a data error (a malformed source or splits.csv, no
images) or, under ``--strict``, problems found; 2 bad arguments or configuration (an unknown
key, a value out of range, an unwritable cache folder). Errors print their message alone, no
traceback (``OSTEO_TRACEBACK=1`` shows it); a long list of files goes to
``error_details.txt``, which the message names.
"""

from __future__ import annotations

import inspect
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from omegaconf import OmegaConf
from rich.console import Console

from osteolightning.data.audit import audit
from osteolightning.data.folders import source_at
from osteolightning.data.near_duplicates import DEFAULT_MAX_DISTANCE, DEFAULT_MIN_CORRELATION
from osteolightning.data.phantom import CLASS_NAMES
from osteolightning.data.phantom_files import generate_phantom
from osteolightning.errors import ConfigError, OsteoError
from osteolightning.runs.failures import describe, traceback_wanted
from osteolightning.utils.files import atomic_write_json

#: Exit status of a data error, and of bad arguments or configuration.
DATA_ERROR, BAD_ARGUMENTS = 1, 2

HELP = {
    "phantom": """\
osteo-data phantom out=DIR [n=600] [seed=0] [size=256] [bit_depth=8|16] [workers=N]

Generate the synthetic knee phantom: PNG images, label masks, manifest.csv and phantom.json
in DIR (new or empty). Equal arguments give byte-identical files, whatever `workers`.
  out        the folder to write (required)
  n          number of knees (600)
  seed       seed of the data set (0)
  size       side of the square images in pixels, >= 64 (256)
  bit_depth  8 or 16 bits per pixel (8)
  workers    processes (all cores); 1 renders in this process
""",
    "audit": """\
osteo-data audit ROOT [--strict] [out=audit.json] [splits=RUN_DIR|splits.csv]
                 [near_duplicates=true] [max_distance=6] [min_correlation=0.99]
                 [cache_dir=$OSTEO_CACHE_DIR/preprocessed] [image_size=128]
                 [class_names=[normal,osteopenia,osteoporosis]]

Audit a data set (ROOT: a class-folder tree or a CSV manifest) and print what it holds: class
counts, sizes, modes and formats; exact and near duplicates; label conflicts; unreadable files;
warnings about valid but suspicious input (16-bit images of partial depth, extreme aspect
ratios, all-background masks, classes too small to split); with `splits`, every copy group or
patient found on both sides of the run's split.
  --strict         exit 1 on label conflicts, leakage or unreadable files. With `splits`, the
                   run's split is judged: conflicts the run dropped (not in its split) pass.
  out              write the findings as JSON to this file (nothing is written without it)
  splits           a run directory holding splits.csv, or a splits.csv
  near_duplicates  search for near duplicates (true)
  max_distance     perceptual-hash bits two near duplicates may differ in, 0..64 (6)
  min_correlation  pixel correlation a near-duplicate candidate must reach (0.99)
  cache_dir        the preprocessed-image cache ($OSTEO_CACHE_DIR/preprocessed, else
                   .cache/preprocessed)
  image_size       the resolution images are compared at (128)
  class_names      the classes, in index order
""",
}


def _phantom(
    out: str,
    n: int = 600,
    seed: int = 0,
    size: int = 256,
    bit_depth: int = 8,
    workers: int | None = None,
) -> tuple[int, str]:
    manifest = generate_phantom(
        out, n=n, seed=seed, size=size, bit_depth=bit_depth, workers=workers
    )
    return 0, f"Wrote {n} phantom knees and {manifest}"


def _audit(
    root: str,
    strict: bool = False,
    out: str | None = None,
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
    source = source_at(str(root))
    from osteolightning.data.cache import PreprocessedCache  # imports Lightning: only when used

    # Same default as osteolightning/conf/data/_knee.yaml:
    # ${oc.env:OSTEO_CACHE_DIR,.cache}/preprocessed.
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
    written = f" Wrote {atomic_write_json(out, report.to_dict())}." if out else ""
    problems = report.problems(strict=True)
    if strict and problems:
        return DATA_ERROR, f"audit --strict failed: {'; '.join(problems)}.{written}"
    found = "; ".join(problems) or "no label conflicts, leakage or unreadable files"
    warned = f"; {len(report.findings)} warning(s)" if report.findings else ""
    return 0, f"Audited {report.n_images} images: {found}{warned}.{written}"


VERBS: dict[str, Callable[..., tuple[int, str]]] = {"phantom": _phantom, "audit": _audit}
#: Each verb's positional arguments (in order) and ``--flags`` (boolean parameters).
POSITIONAL: dict[str, tuple[str, ...]] = {"audit": ("root",)}
FLAGS: dict[str, tuple[str, ...]] = {"audit": ("strict",)}


def parse_overrides(verb: str, args: Sequence[str]) -> dict[str, Any]:
    """``["n=10", "out=x"]`` → ``{"n": 10, "out": "x"}``, checked against the verb's parameters.

    ``--flag`` sets a boolean parameter of the verb to true; an argument without ``=`` fills
    the verb's next positional parameter (see :data:`POSITIONAL`).

    Raises:
        ConfigError: an unknown key or flag, a missing required key, a malformed value.
    """
    positional, flags = POSITIONAL.get(verb, ()), FLAGS.get(verb, ())
    given = [a for a in args if not a.startswith("--") and "=" not in a]
    bad = [a for a in args if a.startswith("--") and a[2:].replace("-", "_") not in flags]
    if bad:
        accepted = f"the flags {', '.join(f'--{f}' for f in flags)}" if flags else "no flags"
        raise ConfigError(f"`osteo-data {verb}` takes {accepted} and --help, not {bad}.")
    if len(given) > len(positional):
        raise ConfigError(
            "Expected arguments of the form key=value"
            + (f" after {' '.join(p.upper() for p in positional)}" if positional else "")
            + f", but got {given[len(positional) :]}."
        )
    dotlist = [a for a in args if "=" in a and not a.startswith("--")]
    try:
        values = OmegaConf.to_container(OmegaConf.from_dotlist(dotlist))
    except Exception as exc:  # omegaconf's grammar errors: a malformed value
        raise ConfigError(f"Cannot parse the arguments {dotlist}: {exc}") from None
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
    """Run ``osteo-data``; returns the exit status (0 done, 1 data error or ``--strict``
    problems, 2 bad arguments or configuration)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        (sys.stdout if argv else sys.stderr).write(__doc__ + "\n")
        return 0 if argv else BAD_ARGUMENTS
    verb, args = argv[0], argv[1:]
    if verb in HELP and any(a in ("-h", "--help") for a in args):
        sys.stdout.write(HELP[verb])
        return 0
    logging.basicConfig(
        level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"
    )
    try:
        if verb not in VERBS:
            raise ConfigError(f"Unknown verb `{verb}`; expected one of {sorted(VERBS)}.")
        code, message = VERBS[verb](**parse_overrides(verb, args))
    except OsteoError as err:
        if traceback_wanted():
            raise
        sys.stderr.write(f"osteo-data: error: {describe(err)}\n")
        return BAD_ARGUMENTS if isinstance(err, ConfigError) else DATA_ERROR
    log = logging.getLogger("osteo-data")
    (log.error if code else log.info)(message)
    return code


if __name__ == "__main__":
    sys.exit(main())
