"""LyCORIS adapters (LoKr, LoHa, LoCon, ...) through the `lycoris-lora` package.

`lycoris_config` is SimpleTuner's JSON: `algo`, `multiplier`, `linear_dim`, `linear_alpha`, `factor`,
and `apply_preset` (`target_module` class names, `module_algo_map` per-class overrides, ...). The
adapter is saved in LyCORIS' own format (`lycoris_weights.safetensors`, keys `lycoris_<module>.<param>`,
the config in the header and beside it) and reloaded with `create_lycoris_from_weights`, which rebuilds
each module from its weights alone.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from kontext_core.config import ConfigError, Params
from kontext_core.fsutil import atomic_dir, canonicalize_safetensors_header

LYCORIS_FILE = "lycoris_weights.safetensors"
LYCORIS_CONFIG_FILE = "lycoris_config.json"
KEY_PREFIX = "lycoris_"
NETWORK_ATTR = "kontext_lycoris"

# SimpleTuner's examples name diffusers' attention class "Attention"; Flux's is FluxAttention now.
CLASS_ALIASES = {"Attention": "FluxAttention"}
# LycorisNetwork keeps its preset in class attributes: every use starts from this blank state.
BLANK_PRESET: dict[str, Any] = {
    "enable_conv": True,
    "target_module": [],
    "target_name": [],
    "module_algo_map": {},
    "name_algo_map": {},
    "lora_prefix": "lycoris",
    "use_fnmatch": False,
    "exclude_name": [],
}
# Options of create_lycoris passed through to the network (SimpleTuner config names).
NETWORK_OPTIONS = {
    "dropout": "dropout",
    "rank_dropout": "rank_dropout",
    "module_dropout": "module_dropout",
    "factor": "factor",
    "decompose_both": "decompose_both",
    "full_matrix": "full_matrix",
    "bypass_mode": "bypass_mode",
    "use_tucker": "use_tucker",
    "use_scalar": "use_scalar",
    "dora_wd": "weight_decompose",
    "rescaled": "rescaled",
    "constraint": "constraint",
    "block_size": "block_size",
    "unbalanced_factorization": "unbalanced_factorization",
}
KNOWN_KEYS = {"algo", "multiplier", "linear_dim", "linear_alpha", "conv_dim", "conv_alpha", "apply_preset"} | set(
    NETWORK_OPTIONS
)


def load_lycoris_config(params: Params, workdir: Path | None = None) -> dict[str, Any]:
    path = Path(params.lycoris_config).expanduser()
    if not path.is_absolute():
        path = (workdir or Path.cwd()) / path
    if not path.exists():
        raise ConfigError(f"lycoris_config = {params.lycoris_config!r}: file not found ({path})")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON: {exc}") from exc
    return check_lycoris_config(config, str(path))


def check_lycoris_config(config: Any, where: str) -> dict[str, Any]:
    from lycoris.wrapper import network_module_dict

    if not isinstance(config, dict):
        raise ConfigError(f"{where}: expected a JSON object")
    unknown = sorted(set(config) - KNOWN_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown key '{unknown[0]}'; allowed: {', '.join(sorted(KNOWN_KEYS))}")
    algo = str(config.get("algo", "lokr")).lower()
    if algo not in network_module_dict:
        raise ConfigError(f"{where}: algo = {algo!r}; allowed: {', '.join(sorted(network_module_dict))}")
    preset = config.get("apply_preset", {})
    if not isinstance(preset, dict):
        raise ConfigError(f"{where}: apply_preset must be an object")
    unknown = sorted(set(preset) - set(BLANK_PRESET))
    if unknown:
        raise ConfigError(f"{where}: apply_preset: unknown key '{unknown[0]}'; allowed: {', '.join(BLANK_PRESET)}")
    return {**config, "algo": algo}


def _aliased(names: list[str], model: torch.nn.Module) -> list[str]:
    present = {type(m).__name__ for m in model.modules()}
    return [CLASS_ALIASES.get(n, n) if n not in present else n for n in names]


def resolved_preset(config: dict[str, Any], model: torch.nn.Module) -> dict[str, Any]:
    preset = {**BLANK_PRESET, **config.get("apply_preset", {})}
    if not config.get("apply_preset"):
        preset["target_module"] = ["FluxAttention"]
    preset["target_module"] = _aliased(list(preset["target_module"]), model)
    algo_map = preset["module_algo_map"]
    preset["module_algo_map"] = dict(zip(_aliased(list(algo_map), model), algo_map.values(), strict=True))
    return preset


class LycorisAdapter:
    """The Adapter interface (see kontext_core.model.adapters) over a LycorisNetwork."""

    def __init__(self, network: torch.nn.Module, config: dict[str, Any]) -> None:
        self.network = network
        self.config = config

    def parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.network.parameters() if p.requires_grad]

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().to("cpu").contiguous() for k, v in self.network.state_dict().items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.network.load_state_dict(state, strict=True)

    @contextmanager
    def disabled(self) -> Iterator[None]:
        """The base model alone for the duration (regularisation data's parent-teacher target)."""
        multiplier = self.network.multiplier
        self.network.set_multiplier(0.0)
        try:
            yield
        finally:
            self.network.set_multiplier(multiplier)

    def save(self, out_dir: Path) -> Path:
        state = self.state_dict()
        config_text = json.dumps(self.config, indent=2, sort_keys=True)
        with atomic_dir(Path(out_dir)) as tmp:
            save_file(state, tmp / LYCORIS_FILE, metadata={"lycoris_config": config_text, "format": "lycoris"})
            canonicalize_safetensors_header(tmp / LYCORIS_FILE)
            (tmp / LYCORIS_CONFIG_FILE).write_text(config_text + "\n")
        return Path(out_dir) / LYCORIS_FILE


def _device_dtype(model: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    for p in model.parameters():
        if p.is_floating_point():
            return p.device, p.dtype
    return torch.device("cpu"), torch.float32


def add_lycoris(transformer: torch.nn.Module, config: dict[str, Any]) -> LycorisAdapter:
    """Wrap the frozen (possibly quantized) transformer's target modules with fresh LyCORIS modules."""
    from lycoris import LycorisNetwork

    transformer.requires_grad_(False)
    LycorisNetwork.apply_preset(resolved_preset(config, transformer))
    options = {NETWORK_OPTIONS[k]: v for k, v in config.items() if k in NETWORK_OPTIONS}
    linear_dim = int(config.get("linear_dim", 4))
    linear_alpha = float(config.get("linear_alpha", 1))
    network = LycorisNetwork(
        transformer,
        multiplier=float(config.get("multiplier", 1.0)),
        lora_dim=linear_dim,
        conv_lora_dim=int(config.get("conv_dim", linear_dim)),
        alpha=linear_alpha,
        conv_alpha=float(config.get("conv_alpha", linear_alpha)),
        network_module=config["algo"],
        **options,
    )
    if not network.loras:
        raise ConfigError(f"lycoris_config: apply_preset matched no module of {type(transformer).__name__}")
    network.apply_to()
    _register(transformer, network)
    network.requires_grad_(True)
    return LycorisAdapter(network, config)


def _register(transformer: torch.nn.Module, network: torch.nn.Module) -> None:
    """Make the network a submodule of the model it patches: it then follows `.to()`, accelerate's
    offload hooks and DDP's gradient sync like peft's LoRA layers do."""
    device, _ = _device_dtype(transformer)
    network.to(device)
    transformer.add_module(NETWORK_ATTR, network)


def find_lycoris_file(adapter_dir: Path) -> Path | None:
    """The LyCORIS weights in an adapter folder (by name, or by LyCORIS keys in a lone safetensors)."""
    if adapter_dir.is_file():
        candidates = [adapter_dir]
    elif (adapter_dir / LYCORIS_FILE).exists():
        return adapter_dir / LYCORIS_FILE
    else:
        candidates = sorted(adapter_dir.glob("*.safetensors"))
    for path in candidates:
        with safe_open(str(path), framework="pt") as handle:
            keys = list(handle.keys())
        if keys and all(k.startswith(KEY_PREFIX) for k in keys):
            return path
    return None


def attach_saved_lycoris(transformer: torch.nn.Module, weights_file: Path, multiplier: float = 1.0) -> torch.nn.Module:
    """Re-create a saved LyCORIS adapter live on a transformer (quantized or not); returns the network."""
    from lycoris import LycorisNetwork, create_lycoris_from_weights

    LycorisNetwork.apply_preset(BLANK_PRESET)
    state = load_file(str(weights_file))
    network, _ = create_lycoris_from_weights(multiplier, str(weights_file), transformer, weights_sd=state)
    wanted = {k.split(".")[0] for k in state}
    if len(network.loras) != len(wanted):
        raise ValueError(f"{weights_file}: {len(wanted) - len(network.loras)} adapter modules are not in the model")
    network.apply_to()
    _register(transformer, network)
    network.requires_grad_(False)
    return network
