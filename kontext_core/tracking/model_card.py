"""The model card of a registered version: README.md with the hub's YAML metadata block, and the
hub-ready folder `kontext export --format hub` writes (adapter in diffusers layout, card, sample grids).

The card says what a user of the adapter needs: the base model and the revision it resolved to, the
prompts it was validated on, the settings that trained it, its metrics next to the base model's on the
same eval set, the validation grids, and the licence: an adapter for FLUX.1 [dev] (Kontext included)
is a derivative under the FLUX.1 [dev] Non-Commercial License.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kontext_core.config import Params
from kontext_core.config.registered import metric_directions
from kontext_core.fsutil import atomic_dir

CARD_FILE = "README.md"
# The folder a registered version keeps its card in (next to the adapter, in the model's artifacts).
CARD_ARTIFACT = "model_card"
IMAGES_DIR = "images"
# Grids shipped with a card: enough to show the edit, few enough to keep the registry light.
MAX_IMAGES = 4
LICENSE = {
    "license": "other",
    "license_name": "flux-1-dev-non-commercial-license",
    "license_link": "https://huggingface.co/black-forest-labs/FLUX.1-Kontext-dev/blob/main/LICENSE.md",
}
TAGS = ["flux", "flux-kontext", "image-editing", "lora", "diffusers", "template:sd-lora", "kontext-pipeline"]
SETTINGS = (
    "model_family", "model_flavour", "lora_type", "lora_rank", "lora_alpha", "flux_lora_target",
    "learning_rate", "optimizer", "lr_scheduler", "max_train_steps", "train_batch_size", "seed",
    "base_model_precision", "flux_guidance_value", "validation_guidance", "validation_num_inference_steps",
    "conditioning_multidataset_sampling",
)  # fmt: skip


@dataclass
class CardFacts:
    """What a card is written from (every field known at registration time)."""

    model_name: str
    base: dict[str, Any]  # {"hub_id", "revision"} or {"path", "content_sha256"}
    settings: dict[str, Any]
    metrics: dict[str, float]
    prompts: list[str]
    images: list[str] = field(default_factory=list)  # file names under images/
    adapter_format: str = "diffusers-lora"
    decision: str = ""


def base_facts(params: Params, workdir: Path) -> dict[str, Any]:
    from kontext_core.model.source import model_fingerprint

    found = model_fingerprint(params, workdir)
    if "local" in found:
        return {"path": params.pretrained_model_name_or_path, "content_sha256": found["local"]}
    return {
        "hub_id": found["hub_id"],
        "revision": params.revision or "main",
        # model_fingerprint already resolved the revision to its commit (kontext_core.hub.resolve).
        "resolved_revision": found["commit"],
    }


def card_facts(
    params: Params, workdir: Path, metrics: dict[str, Any], per_pair: list[dict], images: list[str], fmt: str
) -> CardFacts:
    settings = {k: getattr(params, k) for k in SETTINGS if getattr(params, k, None) is not None}
    prompts = list(dict.fromkeys(p["caption"] for p in per_pair if p.get("caption")))
    numbers = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    return CardFacts(params.registry.model_name, base_facts(params, workdir), settings, numbers, prompts, images, fmt)


def metadata(facts: CardFacts) -> dict[str, Any]:
    """The YAML block the hub reads (huggingface_hub's ModelCardData fields)."""
    data: dict[str, Any] = {}
    if "hub_id" in facts.base:
        data["base_model"] = facts.base["hub_id"]
        data["base_model_relation"] = "adapter"
    data |= {"library_name": "diffusers", **LICENSE, "pipeline_tag": "image-to-image", "tags": list(TAGS)}
    if facts.prompts:
        data["instance_prompt"] = facts.prompts[0]
    widget = [
        {"text": prompt, "output": {"url": f"{IMAGES_DIR}/{image}"}}
        for prompt, image in zip(facts.prompts or [""] * len(facts.images), facts.images, strict=False)
    ]
    if widget:
        data["widget"] = widget
    return data


def render(facts: CardFacts) -> str:
    """The README.md: the YAML metadata block, then the card's text."""
    lines = ["---", yaml.safe_dump(metadata(facts), sort_keys=False, allow_unicode=True).rstrip(), "---", ""]
    lines += [f"# {facts.model_name}: a FLUX.1 Kontext [dev] {_kind(facts.adapter_format)}", ""]
    lines += ["Trained with kontext-pipeline (SimpleTuner-compatible configuration). An image and an instruction in, the edited image out.", ""]  # noqa: E501
    lines += ["## Base model", "", _base_line(facts.base), ""]
    lines += ["## Prompts", "", "The instructions of the eval pairs it was validated on:", ""]
    lines += [f"- {p}" for p in facts.prompts] or ["- (none recorded)"]
    lines += ["", "## Settings", "", "| key | value |", "|---|---|"]
    lines += [f"| `{k}` | `{_value(v)}` |" for k, v in facts.settings.items()]
    lines += ["", "## Metrics against the base model", ""]
    lines += ["Same eval pairs, same seeds and settings; eval loss is the flow-matching loss at fixed timesteps.", ""]
    lines += ["| metric | this adapter | base model |", "|---|---|---|"]
    for name in metric_directions():  # every registered metric, in registration order
        if name in facts.metrics:
            base = facts.metrics.get(f"{name}_base")
            lines.append(f"| {name} | {facts.metrics[name]:.6g} | {'' if base is None else f'{base:.6g}'} |")
    if facts.decision:
        lines += ["", f"Registry decision: {facts.decision}"]
    if facts.images:
        lines += ["", "## Validation grids", "", "reference | base model | this adapter | target", ""]
        lines += [f"![{image}]({IMAGES_DIR}/{image})" for image in facts.images]
    lines += ["", "## Use", "", "```python", *_usage(facts), "```", ""]
    lines += ["## License", ""]
    lines += [
        "FLUX.1 [dev] and FLUX.1 Kontext [dev] are released under the FLUX.1 [dev] Non-Commercial License; this "
        f"adapter is a derivative of them and falls under the same terms ({LICENSE['license_link']}).",
        "",
    ]
    return "\n".join(lines)


def _kind(fmt: str) -> str:
    return "LyCORIS adapter" if fmt == "lycoris" else "LoRA"


def _base_line(base: dict[str, Any]) -> str:
    if "hub_id" in base:
        resolved = base.get("resolved_revision") or "not in the local hub cache when registered"
        return f"`{base['hub_id']}` at revision `{base['revision']}` (commit `{resolved}`)."
    return (
        f"A local model folder, `{base['path']}` (content sha256 `{base['content_sha256']}`); not on the hub. "
        "The adapter's architecture is FLUX.1 Kontext [dev]'s."
    )


def _value(value: Any) -> str:
    return json.dumps(value) if isinstance(value, list | dict) else str(value)


def _usage(facts: CardFacts) -> list[str]:
    base = facts.base.get("hub_id", "black-forest-labs/FLUX.1-Kontext-dev")
    weight = "lycoris_weights.safetensors" if facts.adapter_format == "lycoris" else "pytorch_lora_weights.safetensors"
    prompt = (facts.prompts or ["make it night"])[0]
    lines = [
        "import torch",
        "from diffusers import FluxKontextPipeline",
        "from diffusers.utils import load_image",
        "",
        f'pipe = FluxKontextPipeline.from_pretrained("{base}", torch_dtype=torch.bfloat16).to("cuda")',
    ]
    if facts.adapter_format == "lycoris":
        lines += [
            "from lycoris import create_lycoris_from_weights",
            "",
            f'network, _ = create_lycoris_from_weights(1.0, "{weight}", pipe.transformer)',
            "network.merge_to()",
        ]
    else:
        lines.append(f'pipe.load_lora_weights("path/to/this/folder", weight_name="{weight}")')
    lines.append(f'image = pipe(image=load_image("in.png"), prompt={json.dumps(prompt)}, guidance_scale=2.5).images[0]')
    return lines


def write_card_files(facts: CardFacts, grids: Path, out: Path) -> Path:
    """README.md and images/ (the first grids) into `out`, a folder that exists."""
    (out / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
    for name in facts.images:
        shutil.copy2(Path(grids) / name, out / IMAGES_DIR / name)
    (out / CARD_FILE).write_text(render(facts))
    return out / CARD_FILE


def pick_images(grids: Path) -> list[str]:
    return sorted(p.name for p in Path(grids).glob("*.png"))[:MAX_IMAGES] if Path(grids).is_dir() else []


def write_hub_folder(adapter_weights: list[Path], card_dir: Path, out: Path) -> Path:
    """The folder to upload to the hub: the adapter's files, README.md and images/ (from `card_dir`)."""
    with atomic_dir(Path(out)) as tmp:
        for path in adapter_weights:
            shutil.copy2(path, tmp / path.name)
        shutil.copy2(card_dir / CARD_FILE, tmp / CARD_FILE)
        if (card_dir / IMAGES_DIR).is_dir():
            shutil.copytree(card_dir / IMAGES_DIR, tmp / IMAGES_DIR)
    return Path(out)


def write_model_card(
    params: Params, workdir: Path, adapter_dir: Path, validate_dir: Path, metrics: dict[str, Any], out: Path
) -> Path:
    """The card folder (README.md, images/) of the adapter validated in `validate_dir`; returns the folder."""
    from kontext_core.tracking.registry import adapter_format

    per_pair_file = Path(validate_dir) / "per_pair.json"
    per_pair = json.loads(per_pair_file.read_text()) if per_pair_file.exists() else []
    grids = Path(validate_dir) / "grids"
    facts = card_facts(params, workdir, metrics, per_pair, pick_images(grids), adapter_format(Path(adapter_dir)))
    write_card_files(facts, grids, Path(out))
    return Path(out)


def export_hub(
    adapter: Path,
    out: Path,
    card_dir: Path | None,
    source: str,
    params: Params | None = None,
    project: Path | None = None,
) -> Path:
    """The hub folder of a registered version (its logged card) or of the project's adapter folder (a
    card written now from the project's validation outputs)."""
    import tempfile

    from kontext_core.model.adapter_kinds import detect

    kind, weights = detect(Path(adapter))
    files = [weights] + [p for p in Path(weights).parent.glob("*_config.json")]
    if card_dir is not None:
        return write_hub_folder(files, card_dir, out)
    if params is None or project is None:
        raise FileNotFoundError(f"{source}: this version has no model card (registered before cards were made)")
    validate_dir = Path(project) / "artifacts/validate"
    metrics_file = Path(project) / "artifacts/metrics/validate.json"
    if not metrics_file.exists():
        raise FileNotFoundError(f"{metrics_file}: no validation metrics for the card; run the validate stage first")
    with tempfile.TemporaryDirectory(prefix="kontext-card-") as tmp:
        card = write_model_card(params, project, adapter, validate_dir, json.loads(metrics_file.read_text()), Path(tmp))
        return write_hub_folder(files, card, out)
