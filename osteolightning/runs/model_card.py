"""``MODEL_CARD.md``: what a run's model is, what it was trained and tested on, how well it does
and where it falls short, built from the run directory's own files.

Reporting guidelines for medical AI (CLAIM, TRIPOD+AI; Mitchell et al. 2019's model cards) ask
for the intended use, the data and splits behind the numbers, the test metrics with their
uncertainty, calibration and limitations. Every run writes its card when it finishes
(:func:`osteolightning.runs.lifecycle.session`), from the files it left: the config (the run marker's
resolved config, else ``.hydra/config.yaml``), ``metrics.json``, ``splits.csv``,
``skipped.csv``, ``label_conflicts.csv`` and ``versions.json``. Nothing in the card is typed by
hand, so it cannot drift from the run; ``python -m osteolightning.runs.model_card RUN_DIR``
builds it again. ``osteo-export`` copies it beside the exported model with an export section.
"""

from __future__ import annotations

import csv
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from osteolightning.backbones import facts_of
from osteolightning.runs import rundir
from osteolightning.utils.config import flatten_config
from osteolightning.utils.files import atomic_write_text

#: tasks and what their models do
TASKS = {
    "train": "classifies an anteroposterior knee radiograph as one of {classes}",
    "segment": "segments the bones of a knee radiograph into the classes {classes}",
    "eval": "is the evaluation of a trained checkpoint on a data source",
}
SMALL_TEST = 100


def run_config(run_dir: Path, config: dict[str, Any] | None = None) -> dict[str, Any]:
    """The run's config as flat ``dotted.key: value`` pairs.

    ``config``: the resolved config the run ran with (what Hydra saved as
    ``.hydra/config.yaml``); without it, that file (values that resolve only inside Hydra are
    taken from the run marker's resolved config, which fills in anything missing)."""
    marker = rundir.read_json(run_dir / rundir.MARKER) or {}
    if config is not None:
        return {"task_name": marker.get("task_name"), **flatten_config(config)}
    flat: dict[str, Any] = {}
    config_file = run_dir / rundir.CONFIG
    if config_file.is_file():
        raw = OmegaConf.load(config_file)
        for key in flatten_config(OmegaConf.to_container(raw, resolve=False)):
            try:
                flat[key] = OmegaConf.select(raw, key, throw_on_resolution_failure=True)
            except Exception:  # noqa: BLE001 - ${hydra:...} and the like outside Hydra
                flat[key] = OmegaConf.select(raw, key, throw_on_resolution_failure=False)
    for key, value in (marker.get("config") or {}).items():
        if flat.get(key) is None or "${" in str(flat.get(key)):
            flat[key] = value
    if marker.get("task_name"):
        flat.setdefault("task_name", marker["task_name"])
    return flat


def _rows(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 1000 else f"{value:.4g}"
    return str(value)


def _ci(metrics: dict[str, Any], key: str) -> str:
    ci = metrics.get(f"{key}_ci95")
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]" if isinstance(ci, list) and len(ci) == 2 else ""


def _value(metrics: dict[str, Any], key: str) -> str:
    value = metrics.get(key)
    return "n/a" if value is None else f"{_fmt(value)} {_ci(metrics, key)}".strip()


def _task(cfg: dict[str, Any]) -> list[str]:
    task = str(cfg.get("task_name", "train"))
    classes = ", ".join(str(c) for c in (cfg.get("class_names") or [])) or "the run's classes"
    what = TASKS.get(task, "is a run of osteolightning").format(classes=classes)
    lines = ["## Task and intended use", "", f"This model {what}."]
    if task == "eval":
        lines.append(f"Evaluated checkpoint: `{cfg.get('ckpt_path', 'n/a')}` (its own run "
                     f"directory holds its training card).")  # fmt: skip
    lines += [
        "",
        "Intended use: research on opportunistic osteoporosis screening from knee radiographs, "
        "by people who can judge its errors. It is not a medical device and not validated for "
        "clinical decisions; dual-energy X-ray absorptiometry (DXA) remains the reference "
        "standard for the T-score and the WHO categories. Inputs are grayscale radiographs "
        "prepared as described under Architecture.",
        "",
    ]
    return lines


