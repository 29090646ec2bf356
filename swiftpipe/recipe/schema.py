"""The recipe schema: one strict pydantic model per YAML section.

Unknown keys are errors (extra="forbid"); numbers given as strings ("1e-4", which YAML 1.1
reads as a string) are coerced. Field descriptions are the documentation shown by
`swiftpipe validate --explain` and mirrored in the shipped recipes' comments.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

JSON_TYPES = ("string", "integer", "number", "boolean", "array", "object")


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class ModelSection(Section):
    id: str = Field(description="hub id (Qwen/Qwen3-0.6B) or local model directory")
    hub: Literal["modelscope", "huggingface"] = Field(
        "modelscope", description="where a hub id is downloaded from"
    )
    model_type: Optional[str] = Field(
        None, description="ms-swift model_type; needed for a local dir with an unknown name"
    )
    template: Optional[str] = Field(
        None, description="ms-swift chat template; needed for a local dir with an unknown name"
    )
    torch_dtype: Literal["bfloat16", "float16", "float32", "auto"] = Field(
        "bfloat16", description="weights dtype for training and export (float32 on CPU)"
    )
    tiny: bool = Field(
        False,
        description="build the tiny random-init test Qwen3 at `id` if it is missing (CPU demo, tests)",
    )

    @property
    def is_local(self) -> bool:
        return is_local_path(self.id) or self.tiny


def is_local_path(value: str) -> bool:
    """A hub id is `org/name`; anything that exists, or is written like a path, is local."""
    if value.startswith(("/", "./", "../", "~")) or Path(value).expanduser().exists():
        return True
    return value.count("/") != 1


class DataSection(Section):
    train: Union[str, list[str]] = Field(
        description="training data, ms-swift messages JSONL: one file, or a list of files trained on together"
    )
    val: Optional[str] = Field(None, description="validation data (JSONL); none = no eval loss")
    test: Optional[str] = Field(None, description="held-out test data for the eval stage (JSONL)")
    split_ratio: float = Field(
        0.0, ge=0.0, lt=1.0, description="fraction of train split off as validation when val is unset"
    )
    system_prompt: Optional[str] = Field(
        None, description="system prompt for training, serving and evaluation (rows without one)"
    )
    output_schema: dict[str, Union[str, dict[str, Any]]] = Field(
        default_factory=dict,
        description="answer fields: name -> JSON type (string, integer, ...) or a JSON-schema dict",
    )

    verbatim_fields: list[str] = Field(
        default_factory=list,
        description="answer fields always copied verbatim from the text (checked by data label, flagged in serving)",
    )

    @field_validator("train", mode="before")
    @classmethod
    def _one_or_more_files(cls, value: Any) -> Any:
        # A single path stays a string (resolved.yaml of existing runs is unchanged); a list must
        # name at least one file, each a non-empty path.
        expected = "expected a JSONL file path or a list of paths"
        if isinstance(value, str):
            if not value.strip():
                raise ValueError(expected)
            return value
        if not isinstance(value, list):
            raise ValueError(f"{expected}, not a mapping" if isinstance(value, dict) else expected)
        if not value:
            raise ValueError("the list is empty: give at least one training file")
        for i, item in enumerate(value):
            if not isinstance(item, str) or not item.strip():
                raise ValueError(f"entry {i + 1} of {len(value)} ({item!r}) is not a file path")
        return value

    def train_files(self) -> list[str]:
        """The training files, in order: `train` as a list even when one path is given."""
        return [self.train] if isinstance(self.train, str) else list(self.train)

    @model_validator(mode="after")
    def _verbatim_in_schema(self) -> "DataSection":
        unknown = [f for f in self.verbatim_fields if self.output_schema and f not in self.output_schema]
        if unknown:
            raise ValueError(f"verbatim_fields {unknown} are not fields of output_schema "
                             f"({', '.join(self.output_schema)})")
        return self

    @field_validator("output_schema")
    @classmethod
    def _check_schema(cls, value: dict[str, Any]) -> dict[str, Any]:
        for name, spec in value.items():
            kind = spec if isinstance(spec, str) else spec.get("type")
            if kind not in JSON_TYPES:
                raise ValueError(
                    f"field '{name}': type {kind!r} is not one of {', '.join(JSON_TYPES)}"
                )
        return value

    def json_schema(self) -> Optional[dict[str, Any]]:
        """The answer's JSON schema (all fields required, nothing else allowed)."""
        if not self.output_schema:
            return None
        props = {
            name: ({"type": spec} if isinstance(spec, str) else dict(spec))
            for name, spec in self.output_schema.items()
        }
        return {
            "type": "object",
            "properties": props,
            "required": list(props),
            "additionalProperties": False,
        }


