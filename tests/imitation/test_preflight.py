"""A study checks its inputs before its first step: every problem of its data files, tasks,
checkpoints and target listed at once, naming the file and line or the key, as one ValueError
(the CLI exits 2). In-process on the tiny study with small bad files; one CLI run shows that a
bad data file stops `arch-compare study` before anything is written or trained."""

import dataclasses
import json
import socket
import time
from pathlib import Path

import pytest

from arch_compare.cli import main
from arch_compare.cli.study import study_config
from arch_compare.imitation import collection, preflight
from arch_compare.imitation.config import DataSource
from arch_compare.imitation.evaluation import prompt_of
from arch_compare.imitation.preflight import StudyInputsInvalid, check
from arch_compare.imitation.targets import FunctionTarget
from arch_compare.models.zoo import get_preset
from arch_compare_tasks import demo_world, registry

TINY_STUDY = Path(__file__).with_name("tiny_study.gin")


@pytest.fixture(scope="module")
def vocabulary(tmp_path_factory):
    return demo_world.write_vocabularies(tmp_path_factory.mktemp("world"))["DEMO_BPE"]


@pytest.fixture
def tiny(tmp_path, vocabulary):
    """The tiny study (prompts collected from a function target, a model pre-trained here)."""
    return study_config([str(TINY_STUDY)], [f"STUDY_DIR='{tmp_path / 'study'}'",
                                            f"VOCABULARY='{vocabulary}'"])


def _chat(index: int, answer: str | None = None) -> str:
    return json.dumps({"messages": [{"role": "user", "content": f"question {index}"},
                                    {"role": "assistant", "content": answer or f"answer {index}"}]})


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def _with_file(config, path: Path, amounts=(8, 16), **source):
    given = DataSource(name="given", amounts=amounts, file=str(path), **source)
    return dataclasses.replace(config, sources=(given,))


def _problems(config) -> str:
    began = time.perf_counter()
    with pytest.raises(StudyInputsInvalid) as raised:
        check(config)
    assert time.perf_counter() - began < 5  # seconds, not the hours before the first run
    assert isinstance(raised.value, ValueError)  # the CLI's exit 2
    return str(raised.value)


def _bad_file(tmp_path) -> Path:
    """20 records, three of them bad: a truncated line, a number for text, a garbage line."""
    lines = [_chat(i) for i in range(20)]
    lines[3] = lines[3][:25]
    lines[5] = json.dumps({"messages": [{"role": "user", "content": 5},
                                        {"role": "assistant", "content": "x"}]})
    lines[7] = "this is not json"
    return _write(tmp_path / "bad.jsonl", lines)


def test_every_bad_record_is_listed_with_its_file_and_line(tiny, tmp_path):
    path = _bad_file(tmp_path)
    message = _problems(_with_file(tiny, path))
    assert f"{path}:4: invalid JSON" in message
    assert f"{path}:6: messages[0]: 'content' must be a string, got a number" in message
    assert f"{path}:8: invalid JSON" in message
    assert "3 bad record(s)" in message and "skip_bad=True" in message
    assert "problem(s)" in message.splitlines()[0]


def test_skip_bad_skips_and_counts_the_bad_records(tiny, tmp_path):
    config = _with_file(tiny, _bad_file(tmp_path), skip_bad=True)
    report = check(config)
    assert report.skipped("given") == 3 and report.sources[0].examples == 17
    assert "'given': 3 bad record(s) skipped" in report.summary()
    assert report.recorded({"source": {"name": "given"}}, "given")["source"] == {
        "name": "given", "skipped_bad_records": 3}
    # The study trains on what the reader gives with skip_bad: the same 17 examples.
    from arch_compare_tasks import catalogue
    catalogue.register_imitation_task("preflight_skip_bad", config.sources[0].file,
                                      "openai_chat", skip_bad=True, replace=True)
    assert len(registry.records("preflight_skip_bad", "train")) == 17


def test_an_empty_file_and_too_few_examples_are_refused(tiny, tmp_path):
    empty = _write(tmp_path / "empty.jsonl", [])
    assert f"{empty}: holds no records" in _problems(_with_file(tiny, empty))
    short = _write(tmp_path / "short.jsonl", [_chat(i) for i in range(10)])
    message = _problems(_with_file(tiny, short))
    assert "10 examples from 10 records" in message and "the largest amount, 16" in message
    assert check(_with_file(tiny, short, amounts=(4, 10))).sources[0].examples == 10
    missing = tmp_path / "missing.jsonl"
    assert f"{missing}: no such file" in _problems(_with_file(tiny, missing))


def test_an_oversized_record_is_refused_naming_its_line_and_the_limit(tiny, tmp_path):
    lines = [_chat(i) for i in range(16)]
    lines[9] = _chat(9, "x" * 70_000)
    path = _write(tmp_path / "big.jsonl", lines)
    message = _problems(_with_file(tiny, path))
    assert f"{path}:10: example" in message and "70,010 characters" in message
    assert "max_record_chars=65,536" in message
    check(_with_file(tiny, path, max_record_chars=100_000))
    check(_with_file(tiny, path, max_record_chars=None))
    # Only the examples the study trains on (the first 16) count.
    check(_with_file(tiny, path, amounts=(8,)))


