"""Scoring English-to-Cypher predictions: query extraction, normalisation and execution accuracy.

Pure Python: nothing here imports the graph database (`graph_database` loads kuzu only when a graph
is opened), so data without a database can still be scored by exact match.

Execution accuracy follows CypherBench's rules (`results_match`): a prediction that errors (refused,
syntax error, timeout, too many rows) is wrong; result rows are compared as multisets, or as lists
when the gold query orders its output; column order and names are free.
"""

from __future__ import annotations

import collections
import math
import re
from typing import Any, Mapping, Sequence

from arch_compare.evaluation.graph_database import QueryResult, code_only
from arch_compare.evaluation.intervals import Proportion

# --------------------------------------------------------------------------- extraction

# A fenced block: ``` or ~~~ (three or more), an optional info string (```cypher), the body, and the
# same fence closing it; an unclosed fence runs to the end of the text.
_FENCE = re.compile(r"(?P<fence>`{3,}|~{3,})[^\n]*\n(?P<body>.*?)(?:^[ \t]*(?P=fence)|\Z)",
                    re.DOTALL | re.MULTILINE)


def extract_query(model_output: str) -> str:
    """The query in a model's output: the first fenced code block's body, else the whole text.

    Stripped, with one trailing ';' dropped.
    """
    match = _FENCE.search(model_output)
    text = match.group("body") if match else model_output
    return text.strip().removesuffix(";").rstrip()


# --------------------------------------------------------------------------- normalisation

# Cypher keywords (case-insensitive in the language); identifiers keep their case.
KEYWORDS = frozenset({
    "MATCH", "OPTIONAL", "WHERE", "RETURN", "WITH", "ORDER", "BY", "ASC", "DESC", "ASCENDING",
    "DESCENDING", "LIMIT", "SKIP", "DISTINCT", "AND", "OR", "XOR", "NOT", "AS", "IN", "IS", "NULL",
    "TRUE", "FALSE", "UNWIND", "UNION", "ALL", "CASE", "WHEN", "THEN", "ELSE", "END", "EXISTS",
    "CONTAINS", "STARTS", "ENDS", "CREATE", "MERGE", "SET", "DELETE", "DETACH", "REMOVE", "CALL",
    "YIELD", "COUNT", "SHORTEST", "ALL_SHORTEST",
})

# Tokens of a query, in order of preference: string literal, quoted identifier, comment,
# number, word, two-character operator, any other single non-space character.
_TOKEN = re.compile(
    r"""(?P<string>'(?:[^'\\]|\\.)*(?:'|$)|"(?:[^"\\]|\\.)*(?:"|$))"""
    r"""|(?P<quoted>`[^`]*(?:`|$))"""
    r"""|(?P<comment>//[^\n]*|/\*.*?(?:\*/|$))"""
    r"""|(?P<number>\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)"""
    r"""|(?P<word>[A-Za-z_$][\w$]*)"""
    r"""|(?P<operator><>|<=|>=|->|<-|=~|\.\.|\S)""",
    re.DOTALL,
)


def _single_quoted(literal: str) -> str:
    """A string literal rewritten with single quotes; its content is kept verbatim."""
    if literal.startswith("'"):
        return literal
    body = literal[1:-1] if len(literal) > 1 and literal.endswith('"') else literal[1:]

    def requote(match: re.Match) -> str:
        if match.group(0) == "'":
            return "\\'"  # a bare ' inside "..." needs escaping inside '...'
        return '"' if match.group(0) == '\\"' else match.group(0)

    return "'" + re.sub(r"\\.|'", requote, body, flags=re.DOTALL) + "'"


