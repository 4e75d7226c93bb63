"""The documentation: the site builds in strict mode, every link of the README resolves, and every
``osteo-train`` / ``osteo-segment`` / ``osteo-eval`` command shown in a code block composes with
the real config, so a renamed key, group or option fails here rather than in a user's terminal.

Commands are read from ``README.md``, ``docs/**/*.md`` and ``experiments/**/README.md``. What a
reader would substitute is substituted: ``<run>``-style placeholders and ``DIR`` stay strings
(composing does not open files), shell variables are expanded from the block's own assignments,
a token holding ``...`` is left out, flags are dropped, and a sweep (``a,b,c``) is composed once
per value.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser

from osteolightning.utils.config import CONFIG_DIR, compose_config

ROOT = Path(__file__).resolve().parents[1]
CONF = Path(CONFIG_DIR)
PAGES = [
    ROOT / "README.md",
    *sorted((ROOT / "docs").rglob("*.md")),
    *sorted((ROOT / "experiments").rglob("README.md")),
]
#: the primary config each documented command composes
CONFIGS = {"osteo-train": "train", "osteo-segment": "segment", "osteo-eval": "eval"}
#: Hydra flags that take a value (the value is dropped with the flag)
FLAGS_WITH_VALUE = {"--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name",
                    "-cn", "--config-dir", "-cd"}  # fmt: skip
#: experiments a documented command names before their config lands (another change writes
#: them); such a command is skipped while the file is missing, and composed once it exists
PENDING_EXPERIMENTS: set[str] = set()
#: README links to studies another change writes (as PENDING_STUDIES in docs/hooks.py)
PENDING_LINKS: set[str] = set()


@dataclass(frozen=True)
class Command:
    page: str
    line: int
    text: str

    def __str__(self) -> str:  # the test id
        return f"{self.page}:{self.line}"


def _code_blocks(text: str) -> list[tuple[int, list[str]]]:
    """``(first line number, lines)`` of every fenced code block, admonitions' included."""
    blocks, current, fence, start = [], None, "", 0
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if current is None and stripped.startswith("```"):
            current, fence, start = [], line[: len(line) - len(line.lstrip())], number + 1
        elif current is not None and stripped.startswith("```") and line.startswith(fence):
            blocks.append((start, current))
            current = None
        elif current is not None:
            current.append(line[len(fence) :] if line.startswith(fence) else line)
    return blocks


def _expand(text: str, variables: dict[str, str]) -> str:
    return re.sub(r"\$\{?([A-Za-z_]\w*)\}?", lambda m: variables.get(m[1], "PLACEHOLDER"), text)


def documented_commands() -> list[Command]:
    found = []
    for page in PAGES:
        rel = page.relative_to(ROOT).as_posix()
        for start, lines in _code_blocks(page.read_text()):
            variables: dict[str, str] = {}
            joined: list[tuple[int, str]] = []
            for offset, line in enumerate(lines):
                if joined and joined[-1][1].endswith("\\"):
                    joined[-1] = (joined[-1][0], joined[-1][1][:-1] + " " + line.strip())
                else:
                    joined.append((start + offset, line.strip()))
            for number, line in joined:
                line = re.sub(r"^(\$|#+)\s+", "", line)  # a prompt, or a commented-out line
                line = re.sub(r"^srun\s+", "", line)
                assignment = re.fullmatch(r"([A-Za-z_]\w*)=(.*)", line)
                if assignment and not line.startswith("osteo-"):
                    value = shlex.split(_expand(assignment[2], variables), comments=True)
                    variables[assignment[1]] = " ".join(value)
                    continue
                if line.split(" ", 1)[0] in CONFIGS:
                    found.append(Command(rel, number, _expand(line, variables)))
    return found


COMMANDS = documented_commands()


def overrides_of(command: str) -> tuple[str, list[str]]:
    """The primary config and the overrides a documented command line composes."""
    text = re.sub(r"<[^<>]*>", "PLACEHOLDER", command)  # <run>, <your manifest.csv>, ...
    tokens = shlex.split(text, comments=True)
    config, overrides, skip = CONFIGS[tokens[0]], [], False
    for token in tokens[1:]:
        if skip:
            skip = False
        elif token.startswith("-"):
            skip = token in FLAGS_WITH_VALUE
        elif "..." not in token and "…" not in token:
            overrides.append(token)
    return config, overrides


