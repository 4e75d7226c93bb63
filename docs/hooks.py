"""MkDocs hooks (``hooks:`` in mkdocs.yml): the pages generated from the code at every build.

- ``reference/config/``: every file of ``osteolightning/conf/``, one page per top-level group,
  each file with its leading comment, a table of its keys (value as written, the comment above it)
  and the file itself;
- ``reference/cli.md``: each console script's ``--help`` as it prints it (the scripts are read
  from the package's entry points; a script whose help lists ``Verbs`` gets each verb's help);
- ``studies/``: ``experiments/README.md`` and every ``experiments/<study>/README.md``, so the
  measured tables are published beside the documentation without being copied.

Links between the two trees are written for GitHub (``../../experiments/x/README.md`` from a
page, ``../../docs/how-to/x.md`` from a study) and rewritten here to the site's pages; a link to
another file of the repository becomes its path in code, and a link to nothing is left alone, so
MkDocs reports it and a strict build fails.

``python docs/hooks.py --cli-help`` prints the help texts as JSON (what the build runs, in a
child process, so the commands' imports and Hydra state stay out of MkDocs).
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "osteolightning" / "conf"
EXPERIMENTS = REPO / "experiments"
DOCS = REPO / "docs"

#: studies whose README another change writes; until it lands a link to it is plain text
PENDING_STUDIES: set[str] = set()

log = logging.getLogger("mkdocs.hooks.osteolightning")

# ---------------------------------------------------------------------------------------------
# The configuration reference


def _leading_comment(text: str) -> tuple[str | None, list[str]]:
    """The ``# @package`` value and the comment lines at the top of a YAML file."""
    package, lines = None, []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        body = line[1:].strip()
        if body.startswith("@package"):
            package = body.split(None, 1)[1] if " " in body else None
        else:
            lines.append(body)
    return package, lines


_KEY = re.compile(r"^(\s*)([A-Za-z_][\w.\-/@]*):(?:\s+(.*?))?\s*$")


def _key_rows(text: str) -> list[tuple[str, str, str]]:
    """``(dotted key, value as written, comment)`` of each mapping key of a YAML file.

    A line-based reading, so that the comments are kept: the comment block right above a key
    (and its trailing comment) describes it; keys inside list items are left to the file view.
    """
    rows: list[tuple[str, str, str]] = []
    stack: list[tuple[int, str | None]] = []
    comments: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped:
            comments = []
            continue
        indent = len(line) - len(line.lstrip())
        if stripped.startswith("#"):
            body = stripped[1:].strip()
            if not body.startswith("@package"):
                comments.append(body)
            continue
        while stack and stack[-1][0] >= indent:
            stack.pop()
        if stripped.startswith("- ") or stripped == "-":
            stack.append((indent, None))  # a list item: its keys belong to the file view
            comments = []
            continue
        match = _KEY.match(line)
        if not match:
            comments = []
            continue
        key, value = match[2], (match[3] or "")
        trailing = ""
        if " #" in value and not value.startswith(("'", '"')):
            value, trailing = (part.strip() for part in value.split(" #", 1))
        path = [k for _, k in stack] + [key]
        stack.append((indent, key))
        if None not in path and path[0] != "defaults":
            comment = " ".join(comments + ([trailing] if trailing else []))
            if value or comment:
                rows.append((".".join(path), value, comment))
        comments = []
    return rows


def _first_sentence(text: str, limit: int = 160) -> str:
    """The comment's first sentence (or its first ``limit`` characters, cut at a word)."""
    sentence = re.split(r"(?<!\bal\.)(?<=[.:])\s+(?=[A-Z(`]|osteo-)", text, maxsplit=1)[0].rstrip(
        ":"
    )
    if len(sentence) > limit:
        sentence = sentence[:limit].rsplit(" ", 1)[0] + " …"
    return sentence


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _file_section(path: Path, level: str) -> str:
    text = path.read_text()
    package, comment = _leading_comment(text)
    rel = path.relative_to(REPO).as_posix()
    out = [
        f"{level} `{path.stem}`",
        "",
        f"`{rel}`" + (f" — package `{package}`" if package else ""),
    ]
    if comment:
        out += ["", " ".join(comment)]
    rows = _key_rows(text)
    if rows:
        out += ["", "| key | value | what |", "|---|---|---|"]
        out += [f"| `{k}` | `{_cell(v)}` | {_cell(c)} |" if v else f"| `{k}` | | {_cell(c)} |"
                for k, v, c in rows]  # fmt: skip
    body = "\n".join("    " + line if line else "" for line in text.rstrip().splitlines())
    out += ["", f'??? note "{rel}"', "    ```yaml", body, "    ```", ""]
    return "\n".join(out)


