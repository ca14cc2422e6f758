"""Workflow configuration: schema validation with defaults, cross-checks, typed views.

The JSON schema (``workflow/schemas/config.schema.yaml``) is the single source
of truth for keys, types, ranges and defaults (:mod:`.schema`); :mod:`.checks`
checks what a schema cannot express and reports every problem at once;
:mod:`.specs` gives typed views of a validated config.
"""

from labelfactory.config.checks import (
                                        ablation_problems,
                                        check_downstream_files,
                                        downstream_file_problems,
                                        load_config,
                                        pretraining_files,
                                        validate_config,
)
from labelfactory.config.schema import REPO_ROOT, SCHEMA_PATH, ConfigError
from labelfactory.config.specs import (
                                       AnnotationSpec,
                                       CheckpointSpec,
                                       DownstreamSpec,
                                       FeatureSpec,
                                       InitSpec,
                                       PretrainingSpec,
                                       SynthesisSpec,
                                       TargetSpec,
                                       TaskSpec,
                                       WorkflowConfig,
                                       parse_range,
)

__all__ = ["REPO_ROOT", "SCHEMA_PATH", "AnnotationSpec", "CheckpointSpec", "ConfigError", "DownstreamSpec",
           "FeatureSpec", "InitSpec", "PretrainingSpec", "SynthesisSpec", "TargetSpec", "TaskSpec", "WorkflowConfig",
           "ablation_problems", "check_downstream_files", "downstream_file_problems", "load_config", "parse_range",
           "pretraining_files", "validate_config"]
