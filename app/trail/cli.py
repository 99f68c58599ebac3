"""``trail``: show one request's path through the services, rebuilt from its Loki log lines.

    trail <correlation-id> [--since 1h | --from T [--to T]] [--json]
    trail --last-error [--service NAME] [--since 1h | --from T [--to T]] [--json]

Exit status: 0 trail shown; 1 nothing found in the window (window and query are printed);
2 bad arguments (a malformed ID is refused before any query), bad LOKI_* settings, Loki
unreachable or answering an error (URL and Loki's message are printed).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable, Sequence

from correlation.config import ConfigError, LokiSettings
from correlation.ids import MAX_ID_LENGTH, is_valid_id, printable, rejection_reason, time_ms_of
from trail.hops import ACCESS_LOGGER, Trail, build_trail
from trail.loki_query import DEFAULT_PAGE_SIZE, MAX_LIMIT, Entry, LokiQueryClient, LokiQueryError
from trail.render import format_time, render_json, render_text

EXIT_FOUND, EXIT_NOT_FOUND, EXIT_ERROR = 0, 1, 2
DEFAULT_SINCE = "1h"
DEFAULT_MAX_REQUEST_SECONDS = 30.0
#: Slack around an ID's own time for clock skew between hosts and shipping delay of timestamps.
MARGIN_SECONDS = 5.0
#: The one wider look when the narrow window gave an incomplete trail: +- this around the ID time.
WIDE_SECONDS = 15 * 60.0
#: How many recent failed access lines --last-error reads (the newest usable one wins).
LAST_ERROR_SCAN = 20
_SERVICE_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")  # as config.py accepts SERVICE_NAME
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
NS = 1_000_000_000


@dataclass(frozen=True)
class Window:
    """A query window ``[start_ns, end_ns)`` as Loki reads it."""

    start_ns: int
    end_ns: int

    def __str__(self) -> str:
        return f"{format_time(self.start_ns)} .. {format_time(self.end_ns)}"

    def to_dict(self) -> dict[str, object]:
        return {"start": format_time(self.start_ns), "end": format_time(self.end_ns),
                "start_ns": self.start_ns, "end_ns": self.end_ns}


def trail_query(correlation_id: str) -> str:
    """All lines of one request, across services: structured metadata, no parser (FACTS.md)."""
    return f'{{service_name=~".+"}} | correlation_id="{correlation_id}"'


def last_error_query(service: str | None = None) -> str:
    """Access lines of failed requests (status >= 500), newest first when run backward.

    A failed request is defined by its access line's status, not by ERROR lines: a handled
    error can log at ERROR and answer 200, and a 5xx need not log anything at ERROR. The status
    lives only in the JSON line, so a parser is unavoidable; the cheap line filter
    ``|= "correlation.access"`` drops every other line before ``json`` runs, and ``json`` extracts
    just the two fields it needs. ``__error__=""`` drops lines whose JSON or status did not parse
    (Loki keeps those lines, flagged, instead of filtering them out).
    """
    selector = f'{{service_name="{service}"}}' if service else '{service_name=~".+"}'
    return (f'{selector} |= "{ACCESS_LOGGER}" | json logger="logger", status="status"'
            f' | logger="{ACCESS_LOGGER}" | status >= 500 | __error__=""')


def parse_duration(text: str) -> float:
    """Seconds in ``90``, ``90s``, ``15m``, ``1h30m``, ``2d``, ``500ms``."""
    text = text.strip()
    try:
        seconds = float(text)
    except ValueError:
        parts = _DURATION_PART.findall(text)
        if not parts or "".join(n + u for n, u in parts) != text:
            raise argparse.ArgumentTypeError(f"{text!r} is not a duration (e.g. 90s, 15m, 1h, 2d)") from None
        seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be longer than zero")
    return seconds


def parse_time(text: str) -> int:
    """Unix ns of RFC 3339 (no offset means UTC) or a Unix number: seconds, or ms/us/ns told
    apart by size (a Grafana URL carries ms)."""
    text = text.strip()
    try:
        number = float(text)
    except ValueError:
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is neither RFC 3339 nor a Unix time") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=timezone.utc)
        return int(moment.timestamp()) * NS + moment.microsecond * 1000
    if number < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is before 1970")
    for limit, scale in ((1e11, NS), (1e14, 1_000_000), (1e17, 1000)):
        if number < limit:
            return int(number * scale)
    return int(number)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be > 0")
    return value


def _page_size(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if not 1 <= value <= MAX_LIMIT:
        raise argparse.ArgumentTypeError(f"must be between 1 and {MAX_LIMIT} (Loki's default maximum)")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The command line; `trail --help` is the reference."""
    parser = argparse.ArgumentParser(
        prog="trail",
        description="Show a request's hop tree and log lines, rebuilt from Loki "
        "(LOKI_URL, LOKI_TENANT, LOKI_USERNAME/LOKI_PASSWORD or LOKI_BEARER_TOKEN, LOKI_TLS_VERIFY).",
        epilog="Exit status: 0 found, 1 nothing in the window, 2 bad input or Loki error.",
    )
    parser.add_argument("correlation_id", nargs="?",
                        help="the correlation ID to follow (one starting with '-': write `trail -- ID`)")
    parser.add_argument("--last-error", action="store_true", help="follow the most recent failed (5xx) request")
    parser.add_argument("--service", metavar="NAME", help="with --last-error: only failures seen by this service")
    when = parser.add_argument_group("window (default: around the time inside our IDs, else the last hour)")
    when.add_argument("--since", type=parse_duration, metavar="DURATION", help="look back this long from now or --to (e.g. 15m, 1h, 2d)")
    when.add_argument("--from", dest="from_ns", type=parse_time, metavar="TIME", help="start: RFC 3339 or Unix time")
    when.add_argument("--to", dest="to_ns", type=parse_time, metavar="TIME",
                      help="end: RFC 3339 or Unix time (default now)")
    when.add_argument("--max-request-seconds", type=_positive_float, default=DEFAULT_MAX_REQUEST_SECONDS, metavar="SECONDS",
                      help="longest a request may take; bounds the window after an ID's time (default %(default)s)")
    parser.add_argument("--json", action="store_true", help="print the trail as JSON")
    parser.add_argument("--page-size", type=_page_size, default=DEFAULT_PAGE_SIZE, metavar="N",
                        help="entries per Loki request while paging (default %(default)s)")
    return parser


