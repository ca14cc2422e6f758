"""Label Studio round trip: hand samples out to a Label Studio server and take the masks back.

:func:`push` creates (or reuses) a project whose labelling config is a ``BrushLabels``
config of ``labels.yaml`` (with a ``KeyPointLabels`` control beside it where ``labels.yaml``
names keypoints, or instead of it for a keypoint-only task, ``masks=False``), uploads the
images that ``sample_for_annotation`` wrote with their manifest rows as task data and, given
an interpreter's labels, attaches them as predictions (pre-annotations scored by the sample's
uncertainty), so an annotator corrects instead of drawing. :func:`pull` exports the project,
decodes each task's brush masks into one label-id mask (and its keypoints into
``<id>.keypoints.json``) and writes an annotation folder the importer reads, only when every
task is finished and clean (all problems reported at once). Label Studio's points carry no
occlusion, so every placed keypoint is visible (v = 2) and one not placed is not labelled.

The server is the user's; this module talks to it over plain HTTP (``requests``),
authorised by a personal access token (JWT refresh token, exchanged for short-lived
access tokens) or a legacy token where the server still accepts those. Images are
uploaded through the project's import API, so the server needs no access to this
machine's files. A background-like label 0 (``background``, ``bg``...) is not a brush:
unpainted pixels are background; without one, unpainted pixels get the ignore index.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

import h5py
import numpy as np
import pandas as pd
import requests
import yaml
from PIL import Image

from labelfactory.annotations.brush_rle import mask_to_rle, rle_to_mask
from labelfactory.annotations.cvat import BACKGROUND_NAMES
from labelfactory.annotations.handout import IMAGE_SUFFIX, MANIFEST_FILE
from labelfactory.annotations.importing import import_annotations
from labelfactory.annotations.keypoints import KEYPOINTS_SUFFIX, KeypointSet, parse_keypoints, write_keypoints
from labelfactory.annotations.labels import LABELS_FILE, AnnotationError, LabelSet
from labelfactory.core.io import sha256_file
from labelfactory.generators.base import UNCONDITIONAL, GeneratorBackend
from labelfactory.interpreters import Interpreter
from labelfactory.synthesis.labelling import label_seeds
from labelfactory.synthesis.shards import ShardSettings

log = logging.getLogger(__name__)

URL_ENV, KEY_ENV = "LABEL_STUDIO_URL", "LABEL_STUDIO_API_KEY"
FROM_NAME, TO_NAME = "label", "image"  # the BrushLabels control and the Image object of the config
KEYPOINT_NAME = "keypoint"  # the KeyPointLabels control
VISIBLE = 2  # Label Studio's points carry no occlusion: every placed keypoint is visible
TIMEOUT_S = 60
UPLOAD_BATCH = 50  # images per upload request (the server limits files per request)
PALETTE = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45",
           "#fabed4", "#469990", "#dcbeff", "#9a6324", "#800000", "#aaffc3", "#808000", "#000075")


class LabelStudioError(RuntimeError):
    """A Label Studio server that cannot do what was asked, said in one line."""


def _is_jwt(key: str) -> bool:
    """A personal access token is a JWT (``header.payload.signature``); a legacy token is not."""
    return key.count(".") == 2 and key.startswith("eyJ")


def _detail(response: requests.Response) -> str:
    """The server's reason for a failed request, on one line."""
    try:
        body = response.json()
    except ValueError:
        return response.reason or f"HTTP {response.status_code}"
    if not isinstance(body, dict):
        return str(body)
    text = str(body.get("detail") or body)
    if body.get("validation_errors"):
        text += f" {body['validation_errors']}"
    return " ".join(text.split())


