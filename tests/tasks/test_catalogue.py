"""The shipped tasks as seqio Tasks: tokenized per vocabulary, run by seqio's own Evaluator."""

import numpy as np
import pytest
import seqio

from arch_compare.data.converters import feature_converter_for
from arch_compare.data.vocabularies import load_vocabulary
from arch_compare.models import get_preset
from arch_compare_tasks import catalogue, registry
from arch_compare_tasks.registry import records, seqio_mixture, seqio_task


@pytest.fixture(scope="module")
def vocabulary(sentencepiece_model_path):
    return load_vocabulary("sentencepiece", sentencepiece_model_path)


def evaluator(name, vocabulary, split):
    task = seqio_task(name, vocabulary)
    return seqio.Evaluator(task.name, feature_converter_for(get_preset("t5-tiny"), vocabulary),
                           eval_split=split, use_memory_cache=False)


def padded(predictions, length=32):
    """seqio stacks predictions into one array, so they share a length (pad 0), as t5x's do."""
    return [(i, list(tokens)[:length] + [0] * (length - len(tokens[:length])))
            for i, tokens in predictions]


def test_one_seqio_task_per_vocabulary_and_the_same_task_again(vocabulary, bpe_tokenizer_path):
    first = seqio_task("nq_open_3shot_fixture", vocabulary)
    assert seqio_task("nq_open_3shot_fixture", vocabulary) is first
    other = seqio_task("nq_open_3shot_fixture", load_vocabulary("hf_tokenizer",
                                                                bpe_tokenizer_path))
    assert other.name != first.name and other.name.startswith("nq_open_3shot_fixture#")


def test_seqio_evaluator_runs_exact_match_on_natural_questions(vocabulary):
    nq = evaluator("nq_open_3shot_fixture", vocabulary, "validation")

    def gold(dataset):  # the first alias, which is the target
        return padded((i, ex["decoder_target_tokens"]) for i, ex in dataset)

    def wrong(dataset):
        return padded((i, vocabulary.encode("not an answer")) for i, _ in dataset)

    metrics, _ = nq.evaluate(compute_metrics=True, predict_fn=gold)
    assert metrics.result()[nq.eval_tasks[0].name]["exact_match"] == 100.0
    metrics, _ = nq.evaluate(compute_metrics=True, predict_fn=wrong)
    assert metrics.result()[nq.eval_tasks[0].name]["exact_match"] == 0.0


def test_seqio_evaluator_runs_rank_classification_on_mmlu(vocabulary):
    mmlu = evaluator("mmlu_5shot_fixture", vocabulary, "test")
    rows = records("mmlu_5shot_fixture", "test")

    def oracle(dataset):
        return [(i, 0.0 if rows[i]["is_correct"] else -5.0) for i, _ in dataset]

    def prefers_a(dataset):
        return [(i, 0.0 if rows[i]["choice_index"] == 0 else -1.0) for i, _ in dataset]

    name = mmlu.eval_tasks[0].name
    metrics, _ = mmlu.evaluate(compute_metrics=True, score_fn=oracle)
    assert metrics.result()[name]["accuracy_micro"] == 100.0
    metrics, _ = mmlu.evaluate(compute_metrics=True, score_fn=prefers_a)
    answers_a = [row["is_correct"] for row in rows if row["choice_index"] == 0]
    assert metrics.result()[name]["accuracy_micro"] == pytest.approx(100 * np.mean(answers_a))
    # The accuracy keeps its counts through seqio, so the study can give it Wilson's interval.
    accuracy = metrics.result()[name]["accuracy_micro"]
    assert (accuracy.hits, accuracy.n) == (sum(answers_a), len(answers_a))


def test_mmlu_rows_are_four_per_question_with_one_correct():
    rows = records("mmlu_5shot_fixture", "test")
    by_question = {}
    for row in rows:
        by_question.setdefault(row["id"], []).append(row)
    assert all(len(choices) == 4 and sum(r["is_correct"] for r in choices) == 1
               for choices in by_question.values())
    assert {row["targets"] for row in rows} == {" A", " B", " C", " D"}


