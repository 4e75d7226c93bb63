"""Every experiment config composes and runs end to end (shrunk to one batch of the tiny phantom)."""

from pathlib import Path

import pytest

from osteolightning.train import train
from osteolightning.utils.config import CONFIG_DIR
from tests.helpers import write_graded_tree

EXPERIMENTS = sorted(p.stem for p in (Path(CONFIG_DIR) / "experiment").glob("*.yaml"))
SHRINK = [
    "debug=fdr",
    "trainer=cpu",
    "logger=tiny",
    "image_size=64",
    "data.source.n=60",
    "data.source.size=96",
    "data.batch_size=8",
    "data.num_workers=0",
    "data.pin_memory=false",
    "evaluation.n_resamples=50",
]


#: experiments on a CSV manifest of images and records (the tiny phantom's stands in)
ON_A_MANIFEST = ("knee_clinical", "knee_clinical_best")
#: experiments on a data set published with its split (the KL grades' layout; the phantom's
#: three classes as grades 0-2)
ON_GRADE_FOLDERS = ("kl_grading", "kl_grading_gpu", "kl_compare")
#: experiments that read a KL-trained checkpoint (a tiny phantom-trained one stands in)
WITH_A_KL_CHECKPOINT = ("knee_select_kl", "knee_clinical_kl")


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_runs(make_cfg, name, class_tree, phantom_dir, tmp_path, request):
    # experiments on real data take a class-folder root: the tiny phantom's images stand in
    extra = [f"data.root={class_tree}"] if name in ("knee_xray", "knee_probe") else []
    if name == "knee_select_kl":
        extra = [f"data.root={class_tree}"]
    if name in ON_A_MANIFEST + (
        "knee_clinical_kl",
    ):  # the phantom's BMD is its T-score's source: the guard knows
        extra = [f"data.root={phantom_dir / 'manifest.csv'}", "data.allow_separating=[bmd]"]
    if name in ON_GRADE_FOLDERS:
        root = write_graded_tree(phantom_dir, tmp_path / "kl")
        extra = [f"data.root={root}", "class_names=[KL0,KL1,KL2]"]
    if name in WITH_A_KL_CHECKPOINT:
        extra.append(f"kl_checkpoint={request.getfixturevalue('knee_checkpoint')}")
    shrink = [o for o in SHRINK if not o.startswith("data.source")] if extra else SHRINK
    cfg = make_cfg("train", [f"experiment={name}", *shrink, *extra])
    metrics, _ = train(cfg)
    assert "test/acc" in metrics


@pytest.mark.parametrize("name", WITH_A_KL_CHECKPOINT)
def test_the_kl_feature_recipes_read_the_given_checkpoint(make_cfg, name, knee_checkpoint):
    """Each recipe of the KL-feature studies, as the sweeper composes it: the knee-trained ones
    take their network, size and normalisation from ``kl_checkpoint``, the others ImageNet's."""
    from omegaconf import OmegaConf

    sweeper = OmegaConf.load(Path(CONFIG_DIR) / "experiment" / f"{name}.yaml").hydra.sweeper
    raw = OmegaConf.to_container(sweeper, resolve=False)  # as written: ${kl_checkpoint}
    recipes = {r["name"]: r["overrides"] for r in raw["recipes"]}
    baseline = raw["compare_to"]
    assert baseline in recipes and any(n.endswith("_kl") for n in recipes)
    for recipe, overrides in recipes.items():
        cfg = make_cfg(
            "train",
            [f"experiment={name}", *overrides, f"kl_checkpoint={knee_checkpoint}"],
            run=recipe,
        )
        if recipe.endswith("_kl"):
            assert cfg.model.net.checkpoint == str(knee_checkpoint)
            assert cfg.model.net.name == "resnet10t" and list(cfg.norm.mean) == [0.4]
        elif "model/backbone=tf_efficientnet_lite0" in overrides:
            assert cfg.model.net.name == "tf_efficientnet_lite0" and cfg.image_size == 128
