"""The public SyntheticDataset and the exports (WebDataset, Hugging Face datasets, VOC, COCO), each
read back by its own ecosystem's reader; resuming a killed export; the ignore option."""

from __future__ import annotations

import io
import json

import datasets
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import webdataset as wds
from PIL import Image
from pycocotools.coco import COCO
from torch.utils.data import DataLoader
from torchvision.datasets import VOCSegmentation

from helpers import tiny_biggan, tiny_generator
from labelfactory import cli
from labelfactory.downstream import coco_export  # noqa: F401  (registers the coco format)
from labelfactory.downstream.class_aware import ClassAwareLabels
from labelfactory.downstream.data import to_tensors
from labelfactory.downstream.experiment import SETTINGS, SettingInputs
from labelfactory.synthesis import SyntheticDataset
from labelfactory.synthesis.export import CHECKSUMS, ExportConflict, ExportOptions, export_task
from labelfactory.synthesis.export.journal import JOURNAL, read_checksums
from labelfactory.synthesis.filtering import filter_manifest, read_manifest, write_manifest
from labelfactory.synthesis.ignore import ignore_uncertain
from labelfactory.synthesis.shards import ShardSettings, read_per_sample, read_shard_scores, synthesize_shard

pytestmark = pytest.mark.usefixtures("one_torch_thread")
LABEL_NAMES = ["background", "body", "wheel"]


class Members:
    """A stand-in interpreter: three members that disagree (uncertainty varies by pixel)."""

    def __init__(self, num_classes: int, size: int):
        self.num_classes, self.size = num_classes, size

    def member_probabilities(self, features, classes=None):
        x = next(iter(features.values()))
        return torch.stack([F.interpolate(x[:, k:k + self.num_classes] * (1 + 2 * k), size=(self.size, self.size),
                                          mode="bilinear").softmax(1) for k in range(3)])


def _task(root, backend, interpreter, classes=None, label_names=LABEL_NAMES, shards=2, per_shard=5, ratio=0.3):
    """A task folder as the workflow leaves it: shards/, manifest.parquet (shard paths as the
    workflow writes them, relative to elsewhere) and the interpreter's sidecar."""
    paths = []
    for s in range(shards):
        path = root / "shards" / f"{s:05d}.h5"
        seeds = range(100 + per_shard * s, 100 + per_shard * (s + 1))
        synthesize_shard(backend, interpreter, path, seeds, classes=classes, settings=ShardSettings(batch_size=5),
                         attrs={"labeller_hash": "ab" * 32}, progress=False)
        paths.append(str(path))
    manifest = filter_manifest(read_shard_scores(paths), ratio)
    write_manifest(manifest.assign(shard=[f"results/{root.name}/shards/{p.split('/')[-1]}" for p in manifest["shard"]]),
                   root / "manifest.parquet")
    (root / "interpreter.json").write_text(json.dumps({"interpreter": "mlp", "num_classes": len(label_names),
                                                       "label_names": label_names}))
    return root


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    return _task(tmp_path_factory.mktemp("results") / "toy", tiny_generator(), Members(3, 16))


@pytest.fixture(scope="module")
def conditional_task(tmp_path_factory):
    return _task(tmp_path_factory.mktemp("results") / "objects", tiny_biggan(), Members(2, 32), classes=[0, 1] * 2 + [1],
                 label_names=["background", "object"])


def _shard_truth(task, kept_only=True):
    """Manifest rows (in order) with their images, labels and uncertainty read straight from the shards."""
    manifest = read_manifest(task / "manifest.parquet")
    rows = manifest[manifest["kept"]] if kept_only else manifest
    out = []
    for _, r in rows.iterrows():
        image, label, unc = read_per_sample(task / "shards" / r["shard"].split("/")[-1], [r["index"]],
                                            ("images", "labels", "uncertainty"))
        out.append({"seed": int(r["seed"]), "class": int(r["class"]), "kept": bool(r["kept"]),
                    "score": float(r["score"]), "image": image[0], "label": label[0], "uncertainty": unc[0]})
    return out