class TrainSection(Section):
    tuner: Literal["lora", "full", "qlora"] = Field("lora", description="what is trained")
    epochs: float = Field(3.0, gt=0, description="number of training epochs")
    max_steps: Optional[int] = Field(None, gt=0, description="stop after this many steps (overrides epochs)")
    batch_size: int = Field(1, ge=1, description="per-device train batch size")
    eval_batch_size: Optional[int] = Field(None, ge=1, description="per-device eval batch size; none = batch_size")
    grad_accum: int = Field(1, ge=1, description="gradient accumulation steps")
    lr: float = Field(1e-4, gt=0, description="peak learning rate")
    lr_scheduler: str = Field("cosine", description="transformers scheduler name (cosine, linear, constant, ...)")
    weight_decay: float = Field(0.1, ge=0, description="AdamW weight decay")
    max_length: int = Field(2048, ge=16, description="max tokens of prompt + answer; longer rows are dropped")
    warmup_ratio: float = Field(0.05, ge=0, lt=1, description="fraction of steps spent warming up the lr")
    save_steps: int = Field(500, ge=1, description="save a checkpoint every N steps (and at the end)")
    save_total_limit: Optional[int] = Field(2, ge=1, description="checkpoints kept; none = all")
    eval_steps: Optional[int] = Field(None, ge=1, description="evaluate every N steps; none = save_steps")
    logging_steps: int = Field(5, ge=1, description="log loss every N steps")
    seed: int = Field(42, description="random seed (data order, init of LoRA weights)")
    report_to: list[str] = Field(
        default_factory=lambda: ["tensorboard"],
        description="loggers: tensorboard, swanlab, wandb, none (tensorboard also draws loss PNGs)",
    )
    gradient_checkpointing: bool = Field(True, description="recompute activations to save memory")
    deepspeed: Optional[str] = Field(None, description="DeepSpeed preset (zero2, zero3, ...) or a JSON config path")
    dataloader_num_workers: int = Field(1, ge=0, description="data loading worker processes")
    extra_args: dict[str, Any] = Field(
        default_factory=dict, description="any other `swift sft` flag: {flag_name: value}"
    )


class LoraSection(Section):
    rank: int = Field(8, ge=1, description="LoRA rank r")
    alpha: int = Field(32, ge=1, description="LoRA alpha (scale = alpha / rank)")
    dropout: float = Field(0.05, ge=0, lt=1, description="dropout on the LoRA input")
    target_modules: list[str] = Field(
        default_factory=lambda: ["all-linear"],
        description="module names to adapt, or all-linear",
    )

    @field_validator("target_modules", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


class HardwareSection(Section):
    device: Literal["auto", "cuda", "cpu"] = Field(
        "auto", description="where training and serving run (auto = a GPU if one is visible, else the CPU)"
    )
    gpus: Optional[list[int]] = Field(
        None, description="GPU indices (CUDA_VISIBLE_DEVICES); none = all visible"
    )
    nproc_per_node: Optional[int] = Field(
        None, ge=1, description="training processes per node; none = one per listed GPU"
    )
    nnodes: int = Field(1, ge=1, description="number of machines")
    node_rank: int = Field(0, ge=0, description="this machine's rank (0 = master)")
    master_addr: str = Field("127.0.0.1", description="address of the rank-0 machine")
    master_port: int = Field(29500, ge=1, le=65535, description="rendezvous port on the master")
    ddp_backend: Optional[str] = Field(None, description="nccl, gloo, ...; none = ms-swift's choice")

    @model_validator(mode="after")
    def _rank_in_range(self) -> "HardwareSection":
        if self.node_rank >= self.nnodes:
            raise ValueError(f"node_rank {self.node_rank} must be < nnodes {self.nnodes}")
        return self

    @property
    def processes_per_node(self) -> int:
        if self.nproc_per_node:
            return self.nproc_per_node
        return len(self.gpus) if self.gpus else 1


class ExportSection(Section):
    merge_lora: bool = Field(True, description="merge the LoRA into the base weights after training")


class ServeSection(Section):
    host: str = Field("127.0.0.1", description="address vLLM binds; 0.0.0.0 only behind a firewall")
    port: Optional[int] = Field(None, ge=1, le=65535, description="port; none = a free one")
    served_model_name: Optional[str] = Field(None, description="model name in the API; none = recipe name")
    max_model_len: Optional[int] = Field(None, ge=16, description="context length; none = train.max_length + eval.max_tokens")
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1, description="share of GPU memory vLLM may use")
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs one replica spans")
    data_parallel_size: int = Field(1, ge=1, description="replicas behind the one endpoint (vLLM data parallel)")
    structured_outputs_backend: str = Field("xgrammar", description="vLLM structured-outputs backend")
    startup_timeout: float = Field(600, gt=0, description="seconds to wait for the server to be ready")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto",
        description="the dtype vLLM computes in; auto = vLLM's choice on a GPU, on a CPU bfloat16 where it is native "
                    "(avx512_bf16/amx_bf16), else float32",
    )
    accept_threshold: Optional[float] = Field(
        None, ge=0, le=1,
        description="row confidence at or above which an answer needs no review; none = the threshold the run's "
                    "eval calibrated (confidence.accept_threshold in metrics.json)",
    )
    extra_args: dict[str, Any] = Field(
        default_factory=dict, description="other `vllm serve` flags (a `dtype` here wins over serve.dtype)"
    )

    @model_validator(mode="after")
    def _one_dtype(self) -> "ServeSection":
        given = self.extra_args.get("dtype")
        if given is not None and self.dtype != "auto" and str(given) != self.dtype:
            raise ValueError(f"dtype {self.dtype!r} and extra_args.dtype {given!r} disagree: set one of them")
        return self


