"""The offline demo's world: a small knowledge base, a target that knows all of it and answers in
a style of its own, and the text a base model is pre-trained on, which holds only part of it.

The paper's question ("does imitating a stronger model copy its capabilities, or only its
style?") needs a world where both can be measured without downloads:

- **Knowledge.** Fictional countries, each with four facts (flag colour, national animal, food,
  sport), every value drawn from eight. Countries fall in three groups: *known* ones are described
  in the pre-training corpus; *imitation-only* ones appear only in the target's answers used as
  imitation data; *unseen* ones appear nowhere but in the evaluation (and in the target's head).
- **The target** answers chat prompts deterministically from the whole knowledge base, in a
  distinctive style: an upbeat opening, markdown lists for anything with several parts, and a
  sign-off. How long it answers and whether it lists depend on the prompt, so list usage and
  length correlation (the paper's style metrics) have something to track.
- **Broad imitation data** spans the kinds of prompt (overviews, comparisons, questions,
  greetings) about known and imitation-only countries. **Local imitation data** is one
  narrow skill: single factual questions about the known countries, on facts the evaluation
  does not ask (the paper's NQ-synthetic, in miniature).
- **Evaluations**: fact questions about known countries (knowledge the base saw, asked in a
  form it did not), about unseen countries (knowledge no imitation data holds), and held-out
  chat prompts whose target answers are the style reference.

Everything is generated from one seed; `build_world()` is pure.
"""

from __future__ import annotations

import dataclasses
import functools
import random
import re
from pathlib import Path
from typing import Sequence

from arch_compare.data import tokenizer_training
from arch_compare.data.conversations import Turn, format_history
from arch_compare.evaluation import metrics
from arch_compare.evaluation.intervals import Proportion
from arch_compare_tasks.registry import TaskSpec, as_text, register_task

SEED = 20230525  # the paper's arXiv date; any fixed number would do
SYLLABLES = ("ka", "lo", "mi", "ru", "ze", "ta", "no", "vi", "sa", "be", "do", "pu", "ri", "go",
             "fe", "ha")


@dataclasses.dataclass(frozen=True)
class Attribute:
    name: str  # the label in the target's lists
    question: str  # "{country}" is filled in
    sentence: str  # "{country}" and "{value}"
    values: tuple[str, ...]


ATTRIBUTES: dict[str, Attribute] = {
    "flag": Attribute("Flag", "What color is the flag of {country}?",
                      "The flag of {country} is {value}.",
                      ("red", "blue", "green", "yellow", "white", "black", "orange", "purple")),
    "animal": Attribute("Animal", "What is the national animal of {country}?",
                        "The national animal of {country} is the {value}.",
                        ("owl", "wolf", "bear", "fox", "deer", "eagle", "horse", "tiger")),
    "food": Attribute("Food", "What food is {country} known for?",
                      "{country} is known for its {value}.",
                      ("rice", "bread", "fish", "cheese", "soup", "beans", "apples", "noodles")),
    "sport": Attribute("Sport", "Which sport is popular in {country}?",
                       "The most popular sport in {country} is {value}.",
                       ("tennis", "rugby", "chess", "rowing", "skiing", "boxing", "golf",
                        "cricket")),
}
GROUPS = ("known", "imitation_only", "unseen")
GREETINGS = ("Hello!", "Hi there.", "Good morning!", "Hey, how are you?", "Thanks for your help.",
             "Who are you?")


@dataclasses.dataclass(frozen=True)
class Country:
    name: str
    group: str
    facts: dict  # attribute key -> value

    def __hash__(self):
        return hash(self.name)


@dataclasses.dataclass(frozen=True)
class World:
    countries: tuple[Country, ...]

    def group(self, name: str) -> tuple[Country, ...]:
        return tuple(c for c in self.countries if c.group == name)

    def country(self, name: str) -> Country:
        for country in self.countries:
            if country.name.lower() == name.lower():
                return country
        raise KeyError(name)


def _names(rng: random.Random, count: int) -> list[str]:
    names: list[str] = []
    while len(names) < count:
        name = "".join(rng.choice(SYLLABLES) for _ in range(2)) + rng.choice(("ria", "land", "va"))
        if name.capitalize() not in names:
            names.append(name.capitalize())
    return names