def _groups() -> dict[str, list[Path]]:
    """Top-level group name -> its option files, nested groups (``model/backbone``) included."""
    groups: dict[str, list[Path]] = {}
    for folder in sorted(p for p in CONF.iterdir() if p.is_dir()):
        groups[folder.name] = sorted(folder.rglob("*.yaml"), key=lambda p: (p.parent, p.name))
    return groups


def _group_page(name: str, files: list[Path]) -> str:
    out = [f"# `{name}`", "", "Generated from `osteolightning/conf/` at every build: each option "
           f"of the group `{name}` and of the groups inside it, with its comments and its keys "
           "(as written in the file; keys inside list items are in the file view).",
           ""]  # fmt: skip
    for sub in sorted({p.parent for p in files}):
        group = sub.relative_to(CONF).as_posix()
        out += [f"## `{group}`", "", f"`{group}=<option>`; options: "
                + ", ".join(f"`{p.stem}`" for p in files if p.parent == sub), ""]  # fmt: skip
        out += [_file_section(p, "###") for p in files if p.parent == sub]
    return "\n".join(out)


def _config_index(groups: dict[str, list[Path]]) -> str:
    out = ["# Configuration files", "",
           "Generated from `osteolightning/conf/` at every build. Each command composes a primary "
           "config (below) with one option of each group; choose one with `group=option`, set a "
           "key with `key=value` ([Configuration](../configuration.md)).", "",
           "## Primary configs", ""]  # fmt: skip
    out += [_file_section(p, "###") for p in sorted(CONF.glob("*.yaml"))]
    out += ["## Groups", "", "| group | option | what |", "|---|---|---|"]
    for name, files in groups.items():
        for p in files:
            group = p.parent.relative_to(CONF).as_posix()
            what = _cell(_first_sentence(" ".join(_leading_comment(p.read_text())[1])))
            out.append(f"| [`{group}`]({name}.md#{group.replace('/', '')}) | `{p.stem}` | {what} |")
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------------------------
# The command-line reference


def cli_help() -> dict[str, str]:
    """Each console script of the package and its ``--help`` (run in this process)."""
    import contextlib
    import io
    from importlib.metadata import distribution

    from hydra.core.global_hydra import GlobalHydra

    def run(name: str, func: Any, args: list[str]) -> str:
        buffer, argv = io.StringIO(), sys.argv
        sys.argv = [name, *args]
        try:
            with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
                try:
                    func()
                except SystemExit as stop:
                    if stop.code not in (0, None):
                        raise RuntimeError(
                            f"`{name} {' '.join(args)}` exited {stop.code}"
                        ) from stop
        finally:
            sys.argv = argv
            GlobalHydra.instance().clear()
        return buffer.getvalue()

    helps: dict[str, str] = {}
    scripts = [
        e for e in distribution("osteolightning").entry_points if e.group == "console_scripts"
    ]
    for entry in sorted(scripts, key=lambda e: e.name):
        func = entry.load()
        text = run(entry.name, func, ["--help"])
        helps[entry.name] = text
        verbs = re.search(r"^Verbs.*\n((?: {4}.*\n)+)", text, re.M)
        for verb in re.findall(r"^ {4}(\w[\w-]*) ", verbs[1] if verbs else "", re.M):
            helps[f"{entry.name} {verb}"] = run(entry.name, func, [verb, "--help"])
    return helps