class LabelStudio:
    """An authorised session with one Label Studio server (``url``, ``api_key``: by default
    ``$LABEL_STUDIO_URL``, ``$LABEL_STUDIO_API_KEY``); checks both on creation."""

    def __init__(self, url: str | None = None, api_key: str | None = None, timeout: float = TIMEOUT_S):
        self.url = (url or os.environ.get(URL_ENV) or "").rstrip("/")
        self._key = api_key or os.environ.get(KEY_ENV) or ""
        if not self.url or not self._key:
            missing = [name for name, v in ((URL_ENV, self.url), (KEY_ENV, self._key)) if not v]
            raise LabelStudioError(f"no Label Studio {' and '.join(missing)}: set the environment variable "
                                   "(the URL may also be given as --url)")
        self.timeout = timeout
        self.session = requests.Session()
        self._authorize()
        self.request("GET", "/api/current-user/whoami")

    def _send(self, method: str, path: str, **kwargs) -> requests.Response:
        try:
            return self.session.request(method, self.url + path, timeout=self.timeout, **kwargs)
        except requests.ConnectionError:
            raise LabelStudioError(f"no Label Studio server answers at {self.url} ({URL_ENV}): "
                                   "is it running, at this address?") from None
        except requests.Timeout:
            raise LabelStudioError(f"Label Studio at {self.url} did not answer {method} {path} "
                                   f"within {self.timeout:g} s") from None

    def _authorize(self) -> None:
        """Bearer access token from a personal access token, or a legacy ``Token`` header."""
        if not _is_jwt(self._key):
            self.session.headers["Authorization"] = f"Token {self._key}"
            return
        self.session.headers.pop("Authorization", None)
        r = self._send("POST", "/api/token/refresh/", json={"refresh": self._key})
        if r.status_code in (400, 401):
            raise LabelStudioError(f"Label Studio at {self.url} rejected the personal access token "
                                   f"({KEY_ENV}): {_detail(r)}")
        if not r.ok:
            raise LabelStudioError(f"Label Studio at {self.url}: token refresh failed ({r.status_code}: {_detail(r)})")
        self.session.headers["Authorization"] = f"Bearer {r.json()['access']}"

    def request(self, method: str, path: str, *, raw: bool = False, retry: bool = True, **kwargs) -> Any:
        """The JSON answer (or with ``raw`` the bytes) of an API call; LabelStudioError if it failed."""
        r = self._send(method, path, **kwargs)
        if r.status_code == 401 and retry and _is_jwt(self._key):  # the access token expired: refresh once
            self._authorize()
            return self.request(method, path, raw=raw, retry=False, **kwargs)
        if r.status_code in (401, 403):
            raise LabelStudioError(f"Label Studio at {self.url} refused the API key ({KEY_ENV}): {_detail(r)}")
        if not r.ok:
            raise LabelStudioError(f"Label Studio at {self.url}: {method} {path} failed ({r.status_code}: {_detail(r)})")
        if raw:
            return r.content
        return r.json() if r.content else None


# --- labelling config and projects ------------------------------------------------------
def _background(labels: LabelSet) -> bool:
    return labels.names[0].lower() in BACKGROUND_NAMES


def brush_labels(labels: LabelSet) -> list[str]:
    """The label names an annotator paints: all but a background-like label 0."""
    return list(labels.names[1:] if _background(labels) else labels.names)


def check_masks(labels: LabelSet, masks: bool) -> None:
    """A keypoint-only project (``masks`` False) needs keypoints to place: else a one-line error."""
    if not masks and labels.keypoints is None:
        raise ValueError(f"a keypoint-only project (no masks) needs keypoints: {LABELS_FILE} names none")


def _labels_xml(names, model_index: bool = False) -> str:
    """``<Label>`` tags of ``names`` in the palette's colours; ``model_index`` gives each its position,
    the keypoint order the Label Studio SDK's COCO export reads."""
    return "".join(f"<Label value={quoteattr(name)} background={quoteattr(PALETTE[i % len(PALETTE)])}"
                   + (f' model_index="{i}"' if model_index else "") + "/>" for i, name in enumerate(names))