def test_imitation_task_splits_and_first_n(tmp_path):
    source = catalogue.FIXTURES / "imitation" / "hc3.jsonl"
    whole = registry.get_task("imitation_hc3_fixture")
    all_examples = [row["id"] for row in records("imitation_hc3_fixture", "train")]
    catalogue.register_imitation_task("hc3_first_one", source, "hc3", num_examples=1,
                                      validation_examples=1, replace=True)
    assert [row["id"] for row in records("hc3_first_one", "train")] == all_examples[:1]
    assert records("hc3_first_one", "validation") == records("imitation_hc3_fixture",
                                                             "validation")
    assert whole.kind == "imitation" and "list_usage_agreement" in [
        fn.__name__ for fn in whole.metric_fns]
    catalogue.register_imitation_task("hc3_too_many", source, "hc3", num_examples=50,
                                      replace=True)
    with pytest.raises(ValueError, match="first 50 examples"):
        records("hc3_too_many", "train")


def test_malformed_data_names_file_and_line_or_is_skipped_and_reported(tmp_path, caplog):
    bad = tmp_path / "chat.jsonl"
    good = '{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}'
    bad.write_text(good + "\n" + '{"messages": [{"role": "robot", "content": "x"}]}\n' + good + "\n")
    catalogue.register_imitation_task("strict_chat", bad, "openai_chat", replace=True)
    with pytest.raises(ValueError, match=r"chat.jsonl:2:"):
        records("strict_chat", "train")
    catalogue.register_imitation_task("lenient_chat", bad, "openai_chat", skip_bad=True,
                                      replace=True)
    assert len(records("lenient_chat", "train")) == 2
    assert "1 skipped" in caplog.text and "line 2" in caplog.text


def test_pretraining_mixture_samples_both_tasks_at_its_rate(vocabulary):
    mixture = seqio_mixture("imitation_sharegpt_fixture_with_pretraining", vocabulary)
    lengths = {"inputs": 256, "targets": 128}
    dataset = mixture.get_dataset(lengths, split="train", shuffle=False, seed=0,
                                  num_epochs=None).take(400)
    # pre-training text has empty inputs: EOS alone
    from_text = sum(1 for ex in dataset.as_numpy_iterator() if len(ex["inputs"]) == 1)
    assert 400 * 0.05 < from_text < 400 * 0.15  # rate 0.1


def test_unknown_names_suggest_close_ones():
    with pytest.raises(KeyError, match="did you mean mmlu_5shot_fixture"):
        registry.get_task("mmlu_5shot_fixtur")
    with pytest.raises(KeyError, match="has no split 'train'"):
        records("mmlu_5shot_fixture", "train")
    with pytest.raises(ValueError, match="already registered"):
        catalogue.register_pretraining_text("pretraining_text_fixture",
                                            catalogue.PRETRAINING_FIXTURE)


def test_seqio_evaluator_runs_humaneval_in_the_sandbox(vocabulary, bpe_tokenizer_path):
    """Canonical solutions as predictions pass; a wrong completion fails (first 3 problems)."""
    bpe = load_vocabulary("hf_tokenizer", bpe_tokenizer_path)  # spells code's newlines exactly
    task = seqio_task("humaneval", bpe)
    rows = records("humaneval", "test")
    assert len(rows) == 164 and rows[0]["task_id"] == "HumanEval/0"
    examples = list(task.get_dataset(None, split="test", shuffle=False).take(3)
                    .as_numpy_iterator())
    targets = [task.postprocess_fn(ex["targets_pretokenized"], example=ex, is_target=True)
               for ex in examples]
    completions = [bpe.decode(ex["targets"].tolist()) for ex in examples]
    scores = catalogue.humaneval_pass_at_k(targets, completions)
    assert scores == {"pass@1": 100.0}
    wrong = ["    return None\n"] * 3
    assert catalogue.humaneval_pass_at_k(targets, wrong) == {"pass@1": 0.0}
