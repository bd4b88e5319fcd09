"""Training configuration: MindFormers-style YAML parsed strictly into dataclasses.

Unknown keys and wrong types are rejected with the dotted path of the key, so a typo fails the job
at once (a permanent error) instead of silently training with defaults.
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

CheckpointFormat = Literal["ckpt", "safetensors"]


class ConfigError(ValueError):
    """Invalid configuration: permanent, retrying cannot help."""


@dataclass
class ContextConfig:
    mode: int = 0  # 0 = graph (compiled, ~30x faster per step), 1 = PyNative
    device_target: Literal["CPU", "Ascend", "GPU"] = "CPU"


@dataclass
class RunnerConfig:
    epochs: int = 1
    batch_size: int = 8
    sink_mode: bool = False  # True is refused (validate): steps run one host batch at a time
    sink_size: int = 1  # MindSpore's meaning: steps per sink; without sink_mode it has no effect


@dataclass
class ScaleSense:
    type: Literal["DynamicLossScaleUpdateCell"] = "DynamicLossScaleUpdateCell"
    loss_scale_value: float = 65536.0
    scale_factor: float = 2.0
    scale_window: int = 1000


@dataclass
class RunnerWrapper:
    type: Literal["MFTrainOneStepCell", "TrainOneStepWithLossScaleCell"] = "MFTrainOneStepCell"
    scale_sense: ScaleSense = field(default_factory=ScaleSense)


@dataclass
class CheckpointMonitor:
    type: Literal["CheckpointMonitor"] = "CheckpointMonitor"
    prefix: str = "respawn"
    save_checkpoint_steps: int = 1
    keep_checkpoint_max: int = 5
    async_save: bool = False
    checkpoint_format: CheckpointFormat = "ckpt"
    save_network_params: bool = True


@dataclass
class LossMonitor:
    type: Literal["MFLossMonitor"] = "MFLossMonitor"
    per_print_times: int = 1


Callback = CheckpointMonitor | LossMonitor
CALLBACK_TYPES: dict[str, type] = {"CheckpointMonitor": CheckpointMonitor, "MFLossMonitor": LossMonitor}


@dataclass
class LrSchedule:
    type: Literal["CosineWithWarmUpLR", "LinearWithWarmUpLR", "ConstantWarmUpLR"] = "CosineWithWarmUpLR"
    learning_rate: float = 1e-3
    lr_end: float = 0.0
    warmup_steps: int = 0
    # Fix this for incremental training: the LR curve is a function of the global step only.
    # -1 = epochs x steps per epoch of the current dataset.
    total_steps: int = -1


@dataclass
class OptimizerConfig:
    type: Literal["AdamW"] = "AdamW"
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    weight_decay: float = 0.0


@dataclass
class ModelConfig:
    type: Literal["llama", "mlp"] = "llama"
    vocab_size: int = 256  # byte-level tokens
    seq_length: int = 64
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 172
    position_embedding: Literal["rotary", "learned"] = "rotary"
    rms_norm_eps: float = 1e-6
    dropout: float = 0.0  # masks are built on the host per global step, so resume stays exact


@dataclass
class DataLoader:
    type: Literal["TextDataset", "SyntheticDataset"] = "TextDataset"
    dataset_dir: str = ""  # TextDataset: a .txt file or a directory of them; "" = the shipped corpus
    shuffle: bool = True
    num_samples: int = 0  # 0 = all; SyntheticDataset needs a positive count
    content_seed: int = 0  # SyntheticDataset: which random token stream


@dataclass
class TrainDataset:
    data_loader: DataLoader = field(default_factory=DataLoader)
    num_parallel_workers: int = 1


@dataclass
class TrainerConfig:
    seed: int = 0
    run_mode: Literal["train"] = "train"
    output_dir: str = "./output"
    load_checkpoint: str = ""
    resume_training: bool | str = False
    load_ckpt_format: CheckpointFormat = "ckpt"
    use_parallel: bool = False
    auto_trans_ckpt: bool = False
    remove_redundancy: bool = False
    src_strategy_path_or_dir: str = ""
    transform_process_num: int | None = None  # the merge runs in one process: None or 1
    load_ckpt_async: bool = False  # True is refused: the load comes before the first step compiles
    context: ContextConfig = field(default_factory=ContextConfig)
    runner_config: RunnerConfig = field(default_factory=RunnerConfig)
    runner_wrapper: RunnerWrapper = field(default_factory=RunnerWrapper)
    callbacks: list[Callback] = field(default_factory=list)
    lr_schedule: LrSchedule = field(default_factory=LrSchedule)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train_dataset: TrainDataset = field(default_factory=TrainDataset)

    @property
    def checkpoint_monitor(self) -> CheckpointMonitor | None:
        found = [c for c in self.callbacks if isinstance(c, CheckpointMonitor)]
        return found[0] if found else None

    @property
    def loss_monitor(self) -> LossMonitor | None:
        found = [c for c in self.callbacks if isinstance(c, LossMonitor)]
        return found[0] if found else None


# ---------------------------------------------------------------------------------------------- loading


def load_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            raw = yaml.safe_load(f)
    except OSError as e:
        raise ConfigError(f"cannot read config {path}: {e.strerror}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"config {path} is not valid YAML: {e}") from e
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config {path}: expected a mapping at the top level, got {type(raw).__name__}")
    return raw


def set_dotted(raw: dict[str, Any], dotted: str, value: Any) -> None:
    """Apply one override like `runner_config.batch_size` to a raw config mapping."""
    *parents, leaf = dotted.split(".")
    node = raw
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{dotted}: cannot set below {part}, which is not a mapping")
        node = child
    node[leaf] = value


def parse_config(raw: Mapping[str, Any]) -> TrainerConfig:
    config = _build(TrainerConfig, raw, "")
    validate(config)
    return config


def to_dict(config: TrainerConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)


# ------------------------------------------------------------------------------------------ validation

_PREFIX = re.compile(r"^[A-Za-z0-9_.]+$")
MAX_KEEP_CHECKPOINTS = 10_000  # one meta.json record each: ~4 MB, under safefs.META_MAX_BYTES


def _positive(name: str, value: int) -> None:
    if value < 1:
        raise ConfigError(f"{name}: must be >= 1, got {value}")


def _validate_monitors(c: TrainerConfig) -> None:
    monitors = [cb for cb in c.callbacks if isinstance(cb, CheckpointMonitor)]
    if len(monitors) > 1:
        raise ConfigError("callbacks: at most one CheckpointMonitor")
    for i, cb in enumerate(c.callbacks):
        if isinstance(cb, LossMonitor):
            _positive(f"callbacks[{i}].per_print_times", cb.per_print_times)
    for i, m in enumerate(monitors):
        where = f"callbacks[{i}]"
        _positive(f"{where}.save_checkpoint_steps", m.save_checkpoint_steps)
        _positive(f"{where}.keep_checkpoint_max", m.keep_checkpoint_max)
        if m.keep_checkpoint_max > MAX_KEEP_CHECKPOINTS:  # meta.json must stay under safefs.META_MAX_BYTES
            raise ConfigError(
                f"{where}.keep_checkpoint_max: at most {MAX_KEEP_CHECKPOINTS}, got {m.keep_checkpoint_max}"
            )
        if not _PREFIX.match(m.prefix):
            raise ConfigError(
                f"{where}.prefix: only letters, digits, '_' and '.' are allowed, got {m.prefix!r}"
            )


def _refuse_unsupported(c: TrainerConfig) -> None:
    """MindFormers keys the trainer accepts only with the values it honours, so none is ignored."""
    if c.runner_config.sink_mode:
        raise ConfigError(
            "runner_config.sink_mode: True is not supported: the trainer feeds one batch per step from "
            "the host, so that a stop, a checkpoint and the dropout mask fall on an exact step, and "
            "MindSpore 2.10 has no data sink on CPU (Model.train falls back to one batch per step); "
            "set it to False: resume is exact without it"
        )
    if c.transform_process_num is not None and c.transform_process_num != 1:
        raise ConfigError(
            f"transform_process_num: {c.transform_process_num} is not supported: the auto_trans_ckpt "
            "merge runs in one process on rank 0 (data parallel: each parameter is read once, not "
            "transformed); set 1 or remove the key"
        )
    if c.load_ckpt_async:
        raise ConfigError(
            "load_ckpt_async: True is not supported: the trainer loads the checkpoint before its first "
            "step, which is when the graphs compile (a compile-cache hit makes that short); set False"
        )


def validate(c: TrainerConfig) -> None:
    positive = _positive

    positive("runner_config.epochs", c.runner_config.epochs)
    positive("runner_config.batch_size", c.runner_config.batch_size)
    positive("model.seq_length", c.model.seq_length)
    positive("model.hidden_size", c.model.hidden_size)
    positive("model.num_layers", c.model.num_layers)
    positive("model.num_heads", c.model.num_heads)
    positive("model.intermediate_size", c.model.intermediate_size)
    positive("train_dataset.num_parallel_workers", c.train_dataset.num_parallel_workers)
    if not 2 <= c.model.vocab_size <= 256:
        raise ConfigError(f"model.vocab_size: byte-level data needs 2..256, got {c.model.vocab_size}")
    if c.model.hidden_size % c.model.num_heads or (c.model.hidden_size // c.model.num_heads) % 2:
        raise ConfigError("model.hidden_size: must be num_heads x an even head size")
    if not 0.0 <= c.model.dropout < 1.0:
        raise ConfigError(f"model.dropout: must be in [0, 1), got {c.model.dropout}")
    if c.context.mode not in (0, 1):
        raise ConfigError(f"context.mode: must be 0 (graph) or 1 (PyNative), got {c.context.mode}")
    if len(c.optimizer.betas) != 2:
        raise ConfigError("optimizer.betas: expected two numbers")
    if c.lr_schedule.total_steps == 0 or c.lr_schedule.total_steps < -1:
        raise ConfigError("lr_schedule.total_steps: must be positive, or -1 to derive it from the dataset")
    if c.lr_schedule.warmup_steps < 0:
        raise ConfigError("lr_schedule.warmup_steps: must be >= 0")
    if c.train_dataset.data_loader.num_samples < 0:
        raise ConfigError("train_dataset.data_loader.num_samples: must be >= 0")
    if c.train_dataset.data_loader.type == "SyntheticDataset" and c.train_dataset.data_loader.num_samples < 1:
        raise ConfigError("train_dataset.data_loader.num_samples: SyntheticDataset needs a positive count")
    _validate_monitors(c)
    _refuse_unsupported(c)
    if isinstance(c.resume_training, str) and (
        "/" in c.resume_training or "\\" in c.resume_training or c.resume_training in ("", ".", "..")
    ):
        raise ConfigError(
            f"resume_training: must be true/false or a bare checkpoint file name, got {c.resume_training!r}"
        )


# ------------------------------------------------------------------------------------ generic building


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _describe(tp: Any) -> str:
    if tp is types.NoneType:
        return "null"
    if typing.get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) in (types.UnionType, typing.Union):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) is list:
        return f"list of {_describe(typing.get_args(tp)[0])}"
    if dataclasses.is_dataclass(tp):
        return "mapping"
    return getattr(tp, "__name__", str(tp))


def _convert(tp: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif tp is types.NoneType:
        if value is None:
            return None
    elif origin is Literal:
        if value in typing.get_args(tp) and isinstance(value, str | int):
            return value
        raise ConfigError(f"{path}: expected one of {_describe(tp)}, got {value!r}")
    elif origin in (types.UnionType, typing.Union):
        args = typing.get_args(tp)
        if all(dataclasses.is_dataclass(a) for a in args):
            return _build_tagged(args, value, path)
        for arg in args:
            try:
                return _convert(arg, value, path)
            except ConfigError:
                continue
    elif origin is list:
        if isinstance(value, list):
            (item,) = typing.get_args(tp)
            return [_convert(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
    elif dataclasses.is_dataclass(tp):
        return _build(tp, value, path)
    raise ConfigError(f"{path}: expected {_describe(tp)}, got {_type_name(value)}")


def _build_tagged(options: tuple[Any, ...], value: Any, path: str) -> Any:
    if not isinstance(value, Mapping) or "type" not in value:
        raise ConfigError(f"{path}: expected a mapping with a 'type' key, got {_type_name(value)}")
    cls = CALLBACK_TYPES.get(value["type"])
    if cls is None or cls not in options:
        raise ConfigError(
            f"{path}.type: unknown callback {value['type']!r} (known: {', '.join(CALLBACK_TYPES)})"
        )
    return _build(cls, value, path)


def _build(cls: Any, raw: Any, path: str) -> Any:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{path or 'config'}: expected a mapping, got {_type_name(raw)}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in raw:
        if key not in names:
            where = f"{path}.{key}" if path else str(key)
            raise ConfigError(f"{where}: unknown key (known: {', '.join(names)})")
    kwargs = {}
    for name in names:
        if name in raw:
            kwargs[name] = _convert(hints[name], raw[name], f"{path}.{name}" if path else name)
    return cls(**kwargs)


def default_corpus_dir() -> Path:
    return Path(__file__).resolve().parent / "data"