def test_the_new_source_fields_are_validated():
    with pytest.raises(ValueError, match="skip_bad must be True or False"):
        DataSource(name="s", amounts=(4,), file="f", skip_bad="yes")
    with pytest.raises(ValueError, match="max_record_chars must be a positive"):
        DataSource(name="s", amounts=(4,), file="f", max_record_chars=0)


def test_unknown_tasks_are_named_with_close_matches(tiny):
    evaluation = dataclasses.replace(tiny.evaluations[0], task="demo_facts_knwon")
    source = dataclasses.replace(tiny.sources[0], prompts_task="demo_broad_prompt")
    message = _problems(dataclasses.replace(tiny, evaluations=(evaluation,),
                                            sources=(source,)))
    assert "evaluations[0] ('demo_facts_knwon'): unknown task or mixture" in message
    assert "did you mean demo_facts_known" in message
    assert "sources[0] ('broad').prompts_task: unknown task" in message


def test_checkpoints_must_be_there_and_of_the_study_model(tiny, tmp_path):
    model = dataclasses.replace(tiny.models[0], pretraining=None,
                                base_checkpoint=str(tmp_path / "nowhere"))
    assert "no such checkpoint" in _problems(dataclasses.replace(tiny, models=(model,)))
    other = tmp_path / "other"
    (other / "params").mkdir(parents=True)
    config = get_preset("gpt2-tiny", {"num_layers": 3})
    (other / "model_config.json").write_text(json.dumps(config.to_dict()))
    model = dataclasses.replace(model, base_checkpoint=str(other))
    message = _problems(dataclasses.replace(tiny, models=(model,)))
    assert "holds another model than preset 'gpt2-tiny'" in message
    assert f"num_layers 3 (study: {tiny.models[0].config.num_layers})" in message
    # The study's own architecture passes, whatever its execution fields.
    (other / "model_config.json").write_text(json.dumps(tiny.models[0].config.to_dict()))
    check(dataclasses.replace(tiny, models=(model,)))
    (other / "params").rmdir()
    assert "without parameters (params/)" in _problems(dataclasses.replace(tiny,
                                                                           models=(model,)))


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_an_unreachable_target_stops_the_study_only_while_answers_are_missing(tiny):
    target = {"kind": "openai", "name": "remote", "model": "m",
              "base_url": f"http://127.0.0.1:{_closed_port()}/v1"}
    config = dataclasses.replace(tiny, target=target)
    message = _problems(config)
    assert "target: cannot connect to 127.0.0.1" in message and "still need its answers" in message
    # Every answer already collected under the target's name: only noted.
    source = config.sources[0]
    prompts = [prompt_of(record) for record in
               registry.records(source.prompts_task, "train")[:max(source.amounts)]]
    collection.collect(FunctionTarget("remote", lambda turns: "ok"), prompts, config.generation,
                       preflight.collection_cache(config, source), progress=False)
    report = check(config)
    assert "cannot connect" in report.notes[0] and "note: target 'remote'" in report.summary()


def test_study_and_its_plan_stop_on_a_bad_file_before_anything_is_written(tmp_path, vocabulary,
                                                                          capsys):
    path = _bad_file(tmp_path)
    study_dir = tmp_path / "study"
    command = ["study", f"--gin_file={TINY_STUDY}", f"--gin.STUDY_DIR='{study_dir}'",
               f"--gin.VOCABULARY='{vocabulary}'",
               "--gin.arch_compare.imitation.config.StudyConfig.sources="
               f"[{{'name': 'given', 'file': '{path}', 'amounts': [8, 16]}}]", "--yes"]
    began = time.perf_counter()
    assert main(command) == 2
    seconds = time.perf_counter() - began
    error = capsys.readouterr().err
    assert f"{path}:4: invalid JSON" in error and f"{path}:8: invalid JSON" in error
    assert not study_dir.exists()  # no database, no model directory, no checkpoint
    assert seconds < 10
    assert main(command[:-1] + ["--plan"]) == 2
    out, error = capsys.readouterr()
    assert "a100-80gb" in out and f"{path}:6: messages[0]" in error  # the plan, then the problems


def test_the_report_says_how_many_bad_records_each_source_skipped():
    from arch_compare.report import sections
    from arch_compare.report.load import StudyData
    from arch_compare.results import Run, Study

    def run(source, examples, skipped):
        return Run(f"imitation/m/{source}/{examples}", "imitation", "m", "decoder_only", "gpt2",
                   {"source": {"name": source, "skipped_bad_records": skipped}},
                   data_source=source, data_examples=examples)

    runs = (run("given", 8, 3), run("given", 16, 3), run("clean", 8, 0))
    data = StudyData(Path("db"), Study("s", {}, "d", 0.0), runs, (), ())
    summary = sections.summary(data, [])
    assert "Bad data records skipped (skip_bad): 3 in given." in summary
    assert "clean" not in summary.split("skip_bad")[1]
    assert "skipped" not in sections.summary(dataclasses.replace(data, runs=runs[2:]), [])