def _data(cfg: dict[str, Any], run_dir: Path) -> list[str]:
    source = str(cfg.get("data.source._target_", "")).rsplit(".", 1)[-1] or "n/a"
    where = cfg.get("data.source.root") or cfg.get("data.root") or cfg.get("data.source.path")
    lines = ["## Data", "", f"- Source: `{source}`" + (f" at `{where}`" if where else "")]
    if "Phantom" in source:
        lines.append(
            f"- The synthetic knee phantom (n={cfg.get('data.source.n')}, seed "
            f"{cfg.get('data.source.seed')}, {cfg.get('data.source.size')} px): ground truth is "
            "known, but it is not real anatomy."
        )
    splits, skipped = _rows(run_dir / rundir.SPLITS), _rows(run_dir / rundir.SKIPPED)
    conflicts = _rows(run_dir / rundir.LABEL_CONFLICTS)
    if splits:
        per_class = Counter(r["label"] for r in splits)
        shown = ", ".join(f"{c} {n}" for c, n in sorted(per_class.items()))
        groups = len({r["group"] for r in splits})
        lines.append(f"- Images used: {len(splits)} ({shown}); {groups} patient / copy groups.")
    lines.append(f"- Left out (`{rundir.SKIPPED}`): {len(skipped)} files"
                 + (f"; reasons: {_top(r['reason'] for r in skipped)}" if skipped else "."))  # fmt: skip
    if conflicts:
        actions = Counter(r["action"] for r in conflicts)
        lines.append(
            f"- Copies with conflicting labels (`{rundir.LABEL_CONFLICTS}`): "
            f"{len({r['group'] for r in conflicts})} groups, {len(conflicts)} files ("
            + ", ".join(f"{a}: {n}" for a, n in actions.items())
            + ")."
        )
    else:
        lines.append("- Copies with conflicting labels: none.")
    return [*lines, ""]


def _top(reasons: Any, k: int = 3) -> str:
    counts = Counter(str(r)[:80] for r in reasons)
    return "; ".join(f"{r} ({n})" for r, n in counts.most_common(k))


def _splits(cfg: dict[str, Any], run_dir: Path) -> list[str]:
    lines = ["## Splits", ""]
    if cfg.get("data.evaluate_all"):
        lines.append("Every image of the data source is a test image (`osteo-eval`).")
    elif cfg.get("data.num_folds"):
        lines.append(f"Fold {cfg.get('data.fold')} of {cfg.get('data.num_folds')}-fold "
                     "cross-validation (the test split), validation carved from the rest.")  # fmt: skip
    else:
        lines.append(f"Hold-out: test {cfg.get('data.test_fraction')}, validation "
                     f"{cfg.get('data.val_fraction')}, the rest for training.")  # fmt: skip
    lines.append(
        f"Stratified by class and grouped by patient and by exact / near copy (split seed "
        f"{cfg.get('data.split_seed')}), so no patient or copy is on two sides."
    )
    splits = _rows(run_dir / rundir.SPLITS)
    if splits:
        sizes = Counter(r["split"] for r in splits)
        lines += ["", "| split | images |", "|---|---|"]
        lines += [f"| {s} | {n} |" for s, n in sorted(sizes.items())]
    return [*lines, ""]


def _architecture(cfg: dict[str, Any]) -> list[str]:
    if not any(k.startswith("model.") for k in cfg) and cfg.get("ckpt_path"):
        card = rundir.run_of_checkpoint(str(cfg["ckpt_path"])) / rundir.MODEL_CARD
        return ["## Architecture", "", f"The evaluated checkpoint's network, pretraining and "
                f"training are described in its own run's card: `{card}`.", ""]  # fmt: skip
    name = cfg.get("model.net.name") or cfg.get("model.net._target_", "n/a")
    lines = ["## Architecture", "", f"- Network: `{name}` (`{cfg.get('model._target_', 'n/a')}`)"]
    facts = facts_of(cfg)  # the backbone registry's, with the run's overrides
    if facts is not None and facts.paper:
        lines.append(f"- Reference: {facts.paper}")
    pretrained = cfg.get("model.net.pretrained")
    if pretrained is not None:
        source = facts.pretrained_source if facts is not None else ""
        lines.append(f"- Pretrained: `{pretrained}`" + (f" ({source})" if source else ""))
    lines.append(
        f"- Input: {cfg.get('image_size')} x {cfg.get('image_size')} px, {cfg.get('in_chans')} "
        f"channel(s), letterboxed (centred zero padding to a square, then resized), normalised "
        f"with mean {cfg.get('norm.mean')} and std {cfg.get('norm.std')}; classes "
        f"{cfg.get('class_names')}."
    )
    return [*lines, ""]


