"""Model artifacts: a directory with ``model.safetensors`` (weights) and ``model.json`` (the rest).

Never pickle. Loading checks the JSON, then compares the tensor names and shapes in the file with
the networks the JSON describes and refuses any missing, unexpected or mis-shaped tensor, as
safetensors' strict loading does, with a message that names them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from detector import __version__
from detector.model import LstmGanDetector, ModelSpec
from detector.network import Networks
from detector.score import Threshold
from detector.stream import DEFAULT_MAX_GAP_S

FORMAT = "ganwatch-model"
FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
META = "model.json"


class ArtifactError(ValueError):
    """The artifact is missing, malformed, or does not match the networks it describes."""


@dataclass
class Artifact:
    detector: LstmGanDetector
    threshold: Threshold
    meta: dict[str, Any]

    def max_gap_ms(self, override_s: float | None = None) -> int | None:
        """The gap rule to score with: ``override_s`` seconds when given (0 = never), else the one
        learned at training time; artifacts written before it was learned keep the old fixed
        default."""
        if override_s is not None:
            return int(override_s * 1000) or None
        return self.meta.get("max_gap_ms", DEFAULT_MAX_GAP_S * 1000)


def threshold_meta(threshold: Threshold) -> dict[str, Any]:
    """The ``threshold`` object of ``model.json`` (``false_alarm_target`` only when stated)."""
    out: dict[str, Any] = {"value": threshold.value, "rule": threshold.rule}
    if threshold.false_alarm_target is not None:
        out["false_alarm_target"] = threshold.false_alarm_target
    return out


def threshold_of(meta: dict[str, Any]) -> Threshold:
    target = meta.get("false_alarm_target")
    if target is not None and not 0 <= float(target) <= 1:
        raise ValueError(f"threshold.false_alarm_target must lie in [0, 1], got {target}")
    return Threshold(float(meta["value"]), str(meta.get("rule", "")),
                     None if target is None else float(target))


def save_artifact(
    directory: str | Path, networks: Networks, spec: ModelSpec, threshold: Threshold,
    extra: dict[str, Any],
) -> dict[str, Any]:
    """Write weights and metadata; return the metadata (with ``model_version``)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in networks.state_dict().items()}
    save_file(tensors, str(directory / WEIGHTS), metadata={"format": FORMAT})
    meta: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        **spec.meta(),
        "threshold": threshold_meta(threshold),
        "package_version": __version__,
        **extra,
    }
    digest = hashlib.sha256((directory / WEIGHTS).read_bytes())
    digest.update(json.dumps(meta, sort_keys=True).encode())
    meta["model_version"] = f"{networks.shape.kind}-{digest.hexdigest()[:12]}"
    (directory / META).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return meta


def read_meta(directory: str | Path) -> dict[str, Any]:
    """Read and validate ``model.json`` without touching the weights."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ArtifactError(f"model directory {directory} does not exist")
    for pattern in ("*.pt", "*.pth", "*.pkl", "*.pickle", "*.bin", "*.ckpt"):
        found = sorted(directory.glob(pattern))
        if found:
            raise ArtifactError(f"refusing {found[0].name}: artifacts are safetensors + JSON only")
    path = directory / META
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise ArtifactError(f"{path} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ArtifactError(f"{path} is not a ganwatch model (format {meta.get('format')!r})")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(
            f"{path} has format_version {meta.get('format_version')!r}; "
            f"this ganwatch reads {FORMAT_VERSION}"
        )
    missing = [k for k in ("network", "channels", "scaler", "score_normaliser", "threshold",
                           "model_version") if k not in meta]
    if missing:
        raise ArtifactError(f"{path} lacks {', '.join(missing)}")
    return meta


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ArtifactError(f"{path} is missing")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise ArtifactError(f"{path} is not a valid safetensors file: {exc}") from None


def load_artifact(directory: str | Path, device: str = "auto") -> Artifact:
    """Load an artifact strictly; any mismatch raises ``ArtifactError``."""
    directory = Path(directory)
    meta = read_meta(directory)
    try:
        spec = ModelSpec.from_meta(meta)
        networks = Networks(spec.shape)
        threshold = threshold_of(meta["threshold"])
    except (TypeError, KeyError, ValueError) as exc:
        raise ArtifactError(f"{directory / META} is inconsistent: {exc}") from None
    shape = spec.shape

    tensors = _read_tensors(directory / WEIGHTS)
    expected = networks.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise ArtifactError(
            f"{directory / WEIGHTS} does not match a {shape.kind} model: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    for name, want in expected.items():
        if tuple(tensors[name].shape) != tuple(want.shape):
            raise ArtifactError(
                f"{directory / WEIGHTS}: tensor {name} has shape {tuple(tensors[name].shape)}, "
                f"expected {tuple(want.shape)}"
            )
    networks.load_state_dict(tensors, strict=True)
    gap = meta.get("max_gap_ms")
    if gap is not None and (isinstance(gap, bool) or not isinstance(gap, int) or gap <= 0):
        raise ArtifactError(f"{directory / META}: max_gap_ms must be a positive integer or null, "
                            f"got {gap!r}")
    detector = LstmGanDetector(networks, spec, meta["model_version"], device=device)
    return Artifact(detector=detector, threshold=threshold, meta=meta)
