"""The rating web app: Starlette routes, server-rendered Jinja2 pages, plain HTML forms.

Rater-facing routes (nothing here ever names a model, an item id or the campaign's name):

    GET  /p/{public_id}?PROLIFIC_PID=..&STUDY_ID=..&SESSION_ID=..   Prolific arrival
    GET  /c/{public_id}?worker_id=..                                 crowd arrival
    GET  /rate/{token}     the rater's next item, or the completion page when all are rated
    POST /rate/{token}     one rating (position, choice, reason, csrf_token)

Admin routes need the admin token as `Authorization: Bearer ...`, or the session cookie that
/admin/login sets: /admin, /admin/campaigns/{id}, .../export.jsonl|csv, /admin/api/campaigns/{id}.
The cookie is a signed, expiring session value, never the token; wrong tokens are throttled per
client address (429 with Retry-After). Both are in `admin_auth`.

Forms carry a CSRF token: an HMAC of the rater's id and the item's position under a server key
kept in the database, so it is bound to one rater and one item, cannot be forged from another
page, and stays valid across a server restart. Bodies are read with a size cap before parsing, and
database work runs in the thread pool so that one slow query does not stall other raters.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import logging
import secrets
import time
from pathlib import Path
from typing import Callable
from urllib.parse import parse_qsl

import jinja2
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from arch_compare.pairwise.admin_auth import SESSION_SECONDS, AdminSessions, LoginThrottle
from arch_compare.pairwise.reports import to_csv, to_jsonl
from arch_compare.pairwise.rating import CHOICES, MAX_REASON_CHARS
from arch_compare.pairwise.store import ArrivalRefused, Campaign, PairwiseStore, Rater, hash_token
from arch_compare.pairwise.workforces import WORKFORCES, ArrivalError

HERE = Path(__file__).parent
MAX_BODY_BYTES = 32 * 1024  # a 2,000-character reason in any script, percent-encoded, fits
ADMIN_COOKIE = "pw_admin"
LOGIN_CSRF_COOKIE = "pw_login_csrf"
SECURITY_HEADERS = {
    "cache-control": "no-store",
    # Rater URLs carry their token; no other site may learn it from a Referer header.
    "referrer-policy": "no-referrer",
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "content-security-policy": ("default-src 'none'; style-src 'self'; img-src 'self'; "
                                "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"),
}
STATUS_HEADINGS = {400: "This request is not valid", 401: "Sign-in needed",
                   403: "Not allowed", 404: "Not found", 405: "Not allowed",
                   409: "Already done", 410: "This session has ended",
                   413: "Too much text", 415: "Unsupported form", 429: "Too many attempts",
                   500: "Something went wrong"}

log = logging.getLogger(__name__)

templates = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"),
                               autoescape=True, undefined=jinja2.StrictUndefined)


def render(name: str, status_code: int = 200, **context) -> HTMLResponse:
    return HTMLResponse(templates.get_template(name).render(**context), status_code=status_code)


def message(status_code: int, text: str, link: str | None = None,
            link_text: str = "Continue") -> HTMLResponse:
    return render("message.html", status_code, heading=STATUS_HEADINGS.get(status_code, "Notice"),
                  message=text, link=link, link_text=link_text)


def fail(status_code: int, text: str):
    raise HTTPException(status_code, text)


class SecurityHeaders:
    """Adds `SECURITY_HEADERS` to every response, error pages and static files included."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(event):
            if event["type"] == "http.response.start":
                headers = MutableHeaders(scope=event)
                for name, value in SECURITY_HEADERS.items():
                    headers.setdefault(name, value)
            await send(event)

        await self.app(scope, receive, send_with_headers)


