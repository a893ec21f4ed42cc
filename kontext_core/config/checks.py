"""Checks that need both files (params.yaml and the dataset file) or the file system.

Each returns problem lines instead of raising, so that one `kontext config check` lists them all.
"""

from __future__ import annotations

from kontext_core.config.base import ConfigError
from kontext_core.config.datasets import DatasetConfig
from kontext_core.config.params import Params


def eval_dataset_problems(params: Params, datasets: DatasetConfig) -> list[str]:
    if params.eval_dataset_id is None:
        return []
    edit_ids = [e.id for e in datasets.edit_sets()]
    if params.eval_dataset_id in edit_ids:
        return []
    return [
        f"eval_dataset_id = {params.eval_dataset_id!r} is not an enabled edit dataset; allowed: {', '.join(edit_ids)}"
    ]


def sampling_caption_problems(params: Params, datasets: DatasetConfig) -> list[str]:
    """Under `combined` every reference is shown at once, so only the edit set's caption can apply."""
    if params.conditioning_multidataset_sampling != "combined":
        return []
    problems = []
    by_id = datasets.by_id()
    for edit in datasets.edit_sets():
        for ref in edit.conditioning_ids:
            if ref in by_id and by_id[ref].gives_captions:
                problems.append(
                    f"dataset '{ref}' sets caption_strategy = {by_id[ref].caption_strategy!r}, but "
                    "conditioning_multidataset_sampling = 'combined' uses only the edit set's captions; "
                    "set its caption_strategy to null"
                )
        for generator in edit.conditioning or []:
            if generator.caption_choices:
                problems.append(
                    f"dataset '{edit.id}' conditioning '{generator.type}' sets captions, but "
                    "conditioning_multidataset_sampling = 'combined' uses only the edit set's captions; "
                    "set captions to false"
                )
    return problems


def datasets_with_params_problems(params: Params, datasets: DatasetConfig) -> list[str]:
    """Resolve the dataset defaults from params.yaml, then every rule that involves both files."""
    datasets.apply_defaults(params)
    return [
        *datasets.rule_problems(),
        *eval_dataset_problems(params, datasets),
        *sampling_caption_problems(params, datasets),
    ]


def check_datasets_with_params(params: Params, datasets: DatasetConfig, where: str) -> None:
    """Resolve the dataset defaults from params.yaml (in place) and check both files together."""
    problems = datasets_with_params_problems(params, datasets)
    if problems:
        raise ConfigError([f"{where}: {line}" for line in problems])


# Kept for callers of the single checks (tests, the pair stage).
def check_eval_dataset(params: Params, datasets: DatasetConfig, where: str) -> None:
    problems = eval_dataset_problems(params, datasets)
    if problems:
        raise ConfigError([f"{where}: {line}" for line in problems])


def check_sampling_captions(params: Params, datasets: DatasetConfig, where: str) -> None:
    problems = sampling_caption_problems(params, datasets)
    if problems:
        raise ConfigError([f"{where}: {line}" for line in problems])