def test_dataset_reads_the_kept_samples_in_manifest_order(task):
    truth = _shard_truth(task)
    ds = SyntheticDataset.from_task(task, fields=("image", "label", "uncertainty"))
    assert len(ds) == len(truth) == 7  # 10 samples, 3 dropped
    for i, t in enumerate(truth):
        item = ds[i]
        assert torch.equal(item["image"], torch.from_numpy(t["image"]).permute(2, 0, 1))
        assert item["label"].dtype == torch.int64 and torch.equal(item["label"], torch.from_numpy(t["label"]).long())
        assert torch.equal(item["uncertainty"], torch.from_numpy(t["uncertainty"]).float())
        assert (item["seed"], item["class"], item["kept"]) == (t["seed"], -1, True)
        assert item["key"] == f"s{t['seed']:08d}" and item["score"] == pytest.approx(t["score"])
    streamed = list(ds.stream(batch_size=3))
    assert [s.seed for s in streamed] == [t["seed"] for t in truth]
    assert all((s.arrays["label"] == t["label"]).all() for s, t in zip(streamed, truth))
    batch = next(iter(DataLoader(ds, batch_size=4)))
    assert batch["image"].shape == (4, 3, 16, 16) and batch["label"].shape == (4, 16, 16)
    everything = SyntheticDataset.from_task(task, kept_only=False)
    assert len(everything) == 10 and sum(everything[i]["kept"] for i in range(10)) == 7
    with pytest.raises(ValueError, match="fields must be"):
        SyntheticDataset.from_task(task, fields=("image", "depth"))


def test_downstream_datasets_are_the_shards_samples_as_before(task, tmp_path):
    """The training sets built on SyntheticDataset hold, item for item, what the earlier
    ShardSegmentation returned: to_tensors of each listed sample read from its shard (labels
    mapped for class-aware tasks, uncertain pixels ignored), in manifest order."""
    manifest = read_manifest(task / "manifest.parquet")
    write_manifest(manifest.assign(shard=[str(task / "shards" / s.split("/")[-1]) for s in manifest["shard"]]),
                   tmp_path / "m.parquet")
    for setting, kept_only, fraction in (("synthetic", False, 0.0), ("synthetic_filtered", True, 0.0),
                                         ("synthetic_filtered", True, 0.2)):
        inputs = SettingInputs("unused", manifest=str(tmp_path / "m.parquet"), uncertain_pixels=fraction)
        got = SETTINGS.get(setting)(inputs, None)
        truth = _shard_truth(task, kept_only)
        assert len(got) == len(truth)
        for (x, y), t in zip((got[i] for i in range(len(got))), truth):
            label = ignore_uncertain(t["label"][None], t["uncertainty"][None], fraction)[0]
            want = to_tensors(t["image"], label)
            assert torch.equal(x, want[0]) and torch.equal(y, want[1]) and y.dtype == want[1].dtype


def test_class_aware_downstream_labels(conditional_task, tmp_path):
    manifest = read_manifest(conditional_task / "manifest.parquet")
    write_manifest(manifest.assign(shard=[str(conditional_task / "shards" / s.split("/")[-1])
                                          for s in manifest["shard"]]), tmp_path / "m.parquet")
    labels = ClassAwareLabels((0, 1), ("cat", "dog"))
    got = SETTINGS.get("synthetic_filtered")(SettingInputs("unused", manifest=str(tmp_path / "m.parquet"),
                                                           class_aware=labels), None)
    truth = _shard_truth(conditional_task)
    assert len(got) == len(truth) and {t["class"] for t in truth} == {0, 1}
    for i, t in enumerate(truth):
        want = to_tensors(t["image"], labels.apply(t["label"][None], [t["class"]])[0])
        assert torch.equal(got[i][0], want[0]) and torch.equal(got[i][1], want[1])


