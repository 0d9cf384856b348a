"""The gateway's configuration: one YAML file, one pydantic model per concept, validated at start-up.

How each part reloads (``serve.run`` with a changed config):

- ``cascade``, ``limits``, ``resilience``, ``auth``, ``cost``, ``shadow``, ``drift`` and ``traffic_log`` are the
  ingress's ``user_config``: Ray Serve applies them in place through ``Gateway.reconfigure``, with no replica
  restarted and no request dropped. An ``auth.keys_file`` is also re-read by the gateway when it changes.
- ``student`` / ``middle`` / ``teacher`` (model, backend, device, threads, batching) and every ``deployment``
  setting change the deployment's code or options, so Ray Serve rolls those replicas.
- ``http`` and ``metrics`` need a restart of ``cascade serve``.

Unknown keys are errors (a typo must not silently fall back to a default). A string may name an
environment variable as ``${NAME}`` (an unset one is an error), so that paths are defined once, in the
environment of every process that needs them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)

from router import Signal
from router.cost import DEFAULT_CPU_NODE_DOLLARS_PER_HOUR, DEFAULT_GPU_NODE_DOLLARS_PER_HOUR
from serving import constants as c
from serving.errors import ConfigError
from serving.vocabulary import ROLES, Role


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FrontProxySettings(_Strict):
    """HAProxy in front of Ray Serve's proxy (``serving.front_proxy``); a restart applies a change.

    ``kind: auto`` runs HAProxy when it is installed and says so when it is not. ``max_in_flight``
    bounds the requests passed on to Ray at once (keep it under the ingress's ``max_ongoing_requests``
    so that probes always find room); the rest wait up to ``queue_timeout_s``, then get a 503.
    """

    kind: Literal["auto", "haproxy", "none"] = "auto"
    header_timeout_s: float = Field(c.DEFAULT_FRONT_HEADER_TIMEOUT_S, gt=0)
    """The whole request, headers and body, must arrive within this (408 otherwise)."""
    idle_timeout_s: float = Field(c.DEFAULT_FRONT_IDLE_TIMEOUT_S, gt=0)
    upstream_timeout_s: float = Field(c.DEFAULT_FRONT_UPSTREAM_TIMEOUT_S, gt=0)
    queue_timeout_s: float = Field(c.DEFAULT_FRONT_QUEUE_TIMEOUT_S, gt=0)
    max_connections: PositiveInt = c.DEFAULT_FRONT_MAX_CONNECTIONS
    max_in_flight: PositiveInt = c.DEFAULT_FRONT_MAX_IN_FLIGHT
    max_header_bytes: int = Field(c.DEFAULT_FRONT_MAX_HEADER_BYTES, ge=4096, le=1_048_576)
    threads: PositiveInt = c.DEFAULT_FRONT_THREADS
    """HAProxy's threads: one relays far more than the ingress behind it can answer."""


class HttpSettings(_Strict):
    host: str = c.DEFAULT_HOST
    port: int = Field(c.DEFAULT_PORT, ge=1, le=65535)
    front_proxy: FrontProxySettings = FrontProxySettings()
    proxy_location: Literal["EveryNode", "HeadOnly"] = "EveryNode"
    """Where Ray Serve runs its HTTP proxies on a cluster: every node (a load balancer spreads over
    them), or the head only (one address; also when several Ray nodes share one machine)."""
    ingress: Literal["haproxy", "proxy"] = "haproxy"
    """How HTTP enters Ray Serve: ``haproxy``, Ray's HAProxy straight to the ingress replicas' own HTTP
    servers (direct ingress; about 2x the throughput at half the CPU per request,
    docs/benchmarks/profile.md), or ``proxy``, Ray Serve's Python proxy and a handle call. For a Ray
    that ``cascade serve`` starts; a cluster's nodes decide by their environment
    (``RAY_SERVE_ENABLE_HA_PROXY``, set in deploy/kubernetes and the images)."""


class LimitSettings(_Strict):
    """Checked on every request before anything is queued; applied live."""

    max_body_bytes: PositiveInt = c.DEFAULT_MAX_BODY_BYTES
    max_inputs: PositiveInt = c.DEFAULT_MAX_INPUTS
    max_text_chars: PositiveInt = c.DEFAULT_MAX_TEXT_CHARS


class BreakerSettings(_Strict):
    """Per role and ingress replica: open after ``failures`` failures or timeouts in a row; probe ``open_s`` later."""

    failures: PositiveInt = c.DEFAULT_BREAKER_FAILURES
    open_s: float = Field(c.DEFAULT_BREAKER_OPEN_S, gt=0)


