"""Checkpoint I/O: read every layout SAM3 weights come in, write ours atomically and weights_only-safe.

Our files are `{"format": "sam3lite/1", "model_config": {...}, "model": {"detector.<key>": tensor}, ...extra}`
holding only plain dicts, lists, numbers, strings and tensors, so `torch.load(weights_only=True)` reads them and
the upstream builder (`build_sam3_image_model(checkpoint_path=...)`, which keeps the `detector.` keys) loads them.

`load_checkpoint` also reads the released `sam3.pt` (`detector.*` + `tracker.*`, flat or under "model"), upstream
trainer checkpoints (no prefix, under "model") and DDP `module.` prefixes. Unlike upstream's loader, which loads
nothing without a word when the prefixes differ (facebookresearch/sam3 issues #606, #260), it reports what did
not match and refuses a checkpoint that matches too little.

RoPE tables (`...attn.freqs_cis`) are derived from the config: loading never takes them from the file (they are
recomputed for the model's resolution), and saving writes upstream's 1008-px tables for the `sam3` preset,
whatever resolution the model runs at, because the upstream builder only accepts those.
"""

from __future__ import annotations

import os
import uuid
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sam3lite_core.distributed import unwrap
from sam3lite_core.model.backbone import Backbone
from sam3lite_core.model.config import PRESETS, ModelConfig
from sam3lite_core.model.rope import block_rope
from sam3lite_core.model.sam3lite import Sam3Lite, build_model
from sam3lite_core.model.vit import ViT

FORMAT = "sam3lite/1"
DETECTOR_PREFIX = "detector."
# Prefixes that training wrappers put in front of every key: DDP and torch.compile.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# Present in upstream files but not part of the box-only detector (after `detector.` is stripped).
_UNUSED_PREFIXES = ("segmentation_head.", "backbone.vision_backbone.sam2_convs.", "inst_interactive_predictor.")
_RESERVED_KEYS = ("format", "model_config", "model")
_SAMPLE = 5
_PLAIN_SCALARS = (str, int, float, bool, type(None), torch.dtype)

PathLike = str | os.PathLike


@dataclass
class LoadReport:
    """What `load_checkpoint` did. Keys are the model's own (no `detector.` prefix)."""

    source: str
    num_model_keys: int  # weights of the model, RoPE tables excluded (they are never loaded)
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)  # key, file, model
    ignored: list[str] = field(default_factory=list)  # tracker.*, segmentation head, SAM2 neck: known, unused
    rope_resized: list[str] = field(default_factory=list)  # RoPE tables made for another resolution

    @property
    def matched_fraction(self) -> float:
        return len(self.loaded) / max(self.num_model_keys, 1)

    def summary(self) -> str:
        return (
            f"loaded {len(self.loaded)}/{self.num_model_keys} weights from {self.source}: "
            f"{len(self.missing)} missing, {len(self.unexpected)} unexpected, {len(self.mismatched)} shape "
            f"mismatches, {len(self.ignored)} ignored as unused by box detection, "
            f"{len(self.rope_resized)} RoPE tables recomputed for this resolution"
        )