def _metrics(metrics: dict[str, Any]) -> list[str]:
    lines = ["## Test metrics", ""]
    keys = [
        k for k, v in metrics.items()
        if k.startswith("test/") and not k.endswith("_ci95") and isinstance(v, int | float)
        and k not in ("test/n", "test/bootstrap_resamples")
        and not isinstance(v, bool) and "saliency" not in k and "ece" not in k
    ]  # fmt: skip
    if not keys:
        return [*lines, "No test metrics (`metrics.json` is missing or empty).", ""]
    n = metrics.get("test/n")
    lines.append(f"On {n} test images; 95 % bootstrap intervals over images." if n else "")
    lines += ["", "| metric | value | 95 % CI |", "|---|---|---|"]
    lines += [f"| `{k}` | {_fmt(metrics[k])} | {_ci(metrics, k)} |" for k in keys]
    if metrics.get("ckpt_path"):
        lines += ["", f"Tested checkpoint: `{metrics['ckpt_path']}`."]
    return [*lines, ""]


def _calibration(metrics: dict[str, Any]) -> list[str]:
    if "test/ece" not in metrics:
        return []
    lines = ["## Calibration", "", f"- Expected calibration error (15 bins, top label): "
             f"{_value(metrics, 'test/ece')}"]  # fmt: skip
    if metrics.get("temperature") is not None:
        lines.append(f"- Temperature scaling: T = {metrics['temperature']:.3f} (fitted on the "
                     f"validation split); uncalibrated ECE {_fmt(metrics.get('test/ece_uncalibrated'))}")  # fmt: skip
    else:
        lines.append("- No temperature scaling (`evaluation.temperature_scaling=false`).")
    return [*lines, f"- Reliability diagram: `{rundir.FIGURES}/reliability.png`.", ""]


def _shortcut(metrics: dict[str, Any]) -> list[str]:
    if "test/saliency_border_share" not in metrics:
        return []
    flag = metrics.get("test/saliency_shortcut_warning")
    return [
        "## Shortcut check (saliency)",
        "",
        f"{metrics.get('saliency/method')} maps at `{metrics.get('saliency/cam_layer')}` of "
        f"{metrics.get('test/saliency_n')} test images; shares of each map's most salient "
        f"{_fmt(metrics.get('saliency/top_fraction'))} of pixels:",
        "",
        "| region | share of saliency (95 % CI) | share of pixels |",
        "|---|---|---|",
        f"| border band ({_fmt(metrics.get('saliency/border_fraction'))} of the shorter side) | "
        f"{_value(metrics, 'test/saliency_border_share')} | "
        f"{_fmt(metrics.get('test/saliency_border_area'))} |",
        f"| bone (masks) | {_value(metrics, 'test/saliency_bone_share')} | "
        f"{_fmt(metrics.get('test/saliency_bone_area')) if metrics.get('test/saliency_bone_area') is not None else 'no masks'} |",
        "",
        ("**Flagged**: more than " if flag else "Not flagged: at most ")
        + f"{_fmt(metrics.get('saliency/max_border_share'))} of the saliency lies in the border "
        f"band. Overlays: `{rundir.FIGURES}/{rundir.SALIENCY_GRID}`; per image: "
        f"`{rundir.SALIENCY}`.",
        "",
    ]


def _training(cfg: dict[str, Any], versions: dict[str, Any]) -> list[str]:
    keys = [
        "seed", "trainer.max_epochs", "trainer.precision", "trainer.devices",
        "data.batch_size", "model.optimizer._target_", "model.optimizer.lr",
        "model.optimizer.weight_decay", "model.loss._target_", "model.class_weighting",
        "model.label_smoothing", "model.tta", "monitor", "evaluation.temperature_scaling",
    ]  # fmt: skip
    lines = ["## Training configuration and versions", "", "| key | value |", "|---|---|"]
    lines += [f"| `{k}` | `{cfg[k]}` |" for k in keys if cfg.get(k) is not None]
    augment = sorted({k.split(".")[2] for k in cfg if k.startswith("data.train_transforms.")
                      and cfg[k] is not None})  # fmt: skip
    if augment:
        lines.append(f"| augmentation | {', '.join(augment)} |")
    lines += ["", f"The full resolved config is `{rundir.CONFIG}`."]
    if versions:
        shown = ", ".join(f"{k} {versions[k]}" for k in ("python", "torch", "lightning", "timm",
                          "monai", "osteolightning") if versions.get(k))  # fmt: skip
        commit = versions.get("git_commit")
        dirty = " (uncommitted changes)" if versions.get("git_dirty") else ""
        lines.append(f"Versions (`{rundir.VERSIONS}`): {shown}; git commit {commit}{dirty}.")
    return [*lines, ""]


