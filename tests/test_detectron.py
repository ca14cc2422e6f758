"""detectron2 engine: backbone export, COCO registration, Mask R-CNN finetuning (tiny, CPU)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import build_model

from labelfactory.downstream.detectron import (AP_KEYS, BACKBONE_PREFIX, MASK_RCNN_R50_FPN_1X, FinetuneConfig,
                                               check_backbone_fits, detectron2_config, detectron2_resnet_state,
                                               export_backbone, finetune, register_coco)
from labelfactory.downstream.models import WeightsError, build_segmentation_model, resnet_trunk
from labelfactory.toybench.scenes import SceneSpec, write_toy_scenes
from labelfactory.core.divergence import Diverged

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# A Mask R-CNN R-18-FPN small enough for a CPU test on 64 px toy scenes.
TOY = dict(depth=18, freeze_at=0, batch_size=4, lr=0.01, lr_steps=(), warmup_steps=0, min_size_train=(64,),
           max_size_train=128, min_size_test=64, max_size_test=128, num_workers=0, threads=1,
           overrides={"MODEL.ANCHOR_GENERATOR.SIZES": [[8], [16], [32], [64], [128]],
                      "MODEL.RPN.POST_NMS_TOPK_TRAIN": 200, "MODEL.RPN.POST_NMS_TOPK_TEST": 100,
                      "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE": 64, "MODEL.ROI_HEADS.SCORE_THRESH_TEST": 0.0,
                      "MODEL.ROI_BOX_HEAD.FC_DIM": 256, "MODEL.FPN.OUT_CHANNELS": 64,
                      "MODEL.ROI_MASK_HEAD.NUM_CONV": 2, "MODEL.ROI_MASK_HEAD.CONV_DIM": 64,
                      "TEST.DETECTIONS_PER_IMAGE": 20})


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes")
    write_toy_scenes(root / "train" / "train.json", range(16), SceneSpec(size=64))
    write_toy_scenes(root / "test" / "test.json", range(1000, 1004), SceneSpec(size=64))
    return root / "train" / "train.json", root / "test" / "test.json"


def _trained_like_trunk(arch: str, seed: int = 0):
    """A torchvision-layout trunk whose BatchNorm parameters and statistics are not
    at any initial value, so a tensor left at initialisation cannot pass for loaded."""
    torch.manual_seed(seed)
    trunk, _ = resnet_trunk(arch, output_stride=32)
    with torch.no_grad():
        for m in trunk.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                for t in (m.weight, m.bias, m.running_mean):
                    t.normal_()
                m.running_var.uniform_(0.5, 2.0)
    return trunk


def _convs(model, trunk):
    """Every conv of the model's ResNet with the torchvision conv and BatchNorm it
    must come from, found by module structure (independent of any key names)."""
    bottom_up = model.backbone.bottom_up
    yield bottom_up.stem.conv1, trunk.conv1, trunk.bn1
    for s in range(4):
        for d2, tv in zip(getattr(bottom_up, f"res{s + 2}"), getattr(trunk, f"layer{s + 1}"), strict=True):
            yield from ((getattr(d2, f"conv{c}"), getattr(tv, f"conv{c}"), getattr(tv, f"bn{c}"))
                        for c in (1, 2, 3) if hasattr(tv, f"conv{c}"))
            if tv.downsample is not None:
                yield d2.shortcut, tv.downsample[0], tv.downsample[1]


def _model(depth: int):
    torch.manual_seed(1)
    return build_model(detectron2_config(FinetuneConfig(depth=depth), "train", "test", 4, "/unused"))


def test_resnet_names_follow_detectron2():
    trunk = _trained_like_trunk("resnet18")
    state = detectron2_resnet_state(trunk)
    assert len(state) == sum(not k.endswith("num_batches_tracked") for k in trunk.state_dict())
    assert torch.equal(state["stem.conv1.weight"], trunk.conv1.weight)
    assert torch.equal(state["stem.conv1.norm.running_var"], trunk.bn1.running_var)
    assert torch.equal(state["res2.1.conv2.norm.bias"], trunk.layer1[1].bn2.bias)
    assert torch.equal(state["res3.0.shortcut.weight"], trunk.layer2[0].downsample[0].weight)
    assert torch.equal(state["res5.0.shortcut.norm.running_mean"], trunk.layer4[0].downsample[1].running_mean)
    # a DeepLabV3 on the trunk gives the same backbone; a torchvision classifier loses its fc
    seg = build_segmentation_model("deeplabv3_resnet18", 3, output_stride=32)
    seg.backbone.load_state_dict(trunk.state_dict())
    assert all(torch.equal(v, state[k]) for k, v in detectron2_resnet_state(seg).items())
    assert set(detectron2_resnet_state({**trunk.state_dict(), "fc.weight": torch.zeros(1)})) == set(state)


@pytest.mark.parametrize("depth,suffix", [(18, ".pkl"), (18, ".pth"), (50, ".pkl")])
def test_exported_backbone_loads_completely_into_mask_rcnn(tmp_path, depth, suffix):
    trunk = _trained_like_trunk(f"resnet{depth}")
    path = export_backbone(trunk, tmp_path / f"backbone{suffix}")
    model = _model(depth)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    check_backbone_fits(model, path)
    DetectionCheckpointer(model).load(str(path))
    compared = 0
    for conv, tv_conv, bn in _convs(model, trunk):
        assert torch.equal(conv.weight, tv_conv.weight)
        for t in ("weight", "bias", "running_mean", "running_var"):  # BatchNorm -> the conv's FrozenBN norm
            assert torch.equal(getattr(conv.norm, t), getattr(bn, t))
        compared += 5
    after = model.state_dict()
    backbone = [k for k in after if k.startswith(BACKBONE_PREFIX)]
    assert compared == len(backbone)  # every backbone tensor was compared with its source
    for k in backbone:
        assert not torch.equal(after[k], before[k]), f"{k} still at initialisation"
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():  # the same network: detectron2's ResNet computes the trunk's features
        assert torch.allclose(model.backbone.bottom_up(x)["res5"], trunk.eval()(x), rtol=1e-4, atol=1e-4)
    assert all(torch.equal(after[k], before[k]) for k in after if not k.startswith("backbone."))  # heads untouched


def test_misfit_backbones_are_refused(tmp_path):
    narrow = export_backbone(resnet_trunk("resnet18", output_stride=32, width=0.5)[0], tmp_path / "narrow.pkl")
    with pytest.raises(WeightsError, match=r"\(0 tensors missing, [1-9]\d* mis-shaped\)"):
        check_backbone_fits(_model(18), narrow)
    r18 = export_backbone(resnet_trunk("resnet18", output_stride=32)[0], tmp_path / "r18.pth")
    with pytest.raises(WeightsError, match=r"\([1-9]\d* tensors missing"):
        check_backbone_fits(_model(50), r18)
    with pytest.raises(WeightsError, match="7x7"):
        export_backbone(resnet_trunk("resnet18", output_stride=8, small_stem=True)[0], tmp_path / "s.pkl")
    with pytest.raises(WeightsError, match="not a torchvision ResNet"):
        detectron2_resnet_state(build_segmentation_model("deeplabv3_mobilenet_v3_large", 2))
    with pytest.raises(ValueError, match=".pkl or .pth"):
        export_backbone(resnet_trunk("resnet18")[0], tmp_path / "r18.safetensors")


def test_config_takes_the_model_zoo_file_and_never_a_url(tmp_path):
    d2 = detectron2_config(FinetuneConfig(overrides={"SOLVER.CHECKPOINT_PERIOD": 7}), "a", "b", 3, tmp_path)
    assert d2.MODEL.MASK_ON and d2.MODEL.BACKBONE.NAME == "build_resnet_fpn_backbone"
    assert (d2.MODEL.RESNETS.DEPTH, d2.SOLVER.MAX_ITER, d2.SOLVER.STEPS, d2.SOLVER.IMS_PER_BATCH) == \
        (50, 90_000, (60_000, 80_000), 16)
    assert d2.MODEL.WEIGHTS == "" and d2.INPUT.FORMAT == "RGB" and d2.MODEL.ROI_HEADS.NUM_CLASSES == 3
    assert d2.SOLVER.CHECKPOINT_PERIOD == 7 and d2.DATASETS.TRAIN == ("a",)
    assert FinetuneConfig.from_dict(FinetuneConfig(config_file=MASK_RCNN_R50_FPN_1X).to_dict()) == FinetuneConfig()
    with pytest.raises(WeightsError, match="URL"):
        detectron2_config(FinetuneConfig(overrides={"MODEL.WEIGHTS": "detectron2://x.pkl"}), "a", "b", 3, tmp_path)
    with pytest.raises(WeightsError, match="not a local file"):
        FinetuneConfig(weights=str(tmp_path / "absent.pkl"))
    with pytest.raises(ValueError, match="lr_steps"):
        FinetuneConfig(steps=10)
    with pytest.raises(ValueError, match="unknown"):
        FinetuneConfig.from_dict({"stpes": 3})


def test_register_coco_uses_detectron2_loader(scenes):
    name = register_coco(scenes[1])
    assert register_coco(scenes[1]) == name  # registering again replaces the entry
    dicts = DatasetCatalog.get(name)
    coco = json.loads(scenes[1].read_text())
    assert len(dicts) == 4 and sum(len(d["annotations"]) for d in dicts) == len(coco["annotations"])
    assert MetadataCatalog.get(name).thing_classes == ["car", "face", "house", "tree"]
    ann = dicts[0]["annotations"][0]
    assert set(ann["segmentation"]) == {"size", "counts"} and ann["category_id"] in range(4)


def test_finetune_lowers_the_loss_and_reports_ap(tmp_path, scenes):
    cfg = FinetuneConfig(**TOY, steps=20, save_model=False)
    results = finetune(cfg, *scenes, tmp_path / "run")
    loss = np.array(results["loss"])
    assert len(loss) == 20 and np.isfinite(loss).all()
    assert loss[-5:].mean() < 0.8 * loss[:5].mean(), loss.round(2)
    for task in ("bbox", "segm"):
        assert all(0 <= results[task][k] <= 100 for k in AP_KEYS), results[task]
    assert json.loads((tmp_path / "run" / "results.json").read_text()) == results
    assert results["config"]["steps"] == 20 and results["world_size"] == 1
    assert not (tmp_path / "run" / "model_final.pth").exists()


def test_finetune_starts_from_an_exported_backbone(tmp_path, scenes):
    trunk = _trained_like_trunk("resnet18")
    weights = export_backbone(trunk, tmp_path / "r18.pkl")
    cfg = FinetuneConfig(**{**TOY, "freeze_at": 2}, weights=str(weights), steps=2)
    results = finetune(cfg, *scenes, tmp_path / "run")
    assert set(results["bbox"]) >= set(AP_KEYS) and set(results["segm"]) >= set(AP_KEYS)
    final = torch.load(tmp_path / "run" / "model_final.pth", map_location="cpu", weights_only=False)["model"]
    state = detectron2_resnet_state(trunk)
    frozen = [k for k in state if k.startswith(("stem.", "res2."))]  # FREEZE_AT 2: stem and res2 stay as loaded
    assert frozen and all(torch.equal(torch.as_tensor(final[BACKBONE_PREFIX + k]), state[k]) for k in frozen)
    trained = BACKBONE_PREFIX + "res4.0.conv1.weight"
    assert not torch.equal(torch.as_tensor(final[trained]), state["res4.0.conv1.weight"])


def test_a_diverging_finetuning_is_recorded_or_fails(tmp_path, scenes):
    """An absurd learning rate: detectron2's FloatingPointError becomes a recorded, unscored run."""
    cfg = FinetuneConfig(**{**TOY, "lr": 1e12, "warmup_steps": 0}, steps=10, save_model=False)
    results = finetune(cfg, *scenes, tmp_path / "run")
    assert results["status"] == "diverged" and "bbox" not in results and 0 <= results["step"] < 10
    assert results["last_finite_loss"] is None or np.isfinite(results["last_finite_loss"])
    assert json.loads((tmp_path / "run" / "results.json").read_text()) == results
    with pytest.raises(Diverged, match="Mask R-CNN finetuning seed 0: the loss became non-finite at step"):
        finetune(cfg, *scenes, tmp_path / "fail", on_divergence="fail")