def label_config(labels: LabelSet, masks: bool = True) -> str:
    """A Label Studio labelling config: the image, its caption (id and class), one brush per label
    (unless ``masks`` is False) and, where ``labels`` names keypoints, one keypoint label per keypoint."""
    check_masks(labels, masks)
    brushes = (f'<BrushLabels name="{FROM_NAME}" toName="{TO_NAME}">{_labels_xml(brush_labels(labels))}'
               "</BrushLabels>") if masks else ""
    points = (f'<KeyPointLabels name="{KEYPOINT_NAME}" toName="{TO_NAME}">'
              f"{_labels_xml(labels.keypoints.names, model_index=True)}</KeyPointLabels>") if labels.keypoints else ""
    image = f'<Header value="$caption"/><Image name="{TO_NAME}" value="$image" zoom="true"/>'
    return f"<View>{image}{brushes}{points}</View>"


def _project_labels(project: dict, name: str = FROM_NAME, kind: str = "BrushLabels") -> list[str]:
    parsed = (project.get("parsed_label_config") or {}).get(name) or {}
    return list(parsed.get("labels", [])) if parsed.get("type") == kind else []


def find_project(client: LabelStudio, title: str) -> dict | None:
    """The project titled ``title`` (None if there is none; an error if several are)."""
    found, page = [], 1
    while True:
        answer = client.request("GET", "/api/projects/", params={"page": page, "page_size": 100})
        found += [p for p in answer.get("results", []) if p.get("title") == title]
        if not answer.get("next"):
            break
        page += 1
    if len(found) > 1:
        raise LabelStudioError(f"{len(found)} projects at {client.url} are titled {title!r} (ids "
                               f"{', '.join(str(p['id']) for p in found)}): rename all but one")
    return found[0] if found else None


def label_set_problem(client: LabelStudio, project: dict, labels: LabelSet, masks: bool = True) -> str | None:
    """Why ``project`` does not paint (with ``masks``) and place ``labels`` (another label set), or None."""
    keypoints = list(labels.keypoints.names) if labels.keypoints else []
    for what, have, want in (("brush", _project_labels(project), brush_labels(labels) if masks else []),
                             ("keypoint", _project_labels(project, KEYPOINT_NAME, "KeyPointLabels"), keypoints)):
        if sorted(have) != sorted(want):
            return (f"project {project['title']!r} (id {project['id']}) at {client.url} has {what} labels {have}, "
                    f"{LABELS_FILE} has {want}: use another project title or the project's own {LABELS_FILE}")
    return None


def open_project(client: LabelStudio, title: str, labels: LabelSet, create: bool, masks: bool = True) -> dict:
    """The project titled ``title`` if it paints (with ``masks``) and places ``labels``; else created
    (``create``) or an error."""
    check_masks(labels, masks)
    project = find_project(client, title)
    if project is None:
        if not create:
            raise LabelStudioError(f"no project titled {title!r} at {client.url}")
        return client.request("POST", "/api/projects/", json={"title": title,
                                                              "label_config": label_config(labels, masks)})
    problem = label_set_problem(client, project, labels, masks)
    if problem:
        raise LabelStudioError(problem)
    return project


def project_tasks(client: LabelStudio, project_id: int) -> list[dict]:
    """Every task of the project with its annotations (the JSON export)."""
    return client.request("GET", f"/api/projects/{project_id}/export",
                          params={"exportType": "JSON", "download_all_tasks": "true"})


# --- push -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Prediction:
    """An interpreter's label-id mask ``[H, W]`` of a sample and the sample's uncertainty score."""

    labels: np.ndarray
    score: float


def read_manifest(samples_dir: Path) -> pd.DataFrame:
    """The hand-out's manifest (values as written) after checking that every image exists."""
    path = samples_dir / MANIFEST_FILE
    if not path.is_file():
        raise AnnotationError(samples_dir, [f"{MANIFEST_FILE}: missing (not a sample_for_annotation folder)"])
    manifest = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [f"{sid}{IMAGE_SUFFIX}: missing" for sid in manifest["id"]
               if not (samples_dir / f"{sid}{IMAGE_SUFFIX}").is_file()]
    if missing:
        raise AnnotationError(samples_dir, missing)
    return manifest


