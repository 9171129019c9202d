"""The results database's tables (see `results.py`), and the columns added since databases were
first written: `ResultsStore` adds those to an older file it opens for writing, and reads them as
NULL from one it only reads."""

SCHEMA = """
CREATE TABLE IF NOT EXISTS studies (
    name TEXT PRIMARY KEY,
    config_json TEXT NOT NULL,      -- the study's whole configuration
    config_hash TEXT NOT NULL,
    directory TEXT NOT NULL,        -- where its per-run files live
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    study TEXT NOT NULL REFERENCES studies(name),
    run_id TEXT NOT NULL,           -- e.g. "imitation/llama-tiny/broad/256"
    role TEXT NOT NULL,             -- base | imitation | target
    model TEXT NOT NULL,            -- the model's name in tables and plots
    architecture TEXT NOT NULL,     -- decoder_only | encoder_decoder | target
    family TEXT NOT NULL,
    parameters INTEGER,             -- NULL for targets of unknown size
    data_source TEXT,               -- imitation runs only
    data_examples INTEGER,          -- the answers it trains on (bought from the target)
    selection TEXT,                 -- how they were chosen: random | uncertainty | diversity | ...
    recipe TEXT,                    -- how it fine-tuned: full, or a recipe's label (name, name@alpha)
    data_tokens INTEGER,            -- in the model's own tokens
    data_reference_tokens INTEGER,  -- in the study's reference tokenizer
    status TEXT NOT NULL,
    config_json TEXT NOT NULL,      -- the exact configuration of the run
    estimate_json TEXT,             -- budget module: FLOPs, chip-hours, dollars
    measured_json TEXT,             -- wall-clock seconds, steps, tokens/s, FLOPs run
    error TEXT,
    started REAL,
    finished REAL,
    PRIMARY KEY (study, run_id)
);
CREATE TABLE IF NOT EXISTS metrics (
    study TEXT NOT NULL,
    run_id TEXT NOT NULL,
    task TEXT NOT NULL,
    metric TEXT NOT NULL,
    kind TEXT NOT NULL,             -- capability | style | other
    value REAL,                     -- NULL when undefined (NaN)
    low REAL,                       -- its 95% interval; NULL where unknown or undefined
    high REAL,
    n INTEGER,                      -- the examples behind it
    method TEXT,                    -- wilson | bootstrap | NULL (no interval)
    PRIMARY KEY (study, run_id, task, metric),
    FOREIGN KEY (study, run_id) REFERENCES runs(study, run_id)
);
CREATE TABLE IF NOT EXISTS samples (
    study TEXT NOT NULL,
    run_id TEXT NOT NULL,
    task TEXT NOT NULL,
    example_id TEXT NOT NULL,
    prompt TEXT NOT NULL,
    output TEXT NOT NULL,
    reference TEXT NOT NULL,
    PRIMARY KEY (study, run_id, task, example_id),
    FOREIGN KEY (study, run_id) REFERENCES runs(study, run_id)
);
CREATE TABLE IF NOT EXISTS predictions (   -- every output of every run, to recompute comparisons
    study TEXT NOT NULL,
    run_id TEXT NOT NULL,
    task TEXT NOT NULL,
    example_index INTEGER NOT NULL,  -- position in the task's evaluation records
    example_id TEXT NOT NULL,
    output TEXT NOT NULL,
    PRIMARY KEY (study, run_id, task, example_index),
    FOREIGN KEY (study, run_id) REFERENCES runs(study, run_id)
);
CREATE TABLE IF NOT EXISTS comparisons (   -- paired bootstrap: run minus baseline, same examples
    study TEXT NOT NULL,
    run_id TEXT NOT NULL,
    baseline_run_id TEXT NOT NULL,
    task TEXT NOT NULL,
    metric TEXT NOT NULL,
    difference REAL,                -- NULL when undefined for either run
    low REAL,
    high REAL,
    significant INTEGER NOT NULL,   -- 1 when the 95% interval excludes 0
    PRIMARY KEY (study, run_id, baseline_run_id, task, metric)
);
CREATE TABLE IF NOT EXISTS collections (   -- the target's answers bought: estimated and spent
    study TEXT NOT NULL REFERENCES studies(name),
    source TEXT NOT NULL,           -- the data source
    selection TEXT NOT NULL,        -- random | uncertainty | diversity | student_first
    model TEXT NOT NULL,            -- the model that chose the prompts; '' where shared
    mode TEXT NOT NULL,             -- online | batch
    price TEXT,                     -- the row of budgets/targets.yaml; NULL: not priced
    fictional_price INTEGER NOT NULL,  -- 1 when that row's prices are made up (the demo's)
    answers INTEGER NOT NULL,       -- answers bought
    prompt_tokens INTEGER NOT NULL, -- billed: as the target counted them ...
    completion_tokens INTEGER NOT NULL,
    tokens_estimated INTEGER NOT NULL,  -- ... or 1: some estimated at 4 characters per token
    spent_usd REAL,
    estimated_answers INTEGER NOT NULL,  -- the estimate made before collecting
    estimated_prompt_tokens INTEGER NOT NULL,
    estimated_completion_tokens INTEGER NOT NULL,
    estimated_usd REAL,
    recorded REAL NOT NULL,
    PRIMARY KEY (study, source, selection, model)
);
"""
# Columns added after databases were first written; an older file gains them when opened for
# writing, and a reader of one that did not reads them as NULL.
ADDED_METRIC_COLUMNS = {"low": "REAL", "high": "REAL", "n": "INTEGER", "method": "TEXT"}
ADDED_COLUMNS = {"metrics": ADDED_METRIC_COLUMNS,
                 "runs": {"selection": "TEXT", "recipe": "TEXT"}}
TABLES = ("runs", "metrics", "samples", "predictions", "comparisons", "collections")