def normalise_query(query: str) -> str:
    """A canonical spelling of `query` for exact match.

    Comments are dropped; keywords are upper-cased; function names (a word before '(' that is not a
    keyword) lower-cased, since Cypher's are case-insensitive; other identifiers, numbers and string
    literals are kept verbatim, literals rewritten with single quotes; tokens are joined with one
    space only between two words, numbers or literals (never around punctuation or operators); a
    trailing ';' is dropped. `MATCH (n:Country)  where n.pop>5 return n.name;` becomes
    `MATCH(n:Country)WHERE n.pop>5 RETURN n.name`.
    """
    query = query.strip()
    tokens: list[tuple[str, str]] = []
    for match in _TOKEN.finditer(query):
        kind = match.lastgroup
        text = match.group(kind)
        if kind == "comment":
            continue
        if kind == "string":
            text = _single_quoted(text)
        elif kind == "word":
            upper = text.upper()
            following = query[match.end():].lstrip()[:1]
            if upper in KEYWORDS:
                text = upper
            elif following == "(" and not (tokens and tokens[-1][1] == ":"):
                text = text.lower()
        tokens.append((kind, text))
    while tokens and tokens[-1][1] == ";":
        tokens.pop()
    pieces: list[str] = []
    for index, (kind, text) in enumerate(tokens):
        if index and kind != "operator" and tokens[index - 1][0] != "operator":
            pieces.append(" ")
        pieces.append(text)
    return "".join(pieces)


# --------------------------------------------------------------------------- ORDER BY


def has_order_by(query: str) -> bool:
    """Whether the query's output is ordered: ORDER BY after its outermost, last RETURN.

    Only code counts (string literals and comments are ignored), and only the top level: an
    ORDER BY inside a subquery (`EXISTS { ... }`, `COUNT { ... }`) or in a `WITH ... ORDER BY ...
    LIMIT` before the final RETURN shapes which rows come back, not the order of the output, so it
    does not make the comparison ordered. With UNION, the last part's RETURN is the one read.
    """
    code = code_only(query)
    depth = 0
    top_level: list[str] = []  # the code with everything inside brackets blanked out
    for character in code:
        if character in "([{":
            depth += 1
        elif character in ")]}":
            depth = max(0, depth - 1)
            top_level.append(" ")
            continue
        top_level.append(character if depth == 0 else " ")
    text = "".join(top_level)
    returns = [m.end() for m in re.finditer(r"(?<![\w.$])RETURN(?![\w$])", text, re.IGNORECASE)]
    if not returns:
        return False
    return re.search(r"(?<![\w.$])ORDER\s+BY(?![\w$])", text[returns[-1]:], re.IGNORECASE) is not None


# --------------------------------------------------------------------------- result comparison

FLOAT_SIGNIFICANT_DIGITS = 10


def _rounded(value: Any) -> Any:
    """Floats rounded to FLOAT_SIGNIFICANT_DIGITS significant digits (summation order changes the
    last bits of an average or sum), recursively inside tuples; NaN becomes the string 'NaN' so that
    it equals itself."""
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        return float(f"{value:.{FLOAT_SIGNIFICANT_DIGITS}g}")
    if isinstance(value, tuple):
        return tuple(_rounded(item) for item in value)
    return value


