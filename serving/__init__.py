"""The serving runtime: config, model artifacts and backends, the Ray Serve application, the CLI.

Public surface: the config loader, the artifact resolver and the application builder. Everything
else is an implementation detail of the gateway.
"""

from serving.artifact import Manifest
from serving.config import GatewayConfig, load_config, parse_config
from serving.errors import CascadeError
from serving.model_ref import ModelRef, resolve_model

__all__ = [
    "CascadeError",
    "GatewayConfig",
    "Manifest",
    "ModelRef",
    "load_config",
    "parse_config",
    "resolve_model",
]
