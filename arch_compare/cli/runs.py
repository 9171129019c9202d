"""`arch-compare train | eval | infer`: t5x-style runs configured by gin files.

    arch-compare train --gin_file=gin_configs/models/gpt2/tiny.gin \\
        --gin_file=gin_configs/runs/finetune.gin --gin.MODEL_DIR="'/tmp/run'" ...

`--gin_file` repeats; `--gin.NAME=value` binds a macro (a gin literal: strings in quotes). The run
gin files declare their required macros `%gin.REQUIRED`; a missing one, an unknown binding, a macro
or binding the run never reads (a typo: `--gin.TRAIN_STEP`; see cli/gin_checks.py) or an unknown
task stops the run before anything is computed, naming the file and line or the flag. The
resolved configuration is written to `MODEL_DIR/config.gin`.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import TYPE_CHECKING

import gin

from arch_compare.cli import gin_checks

# The entry points gin calls import the trainer, models and data (JAX, TensorFlow) as they start:
# `train --help`, and parsing and checking a configuration, need only gin.
if TYPE_CHECKING:
    from arch_compare.models.config import ModelConfig
    from arch_compare.preference.batches import BatchSummary
    from arch_compare.trainer import inference
    from arch_compare.trainer.loop import TrainConfig

# `include 'gin_configs/...'` in experiment files resolves against the project root too.
PROJECT_ROOT = gin_checks.PROJECT_ROOT
REQUIRED = re.compile(r"^\s*([A-Z][A-Z0-9_]*)\s*=\s*%gin\.REQUIRED", re.MULTILINE)
_MISSING = re.compile(r"^(\w+)/macro\.value set to `%gin\.REQUIRED`")


def _check_task(name: str) -> None:
    import arch_compare_tasks.catalogue  # noqa: F401  (registers the shipped tasks)
    from arch_compare_tasks import registry
    if name not in registry.MIXTURES:
        registry.get_task(name)  # raises with close-match suggestions


def _check_data_task(config: TrainConfig) -> None:
    """A preference run reads its task only to evaluate (preference.gin leaves it None)."""
    task = config.data.task
    if task is not None:
        _check_task(task)
    elif config.preference is None:
        raise ValueError("MIXTURE_OR_TASK_NAME is None: name the task or mixture to train on")
    elif config.eval_period:
        raise ValueError(f"MIXTURE_OR_TASK_NAME is None but EVAL_PERIOD is "
                         f"{config.eval_period}: name the task whose validation split the "
                         f"evaluation reads, or set EVAL_PERIOD = 0")


def train(model_config: ModelConfig, vocabulary_path: str, config: TrainConfig) -> dict:
    """What train.gin (and preference.gin) binds: builds the model and vocabulary, then runs the
    training loop."""
    from arch_compare.data.vocabularies import vocabulary_for_model
    from arch_compare.models import build_model
    from arch_compare.trainer.loop import train as train_loop
    _check_data_task(config)
    model = build_model(model_config)
    vocabulary = vocabulary_for_model(model_config, vocabulary_path)
    result = train_loop(model, vocabulary, config)
    last = max(result.losses) if result.losses else int(result.state.step)
    summary = {"model_dir": config.model_dir, "step": int(result.state.step),
               "loss": result.losses.get(last), "resumed_from": result.resumed_from,
               "execution": result.execution["mesh_description"],
               "dtype": result.execution["dtype"]}
    if config.preference is not None:
        summary["preference"] = {
            "objective": config.preference.loss, "pairs": result.pairs,
            **{name: result.last_metrics.get(name)
               for name in ("reward_margin", "preference_accuracy")}}
    return summary


def _model_and_params(model_config: ModelConfig, vocabulary_path: str,
                      config: inference.InferenceConfig):
    """The model as `config.execution` runs it (its dtypes), its mesh, and the checkpoint's
    parameters read straight onto that mesh."""
    from arch_compare.data.vocabularies import vocabulary_for_model
    from arch_compare.decoding import placement
    from arch_compare.models import build_model
    from arch_compare.models.loading import load_params
    from arch_compare.trainer import inference
    model = build_model(config.execution.apply(model_config))
    vocabulary = vocabulary_for_model(model_config, vocabulary_path)
    mesh = inference.inference_mesh(model, config)
    params = load_params(model, config.checkpoint_path,
                         shardings=placement.param_shardings(model, mesh))
    return model, vocabulary, params, mesh


def evaluate(model_config: ModelConfig, vocabulary_path: str, tasks: list[str],
             config: inference.InferenceConfig) -> dict:
    """What eval.gin binds: scores a checkpoint on seqio evaluation tasks -> metrics.json."""
    from arch_compare.trainer import inference
    for name in tasks:
        _check_task(name)
    model, vocabulary, params, mesh = _model_and_params(model_config, vocabulary_path, config)
    metrics = inference.evaluate(model, params, vocabulary, tasks, config, mesh=mesh)
    return {"metrics": metrics,
            "metrics_file": str(Path(config.output_path) / inference.METRICS_FILE)}


def infer(model_config: ModelConfig, vocabulary_path: str, task: str,
          config: inference.InferenceConfig) -> str:
    """What infer.gin binds: generates for a task's split -> predictions.jsonl."""
    from arch_compare.trainer import inference
    _check_task(task)
    model, vocabulary, params, mesh = _model_and_params(model_config, vocabulary_path, config)
    return str(inference.infer(model, params, vocabulary, task, config, mesh=mesh))