def first_values(overrides: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """The overrides with each sweep at its first value, and ``(group, option)`` of every other
    value of a sweep over a config group (``model/backbone=vgg19,resnet18``): composing once and
    finding each option's file checks them all."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    first, options = [], []
    for override, text in zip(parsed, overrides, strict=True):
        if not override.is_sweep_override():
            first.append(text)
            continue
        key, values = override.get_key_element(), list(override.sweep_string_iterator())
        first.append(f"{key}={values[0]}")
        group = override.key_or_group
        if (CONF / group).is_dir():
            options += [(group, value) for value in values[1:]]
    return first, options


def unique(commands: list[Command]) -> dict[tuple[str, tuple[str, ...]], list[Command]]:
    """The commands by what they compose: a command shown on several pages is composed once."""
    found: dict[tuple[str, tuple[str, ...]], list[Command]] = {}
    for command in commands:
        config, overrides = overrides_of(command.text)
        found.setdefault((config, tuple(overrides)), []).append(command)
    return found


UNIQUE = unique(COMMANDS)


def test_commands_are_found():
    """The extraction finds the commands it should (a guard against a silent regex change)."""
    pages = {c.page for c in COMMANDS}
    assert {"README.md", "docs/how-to/sweeps.md", "experiments/segmentation/README.md"} <= pages
    assert len(COMMANDS) > 50
    assert overrides_of("osteo-train --cfg job") == ("train", [])
    assert overrides_of("osteo-eval ckpt_path=<ckpt> data=manifest data.root=<csv>") == (
        "eval", ["ckpt_path=PLACEHOLDER", "data=manifest", "data.root=PLACEHOLDER"]
    )  # fmt: skip
    assert first_values(["seed=0,1", "model/backbone=vgg19,resnet18", "data=folder"]) == (
        ["seed=0", "model/backbone=vgg19", "data=folder"], [("model/backbone", "resnet18")]
    )  # fmt: skip


@pytest.mark.parametrize("key", list(UNIQUE), ids=[str(c[0]) for c in UNIQUE.values()])
def test_documented_command_composes(key: tuple[str, tuple[str, ...]], tmp_path: Path):
    config, overrides = key
    where = ", ".join(str(c) for c in UNIQUE[key])
    for name in PENDING_EXPERIMENTS:
        if (
            f"experiment={name}" in overrides
            and not (CONF / "experiment" / f"{name}.yaml").exists()
        ):
            pytest.skip(f"osteolightning/conf/experiment/{name}.yaml has not landed yet ({where})")
    first, options = first_values(list(overrides))
    try:
        compose_config(config, first, tmp_path / "run", tmp_path / "cache")
    except Exception as error:
        pytest.fail(f"`{UNIQUE[key][0].text}` ({where}) does not compose: {error}")
    finally:
        GlobalHydra.instance().clear()
    for group, option in options:
        assert (CONF / group / f"{option}.yaml").is_file(), (
            f"`{UNIQUE[key][0].text}` ({where}) sweeps {group}={option}, which has no config file"
        )


def test_readme_links_resolve():
    """Every relative link of the README names a file of the repository."""
    text = (ROOT / "README.md").read_text()
    for target in re.findall(r"\]\(([^)\s#]+)(?:#[^)]*)?\)", text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target in PENDING_LINKS:
            continue
        assert (ROOT / target).exists(), f"README.md links to {target}, which does not exist"


def test_readme_is_the_front_door():
    """Short, with the set-up commands that CI and the hooks look for."""
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 260
    assert "make train" in text and "make test" in text


def test_site_builds_in_strict_mode(tmp_path: Path):
    """``mkdocs build --strict``: a broken link or anchor, or a page left out, fails it."""
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    for page in ("index.html", "reference/cli/index.html", "reference/config/model/index.html",
                 "studies/knee_select/index.html"):  # fmt: skip
        assert (tmp_path / "site" / page).is_file(), page
    cli = (tmp_path / "site" / "reference" / "cli" / "index.html").read_text()
    assert "osteo-predict" in cli and "--explain" in cli and "osteo-data audit" in cli