def _limitations(cfg: dict[str, Any], metrics: dict[str, Any], run_dir: Path) -> list[str]:
    items = []
    if "Phantom" in str(cfg.get("data.source._target_", "")):
        items.append("Trained and tested on the synthetic phantom: the numbers say nothing about "
                     "real radiographs.")  # fmt: skip
    n = metrics.get("test/n")
    if isinstance(n, int | float) and n < SMALL_TEST:
        items.append(f"Only {int(n)} test images: the intervals are wide; compare models on "
                     "paired tests, not on point estimates.")  # fmt: skip
    if _rows(run_dir / rundir.LABEL_CONFLICTS):
        items.append("Copies with conflicting labels were found in the source: its labels are "
                     "noisy, and the metrics inherit that noise.")  # fmt: skip
    if metrics.get("test/saliency_shortcut_warning"):
        items.append("The shortcut check flags the model: it may read markers, collimation or "
                     "scanner borders rather than bone. Do not use it before that is explained.")  # fmt: skip
    elif "test/saliency_border_share" not in metrics and cfg.get("task_name") != "segment":
        items.append("No shortcut check was computed for this run.")
    if isinstance(metrics.get("test/ece"), float) and metrics["test/ece"] > 0.1:
        items.append("Probabilities are poorly calibrated (ECE > 0.1); do not read them as risks.")
    items += [
        "One data source and one split: no external validation on another site or scanner.",
        "Grad-CAM maps are coarse (the target layer's grid, typically 1/32 of the input) and "
        "show where evidence was found, not why.",
        "The WHO categories come from T-score thresholds; a knee radiograph is not DXA.",
    ]
    return ["## Known limitations", "", *[f"- {i}" for i in items], ""]


def build_model_card(run_dir: str | Path, config: dict[str, Any] | None = None) -> str:
    """The Markdown model card of ``run_dir``, from its own files (``config``: the resolved
    config the run ran with, when the caller has it; else read from the run's files)."""
    run_dir = Path(run_dir)
    cfg = run_config(run_dir, config)
    metrics = rundir.read_json(run_dir / rundir.METRICS) or {}
    versions = rundir.read_json(run_dir / rundir.VERSIONS) or {}
    name = cfg.get("model.net.name") or str(cfg.get("model.net._target_", "")).rsplit(".", 1)[-1]
    title = f"# Model card: {name or 'osteolightning model'} ({cfg.get('task_name', 'run')})"
    note = (f"_Built by osteolightning from the files of `{run_dir}` when the run finished; "
            f"`python -m osteolightning.runs.model_card {run_dir}` builds it again._")  # fmt: skip
    sections = [
        [title, "", note, ""],
        _task(cfg),
        _data(cfg, run_dir),
        _splits(cfg, run_dir),
        _architecture(cfg),
        _metrics(metrics),
        _calibration(metrics),
        _shortcut(metrics),
        _training(cfg, versions),
        _limitations(cfg, metrics, run_dir),
    ]
    return "\n".join(line for section in sections for line in section)


def write_model_card(run_dir: str | Path, config: dict[str, Any] | None = None) -> Path:
    """Write ``<run_dir>/MODEL_CARD.md`` (atomically) and return its path."""
    text = build_model_card(run_dir, config)
    return atomic_write_text(Path(run_dir) / rundir.MODEL_CARD, text)


def export_section(report: dict[str, Any]) -> str:
    """The card's section on an exported file (``osteo-export``'s ``export.json``)."""
    check, meta = report["parity"], report["metadata"]
    return "\n".join([
        "", "## Export", "",
        f"- File: `{Path(report['file']).name}` ({report['format']}), SHA-256 `{report['sha256']}`",
        f"- From checkpoint `{meta['source'].get('checkpoint')}`",
        f"- Input `{meta['input']['name']}` {meta['input']['shape']}, output "
        f"`{meta['output']['name']}` {meta['output']['shape']}; the preprocessing facts are in "
        "the file's metadata (key `osteolightning`).",
        f"- Parity with the checkpoint on {check['n_images']} real images, batch sizes "
        f"{check['batch_sizes']}: max absolute difference of the probabilities "
        f"{check['max_abs_diff']:.2e} (bound {check['atol']:g}); same class on "
        f"{check['argmax_agreement']:.0%}.",
        "",
    ])  # fmt: skip


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        sys.stdout.write(f"{write_model_card(arg)}\n")
