"""Load a BEiT-architecture model: registered short name, hub id, or local `save_pretrained` folder.

Real weights always go through `from_pretrained`. Random weights are only ever built on request
(`random_weights=True`), from a seed, with non-zero relative position bias tables and layer scales so that
every code path of the model is exercised; the result says `weights="random"` and carries the seed.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..core import registry, tasks
from ..core.errors import ModelLoadError, UsageError, describe
from ..core.files import safe_name
from ..core.manifest import Preprocessing
from ..core.progress import quiet_logger, step

DEFAULT_SEED = 0


@dataclass(frozen=True)
class ModelSpec:
    """What to load. `model` is a short name, a hub id or a folder; everything else is how."""

    model: str
    random_weights: bool = False
    seed: int = DEFAULT_SEED
    revision: str | None = None  # hub branch, tag or commit (from_pretrained's `revision`); None: the default branch
    offline: bool = False  # read the Hugging Face cache only, never the network (verify's default)

    def __post_init__(self):
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**32:
            raise UsageError(f"seed must be a whole number from 0 to {2**32 - 1}, got {self.seed!r}")

    def to_dict(self) -> dict:
        return {"model": self.model, "random_weights": self.random_weights, "seed": self.seed,
                "revision": self.revision}


@dataclass(frozen=True)
class LoadedModel:
    """An eager transformers model in eval mode, with what later stages need to know about it."""

    model: object = field(repr=False)  # transformers.BeitPreTrainedModel
    spec: ModelSpec
    name: str  # folder-safe name of the model, e.g. beit-base-patch16-224
    source: str  # "registry", "hub" or "local"
    task: str
    preprocessing: Preprocessing
    labels: dict[int, str]
    labels_from: dict = field(default_factory=dict)  # {} : the model's config; else see `_labels_from`
    commit: str | None = None  # the hub commit the weights came from, where the hub cache says
    weights_sha256: str | None = None  # weights_sha256(model), set by the export (it costs a read of every weight)

    @property
    def config(self):
        return self.model.config

    @property
    def weights(self) -> str:
        return "random" if self.spec.random_weights else "pretrained"

    @property
    def native_resolution(self) -> tuple[int, int]:
        return native_resolution(self.config)

    @property
    def source_record(self) -> dict:
        """The manifest's `source`: kind, what was passed, and for hub weights the revision asked for and the
        commit the hub cache resolved it to (where it says)."""
        source = {"kind": self.source, "model": self.spec.model}
        if self.spec.revision or self.commit:
            source |= {"revision": self.spec.revision, "commit": self.commit}
        return source

    @property
    def weights_record(self) -> dict:
        """The manifest's `weights`: kind, seed (random weights) and sha256 (`weights_sha256`)."""
        return {"kind": self.weights, "seed": self.spec.seed if self.spec.random_weights else None,
                "sha256": self.weights_sha256}


def native_resolution(config) -> tuple[int, int]:
    """(H, W) a BEiT config was trained at: its image_size, an int or a pair."""
    size = config.image_size
    return tuple(size) if isinstance(size, (list, tuple)) else (size, size)


@dataclass(frozen=True)
class Resolved:
    """Where a model comes from and its config, before any weights are read."""

    source: str
    config: object
    preprocessing: Preprocessing


def resolve(spec: ModelSpec) -> Resolved:
    """Find the model's config and preprocessing (cheap; raises on unknown names and bad folders)."""
    resolved = Resolved(*_resolve(spec))
    if spec.revision and (resolved.source == "local" or (spec.random_weights and resolved.source == "registry")):
        what = "a local folder" if resolved.source == "local" else "random weights of a registered model"
        raise UsageError(f"--revision '{spec.revision}' picks a version on the Hugging Face Hub, and {what} is "
                         "read from nowhere there: drop --revision")
    return resolved