def interpreter_predictions(backend: GeneratorBackend, interpreter: Interpreter, samples_dir: str | os.PathLike,
                            batch_size: int = 16) -> dict[str, Prediction]:
    """The interpreter's labels and uncertainty score of every hand-out sample, rendered as it was
    handed out (its manifest's seed, class, truncation and noise), by sample id."""
    manifest = read_manifest(Path(samples_dir))
    seeds, classes = manifest["seed"].astype(np.int64).to_numpy(), manifest["class"].astype(np.int64).to_numpy()
    first = manifest.iloc[0]
    settings = ShardSettings(truncation=float(first.get("truncation", 1.0)), noise=first.get("noise", "const"),
                             batch_size=batch_size)
    with tempfile.TemporaryDirectory() as tmp:
        shard = Path(tmp) / "predictions.h5"
        label_seeds(backend, interpreter, seeds, classes if backend.num_classes else None, settings, shard)
        with h5py.File(shard, "r") as f:
            labels, scores = f["labels"][()], f["score"][()]
            order = {(int(s), int(c)): i for i, (s, c) in enumerate(zip(f["seed"][()], f["class"][()]))}
    rows = zip(manifest["id"], seeds, classes if backend.num_classes else [UNCONDITIONAL] * len(seeds))
    return {sid: Prediction(labels[order[s, c]], float(scores[order[s, c]])) for sid, s, c in rows}


def model_version(interpreter_path: str | os.PathLike) -> str:
    """The predictions' model version in Label Studio: the interpreter's file stem and sha256 prefix."""
    return f"{Path(interpreter_path).stem}-{sha256_file(interpreter_path)[:12]}"


def prediction_result(pred: Prediction, labels: LabelSet) -> list[dict]:
    """Label Studio results of a prediction: one brush mask per painted label present."""
    h, w = pred.labels.shape
    return [{"from_name": FROM_NAME, "to_name": TO_NAME, "type": "brushlabels", "original_width": w,
             "original_height": h, "image_rotation": 0,
             "value": {"format": "rle", "rle": mask_to_rle(pred.labels == labels.names.index(name)),
                       "brushlabels": [name]}}
            for name in brush_labels(labels) if (pred.labels == labels.names.index(name)).any()]


def _upload_images(client: LabelStudio, project_id: int, samples_dir: Path, ids: list[str]) -> dict[str, str]:
    """Upload the samples' images to the project (without making tasks of them); their URLs by id."""
    urls = {}
    for start in range(0, len(ids), UPLOAD_BATCH):
        names = [f"{sid}{IMAGE_SUFFIX}" for sid in ids[start : start + UPLOAD_BATCH]]
        files = {n: (n, (samples_dir / n).read_bytes(), "image/png") for n in names}
        answer = client.request("POST", f"/api/projects/{project_id}/import",
                                params={"commit_to_project": "false"}, files=files)
        uploads = client.request("GET", f"/api/projects/{project_id}/file-uploads",
                                 params={"ids": str(answer["file_upload_ids"])})
        stored = {Path(u["file"]).name.split("-", 1)[1]: "/data/" + u["file"] for u in uploads}
        urls.update({n[: -len(IMAGE_SUFFIX)]: stored[n] for n in names})
    return urls


def _caption(row: pd.Series) -> str:
    return row["id"] if int(row["class"]) == UNCONDITIONAL else f"{row['id']}: class {row['class']}"


