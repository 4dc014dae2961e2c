"""One configuration schema for the CLI, the Python API and the REST service.

Every section forbids unknown keys, so a typo fails with the field's name
before any data is read or any Ray worker starts. The sections live in the
package's modules (``data``, ``training``, ...); ``RunConfig`` puts them
together and checks what depends on several of them. Import everything from
``ddray.config``.
"""

from __future__ import annotations

from ddray.config.aggregation import AggregationConfig, DNNConfig
from ddray.config.data import FOLDER_SOURCES, DatasetConfig, DecompositionConfig
from ddray.config.run import RunConfig, format_validation_error, limit_problems, load_config, parse_config, read_config_file
from ddray.config.section import ConfigError
from ddray.config.training import AugmentConfig, BaselinesConfig, LocalModelConfig, ResourcesConfig, TrainingConfig
from ddray.config.tune import TUNABLE, SearchSpaceEntry, TuneConfig

__all__ = [
    "FOLDER_SOURCES", "TUNABLE", "AggregationConfig", "AugmentConfig", "BaselinesConfig", "ConfigError", "DatasetConfig",
    "DecompositionConfig", "DNNConfig", "LocalModelConfig", "ResourcesConfig", "RunConfig", "SearchSpaceEntry",
    "TrainingConfig", "TuneConfig", "format_validation_error", "limit_problems", "load_config", "parse_config",
    "read_config_file",
]
