"""What every model-calling setting has in common: which backend, which model (and revision), where it is served,
and backend options, named the same way for generators, reward scorers and judges.

A model's identity (`ModelSpec.identity()`) is what cache keys and stage fingerprints carry. It always says
where the model runs: a local model by its folder's content hash (or hub id @ revision), a served model by its
endpoint and name, so two servers that serve the same model name never share a cached answer.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator, model_validator

from xwin_data.core.fingerprint import path_fingerprint

OPENAI_URL = "https://api.openai.com/v1"


class ModelSpec(BaseModel):
    """Base of GeneratorSpec, ScorerSpec and JudgeSpec; `KIND` names the registry family its backend comes from."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=(), populate_by_name=True)
    KIND: ClassVar[str] = ""

    backend: str = Field(..., description="a registered backend name (see `xwin_data.llm.registry`)")
    model: str = Field(..., description="local path, hub id, tiny-* name, or the name a server serves")
    revision: str | None = Field(None, description="hub revision (commit, tag or branch) of the model")
    base_url: str | None = Field(None, description="served backends: the endpoint, e.g. http://127.0.0.1:8000/v1")
    api_key_env: str = Field("OPENAI_API_KEY", description="served backends: NAME of the env var holding the key")
    options: dict[str, Any] = Field(default_factory=dict, validation_alias=AliasChoices("options", "extra"),
                                    description="backend options (dtype, device, concurrency, engine kwargs, ...); "
                                                "`extra` is accepted as the same thing")

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, value: str) -> str:
        from xwin_data.llm.registry import canonical_name

        return canonical_name(cls.KIND, value) if cls.KIND else value

    @model_validator(mode="after")
    def _revision_from_options(self) -> "ModelSpec":
        """`options.revision` (the older spelling) and `revision` are one setting."""
        if "revision" in self.options:
            rev = self.options.pop("revision")
            if self.revision is not None and rev is not None and str(rev) != self.revision:
                raise ValueError(f"revision given twice: {self.revision!r} and options.revision {rev!r}")
            self.revision = self.revision or (None if rev is None else str(rev))
        return self

    def backend_class(self) -> type:
        from xwin_data.llm.registry import backend_class

        return backend_class(self.KIND, self.backend)

    def identity(self) -> str:
        """What names this model in cache keys and fingerprints (the backend decides; see `local_identity` and
        `served_identity`)."""
        return self.backend_class().identity(self)

    def code_fingerprint(self) -> str:
        """Hash of the code the backend runs (its module and the in-package modules it imports): backends are
        found through the registry, not by a static import from the op, so ops add this to their fingerprint."""
        from xwin_data.core.fingerprint import code_fingerprint

        return code_fingerprint(self.backend_class().__module__)

    def build(self) -> Any:
        """An instance of the backend this spec names (heavy libraries are imported here)."""
        return self.backend_class()(self)


def model_identity(model: str, revision: str | None = None) -> str:
    """A local folder by name and content hash, a hub id by id@revision."""
    from xwin_data.llm.tiny import resolve_model

    path = Path(resolve_model(model))
    if path.exists():
        return f"{path.name}@{path_fingerprint(path)[:16]}"
    return f"{model}@{revision}" if revision else model


def endpoint(base_url: str | None) -> str:
    """An endpoint written one way: no trailing slash, the OpenAI API when none is given."""
    return (base_url or OPENAI_URL).rstrip("/")


def local_identity(spec: ModelSpec) -> str:
    """A model loaded in this process: its weights (and a separate tokenizer's) name it."""
    ident = model_identity(spec.model, spec.revision)
    tokenizer = getattr(spec, "tokenizer", None)
    if tokenizer:
        ident += f"+tok={model_identity(tokenizer)}"
    return ident


def served_identity(spec: ModelSpec) -> str:
    """A model behind an endpoint: the endpoint and the served name (and revision when given). An explicit
    `options.model_id` replaces it, for endpoints known to serve the same weights."""
    given = spec.options.get("model_id")
    ident = str(given) if given else f"openai:{endpoint(spec.base_url)}|{spec.model}"
    if spec.revision and not given:
        ident += f"@{spec.revision}"
    tokenizer = getattr(spec, "tokenizer", None)
    if tokenizer:
        ident += f"+tok={model_identity(tokenizer)}"
    return ident


def load_chat_template(value: str | None) -> str | None:
    """A chat template given inline or as a path to a .jinja file."""
    if value is None:
        return None
    if "{" not in value and Path(value).is_file():
        return Path(value).read_text(encoding="utf-8")
    return value


PLACEMENT_KEYS = ("replicas", "gpus", "tensor_parallel")


class Placement(BaseModel):
    """Where a model runs on a cluster, given with the model (`--set policy.replicas=8`): how many copies, the GPUs
    each holds, tensor parallelism within one copy. Not part of what the model makes, so never in a fingerprint."""

    model_config = ConfigDict(extra="forbid")
    replicas: int | None = Field(None, ge=1, description="data-parallel copies of the model (engine replicas)")
    gpus: float | None = Field(None, ge=0, description="GPUs per copy (default: tensor_parallel, else the stage's)")
    tensor_parallel: int | None = Field(None, ge=1, description="GPUs one copy is split across (vLLM engine kwarg)")

    def resources(self, declared: dict | None, ray_data_llm: str | None = None) -> dict:
        """The stage's `resources:` with what the model spec says on top of them. `ray_data_llm` names the task
        (generate, classify) of a model that a Ray cluster runs in a `ray.data.llm` vLLM processor rather than on
        the executor's replicas, so that `plan` can say so."""
        out = dict(declared or {})
        if self.replicas is not None:
            out["replicas"] = self.replicas
        if self.gpus is not None:
            out["gpus"] = self.gpus
        elif self.tensor_parallel and self.tensor_parallel > 1:
            out["gpus"] = float(self.tensor_parallel)
        if ray_data_llm:
            out["ray_data_llm"] = {"task": ray_data_llm, "tensor_parallel": self.tensor_parallel or 1}
        return out


def split_placement(spec: Any) -> tuple[Any, dict]:
    """(the spec without its placement keys, those keys): a spec dict may carry `replicas`, `gpus` and
    `tensor_parallel` next to its model settings."""
    if not isinstance(spec, dict):
        return spec, {}
    rest = {k: v for k, v in spec.items() if k not in PLACEMENT_KEYS}
    placement = {k: spec[k] for k in PLACEMENT_KEYS if k in spec and spec[k] is not None}
    return rest, Placement.model_validate(placement).model_dump(exclude_none=True)


def move_placement(data: Any, key: str) -> Any:
    """Stage params with the model spec under `key` stripped of its placement keys, which go to `placement`: they
    say where the model runs, not what it makes, so they stay out of the spec (and the fingerprint)."""
    if isinstance(data, dict) and isinstance(data.get(key), dict):
        spec, placement = split_placement(data[key])
        data = {**data, key: spec, "placement": {**data.get("placement", {}), **placement}}
    return data