def read_checkpoint(path: PathLike, mmap: bool = False) -> dict[str, Any]:
    """torch.load on the CPU with weights_only=True; anything that is not a checkpoint gets a clear ValueError.
    With `mmap`, tensors are mapped from the file rather than read (a file in torch's legacy format is read)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        data = _load(path, mmap)
    except Exception as exc:  # garbage bytes surface as any of a dozen types (UnpicklingError, IndexError, ...)
        first_line = next(iter(str(exc).splitlines()), "")
        raise ValueError(
            f"{path} is not a readable PyTorch checkpoint ({type(exc).__name__}: {first_line}); "
            "it may be truncated or corrupt, or hold objects other than tensors and plain containers. "
            "Re-download or re-export it."
        ) from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path} holds a {type(data).__name__}, not a checkpoint dict")
    return data


def _load(path: Path, mmap: bool) -> Any:
    if mmap and zipfile.is_zipfile(path):  # only torch's zip format can be mapped
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return torch.load(path, map_location="cpu", weights_only=True)


def checkpoint_model_config(checkpoint: Mapping[str, Any]) -> ModelConfig | None:
    """The ModelConfig saved in one of our checkpoints (None for upstream files), to rebuild the model."""
    data = checkpoint.get("model_config")
    return ModelConfig.from_dict(data) if isinstance(data, dict) else None


def load_model(
    checkpoint: PathLike,
    device: torch.device | str = "cpu",
    resolution: int | None = None,
    use_ema: bool = True,
) -> Sam3Lite:
    """A model in eval mode, rebuilt from one of our checkpoints (its saved config; EMA weights when present and
    `use_ema`), or the sam3 preset for an upstream file (sam3.pt, trainer checkpoints)."""
    data = read_checkpoint(checkpoint)  # read, not mapped: a served model must not fault when its file is rewritten
    cfg = checkpoint_model_config(data) or PRESETS["sam3"]
    if resolution:
        cfg = cfg.with_resolution(resolution)
    ema = data.get("ema")
    return build_loaded(cfg, ema["model"] if use_ema and isinstance(ema, dict) else data, device)[0].eval()


def build_loaded(
    cfg: ModelConfig, raw: Mapping[str, Any], device: torch.device | str = "cpu", source: str = "<checkpoint>"
) -> tuple[Sam3Lite, LoadReport]:
    """A model at `cfg` holding the weights of checkpoint dict `raw`, and what matched.

    When `raw` has every weight at its shape, the model is built on the meta device and its parameters are
    `raw`'s own tensors (converted only where dtype or device differ): no random initialisation and no second
    copy, so loading takes about the model's own memory. From a memory-mapped checkpoint
    (`read_checkpoint(mmap=True)`, training's init) the weights are the file's pages until written: shared by
    the processes of a run, and reclaimable while frozen. A mapped file must not be rewritten in place while
    in use (the process would fault), which is why inference reads its checkpoint instead.
    Otherwise the model is initialised and `load_checkpoint` copies in what matches."""
    weights, ignored = normalize_keys(_model_weights(raw, source))
    model = build_model(cfg, device="meta")
    wanted = {k: v for k, v in model.state_dict().items() if not _is_rope(k)}
    if any(k not in weights or weights[k].shape != v.shape for k, v in wanted.items()):
        model = build_model(cfg, device=device)
        report = load_checkpoint(model, raw)
        report.source = source
        return model, report
    model.load_state_dict(
        {k: weights[k].to(device=device, dtype=v.dtype) for k, v in wanted.items()}, strict=False, assign=True
    )
    for module in model.modules():
        if isinstance(module, ViT):
            module.reset_rope(torch.device(device))
    report = LoadReport(source=source, num_model_keys=len(wanted), ignored=ignored, loaded=list(wanted))
    report.unexpected = [k for k in weights if k not in wanted and not _is_rope(k)]
    return model, report


def load_checkpoint(
    model: nn.Module, path_or_state_dict: PathLike | Mapping[str, Any], *, min_fraction: float = 0.9
) -> LoadReport:
    """Load weights into `model` in place and report what matched.

    Raises ValueError when fewer than `min_fraction` of the model's weights are found with the right shape.
    """
    model = unwrap(model)
    if isinstance(path_or_state_dict, Mapping):
        source, raw = "<state_dict>", path_or_state_dict
    else:
        source, raw = str(path_or_state_dict), read_checkpoint(path_or_state_dict)
    weights, ignored = normalize_keys(_model_weights(raw, source))
    model_state = model.state_dict()
    released = model.released_weights() if isinstance(model, Sam3Lite) else {}
    if any(t.is_meta for k, t in model_state.items() if k not in released):
        raise ValueError("the model lives on the meta device; materialise it (model.to_empty(device=...)) first")
    _check_released(released, weights, source)

    report = LoadReport(source=source, num_model_keys=sum(not _is_rope(k) for k in model_state), ignored=ignored)
    to_load = {}
    for key, value in weights.items():
        if key not in model_state:
            report.unexpected.append(key)
        elif _is_rope(key):
            if value.shape != model_state[key].shape:
                report.rope_resized.append(key)
        elif value.shape != model_state[key].shape:
            report.mismatched.append((key, tuple(value.shape), tuple(model_state[key].shape)))
        elif key in released:  # equal to what the model reads back (checked above): nothing to load
            report.loaded.append(key)
        else:
            to_load[key] = value
    report.loaded += list(to_load)
    report.missing = [k for k in model_state if k not in weights and not _is_rope(k)]
    if report.matched_fraction < min_fraction:
        raise ValueError(_mismatch_message(report, min_fraction, checkpoint_model_config(raw)))
    model.load_state_dict(to_load, strict=False)
    for module in model.modules():
        if isinstance(module, ViT):
            module.reset_rope()
    return report


def _check_released(released: Mapping[str, torch.Tensor], weights: Mapping[str, Any], source: str) -> None:
    """A model whose frozen text encoder is released keeps the weights it reads back, so a checkpoint loaded
    into it must hold those same values (a resumed run's do: frozen, they are the init's)."""
    for key, value in released.items():
        theirs = weights.get(key)
        if theirs is not None and theirs.shape == value.shape and not torch.equal(theirs.to(value.dtype), value):
            raise ValueError(
                f"{source}: {key} differs from the frozen text encoder's weights this model reads back from its "
                "init checkpoint; resume with the init_checkpoint the run started from"
            )


def released_reader(path: PathLike, prefix: str) -> Callable[[], dict[str, torch.Tensor]]:
    """A reader of checkpoint `path`'s weights under model-key `prefix` (returned without it), memory-mapped
    at each call: what `Sam3Lite.release_text_encoder` reads its weights back with. It refuses the file once it
    has changed (size, modification time or inode), since it would no longer hold the weights the run used."""
    path = Path(path)
    stamp = _stamp(path)

    def read() -> dict[str, torch.Tensor]:
        if _stamp(path) != stamp:
            raise ValueError(
                f"{path} changed while in use: the frozen text encoder's weights are read back from it (to encode "
                "a new prompt, to save a checkpoint) and it no longer holds the ones this run loaded. Put the "
                "original file back, then resume the run"
            )
        weights, _ = normalize_keys(_model_weights(read_checkpoint(path, mmap=True), str(path)))
        return {k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)}

    return read


def _stamp(path: Path) -> tuple[int, int, int]:
    try:
        info = path.stat()
    except OSError:
        return (-1, -1, -1)
    return info.st_size, info.st_mtime_ns, info.st_ino


def state_dict_for_export(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights as saved in every file we write: `detector.<key>` -> CPU tensor, with the RoPE
    tables at the export resolution (1008 px for the sam3 preset, the model's own otherwise)."""
    model = unwrap(model)
    cfg = model_config_of(model)
    released = model.released_weights() if isinstance(model, Sam3Lite) else {}  # read back from their file
    state = {k: released[k] if k in released else v.detach().cpu() for k, v in model.state_dict().items()}
    export_size = PRESETS["sam3"].vision.image_size if cfg.name == "sam3" else cfg.vision.image_size
    for name, module in model.named_modules():
        if isinstance(module, ViT):
            vision = replace(module.vision, image_size=export_size)
            for i in range(len(module.blocks)):
                state[f"{name}.blocks.{i}.attn.freqs_cis".lstrip(".")] = block_rope(vision, i)
    return {DETECTOR_PREFIX + k: v for k, v in state.items()}


def save_checkpoint(path: PathLike, model: nn.Module, **extra: Any) -> Path:
    """Write `{"format", "model_config", "model", **extra}` atomically. `extra` (optimizer state, step, metrics)
    must be plain dicts, lists, tuples, numbers, strings, None and tensors, so the file loads weights_only."""
    clash = sorted(set(extra) & set(_RESERVED_KEYS))
    if clash:
        raise ValueError(f"save_checkpoint: extra keys {clash} are reserved for the model and its config")
    for key, value in extra.items():
        _check_plain(value, key)
    return _atomic_save(_payload(model) | extra, Path(path))


def export_weights(checkpoint_or_model: nn.Module | PathLike | Mapping[str, Any], out_path: PathLike) -> Path:
    """Weights-only file for serving and for the upstream builder: `{"format", "model_config", "model"}`.

    Accepts a model or one of our checkpoints (path or loaded dict); training state is dropped.
    """
    if isinstance(checkpoint_or_model, nn.Module):
        return _atomic_save(_payload(checkpoint_or_model), Path(out_path))
    if isinstance(checkpoint_or_model, Mapping):
        source, checkpoint = "<checkpoint dict>", checkpoint_or_model
    else:
        source, checkpoint = str(checkpoint_or_model), read_checkpoint(checkpoint_or_model)
    if checkpoint.get("format") != FORMAT or not isinstance(checkpoint.get("model"), dict):
        raise ValueError(
            f"{source} is not a {FORMAT} checkpoint (format={checkpoint.get('format')!r}); "
            "load it into a model with load_checkpoint and export the model instead"
        )
    return _atomic_save({key: checkpoint[key] for key in _RESERVED_KEYS}, Path(out_path))


def model_config_of(model: nn.Module) -> ModelConfig:
    """The ModelConfig a sam3lite model was built from (read from its Backbone)."""
    for module in unwrap(model).modules():
        if isinstance(module, Backbone):
            return module.cfg
    raise ValueError(f"{type(model).__name__} is not a sam3lite model: it has no Backbone")


def normalize_keys(weights: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Any layout's keys -> the detector's own names (those of `Sam3Lite.state_dict()`); returns
    (weights, ignored keys).

    Wrapper prefixes go; with `detector.`/`tracker.` keys (released sam3.pt, our files) the detector is kept
    and the tracker ignored; the segmentation head and the SAM2 neck are ignored in every layout.
    """
    named = {_strip_wrappers(k): v for k, v in weights.items()}
    prefixed = any(k.startswith((DETECTOR_PREFIX, "tracker.")) for k in named)
    kept, ignored = {}, []
    for key, value in named.items():
        if prefixed and key.startswith("tracker."):
            ignored.append(key)
            continue
        if prefixed and key.startswith(DETECTOR_PREFIX):
            key = key[len(DETECTOR_PREFIX) :]
        if key.startswith(_UNUSED_PREFIXES):
            ignored.append(key)
        else:
            kept[key] = value
    return kept, ignored


def _payload(model: nn.Module) -> dict[str, Any]:
    return {"format": FORMAT, "model_config": model_config_of(model).to_dict(), "model": state_dict_for_export(model)}


def _strip_wrappers(key: str) -> str:
    while key.startswith(_WRAPPER_PREFIXES):
        key = key.split(".", 1)[1]
    return key


def _is_rope(key: str) -> bool:
    # SAM 3.1 files split the complex table into freqs_cis_real / freqs_cis_imag: derived all the same.
    return key.rsplit(".", 1)[-1].startswith("freqs_cis")


def _model_weights(raw: Mapping[str, Any], source: str) -> Mapping[str, torch.Tensor]:
    """The state_dict inside a checkpoint: under "model", or the flat dict itself."""
    weights = raw["model"] if isinstance(raw.get("model"), Mapping) else raw
    if not weights or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise ValueError(
            f"{source} holds no model weights: expected a state_dict or a dict with a 'model' state_dict, "
            f"found top-level keys {sorted(map(str, raw))[:10]}"
        )
    return weights


def _mismatch_message(report: LoadReport, min_fraction: float, saved_config: ModelConfig | None) -> str:
    made_for = f" It was saved for model config {saved_config.name!r}." if saved_config else ""
    mismatched = [f"{k} {f} vs {m}" for k, f, m in report.mismatched[:_SAMPLE]]
    return (
        f"checkpoint {report.source} matches only {len(report.loaded)} of the model's {report.num_model_keys} "
        f"weights ({report.matched_fraction:.1%}, need {min_fraction:.0%}): {len(report.missing)} missing, "
        f"{len(report.unexpected)} unexpected, {len(report.mismatched)} with another shape. "
        f"Missing e.g. {report.missing[:_SAMPLE]}; unexpected e.g. {report.unexpected[:_SAMPLE]}; "
        f"shape mismatches (file vs model) e.g. {mismatched}.{made_for} Build the model with the config the "
        "checkpoint was trained with (our files carry it under 'model_config'), or lower min_fraction to accept "
        "a partial load on purpose."
    )


def _check_plain(value: Any, where: str) -> None:
    """Refuse, before writing, anything torch.load(weights_only=True) would refuse when reading."""
    # Exact types: numpy scalars subclass float and defaultdict subclasses dict, yet both are refused.
    if isinstance(value, torch.Tensor) or type(value) in _PLAIN_SCALARS:
        return
    if type(value) in (dict, OrderedDict):
        for key, item in value.items():
            _check_plain(key, f"{where} key")
            _check_plain(item, f"{where}[{key!r}]")
    elif type(value) in (list, tuple, torch.Size):
        for i, item in enumerate(value):
            _check_plain(item, f"{where}[{i}]")
    else:
        raise ValueError(
            f"save_checkpoint: {where} is a {type(value).__name__}, which torch.load(weights_only=True) cannot "
            "read back; convert it to a dict, list, number, string or tensor"
        )


def _atomic_save(payload: dict[str, Any], path: Path) -> Path:
    """torch.save to a temporary file beside `path`, fsync, then rename over it: readers never see half a file.

    The temporary name is made by hand rather than with mkstemp, whose 0600 mode would make the checkpoint
    unreadable to a backend running as another user."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "xb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