def _check_args(parser: argparse.ArgumentParser, args: argparse.Namespace, now_ns: int) -> Window | None:
    """Refuse bad combinations and malformed IDs before anything is sent; the explicit window."""
    if args.last_error == (args.correlation_id is not None):
        parser.error("give a correlation ID or --last-error (one of them)")
    if args.correlation_id is not None and not is_valid_id(args.correlation_id):
        parser.error(
            f"refusing malformed correlation ID {printable(args.correlation_id)!r} "
            f"({rejection_reason(args.correlation_id)}): expected 1-{MAX_ID_LENGTH} characters "
            "from [A-Za-z0-9._-]; nothing was queried"
        )
    if args.service is not None:
        if not args.last_error:
            parser.error("--service goes with --last-error")
        if not _SERVICE_NAME.fullmatch(args.service):
            parser.error(f"--service {printable(args.service)!r}: expected 1-64 characters from [A-Za-z0-9._-]")
    if args.since is not None and args.from_ns is not None:
        parser.error("--since and --from exclude each other")
    if args.since is None and args.from_ns is None and args.to_ns is None:
        return None
    end = args.to_ns if args.to_ns is not None else now_ns
    since = args.since if args.since is not None else parse_duration(DEFAULT_SINCE)
    start = args.from_ns if args.from_ns is not None else end - int(since * NS)
    if start >= end:
        parser.error(f"empty window: {format_time(start)} is not before {format_time(end)}")
    return Window(start, end)


@dataclass
class Lookup:
    """What was asked of Loki for one ID, and what came back."""

    correlation_id: str
    query: str
    windows: list[Window]
    entries: list[Entry]

    @property
    def window(self) -> Window:
        return self.windows[-1]


def fetch_trail(
    client: LokiQueryClient,
    correlation_id: str,
    explicit: Window | None,
    *,
    max_request_seconds: float,
    page_size: int,
    now_ns: int,
    say: Callable[[str], None],
) -> Lookup:
    """Query the ID's lines. Without an explicit window an ID of ours is looked up around its
    own time, and once more over a wider window if the trail found there looks incomplete."""
    query = trail_query(correlation_id)

    def fetch(window: Window) -> list[Entry]:
        return client.query_all(query, window.start_ns, window.end_ns, page_size=page_size)

    id_ms = time_ms_of(correlation_id)
    if explicit is not None or id_ms is None:
        window = explicit or _last(DEFAULT_SINCE, now_ns)
        return Lookup(correlation_id, query, [window], fetch(window))

    id_ns = id_ms * 1_000_000
    narrow = Window(id_ns - int(MARGIN_SECONDS * NS), id_ns + int((max_request_seconds + MARGIN_SECONDS) * NS))
    entries = fetch(narrow)
    problems = trail_problems(correlation_id, entries) if entries else ["no lines"]
    if not problems:
        return Lookup(correlation_id, query, [narrow], entries)
    reach = int(max(WIDE_SECONDS, max_request_seconds + MARGIN_SECONDS) * NS)
    wide = Window(id_ns - reach, id_ns + reach)
    say(f"trail: {'; '.join(problems)} in {narrow}; widening the window once to {wide}")
    return Lookup(correlation_id, query, [narrow, wide], fetch(wide))


