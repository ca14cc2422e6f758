"""The Label Studio round trip against a real Label Studio server (its own venv, started here):
push -> the simulated annotator draws through the API -> pull -> import -> interpreter -> a
second active-learning round pushed with pre-annotations; bad servers, tokens and projects;
keypoints beside the brushes and keypoint-only projects.
The brush RLE codec is checked against the Label Studio SDK's own converter."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from helpers import REPO, make_tiny_project, snakemake, tiny_biggan, update_config
from PIL import Image

from labelfactory.annotations.active_selection import candidate_seeds, choose_seeds
from labelfactory.annotations.annotation_set import load_annotation_set
from labelfactory.annotations.brush_rle import (
    decode_rle,
    encode_rle,
    mask_to_rle,
    rle_to_mask,
)
from labelfactory.annotations.handout import sample_for_annotation
from labelfactory.annotations.importing import import_annotations
from labelfactory.annotations.keypoints import load_keypoints
from labelfactory.annotations.label_studio import (
    LabelStudio,
    LabelStudioError,
    Prediction,
    find_project,
    interpreter_predictions,
    model_version,
    prediction_result,
    project_tasks,
    pull,
    push,
)
from labelfactory.annotations.labels import AnnotationError, KeypointSpec, LabelSet, load_labels
from labelfactory.cli import main
from labelfactory.features import FeatureStore, extract_features
from labelfactory.generators.loading import load_generator
from labelfactory.interpreters import INTERPRETERS, TrainingData
from labelfactory.toybench.annotator import Annotator, simulate_annotation

LS_VENV = REPO / ".venv-label-studio"
CAR = REPO / "weights" / "toy" / "stylegan2-car-32.safetensors"
USER, PASSWORD, LEGACY_TOKEN = "annotator@labelfactory.test", "labelfactory-test", "legacy0token0labelfactory"
NO_LABEL_STUDIO = "no Label Studio venv (.venv-label-studio): run `make setup` (envs/install_label_studio.sh)"
needs_label_studio = pytest.mark.skipif(not (LS_VENV / "bin" / "label-studio").exists(), reason=NO_LABEL_STUDIO)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _login(url: str) -> requests.Session:
    """A browser-like session of the test user (what creates a personal access token in the UI)."""
    s = requests.Session()
    s.get(f"{url}/user/login/", timeout=30)
    r = s.post(f"{url}/user/login/", data={"email": USER, "password": PASSWORD,
                                          "csrfmiddlewaretoken": s.cookies["csrftoken"]},
               headers={"Referer": f"{url}/user/login/"}, allow_redirects=False, timeout=30)
    assert r.status_code == 302, r.text[:300]
    s.headers.update({"X-CSRFToken": s.cookies["csrftoken"], "Referer": url})
    return s


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A Label Studio server on 127.0.0.1 with its own SQLite data dir and user; yields its URL
    and the user's personal access token."""
    if not (LS_VENV / "bin" / "label-studio").exists():
        pytest.skip(NO_LABEL_STUDIO)
    data = tmp_path_factory.mktemp("label-studio")
    port = _free_port()
    env = {**os.environ, "LABEL_STUDIO_BASE_DATA_DIR": str(data), "LABEL_STUDIO_USERNAME": USER,
           "LABEL_STUDIO_PASSWORD": PASSWORD, "LABEL_STUDIO_USER_TOKEN": LEGACY_TOKEN}
    env.pop("LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN", None)
    with open(data / "server.log", "wb") as log:
        proc = subprocess.Popen([str(LS_VENV / "bin" / "label-studio"), "start", "--no-browser", "--host",
                                 "127.0.0.1", "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            assert proc.poll() is None, (data / "server.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "Label Studio did not answer /health within 300 s"
            try:
                if requests.get(f"{url}/health", timeout=5).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            time.sleep(1)
        token = _login(url).post(f"{url}/api/token/", json={}, timeout=30).json()["token"]
        yield {"url": url, "token": token}
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def toy():
    """The toy car generator, the simulated annotator and the car part labels."""
    backend = load_generator(CAR)
    annotator = Annotator.load(REPO / "weights" / "toy" / "annotator-32.safetensors")
    return backend, annotator


def _draw(client: LabelStudio, project_id: int, masks: dict[str, np.ndarray], labels: LabelSet) -> None:
    """The simulated human submits each task's mask through the API (brush results)."""
    for task in project_tasks(client, project_id):
        sid = task["data"]["id"]
        if sid in masks:
            client.request("POST", f"/api/tasks/{task['id']}/annotations/",
                           json={"result": prediction_result(Prediction(masks[sid], 0.0), labels),
                                 "was_cancelled": False})


def _simulated(backend, annotator, seeds, folder: Path) -> tuple[LabelSet, dict[str, np.ndarray]]:
    """Hand the seeds out into ``folder/hand`` and let the simulated annotator label them."""
    manifest = sample_for_annotation(backend, seeds, folder / "hand")
    simulate_annotation(folder / "hand", folder / "drawn", annotator, "car")
    masks = {sid: np.asarray(Image.open(folder / "drawn" / f"{sid}.png")) for sid in manifest["id"]}
    return load_labels(folder / "drawn" / "labels.yaml"), masks


def _decoded(result: list[dict], labels: LabelSet, shape) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    for r in result:
        mask[rle_to_mask(r["value"]["rle"], r["original_height"], r["original_width"])] = \
            labels.names.index(r["value"]["brushlabels"][0])
    return mask


def test_round_trip_and_an_active_learning_round_with_pre_annotations(server, toy, tmp_path, monkeypatch):
    backend, annotator = toy
    monkeypatch.setenv("LABEL_STUDIO_URL", server["url"])
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", server["token"])
    client = LabelStudio(server["url"], server["token"])
    labels, drawn = _simulated(backend, annotator, range(6), tmp_path / "round1")
    title = "toy-car annotations"
    assert push(client, tmp_path / "round1" / "hand", labels, title) == \
        {"project": find_project(client, title)["id"], "created": 6, "predictions": 0, "skipped": 0}
    project = find_project(client, title)
    assert project["parsed_label_config"]["label"]["labels"] == list(labels.names[1:])
    _draw(client, project["id"], drawn, labels)

    assert main(["annotate", "pull", "--project", title, "--labels", str(tmp_path / "round1" / "drawn" / "labels.yaml"),
                 "--checkpoint", str(CAR), "--out", str(tmp_path / "pulled")]) == 0
    aset = import_annotations(tmp_path / "pulled", backend, tmp_path / "annotations.h5", expected_count=6)
    assert aset.labels == labels and sorted(aset.ids) == sorted(drawn)
    for sid, mask in zip(aset.ids, aset.masks):
        np.testing.assert_array_equal(mask, drawn[sid])  # pixel for pixel what the annotator drew

    extract_features(backend, aset.ids, aset.latents, tmp_path / "features.h5", truncation=aset.truncation,
                     noise=aset.noise, expected_images=aset.images)
    kind = INTERPRETERS.get("mlp")
    data = TrainingData.from_annotations(FeatureStore.open(tmp_path / "features.h5"), load_annotation_set(
        tmp_path / "annotations.h5"))
    interpreter = kind.fit(data, kind.config_class(num_members=2, max_epochs=1, batch_size=512, eval_every=10,
                                                   patience=3, holdout_pixels=64))
    interpreter.save(tmp_path / "interpreter.safetensors")

    seeds = choose_seeds("uncertainty", candidate_seeds(0, 24, aset.seeds), 3, backend=backend,
                         interpreter=interpreter)
    assert not set(seeds) & set(aset.seeds)
    sample_for_annotation(backend, seeds, tmp_path / "round2")
    predictions = interpreter_predictions(backend, interpreter, tmp_path / "round2")
    assert main(["annotate", "push", "--samples", str(tmp_path / "round2"), "--labels",
                 str(tmp_path / "round1" / "drawn" / "labels.yaml"), "--project", title, "--checkpoint", str(CAR),
                 "--interpreter", str(tmp_path / "interpreter.safetensors")]) == 0
    tasks = {t["id"]: t["data"]["id"] for t in project_tasks(client, project["id"])}
    stored = client.request("GET", "/api/predictions/", params={"project": project["id"]})
    assert sorted(tasks[p["task"]] for p in stored) == sorted(predictions)
    for p in stored:
        want = predictions[tasks[p["task"]]]
        assert p["model_version"] == model_version(tmp_path / "interpreter.safetensors") and p["score"] == pytest.approx(want.score, rel=1e-6)
        np.testing.assert_array_equal(_decoded(p["result"], labels, want.labels.shape), want.labels)
    assert len({float(p["score"]) for p in stored}) > 1


def test_pull_reports_every_bad_task_at_once_and_writes_nothing(server, toy, tmp_path):
    backend, annotator = toy
    client = LabelStudio(server["url"], server["token"])
    labels, drawn = _simulated(backend, annotator, range(40, 44), tmp_path)
    ids = sorted(drawn)
    changed = tmp_path / "hand" / f"{ids[3]}.image.png"  # the image no longer matches its seed's render
    Image.fromarray(255 - np.asarray(Image.open(changed))).save(changed)
    push(client, tmp_path / "hand", labels, "bad tasks")
    project = find_project(client, "bad tasks")
    _draw(client, project["id"], {ids[2]: drawn[ids[2]], ids[3]: drawn[ids[3]]}, labels)
    tasks = {t["data"]["id"]: t["id"] for t in project_tasks(client, project["id"])}
    body, wheel = (np.zeros(drawn[ids[0]].shape, bool) for _ in range(2))
    body[4:20, 4:20], wheel[10:14, 0:32] = True, True
    results = [{"from_name": "label", "to_name": "image", "type": "brushlabels", "original_width": 32,
                "original_height": 32, "value": {"format": "rle", "rle": mask_to_rle(m), "brushlabels": [n]}}
               for m, n in ((body, "body"), (wheel, "wheel"), (body, "sunroof"))]
    client.request("POST", f"/api/tasks/{tasks[ids[0]]}/annotations/", json={"result": results[:2]})
    client.request("POST", f"/api/tasks/{tasks[ids[1]]}/annotations/", json={"result": results[2:]})
    out = tmp_path / "pulled"
    with pytest.raises(AnnotationError) as err:
        pull(client, "bad tasks", out, labels, backend)
    lines = err.value.problems
    assert len(lines) == 3, lines
    assert f"{ids[0]}.png (task {tasks[ids[0]]}): 64 px carry two labels (body, wheel)" in lines
    assert any(line.startswith(f"{ids[1]}.png") and "unknown label ['sunroof']" in line for line in lines)
    assert any(line.startswith(f"{ids[3]}.image.png") and "re-rendered image" in line for line in lines)
    assert f"{ids[2]}.png" not in " ".join(lines)
    unfinished = tmp_path / "unfinished"
    sample_for_annotation(backend, [50, 51], unfinished)
    push(client, unfinished, labels, "half done")
    _draw(client, find_project(client, "half done")["id"], {"s00000050": drawn[ids[2]]}, labels)
    with pytest.raises(AnnotationError, match=r"s00000051\.png \(task \d+\): unfinished task"):
        pull(client, "half done", out, labels)
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".pulled")]