def results_match(gold: QueryResult, predicted: QueryResult, *, ordered: bool) -> bool:
    """Whether a predicted query's result equals the gold result (CypherBench's execution rules).

    - A prediction with an error (refused, syntax, runtime, timeout, more rows than the cap) is wrong.
    - Both results empty (no rows, no error) counts as a match, whatever the columns: an empty
      result carries nothing to compare. The task generator avoids gold queries with empty results,
      so this case stays rare.
    - The column count must be equal; column names and column order are free: the results match
      when some permutation of the prediction's columns makes its rows equal the gold rows.
    - Rows are compared as multisets (collections.Counter of row tuples: duplicates count), or as
      lists when `ordered` (the gold query ends with ORDER BY; ties are not special-cased).
    - Floats are compared after rounding to FLOAT_SIGNIFICANT_DIGITS significant digits; an int and
      a float of equal value are equal (as in Python).

    Finding the permutation: each gold column can only map to a predicted column holding the same
    multiset of values (or the same list, when ordered), so candidates are filtered by that first
    and the assignment is searched by backtracking over the candidates, checking the full rows only
    for complete assignments. For the few columns of real queries this is a handful of checks; the
    worst case (many columns with identical contents) is factorial in the number of such columns.
    """
    if not predicted.ok:
        return False
    if not gold.ok:
        raise ValueError(f"results_match: the gold result is an error ({gold.error})")
    if not gold.rows and not predicted.rows:
        return True
    width = len(gold.columns)
    if len(predicted.columns) != width or len(predicted.rows) != len(gold.rows):
        return False
    gold_rows = [_rounded(row) for row in gold.rows]
    predicted_rows = [_rounded(row) for row in predicted.rows]
    if any(len(row) != width for row in gold_rows + predicted_rows):
        return False

    def column(rows: list[tuple], index: int):
        values = [row[index] for row in rows]
        return values if ordered else collections.Counter(values)

    def rows_equal(permutation: Sequence[int]) -> bool:
        permuted = [tuple(row[i] for i in permutation) for row in predicted_rows]
        return permuted == gold_rows if ordered else collections.Counter(permuted) == collections.Counter(gold_rows)

    gold_columns = [column(gold_rows, j) for j in range(width)]
    predicted_columns = [column(predicted_rows, i) for i in range(width)]
    candidates = [[i for i in range(width) if predicted_columns[i] == gold_columns[j]]
                  for j in range(width)]
    if any(not options for options in candidates):
        return False

    def search(j: int, chosen: list[int]) -> bool:
        if j == width:
            return rows_equal(chosen)
        for i in candidates[j]:
            if i not in chosen:
                chosen.append(i)
                if search(j + 1, chosen):
                    return True
                chosen.pop()
        return False

    return search(0, [])


# --------------------------------------------------------------------------- metrics


def _check_lengths(name: str, targets: Sequence, predictions: Sequence) -> None:
    if len(targets) != len(predictions):
        raise ValueError(f"{name}: {len(targets)} targets but {len(predictions)} predictions")


def _query(item: Mapping[str, Any] | str) -> str:
    return item if isinstance(item, str) else item["query"]


def cypher_exact_match(targets: Sequence[Mapping[str, Any]],
                       predictions: Sequence[Mapping[str, Any]]) -> dict[str, Proportion]:
    """Normalised exact match (`normalise_query`) for data scored without a database.

    Targets and predictions are dicts with a "query" (plain query strings are accepted too).
    """
    _check_lengths("cypher_exact_match", targets, predictions)
    hits = sum(normalise_query(_query(target)) == normalise_query(_query(prediction))
               for target, prediction in zip(targets, predictions))
    return {"exact_match": Proportion(hits, len(targets))}


def cypher_metrics(targets: Sequence[Mapping[str, Any]],
                   predictions: Sequence[Mapping[str, Any]]) -> dict[str, Proportion]:
    """Execution accuracy, the share of predictions that run, and normalised exact match.

    seqio's convention over postprocessed values: each target is
    `{"query": str, "ordered": bool, "result": QueryResult}` and each prediction
    `{"query": str, "result": QueryResult}`, both results from `ReadOnlyGraph.run` on the same graph.
    "executable" counts predictions that ran without error (an empty result counts as run);
    "execution_accuracy" those whose result matches the gold result (`results_match`).
    """
    _check_lengths("cypher_metrics", targets, predictions)
    correct = executable = 0
    for index, (target, prediction) in enumerate(zip(targets, predictions)):
        gold, predicted = target.get("result"), prediction.get("result")
        if gold is None or predicted is None:
            raise ValueError(
                f"cypher_metrics: example {index} has no executed result for its "
                f"{'target' if gold is None else 'prediction'} (query {target.get('query')!r}); "
                "execution accuracy needs the graph database (use cypher_exact_match without one)")
        if not gold.ok:
            raise ValueError(f"cypher_metrics: example {index}'s gold query fails ({gold.error}): "
                             f"{target.get('query')!r}")
        executable += predicted.ok
        correct += results_match(gold, predicted, ordered=bool(target["ordered"]))
    exact = cypher_exact_match(targets, predictions)["exact_match"]
    n = len(targets)
    return {"execution_accuracy": Proportion(correct, n), "executable": Proportion(executable, n),
            "exact_match": exact}