ENTRY_POINTS = {"train": train, "eval": evaluate, "infer": infer}
# Where config.gin is written: the first of these macros the files define.
OUTPUT_MACROS = ("MODEL_DIR", "OUTPUT_PATH")


def _train_summary(result: dict) -> str:
    """`trained gpt2-tiny to step 50 in /tmp/run: loss 2.31 at the last step (float32, 1
    device)`; a preference run adds its objective, reward margin, preference accuracy and the
    pairs it kept: `trained gpt2-tiny with dpo to step 3 in /tmp/run: loss 0.6931, reward margin
    0.0012, preference accuracy 0.5 at the last step; 16 of 16 pairs kept, none dropped (...)`."""
    model = _macro_value("MODEL_PRESET")
    model = model if isinstance(model, str) else "the model"
    how = f"({result['dtype']}, {result['execution']})"
    if result["loss"] is None:
        return (f"{model} in {result['model_dir']} is already at step {result['step']}: "
                f"nothing to train {how}")
    resumed = (f", resumed from step {result['resumed_from']}"
               if result["resumed_from"] is not None else "")
    preference = result.get("preference")
    if preference is None:
        return (f"trained {model} to step {result['step']} in {result['model_dir']}: "
                f"loss {result['loss']:.4g} at the last step{resumed} {how}")
    return (f"trained {model} with {preference['objective']} to step {result['step']} in "
            f"{result['model_dir']}: {_preference_metrics(result['loss'], preference)} at the "
            f"last step{resumed}; {_pairs_kept(preference['pairs'])} {how}")


def _preference_metrics(loss: float, preference: dict) -> str:
    """`loss 0.6931, reward margin 0.0012, preference accuracy 0.5` (those logged)."""
    values = {"loss": loss, "reward margin": preference["reward_margin"],
              "preference accuracy": preference["preference_accuracy"]}
    return ", ".join(f"{name} {value:.4g}" for name, value in values.items()
                     if value is not None)


def _pairs_kept(pairs: BatchSummary) -> str:
    """`14 of 16 pairs kept (dropped: prompt longer than the inputs length 2)`."""
    dropped = ", ".join(f"{reason} {count:,}" for reason, count in pairs.dropped.items())
    return (f"{pairs.kept:,} of {pairs.pairs:,} pairs kept"
            + (f" (dropped: {dropped})" if dropped else ", none dropped"))