def test_another_label_set_is_refused_in_one_line(server, toy, tmp_path):
    backend, _ = toy
    client = LabelStudio(server["url"], server["token"])
    sample_for_annotation(backend, [60], tmp_path / "hand")
    cars = LabelSet(("background", "body", "window", "wheel", "light"))
    push(client, tmp_path / "hand", cars, "label sets")
    objects = LabelSet(("background", "object"))
    with pytest.raises(LabelStudioError, match=r"^project 'label sets' \(id \d+\) at .* has brush labels "
                                               r"\['body', 'window', 'wheel', 'light'\], labels.yaml has \['object'\]"):
        push(client, tmp_path / "hand", objects, "label sets")
    with pytest.raises(LabelStudioError, match="has brush labels"):
        pull(client, "label sets", tmp_path / "out", objects)
    assert not (tmp_path / "out").exists()


def test_class_conditional_tasks_carry_their_class(server, tmp_path):
    client = LabelStudio(server["url"], server["token"])
    sample_for_annotation(tiny_biggan(), [3, 4], tmp_path / "hand", classes=[0, 1])
    push(client, tmp_path / "hand", LabelSet(("background", "object")), "objects")
    project = find_project(client, "objects")
    assert project["parsed_label_config"]["label"]["labels"] == ["object"]
    data = sorted((t["data"] for t in project_tasks(client, project["id"])), key=lambda d: d["id"])
    assert [(d["id"], d["class"], d["seed"], d["caption"]) for d in data] == [
        ("c0000_s00000003", "0", "3", "c0000_s00000003: class 0"), ("c0000_s00000004", "0", "4", "c0000_s00000004: class 0"),
        ("c0001_s00000003", "1", "3", "c0001_s00000003: class 1"), ("c0001_s00000004", "1", "4", "c0001_s00000004: class 1")]