def _cli_page() -> str:
    env = {**os.environ, "COLUMNS": "100", "NO_COLOR": "1"}
    done = subprocess.run(
        [sys.executable, __file__, "--cli-help"], capture_output=True, text=True, env=env,
        cwd=REPO, timeout=600,
    )  # fmt: skip
    if done.returncode != 0:
        log.warning("The command-line reference could not be generated:\n%s", done.stderr[-3000:])
        return "# Command line\n\nThe commands' help could not be generated.\n"
    helps = json.loads(done.stdout.splitlines()[-1])
    out = ["# Command line", "",
           "Generated at every build from each console script's `--help`, as it prints it. The "
           "Hydra applications list their config groups and their composed config; any key can "
           "be set with `key=value`, any group chosen with `group=option` "
           "([Configuration](configuration.md)). Each command also runs as "
           "`python -m osteolightning.<module>`.", ""]  # fmt: skip
    for name, text in helps.items():
        out += [f"## `{name}`", "", "```text", f"$ {name} --help", text.rstrip(), "```", ""]
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# The studies, and links between docs/ and the rest of the repository


def _studies() -> dict[str, Path]:
    """Site path (``studies/<name>.md``) -> the study's README."""
    found = {"studies/index.md": EXPERIMENTS / "README.md"}
    for readme in sorted(EXPERIMENTS.glob("*/README.md")):
        found[f"studies/{readme.parent.name}.md"] = readme
    return found


def _title(readme: Path) -> str:
    first = readme.read_text().splitlines()[0].lstrip("# ").strip()
    return first.split(":")[0].strip("`") if readme.parent != EXPERIMENTS else "All studies"


_SOURCES: dict[str, Path] = {}  # site path of a generated study page -> its README


def on_config(config: Any) -> Any:
    """Add the generated pages (config groups, studies) to the navigation."""

    def fill(items: list[Any]) -> None:
        for item in items:
            if not isinstance(item, dict):
                continue
            for title, value in item.items():
                if title == "Configuration files":
                    item[title] = ["reference/config/index.md"] + [
                        {f"{name}": f"reference/config/{name}.md"} for name in _groups()
                    ]
                elif title == "Results":
                    item[title] = [{_title(readme): path} for path, readme in _studies().items()]
                elif isinstance(value, list):
                    fill(value)

    fill(config["nav"])
    return config


def on_files(files: Any, config: Any) -> Any:
    from mkdocs.structure.files import File

    groups = _groups()
    pages = {"reference/config/index.md": _config_index(groups), "reference/cli.md": _cli_page()}
    pages.update({f"reference/config/{n}.md": _group_page(n, f) for n, f in groups.items()})
    for path, readme in _studies().items():
        pages[path] = readme.read_text()
        _SOURCES[path] = readme
    for path, content in pages.items():
        files.append(File.generated(config, path, content=content))
    return files


_LINK = re.compile(r"(!?)\[((?:[^\[\]]|\[[^\]]*\])*)\]\(([^)\s]+)\)")


def _site_path(target: Path) -> str | None:
    """The site page of a repository file, or None."""
    if target.is_relative_to(DOCS):
        return target.relative_to(DOCS).as_posix()
    for path, readme in _studies().items():
        if readme == target:
            return path
    return None


def _rewrite(markdown: str, page_path: str, source: Path) -> str:
    page_dir = Path(page_path).parent

    def link(match: re.Match[str]) -> str:
        bang, text, target = match[1], match[2], match[3]
        if re.match(r"^[a-z][a-z0-9+.-]*:|^#|^/", target):
            return match[0]
        path, _, anchor = target.partition("#")
        resolved = Path(os.path.normpath(source.parent / path))
        site = _site_path(resolved)
        if site is not None:
            new = os.path.relpath(site, page_dir).replace(os.sep, "/")
            return f"{bang}[{text}]({new}{'#' + anchor if anchor else ''})"
        if resolved.exists() and resolved.is_relative_to(REPO):
            rel = resolved.relative_to(REPO).as_posix()
            return text if text.strip("`") == rel else f"{text} (`{rel}`)"
        parts = (
            resolved.relative_to(EXPERIMENTS).parts if resolved.is_relative_to(EXPERIMENTS) else ()
        )
        if parts and parts[0] in PENDING_STUDIES:
            return f"{text} (`experiments/{'/'.join(parts)}`, to come)"
        return match[0]  # MkDocs reports it

    chunks = re.split(r"(^```.*?^```)", markdown, flags=re.M | re.S)
    return "".join(c if c.startswith("```") else _LINK.sub(link, c) for c in chunks)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    path = page.file.src_uri
    source = _SOURCES.get(path, DOCS / path)
    return _rewrite(markdown, path, source)


if __name__ == "__main__" and sys.argv[1:] == ["--cli-help"]:
    print(json.dumps(cli_help()))
