"""Shared test set-up.

Tiny vocabularies trained at test time from `data/fixtures/vocab_corpus.txt` (no downloads).

Fixtures other tests may reuse (names are stable):

- `vocab_corpus_path`: the fixture corpus, a few hundred lines of English with some accented,
  Greek, CJK and emoji text; every character used in tests appears in it.
- `sentencepiece_model_path`: a 384-piece SentencePiece unigram `.model` with T5's special ids
  (pad=0, eos=1, unk=2, no bos) and byte fallback, so seqio's defaults hold. Load it with
  `load_vocabulary("sentencepiece", path)`.
- `bpe_tokenizer_path`: a 300-id byte-level BPE `tokenizer.json` laid out like GPT-2's: ids
  0..255 are the byte alphabet (id 0 is "!", a real token), then 43 merges, and
  `<|endoftext|>` is the last id (299) and the only special token. Load it with
  `load_vocabulary("hf_tokenizer", path)`.

Both are session-scoped: trained once (well under a second), read-only for tests.
"""

import os
import shutil
from pathlib import Path

import pytest
import sentencepiece
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

# Keep XLA on the CPU and quiet; tests build tiny models only.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# A bug inside a command raises out of `arch_compare.cli.main` as it is (a user gets one line and a
# log file instead); tests of that line unset it.
os.environ.setdefault("ARCH_COMPARE_TRACEBACK", "1")

# One persistent compilation cache per checkout (git-ignored), shared by both xdist workers and by
# every subprocess a test starts (they inherit this environment), kept across runs: the same tiny
# programs are compiled once, not once per process. ARCH_COMPARE_COMPILATION_CACHE=off (or another
# directory) before pytest overrides it; deleting the directory clears it.
os.environ.setdefault("ARCH_COMPARE_COMPILATION_CACHE",
                      str(Path(__file__).resolve().parent.parent / ".pytest_jax_cache"))
if os.environ["ARCH_COMPARE_COMPILATION_CACHE"].strip().lower() != "off":
    # For children that import the library without calling `compilation_cache.enable` (the
    # `python -c` scripts): JAX reads these when it is imported.
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.environ["ARCH_COMPARE_COMPILATION_CACHE"])
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")
    from arch_compare import compilation_cache  # noqa: E402  (after the environment above)
    compilation_cache.enable()



CORPUS = Path(__file__).parent / "data" / "fixtures" / "vocab_corpus.txt"
SENTENCEPIECE_VOCAB_SIZE = 384
BPE_VOCAB_SIZE = 300
EOS_TOKEN = "<|endoftext|>"


@pytest.fixture(scope="session")
def vocab_corpus_path() -> Path:
    return CORPUS


@pytest.fixture(scope="session")
def sentencepiece_model_path(tmp_path_factory) -> Path:
    prefix = tmp_path_factory.mktemp("sentencepiece") / "spm"
    sentencepiece.SentencePieceTrainer.train(
        input=str(CORPUS), model_prefix=str(prefix), vocab_size=SENTENCEPIECE_VOCAB_SIZE,
        model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
        # Rare characters (CJK, emoji) are spelled in bytes, so tests can still round-trip them.
        character_coverage=0.98, num_threads=1, minloglevel=2,
        # As LLaMA's: characters outside the pieces become bytes, so any text round-trips.
        byte_fallback=True)
    return prefix.with_suffix(".model")


@pytest.fixture(scope="session")
def bpe_tokenizer_path(tmp_path_factory) -> Path:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB_SIZE - 1, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False)
    tokenizer.train([str(CORPUS)], trainer)
    # Added after training so that, as in GPT-2, EOS is the last id and id 0 is a byte.
    tokenizer.add_special_tokens([EOS_TOKEN])
    path = tmp_path_factory.mktemp("bpe") / "tokenizer.json"
    tokenizer.save(str(path))
    return path


CHROMIUM = "/usr/bin/chromium"


@pytest.fixture
def chromium(tmp_path):
    """Headless Debian Chromium driven by Selenium (skipped, with the reason, without them).

    The flags keep it off the network: no background requests, updates or sync."""
    driver_path = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    if not (Path(CHROMIUM).exists() and Path(driver_path).exists()):
        pytest.skip("needs Debian's chromium and chromium-driver packages "
                    "(apt-get install chromium chromium-driver; .ci/run installs them)")
    webdriver = pytest.importorskip("selenium.webdriver",
                                    reason="needs selenium (the test extra)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                 "--window-size=1280,1000", f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options,
                              service=webdriver.ChromeService(executable_path=driver_path))
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


# The longest files start first, so that under `pytest -n 2 --dist loadfile` neither worker is
# left alone with a long file at the end (xdist hands out files in collection order).
SLOW_FIRST = (
    "tests/imitation/test_study.py",
    "tests/imitation/test_plan.py",
    "tests/trainer/test_resume.py",
    "tests/test_serving.py",
    "tests/models/test_hf_parity.py",
    "tests/trainer/test_async_loop.py",
    "tests/trainer/test_train.py",
    "tests/pairwise/test_browser.py",
    "tests/decoding/test_hf_generate.py",
    "tests/imitation/test_targets.py",
)


def pytest_collection_modifyitems(config, items):
    rank = {path: position for position, path in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))
