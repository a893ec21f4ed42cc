"""`multidatabackend.json`: SimpleTuner's dataset entries, and the rules across entries.

An entry that leaves out a dataset default (`resolution`, `resolution_type`, `minimum_image_size`,
`caption_strategy`, `aspect_bucket_rounding`) takes it from params.yaml, as SimpleTuner's factory
takes it from its command line; the entry still records which keys it set itself
(`model_fields_set`), because a reference set inherits only what its edit set sets.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import (
    Field,
    SecretStr,
    SerializationInfo,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from kontext_core.config.base import Strict, harmless, with_hint
from kontext_core.config.generators import ConditioningGenerator, HuggingfaceOptions
from kontext_core.config.params import (
    DATASET_DEFAULT_KEYS,
    CaptionStrategy,
    Params,
    ResolutionType,
    resolution_problem,
)
from kontext_core.config.simpletuner_keys import (
    DEPRECATED_DATASET_KEYS,
    SECRET_DATASET_KEYS,
    SIMPLETUNER_DATASET_KEYS,
)

# The entry keys a dataset can take from params.yaml; each has the same name there.
DEFAULTS_FROM_PARAMS = DATASET_DEFAULT_KEYS

# A backend's own keys (`type: aws`: aws_bucket_name, ...): `type` -> the options model its module
# defines, registered with the backend (kontext_core.data.backends.register_backend). The file keeps
# them beside the shared keys, as SimpleTuner's schema has them; an entry holds them as that model.
BACKEND_OPTIONS: dict[str, type[Strict]] = {}


def register_backend_options(backend_type: str, model: type[Strict]) -> None:
    BACKEND_OPTIONS[backend_type] = model


def _option_problems(model: type[Strict], data: dict[str, Any]) -> list[str]:
    """A backend's options as one line per broken key (`key = value: reason`, secrets masked)."""
    try:
        model.model_validate(data)
    except ValidationError as err:
        lines = []
        for error in err.errors():
            key = ".".join(str(part) for part in error["loc"])
            shown = "'**********'" if key in SECRET_DATASET_KEYS else repr(error.get("input"))
            lines.append(f"{key} = {shown}: {error['msg'].removeprefix('Value error, ')}")
        return lines
    return []


