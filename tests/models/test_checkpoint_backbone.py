"""A network this project trained as a backbone (model/backbone=checkpoint): its weights and its
preprocessing come from the checkpoint, frozen for the linear probe or as the starting weights
of fine-tuning."""

from __future__ import annotations

from pathlib import Path

import hydra
import pytest
import torch

from osteolightning.errors import ConfigError
from osteolightning.runs.failures import user_error
from osteolightning.train import train


def _network(ckpt: Path) -> dict[str, torch.Tensor]:
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    return {k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.")}


def test_the_probe_embeds_with_the_checkpoints_network_and_preprocessing(make_cfg, knee_checkpoint):
    overrides = [
        "debug=tiny",
        "model=linear_probe",
        "model/backbone=checkpoint",
        f"model.net.checkpoint={knee_checkpoint}",
        "image_size=96",  # overridden by the checkpoint's own size below
    ]
    cfg = make_cfg("train", overrides[:-1])
    assert cfg.image_size == 64 and list(cfg.norm.mean) == [0.4]  # the checkpoint's facts
    assert cfg.model.net.name == "resnet10t" and cfg.backbone.cam_layer == "layer4"
    metrics, objects = train(cfg)
    assert "test/auroc_macro" in metrics
    embedder = objects["model"].net.embedder.net
    trained = _network(knee_checkpoint)
    for key, value in embedder.state_dict().items():
        if key in trained and not key.endswith("num_batches_tracked"):
            torch.testing.assert_close(value, trained[key], msg=key)
    assert objects["model"].preprocessing.mean == (0.4,)
    # saliency on the knee-trained network: the checkpoint's layer, a real map
    from osteolightning.models.saliency import SaliencyExplainer

    SaliencyExplainer.check_layer(embedder, cfg.backbone.cam_layer)


def test_fine_tuning_starts_from_the_checkpoints_weights(make_cfg, knee_checkpoint):
    cfg = make_cfg(
        "train",
        [
            "debug=tiny",
            "model=classifier",
            "model/backbone=checkpoint",
            f"model.net.checkpoint={knee_checkpoint}",
            "class_names=[a,b,c,d,e]",  # another task: the head is new
        ],
    )
    net = hydra.utils.instantiate(cfg.model.net)
    trained = _network(knee_checkpoint)
    torch.testing.assert_close(net.conv1[0].weight, trained["conv1.0.weight"])
    assert net.get_classifier().out_features == 5


@pytest.mark.parametrize("kind", ["missing", "foreign"])
def test_a_missing_or_foreign_checkpoint_is_named(make_cfg, tmp_path, kind):
    path = tmp_path / "nope.ckpt"
    if kind == "foreign":
        torch.save({"w": torch.zeros(2)}, path)
    with pytest.raises(Exception) as err:  # noqa: PT011 (the config error, wrapped by OmegaConf)
        train(make_cfg("train", ["debug=tiny", "model/backbone=checkpoint",
                                 f"model.net.checkpoint={path}"]))  # fmt: skip
    cause = user_error(err.value)  # what osteo-train prints, without a traceback
    assert isinstance(cause, ConfigError) and str(path) in str(cause)
    expected = "does not exist" if kind == "missing" else "is not a checkpoint of an osteo-train"
    assert expected in str(cause)