def _last(duration: str, now_ns: int) -> Window:
    """The window of the last ``duration`` (e.g. ``1h``) ending now."""
    return Window(now_ns - int(parse_duration(duration) * NS), now_ns)


def trail_problems(correlation_id: str, entries: Sequence[Entry]) -> list[str]:
    """Why the trail built from ``entries`` looks incomplete (empty list: it does not)."""
    return _build(correlation_id, entries).problems()


def _build(correlation_id: str, entries: Sequence[Entry]) -> Trail:
    return build_trail(
        correlation_id,
        ((e.ts_ns, e.line, e.label("service_name"), {"request_id": e.label("request_id"), "level": e.label("level")}) for e in entries),
    )


def find_last_error(client: LokiQueryClient, service: str | None, window: Window) -> tuple[str, Entry] | None:
    """The correlation ID of the newest failed request in the window, with its access line."""
    query = last_error_query(service)
    newest_first = client.query_range(query, window.start_ns, window.end_ns, limit=LAST_ERROR_SCAN, direction="backward")
    for entry in newest_first:
        try:
            fields = json.loads(entry.line)
        except ValueError:
            fields = None
        candidate = fields.get("correlation_id") if isinstance(fields, dict) else None
        if not isinstance(candidate, str):
            candidate = entry.label("correlation_id")
        # The ID comes from log content: validate it like any inbound ID before querying with it.
        if isinstance(candidate, str) and is_valid_id(candidate):
            return candidate, entry
    return None


def _write(text: str) -> None:
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        # `trail ... | head`: the reader left; stop quietly (and keep Python's exit flush quiet).
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``trail`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    now_ns = time.time_ns()
    explicit = _check_args(parser, args, now_ns)

    def say(message: str) -> None:
        print(message, file=sys.stderr)

    try:
        settings = LokiSettings.from_env()
    except ConfigError as exc:
        say(f"trail: {exc}")
        return EXIT_ERROR
    if not settings.url:
        say("trail: LOKI_URL is not set (e.g. LOKI_URL=http://localhost:3100)")
        return EXIT_ERROR
    client = LokiQueryClient(settings)

    try:
        correlation_id = args.correlation_id
        if args.last_error:
            search = explicit or _last(DEFAULT_SINCE, now_ns)
            found = find_last_error(client, args.service, search)
            if found is None:
                say(f"trail: no failed request (status >= 500) in window {search}\n"
                    f"  query: {last_error_query(args.service)}")
                return EXIT_NOT_FOUND
            correlation_id, entry = found
            say(f"trail: most recent failed request: {correlation_id} (access line at {format_time(entry.ts_ns)})")
            # Our IDs carry their time; a foreign one is followed over the window it was found in.
            if time_ms_of(correlation_id) is None:
                explicit = search
        lookup = fetch_trail(
            client, correlation_id, explicit, max_request_seconds=args.max_request_seconds,
            page_size=args.page_size, now_ns=now_ns, say=say,
        )
    except LokiQueryError as exc:
        say(f"trail: Loki error: {exc}")
        return EXIT_ERROR

    if not lookup.entries:
        windows = "\n".join(f"  window: {w}" for w in lookup.windows)
        say(f"trail: no log lines for correlation ID {correlation_id}\n{windows}\n  query: {lookup.query}")
        return EXIT_NOT_FOUND
    trail = _build(correlation_id, lookup.entries)
    if args.json:
        _write(render_json(trail, query=lookup.query, window=lookup.window.to_dict(), widened=len(lookup.windows) > 1))
    else:
        color = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
        _write(render_text(trail, window=(lookup.window.start_ns, lookup.window.end_ns), color=color))
    return EXIT_FOUND


if __name__ == "__main__":
    sys.exit(main())