def load_model(spec: ModelSpec, resolved: Resolved | None = None) -> LoadedModel:
    """Resolve `spec.model` and load it (shapes: pixel_values (B, 3, H, W) in, per-task outputs out)."""
    resolved = resolved or resolve(spec)
    source, config, preprocessing = resolved.source, resolved.config, resolved.preprocessing
    weights = f"random weights, seed {spec.seed}" if spec.random_weights else "pretrained"
    with step(f"loading {spec.model} ({weights})"):
        task = task_of(config)
        cls = model_class(task)
        commit = None
        if spec.random_weights:
            model = random_model(cls, config, spec.seed)
        else:
            model = _from_pretrained(cls, spec.model, source, spec.offline, spec.revision)
            commit = hub_commit(_hub_id(spec.model, source), spec.revision) if source != "local" else None
        model.eval()
    names = model.config.id2label or {}
    labels = {int(k): str(v) for k, v in names.items()} if tasks.task(task).has_labels else {}
    return LoadedModel(model, spec, model_name(spec.model, source), source, task, preprocessing, labels,
                       _labels_from(spec, source) if labels else {}, commit)


def _labels_from(spec: ModelSpec, source: str) -> dict:
    """Where the class names come from when it is not the model's own config: a registered checkpoint with
    random weights takes the names of the classes that checkpoint scores, known offline (core.labels)."""
    checkpoint = registry.lookup(spec.model) if source == "registry" else None
    if not (spec.random_weights and checkpoint and checkpoint.label_set):
        return {}
    return {"set": checkpoint.label_set, "note": f"the class names of {checkpoint.hub_id}, known offline; the "
            "weights are random, so the scores mean nothing"}


