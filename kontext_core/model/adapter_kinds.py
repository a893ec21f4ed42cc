"""One interface per kind of adapter, found by `lora_type` (training) or by a saved file (loading).

Training, validation, inference and the registry ask this module, never a file name: adding a kind
is one module with an `AdapterKind` subclass plus one `register_adapter_kind` line below.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from kontext_core.config import ConfigError, Params
from kontext_core.fsutil import sha256_file


class AdapterKind(ABC):
    lora_type: str  # the `lora_type` value that selects it for training
    format: str  # what the registry records as `kontext.adapter_format`
    # Params that change the trained adapter of this kind (besides the training keys).
    params_keys: tuple[str, ...] = ()

    @abstractmethod
    def add(self, transformer: Any, params: Params, workdir: Path | None) -> Any:
        """Attach a fresh trainable adapter; returns the trainer's Adapter (parameters, state_dict, save)."""

    @abstractmethod
    def find_weights(self, saved: Path) -> Path | None:
        """The weights file of this kind in a saved adapter (a folder or a file), or None."""

    @abstractmethod
    def attach_live(self, transformer: Any, weights: Path, params: Params) -> None:
        """Re-create a saved adapter live on a (possibly quantized) training base (validation)."""

    @abstractmethod
    def load_for_inference(self, pipe: Any, weights: Path) -> None:
        """Apply a saved adapter to an unquantized FluxKontextPipeline (`kontext edit`, serving)."""

    def fingerprint_inputs(self, params: Params, workdir: Path) -> dict[str, Any]:
        """Files besides params that change the adapter (their content hashes)."""
        return {}


class StandardLora(AdapterKind):
    """peft LoRA saved in diffusers' format: stock `load_lora_weights` reads it."""

    lora_type = "standard"
    format = "diffusers-lora"
    params_keys = ("lora_rank", "lora_alpha", "lora_dropout", "lora_init_type", "flux_lora_target")

    def add(self, transformer: Any, params: Params, workdir: Path | None) -> Any:
        from kontext_core.model.adapters import Adapter, add_lora

        add_lora(transformer, params)
        return Adapter(transformer, params)

    def find_weights(self, saved: Path) -> Path | None:
        from kontext_core.model.adapters import LORA_FILE

        if saved.is_file():
            return saved if saved.suffix == ".safetensors" else None
        if (saved / LORA_FILE).exists():
            return saved / LORA_FILE
        candidates = sorted(saved.glob("*.safetensors"))
        return candidates[0] if candidates else None

    def attach_live(self, transformer: Any, weights: Path, params: Params) -> None:
        from kontext_core.model.adapters import attach_saved_lora

        attach_saved_lora(transformer, weights, params)

    def load_for_inference(self, pipe: Any, weights: Path) -> None:
        pipe.load_lora_weights(str(weights.parent), weight_name=weights.name)


class Lycoris(AdapterKind):
    """LyCORIS (LoKr, LoHa, ...) through lycoris-lora, saved in LyCORIS' own format."""

    lora_type = "lycoris"
    format = "lycoris"
    params_keys = ("lycoris_config",)

    def add(self, transformer: Any, params: Params, workdir: Path | None) -> Any:
        from kontext_core.model.lycoris import add_lycoris, load_lycoris_config

        return add_lycoris(transformer, load_lycoris_config(params, workdir))

    def find_weights(self, saved: Path) -> Path | None:
        from kontext_core.model.lycoris import find_lycoris_file

        return find_lycoris_file(saved)

    def attach_live(self, transformer: Any, weights: Path, params: Params) -> None:
        from kontext_core.model.lycoris import attach_saved_lycoris

        attach_saved_lycoris(transformer, weights)

    def load_for_inference(self, pipe: Any, weights: Path) -> None:
        from kontext_core.model.lycoris import attach_saved_lycoris

        attach_saved_lycoris(pipe.transformer, weights)

    def fingerprint_inputs(self, params: Params, workdir: Path) -> dict[str, Any]:
        path = Path(params.lycoris_config)
        path = path if path.is_absolute() else workdir / path
        if not path.exists():
            raise ConfigError(f"lycoris_config = {params.lycoris_config!r}: file not found ({path})")
        return {"lycoris_config": sha256_file(path)}


ADAPTER_KINDS: dict[str, AdapterKind] = {}


def register_adapter_kind(kind: AdapterKind) -> None:
    ADAPTER_KINDS[kind.lora_type] = kind


def kind_for(params: Params) -> AdapterKind:
    try:
        return ADAPTER_KINDS[params.lora_type]
    except KeyError:
        raise ConfigError(
            f"lora_type = {params.lora_type!r}: unknown adapter kind; allowed: {', '.join(ADAPTER_KINDS)}"
        ) from None


def detect(saved: Path) -> tuple[AdapterKind, Path]:
    """The kind that saved `saved` (a folder or a weights file) and its weights file.

    The most specific kinds are asked first; the standard LoRA (any safetensors) answers last.
    """
    saved = Path(saved)
    if not saved.exists():
        raise FileNotFoundError(f"{saved}: no adapter file or folder")
    for kind in sorted(ADAPTER_KINDS.values(), key=lambda k: isinstance(k, StandardLora)):
        weights = kind.find_weights(saved)
        if weights is not None:
            return kind, weights
    raise FileNotFoundError(f"{saved}: holds no adapter weights (.safetensors) of a known kind")


def add_adapter(transformer: Any, params: Params, workdir: Path | None = None) -> Any:
    """Attach the adapter that `params` describe (deterministic under the caller's seed).

    `workdir` resolves relative paths in adapter settings (default: the current directory).
    """
    return kind_for(params).add(transformer, params, workdir)


def attach_saved_adapter(transformer: Any, saved: Path, params: Params) -> AdapterKind:
    """Re-create a saved adapter live on a (quantized) transformer, whatever kind saved it."""
    kind, weights = detect(Path(saved))
    kind.attach_live(transformer, weights, params)
    return kind


def params_keys() -> list[str]:
    """Every adapter key of every kind (the train stage's params, fixed for DVC)."""
    return list(dict.fromkeys(key for kind in ADAPTER_KINDS.values() for key in kind.params_keys))


register_adapter_kind(StandardLora())
register_adapter_kind(Lycoris())
