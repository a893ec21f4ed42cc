"""The parameter file (`params.yaml` or SimpleTuner's `config.json`) and the dataset file.

Top-level keys of `params.yaml` are SimpleTuner's `config.json` keys with the same names and
meanings; pipeline-only settings live in their own sections. Dataset entries use SimpleTuner's
`multidatabackend.json` schema. Every problem names the key, the value and what is allowed, and
all problems of a config are reported together.

Modules: `base` (error type, strict model, one-line formatting), `params`, `datasets` and
`generators` (the models and their cross-key rules), `simpletuner` and `simpletuner_keys` (the key
table), `checks` (rules across both files and the file system), `load` (reading), `importer`
(config.json → params.yaml).
"""

from kontext_core.config.base import ConfigError, suggest
from kontext_core.config.checks import check_datasets_with_params, check_eval_dataset, check_sampling_captions
from kontext_core.config.datasets import DatasetConfig, DatasetEntry
from kontext_core.config.generators import CompositeImageConfig, ConditioningGenerator, HuggingfaceOptions
from kontext_core.config.load import load_all, load_datasets, load_params, params_from_dict, read_params_file
from kontext_core.config.params import (
    DATASET_DEFAULT_KEYS,
    EMA_KEYS,
    TRAIN_VALIDATION_KEYS,
    AccelerateSection,
    LoraTarget,
    LrScheduler,
    MlflowSection,
    Optimizer,
    PairSection,
    Params,
    Precision,
    PrefectSection,
    RegistrySection,
    SampleDataSection,
    TinyModelSection,
)

__all__ = [
    "DATASET_DEFAULT_KEYS",
    "EMA_KEYS",
    "TRAIN_VALIDATION_KEYS",
    "AccelerateSection",
    "CompositeImageConfig",
    "ConditioningGenerator",
    "ConfigError",
    "DatasetConfig",
    "DatasetEntry",
    "HuggingfaceOptions",
    "LoraTarget",
    "LrScheduler",
    "MlflowSection",
    "Optimizer",
    "PairSection",
    "Params",
    "Precision",
    "PrefectSection",
    "RegistrySection",
    "SampleDataSection",
    "TinyModelSection",
    "check_datasets_with_params",
    "check_eval_dataset",
    "check_sampling_captions",
    "load_all",
    "load_datasets",
    "load_params",
    "params_from_dict",
    "read_params_file",
    "suggest",
]