class EvalSection(Section):
    enabled: bool = Field(True, description="run the eval stage when data.test is set")
    concurrency: int = Field(16, ge=1, description="requests in flight")
    max_tokens: int = Field(512, ge=1, description="max new tokens per answer")
    timeout: float = Field(120, gt=0, description="seconds per request before a retry")
    compare_base: bool = Field(False, description="also serve and evaluate the base model")
    metric: Literal["exact_match", "ner_f1"] = Field("exact_match", description="how answers are scored")
    confidence: bool = Field(
        True, description="ask for the sampled tokens' logprobs and score each field's confidence (eval, serve, extract)"
    )
    accept_target: float = Field(
        0.99, gt=0, le=1,
        description="exact match the auto-accepted rows must reach on the test set: sets the accept threshold",
    )


class ExtractSection(Section):
    engine: Literal["offline", "server", "ray"] = Field(
        "offline", description="how `swiftpipe extract` runs the model (vLLM here, --base-url servers, Ray actors)"
    )
    format: Literal["parquet", "jsonl"] = Field("parquet", description="file format of the output parts")
    chunk_rows: int = Field(1000, ge=1, description="input rows per chunk: one output part, the unit of resume")
    batch_size: int = Field(256, ge=1, description="rows the vLLM engine runs at once, its max_num_seqs (offline, ray)")
    concurrency: int = Field(32, ge=1, description="requests in flight with the server engine")
    replicas: Optional[int] = Field(None, ge=1, description="Ray actors, one engine each; none = one per GPU (1 on CPU)")
    dtype: Optional[Literal["auto", "bfloat16", "float16", "float32"]] = Field(
        None, description="the dtype of the offline and Ray engines; none = serve's (serve.extra_args.dtype, else serve.dtype)"
    )


class OutputSection(Section):
    root: str = Field("runs", description="run directories go to <root>/<recipe name>/<run id>")


class Recipe(Section):
    name: Optional[str] = Field(None, description="recipe name; none = the file's stem")
    offline: bool = Field(False, description="forbid model-hub access: every model and dataset must be local")
    model: ModelSection
    data: DataSection
    train: TrainSection = Field(default_factory=TrainSection)
    lora: LoraSection = Field(default_factory=LoraSection)
    hardware: HardwareSection = Field(default_factory=HardwareSection)
    export: ExportSection = Field(default_factory=ExportSection)
    serve: ServeSection = Field(default_factory=ServeSection)
    eval: EvalSection = Field(default_factory=EvalSection)
    extract: ExtractSection = Field(default_factory=ExtractSection)
    output: OutputSection = Field(default_factory=OutputSection)

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: Optional[str]) -> Optional[str]:
        if value is not None and (not value or "/" in value or value.startswith(".")):
            raise ValueError("name must be a plain directory name (no '/', not starting with '.')")
        return value

    @property
    def merges(self) -> bool:
        """Whether the export stage runs: only adapters are merged."""
        return self.train.tuner in ("lora", "qlora") and self.export.merge_lora