def push(client: LabelStudio, samples_dir: str | os.PathLike, labels: LabelSet, title: str,
         predictions: dict[str, Prediction] | None = None, model_version: str = "labelfactory",
         masks: bool = True) -> dict:
    """Hand a ``sample_for_annotation`` folder out in the project ``title`` (created if new):
    one task per sample not already in it, its manifest row as task data, with
    ``predictions`` (by sample id) as pre-annotations. ``masks`` False: a keypoint-only project
    (no brushes, so no brush predictions). Returns the project id and counts."""
    if predictions and not masks:
        raise ValueError("pre-annotations are brush masks: a keypoint-only project (no masks) takes none")
    samples_dir = Path(samples_dir)
    manifest = read_manifest(samples_dir)
    project = open_project(client, title, labels, create=True, masks=masks)
    present = {t["data"].get("id") for t in project_tasks(client, project["id"])}
    new = manifest[~manifest["id"].isin(present)]
    urls = _upload_images(client, project["id"], samples_dir, list(new["id"])) if len(new) else {}
    tasks = []
    for _, row in new.iterrows():
        task = {"data": {**row.to_dict(), "image": urls[row["id"]], "caption": _caption(row)}}
        if predictions and row["id"] in predictions:
            pred = predictions[row["id"]]
            task["predictions"] = [{"model_version": model_version, "score": pred.score,
                                    "result": prediction_result(pred, labels)}]
        tasks.append(task)
    if tasks:
        client.request("POST", f"/api/projects/{project['id']}/import", json=tasks)
    with_predictions = sum("predictions" in t for t in tasks)
    log.info("pushed %d new tasks (%d with pre-annotations) to project %r (id %d) at %s; %d already there",
             len(tasks), with_predictions, title, project["id"], client.url, len(manifest) - len(new))
    return {"project": project["id"], "created": len(tasks), "predictions": with_predictions,
            "skipped": len(manifest) - len(new)}


# --- pull -------------------------------------------------------------------------------
def _annotation(task: dict) -> dict | None:
    """The task's latest submitted (not skipped) annotation, or None."""
    done = [a for a in task.get("annotations", []) if not a.get("was_cancelled")]
    return max(done, key=lambda a: (a.get("updated_at") or "", a["id"])) if done else None


def _painted(result: dict, where: str, labels: LabelSet, problems: list[str]) -> tuple[int, np.ndarray] | None:
    """The label id and painted pixels of one annotation result, or None (with the reason)."""
    value = result.get("value", {})
    if result.get("type") != "brushlabels" or "rle" not in value:
        problems.append(f"{where}: a {result.get('type')!r} result is not a brush mask")
        return None
    names = value.get("brushlabels") or []
    if len(names) != 1 or names[0] not in brush_labels(labels):
        problems.append(f"{where}: unknown label {names} (painted labels of {LABELS_FILE}: {brush_labels(labels)})")
        return None
    try:
        painted = rle_to_mask(value["rle"], int(result["original_height"]), int(result["original_width"]))
    except (ValueError, KeyError, TypeError) as e:
        problems.append(f"{where}: unreadable brush mask of {names[0]!r} ({e})")
        return None
    return labels.names.index(names[0]), painted


def _where(task: dict, suffix: str = ".png") -> str:
    """A task's file in problem lines: ``<id><suffix> (task <n>)``."""
    return f"{task['data']['id']}{suffix} (task {task['id']})"


def _results(task: dict, where: str, problems: list[str]) -> list[dict] | None:
    """The results of the task's latest submitted annotation; None (with the reason) if unfinished."""
    annotation = _annotation(task)
    if annotation is None:
        problems.append(f"{where}: unfinished task (no submitted annotation)")
        return None
    return annotation.get("result") or []


def _is_keypoint(result: dict, labels: LabelSet) -> bool:
    return labels.keypoints is not None and result.get("type") == "keypointlabels"