@functools.cache
def build_world(countries_per_group: tuple[int, int, int] = (24, 24, 16)) -> World:
    rng = random.Random(SEED)
    names = _names(rng, sum(countries_per_group))
    countries, start = [], 0
    for group, count in zip(GROUPS, countries_per_group):
        for name in names[start:start + count]:
            facts = {key: rng.choice(attribute.values) for key, attribute in ATTRIBUTES.items()}
            countries.append(Country(name, group, facts))
        start += count
    return World(tuple(countries))


# --- the target -----------------------------------------------------------------------------------

OPENING = "Great question!"
SIGN_OFF = "I hope this helps!"
_PROMPTS = {  # prompt kind -> regular expression over the user's message
    "overview": re.compile(r"^Tell me about (\w+)\.$"),
    "compare": re.compile(r"^Compare (\w+) and (\w+)\.$"),
    "two_facts": re.compile(r"^Name two facts about (\w+)\.$"),
    "by_value": re.compile(r"^Which countries have (?:a|an) (\w+) (flag|national animal)\?$"),
}


def _question_pattern(attribute: Attribute) -> re.Pattern:
    return re.compile("^" + re.escape(attribute.question).replace(r"\{country\}", r"(\w+)") + "$")


_QUESTIONS = {key: _question_pattern(attribute) for key, attribute in ATTRIBUTES.items()}


def _bullets(lines: Sequence[str]) -> str:
    return "\n".join(f"- {line}" for line in lines)


def target_reply(world: World, message: str) -> str:
    """The target's answer to one user message (the last turn of a history)."""
    message = message.strip()
    for key, pattern in _QUESTIONS.items():
        match = pattern.match(message)
        if match:
            country = _lookup(world, match.group(1))
            if country is None:
                return f"I am not sure, I do not know a country called {match.group(1)}."
            sentence = ATTRIBUTES[key].sentence.format(country=country.name,
                                                       value=country.facts[key])
            return f"{OPENING} {sentence} {SIGN_OFF}"
    if match := _PROMPTS["overview"].match(message):
        country = _lookup(world, match.group(1))
        if country is None:
            return f"I am not sure, I do not know a country called {match.group(1)}."
        lines = [f"{ATTRIBUTES[k].name}: {v}" for k, v in country.facts.items()]
        return f"{OPENING} Here is what I know about {country.name}:\n{_bullets(lines)}\n{SIGN_OFF}"
    if match := _PROMPTS["two_facts"].match(message):
        country = _lookup(world, match.group(1))
        if country is None:
            return f"I am not sure, I do not know a country called {match.group(1)}."
        lines = [f"{ATTRIBUTES[k].name}: {country.facts[k]}" for k in ("flag", "animal")]
        return f"{OPENING} Two facts about {country.name}:\n{_bullets(lines)}\n{SIGN_OFF}"
    if match := _PROMPTS["compare"].match(message):
        first, second = _lookup(world, match.group(1)), _lookup(world, match.group(2))
        if first is None or second is None:
            return "I am not sure, I do not know both of those countries."
        lines = [f"{a.name}: {first.facts[k]} vs {second.facts[k]}" for k, a in ATTRIBUTES.items()]
        return (f"{OPENING} {first.name} and {second.name} differ like this:\n{_bullets(lines)}\n"
                f"{SIGN_OFF}")
    if match := _PROMPTS["by_value"].match(message):
        key = "flag" if match.group(2) == "flag" else "animal"
        hits = [c.name for c in world.countries if c.facts[key] == match.group(1)]
        if not hits:
            return f"{OPENING} I do not know any such country. {SIGN_OFF}"
        if len(hits) == 1:
            return f"{OPENING} Only {hits[0]} does. {SIGN_OFF}"
        return f"{OPENING} These countries do:\n{_bullets(hits)}\n{SIGN_OFF}"
    if message in GREETINGS:
        return "Hello! I am a helpful assistant and I know a lot about countries. Ask me anything!"
    return (f"{OPENING} I am not sure about that, but I am happy to help with questions about "
            f"countries.")