def _eval_summary(result: dict) -> str:
    """`eval: metrics in OUTPUT_PATH/metrics.json`, then one line per task and metric."""
    lines = [f"eval: metrics in {result['metrics_file']}"]
    for task, metrics in result["metrics"].items():
        lines += [f"  {task}  {name} {value:.4g}" for name, value in metrics.items()]
    return "\n".join(lines)


def _infer_summary(path: str) -> str:
    rows = None
    if Path(path).is_file():  # process 0 writes it
        with open(path) as lines:
            rows = sum(1 for _ in lines)
    count = f" ({rows} example{'s' * (rows != 1)})" if rows is not None else ""
    return f"infer: predictions in {path}{count}"


# What each command prints: its entry point's result in words.
SUMMARIES = {"train": _train_summary, "eval": _eval_summary, "infer": _infer_summary}


def parse_gin(files: list[str], bindings: list[str]) -> None:
    """Parse the files and `NAME=value` bindings; errors name the file and the binding."""
    for path in files:
        if not Path(path).is_file():
            raise FileNotFoundError(f"gin file not found: {path}")
    gin.clear_config()
    gin_checks.search_project_first()
    try:
        with gin_checks.quiet_search():
            gin.parse_config_files_and_bindings(files, bindings, finalize_config=False)
    except (ValueError, KeyError, SyntaxError) as error:
        raise ValueError(f"gin: {gin_checks.plain_message(error)}") from None


INCLUDE = re.compile(r"^\s*include\s+['\"]([^'\"]+)['\"]", re.MULTILINE)


def _required_in(files: list[str]) -> dict[str, str]:
    """Macro -> the file declaring it %gin.REQUIRED, following `include`s."""
    declared, pending = {}, [Path(f) for f in files]
    while pending:
        path = pending.pop(0)
        if not path.is_file():
            path = PROJECT_ROOT / path
        text = path.read_text()
        for name in REQUIRED.findall(text):
            declared.setdefault(name, str(path))
        pending += [Path(included) for included in INCLUDE.findall(text)]
    return declared


def _missing_required(name: str, where: str) -> ValueError:
    return ValueError(f"{name} is required (declared %gin.REQUIRED in {where}); pass "
                      f"--gin.{name}=VALUE or set it in an experiment gin file")


def check_required(files: list[str]) -> None:
    """Every macro a file declares %gin.REQUIRED has been given a value (checked up front, so no
    configurable is ever built from the placeholder)."""
    for name, where in _required_in(files).items():
        value = gin.query_parameter(f"{name}/macro.value")
        if isinstance(value, gin.config.ConfigurableReference) and str(value) == "%gin.REQUIRED":
            raise _missing_required(name, where)


def check_configuration(entry_point, files: list[str], bindings: list[str]) -> None:
    """Before anything runs: every required macro has a value, and every macro and binding the
    user set (`NAME=VALUE` bindings, their own gin files) is read by `entry_point`."""
    check_required(files)
    gin_checks.check_used(entry_point, files, bindings, required=set(_required_in(files)))


def call_configured(entry_point, files: list[str]):
    """Call a gin-configured entry point; gin's errors become ones that say what to do, without
    gin's `In call to configurable ...` decorations."""
    try:
        return gin.get_configurable(entry_point)()
    except (KeyError, ValueError, TypeError) as error:  # OSErrors: cli.main words them
        missing = _MISSING.match(str(error))
        if missing:
            name = missing.group(1)
            raise _missing_required(name, _required_in(files).get(name, "a gin file")) from None
        if isinstance(error, TypeError) and "No values supplied by Gin" not in str(error):
            raise  # a TypeError gin did not diagnose as a missing binding is a bug: traceback
        if not gin_checks.is_gin_proxy(error):
            raise
        raise ValueError(gin_checks.plain_message(error)) from error


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gin_file", action="append", default=[], required=True,
                        help="gin file (repeatable, later files override earlier ones)")
    parser.add_argument("--gin", dest="gin_bindings", action="append", default=[],
                        metavar="NAME=VALUE", help=argparse.SUPPRESS)
    parser.add_argument("--multihost", action="store_true",
                        help="call jax.distributed.initialize() first (TPU pods, multi-node GPU)")
    parser.add_argument("--coordinator_address", help="with --multihost, outside TPU/SLURM/MPI")
    parser.add_argument("--num_processes", type=int, help="with --multihost")
    parser.add_argument("--process_id", type=int, help="with --multihost")