def _png(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def _options(**kw) -> ExportOptions:
    return ExportOptions(**{"piece_size": 3, "batch_size": 2, **kw})


def test_webdataset_export_reads_back_with_webdataset(task, tmp_path):
    summary = export_task(task, "webdataset", tmp_path / "wds", _options(include_dropped=True))
    assert summary["samples"] == 10 and not summary["up_to_date"]
    tars = sorted(str(p) for p in (tmp_path / "wds" / "shards").glob("*.tar"))
    assert len(tars) == 4  # 10 samples, 3 per tar
    got = list(wds.WebDataset(tars, shardshuffle=False))
    truth = _shard_truth(task, kept_only=False)
    assert len(got) == 10
    for sample, t in zip(got, truth):
        meta = json.loads(sample["json"])
        assert (sample["__key__"], meta["seed"], meta["class"], meta["kept"]) == (f"s{t['seed']:08d}", t["seed"], -1,
                                                                                  t["kept"])
        assert meta["generator_hash"] == tiny_generator().generator_hash
        assert (_png(sample["png"]) == t["image"]).all() and (_png(sample["mask.png"]) == t["label"]).all()
    sums = read_checksums(tmp_path / "wds" / CHECKSUMS)
    assert set(sums) == {"export.json", "labels.json", *(f"shards/data-{k:06d}.tar" for k in range(4))}
    again = export_task(task, "webdataset", tmp_path / "wds", _options(include_dropped=True))
    assert again["up_to_date"]


def test_huggingface_export_reads_back_with_datasets(task, tmp_path):
    out = tmp_path / "hf"
    export_task(task, "hf", out, _options())
    files = sorted(str(p) for p in (out / "data").glob("*.parquet"))
    assert [p.split("/")[-1] for p in files] == [f"train-{k:05d}-of-00003.parquet" for k in range(3)]
    ds = datasets.load_dataset("parquet", data_files=files, split="train", cache_dir=str(tmp_path / "cache"))
    assert isinstance(ds.features["image"], datasets.Image) and isinstance(ds.features["mask"], datasets.Image)
    truth = _shard_truth(task)
    assert len(ds) == len(truth)
    for row, t in zip(ds, truth):
        assert (np.asarray(row["image"]) == t["image"]).all() and (np.asarray(row["mask"]) == t["label"]).all()
        assert (row["seed"], row["class"], row["kept"]) == (t["seed"], -1, True)
    by_card = datasets.load_dataset(str(out), split="train", cache_dir=str(tmp_path / "cache2"))
    assert by_card["seed"] == ds["seed"]
    card = (out / "README.md").read_text()
    assert tiny_generator().generator_hash in card and "filter ratio (dropped share) | 0.3" in card
    assert json.loads((out / "id2label.json").read_text()) == {"0": "background", "1": "body", "2": "wheel"}


def test_huggingface_class_label_of_a_conditional_task(conditional_task, tmp_path):
    export_task(conditional_task, "hf", tmp_path / "hf", _options(class_names={0: "cat", 1: "dog"}))
    ds = datasets.load_dataset("parquet", data_files=str(tmp_path / "hf" / "data" / "*.parquet"), split="train",
                               cache_dir=str(tmp_path / "cache"))
    assert ds.features["class"].names == ["cat", "dog"]
    assert [ds.features["class"].int2str(c) for c in ds["class"]] == \
        [{0: "cat", 1: "dog"}[t["class"]] for t in _shard_truth(conditional_task)]


@pytest.mark.parametrize("image_format", ["jpg", "png"])
def test_voc_export_reads_back_as_voc(task, tmp_path, image_format):
    voc = tmp_path / "VOCdevkit" / "VOC2012"
    export_task(task, "voc", voc, _options(image_format=image_format))
    truth = _shard_truth(task)
    names = (voc / "ImageSets" / "Segmentation" / "train.txt").read_text().split()
    assert names == [f"s{t['seed']:08d}" for t in truth]
    if image_format == "jpg":  # torchvision's reader: labels exact, JPEG images lossy
        reader = VOCSegmentation(str(tmp_path), year="2012", image_set="train")
        pairs = [(np.asarray(img), np.asarray(mask)) for img, mask in reader]
    else:  # lossless: the images as mmsegmentation reads them with img_suffix=".png"
        pairs = [(np.asarray(Image.open(voc / "JPEGImages" / f"{n}.png")),
                  np.asarray(Image.open(voc / "SegmentationClass" / f"{n}.png"))) for n in names]
    for (image, mask), t in zip(pairs, truth):
        assert (mask == t["label"]).all()
        error = np.abs(image.astype(int) - t["image"]).mean()
        assert error == 0 if image_format == "png" else 0 < error < 8
    assert Image.open(voc / "SegmentationClass" / f"{names[0]}.png").mode == "P"
    assert (voc / "labelmap.txt").read_text().splitlines()[1:] == ["background:0,0,0::", "body:128,0,0::",
                                                                  "wheel:0,128,0::"]


def test_coco_export_reads_back_with_pycocotools(conditional_task, tmp_path):
    export_task(conditional_task, "coco", tmp_path / "coco", _options(class_names={0: "cat", 1: "dog"}))
    coco = COCO(str(tmp_path / "coco" / "annotations.json"))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == ["cat", "dog"]
    truth = _shard_truth(conditional_task)
    assert len(coco.getImgIds()) == len(truth)
    for image_id, t in zip(sorted(coco.getImgIds()), truth):
        record = coco.loadImgs(image_id)[0]
        assert (record["seed"], record["class"]) == (t["seed"], t["class"])
        assert (np.asarray(Image.open(tmp_path / "coco" / record["file_name"])) == t["image"]).all()
        anns = coco.loadAnns(coco.getAnnIds(imgIds=image_id))
        if (t["label"] == 1).any():
            (ann,) = anns
            assert ann["category_id"] == t["class"] + 1 and (coco.annToMask(ann) == (t["label"] == 1)).all()
        else:
            assert anns == []


def test_coco_refuses_an_unconditional_task_and_writes_nothing(task, tmp_path):
    with pytest.raises(ValueError, match="class-conditional"):
        export_task(task, "coco", tmp_path / "coco", _options())
    assert not (tmp_path / "coco").exists()


def test_ignore_uncertain_labels_the_most_uncertain_pixels_255(task, tmp_path):
    export_task(task, "webdataset", tmp_path / "wds", _options(ignore_uncertain=0.25))
    got = list(wds.WebDataset(sorted(str(p) for p in (tmp_path / "wds" / "shards").glob("*.tar")), shardshuffle=False))
    truth = _shard_truth(task)
    for sample, t in zip(got, truth):
        mask = _png(sample["mask.png"])
        assert (mask == 255).sum() == 64  # a quarter of 16 x 16
        assert (mask == ignore_uncertain(t["label"][None], t["uncertainty"][None], 0.25)[0]).all()
        assert (mask[mask != 255] == t["label"][mask != 255]).all() and (t["label"] != 255).all()


@pytest.mark.parametrize("fmt", ["webdataset", "hf", "voc"])
def test_a_killed_export_resumes_to_the_same_checksums(task, tmp_path, monkeypatch, fmt):
    whole = export_task(task, fmt, tmp_path / "whole", _options(include_dropped=True))
    real_stream, calls = SyntheticDataset.stream, []

    def dying_stream(self, start=0, stop=None, batch_size=64):
        calls.append(start)
        if len(calls) == 3:  # the third piece dies half-way
            yield from real_stream(self, start, start + 1, batch_size)
            raise KeyboardInterrupt("killed")
        yield from real_stream(self, start, stop, batch_size)

    monkeypatch.setattr(SyntheticDataset, "stream", dying_stream)
    with pytest.raises(KeyboardInterrupt):
        export_task(task, fmt, tmp_path / "killed", _options(include_dropped=True))
    out = tmp_path / "killed"
    assert not (out / CHECKSUMS).exists() and (out / JOURNAL).exists()
    assert not [p for p in out.rglob(".*") if p.name != JOURNAL], "no temporary file is left behind"
    if fmt == "webdataset":  # the dying piece never got its final name
        assert sorted(p.name for p in (out / "shards").glob("*.tar")) == ["data-000000.tar", "data-000001.tar"]
    def counted_stream(self, start=0, stop=None, batch_size=64):
        calls.append(start)
        yield from real_stream(self, start, stop, batch_size)

    calls.clear()
    monkeypatch.setattr(SyntheticDataset, "stream", counted_stream)
    resumed = export_task(task, fmt, out, _options(include_dropped=True))
    assert calls == [6, 9] and resumed["files"] == whole["files"]  # the two finished pieces were kept
    assert (out / CHECKSUMS).read_text() == (tmp_path / "whole" / CHECKSUMS).read_text()
    assert not (out / JOURNAL).exists()


def test_a_finished_piece_whose_file_changed_is_redone(task, tmp_path):
    out = tmp_path / "wds"
    export_task(task, "webdataset", out, _options())
    want = (out / CHECKSUMS).read_text()
    (out / "shards" / "data-000001.tar").write_bytes(b"corrupt")
    assert not export_task(task, "webdataset", out, _options())["up_to_date"]
    assert (out / CHECKSUMS).read_text() == want


def test_other_settings_in_the_same_folder_are_refused_or_replaced(task, tmp_path):
    out = tmp_path / "wds"
    export_task(task, "webdataset", out, _options())
    (out / CHECKSUMS).unlink()  # as Snakemake does before it re-runs a job whose params changed
    with pytest.raises(ExportConflict, match="other settings"):
        export_task(task, "webdataset", out, _options(include_dropped=True))
    export_task(task, "webdataset", out, _options(include_dropped=True, piece_size=20), replace=True)
    assert sorted(p.name for p in (out / "shards").iterdir()) == ["data-000000.tar"]
    assert len(list(wds.WebDataset(str(out / "shards" / "data-000000.tar"), shardshuffle=False))) == 10


def test_cli_export(conditional_task, tmp_path, capsys):
    assert cli.main(["export", "--task-dir", str(conditional_task), "--format", "coco", "--out", str(tmp_path / "c"),
                     "--class-names", "0=cat", "1=dog", "--include-dropped"]) == 0
    coco = COCO(str(tmp_path / "c" / "annotations.json"))
    assert len(coco.getImgIds()) == 10 and [c["name"] for c in coco.loadCats([1, 2])] == ["cat", "dog"]
    with pytest.raises(SystemExit):
        cli.main(["export", "--task-dir", str(conditional_task), "--format", "tiff", "--out", str(tmp_path / "t")])
    assert cli.main(["export", "--task-dir", str(tmp_path / "no-task"), "--format", "hf", "--out",
                     str(tmp_path / "n")]) == 1  # one logged line, no traceback
    assert not (tmp_path / "n").exists()