def weights_sha256(model) -> str:
    """sha256 of a model's weights (every state_dict tensor: name, dtype, shape and bytes, in name order): what
    tells two exports of the same weights apart from two of different ones, whatever their source spelling."""
    import hashlib

    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def hub_commit(repo: str, revision: str | None) -> str | None:
    """The commit of `repo` at `revision` that from_pretrained used, read from the local hub cache (the snapshot
    folder's name); None where the cache does not say (nothing is downloaded for this)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        path = try_to_load_from_cache(repo, "config.json", revision=revision)
    except Exception:  # noqa: BLE001 - a provenance detail: never worth failing an export for
        return None
    parts = Path(path).parts if isinstance(path, str) else ()
    found = [parts[i + 1] for i in range(len(parts) - 1) if parts[i] == "snapshots"]
    return found[-1] if found and re.fullmatch(r"[0-9a-f]{40}", found[-1]) else None


def model_name(model: str, source: str) -> str:
    """The folder-safe name of a model, which names its folder under the export root: a local folder's own
    name (of its real path, so '.', '..' and trailing slashes give the folder's name), the last part of a hub
    id, a registered short name as it is; see `files.safe_name` for what is kept."""
    text = Path(model).expanduser().resolve().name if source == "local" else model.rstrip("/").split("/")[-1]
    return safe_name(text)


def task_of(config) -> str:
    """The task of a BEiT config, from its `architectures` entry (plain BeitModel: features)."""
    return tasks.task_of_architecture((config.architectures or [None])[0]).name


def model_class(task: str):
    """The transformers class of a task's model (BeitForImageClassification, ...)."""
    import transformers

    return getattr(transformers, tasks.task(task).model_class)


def random_model(cls, config, seed: int):
    """`cls(config)` with seeded random weights, bias tables and layer scales made non-zero."""
    import torch

    torch.manual_seed(seed)
    model = cls(config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("relative_position_bias_table"):
                param.copy_(torch.randn(param.shape, generator=gen))
            elif name.endswith(("lambda_1", "lambda_2")):
                param.copy_(torch.rand(param.shape, generator=gen) * 0.5 + 0.05)
            elif name.endswith(("cls_token", "mask_token")):
                param.copy_(torch.randn(param.shape, generator=gen) * 0.02)
    return model


def _resolve(spec: ModelSpec):
    """-> (source, BeitConfig, Preprocessing) without loading weights."""
    import transformers

    path = Path(spec.model).expanduser()
    if path.is_dir():
        return "local", _local_config(path), _local_preprocessing(path)
    if path.suffix or spec.model.startswith((".", "/", "~")):
        raise UsageError(f"model folder '{spec.model}' does not exist: pass an existing folder, a registered name "
                         "(beit-deploy models) or a hub id")
    checkpoint = registry.lookup(spec.model)
    if checkpoint is not None:
        config = transformers.BeitConfig(**checkpoint.config_kwargs())
        return "registry", config, checkpoint.preprocessing()
    if "/" not in spec.model:
        near = registry.nearest_names(spec.model)
        hint = f"did you mean {', '.join(near)}? " if near else ""
        raise UsageError(f"unknown model '{spec.model}': {hint}see `beit-deploy models`, or pass a hub id "
                         "(org/name) or a local folder")
    try:
        with quiet_logger("huggingface_hub"):
            config = transformers.AutoConfig.from_pretrained(spec.model, local_files_only=spec.offline,
                                                             **({"revision": spec.revision} if spec.revision else {}))
    except Exception as exc:  # transformers raises several types for the same cause
        raise ModelLoadError(_hub_message(spec.model, exc, spec.offline)) from exc
    _check_beit(config, spec.model)
    return "hub", config, _preprocessing_from(None, config)


def _local_config(path: Path):
    import transformers

    if not (path / "config.json").is_file():
        raise ModelLoadError(f"folder '{path}' has no config.json: pass a folder written by save_pretrained "
                             "(config.json, weights, preprocessor_config.json)")
    try:
        config = transformers.AutoConfig.from_pretrained(path)
    except Exception as exc:
        raise ModelLoadError(f"config.json in '{path}' is unreadable ({describe(exc, 160)}): re-save the model "
                             "with save_pretrained") from exc
    _check_beit(config, str(path))
    return config


def _check_beit(config, where: str) -> None:
    if getattr(config, "model_type", None) != "beit":
        raise UsageError(f"'{where}' is a {getattr(config, 'model_type', 'unknown')!r} model, not BEiT: "
                         "beit-deploy exports models with model_type 'beit' only")


def _local_preprocessing(path: Path) -> Preprocessing:
    """The folder's preprocessor_config.json as Preprocessing (BEiT's defaults without one); ModelLoadError
    naming the file when it is not JSON or its values cannot be used."""
    file = path / "preprocessor_config.json"
    config = _local_config(path)
    try:
        data = json.loads(file.read_text()) if file.is_file() else None
        if data is not None and not isinstance(data, dict):
            raise ValueError("it is not a JSON object")
        return _preprocessing_from(data, config)
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        raise ModelLoadError(f"'{file}' cannot be used ({describe(exc, 160)}): fix it, re-save it with the "
                             "image processor's save_pretrained, or delete it to use BEiT's defaults") from exc


def _preprocessing_from(data: dict | None, config) -> Preprocessing:
    """Preprocessing from a preprocessor_config.json dict; BEiT's hub defaults where it is absent."""
    default = Preprocessing(size=native_resolution(config))
    if not data:
        return default

    def hw(value, fallback):
        if value is None:
            return fallback
        if isinstance(value, int):
            return (value, value)
        return (value["height"], value["width"]) if "height" in value else (value["shortest_edge"],) * 2

    crop = hw(data.get("crop_size"), None) if data.get("do_center_crop") else None
    rescale, normalize = data.get("do_rescale", True), data.get("do_normalize", True)
    return Preprocessing(size=hw(data.get("size"), default.size), resample=int(data.get("resample", 2)),
                         rescale_factor=float(data.get("rescale_factor", 1 / 255)) if rescale else 1.0,
                         image_mean=tuple(data.get("image_mean", default.image_mean)) if normalize else (0.0,) * 3,
                         image_std=tuple(data.get("image_std", default.image_std)) if normalize else (1.0,) * 3,
                         crop_size=crop)


def _hub_id(model: str, source: str) -> str:
    return registry.lookup(model).hub_id if source == "registry" else model


def _from_pretrained(cls, model: str, source: str, offline: bool = False, revision: str | None = None):
    model = _hub_id(model, source)
    try:
        with quiet_logger("huggingface_hub"):
            return cls.from_pretrained(model, local_files_only=offline, **({"revision": revision} if revision else {}))
    except Exception as exc:
        if source == "local":
            raise ModelLoadError(f"weights in '{model}' could not be loaded ({describe(exc, 160)}): re-save the model "
                                 "with save_pretrained, or pass --random-weights to export its architecture") from exc
        raise ModelLoadError(_hub_message(model, exc, offline)) from exc


def _hub_message(model: str, exc: Exception, offline: bool = False) -> str:
    if offline:
        return (f"'{model}' is not in the local Hugging Face cache, and nothing is downloaded for it here "
                f"({describe(exc, 160)})")
    return (f"could not download '{model}' from the Hugging Face Hub ({describe(exc, 160)}): pass a local folder "
            f"(save_pretrained layout) with --model, or --random-weights to export the architecture with "
            "random weights")