def test_a_down_server_and_bad_tokens_are_one_line_errors(server, tmp_path, monkeypatch, capsys):
    down = f"http://127.0.0.1:{_free_port()}"
    with pytest.raises(LabelStudioError, match=f"^no Label Studio server answers at {down} "):
        LabelStudio(down, server["token"])
    with pytest.raises(LabelStudioError, match="rejected the personal access token .*Token is invalid"):
        LabelStudio(server["url"], server["token"][:-4] + "AAAA")
    with pytest.raises(LabelStudioError, match="refused the API key .*legacy token authentication has been disabled"):
        LabelStudio(server["url"], LEGACY_TOKEN)
    with pytest.raises(LabelStudioError, match="refused the API key .*Invalid token"):
        LabelStudio(server["url"], "not-a-token")

    (tmp_path / "labels.yaml").write_text("names: [background, object]\n")
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", server["token"])
    for url, line in ((down, f"no Label Studio server answers at {down}"),
                      (server["url"], f"no project titled 'no such project' at {server['url']}")):
        monkeypatch.setenv("LABEL_STUDIO_URL", url)
        capsys.readouterr()
        assert main(["annotate", "pull", "--project", "no such project", "--labels", str(tmp_path / "labels.yaml"),
                     "--out", str(tmp_path / "out")]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and line in err[0], err
    assert not (tmp_path / "out").exists()


def test_a_legacy_token_works_where_the_server_accepts_it(server):
    session = _login(server["url"])
    r = session.post(f"{server['url']}/api/jwt/settings", json={"legacy_api_tokens_enabled": True,
                                                                  "api_tokens_enabled": True}, timeout=30)
    assert r.ok, r.text[:300]
    client = LabelStudio(server["url"], LEGACY_TOKEN)
    assert client.request("GET", "/api/current-user/whoami")["email"] == USER


def test_the_annotate_push_rule_pushes_an_active_learning_round_with_pre_annotations(server, tmp_path):
    """The workflow's rule on the tiny project: its interpreter picks the pool's most uncertain
    samples, which land in Label Studio with that interpreter's labels."""
    make_tiny_project(tmp_path)
    update_config(tmp_path, {"tasks": {"tiny": {"annotation": {"select": "uncertainty",
                                                               "pool": {"seed_start": 100, "size": 12}}}},
                             "label_studio": {"url": server["url"]}})  # the server from the config, the key from env
    env = {**{k: v for k, v in os.environ.items() if k != "LABEL_STUDIO_URL"}, "LABEL_STUDIO_API_KEY": server["token"]}
    snakemake(tmp_path, "results/tiny/label_studio_push.json", env=env)
    done = json.loads((tmp_path / "results" / "tiny" / "label_studio_push.json").read_text())
    assert {k: done[k] for k in ("created", "predictions", "skipped")} == {"created": 4, "predictions": 4, "skipped": 0}
    client = LabelStudio(server["url"], server["token"])
    tasks = project_tasks(client, find_project(client, "labelfactory tiny")["id"])
    assert sorted(int(t["data"]["seed"]) for t in tasks) == sorted(
        int(p.name[1:9]) for p in (tmp_path / "results" / "tiny" / "for_annotation").glob("*.image.png"))
    assert all(100 <= int(t["data"]["seed"]) < 112 for t in tasks)
    stored = client.request("GET", "/api/predictions/", params={"project": done["project"]})
    assert len(stored) == 4 and all(p["model_version"].startswith("interpreter-") for p in stored)


# --- keypoints ---------------------------------------------------------------------------
CAR_POINTS = KeypointSpec(("front_wheel", "back_wheel", "roof"), flip_pairs=(("front_wheel", "back_wheel"),))


def _point(name: str, x: float, y: float, size: int = 32) -> dict:
    """A keypoint result as Label Studio's editor stores a click on pixel (row y, column x)'s
    centre: percent of the image's width and height from its top-left corner."""
    return {"from_name": "keypoint", "to_name": "image", "type": "keypointlabels", "original_width": size,
            "original_height": size, "image_rotation": 0,
            "value": {"x": (x + 0.5) / size * 100, "y": (y + 0.5) / size * 100, "width": 0.6, "keypointlabels": [name]}}


def _annotate(client: LabelStudio, project_id: int, results: dict[str, list[dict]]) -> dict[str, int]:
    """Submit ``results`` by sample id through the API, as the editor does; the task ids by sample id."""
    tasks = {t["data"]["id"]: t["id"] for t in project_tasks(client, project_id)}
    for sid, result in results.items():
        client.request("POST", f"/api/tasks/{tasks[sid]}/annotations/", json={"result": result, "was_cancelled": False})
    return tasks


def test_keypoints_are_placed_beside_the_brushes_and_pulled_into_keypoint_files(server, toy, tmp_path):
    backend, annotator = toy
    client = LabelStudio(server["url"], server["token"])
    car, drawn = _simulated(backend, annotator, range(70, 72), tmp_path)
    labels = LabelSet(car.names, car.ignore_index, CAR_POINTS)
    push(client, tmp_path / "hand", labels, "car keypoints")
    project = find_project(client, "car keypoints")
    config = project["parsed_label_config"]
    assert config["label"]["labels"] == list(car.names[1:]) and config["keypoint"]["labels"] == list(CAR_POINTS.names)
    a, b = sorted(drawn)
    brushes = {sid: prediction_result(Prediction(drawn[sid], 0.0), labels) for sid in drawn}
    _annotate(client, project["id"], {a: brushes[a] + [_point("front_wheel", 3, 20), _point("roof", 15.25, 4)],
                                      b: brushes[b]})  # b: no keypoint placed, all v = 0
    pull(client, "car keypoints", tmp_path / "pulled", labels, backend)
    assert load_labels(tmp_path / "pulled" / "labels.yaml") == labels
    points = load_keypoints(tmp_path / "pulled", [a, b], CAR_POINTS, 32).keypoints
    np.testing.assert_allclose(points, [[[3, 20, 2], [0, 0, 0], [15.25, 4, 2]], np.zeros((3, 3))], atol=1e-4)
    aset = import_annotations(tmp_path / "pulled", backend, tmp_path / "annotations.h5")
    for sid, mask in zip(aset.ids, aset.masks):
        np.testing.assert_array_equal(mask, drawn[sid])
    np.testing.assert_allclose(aset.keypoints.subset([a]).keypoints[0], points[0], atol=1e-4)


def test_a_keypoint_only_project_pulls_keypoints_without_masks_and_names_every_bad_task(server, toy, tmp_path,
                                                                                        monkeypatch):
    backend, _ = toy
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", server["token"])
    client = LabelStudio(server["url"], server["token"])
    manifest = sample_for_annotation(backend, range(80, 85), tmp_path / "hand")
    ids = list(manifest["id"])
    labels = LabelSet(("background", "car"), keypoints=CAR_POINTS)
    push(client, tmp_path / "hand", labels, "points only", masks=False)
    project = find_project(client, "points only")
    assert set(project["parsed_label_config"]) == {"keypoint"}  # no brushes
    body = np.zeros((32, 32), bool)
    body[4:20, 4:20] = True
    tasks = _annotate(client, project["id"], {
        ids[0]: [_point("front_wheel", 0, 31), _point("back_wheel", 30.5, 29), _point("roof", 16, 2)],
        ids[1]: [_point("roof", 16, 2), _point("roof", 17, 3), _point("sunroof", 9, 9)],
        ids[2]: [_point("roof", 31.5, 2)],  # at the right border: outside the last pixel
        ids[3]: [{"from_name": "label", "to_name": "image", "type": "brushlabels", "original_width": 32,
                  "original_height": 32, "value": {"format": "rle", "rle": mask_to_rle(body), "brushlabels": ["car"]}}],
    })  # ids[4]: unfinished
    out = tmp_path / "pulled"
    with pytest.raises(AnnotationError) as err:
        pull(client, "points only", out, labels, backend, masks=False)
    lines = err.value.problems
    assert sorted(lines) == sorted([
        (f"{ids[1]}.keypoints.json (task {tasks[ids[1]]}): unknown keypoint ['sunroof'] (keypoints of labels.yaml: "
         "['front_wheel', 'back_wheel', 'roof'])"),
        f"{ids[1]}.keypoints.json (task {tasks[ids[1]]}): keypoint 'roof' placed 2 times (place each once)",
        f"{ids[2]}.keypoints.json (task {tasks[ids[2]]}): keypoint 'roof' at (31.5, 2.0) lies outside the 32x32 image",
        f"{ids[3]}.keypoints.json (task {tasks[ids[3]]}): a 'brushlabels' result is not a keypoint",
        f"{ids[4]}.keypoints.json (task {tasks[ids[4]]}): unfinished task (no submitted annotation)"]), lines
    assert not out.exists()

    sample_for_annotation(backend, [80], tmp_path / "again")  # the first sample alone, in a project of its own
    (tmp_path / "labels.yaml").write_text(f"names: [background, car]\nkeypoints: {json.dumps(CAR_POINTS.as_dict())}\n")
    assert main(["annotate", "push", "--samples", str(tmp_path / "again"), "--labels", str(tmp_path / "labels.yaml"),
                 "--project", "points again", "--no-masks", "--url", server["url"]]) == 0
    _annotate(client, find_project(client, "points again")["id"],
              {ids[0]: [_point("front_wheel", 0, 31), _point("back_wheel", 30.5, 29)]})
    assert main(["annotate", "pull", "--project", "points again", "--labels", str(tmp_path / "labels.yaml"),
                 "--checkpoint", str(CAR), "--out", str(out), "--no-masks", "--url", server["url"]]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{ids[0]}.image.png", f"{ids[0]}.keypoints.json", "labels.yaml", "manifest.csv"])  # no mask
    np.testing.assert_allclose(load_keypoints(out, [ids[0]], CAR_POINTS, 32).keypoints[0],
                               [[0, 31, 2], [30.5, 29, 2], [0, 0, 0]], atol=1e-4)
    aset = import_annotations(out, backend, tmp_path / "points.h5", masks=False)
    assert aset.ids == [ids[0]] and (aset.masks == labels.ignore_index).all()


def test_keypoint_projects_refuse_another_keypoint_set_and_keypoints_only_without_keypoints(server, toy, tmp_path):
    backend, _ = toy
    client = LabelStudio(server["url"], server["token"])
    sample_for_annotation(backend, [90], tmp_path / "hand")
    labels = LabelSet(("background", "car"), keypoints=CAR_POINTS)
    push(client, tmp_path / "hand", labels, "point sets")
    other = LabelSet(labels.names, keypoints=KeypointSpec(("nose",)))
    with pytest.raises(LabelStudioError, match=r"^project 'point sets' \(id \d+\) at .* has keypoint labels "
                                               r"\['front_wheel', 'back_wheel', 'roof'\], labels.yaml has \['nose'\]"):
        pull(client, "point sets", tmp_path / "out", other)
    with pytest.raises(LabelStudioError, match=r"has brush labels \['car'\], labels.yaml has \[\]"):
        push(client, tmp_path / "hand", labels, "point sets", masks=False)
    with pytest.raises(ValueError, match="keypoint-only project .* needs keypoints: labels.yaml names none"):
        pull(client, "point sets", tmp_path / "out", LabelSet(labels.names), masks=False)
    assert not (tmp_path / "out").exists()


# --- the brush RLE codec against the SDK's converter -------------------------------------
SDK_SCRIPT = """
import json, sys
import numpy as np
from label_studio_sdk.converter.brush import decode_rle, encode_rle
arrays = np.load(sys.argv[1])
ours = json.load(open(sys.argv[2]))
out = {"encoded": [list(map(int, encode_rle(arrays[k]))) for k in arrays.files],
       "decoded": [decode_rle(rle).tolist() for rle in ours]}
json.dump(out, open(sys.argv[3], "w"))
"""


@needs_label_studio
def test_brush_rle_agrees_with_the_sdk_converter(tmp_path):
    rng = np.random.default_rng(0)
    masks = [rng.random((13, 21)) < 0.5, np.zeros((8, 8), bool), np.ones((8, 9), bool)]
    big = np.zeros((140, 140), bool)  # runs longer than 2**16 values, the widest length field
    big[70:72, 3:9] = True
    masks.append(big)
    values = {f"m{i}": np.repeat(np.where(m, 255, 0).astype(np.uint8)[..., None], 4, -1).reshape(-1)
              for i, m in enumerate(masks)}
    values["levels"] = rng.integers(0, 4, 500).astype(np.uint8) * 60  # several values, short runs
    np.savez(tmp_path / "arrays.npz", **values)
    ours = [encode_rle(v) for v in values.values()]
    (tmp_path / "ours.json").write_text(json.dumps(ours))
    (tmp_path / "sdk.py").write_text(SDK_SCRIPT)
    subprocess.run([str(LS_VENV / "bin" / "python"), str(tmp_path / "sdk.py"), str(tmp_path / "arrays.npz"),
                    str(tmp_path / "ours.json"), str(tmp_path / "sdk.json")], check=True, timeout=120)
    sdk = json.loads((tmp_path / "sdk.json").read_text())
    for v, by_sdk, decoded_by_sdk in zip(values.values(), sdk["encoded"], sdk["decoded"]):
        np.testing.assert_array_equal(decode_rle(by_sdk), v)  # we read the SDK's code (its literal records too)
        np.testing.assert_array_equal(decoded_by_sdk, v)  # the SDK reads ours
    for m, v in zip(masks, values.values()):
        np.testing.assert_array_equal(rle_to_mask(mask_to_rle(m), *m.shape), m)
        assert mask_to_rle(m) == encode_rle(v)


def test_brush_rle_reads_literal_records_of_several_words():
    """Label Studio's editor writes runs of distinct values as one literal record; the SDK never does."""
    fields = [(7, 32), (7, 5), (2, 4), (3, 4), (7, 4), (15, 4),  # 7 bytes; run length fields of 3, 4, 8, 16 bits
              (0, 1), (0, 2), (2, 3), (5, 8), (6, 8), (7, 8),  # literal record of 3 words: 5, 6, 7
              (1, 1), (1, 2), (3, 4), (9, 8)]  # run record (4-bit length field): 9 four times
    bits = "".join(f"{value:0{width}b}" for value, width in fields)

    def packed(bits: str) -> list[int]:
        bits += "0" * (-len(bits) % 8)
        return [int(bits[i : i + 8], 2) for i in range(0, len(bits), 8)]

    np.testing.assert_array_equal(decode_rle(packed(bits)), [5, 6, 7, 9, 9, 9, 9])
    with pytest.raises(ValueError, match="ends in the middle"):
        decode_rle(packed(bits[:-16]))