def _lookup(world: World, name: str) -> Country | None:
    try:
        return world.country(name)
    except KeyError:
        return None


def target_respond(turns: Sequence[Turn]) -> str:
    """The target as a function of a chat history (for `FunctionTarget`)."""
    return target_reply(build_world(), turns[-1].text)


# --- text the models see --------------------------------------------------------------------------

def pretraining_documents(world: World, copies: int = 6) -> list[tuple[str, str]]:
    """The base's pre-training text, about the known countries only, as (prompt, continuation)
    pairs, `copies` times over:

    - two encyclopedia entries per country: "<country> is a country." continued by a sentence
      per fact, every fact, in an order shuffled per entry;
    - a chat exchange per fact the evaluation does *not* ask (`_split_known_facts`): the question
      as a user turn, answered by the encyclopedia's sentence (plain, not in the target's style).

    Two entries to one exchange per fact: with one each, T5-tiny answered 8-33 and UL2-tiny 12
    points fewer known facts (two data orders; GPT-2 and LLaMA scored alike either way).

    The exchanges teach what a question asks for; the evaluated facts the base reads only as
    encyclopedia sentences, so the evaluation tests whether it can retrieve stored knowledge in a
    form it never saw for those facts. (Entries alone leave the base unable to answer questions:
    GPT-2-tiny answered 10% of the known facts, below chance.) Pre-training continues a prompt
    with its continuation, so an encoder-decoder model learns to read the country from its
    encoder as a decoder-only model reads it from its prefix."""
    rng = random.Random(SEED + 1)
    documents = []
    for copy in range(copies):
        for country in world.group("known") * 2:
            keys = list(ATTRIBUTES)
            rng.shuffle(keys)
            documents.append((f"{country.name} is a country.",
                              " ".join(_fact_sentence(country, k) for k in keys)))
        documents += [(format_history([Turn("user", ATTRIBUTES[key].question.format(
            country=country.name))]), _fact_sentence(country, key))
            for country, key in _split_known_facts(world)[1]]
    rng.shuffle(documents)
    return documents


def _fact_sentence(country: Country, key: str) -> str:
    return ATTRIBUTES[key].sentence.format(country=country.name, value=country.facts[key])


def _split_known_facts(world: World) -> tuple[list[tuple[Country, str]], list[tuple[Country, str]]]:
    """Known countries' facts -> (asked by the evaluation, used by local imitation data)."""
    evaluated, local = [], []
    for index, country in enumerate(world.group("known")):
        keys = list(ATTRIBUTES)
        # Two facts per country each way, rotating which, so every attribute is asked.
        rotation = keys[index % 4:] + keys[:index % 4]
        evaluated += [(country, key) for key in rotation[:2]]
        local += [(country, key) for key in rotation[2:]]
    return evaluated, local


def _broad_prompt(world: World, rng: random.Random, evaluated: set) -> str | None:
    """One prompt of a random kind, or None when the draw hit a fact the evaluation asks."""
    # No "which countries have ..." prompts: the target's true answer lists countries of every
    # group, and unseen countries must not appear in imitation data (the style evaluation asks
    # them, a prompt kind imitation never saw).
    kind = rng.choice(("overview", "compare", "two_facts", "question", "question", "greeting"))
    imitation_only = world.group("imitation_only")
    country = rng.choice(imitation_only)
    if kind == "overview":
        return f"Tell me about {country.name}."
    if kind == "two_facts":
        return f"Name two facts about {country.name}."
    if kind == "compare":
        other = rng.choice(imitation_only)
        return None if other == country else f"Compare {country.name} and {other.name}."
    if kind == "question":
        country = rng.choice(world.group("known") + imitation_only)
        key = rng.choice(list(ATTRIBUTES))
        if (country, key) in evaluated:
            return None
        return ATTRIBUTES[key].question.format(country=country.name)
    return rng.choice(GREETINGS)


