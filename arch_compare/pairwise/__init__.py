"""Blind pairwise human evaluation: raters compare two anonymous outputs for one instruction.

Gudibande et al. (2023) rested their headline result on crowd workers choosing between a target
model's output and an imitation model's output without knowing which was which. This package is
that tool, with a private workforce, Prolific and any other crowd platform behind one switch.

Modules, read in this order:
- `items`: the comparison items and their JSONL format (documented there).
- `workforces`: how raters arrive and finish, per workforce (private / prolific / crowd).
- `campaign`: overlap, gold items, per-rater order and left/right placement.
- `store`: the database (SQLite by default, PostgreSQL by URL): campaigns, raters, tokens; its
  tables in `schema`, a rater's session in `rating`, the administrator's reads in `reports`.
- `summary`: the admin view's statistics, from `arch_compare.evaluation.pairwise`.
- `app`: the web app, its admin sign-in in `admin_auth`; `arch_compare/cli/pairwise.py` is the
  command line (`arch-compare pairwise ...`).

Stack: Starlette + uvicorn (a small ASGI toolkit without a framework's worth of magic; tests
drive it in-process or on loopback), SQLAlchemy 2 (one dialect-neutral code path for SQLite and
PostgreSQL, unique constraints doing the idempotency), Jinja2 templates with autoescaping, and
plain HTML forms: a rater's browser needs no JavaScript, and no page sends any.
"""