def _mask(where: str, results: list[dict], labels: LabelSet, problems: list[str]) -> np.ndarray | None:
    """The label-id mask of an annotation's brush ``results``, or None (with every reason)."""
    if not results:
        problems.append(f"{where}: the annotation paints nothing (submit one with brush masks)")
        return None
    found = [_painted(result, where, labels, problems) for result in results]
    if any(f is None for f in found):
        return None
    if len({painted.shape for _, painted in found}) > 1:
        problems.append(f"{where}: brush masks of different sizes {sorted({p.shape for _, p in found})}")
        return None
    by_label: dict[int, np.ndarray] = {}
    for label, painted in found:  # several strokes of one label add up
        by_label[label] = by_label.get(label, False) | painted
    clean = True
    for i, (a, pa) in enumerate(sorted(by_label.items())):
        for b, pb in sorted(by_label.items())[i + 1 :]:
            both = int((pa & pb).sum())
            if both:
                problems.append(f"{where}: {both} px carry two labels ({labels.names[a]}, {labels.names[b]})")
                clean = False
    if not clean:
        return None
    mask = np.full(found[0][1].shape, 0 if _background(labels) else labels.ignore_index, dtype=np.uint8)
    for label, painted in by_label.items():
        mask[painted] = label
    return mask


def _point(result: dict, where: str, labels: LabelSet, problems: list[str]
           ) -> tuple[str, float, float, tuple[int, int]] | None:
    """The keypoint name, pixel ``x, y`` (pixel centres at integers) and image ``(width, height)``
    of one keypoint result, or None (with the reason). Label Studio stores ``x, y`` in percent of
    the image's width and height from its top-left corner."""
    value = result.get("value", {})
    names = value.get("keypointlabels") or []
    if len(names) != 1 or names[0] not in labels.keypoints.names:
        problems.append(f"{where}: unknown keypoint {names} (keypoints of {LABELS_FILE}: "
                        f"{list(labels.keypoints.names)})")
        return None
    try:
        size = int(result["original_width"]), int(result["original_height"])
        x, y = float(value["x"]) / 100 * size[0] - 0.5, float(value["y"]) / 100 * size[1] - 0.5
    except (ValueError, KeyError, TypeError) as e:
        problems.append(f"{where}: unreadable keypoint {names[0]!r} ({type(e).__name__}: {e})")
        return None
    return names[0], x, y, size


def _keypoints(where: str, results: list[dict], labels: LabelSet, required: bool,
               problems: list[str]) -> np.ndarray | None:
    """The ``[K, 3]`` keypoints of an annotation's keypoint ``results`` (keypoints not placed:
    v = 0), or None (with every reason); ``required``: an annotation placing none is a problem."""
    if required and not results:
        problems.append(f"{where}: the annotation places no keypoint (submit one with keypoints)")
        return None
    read = [_point(result, where, labels, problems) for result in results]
    points = [p for p in read if p is not None]
    names = [p[0] for p in points]
    twice = sorted({n for n in names if names.count(n) > 1})
    problems += [f"{where}: keypoint {n!r} placed {names.count(n)} times (place each once)" for n in twice]
    sizes = sorted({p[3] for p in points})
    if len(sizes) > 1:
        problems.append(f"{where}: keypoints on images of different sizes {sizes}")
    if twice or len(sizes) > 1 or len(points) < len(read):
        return None
    if not points:
        return np.zeros((len(labels.keypoints.names), 3), np.float32)
    (width, height), = sizes
    row, found = parse_keypoints(where, {"keypoints": {n: [x, y, VISIBLE] for n, x, y, _ in points}},
                                 labels.keypoints, width, height)
    problems += found
    return row


def _task_files(task: dict, labels: LabelSet, masks: bool, problems: list[str]
                ) -> tuple[np.ndarray | None, np.ndarray | None] | None:
    """The mask (with ``masks``) and keypoints (where ``labels`` names them) of a task's annotation,
    or None (with every reason)."""
    results = _results(task, _where(task, ".png" if masks else KEYPOINTS_SUFFIX), problems)
    if results is None:
        return None
    points = [r for r in results if _is_keypoint(r, labels)]
    others = [r for r in results if not _is_keypoint(r, labels)]
    if not masks:
        problems += [f"{_where(task, KEYPOINTS_SUFFIX)}: a {r.get('type')!r} result is not a keypoint" for r in others]
    mask = _mask(_where(task), others, labels, problems) if masks else None
    keypoints = (_keypoints(_where(task, KEYPOINTS_SUFFIX), points, labels, not (masks or others), problems)
                 if labels.keypoints else None)
    if (masks and mask is None) or (labels.keypoints and keypoints is None) or (others and not masks):
        return None
    return mask, keypoints