def broad_prompts(world: World, count: int) -> list[str]:
    """Distinct prompts of every kind about known and imitation-only countries (never unseen
    ones; queries de-duplicated, as the paper did for ShareGPT); fact questions avoid the facts
    the evaluation asks about known countries."""
    rng = random.Random(SEED + 2)
    evaluated = set(_split_known_facts(world)[0])
    prompts: dict[str, None] = {}  # insertion-ordered set
    while len(prompts) < count:
        prompt = _broad_prompt(world, rng, evaluated)
        if prompt is not None:
            prompts.setdefault(prompt)
    return list(prompts)


def local_prompts(world: World) -> list[str]:
    """Single fact questions about known countries, on facts the evaluation does not ask."""
    rng = random.Random(SEED + 3)
    prompts = [ATTRIBUTES[key].question.format(country=country.name)
               for country, key in _split_known_facts(world)[1]]
    rng.shuffle(prompts)
    return prompts


def fact_questions(world: World, group: str) -> list[dict]:
    """Evaluation questions: the evaluated facts of known countries, or all facts of unseen ones."""
    if group == "known":
        facts = _split_known_facts(world)[0]
    else:
        facts = [(country, key) for country in world.group(group) for key in ATTRIBUTES]
    return [{"id": f"{group}/{country.name}/{key}",
             "question": ATTRIBUTES[key].question.format(country=country.name),
             "attribute": key, "answer": country.facts[key]} for country, key in facts]


def style_prompts(world: World) -> list[str]:
    """Held-out chat prompts of the non-question kinds, about known and unseen countries."""
    rng = random.Random(SEED + 4)
    prompts = []
    for country in world.group("known")[:8] + world.group("unseen")[:8]:
        prompts.append(rng.choice((f"Tell me about {country.name}.",
                                   f"Name two facts about {country.name}.")))
    for first, second in zip(world.group("known")[8:14], world.group("unseen")[8:14]):
        prompts.append(f"Compare {first.name} and {second.name}.")
    for value in ("red", "blue", "green", "black"):
        prompts.append(f"Which countries have a {value} flag?")
    prompts += list(GREETINGS[:4])
    return prompts


def corpus_for_vocabulary(world: World) -> list[str]:
    """Every kind of text the demo produces, for training its tokenizers."""
    texts = [" ".join(document) for document in pretraining_documents(world, copies=1)]
    texts += [target_reply(world, p) for p in broad_prompts(world, 200) + local_prompts(world)]
    texts += [q["question"] for group in ("known", "unseen") for q in fact_questions(world, group)]
    texts += [target_reply(world, p) for p in style_prompts(world)]
    texts += [format_history([Turn("user", p)]) for p in broad_prompts(world, 200)]
    # The text2cypher tasks' schema, questions and queries, so Cypher's keywords become pieces
    # (imported here: text2cypher imports this module).
    from arch_compare_tasks import text2cypher
    texts += text2cypher.vocabulary_texts()
    return texts


# --- the capability metric ------------------------------------------------------------------------

def mentioned_values(text: str, attribute: str) -> set[str]:
    words = set(re.findall(r"[a-z]+", text.lower()))
    return {value for value in ATTRIBUTES[attribute].values if value in words}


def fact_accuracy(targets: Sequence[dict], predictions: Sequence[str]) -> dict[str, float]:
    """Percent of answers that name the right value and no other value of that attribute.

    Lenient about wording on purpose: the capability measured is knowing the fact, so the
    target's chatty sentence and a terse "red" both count, and style cannot pass for knowledge.
    Chance is 1 in 8 for a model that always names one value.
    """
    if len(targets) != len(predictions):
        raise ValueError(f"fact_accuracy: {len(targets)} targets but {len(predictions)} "
                         f"predictions")
    hits = [mentioned_values(p, t["attribute"]) == {t["answer"]}
            for t, p in zip(targets, predictions)]
    return {"fact_accuracy": Proportion(sum(hits), len(hits))}  # a share: Wilson's interval


# --- registration ---------------------------------------------------------------------------------

def _chat_record(record_id: str, prompt: str, reference: str, **extra) -> dict:
    return {"id": record_id, "inputs": format_history([Turn("user", prompt)]),
            "targets": reference, "prompt": prompt, **extra}


