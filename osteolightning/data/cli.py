"""``osteo-data VERB key=value ...``: data-set tools.

Verbs:
    phantom   generate a synthetic knee phantom:  osteo-data phantom out=DIR n=600 seed=0 size=256
              [bit_depth=8|16] [workers=N]

Arguments are ``key=value`` pairs, as in the Hydra entry points; a key the verb does not take is
an error that lists the keys it does.
"""

from __future__ import annotations

import inspect
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

from omegaconf import OmegaConf

from osteolightning.data.phantom import generate_phantom
from osteolightning.errors import ConfigError, OsteoError


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
    return f"Wrote {n} phantom knees and {manifest}"


VERBS: dict[str, Callable[..., str]] = {"phantom": _phantom}


def parse_overrides(verb: str, args: Sequence[str]) -> dict[str, Any]:
    """``["n=10", "out=x"]`` → ``{"n": 10, "out": "x"}``, checked against the verb's parameters."""
    bad = [a for a in args if "=" not in a]
    if bad:
        raise ConfigError(f"Expected arguments of the form key=value, but got {bad}.")
    values = OmegaConf.to_container(OmegaConf.from_dotlist(list(args)))
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
        message = VERBS[verb](**parse_overrides(verb, args))
    except OsteoError as err:
        sys.stderr.write(f"osteo-data: error: {err}\n")
        return 2
    logging.getLogger("osteo-data").info(message)
    return 0


if __name__ == "__main__":
    sys.exit(main())