class DatasetEntry(Strict):
    NOT_APPLICABLE: ClassVar[dict[str, str]] = {
        "cache_dir": "text embeddings are cached content-addressed under cache/text (an s3:// location is acted on)",
        "cache_dir_vae": "latents are cached content-addressed under cache/vae (an s3:// location is acted on)",
        "vae_cache_clear_each_epoch": "the VAE cache is persistent; images are not re-augmented per epoch",
        "metadata_backend": "sizes come from image headers (local) or the dataset rows (huggingface)",
        "hash_filenames": "cache entries are always keyed by content hashes",
        "skip_file_discovery": "the header scan is cached by path, size and mtime and always runs",
    }
    HARMLESS: ClassVar[dict[str, object]] = {
        "vae_cache_clear_each_epoch": False,
        "hash_filenames": True,
        "skip_file_discovery": None,
    }

    OTHER_KNOWN_KEYS: ClassVar[frozenset[str]] = SIMPLETUNER_DATASET_KEYS | {"disable", "is_regularization_data"}

    id: str
    # A registered backend (kontext_core.data.backends): checked there, with the allowed values.
    type: str = "local"
    dataset_type: Literal["image", "conditioning", "text_embeds"] = "image"
    disabled: bool = False
    default: bool = False
    instance_data_dir: str | None = None
    cache_dir: str | None = None
    cache_dir_vae: str | None = None
    conditioning_data: list[str] | str | None = None
    conditioning_type: Literal["reference_strict", "reference_loose"] | None = None
    source_dataset_id: str | None = None
    # A list, or one object (SimpleTuner accepts both); always a list once loaded.
    conditioning: list[ConditioningGenerator] | None = None
    resolution: float | None = Field(None, gt=0)
    resolution_type: ResolutionType = "pixel_area"
    minimum_image_size: float | None = Field(None, ge=0)
    maximum_image_size: float | None = Field(None, gt=0)
    target_downsample_size: float | None = Field(None, gt=0)
    aspect_bucket_rounding: int = Field(2, ge=1, le=9)
    # SimpleTuner's defaults (kontext_core.data.buckets says what each does). crop off still resizes
    # keeping the aspect ratio and cuts the few spare pixels by crop_style.
    crop: bool = False
    crop_style: Literal["random", "center", "centre", "corner", "face"] = "random"
    crop_aspect: Literal["square", "preserve", "closest", "random"] = "square"
    # Aspect ratios for crop_aspect closest/random: numbers, or {"aspect": a, "weight": w} (SimpleTuner's
    # TrainingSample reads "aspect"; its factory's message says "aspect_bucket": both are accepted).
    crop_aspect_buckets: list[float | dict[str, float]] | None = None
    caption_strategy: CaptionStrategy | None = "filename"
    instance_prompt: str | None = None
    prepend_instance_prompt: bool = False
    only_instance_prompt: bool = False
    vae_cache_clear_each_epoch: bool = False
    dataset_name: str | None = None
    split: str = "train"
    revision: str | None = None
    metadata_backend: Literal["discovery", "parquet", "json", "huggingface"] | None = None
    huggingface: HuggingfaceOptions | None = None
    # The keys of the entry's backend (BACKEND_OPTIONS[type]; `type: aws`: the aws_* keys, in
    # kontext_core.data.s3_backend): written at the top level of the entry, held here as the
    # backend's options model (a dict only while they have problems). Dumps put them back at the top level.
    backend_options: Any = None
    # Sampling (kontext_core.train.sampler): each image is seen 1 + repeats times per epoch, kept
    # with `probability` per epoch, only within start..end epoch, from at most max_num_samples.
    repeats: int = Field(0, ge=0)
    probability: float = Field(1.0, ge=0)
    max_num_samples: int | None = Field(None, ge=1)
    start_epoch: int = Field(1, ge=1)
    end_epoch: int | None = Field(None, ge=1)
    start_step: int = Field(0, ge=0)
    end_step: int | None = Field(None, ge=0)
    # Parent-teacher training on an edit set: its target is the base model's own prediction.
    is_regularisation_data: bool = False
    hash_filenames: bool = True
    skip_file_discovery: str | list[str] | None = None
    # Other SimpleTuner dataset keys (SIMPLETUNER_DATASET_KEYS) as the file gives them.
    simpletuner_extras: dict[str, Any] = Field(default_factory=dict)

    # Keys a conditioning set takes from its edit set when it does not set them itself.
    INHERITED_KEYS: ClassVar[tuple[str, ...]] = (
        "resolution",
        "resolution_type",
        "maximum_image_size",
        "target_downsample_size",
        "crop",
        "crop_style",
        "crop_aspect",
        "crop_aspect_buckets",
        "aspect_bucket_rounding",
    )

    @model_validator(mode="before")
    @classmethod
    def _simpletuner_spellings(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if "disable" in data:
            # SimpleTuner skips an entry when either `disabled` or its alias `disable` is true.
            data["disabled"] = bool(data.pop("disable")) or bool(data.get("disabled", False))
        if "is_regularization_data" in data:
            data.setdefault("is_regularisation_data", data.pop("is_regularization_data"))
        if isinstance(data.get("conditioning"), dict):
            data["conditioning"] = [data["conditioning"]]
        # The backend's own keys, for its options model.
        model = BACKEND_OPTIONS.get(str(data.get("type", "local")))
        own = {k: data.pop(k) for k in list(data) if model is not None and k in model.model_fields}
        if own:
            data["backend_options"] = own
        # SimpleTuner keys without a field here: kept aside, accepted, and warned about if set
        # (secrets as SecretStr: no dump or report shows them).
        extras = {k: data.pop(k) for k in list(data) if k in SIMPLETUNER_DATASET_KEYS and k not in cls.model_fields}
        extras = {k: SecretStr(v) if k in SECRET_DATASET_KEYS and isinstance(v, str) else v for k, v in extras.items()}
        if extras:
            data["simpletuner_extras"] = {**data.get("simpletuner_extras", {}), **extras}
        return data

    @classmethod
    def known_keys(cls) -> list[str]:
        return [*super().known_keys(), *sorted({k for m in BACKEND_OPTIONS.values() for k in m.model_fields})]

    @model_validator(mode="after")
    def _typed_backend_options(self) -> Any:
        """The backend's keys as its options model once they validate (`rule_problems` lists them if not)."""
        model = BACKEND_OPTIONS.get(self.type)
        if model is not None and isinstance(self.backend_options, dict) and not _option_problems(
            model, self.backend_options
        ):
            object.__setattr__(self, "backend_options", model.model_validate(self.backend_options))
        return self

    @model_serializer(mode="wrap")
    def _flat_backend_options(self, handler: SerializerFunctionWrapHandler, info: SerializationInfo) -> Any:
        """The backend's keys back at the top level, as the file has them (secrets masked in JSON)."""
        data = handler(self)
        options = data.pop("backend_options", None) if isinstance(data, dict) else None
        if isinstance(options, dict):
            excluded = info.exclude or {}
            data.update({k: v for k, v in options.items() if k not in excluded})
        return data

    @field_validator("skip_file_discovery", mode="before")
    @classmethod
    def _skip_list(cls, value: Any) -> Any:
        return value or None

    def rule_problems(self) -> list[str]:
        problems = []
        if self.end_epoch is not None and self.end_epoch < self.start_epoch:
            problems.append(f"end_epoch = {self.end_epoch} must be >= start_epoch = {self.start_epoch}")
        if self.end_step is not None and self.end_step < self.start_step:
            problems.append(f"end_step = {self.end_step} must be >= start_step = {self.start_step}")
        model = BACKEND_OPTIONS.get(self.type)
        if model is not None and isinstance(self.backend_options, dict):
            problems += _option_problems(model, self.backend_options)
        # What a `type` needs (a folder, a dataset name, a bucket) is its backend's check.
        return problems

    def default_rule_problems(self) -> list[str]:
        """Rules on keys that may come from params.yaml: checked once the defaults are applied."""
        if self.dataset_type == "text_embeds" or self.disabled:
            return []
        problems = []
        if problem := resolution_problem(self.resolution, self.resolution_type):
            problems.append(problem)
        wanting = [
            name
            for name, wants in (
                ("caption_strategy 'instanceprompt'", self.caption_strategy == "instanceprompt"),
                ("prepend_instance_prompt", self.prepend_instance_prompt),
                ("only_instance_prompt", self.only_instance_prompt),
            )
            if wants
        ]
        if wanting and not self.instance_prompt:
            problems.append(f"{wanting[0]} needs 'instance_prompt'")
        if self.type == "aws" and self.caption_strategy == "huggingface":
            problems.append(
                "caption_strategy = 'huggingface' does not apply to an aws dataset; "
                "allowed: textfile, filename, instanceprompt, null"
            )
        if self.type == "huggingface" and self.caption_strategy in ("textfile", "filename"):
            problems.append(
                f"caption_strategy = '{self.caption_strategy}' does not apply to a huggingface dataset; "
                "allowed: huggingface, instanceprompt, null"
            )
        if self.maximum_image_size is not None and self.target_downsample_size is None:
            problems.append("maximum_image_size needs target_downsample_size (the size to downsample to)")
        if self.crop_aspect in ("closest", "random") and not self.crop_aspect_buckets:
            problems.append(f"crop_aspect = '{self.crop_aspect}' needs crop_aspect_buckets (a list of aspect ratios)")
        for bucket in self.crop_aspect_buckets or []:
            if isinstance(bucket, dict) and set(bucket) not in ({"aspect", "weight"}, {"aspect_bucket", "weight"}):
                problems.append(f"crop_aspect_buckets entry {bucket} must be {{'aspect': a, 'weight': w}}")
        if self.crop_style == "face":
            problems.append(
                "crop_style = 'face' needs a face detector (SimpleTuner's OpenCV Haar cascade), which this "
                "pipeline does not ship or download; allowed: random, center, centre, corner"
            )
        return problems

    def not_applicable_set(self) -> list[str]:
        keys = super().not_applicable_set()
        own = BACKEND_OPTIONS[self.type].model_fields if self.type in BACKEND_OPTIONS else {}
        keys += [
            k
            for k, v in self.simpletuner_extras.items()
            if not harmless(k, v) and k not in DEPRECATED_DATASET_KEYS and k not in own
        ]
        # The metadata backend this pipeline uses anyway is no news.
        natural = {"local": "discovery", "aws": "discovery", "huggingface": "huggingface"}.get(self.type)
        keys = [k for k in keys if not (k == "metadata_backend" and self.metadata_backend == natural)]
        # An s3:// cache location is acted on: the cache stages share their entries through it.
        return [k for k in keys if not (k in ("cache_dir", "cache_dir_vae") and is_s3(getattr(self, k)))]

    def with_defaults(self, params: Params) -> DatasetEntry:
        """This entry with params.yaml's dataset defaults wherever it does not set its own."""
        update = {k: v for k, v in params.dataset_defaults().items() if k not in self.model_fields_set}
        if not update:
            return self
        resolved = self.model_copy(update=update)
        # Keep "what the file says" apart from "what it resolved to" (see the module docstring).
        object.__setattr__(resolved, "__pydantic_fields_set__", set(self.model_fields_set))
        return resolved

    def deprecated_set(self) -> list[str]:
        """SimpleTuner keys of this entry that SimpleTuner itself says do nothing (warned about, any value)."""
        return [k for k in self.simpletuner_extras if k in DEPRECATED_DATASET_KEYS]

    @property
    def conditioning_ids(self) -> list[str]:
        if self.conditioning_data is None:
            return []
        if isinstance(self.conditioning_data, str):
            return [self.conditioning_data]
        return list(self.conditioning_data)

    @property
    def gives_captions(self) -> bool:
        """A reference set's captions count only when it names a caption_strategy itself."""
        return "caption_strategy" in self.model_fields_set and self.caption_strategy is not None

    @property
    def is_edit_set(self) -> bool:
        return self.dataset_type == "image" and not self.disabled


def is_s3(location: str | None) -> bool:
    return bool(location) and str(location).startswith("s3://")


class DatasetConfig(Strict):
    entries: list[DatasetEntry]

    def shared_cache_uri(self, kind: Literal["vae", "text"]) -> str | None:
        """Where the cache stages share entries across machines: the first s3:// `cache_dir_vae` of
        the enabled image sets (vae), or the text_embeds entry's s3:// `cache_dir` or the location
        its backend's options name (`aws`: its bucket and prefix) (text). Entries are
        content-addressed, so one location serves every set."""
        for entry in self.enabled():
            if kind == "vae" and entry.dataset_type != "text_embeds" and is_s3(entry.cache_dir_vae):
                return entry.cache_dir_vae
            if kind == "text" and entry.dataset_type == "text_embeds":
                if is_s3(entry.cache_dir):
                    return entry.cache_dir
                # A backend whose options name a shared location (aws: its bucket and prefix).
                location = getattr(entry.backend_options, "cache_location", None)
                if callable(location) and (where := location()):
                    return where
        return None

    def by_id(self) -> dict[str, DatasetEntry]:
        return {e.id: e for e in self.entries}

    def enabled(self) -> list[DatasetEntry]:
        return [e for e in self.entries if not e.disabled]

    def referenced_ids(self) -> set[str]:
        return {ref for e in self.enabled() for ref in e.conditioning_ids}

    def edit_sets(self) -> list[DatasetEntry]:
        """Image datasets that are not someone's reference set."""
        referenced = self.referenced_ids()
        return [
            e
            for e in self.enabled()
            if e.dataset_type == "image" and e.id not in referenced and e.source_dataset_id is None
        ]

    def apply_defaults(self, params: Params) -> None:
        """Resolve every entry's dataset defaults from params.yaml (in place; idempotent)."""
        # In place: assigning the field would re-run this model's rules as a validation error.
        self.entries[:] = [entry.with_defaults(params) for entry in self.entries]

    def rule_problems(self) -> list[str]:
        return self.structure_problems() + self.default_problems()

    def default_problems(self) -> list[str]:
        """Entry rules on keys that may come from params.yaml (judge them once it is applied)."""
        return [f"dataset '{entry.id}': {line}" for entry in self.enabled() for line in entry.default_rule_problems()]

    def structure_problems(self) -> list[str]:
        """Rules across entries: ids, references, generated ids, start epochs."""
        problems = []
        ids = [e.id for e in self.entries]
        for duplicate in sorted({i for i in ids if ids.count(i) > 1}):
            problems.append(f"dataset id '{duplicate}' is defined more than once")
        known = self.by_id()
        # A set that looks like a reference set, or any unresolved reference (a typo may mean this
        # set), makes "an edit set without references" a guess rather than a finding.
        unresolved = any(ref not in known for e in self.enabled() for ref in e.conditioning_ids)
        for entry in [] if unresolved else self.edit_sets():
            if not entry.conditioning_ids and not entry.conditioning and entry.conditioning_type is None:
                problems.append(
                    f"dataset '{entry.id}': an edit set needs reference images: set conditioning_data "
                    "(a reference set's id) or conditioning (generated references)"
                )
        edit_sets = self.edit_sets()
        if edit_sets and all(e.start_epoch > 1 or e.start_step > 1 for e in edit_sets):
            problems.append(
                "no edit set starts at once: set start_epoch <= 1 and start_step <= 1 on at least one "
                f"(start_epoch/start_step of {', '.join(e.id for e in edit_sets)})"
            )
        for entry in self.enabled():
            where = f"dataset '{entry.id}'"
            for ref in entry.conditioning_ids:
                if ref not in known:
                    problems.append(with_hint(f"{where}: conditioning_data names unknown dataset '{ref}'", ref, ids))
                elif ref == entry.id:
                    problems.append(f"{where}: conditioning_data names the dataset itself")
                elif known[ref].disabled:
                    problems.append(f"{where}: conditioning_data names '{ref}', which is disabled")
                elif known[ref].conditioning_ids or known[ref].conditioning:
                    problems.append(f"{where}: reference set '{ref}' has references of its own; no chains")
            source = entry.source_dataset_id
            if source and source not in known:
                problems.append(with_hint(f"{where}: source_dataset_id names unknown dataset '{source}'", source, ids))
            for generator in entry.conditioning or []:
                generated = f"{entry.id}_conditioning_{generator.type}"
                if generated in known:
                    problems.append(f"{where}: generated set id '{generated}' is already a dataset id")
        return problems
