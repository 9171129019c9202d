"""Blind pairwise rating campaigns: import items, invite raters, serve the rating app, export.

    arch-compare pairwise import ITEMS.jsonl --campaign NAME [--gold GOLD.jsonl] [--overlap 3]
        [--items-per-rater 20] [--gold-per-rater 2] [--workforce private|prolific|crowd]
        [--completion-code CODE]      (or --from-study RESULTS --study NAME instead of ITEMS)
    arch-compare pairwise configure --campaign NAME --workforce prolific --completion-code CODE
    arch-compare pairwise invite --campaign NAME --count 5 --base-url https://rate.example.org
    arch-compare pairwise serve [--host 127.0.0.1] [--port 8000]
    arch-compare pairwise export --campaign NAME --format jsonl|csv [--output FILE]
    arch-compare pairwise status [--campaign NAME]
    arch-compare pairwise admin-token

Every sub-command takes --db: a SQLite file path (default pairwise.sqlite, or
$ARCH_COMPARE_PAIRWISE_DB) or a SQLAlchemy URL such as postgresql://user@host/db. Only `import`
creates a database, and a failed import leaves none behind (nor any change to an existing one);
a file that is not a pairwise database is refused by name. The admin token comes from
$ARCH_COMPARE_PAIRWISE_ADMIN_TOKEN, or is generated on first use and printed once.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from arch_compare.pairwise.workforces import WORKFORCES

# The database (SQLAlchemy) and the campaign logic load when an action runs, not for `--help`.
if TYPE_CHECKING:
    from arch_compare.pairwise.store import PairwiseStore

DB_ENV = "ARCH_COMPARE_PAIRWISE_DB"
ADMIN_TOKEN_ENV = "ARCH_COMPARE_PAIRWISE_ADMIN_TOKEN"


def _settings_arguments(parser: argparse.ArgumentParser, defaults: bool) -> None:
    parser.add_argument("--workforce", choices=sorted(WORKFORCES),
                        default="private" if defaults else None)
    parser.add_argument("--completion-code", help="shown to Prolific / crowd raters when done")
    parser.add_argument("--completion-url",
                        help="where finished Prolific / crowd raters go; {code} and {worker_id} "
                             "are filled in (Prolific's own URL by default)")
    parser.add_argument("--redirect-seconds", type=int, default=5 if defaults else None)
    parser.add_argument("--hold-minutes", type=int, default=60 if defaults else None,
                        help="an unfinished rater idle this long loses their slot to a new one")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="pairwise_command", required=True, metavar="ACTION")

    def sub(name: str, help_: str) -> argparse.ArgumentParser:
        command = commands.add_parser(name, help=help_, description=help_)
        command.add_argument("--db", default=os.environ.get(DB_ENV, "pairwise.sqlite"),
                             help="SQLite file or SQLAlchemy URL (default: %(default)s)")
        return command

    make = sub("import", "create a campaign from an items file (JSONL) or a study's results")
    make.add_argument("items", type=Path, nargs="?",
                      help="JSONL: id, prompt, model_a, output_a, model_b, output_b (see "
                           "arch_compare/pairwise/items.py)")
    make.add_argument("--from-study", type=Path, metavar="RESULTS",
                      help="instead of ITEMS: a study's results database (or its folder); "
                           "pairs each imitation run's samples with the target run's")
    make.add_argument("--study", help="the study's name in RESULTS")
    make.add_argument("--target-run", help="the target run's id, if the study has several")
    make.add_argument("--campaign", required=True)
    make.add_argument("--gold", type=Path, help="attention-check items (JSONL, with 'gold')")
    make.add_argument("--overlap", type=int, default=3, help="raters per item")
    make.add_argument("--items-per-rater", type=int, default=20)
    make.add_argument("--gold-per-rater", type=int, help="default: min(2, gold items)")
    make.add_argument("--seed", type=int, default=0)
    _settings_arguments(make, defaults=True)

    configure = sub("configure", "change a campaign's workforce or completion settings")
    configure.add_argument("--campaign", required=True)
    _settings_arguments(configure, defaults=False)

    invite = sub("invite", "issue private invite links (one unguessable token each)")
    invite.add_argument("--campaign", required=True)
    invite.add_argument("--count", type=int, required=True)
    invite.add_argument("--prefix", default="invite", help="label of the raters in exports")
    invite.add_argument("--base-url", default="http://127.0.0.1:8000")

    serve = sub("serve", "run the rating app")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--base-url", default="", help="public URL shown in the admin view")

    export = sub("export", "write every rating of a campaign (admin data: names models)")
    export.add_argument("--campaign", required=True)
    export.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
    export.add_argument("--output", type=Path, help="default: standard output")

    status = sub("status", "progress of one or all campaigns")
    status.add_argument("--campaign")

    sub("admin-token", "replace the admin token with a new one and print it")

    judge = commands.add_parser(
        "judge", help="an automatic judge rates an items file in both orders",
        description="A model or an OpenAI-compatible endpoint judges every item in both orders "
                    "(a verdict that flips with the order is a tie); replies are cached beside "
                    "OUTPUT, so a rerun asks only what is missing. Prints win rates, the judge's "
                    "position bias and, with --ratings, its agreement with the human raters.")
    judge.add_argument("items", type=Path, help="items JSONL (arch_compare/pairwise/items.py)")
    judge.add_argument("--judge", required=True, metavar="SPEC",
                       help="the judge as a target spec in JSON, e.g. '{\"kind\": \"openai\", "
                            "\"base_url\": \"http://127.0.0.1:8000/v1\", \"model\": \"m\"}'")
    judge.add_argument("--output", type=Path, required=True, help="judged items (JSONL)")
    judge.add_argument("--ratings", type=Path,
                       help="human ratings exported with `pairwise export --format jsonl`")


def _admin_token(store: PairwiseStore) -> None:
    if os.environ.get(ADMIN_TOKEN_ENV):
        store.set_admin_token(os.environ[ADMIN_TOKEN_ENV])
        return
    token = store.ensure_admin_token()
    if token:
        print(f"admin token (shown once; keep it): {token}", file=sys.stderr)


def _import(args: argparse.Namespace) -> int:
    """Reads and checks every input before the database is opened, then imports in one
    transaction; a database file this import created is removed again if it fails."""
    from arch_compare.pairwise.campaign import CampaignPlan, CampaignSettings
    from arch_compare.pairwise.items import read_items
    from arch_compare.pairwise.schema import sqlite_path
    from arch_compare.pairwise.store import PairwiseStore, check_admin_token, check_campaign

    if (args.items is None) == (args.from_study is None):
        raise ValueError("give either an ITEMS file or --from-study RESULTS --study NAME")
    if args.from_study is not None:
        from arch_compare.pairwise.from_results import items_from_study

        if not args.study:
            raise ValueError("--from-study needs --study NAME")
        items = items_from_study(args.from_study, args.study, target_run=args.target_run)
    else:
        items = read_items(args.items)
    gold = read_items(args.gold, gold=True) if args.gold else []
    gold_per_rater = (min(2, len(gold)) if args.gold_per_rater is None else args.gold_per_rater)
    plan = CampaignPlan(overlap=args.overlap, items_per_rater=args.items_per_rater,
                        gold_per_rater=gold_per_rater, seed=args.seed)
    settings = CampaignSettings(workforce=args.workforce, completion_code=args.completion_code,
                                completion_url=args.completion_url,
                                redirect_seconds=args.redirect_seconds,
                                hold_minutes=args.hold_minutes)
    check_campaign(args.campaign, items, gold, plan)
    admin_token = os.environ.get(ADMIN_TOKEN_ENV) or None
    if admin_token is not None:
        check_admin_token(admin_token)
    path = sqlite_path(args.db)
    created = path is not None and not path.exists()
    store = None
    try:
        store = PairwiseStore(args.db)
        campaign, new_token = store.import_campaign(args.campaign, items, gold, plan, settings,
                                                    admin_token)
        status = store.campaign_status(campaign)
    except BaseException:
        if store is not None:
            store.close()
        if created:  # the database and SQLite's side files, as they were: absent
            for leftover in (path, *(path.with_name(path.name + suffix)
                                     for suffix in ("-wal", "-shm", "-journal"))):
                leftover.unlink(missing_ok=True)
        raise
    store.close()
    if new_token:
        print(f"admin token (shown once; keep it): {new_token}", file=sys.stderr)
    print(json.dumps(status, indent=2))
    return 0


def _configure(store: PairwiseStore, args: argparse.Namespace) -> int:
    changes = {name: getattr(args, name) for name in (
        "workforce", "completion_code", "completion_url", "redirect_seconds", "hold_minutes")
        if getattr(args, name) is not None}
    if not changes:
        raise ValueError("nothing to change: pass --workforce, --completion-code, ...")
    campaign = store.configure(args.campaign, **changes)
    print(json.dumps(dataclasses.asdict(campaign.settings), indent=2))
    return 0


def _invite(store: PairwiseStore, args: argparse.Namespace) -> int:
    campaign = store.campaign(args.campaign)
    base = args.base_url.rstrip("/")
    for label, token in store.invite(campaign, args.count, args.prefix):
        print(f"{label}\t{base}/rate/{token}")
    return 0


def _serve(store: PairwiseStore, args: argparse.Namespace) -> int:
    from arch_compare.pairwise.app import serve

    _admin_token(store)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print("note: this server speaks plain HTTP; put it behind a TLS proxy before raters "
              "use it", file=sys.stderr)
    print(f"serving on http://{args.host}:{args.port} (admin: /admin/login)", flush=True)
    serve(store, args.host, args.port, args.base_url)
    return 0


def _export(store: PairwiseStore, args: argparse.Namespace) -> int:
    from arch_compare.pairwise.reports import to_csv, to_jsonl

    rows = list(store.rating_rows(store.campaign(args.campaign)))
    text = to_jsonl(rows) if args.format == "jsonl" else to_csv(rows)
    if args.output:
        args.output.write_text(text, encoding="utf-8")
        print(f"{len(rows)} ratings -> {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def _status(store: PairwiseStore, args: argparse.Namespace) -> int:
    campaigns = [store.campaign(args.campaign)] if args.campaign else store.campaigns()
    print(json.dumps([store.campaign_status(c) for c in campaigns], indent=2))
    return 0


def _rotate(store: PairwiseStore, args: argparse.Namespace) -> int:
    import secrets

    token = secrets.token_urlsafe(32)
    store.set_admin_token(token)
    print(token)
    return 0


def _judge(args: argparse.Namespace) -> int:
    """Judge every item, write one record per item, print the statistics as JSON."""
    from arch_compare.evaluation import judge as judging, pairwise
    from arch_compare.imitation.collection import CachedTarget
    from arch_compare.imitation.target_kinds import make_target
    from arch_compare.pairwise.items import read_items

    try:
        spec = json.loads(args.judge)
    except json.JSONDecodeError as error:
        raise ValueError(f"--judge: not JSON ({error})") from None
    items = [judging.PairwiseItem(item.id, item.prompt, item.model_a, item.output_a,
                                  item.model_b, item.output_b) for item in read_items(args.items)]
    cache = args.output.with_name(args.output.name + ".replies.jsonl")
    judged = judging.judge_items(CachedTarget(make_target(spec), cache), items)
    args.output.write_text("".join(json.dumps(dataclasses.asdict(record)) + "\n"
                                   for record in judged), encoding="utf-8")
    ratings = judging.judge_ratings(judged)
    models = sorted({item.model_a for item in items} | {item.model_b for item in items})
    report = {"judge": judged[0].judge if judged else spec.get("name"),
              "items": dataclasses.asdict(judging.judge_summary(judged)),
              "win_rates": {model: dataclasses.asdict(pairwise.win_rate(
                  pairwise.outcomes_for(ratings, model))) for model in models
                  if len(pairwise.outcomes_for(ratings, model))},
              "position_bias": dataclasses.asdict(pairwise.position_bias(
                  judging.judge_order_ratings(judged)))}
    if args.ratings:
        humans = [json.loads(line) for line in args.ratings.read_text().splitlines() if line]
        agreement = judging.agreement_with_humans(judged, humans)
        report["agreement_with_humans"] = agreement and dataclasses.asdict(agreement)
    print(json.dumps(report, indent=2, default=float))
    return 0


ACTIONS = {"configure": _configure, "invite": _invite, "serve": _serve,
           "export": _export, "status": _status, "admin-token": _rotate}


def run(args: argparse.Namespace) -> int:
    if args.pairwise_command == "judge":  # works on files: no campaign database
        return _judge(args)
    if args.pairwise_command == "import":  # the only action that may create a database
        return _import(args)
    from arch_compare.pairwise.store import PairwiseStore

    store = PairwiseStore(args.db, create=False)
    try:
        return ACTIONS[args.pairwise_command](store, args)
    finally:
        store.close()