class ResilienceSettings(_Strict):
    """What the gateway does when a model is slow, full or down; applied live.

    Each call to a role is cut at its timeout, and a whole request at ``request_timeout_s``.
    ``on_teacher_failure: degrade`` (default): a ``route: auto`` text the student escalated is answered
    by the student, marked ``degraded`` with the reason, when the teacher fails, times out, is full or
    its breaker is open; ``fail`` answers 503/504 instead. A ``route: auto`` request whose student fails
    goes to the teacher (marked degraded). A forced route answers 503/504 with ``Retry-After``. In a
    chain, the texts of a failed middle model go on to the teacher (marked degraded, ``middle_*``).
    """

    student_timeout_s: float = Field(c.DEFAULT_STUDENT_TIMEOUT_S, gt=0)
    middle_timeout_s: float = Field(c.DEFAULT_STUDENT_TIMEOUT_S, gt=0)
    teacher_timeout_s: float = Field(c.DEFAULT_TEACHER_TIMEOUT_S, gt=0)
    request_timeout_s: float = Field(c.DEFAULT_REQUEST_TIMEOUT_S, gt=0)
    on_teacher_failure: Literal["degrade", "fail"] = "degrade"
    breaker: BreakerSettings = BreakerSettings()


class ApiKeySettings(_Strict):
    """One client key: its name (a metric label), the SHA-256 of the secret, and its limits.

    The secret itself is never stored: ``cascade keys new --name NAME`` prints one with this entry.
    """

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    requests_per_minute: float | None = Field(None, gt=0)
    teacher_texts_per_minute: float | None = Field(None, gt=0)
    """Texts the teacher may answer for this key a minute (escalated or forced); shadow calls do not count."""
    allow_teacher_route: bool = False


class AuthSettings(_Strict):
    """API keys (``Authorization: Bearer <key>``) for ``/v1/*``; applied live.

    Keys come from ``keys`` and from ``keys_file`` (a YAML file with a ``keys:`` list of the same entries,
    re-read when it changes: mount a Kubernetes Secret there). Several keys may be valid at once, so a
    key is rotated by adding the new one, moving clients, then removing the old one.
    """

    keys: tuple[ApiKeySettings, ...] = ()
    keys_file: str | None = None

    @model_validator(mode="after")
    def _some_keys(self) -> AuthSettings:
        if not self.keys and not self.keys_file:
            raise ValueError("needs keys or a keys_file; to run without keys say 'auth: none'")
        names = [key.name for key in self.keys]
        if len(set(names)) != len(names):
            raise ValueError(f"key names must be unique, got {names}")
        return self


class CascadeSettings(_Strict):
    """The escalation rule; applied live.

    Anything left unset comes from the student's manifest as ``cascade calibrate`` wrote it
    (temperature; signal and threshold chosen for a target), and failing that from the defaults
    (max_prob, 0.7, temperature 1).
    """

    signal: Signal | None = None
    threshold: NonNegativeFloat | None = None
    temperature: float | None = Field(None, gt=0)


class CostSettings(_Strict):
    """What an hour of each role's hardware costs; applied live.

    A request's cost is the compute time it used on a replica (a batch's time shared among its
    texts) times this price. Price the hardware one replica occupies: a whole GPU node for a teacher
    that has it to itself, a share of a CPU node for a student. Defaults: ``router.cost``.
    """

    student_dollars_per_hour: NonNegativeFloat = DEFAULT_CPU_NODE_DOLLARS_PER_HOUR
    middle_dollars_per_hour: NonNegativeFloat = DEFAULT_CPU_NODE_DOLLARS_PER_HOUR
    teacher_dollars_per_hour: NonNegativeFloat = DEFAULT_GPU_NODE_DOLLARS_PER_HOUR


class ShadowSettings(_Strict):
    """Shadow sampling: a share of the student's answers also goes to the teacher, to measure agreement.

    Off the latency path: the client has its answer before the shadow call starts. At most
    ``max_in_flight`` shadow calls run at once per ingress replica; a sampled request over that
    bound, or one the teacher's queue refuses, is dropped and counted, never queued. Applied live.
    """

    rate: float = Field(c.DEFAULT_SHADOW_RATE, ge=0.0, le=1.0)
    max_in_flight: PositiveInt = c.DEFAULT_SHADOW_MAX_IN_FLIGHT