def _write_folder(client: LabelStudio, tasks: list[dict], labels: LabelSet, folder: Path, masks: bool,
                  problems: list[str]) -> pd.DataFrame:
    """Write masks (with ``masks``), keypoints, images, manifest and labels of the tasks into
    ``folder``; the manifest."""
    rows = []
    for task in tasks:
        data = task.get("data", {})
        if "id" not in data or "image" not in data:
            problems.append(f"task {task['id']}: not a labelfactory sample (no id/image in its data)")
            continue
        rows.append({k: v for k, v in data.items() if k not in ("image", "caption")})
        files = _task_files(task, labels, masks, problems)
        if files is None:
            continue
        mask, keypoints = files
        if mask is not None:
            Image.fromarray(mask).save(folder / f"{data['id']}.png")
        if keypoints is not None:
            write_keypoints(folder, KeypointSet([data["id"]], keypoints[None], labels.keypoints))
        (folder / f"{data['id']}{IMAGE_SUFFIX}").write_bytes(client.request("GET", data["image"], raw=True))
    manifest = pd.DataFrame(rows)
    manifest.to_csv(folder / MANIFEST_FILE, index=False)
    (folder / LABELS_FILE).write_text(yaml.safe_dump(labels.as_dict()))
    return manifest


def _import_problems(folder: Path, manifest: pd.DataFrame, backend: GeneratorBackend, masks: bool) -> list[str]:
    """The importer's problems with the pulled folder (images against their seeds' re-renders...),
    less the missing files of tasks whose problems are reported already."""
    first = manifest.iloc[0]
    with tempfile.TemporaryDirectory() as tmp:
        try:
            import_annotations(folder, backend, Path(tmp) / "check.h5", truncation=float(first.get("truncation", 1.0)),
                               noise=first.get("noise", "const"), only_masked=True, masks=masks)
        except AnnotationError as e:
            reported = tuple(f"{sid}{KEYPOINTS_SUFFIX}: missing" for sid in manifest["id"]
                             if not (folder / f"{sid}{IMAGE_SUFFIX}").is_file())
            return [p for p in e.problems if not p.startswith(reported)]
    return []


def pull(client: LabelStudio, title: str, out_dir: str | os.PathLike, labels: LabelSet,
         backend: GeneratorBackend | None = None, masks: bool = True) -> pd.DataFrame:
    """Write the project's annotations as an annotation folder ``out_dir`` (``labels.yaml``,
    ``manifest.csv``, ``<id>.png`` masks, ``<id>.keypoints.json`` where ``labels`` names keypoints,
    ``<id>.image.png`` as annotated); ``masks`` False: a keypoint-only project, no masks written or
    required. With ``backend`` also checked by the importer. Raises one AnnotationError naming
    every problem (unfinished tasks, unknown labels, pixels with two labels, a keypoint placed
    twice, ...) and then writes nothing."""
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise AnnotationError(out, [f"{out.name}: exists and is not empty; pull into a new folder"])
    project = open_project(client, title, labels, create=False, masks=masks)
    tasks = project_tasks(client, project["id"])
    where = f"Label Studio project {title!r} (id {project['id']}) at {client.url}"
    if not tasks:
        raise AnnotationError(where, [f"{title}: the project has no tasks"])
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        problems: list[str] = []
        manifest = _write_folder(client, tasks, labels, tmp, masks, problems)
        if backend is not None and any(tmp.glob("*.image.png")):
            problems += _import_problems(tmp, manifest, backend, masks)
        if problems:
            raise AnnotationError(where, problems)
        tmp.chmod(0o755)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    log.info("pulled %d annotated samples from %s into %s", len(manifest), where, out)
    return manifest