def split_gin_flags(argv: list[str]) -> list[str]:
    """t5x writes `--gin.NAME=value`; argparse wants `--gin NAME=value`."""
    out = []
    for arg in argv:
        if arg.startswith("--gin.") and "=" in arg:
            out += ["--gin", arg[len("--gin."):]]
        else:
            out.append(arg)
    return out


def run_command(command: str, args: argparse.Namespace) -> int:
    if args.multihost:
        import jax
        # On Cloud TPU, SLURM and Open MPI JAX finds these itself; elsewhere they are given.
        jax.distributed.initialize(coordinator_address=args.coordinator_address,
                                   num_processes=args.num_processes, process_id=args.process_id)
    bindings = [_as_gin_binding(b) for b in args.gin_bindings]
    parse_gin(args.gin_file, bindings)
    check_configuration(ENTRY_POINTS[command], args.gin_file, args.gin_bindings)
    from arch_compare import compilation_cache
    compilation_cache.enable()  # programs compiled by an earlier train/eval/infer are read back
    output_dir = next((value for value in map(_macro_value, OUTPUT_MACROS)
                       if isinstance(value, str)), None)
    if output_dir:  # written first, so even a failed run says how it was set up
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        (Path(output_dir) / "config.gin").write_text(gin.config_str())
    print(SUMMARIES[command](call_configured(ENTRY_POINTS[command], args.gin_file)))
    return 0


def _macro_value(name: str):
    try:
        return gin.query_parameter(f"{name}/macro.value")
    except ValueError:
        return None


def _as_gin_binding(text: str) -> str:
    name, _, value = text.partition("=")
    if not value:
        raise ValueError(f"--gin.{text}: expected --gin.NAME=VALUE")
    return f"{name} = {value}"


class RunCommand:
    """A gin-configured sub-command: `add_arguments` and `run`, like the command modules."""

    def __init__(self, name: str, doc: str):
        self.name = name
        self.__doc__ = doc

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_run_arguments(parser)

    def run(self, args: argparse.Namespace) -> int:
        return run_command(self.name, args)


RUN_COMMANDS = {
    "train": RunCommand("train", """Fine-tune (or pre-train) a model on a task or mixture (gin, t5x style).

Example: --gin_file=gin_configs/models/gpt2/tiny.gin --gin_file=gin_configs/runs/finetune.gin
--gin.MODEL_DIR="'/tmp/run'" --gin.MIXTURE_OR_TASK_NAME="'imitation_sharegpt_fixture'" ...
Running again with the same MODEL_DIR resumes from its newest checkpoint. DPO or IPO on a file of
pairs from a checkpoint: gin_configs/runs/preference.gin instead of finetune.gin."""),
    "eval": RunCommand("eval", """Score a checkpoint on seqio evaluation tasks and write OUTPUT_PATH/metrics.json.

Generation tasks are decoded (DECODE_METHOD greedy | sample | beam), rank-classification tasks
scored; configured like train (see gin_configs/runs/eval.gin)."""),
    "infer": RunCommand("infer", """Generate for every example of a task split and write OUTPUT_PATH/predictions.jsonl.

Configured like train (see gin_configs/runs/infer.gin)."""),
}