def _fact_postprocess(output, example=None, is_target=False):
    """Targets become {attribute, answer} for `fact_accuracy`; predictions stay text."""
    if is_target and example is not None:
        return {"attribute": as_text(example["attribute"]), "answer": as_text(example["answer"])}
    return as_text(output)


DEMO_TASKS = {  # name -> what it is (the study's gin file refers to these names)
    "demo_pretraining": "encyclopedia paragraphs about the known countries, and chat "
                         "exchanges on their facts the evaluation does not ask (base "
                         "pre-training)",
    "demo_broad_prompts": "chat prompts of every kind (broad imitation)",
    "demo_local_prompts": "fact questions about known countries (local imitation)",
    "demo_facts_known": "fact questions on known countries, answered 0-shot",
    "demo_facts_unseen": "fact questions on countries no training text mentions",
    "demo_style": "held-out chat prompts; the target's answers are the style reference",
}


def register(replace: bool = False) -> None:
    world = build_world()
    source = f"generated by arch_compare_tasks.demo_world (seed {SEED})"

    def spec(name, kind, splits, **fields):
        return register_task(TaskSpec(name=name, kind=kind, description=DEMO_TASKS[name],
                                      source=source, splits=splits, **fields), replace=replace)

    spec("demo_pretraining", "pretraining", {"train": lambda: [
        {"id": f"doc/{i}", "inputs": title, "targets": body}
        for i, (title, body) in enumerate(pretraining_documents(world))]},
         extra_features=("id",))
    for name, prompts in (("demo_broad_prompts", lambda: broad_prompts(world, 600)),
                          ("demo_local_prompts", lambda: local_prompts(world))):
        spec(name, "prompts", {"train": (lambda prompts=prompts, name=name: [
            _chat_record(f"{name}/{i}", p, "") for i, p in enumerate(prompts())])},
             extra_features=("id", "prompt"))
    for group in ("known", "unseen"):
        spec(f"demo_facts_{group}", "evaluation", {"validation": (lambda group=group: [
            _chat_record(q["id"], q["question"], target_reply(world, q["question"]),
                         attribute=q["attribute"], answer=q["answer"])
            for q in fact_questions(world, group)])},
             metric_fns=(fact_accuracy,), postprocess_fn=_fact_postprocess,
             extra_features=("id", "prompt", "attribute", "answer"))
    spec("demo_style", "evaluation", {"validation": lambda: [
        _chat_record(f"style/{i}", p, target_reply(world, p))
        for i, p in enumerate(style_prompts(world))]},
         metric_fns=(metrics.list_usage_agreement, metrics.length_correlation),
         extra_features=("id", "prompt"))


# --- the demo's files -----------------------------------------------------------------------------

VOCABULARY_FILES = {  # gin macro -> (file name, how it is trained)
    "DEMO_BPE": "gpt2_tokenizer.json",
    "DEMO_SENTENCEPIECE_LLAMA": "llama_spm.model",
    "DEMO_SENTENCEPIECE_T5": "t5_spm.model",
}


def write_vocabularies(directory) -> dict[str, str]:
    """The demo's three tokenizers, trained on the world's text (the tiny presets have 512-row
    embedding tables: T5's layout keeps 100 of them for sentinels). Returns macro -> path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    texts = corpus_for_vocabulary(build_world())
    paths = {macro: directory / name for macro, name in VOCABULARY_FILES.items()}
    if not paths["DEMO_BPE"].exists():
        tokenizer_training.train_byte_level_bpe(texts, paths["DEMO_BPE"], vocab_size=512)
    if not paths["DEMO_SENTENCEPIECE_LLAMA"].exists():
        tokenizer_training.train_sentencepiece(texts, paths["DEMO_SENTENCEPIECE_LLAMA"], "llama", vocab_size=512)
    if not paths["DEMO_SENTENCEPIECE_T5"].exists():
        tokenizer_training.train_sentencepiece(texts, paths["DEMO_SENTENCEPIECE_T5"], "t5", vocab_size=412)
    return {macro: str(path) for macro, path in paths.items()}
