"""Config helpers: the one flattener and the one compose_config (utils/config)."""

from __future__ import annotations

from omegaconf import OmegaConf

from osteolightning.runs import lifecycle
from osteolightning.utils.config import compose_config, flatten_config


def test_nested_keys_become_dotted():
    config = {"data": {"batch_size": 8, "source": {"n": 60}}, "seed": 1, "tags": [1, {"a": 2}]}
    assert flatten_config(config) == {
        "data.batch_size": 8,
        "data.source.n": 60,
        "seed": 1,
        "tags": [1, {"a": 2}],  # lists are values
    }


def test_an_empty_group_is_a_value_and_an_empty_config_is_empty():
    assert flatten_config({"logger": {}, "a": {"b": {}}}) == {"logger": {}, "a.b": {}}
    assert flatten_config({}) == {}
    assert flatten_config({"x": 1}, prefix="data.") == {"data.x": 1}


def test_emptying_a_group_changes_the_run_hash():
    """The run hash (resume) tells a config that empties a group from one that lacks it."""
    with_group = OmegaConf.create({"seed": 1, "logger": {}})
    without = OmegaConf.create({"seed": 1})
    assert lifecycle.config_hash(lifecycle.hashed_config(with_group)) != lifecycle.config_hash(
        lifecycle.hashed_config(without)
    )


def test_compose_config_points_the_run_at_its_folders(tmp_path):
    run, cache = tmp_path / "runs" / "a", tmp_path / "cache"
    cfg = compose_config("train", ["debug=tiny", "seed=3"], output_dir=run, cache_dir=cache)
    assert "hydra" not in cfg and cfg.seed == 3
    assert cfg.paths.output_dir == str(run) and run.is_dir()
    assert cfg.paths.cache_dir == str(cache)
    assert cfg.paths.log_dir == str(run.parent / "logs")


def test_compose_config_without_a_run_directory(tmp_path):
    cfg = compose_config("train", ["debug=tiny"])
    assert "hydra" not in cfg and not any(tmp_path.iterdir())