async def read_form(request: Request) -> dict[str, str]:
    """The url-encoded form body, read up to `MAX_BODY_BYTES`; anything else is refused."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        fail(415, "Please submit the form from the rating page.")
    declared = request.headers.get("content-length", "")
    if declared and (not declared.isdigit() or int(declared) > MAX_BODY_BYTES):
        fail(413, "The form is too large; please shorten the reason.")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            fail(413, "The form is too large; please shorten the reason.")
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=16)
    except (UnicodeDecodeError, ValueError):
        fail(400, "The form could not be read.")
    fields: dict[str, str] = {}
    for name, value in pairs:
        if name in fields:
            fail(400, f"The form field {name!r} was sent twice.")
        fields[name] = value
    return fields


class RatingApp:
    """Route handlers over one `PairwiseStore`."""

    def __init__(self, store: PairwiseStore, base_url: str = "",
                 clock: Callable[[], float] = time.time):
        self.store = store
        self.base_url = base_url.rstrip("/")
        self.secret = store.secret()
        # Wall-clock time: a session's expiry is written into its cookie and outlives the process.
        self.sessions = AdminSessions(store.secret("admin_session_secret"), clock)
        self.throttle = LoginThrottle(clock)

    async def db(self, function, *args):
        return await run_in_threadpool(function, *args)

    def csrf_for(self, rater: Rater, position: int) -> str:
        message_ = f"rate:{rater.id}:{position}".encode()
        return hmac.new(self.secret, message_, hashlib.sha256).hexdigest()

    # -- raters -------------------------------------------------------------------------------

    async def home(self, request: Request) -> Response:
        return message(200, "Open the link you were given to start rating.")

    async def arrive(self, request: Request, workforce: str) -> Response:
        campaign = await self.db(self.store.campaign_by_public_id, request.path_params["public_id"])
        if campaign is None or campaign.settings.workforce != workforce:
            fail(404, "This study is not open through this link.")
        try:
            arrival = WORKFORCES[workforce].arrival(request.query_params)
        except ArrivalError as error:
            fail(400, f"The link is incomplete: {error}.")
        cookie = f"pw_{campaign.public_id}"
        try:
            token = await self.db(self.store.arrive, campaign, arrival,
                                  request.cookies.get(cookie))
        except ArrivalRefused as error:
            fail(409, f"{str(error).capitalize()}. Please continue there, or contact the "
                      f"researcher.")
        response = RedirectResponse(f"/rate/{token}", status_code=303)
        response.set_cookie(cookie, token, httponly=True, samesite="lax",
                            secure=request.url.scheme == "https", path="/")
        return response

    async def rater_or_fail(self, request: Request) -> Rater:
        rater = await self.db(self.store.rater, request.path_params["token"])
        if rater is None:
            fail(404, "This link is not valid. Please use the link you were given.")
        if rater.status != "active":
            fail(410, "This session expired after a long pause, and its items went to another "
                      "rater. The ratings you gave were saved.")
        return rater

    async def show(self, request: Request) -> Response:
        rater = await self.rater_or_fail(request)
        if not await self.db(self.store.start, rater):
            return message(200, "Every item of this study has been handed out. Thank you for "
                                "your interest; there is nothing left to rate.")
        await self.db(self.store.touch, rater)
        shown, progress = await self.db(self.store.current, rater)
        if shown is None and progress.done:
            return await self.complete(rater, progress.total)
        if shown is None:
            fail(500, "No item to show.")
        return render("rate.html", shown=shown, token=request.path_params["token"],
                      number=progress.rated + 1, total=progress.total,
                      csrf_token=self.csrf_for(rater, shown.position),
                      max_reason=MAX_REASON_CHARS)

    async def complete(self, rater: Rater, total: int) -> Response:
        campaign = await self.db(self.store.campaign_by_id, rater.campaign_id)
        settings = campaign.settings
        completion = WORKFORCES[rater.workforce].completion(
            settings.completion_code, settings.completion_url, rater.external_id)
        return render("complete.html", total=total, code=completion.code,
                      redirect_url=completion.redirect_url,
                      redirect_seconds=settings.redirect_seconds)

    async def submit(self, request: Request) -> Response:
        rater = await self.rater_or_fail(request)
        form = await read_form(request)
        position = form.get("position", "")
        if not position.isdigit() or len(position) > 6:
            fail(400, "The form is missing the item it answers.")
        if not hmac.compare_digest(form.get("csrf_token", ""),
                                   self.csrf_for(rater, int(position))):
            fail(403, "This form did not come from your rating page. Please reload the page.")
        choice, reason = form.get("choice", ""), form.get("reason", "").strip()
        if choice not in CHOICES:
            fail(400, "Please choose one of the four answers.")
        if "\x00" in reason:
            fail(400, "The reason contains a character that cannot be stored.")
        if len(reason) > MAX_REASON_CHARS:
            fail(413, f"The reason is limited to {MAX_REASON_CHARS} characters.")
        outcome = await self.db(self.store.submit, rater, int(position), choice, reason)
        next_page = f"/rate/{request.path_params['token']}"
        if outcome in ("stored", "duplicate"):  # a double submit lands on the next item too
            return RedirectResponse(next_page, status_code=303)
        if outcome == "conflict":
            return message(409, "You already answered this item; your first answer stands.",
                           next_page)
        if outcome == "expired":
            fail(410, "This session has ended. The ratings you gave were saved.")
        fail(404, "This item is not part of your session.")

    # -- administration -----------------------------------------------------------------------

    async def require_admin(self, request: Request) -> None:
        header = request.headers.get("authorization", "")
        if header.lower().startswith("bearer ") and header[7:].strip():
            await self.check_token(request, header[7:].strip())
            return
        cookie = request.cookies.get(ADMIN_COOKIE)
        if not cookie:
            fail(401, "Sign in at /admin/login with the admin token.")
        # A signature cannot be guessed, so bad cookies are not throttled; they were issued to
        # someone who knew the token once, or forged.
        if not self.sessions.valid(cookie, await self.db(self.store.admin_token_hash)):
            fail(401, "Your admin sign-in has expired or is no longer valid. Sign in again at "
                      "/admin/login.")

    async def check_token(self, request: Request, token: str) -> str:
        """Checks an admin token under the throttle; returns the stored hash it matched."""
        stored = await self.db(self.store.admin_token_hash)
        # No await from here on: the check and the record of its outcome are one step, so
        # concurrent guesses from one address cannot all slip past the count.
        address = request.client.host if request.client else "unknown"
        wait = self.throttle.retry_after(address)
        if wait is not None:
            raise HTTPException(429, f"Too many wrong admin tokens from your address. Try "
                                     f"again in {wait} seconds.",
                                headers={"retry-after": str(wait)})
        if stored is None or not hmac.compare_digest(stored, hash_token(token)):
            self.throttle.failed(address)
            fail(403, "Wrong admin token.")
        self.throttle.succeeded(address)
        return stored

    async def login_form(self, request: Request) -> Response:
        token = secrets.token_urlsafe(24)
        response = render("admin_login.html", csrf_token=token)
        response.set_cookie(LOGIN_CSRF_COOKIE, token, httponly=True, samesite="strict",
                            path="/admin", secure=request.url.scheme == "https")
        return response

    async def login(self, request: Request) -> Response:
        form = await read_form(request)
        expected = request.cookies.get(LOGIN_CSRF_COOKIE, "")
        if not expected or not hmac.compare_digest(form.get("csrf_token", ""), expected):
            fail(403, "This form did not come from the sign-in page. Please reload it.")
        token_hash = await self.check_token(request, form.get("token", ""))
        response = RedirectResponse("/admin", status_code=303)
        response.set_cookie(ADMIN_COOKIE, self.sessions.issue(token_hash), max_age=SESSION_SECONDS,
                            httponly=True, samesite="strict", path="/admin",
                            secure=request.url.scheme == "https")
        response.delete_cookie(LOGIN_CSRF_COOKIE, path="/admin")
        return response

    async def admin_index(self, request: Request) -> Response:
        await self.require_admin(request)
        campaigns = await self.db(self.store.campaigns)
        rows = [{"id": c.id, "name": c.name,
                 "status": await self.db(self.store.campaign_status, c)} for c in campaigns]
        return render("admin_index.html", rows=rows)

    async def admin_campaign_or_fail(self, request: Request) -> Campaign:
        await self.require_admin(request)
        campaign = await self.db(self.store.campaign_by_id, request.path_params["campaign_id"])
        if campaign is None:
            fail(404, "No such campaign.")
        return campaign

    def summary(self, campaign: Campaign) -> tuple[dict, dict]:
        # Imported here: the statistics pull in SciPy, which only the admin pages need.
        from arch_compare.pairwise.summary import summarise

        status = self.store.campaign_status(campaign)
        rows = list(self.store.rating_rows(campaign))
        return status, summarise(rows, self.store.rater_states(campaign))

    async def admin_campaign(self, request: Request) -> Response:
        campaign = await self.admin_campaign_or_fail(request)
        status, summary = await self.db(self.summary, campaign)
        base_url = self.base_url or str(request.base_url).rstrip("/")
        return render("admin_campaign.html", campaign=campaign, status=status, summary=summary,
                      base_url=base_url, fmt=_fmt)

    async def admin_api(self, request: Request) -> Response:
        campaign = await self.admin_campaign_or_fail(request)
        status, summary = await self.db(self.summary, campaign)
        return JSONResponse({"status": status, "summary": summary})

    async def export(self, request: Request) -> Response:
        campaign = await self.admin_campaign_or_fail(request)
        kind = request.path_params["kind"]
        if kind not in ("jsonl", "csv"):
            fail(404, "Exports are .jsonl or .csv.")
        rows = await self.db(lambda: list(self.store.rating_rows(campaign)))
        body = to_jsonl(rows) if kind == "jsonl" else to_csv(rows)
        media = "application/x-ndjson" if kind == "jsonl" else "text/csv"
        filename = f"pairwise-{campaign.id}.{kind}"
        return Response(body, media_type=media, headers={
            "content-disposition": f'attachment; filename="{filename}"'})


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


async def on_http_error(request: Request, error: HTTPException) -> Response:
    if request.url.path.startswith("/admin/api/") or request.url.path.endswith(
            (".jsonl", ".csv")):
        return JSONResponse({"error": error.detail}, status_code=error.status_code,
                            headers=error.headers)
    detail = error.detail if isinstance(error.detail, str) else ""
    if error.status_code == 404 and detail == "Not Found":
        detail = "There is no page here."
    response = message(error.status_code, detail)
    response.headers.update(error.headers or {})  # Retry-After on a 429
    return response


async def on_server_error(request: Request, error: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return message(500, "The server could not handle this request. Please try again.")


def create_app(store: PairwiseStore, base_url: str = "",
               clock: Callable[[], float] = time.time) -> Starlette:
    """The app over `store`; `clock` (seconds since the epoch) times admin sessions and the
    sign-in throttle, and tests pass their own."""
    handlers = RatingApp(store, base_url, clock)
    routes = [
        Route("/", handlers.home),
        Route("/p/{public_id}", functools.partial(handlers.arrive, workforce="prolific")),
        Route("/c/{public_id}", functools.partial(handlers.arrive, workforce="crowd")),
        Route("/rate/{token}", handlers.show, methods=["GET"]),
        Route("/rate/{token}", handlers.submit, methods=["POST"]),
        Route("/admin/login", handlers.login_form, methods=["GET"]),
        Route("/admin/login", handlers.login, methods=["POST"]),
        Route("/admin", handlers.admin_index),
        Route("/admin/campaigns/{campaign_id:int}", handlers.admin_campaign),
        Route("/admin/campaigns/{campaign_id:int}/export.{kind}", handlers.export),
        Route("/admin/api/campaigns/{campaign_id:int}", handlers.admin_api),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: on_http_error,
                                                       Exception: on_server_error})
    app.add_middleware(SecurityHeaders)
    return app


def serve(store: PairwiseStore, host: str = "127.0.0.1", port: int = 8000,
          base_url: str = "") -> None:
    """Runs the app with uvicorn until interrupted (access logs off: rater URLs hold tokens)."""
    import uvicorn

    uvicorn.run(create_app(store, base_url), host=host, port=port, access_log=False,
                log_level="warning")
