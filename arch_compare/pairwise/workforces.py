"""Workforces: how a rater arrives and how a finished session ends, one entry per kind of crowd.

The campaign's `workforce` setting picks the entry that admits new raters; the items and the
ratings do not depend on it, so a campaign can start with a private team and switch to a public
crowd (or back) between two raters. A rater keeps the workforce they arrived through, so someone
invited privately never sees a Prolific completion code.

- private: the administrator issues invite links (`arch-compare pairwise invite`), each carrying
  an unguessable token; there is no public way in.
- prolific: Prolific opens the study URL with PROLIFIC_PID, STUDY_ID and SESSION_ID in the query
  string; the finished rater gets the completion code and is sent back to Prolific with it.
- crowd: any other platform links to the campaign with `worker_id` (or `workerId`) in the query
  string; the finished rater gets the completion code, and is redirected if a URL is configured.
"""

from __future__ import annotations

import dataclasses
import re
from urllib.parse import quote
from typing import Mapping

# Platform ids are short opaque strings; anything else is refused before it reaches the database.
ID_PATTERN = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
PROLIFIC_COMPLETION_URL = "https://app.prolific.com/submissions/complete?cc={code}"


class ArrivalError(ValueError):
    """The arrival URL is missing or has a malformed platform parameter."""


@dataclasses.dataclass(frozen=True)
class Arrival:
    """Who arrived: the platform's worker id plus, for Prolific, the study and session."""

    external_id: str
    study_id: str | None = None
    session_id: str | None = None

    def __post_init__(self):
        for name in ("external_id", "study_id", "session_id"):
            value = getattr(self, name)
            if value is not None and not ID_PATTERN.fullmatch(value):
                raise ArrivalError(f"{name} must be 1 to 64 letters, digits or '_.:-'")


@dataclasses.dataclass(frozen=True)
class Completion:
    """What a finished rater is shown: a code to paste back and where to be sent, if anywhere."""

    code: str | None
    redirect_url: str | None


@dataclasses.dataclass(frozen=True)
class Workforce:
    name: str
    arrival_params: tuple[tuple[str, ...], ...]  # per field: the accepted query parameter names
    needs_completion_code: bool
    default_completion_url: str | None

    @property
    def public(self) -> bool:
        return bool(self.arrival_params)

    def arrival(self, query: Mapping[str, str]) -> Arrival:
        if not self.public:
            raise ArrivalError(f"the {self.name} workforce is reached by invite links only")
        values = []
        for names in self.arrival_params:
            value = next((query[name] for name in names if query.get(name)), None)
            if value is None:
                raise ArrivalError(f"the link is missing the {names[0]} parameter")
            values.append(value)
        return Arrival(*values)

    def completion(self, code: str | None, url: str | None, external_id: str | None) -> Completion:
        if not self.needs_completion_code:
            return Completion(None, None)
        template = url or self.default_completion_url
        redirect = (template.replace("{code}", quote(code, safe=""))
                    .replace("{worker_id}", quote(external_id or "", safe=""))
                    if template else None)
        return Completion(code, redirect)


WORKFORCES: dict[str, Workforce] = {
    "private": Workforce("private", (), needs_completion_code=False, default_completion_url=None),
    "prolific": Workforce("prolific", (("PROLIFIC_PID",), ("STUDY_ID",), ("SESSION_ID",)),
                          needs_completion_code=True,
                          default_completion_url=PROLIFIC_COMPLETION_URL),
    "crowd": Workforce("crowd", (("worker_id", "workerId"),), needs_completion_code=True,
                       default_completion_url=None),
}