class DriftSettings(_Strict):
    """PSI of live student confidence against the histogram ``cascade calibrate`` stored; applied live."""

    window: PositiveInt = c.DEFAULT_DRIFT_WINDOW
    min_samples: PositiveInt = c.DEFAULT_DRIFT_MIN_SAMPLES

    @model_validator(mode="after")
    def _fits(self) -> DriftSettings:
        if self.min_samples > self.window:
            raise ValueError(f"min_samples ({self.min_samples}) must be <= window ({self.window})")
        return self


class TrafficLogSettings(_Strict):
    """The traffic log (``serving.traffic_log``): what the teacher answered, for the next student; live.

    ``path`` unset: no log. ``keep_text`` says per reason what of the text is kept: the text, a
    salted SHA-256 (salt from the environment variable ``salt_env``; unset, a random salt per writer),
    or nothing. A reason not listed keeps the hash: the raw text, which re-distillation trains on, is
    kept only where the operator opts in (``keep_text: {escalation: text, shadow: text}``).
    ``sample_rate``: share of the other requests (the student answered, the teacher did not run)
    also logged, without teacher outputs. Shards older than ``retention_days`` are deleted.
    """

    path: str | None = None
    keep_text: dict[Literal["escalation", "shadow", "forced", "sampled"], Literal["text", "hash", "none"]] = Field(
        default_factory=dict
    )
    salt_env: str = "CASCADE_TRAFFIC_LOG_SALT"
    sample_rate: float = Field(0.0, ge=0.0, le=1.0)
    flush_interval_s: float = Field(c.DEFAULT_TRAFFIC_LOG_FLUSH_S, gt=0)
    max_rows_per_shard: PositiveInt = c.DEFAULT_TRAFFIC_LOG_ROWS_PER_SHARD
    max_buffered: PositiveInt = c.DEFAULT_TRAFFIC_LOG_MAX_BUFFERED
    retention_days: float | None = Field(None, gt=0)


class ReloadSettings(_Strict):
    """How often the application looks for a promotion or rollback of a ``registry:`` model.

    Each replica serving such a model, and the ingress, poll its pointer (``serving.swap``): the new
    model loads beside the old one and is swapped in with no restart and no failed request, under
    ``cascade serve``, ``serve run`` or a RayService alike. Applied live.
    """

    poll_s: float = Field(c.DEFAULT_REGISTRY_POLL_S, gt=0)


class MetricsSettings(_Strict):
    """Where Prometheus scrapes a local Ray's metrics agent (a cluster's port is set at ``ray start``)."""

    port: int = Field(c.DEFAULT_METRICS_PORT, ge=1, le=65535)


def _ray_autoscaling(value: Any) -> dict[str, Any]:
    """Validate by Ray Serve's own ``AutoscalingConfig`` (every field it accepts), rejecting unknown keys.

    Ray's model ignores a key it does not know; a typo in a scaling setting must not pass silently.
    Kept as the keys the config set: Ray fills in its defaults itself, except ``target_ongoing_requests``
    (``serving.constants``: Ray's default of 2 starves dynamic batches).
    """
    from ray.serve.config import AutoscalingConfig

    if not isinstance(value, dict):
        raise ValueError(f"must be a mapping of Ray Serve autoscaling settings, got {type(value).__name__}")
    unknown = sorted(set(value) - set(AutoscalingConfig.model_fields))
    if unknown:
        allowed = ", ".join(AutoscalingConfig.model_fields)
        raise ValueError(f"unknown autoscaling keys {unknown}; Ray Serve's AutoscalingConfig accepts: {allowed}")
    settings = {"target_ongoing_requests": c.DEFAULT_TARGET_ONGOING_REQUESTS, **value}
    try:
        AutoscalingConfig.model_validate(settings)
    except ValidationError as error:  # Ray's model is pydantic too: name its first complaint
        raise ValueError(error.errors()[0]["msg"].removeprefix("Value error, ")) from None
    return settings


