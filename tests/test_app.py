"""app.ipynb without a browser: its code runs in a Jupyter kernel, away from the repository, on
every kind of upload a person may try (test_app_browser.py drives the real page)."""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError
from PIL import Image

from conftest import LANDMARKS10, PHONE_HEIC, REPO
from src.export import load_exported
from src.images import load_rgb
from src.predictor import predict_photo
from src.preprocessing import square_uint8

PHOTO = next(iter(sorted(LANDMARKS10.glob("test/07.*/*.jpg"))), None)  # Petronas Towers
FOREST = next(iter(sorted((LANDMARKS10.parent / "non_landmarks" / "forest").glob("*.jpg"))), None)  # no landmark at all
PARITY = ["photo.jpg", "gray.jpg", "cmyk.jpg", "rgba.png", "palette.png", "deep16.png", "phone.jpg", "phone.heic",
          "panorama.jpg"]
STRIP = (20_000, 2)  # a 200-byte PNG that added 0.7 GB to the app's memory before its aspect ratio was checked


def run_app(workdir: Path, models_dir: Path, code: str, project_dir: Path = REPO, examples_dir: Path | None = None) -> dict:
    """Execute app.ipynb in a fresh kernel in ``workdir`` (away from the repository; ``project_dir`` is where it
    finds the ``src`` package), then ``code``; return what it prints as JSON."""
    notebook = nbformat.read(REPO / "app.ipynb", as_version=4)
    parameters = next(i for i, cell in enumerate(notebook.cells) if "parameters" in cell.metadata.get("tags", []))
    notebook.cells.insert(parameters + 1, nbformat.v4.new_code_cell(
        f"MODELS_DIR = {str(models_dir)!r}\nPROJECT_DIR = {str(project_dir)!r}\n"
        f"EXAMPLES_DIR = {str(examples_dir or workdir / 'no_examples')!r}"))
    notebook.cells.append(nbformat.v4.new_code_cell("import json, datetime\n" + code))
    NotebookClient(notebook, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(workdir)}}).execute()
    printed = "".join(output.get("text", "") for output in notebook.cells[-1].outputs
                      if output.output_type == "stream" and output.name == "stdout")
    return json.loads(printed.strip().splitlines()[-1])


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def uploads(tmp_path: Path) -> dict[str, bytes]:
    """Every awkward upload: odd modes, a sideways phone photo, damaged files and bombs."""
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (90, 160, 3), dtype=np.uint8))
    sideways = Image.new("RGB", (200, 100), (30, 90, 200))
    exif = sideways.getexif()
    exif[0x0112] = 6  # stored landscape, shown portrait (rotate 90° clockwise)
    real = PHOTO.read_bytes() if PHOTO else encoded(rgb, "JPEG")
    return {
        "photo.jpg": real,
        "forest.jpg": FOREST.read_bytes() if FOREST else encoded(rgb, "JPEG"),
        "gray.jpg": encoded(rgb.convert("L"), "JPEG"),
        "cmyk.jpg": encoded(rgb.convert("CMYK"), "JPEG"),
        "rgba.png": encoded(rgb.convert("RGBA"), "PNG"),
        "palette.png": encoded(rgb.convert("P"), "PNG", transparency=0),
        "deep16.png": encoded(Image.fromarray(np.full((64, 64), 30000, dtype=np.uint16)), "PNG"),
        "phone.jpg": encoded(sideways, "JPEG", exif=exif.tobytes()),
        "phone.heic": PHONE_HEIC.read_bytes(),  # turned by HEIF and by EXIF, as iPhones store it
        "panorama.jpg": encoded(rgb.resize((2000, 100)), "JPEG"),  # 20:1, a real stitched panorama
        "strip.png": encoded(Image.new("RGB", STRIP), "PNG")[:60],  # cut after its header: it must not be decoded
        "truncated.jpg": real[: len(real) // 2],
        "notes.jpg": b"not a photo at all",
        "empty.png": b"",
        "bomb.png": encoded(Image.new("1", (11_000, 11_000)), "PNG"),  # 121 MP: over the 100 MP limit
        "huge_bomb.png": encoded(Image.new("1", (15_000, 15_000)), "PNG"),  # 225 MP: PIL refuses outright
    }


@pytest.fixture(scope="module")
def app_answers(tmp_path_factory: pytest.TempPathFactory) -> dict:
    workdir = tmp_path_factory.mktemp("app")
    files = uploads(workdir)
    for name, data in files.items():
        (workdir / name).write_bytes(data)
    code = f"""
names = {list(files)!r}
now = datetime.datetime.now(datetime.timezone.utc)
app.upload.value = [{{"name": n, "type": "", "size": 0, "content": memoryview(open(n, "rb").read()), "last_modified": now}}
                    for n in names]
answers = {{}}
answers["summary"] = [child.value for child in app.results.children if "landmark-summary" in child._dom_classes]
for name, child in zip(names, [c for c in app.results.children if "landmark-summary" not in c._dom_classes]):
    if "landmark-error" in child._dom_classes:
        answers[name] = {{"error": child.value}}
    else:
        image = read_for(app.model, open(name, "rb").read(), name)
        prediction = answer(app.model, image)
        answers[name] = {{"size": image.size, "mode": image.mode, "mean": float(np.asarray(image).mean()),
                         "top5": prediction.ranking, "score": prediction.known_score, "known": prediction.known,
                         "images": sum(part.value.count("<img") for part in child.children[1].children),
                         "alts": [part.value.count(' alt="') for part in child.children[1].children],
                         "why": child.children[1].children[2].value if len(child.children[1].children) > 2 else "",
                         "verdict": child.children[0].value, "classes": sorted(child._dom_classes)}}
answers["status"] = app.status.value
answers["known"] = [app.known.get_title(0), app.known.children[0].value]
answers["models"] = [value for _, value in app.picker.options]

import resource
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
strip_view = model_view(app.model, Image.new("RGB", {STRIP!r}))  # read_for refuses it; model_view must cope anyway
answers["strip_view"] = {{"size": strip_view.size,
                         "extra_mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak) / 1024}}

photo = read_for(app.model, open("photo.jpg", "rb").read(), "photo.jpg")
views = {{}}
for size in [(1600, 1200), (300, 1333), (1500, 100), (100, 77)]:  # up to 16:1, resize_and_crop is exact
    image = photo.resize(size, Image.Resampling.BICUBIC)
    views[f"image_{{size[0]}}x{{size[1]}}"] = np.asarray(image)
    views[f"view_{{size[0]}}x{{size[1]}}"] = np.asarray(model_view(app.model, image))
np.savez("views.npz", **views)
np.savez("read.npz", **{{n: np.asarray(read_for(app.model, open(n, "rb").read(), n)) for n in {PARITY!r}}})
answers["view_size"] = int(app.model.resize_size)
print(json.dumps(answers))
"""
    answers = run_app(workdir, REPO / "checkpoints", code)
    answers["views"] = dict(np.load(workdir / "views.npz"))
    answers["read"] = dict(np.load(workdir / "read.npz"))
    answers["workdir"] = workdir
    return answers


def test_a_photo_gets_its_ranked_top5_and_its_why_map(app_answers: dict) -> None:
    answer = app_answers["photo.jpg"]
    ranking = answer["top5"]
    assert len(ranking) == 5 and [p for _, p in ranking] == sorted((p for _, p in ranking), reverse=True)
    if answer["known"]:  # the photo and its "why" map, or a sentence saying no part decides it
        assert answer["images"] == 2 or (answer["images"] == 1 and "no single part of the photo decides it" in answer["why"])
    assert all(alts == images for alts, images in zip(answer["alts"], [1, 0, answer["images"] - 1]))  # every image has alt text


@pytest.mark.skipif(PHOTO is None, reason=f"the real photos are absent ({LANDMARKS10}): photo.jpg is generated noise")
def test_a_real_photo_gets_its_landmark_first_with_its_place(app_answers: dict) -> None:
    answer = app_answers["photo.jpg"]
    assert answer["top5"][0][0] == "Petronas Towers" and "landmark-known" in answer["classes"]
    assert "<b>Petronas Towers</b>" in answer["verdict"] and "Kuala Lumpur, Malaysia" in answer["verdict"]
    assert "https://www.openstreetmap.org/?mlat=3.15" in answer["verdict"] and "101.71" in answer["verdict"]


@pytest.mark.skipif(FOREST is None, reason="the real non-landmark photos are absent: forest.jpg is generated noise")
def test_a_photo_of_no_known_landmark_is_unknown_with_the_closest_guess_in_small_print(app_answers: dict) -> None:
    answer = app_answers["forest.jpg"]
    assert "landmark-unknown" in answer["classes"]
    assert "<b>Not sure</b> — this doesn't look like any of the 10 landmarks I know" in answer["verdict"]
    assert "<details" in answer["verdict"] and f"Closest guess: {answer['top5'][0][0]}" in answer["verdict"]
    assert "openstreetmap" not in answer["verdict"] and "known score" not in answer["verdict"].split("<details")[0].lower()
    assert answer["images"] == 1 and answer["why"] == ""  # no map explaining a guess the app just rejected


def test_the_app_lists_the_landmarks_it_knows_with_their_places(app_answers: dict) -> None:
    title, listing = app_answers["known"]
    assert title == "Landmarks I know (10)"
    assert listing.count("<li>") == 10 and "Colosseum" in listing and "Rome, Italy" in listing
    assert "Museu Nacional d&#x27;Art de Catalunya" in listing and "Casa Batlló" in listing  # display names


@pytest.mark.parametrize("name", ["gray.jpg", "cmyk.jpg", "rgba.png", "palette.png", "deep16.png"])
def test_every_image_mode_is_classified_as_rgb(app_answers: dict, name: str) -> None:
    answer = app_answers[name]
    assert "error" not in answer, answer
    assert answer["mode"] == "RGB" and len(answer["top5"]) == 5


def test_16_bit_photos_are_scaled_not_clipped_to_white(app_answers: dict) -> None:
    assert app_answers["deep16.png"]["mean"] == pytest.approx(30000 / 65535 * 255, abs=1)


def test_a_sideways_phone_photo_is_turned_upright(app_answers: dict) -> None:
    assert app_answers["phone.jpg"]["size"] == [100, 200]
    assert app_answers["phone.heic"]["size"] == [20, 60]


def test_a_panorama_is_classified(app_answers: dict) -> None:
    answer = app_answers["panorama.jpg"]
    assert answer["size"] == [2000, 100] and len(answer["top5"]) == 5


def test_a_strip_is_refused_from_its_header_with_its_size_and_the_limit(app_answers: dict) -> None:
    error = app_answers["strip.png"]["error"]
    assert "strip.png" in error and "20000x2" in error and "50:1" in error


def test_the_model_view_resamples_only_its_centre_square(app_answers: dict) -> None:
    # Resizing the whole 20000x2 strip first made a 1,280,000-pixel-wide image (0.5 GB per view).
    answer = app_answers["strip_view"]
    assert answer["size"][0] == answer["size"][1] and answer["extra_mb"] < 100, answer


def test_the_model_view_matches_the_package_resize_and_crop(app_answers: dict) -> None:
    """The square the app shows the "why" map on is the one src.preprocessing's resize-and-crop gives the model."""
    views, size = app_answers["views"], app_answers["view_size"]
    for key in [k for k in views if k.startswith("image_")]:
        image = torch.from_numpy(views[key]).permute(2, 0, 1)
        expected = square_uint8(image, size).permute(1, 2, 0).numpy().astype(int)
        assert np.abs(views[key.replace("image_", "view_")].astype(int) - expected).max() <= 1, key


@pytest.mark.parametrize("name", PARITY)
def test_the_app_reads_every_awkward_photo_as_the_package_does(app_answers: dict, name: str) -> None:
    """Parity: an upload's bytes give the pixels src.images.load_rgb reads from its file for the model."""
    size = app_answers["view_size"]
    expected = np.asarray(load_rgb(app_answers["workdir"] / name, (size, size)))
    assert app_answers["read"][name].shape == expected.shape and np.array_equal(app_answers["read"][name], expected), name


@pytest.mark.parametrize("name, message", [
    ("truncated.jpg", "corrupt or truncated"),
    ("notes.jpg", "not an image"),
    ("empty.png", "it is empty"),
    ("bomb.png", "too large"),
    ("huge_bomb.png", "too large"),
    ("strip.png", "aspect ratio"),
])
def test_bad_uploads_get_a_message_naming_the_file(app_answers: dict, name: str, message: str) -> None:
    error = app_answers[name]["error"]
    assert name in error and message in error


def test_the_app_keeps_working_after_bad_uploads(app_answers: dict) -> None:
    assert "10 photo(s) classified" in app_answers["status"] and "6 could not be read" in app_answers["status"]


def test_the_model_picker_lists_exported_models_only(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(REPO / "checkpoints" / "original_exported.pt", models / "mine_exported.pt")
    torch.save({"state_dict": {}}, models / "training_checkpoint.pt")
    (models / "broken.pt").write_bytes(b"junk")
    answer = run_app(tmp_path, models, 'print(json.dumps({"models": [v for _, v in app.picker.options], "status": app.status.value}))')
    assert answer["models"] == ["mine_exported.pt"]
    assert "10 landmarks" in answer["status"]


def test_without_any_model_the_app_says_what_to_do(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    app_code = "app.widget()"
    answer = run_app(tmp_path, tmp_path / "empty", f'print(json.dumps({{"status": app.status.value, '
                                                   f'"tabs": [{app_code}.get_title(i) for i in range(2)]}}))')
    assert "No exported model" in answer["status"]
    assert answer["tabs"] == ["Identify photos", "Teach a landmark"]


@pytest.mark.parametrize("name", PARITY + ["forest.jpg"])
def test_the_app_and_the_command_line_give_a_photo_the_same_answer(app_answers: dict, name: str) -> None:
    """Parity: the app's answer to an upload is predict_photo's (``python -m src predict``) for its file."""
    cli = predict_photo(load_exported(REPO / "checkpoints" / "transfer_exported.pt"), app_answers["workdir"] / name)
    app = app_answers[name]
    assert [n for n, _ in app["top5"]] == [n for n, _ in cli.ranking] and app["known"] == cli.known, name
    assert np.allclose([p for _, p in app["top5"]], [p for _, p in cli.ranking], atol=1e-6)
    assert abs(app["score"] - cli.known_score) < 1e-6


def test_the_app_reads_photos_with_the_light_part_of_src_only() -> None:
    """The app imports src's photo reading and answering, which load neither the training stack nor the data code."""
    notebook = nbformat.read(REPO / "app.ipynb", as_version=4)
    code = "\n".join(cell.source for cell in notebook.cells if cell.cell_type == "code")
    modules = {line.split()[1] for line in code.splitlines() if line.startswith("from src")}
    assert modules == {"src.allocator", "src.answer", "src.defaults", "src.export", "src.images", "src.places"}, modules
    probe = ("import sys; import " + ", ".join(sorted(modules)) + "; print(sorted(m for m in sys.modules if m.split('.')[0] in "
             "('torchvision', 'pytorch_ood', 'matplotlib', 'timm') or m in ('src.data', 'src.decoding', 'src.new_landmarks')))")
    loaded = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "[]", loaded


def test_choosing_the_same_photo_again_gives_a_fresh_answer(tmp_path: Path) -> None:
    (tmp_path / "photo.jpg").write_bytes(PHOTO.read_bytes() if PHOTO else encoded(Image.new("RGB", (90, 60), "grey"), "JPEG"))
    code = """
now = datetime.datetime.now(datetime.timezone.utc)
choose = lambda: [{"name": "photo.jpg", "type": "", "size": 0, "content": memoryview(open("photo.jpg", "rb").read()),
                   "last_modified": now}]
answered = []
shown = app.show_files
app.show_files = lambda files: answered.append(len(files)) or shown(files)
app.upload.value = choose()
first = app.results.children
app.upload.value = choose()  # the same photo, chosen again
print(json.dumps({"answered": answered, "fresh": app.results.children[0] is not first[0], "emptied": app.upload.value == ()}))
"""
    answer = run_app(tmp_path, REPO / "checkpoints", code)
    assert answer == {"answered": [1, 1], "fresh": True, "emptied": True}


def test_a_page_opened_on_a_kernel_started_earlier_lists_the_models_saved_since(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(REPO / "checkpoints" / "transfer_exported.pt", models / "transfer_exported.pt")
    code = f"""
import shutil
loads = []
opened = open_export
globals()["open_export"] = lambda path: loads.append(Path(path).name) or opened(path)
before = list(app.picker.options)
shutil.copy({str(REPO / "checkpoints" / "original_exported.pt")!r}, {str(models)!r})  # taught elsewhere meanwhile
app.list_models_again()
print(json.dumps({{"before": len(before), "after": [name for _, name in app.picker.options], "in_use": app.picker.value,
                  "loaded_again": loads}}))
"""
    answer = run_app(tmp_path, models, code)
    assert answer == {"before": 1, "after": ["original_exported.pt", "transfer_exported.pt"],
                      "in_use": "transfer_exported.pt", "loaded_again": []}


def test_the_why_map_is_scaled_to_its_strongest_part_or_says_no_part_matters(tmp_path: Path) -> None:
    code = """
view = Image.new("RGB", (100, 100), (128, 128, 128))
weak, strong = np.full((7, 7), 0.01), np.zeros((7, 7))
strong[3, 3] = 0.08  # hiding one part removes 8 % of the probability: that part is drawn at full strength
lit = np.asarray(why_overlay(view, strong), dtype=float).mean(axis=2)
print(json.dumps({"weak": why_overlay(view, weak) is None, "centre": lit[50, 50], "corner": lit[2, 2],
                  "caption": why_caption("Colosseum", 0.08), "nothing": why_nothing("Colosseum")}))
"""
    answer = run_app(tmp_path, REPO / "checkpoints", code)
    assert answer["weak"]  # no part matters: a sentence instead of a map that looks like the photo
    assert answer["centre"] > 120 and answer["corner"] < 0.5 * 128  # the strongest part lit, the rest dimmed
    assert "hiding it removes 8%" in answer["caption"] and "no single part of the photo decides it" in answer["nothing"]


TEACH_PHOTOS = sorted((LANDMARKS10.parent / "new_landmarks" / "10.India_Gate").glob("*.jpg"))[:8]
TRAINED_AGAINST = LANDMARKS10.parent / "new_landmarks" / "09.Humayuns_Tomb"  # a negatives folder of the shipped model


def teach_uploads(folder: Path) -> list[str]:
    """7 photos of a landmark the shipped model does not know, and a file that is not a photo."""
    rng = np.random.default_rng(0)
    names = []
    for i in range(7):
        data = TEACH_PHOTOS[i].read_bytes() if len(TEACH_PHOTOS) == 8 else \
            encoded(Image.fromarray(rng.integers(0, 256, (80, 100, 3), dtype=np.uint8)), "JPEG")
        (folder / f"gate{i}.jpg").write_bytes(data)
        names.append(f"gate{i}.jpg")
    (folder / "notes.jpg").write_bytes(b"not a photo")
    return names + ["notes.jpg"]


def test_teach_a_landmark_saves_a_new_model_with_its_place_and_switches_to_it(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(REPO / "checkpoints" / "transfer_exported.pt", models / "transfer_exported.pt")
    names = teach_uploads(tmp_path)
    probe = TEACH_PHOTOS[7] if len(TEACH_PHOTOS) == 8 else tmp_path / "gate0.jpg"
    code = f"""
now = datetime.datetime.now(datetime.timezone.utc)
upload = lambda names: [{{"name": n, "type": "", "size": 0, "content": memoryview(open(n, "rb").read()), "last_modified": now}}
                        for n in names]
answers = {{}}
teach.name.value = "India Gate"
teach.latitude.value = "95"
teach.teach()
answers["bad_latitude"] = teach.status.value
teach.latitude.value, teach.longitude.value, teach.city.value, teach.country.value = "28.6129", "77.2295", "New Delhi", "India"
teach.teach()
answers["no_photos"] = teach.status.value
answers["loaded_before_the_form_was_right"] = "src.new_landmarks" in sys.modules
teach.photos.value = upload({names[:2]!r})
answers["few"] = teach.status.value
teach.photos.value = upload({names!r})
shown = []
teach.status.observe(lambda change: shown.append(change["new"]), names="value")
teach.teach()
answers["steps"] = [text for text in shown if "step " in text]
answers["status"] = teach.status.value
answers["picker"], answers["options"] = app.picker.value, [value for _, value in app.picker.options]
answers["names"], answers["place"] = list(app.model.class_names), app.model.places["India Gate"].to_dict()
answers["probe"] = answer(app.model, read_for(app.model, open({str(probe)!r}, "rb").read(), "probe.jpg")).ranking[0][0]
answers["known"] = app.known.get_title(0)
answers["saved"] = sorted(path.name for path in app.models_dir.iterdir())
answers["remove_shown"] = app.remove.layout.display != "none"
app.remove.click()
answers["asked"] = app.status.value
app.remove.click()
answers["after_removal"] = [app.picker.value, [value for _, value in app.picker.options], app.remove.layout.display]
if {TRAINED_AGAINST.is_dir()!r}:  # its held-out photos, taught under another name than the folder's
    from src.location import split_negatives
    teach.name.value = "Tomb of Humayun"
    teach.latitude.value = teach.longitude.value = teach.city.value = teach.country.value = ""
    teach.photos.value = upload([str(path) for path in split_negatives(Path({str(TRAINED_AGAINST)!r}))[1][:5]])
    teach.teach()
    answers["alike"] = teach.status.value
print(json.dumps(answers))
"""
    answers = run_app(tmp_path, models, code)
    assert "Latitude 95.0 is outside -90 to 90" in answers["bad_latitude"]
    assert "Choose a few photos of India Gate" in answers["no_photos"]
    assert not answers["loaded_before_the_form_was_right"]  # the form is checked before the training code loads
    assert "2 photo(s) chosen — 5 or more recognise a landmark more reliably" in answers["few"]
    assert [step.split("step ")[1][:6] for step in answers["steps"]] == ["1 of 4", "2 of 4", "3 of 4", "4 of 4"]
    assert all(re.search(r"\(\d+ s\)", step) for step in answers["steps"])  # with the time so far
    assert "Learned <b>India Gate</b> from 7 photo(s)" in answers["status"] and "notes.jpg" in answers["status"]
    assert answers["picker"] == "transfer_exported+india_gate.pt" and answers["options"] == sorted(answers["options"])
    assert {"transfer_exported+india_gate.pt", "transfer_exported+india_gate.json"} <= set(answers["saved"])
    assert answers["names"][-1] == "India Gate" and answers["known"] == f"Landmarks I know ({len(answers['names'])})"
    assert answers["place"]["latitude"] == 28.6129 and answers["place"]["city"] == "New Delhi"
    if len(TEACH_PHOTOS) == 8:
        assert answers["probe"] == "India Gate"  # a photo of it that was not taught
    assert answers["remove_shown"] and "will be deleted" in answers["asked"]  # a taught model, removed on a second click
    assert answers["after_removal"] == ["transfer_exported.pt", ["transfer_exported.pt"], "none"]
    assert not (models / "transfer_exported+india_gate.pt").exists() and not (models / "transfer_exported+india_gate.json").exists()
    if TRAINED_AGAINST.is_dir():  # the user is told the photos look like a landmark it was trained against
        assert "Learned <b>Tomb of Humayun</b>" in answers["alike"]
        assert "look most like the negatives folder &#x27;Humayuns Tomb&#x27;" in answers["alike"]


def test_without_the_package_the_app_says_what_it_needs(tmp_path: Path) -> None:
    with pytest.raises(CellExecutionError, match="needs the project's src package"):
        run_app(tmp_path, REPO / "checkpoints", 'print("{}")', project_dir=tmp_path)


def test_example_photos_are_one_click_away_and_named_after_their_files(tmp_path: Path) -> None:
    code = """
buttons = [child for child in app.examples.children if isinstance(child, widgets.Button)]
buttons[0].click()
result = [c for c in app.results.children if "landmark-result" in c._dom_classes][0]
print(json.dumps({"buttons": [b.description for b in buttons], "status": app.status.value,
                  "verdict": result.children[0].value + "".join(part.value for part in result.children[1].children)}))
"""
    answer = run_app(tmp_path, REPO / "checkpoints", code, examples_dir=REPO / "static_images" / "examples")
    assert answer["buttons"] == ["Colosseum", "Haleakala", "Petronas Towers"]
    assert "<b>Colosseum</b>" in answer["verdict"] and "colosseum.jpg" in answer["verdict"]
    assert "1 photo(s) classified by transfer_exported.pt" in answer["status"]
    sources = (REPO / "static_images" / "examples" / "README.md").read_text()
    assert all(f"| `{photo.name}` |" in sources for photo in (REPO / "static_images" / "examples").glob("*.jpg"))


def test_the_app_page_has_a_title() -> None:
    assert nbformat.read(REPO / "app.ipynb", as_version=4).metadata["title"] == "Which landmark is this?"
