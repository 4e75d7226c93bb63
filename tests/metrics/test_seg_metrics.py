"""Segmentation metrics against hand-made cases and MONAI's reference implementations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from monai.metrics import DiceMetric, MeanIoU, compute_hausdorff_distance

from osteolightning.errors import ConfigError
from osteolightning.metrics.segmentation import (
    dice_iou,
    hd95,
    overlap_counts,
    per_image_scores,
    segmentation_report,
)


def _one_hot(labels: torch.Tensor, k: int) -> torch.Tensor:
    return torch.eye(k)[labels.long()].permute(0, 3, 1, 2)


def test_dice_and_iou_of_a_hand_made_pair():
    # truth: class 1 is a 4x4 square (16 px); prediction: the square shifted by one column
    truth = torch.zeros(1, 8, 8, dtype=torch.long)
    truth[0, 2:6, 2:6] = 1
    pred = torch.zeros_like(truth)
    pred[0, 2:6, 3:7] = 1
    dice, iou = dice_iou(overlap_counts(pred, truth, 2))
    # TP = 12, FP = 4, FN = 4: Dice = 24 / 32, IoU = 12 / 20
    assert dice[0, 1].item() == pytest.approx(0.75)
    assert iou[0, 1].item() == pytest.approx(0.6)
    # background: TP = 64 - 20 = 44, FP = 4, FN = 4
    assert dice[0, 0].item() == pytest.approx(88 / 96)


def test_dice_and_iou_equal_monai_on_random_label_maps():
    gen = torch.Generator().manual_seed(0)
    k = 4
    truth = torch.randint(0, k, (5, 32, 32), generator=gen)
    pred = torch.where(
        torch.rand(5, 32, 32, generator=gen) < 0.7,
        truth,
        torch.randint(0, k, (5, 32, 32), generator=gen),
    )
    scores = per_image_scores(pred, truth, k, with_hd95=False)
    ref_dice = DiceMetric(include_background=True, reduction="none")(
        _one_hot(pred, k), _one_hot(truth, k)
    )
    ref_iou = MeanIoU(include_background=True, reduction="none")(
        _one_hot(pred, k), _one_hot(truth, k)
    )
    torch.testing.assert_close(scores["dice"], ref_dice.float(), atol=1e-5, rtol=0)
    torch.testing.assert_close(scores["iou"], ref_iou.float(), atol=1e-5, rtol=0)


def test_empty_classes_follow_the_documented_conventions():
    truth = torch.zeros(1, 16, 16, dtype=torch.long)
    truth[0, 4:8, 4:8] = 1  # class 1 present; class 2 absent from the truth
    pred = truth.clone()
    pred[0, 12:14, 12:14] = 2  # class 2 predicted where there is none
    scores = per_image_scores(pred, truth, 4)
    assert scores["dice"][0, 1] == 1.0 and scores["hd95"][0, 1] == 0.0
    assert scores["dice"][0, 2] == 0.0  # a false positive class scores 0
    assert scores["hd95"][0, 2] == pytest.approx(math.hypot(16, 16))  # the worst distance
    assert math.isnan(scores["dice"][0, 3]) and math.isnan(scores["hd95"][0, 3])  # both empty
    assert math.isnan(scores["hd95"][0, 0])  # background is never scored


def test_hd95_equals_monai_where_both_masks_exist():
    truth = torch.zeros(2, 40, 40, dtype=torch.long)
    truth[:, 5:25, 5:25] = 1
    truth[:, 28:36, 10:30] = 2
    pred = torch.zeros_like(truth)
    pred[0, 6:27, 4:24] = 1
    pred[0, 27:36, 12:33] = 2
    pred[1, 5:25, 5:25] = 1
    pred[1, 29:35, 10:30] = 2
    ours = hd95(pred, truth, 3)
    ref = compute_hausdorff_distance(_one_hot(pred, 3), _one_hot(truth, 3), percentile=95)
    torch.testing.assert_close(ours[:, 1:], ref.float())


def test_report_means_and_intervals():
    rng = np.random.default_rng(0)
    dice = np.column_stack([np.ones(40), rng.uniform(0.8, 1.0, 40), rng.uniform(0.5, 0.9, 40)])
    dice[3, 2] = np.nan  # an image where class 2 is absent everywhere: left out of its mean
    report = segmentation_report({"dice": dice}, ["background", "femur", "tibia"], n_resamples=500)
    femur, tibia = dice[:, 1].mean(), np.nanmean(dice[:, 2])
    assert report["test/dice_femur"] == pytest.approx(femur)
    assert report["test/dice_tibia"] == pytest.approx(tibia)
    assert report["test/dice"] == pytest.approx((femur + tibia) / 2)  # foreground classes only
    low, high = report["test/dice_ci95"]
    assert low < report["test/dice"] < high and high - low < 0.1
    assert report["test/n"] == 40 and "test/dice_background" not in report


def test_report_rejects_bad_input():
    with pytest.raises(ConfigError, match="zero images"):
        segmentation_report({"dice": np.zeros((0, 2))}, ["background", "bone"])
    with pytest.raises(ConfigError, match=r"\(N, 3\)"):
        segmentation_report({"dice": np.zeros((4, 2))}, ["background", "a", "b"])
    with pytest.raises(ConfigError, match="one shape"):
        overlap_counts(torch.zeros(1, 4, 4), torch.zeros(1, 4, 5), 2)