class DeploymentSettings(_Strict):
    """Ray Serve placement and admission for one deployment."""

    num_replicas: PositiveInt = 1
    autoscaling: dict[str, Any] | None = None
    """Anything Ray Serve's ``AutoscalingConfig`` accepts (replaces ``num_replicas``)."""
    num_cpus: NonNegativeFloat = 1.0
    num_gpus: NonNegativeFloat = 0.0
    resources: dict[str, NonNegativeFloat] = Field(default_factory=dict)
    """Ray custom resources each replica needs: place a role on the nodes that declare them (e.g.
    ``{cpu_node: 1}`` with CPU workers started with ``--resources '{"cpu_node": 1000}'``)."""
    max_ongoing_requests: PositiveInt = c.DEFAULT_MODEL_MAX_ONGOING_REQUESTS
    max_queued_requests: int = c.DEFAULT_MODEL_MAX_QUEUED_REQUESTS
    health_check_period_s: float = Field(c.DEFAULT_HEALTH_CHECK_PERIOD_S, gt=0)
    """How often Ray Serve checks each replica; a dead or hung one is replaced after the next check."""
    health_check_timeout_s: float = Field(c.DEFAULT_HEALTH_CHECK_TIMEOUT_S, gt=0)

    @field_validator("max_queued_requests")
    @classmethod
    def _queue_limit(cls, value: int) -> int:
        if value == 0 or value < -1:
            raise ValueError(f"must be -1 (no limit) or a positive integer, got {value}")
        return value

    @field_validator("autoscaling", mode="before")
    @classmethod
    def _autoscaling(cls, value: Any) -> dict[str, Any] | None:
        return None if value is None else _ray_autoscaling(value)

    @property
    def most_replicas(self) -> int:
        """The most replicas this deployment may run: ``num_replicas``, or the autoscaler's ``max_replicas``."""
        if self.autoscaling is None:
            return self.num_replicas
        return int(self.autoscaling.get("max_replicas", 1))

    def ray_options(self, name: str) -> dict[str, Any]:
        """The keyword arguments of ``Deployment.options`` that these settings stand for."""
        options: dict[str, Any] = {
            "name": name,
            "ray_actor_options": {
                "num_cpus": self.num_cpus,
                "num_gpus": self.num_gpus,
                **({"resources": dict(self.resources)} if self.resources else {}),
            },
            "max_ongoing_requests": self.max_ongoing_requests,
            "max_queued_requests": self.max_queued_requests,
            "health_check_period_s": self.health_check_period_s,
            "health_check_timeout_s": self.health_check_timeout_s,
        }
        if self.autoscaling is not None:
            options["autoscaling_config"] = dict(self.autoscaling)
        else:
            options["num_replicas"] = self.num_replicas
        return options


class BatchingSettings(_Strict):
    """Dynamic batching (``serving.coalescing``, ``@serve.batch``'s semantics): calls grouped up to a size or a wait."""

    max_batch_size: PositiveInt = c.DEFAULT_MAX_BATCH_SIZE
    batch_wait_timeout_s: NonNegativeFloat = c.DEFAULT_BATCH_WAIT_TIMEOUT_S
    run_on: Literal["auto", "event_loop", "worker_thread"] = "auto"
    """Where a batch computes. ``worker_thread`` keeps the replica's event loop free meanwhile (a
    model whose batch takes tens of milliseconds); ``event_loop`` saves the hop to the thread and
    back, which costs more than a batch of a tiny model; ``auto`` takes ``event_loop`` when the
    warm-up measured a full batch at most ``EVENT_LOOP_MAX_BATCH_S`` (5 ms)."""


