"""New landmarks from a handful of photos each, added to an exported model without retraining it.

``add_landmarks`` needs only an export with its feature memory (:mod:`src.memory`) and the new photos:

1. read each new landmark's photos (bad ones skipped with a warning) and take :data:`~src.added_fit.VIEWS` views of
   each (the photo, mirrored, two corner crops, a mirrored centre crop);
2. compute their features (:func:`combined_features`): the export's own (frozen) features, then plain ImageNet ones,
   from the export's own first stages continued with ImageNet's later ones when it has such a trunk
   (:class:`~src.shared_trunk.SharedTrunkFeatures`, :mod:`src.shared_trunk`), else from a second network
   (:class:`~src.imagenet_features.CombinedFeatures`);
3. fit one new linear row per new landmark on those features, beside the export's unchanged head
   (:func:`~src.added_fit.fit_added_rows`): class-balanced cross-entropy over old + new classes on the memory and
   the new views, and outlier exposure on the memory's negatives so that photos of no landmark
   stay unknown (but those of a negatives folder named as a new landmark: :func:`~src.added_fit.lookalike_negatives`;
   a new landmark whose photos look most like another folder's gets an :class:`AlikeFolderWarning`).
   The old classes' logits are the export's own, so what it knew is kept;
4. calibrate the unknown detector again (:class:`~src.openset.AddedLandmarksDetector`), on both kinds
   of features (each normalised apart): photos called an original landmark on the memory's validation
   photos as the new model reads them (``memory_as_added``: with a second network, a small photo read at its
   size and scaled down scores lower than read at the base's own size), compared with the new views too
   (:func:`~src.openset.nearest_detector`); photos called
   an added landmark on its support photos held out of the fit (:func:`~src.added_fit.held_out`), as an
   added landmark's new photos will be, by their top probability and how much nearer they are to the
   landmark's photos than to the memory's photos of no landmark (:func:`~src.openset.own_class_margin`).
   One threshold keeps the same share of both
   (:func:`~src.openset.unknown_threshold`, the rule of training). A photo called an added landmark must
   also be close to its photos, not just closer than to the negatives: as close in ImageNet features as
   the original landmarks' photos are to the nearest of as many of their own
   (:func:`~src.openset.similarity_floor`);
5. script an :class:`~src.export.AddedLandmarksPredictor` (the features of step 2: the original export's network
   without its detector and memory, :mod:`src.embedded_base`, and frozen ImageNet stages; the new rows; the memory
   with the new views; the new detector, which compares photos with that memory itself,
   :class:`~src.openset.RememberedPhotos`, so the file stores each photo once), which has the interface of every
   export and loads with ``torch.jit.load`` alone. A second network makes it much slower than its base, a shared trunk little
   (docs/adding-landmarks.md).

Adding again to such a model refits all added rows from its memory, so models never nest.
``bench/add_landmarks.py`` measures it (docs/adding-landmarks.md).
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from .added_fit import added_detector, fit_rows, folders_alike, lookalike_negatives
from .decoding import square_batches
from .embedded_base import embedded_base, frozen_file
from .export import AddedLandmarksPredictor, ExportView, export_view, save_scripted, torchscript_on_purpose
from .files import atomic_write
from .imagenet_features import CombinedFeatures, ImageNetFeatures
from .location import list_images
from .memory import in_batches
from .openset import RememberedPhotos
from .places import Place, display_name, place_key
from .progress import tqdm
from .shared_trunk import SharedTrunkFeatures, general_tail


class AlikeFolderWarning(UserWarning):
    """Most photos of a new landmark look like a negatives folder of another name (:func:`~src.added_fit.folders_alike`)."""


@contextlib.contextmanager
def alike_folder_notes() -> Iterator[list[str]]:
    """The messages of the :class:`AlikeFolderWarning` s raised in the block, for a caller that shows them itself (the
    command line, the app); other warnings go on as usual."""
    notes: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", AlikeFolderWarning)
        yield notes
    for warning in caught:
        if issubclass(warning.category, AlikeFolderWarning):
            notes.append(str(warning.message))
        else:
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)


STEPS = ("reading the photos and their features", "fitting the new landmarks",
         "checking them against photos of no landmark", "building the new model")


def base_of(model: torch.nn.Module | ExportView) -> ExportView:
    """The trained export adding landmarks to ``model`` builds on: ``model`` itself, or the base of a model that has
    added landmarks already (adding again refits its rows, models never nest)."""
    view = export_view(model)
    return export_view(view.base, "its base") if view.base is not None else view


def combined_features(model: torch.nn.Module | ExportView) -> CombinedFeatures | SharedTrunkFeatures:
    """The features the models that adding landmarks to ``model`` makes classify (its own, when it has added landmarks
    already): they do not depend on which landmarks are added. An export whose first stages are ImageNet's continues
    them with ImageNet's later stages (:class:`~src.shared_trunk.SharedTrunkFeatures`); any other runs a second network
    (:class:`~src.imagenet_features.CombinedFeatures`). Both hold the export's network alone (:func:`~src.embedded_base.
    embedded_base`) and frozen ImageNet stages (batch norm folded in)."""
    view = export_view(model)
    if view.base is not None:
        return view.module.combined
    if view.memory_features.numel() == 0 or view.general_memory.numel() == 0:
        raise ValueError("this export keeps no feature memory with ImageNet features: export it again from its "
                         "checkpoint with `python -m src export CHECKPOINT --out FILE --data DATASET`")
    stages = imagenet_stages(str(view.module.general_backbone), int(view.module.general_size), view.general_trunk_stages)
    if view.general_trunk_stages > 0:
        return SharedTrunkFeatures(embedded_base(view), stages)
    return CombinedFeatures(embedded_base(view), stages)


def imagenet_stages(backbone: str, size: int, trunk_stages: int) -> torch.jit.ScriptModule:
    """The frozen ImageNet network a model with added landmarks carries (whole, reading photos at ``size`` px), or
    its stages after a shared trunk's first ``trunk_stages``. Made once per process (loading the weights, scripting and
    freezing take a second or two: the app's second Teach click skips them); each call gets its own copy."""
    with torchscript_on_purpose():
        return torch.jit.load(io.BytesIO(_imagenet_stages_file(backbone, size, trunk_stages)))


@functools.lru_cache(maxsize=4)
def _imagenet_stages_file(backbone: str, size: int, trunk_stages: int) -> bytes:
    if trunk_stages > 0:
        return frozen_file(general_tail(backbone, trunk_stages), [])
    return frozen_file(ImageNetFeatures(backbone, size), ["resize_size", "backbone_name", "photos_per_pass"])


def imagenet_features_design(model: torch.nn.Module | ExportView) -> str:
    """How the models that adding landmarks to ``model`` makes compute their plain ImageNet features, in words (the
    ``add-landmarks`` record and summary say it: it sets their speed)."""
    base = base_of(model)
    backbone = str(base.module.general_backbone)
    if base.general_trunk_stages > 0:
        return (f"shared trunk: the export's own first {base.general_trunk_stages} stages, continued by ImageNet {backbone}'s "
                "later ones")
    return f"second network: ImageNet {backbone} at {int(base.module.general_size)} px"


def read_new_landmarks(photos_dir: str | Path) -> dict[str, list[Path]]:
    """``{landmark name: photos}`` of a folder with one sub-folder per landmark (``NN.Name/`` or ``Name/``)."""
    photos_dir = Path(photos_dir)
    if photos_dir.is_file():
        raise NotADirectoryError(f"{photos_dir}: a file, not a folder with one sub-folder of photos per new landmark")
    if not photos_dir.is_dir():
        raise FileNotFoundError(f"{photos_dir}: folder of new landmarks not found")
    landmarks: dict[str, list[Path]] = {}
    for folder in sorted(p for p in photos_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        try:
            folder.name.encode("utf-8")
        except UnicodeEncodeError:  # a model keeps its landmark names as UTF-8 text
            raise ValueError(f"{str(folder)!r}: the folder name is not UTF-8 text, as a landmark name must be; "
                             "rename the folder") from None
        name = display_name(folder.name)
        if name in landmarks:
            raise ValueError(f"{folder}: two folders of {photos_dir} are both named {name!r}")
        landmarks[name] = list_images(folder)
        if not landmarks[name]:
            raise ValueError(f"{folder}: no photos in this landmark folder")
    if not landmarks:
        raise ValueError(f"{photos_dir}: no landmark folders in it (one sub-folder of photos per new landmark)")
    return landmarks


def _check_new_names(names: Sequence[str], trained: int, new: Iterable[str], replace: bool) -> None:
    """Refuse new landmark names that are blank, or that :func:`~src.places.place_key` (case, accents, punctuation)
    cannot tell from a landmark of the model (its first ``trained`` ones trained on, the others added) or from each
    other: such a name would get that landmark's place, and its answers could not be told apart."""
    known = {place_key(name): name for name in names}
    seen: dict[str, str] = {}
    for name in new:
        key = place_key(name)
        if not key:
            raise ValueError(f"{name!r} is no landmark name: give one with letters or digits")
        if key in seen:
            raise ValueError(f"{name!r} and {seen[key]!r} are one landmark (names are compared ignoring case, accents "
                             "and punctuation): give one of them")
        seen[key] = name
        same = known.get(key)
        if same is None:
            continue
        trained_on = names.index(same) < trained
        if same != name:
            raise ValueError(f"{name!r} is the model's landmark {same!r} (names are compared ignoring case, accents and "
                             "punctuation): give the new landmark another name"
                             + ("" if trained_on else ", or its exact name with --replace to learn it again"))
        if trained_on:
            raise ValueError(f"{name!r} is one of the landmarks the model was trained on; a few photos cannot replace "
                             "it (train again with them, or give the new landmark another name)")
        if not replace:
            raise ValueError(f"{name!r} is already a landmark of this model; pass --replace to learn it again from these photos")


def _views(squares: torch.Tensor, size: int) -> torch.Tensor:
    """:data:`~src.added_fit.VIEWS` views of ``(B, 3, S, S)`` uint8 squares (S > size), each ``(size, size)``, grouped by photo
    (rows ``i * VIEWS`` to ``i * VIEWS + VIEWS - 1`` are photo ``i``'s, the whole photo first: the memory keeps
    this order, so :func:`~src.added_fit.held_out` can hold a photo out with all its views)."""
    full = F.interpolate(squares.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    full = full.round().clamp(0, 255).to(torch.uint8)
    margin = (squares.shape[-1] - size) // 2
    return torch.stack([full, full.flip(-1), squares[..., :size, :size], squares[..., -size:, -size:],
                        squares[..., margin:margin + size, margin:margin + size].flip(-1)], dim=1).flatten(0, 1)


def support_features(combined: CombinedFeatures, photos: Mapping[str, Sequence[Path]], num_workers: int = -1
                     ) -> tuple[dict[str, torch.Tensor], list[str]]:
    """``{name: (photos * VIEWS, D) features}`` of each new landmark's readable photos, and the warnings of the
    unreadable ones. A landmark with no readable photo is refused, naming its photos."""
    size = int(combined.resize_size)
    big = round(size * 9 / 8)  # the corner crops keep 8/9 of the photo's sides
    features: dict[str, torch.Tensor] = {}
    skipped: list[str] = []
    for name, paths in tqdm(photos.items(), desc="Features of the new photos", unit="landmark", ncols=80):
        views = []
        for indices, squares, errors in square_batches(list(paths), big, 32, num_workers):
            skipped += [f"skipped unreadable photo of {name!r}: {message}" for message in errors.values()]
            if squares is not None:
                views.append(in_batches(combined, _views(squares, size)))
        if not views:
            where = Path(paths[0]).parent if paths else "its folder"
            raise ValueError(f"{where}: no readable photo of {name!r} ({len(paths)} file(s) tried)")
        features[name] = torch.cat(views)
    return features, skipped


def add_landmarks(model: torch.nn.Module | ExportView, photos: Mapping[str, Sequence[Path]],
                  places: Mapping[str, Place] | None = None, replace: bool = False, num_workers: int = -1,
                  on_step: Callable[[int, str], None] | None = None) -> tuple[torch.jit.ScriptModule, list[str]]:
    """``model`` with the landmarks of ``photos`` (``{name: photo paths}``) added (the steps of the module
    docstring), and the warnings about skipped photos. ``places`` gives places of new (or any) classes;
    ``on_step(number, what)`` is told when each of the :data:`STEPS` starts (the app shows it)."""
    step = on_step or (lambda number, what: None)
    view = export_view(model)
    combined = combined_features(view)  # adding to an added-landmarks model refits its rows
    base = base_of(view)
    memory_features = view.memory_features.float()
    if view.base is None:
        memory_features = torch.cat([memory_features, view.general_memory.float()], dim=1)
    memory_targets = view.memory_targets.clone()
    names = list(view.class_names)
    base_names = list(base.class_names)
    _check_new_names(names, len(base_names), photos, replace)
    for name in [n for n in names[len(base_names):] if n in photos]:  # replaced: its memory rows go
        index = names.index(name)
        keep = memory_targets != index
        memory_features, memory_targets = memory_features[keep], memory_targets[keep]
        memory_targets[memory_targets > index] -= 1
        names.remove(name)
    step(1, STEPS[0])
    new_features, skipped = support_features(combined, photos, num_workers)
    for name, features in new_features.items():
        memory_features = torch.cat([memory_features, features])
        memory_targets = torch.cat([memory_targets, torch.full((len(features),), len(names), dtype=torch.long)])
        names.append(name)
    split = int(base.memory_features.shape[1])
    lookalike = lookalike_negatives(memory_features, memory_targets, len(base_names), split, base.negative_sources,
                                    names[len(base_names):])
    alike_folders = folders_alike(memory_features, memory_targets, split, base.negative_sources,
                                  {name: names.index(name) for name in new_features})
    for name, (folder, alike, photos) in alike_folders.items():
        said = (f"{alike} of the {photos} photos", "look", "they show", "them", "they are") if photos > 1 else \
            ("The photo", "looks", "it shows", "it", "it is")
        warnings.warn(AlikeFolderWarning(
            f"{said[0]} of {name!r} {said[1]} most like the negatives folder {folder!r} the model was trained against: "
            f"if {said[2]} that landmark, add {said[3]} as {folder!r} (its photos there then stop counting as no landmark); "
            f"under another name {said[4]} fitted against them"), stacklevel=2)
    step(2, STEPS[1])
    added = fit_rows(base, memory_features, memory_targets, len(names) - len(base_names), lookalike,
                      progress="Fitting the new landmarks")
    step(3, STEPS[2])
    remembered = RememberedPhotos(memory_features.half(), split, combined.base.memory_as_added)  # the file keeps each once
    detector, threshold = added_detector(base, added, memory_features, memory_targets, lookalike, remembered)
    step(4, STEPS[3])
    known_places = dict(view.places)
    known_places.update({name: place for name, place in (places or {}).items() if name in names})
    places_json = json.dumps({name: known_places[name].to_dict() for name in names if name in known_places}, sort_keys=True)
    with torchscript_on_purpose():
        scripted = torch.jit.script(AddedLandmarksPredictor(combined, added, names, detector, threshold, places_json,
                                                            remembered.memory, memory_targets))
    return scripted, skipped


def save_added(model: torch.jit.ScriptModule, path: str | Path, base: str, added: Mapping[str, int], skipped: list[str],
               seconds: float, notes: Sequence[str] = (), **details: str) -> dict:
    """Save a model with added landmarks atomically, with its record as JSON beside it: the model it was added to,
    ``added`` (``{name: photos}``), the ``skipped`` photos, the ``notes`` (:func:`alike_folder_notes`), its classes,
    threshold, the seconds it took and where its ImageNet features come from (:func:`imagenet_features_design`;
    ``details``: more fields, e.g. the photos' folder). Returns the record."""
    record = {"base": base, **details, "added": dict(added), "skipped": list(skipped), "notes": list(notes),
              "class_names": list(model.class_names), "unknown_threshold": float(model.unknown_threshold),
              "seconds": round(seconds, 1), "imagenet_features": imagenet_features_design(model)}
    path = save_scripted(model, path)
    atomic_write(path.with_suffix(".json"), lambda tmp: tmp.write_text(json.dumps(record, indent=2)))
    return record