class ModelSettings(_Strict):
    """One model role: which model, how it runs, and where.

    ``model`` is a model folder (an artifact with ``manifest.json``, or a plain Hugging Face folder)
    or a Hugging Face hub id. ``backend: auto`` takes ONNX Runtime when the folder has ``model.onnx``
    and transformers/torch otherwise. ``device: auto`` takes CUDA when the replica sees a GPU.
    """

    model: str = Field(min_length=1)
    backend: Literal["auto", "torch", "onnx"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: PositiveInt = c.DEFAULT_THREADS
    max_length: PositiveInt = c.DEFAULT_MAX_LENGTH_TOKENS
    batching: BatchingSettings = BatchingSettings()
    deployment: DeploymentSettings = DeploymentSettings()
    colocate: bool = False
    """Student only: run in each ingress replica instead of its own deployment (no handle hop per
    answer; ``deployment`` is then unused and the ingress's settings place and scale the student)."""

    @model_validator(mode="after")
    def _batch_fits(self) -> ModelSettings:
        ongoing = self.deployment.max_ongoing_requests
        if self.batching.max_batch_size > ongoing:
            raise ValueError(
                f"batching.max_batch_size ({self.batching.max_batch_size}) must be <= "
                f"deployment.max_ongoing_requests ({ongoing}), or batches can never fill"
            )
        return self


def _ingress_deployment() -> DeploymentSettings:
    return DeploymentSettings(
        num_cpus=0.0,
        max_ongoing_requests=c.DEFAULT_INGRESS_MAX_ONGOING_REQUESTS,
        max_queued_requests=c.DEFAULT_INGRESS_MAX_QUEUED_REQUESTS,
    )


class GatewayConfig(_Strict):
    """The whole gateway: one YAML file."""

    http: HttpSettings = HttpSettings()
    limits: LimitSettings = LimitSettings()
    resilience: ResilienceSettings = ResilienceSettings()
    auth: AuthSettings | Literal["none"] | None = None
    """Unset: no keys, allowed only on a loopback address; ``none``: no keys anywhere, said on purpose."""
    cascade: CascadeSettings = CascadeSettings()
    cost: CostSettings = CostSettings()
    shadow: ShadowSettings = ShadowSettings()
    drift: DriftSettings = DriftSettings()
    traffic_log: TrafficLogSettings = TrafficLogSettings()
    reload: ReloadSettings = ReloadSettings()
    metrics: MetricsSettings = MetricsSettings()
    student: ModelSettings
    middle: ModelSettings | None = None
    """A chain of three: a model between the student and the teacher (e.g. a bigger student). The
    student's calibration must be a chain's (``cascade calibrate --middle``), made with this model."""
    teacher: ModelSettings
    ingress: DeploymentSettings = Field(default_factory=_ingress_deployment)
    """The ingress's placement. Fields left out keep the ingress's own defaults (no CPU reserved, 256
    requests at once), not a model replica's: ``ingress: {num_replicas: 2}`` changes only the count."""

    @field_validator("ingress", mode="before")
    @classmethod
    def _ingress_defaults(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {**_ingress_deployment().model_dump(exclude_unset=True), **value}
        return value

    @model_validator(mode="after")
    def _only_the_student_colocates(self) -> GatewayConfig:
        for role in ("middle", "teacher"):
            settings = getattr(self, role)
            if settings is not None and settings.colocate:
                raise ValueError(f"{role}.colocate must be false: only the student runs inside the ingress")
        return self

    @property
    def roles(self) -> tuple[Role, ...]:
        """The roles this config serves, in chain order."""
        return tuple(role for role in ROLES if getattr(self, role) is not None)

    def model_settings(self, role: Role) -> ModelSettings:
        settings: ModelSettings | None = getattr(self, role)
        if settings is None:
            raise ConfigError(f"this config has no {role!r} section")
        return settings


def _describe(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "(top level)"
        lines.append(f"  {where}: {item['msg']}")
    return "\n".join(lines)


def parse_config(data: Any, source: str = "config") -> GatewayConfig:
    """Validate a mapping (as read from YAML) into a config; errors name each field and its rule."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return GatewayConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(f"{source} is invalid:\n{_describe(error)}") from None


_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def expand_environment(data: Any, environment: Mapping[str, str], where: str = "") -> Any:
    """Replace ``${NAME}`` in every string value with the environment's ``NAME`` (paths defined once, e.g.
    by a Kubernetes ConfigMap). An unset variable is an error that names the field, never an empty path."""
    if isinstance(data, dict):
        return {
            key: expand_environment(value, environment, f"{where}.{key}" if where else str(key))
            for key, value in data.items()
        }
    if isinstance(data, list):
        return [expand_environment(value, environment, f"{where}[{i}]") for i, value in enumerate(data)]
    if not isinstance(data, str):
        return data

    def value_of(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in environment:
            raise ConfigError(f"{where}: environment variable {name} is not set (the config says ${{{name}}})")
        return environment[name]

    return _VARIABLE.sub(value_of, data)


def load_config(path: str | Path) -> GatewayConfig:
    """Read and validate a YAML config file. ``${NAME}`` takes the environment's value; relative model
    paths resolve against the file's folder."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ConfigError(f"cannot read config {path}: {error.strerror}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {error}") from None
    data = expand_environment(data, os.environ)
    if isinstance(data, dict):
        auth = data.get("auth")
        if isinstance(auth, dict) and isinstance(auth.get("keys_file"), str):
            auth["keys_file"] = str((path.parent / auth["keys_file"]).resolve())
        for role in ROLES:
            section = data.get(role)
            if isinstance(section, dict) and isinstance(section.get("model"), str):
                candidate = path.parent / section["model"]
                if not Path(section["model"]).is_absolute() and candidate.exists():
                    section["model"] = str(candidate.resolve())
    return parse_config(data, source=str(path))
