"""``trail``: show one request's path through the services, rebuilt from its Loki log lines.

    trail <correlation-id> [--since 1h | --from T [--to T]] [--json]
    trail --last-error [--service NAME] [--task NAME] [--since 1h | --from T [--to T]] [--json]
    trail serve [--host 127.0.0.1] [--port 8090]   the same trails as web pages (trail.web)

Exit status: 0 trail shown; 1 nothing found in the window (window and query are printed);
2 bad arguments (a malformed ID is refused before any query; a window longer than --max-window,
default TRAIL_MAX_WINDOW or 24 h), bad LOKI_*/TRAIL_* settings, Loki unreachable or answering an
error (URL and Loki's message are printed).

This module reads the command line and prints; the lookup itself (windows, queries) is
:mod:`trail.lookup`, the last-error search :mod:`trail.last_error`.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

from correlation.settings import ConfigError, LokiSettings
from trail.cli.render import render_text
from trail.document import render_lookup_json
from trail.last_error import last_error
from trail.logql import check_correlation_id, check_service, check_task, last_error_query
from trail.loki_query import DEFAULT_PAGE_SIZE, MAX_LIMIT, LokiQueryClient, LokiQueryError
from trail.lookup import (
    DEFAULT_MAX_LINES,
    MAX_LINES_ENV,
    TrailLookup,
    check_max_lines,
    lookup_trail,
    max_lines_from_env,
)
from trail.text import clean, format_time, line_cap_note
from trail.window import (
    DEFAULT_MAX_REQUEST_SECONDS,
    DEFAULT_MAX_WINDOW_SECONDS,
    DEFAULT_SINCE_SECONDS,
    MAX_WINDOW_ENV,
    Window,
    WindowTooLong,
    explicit_window,
    format_duration,
    max_window_from_env,
    parse_duration,
    parse_time,
)

EXIT_FOUND, EXIT_NOT_FOUND, EXIT_ERROR = 0, 1, 2
T = TypeVar("T")


def _argument(parse: Callable[[str], T]) -> Callable[[str], T]:
    """An argparse ``type`` from a parser that raises ValueError, so argparse shows its message
    (for a plain ValueError it would print only "invalid value")."""

    def convert(text: str) -> T:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return convert


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} must be a number > 0")
    return value


def _max_lines(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    try:
        return check_max_lines(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


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
    parser.add_argument(
        "correlation_id", nargs="?", help="the correlation ID to follow (one starting with '-': write `trail -- ID`)"
    )
    parser.add_argument("--last-error", action="store_true", help="follow the most recent failed (5xx) request")
    parser.add_argument("--service", metavar="NAME", help="with --last-error: only failures seen by this service")
    parser.add_argument("--task", metavar="NAME", help="with --last-error: only failed runs of this (Celery) task")
    when = parser.add_argument_group("window (default: around the time inside our IDs, else the last hour)")
    when.add_argument(
        "--since",
        type=_argument(parse_duration),
        metavar="DURATION",
        help="look back this long from now or --to (e.g. 15m, 1h, 2d)",
    )
    when.add_argument(
        "--from", dest="from_ns", type=_argument(parse_time), metavar="TIME", help="start: RFC 3339 or Unix time"
    )
    when.add_argument(
        "--to",
        dest="to_ns",
        type=_argument(parse_time),
        metavar="TIME",
        help="end: RFC 3339 or Unix time (default now)",
    )
    when.add_argument(
        "--max-request-seconds",
        type=_positive_float,
        default=DEFAULT_MAX_REQUEST_SECONDS,
        metavar="SECONDS",
        help="longest a request may take; bounds the window after an ID's time (default %(default)s; "
        "at most half of --max-window)",
    )
    when.add_argument(
        "--max-window",
        type=_argument(parse_duration),
        metavar="DURATION",
        help="the longest window --since/--from/--to may ask for "
        f"(default {MAX_WINDOW_ENV} or {format_duration(DEFAULT_MAX_WINDOW_SECONDS)})",
    )
    parser.add_argument("--json", action="store_true", help="print the trail as JSON")
    parser.add_argument(
        "--page-size",
        type=_page_size,
        default=DEFAULT_PAGE_SIZE,
        metavar="N",
        help="entries per Loki request while paging (default %(default)s)",
    )
    parser.add_argument(
        "--max-lines",
        type=_max_lines,
        metavar="N",
        help=f"read and show at most N lines of the trail, the oldest (default {MAX_LINES_ENV} or {DEFAULT_MAX_LINES})",
    )
    return parser


def _check_args(parser: argparse.ArgumentParser, args: argparse.Namespace, now_ns: int) -> Window | None:
    """Refuse bad combinations and malformed IDs before anything is sent; the explicit window."""
    if args.last_error == (args.correlation_id is not None):
        parser.error("give a correlation ID or --last-error (one of them)")
    try:
        if args.correlation_id is not None:
            check_correlation_id(args.correlation_id)
    except ValueError as exc:
        parser.error(f"refusing {exc}; nothing was queried")
    # --service's checker names the value itself ("service 'x': ..."), --task's says why.
    for flag, value, check, joint in (
        ("--service", args.service, check_service, " "),
        ("--task", args.task, check_task, ": "),
    ):
        if value is None:
            continue
        if not args.last_error:
            parser.error(f"{flag} goes with --last-error")
        try:
            check(value)
        except ValueError as exc:
            parser.error(f"{flag}{joint}{exc}")
    if args.since is not None and args.from_ns is not None:
        parser.error("--since and --from exclude each other")
    if args.max_request_seconds > args.max_window / 2:
        # The wide look spans it on both sides of the ID's time: it must fit the window maximum.
        parser.error(
            f"--max-request-seconds {args.max_request_seconds:g} is longer than half the window maximum "
            f"({format_duration(args.max_window)}: --max-window or {MAX_WINDOW_ENV})"
        )
    try:
        return explicit_window(
            since_seconds=args.since,
            from_ns=args.from_ns,
            to_ns=args.to_ns,
            now_ns=now_ns,
            max_seconds=args.max_window,
        )
    except WindowTooLong as exc:
        parser.error(f"{exc} (set by --max-window or {MAX_WINDOW_ENV}); nothing was queried")
    except ValueError as exc:
        parser.error(str(exc))


def _limits_from_env(args: argparse.Namespace) -> None:
    """Fill --max-window and --max-lines from the environment when they were not given."""
    if args.max_window is None:
        args.max_window = max_window_from_env(os.environ)
    if args.max_lines is None:
        args.max_lines = max_lines_from_env(os.environ)


def _write(text: str) -> None:
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        # `trail ... | head`: the reader left; stop quietly (and keep Python's exit flush quiet).
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


def _say(message: str) -> None:
    print(message, file=sys.stderr)


def _show(lookup: TrailLookup, as_json: bool) -> int:
    """Print the trail found (or say what was searched when nothing was); the exit status."""
    if lookup.widened:
        # The reasons name services and IDs read from lines: escaped like every text from a line.
        _say(
            f"trail: {clean('; '.join(lookup.widened_because))} in {lookup.windows[0]}; "
            f"widened the window once to {lookup.window}"
        )
    if not lookup.found:
        windows = "\n".join(f"  window: {w}" for w in lookup.windows)
        _say(f"trail: no log lines for correlation ID {lookup.correlation_id}\n{windows}\n  query: {lookup.query}")
        return EXIT_NOT_FOUND
    note = line_cap_note(lookup.max_lines) if lookup.lines_capped else None
    if note:
        _say(f"trail: {note}")
    if as_json:
        _write(render_lookup_json(lookup))
    else:
        color = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
        window = (lookup.window.start_ns, lookup.window.end_ns)
        _write(render_text(lookup.trail, window=window, color=color, note=note))
    return EXIT_FOUND


def main(argv: Sequence[str] | None = None) -> int:
    """The ``trail`` command but ``trail serve`` (:mod:`trail.__main__`); returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else list(argv))
    now_ns = time.time_ns()
    try:
        _limits_from_env(args)
    except ConfigError as exc:
        _say(f"trail: {exc}")
        return EXIT_ERROR
    explicit = _check_args(parser, args, now_ns)

    try:
        settings = LokiSettings.from_env()
    except ConfigError as exc:
        _say(f"trail: {exc}")
        return EXIT_ERROR
    if not settings.url:
        _say("trail: LOKI_URL is not set (e.g. LOKI_URL=http://localhost:3100)")
        return EXIT_ERROR
    client = LokiQueryClient(settings)

    try:
        if not args.last_error:
            lookup = lookup_trail(
                client,
                args.correlation_id,
                explicit,
                max_request_seconds=args.max_request_seconds,
                page_size=args.page_size,
                now_ns=now_ns,
                max_lines=args.max_lines,
            )
            return _show(lookup, args.json)
        search = explicit or Window.last(DEFAULT_SINCE_SECONDS, now_ns)
        found = last_error(
            client,
            args.service,
            search,
            max_request_seconds=args.max_request_seconds,
            page_size=args.page_size,
            now_ns=now_ns,
            task=args.task,
            max_lines=args.max_lines,
        )
    except LokiQueryError as exc:
        _say(f"trail: Loki error: {exc}")
        return EXIT_ERROR
    if found is None:
        query = last_error_query(args.service, task=args.task)
        _say(f"trail: no failed request (status >= 500) in window {search}\n  query: {query}")
        return EXIT_NOT_FOUND
    where = clean(found.failure.service or "?")  # a stream label: whoever pushed the line chose it
    _say(
        f"trail: most recent failed request: {found.correlation_id} "
        f"({where} access line at {format_time(found.failure.access_line.ts_ns)})"
    )
    return _show(found.lookup, args.json)


if __name__ == "__main__":
    sys.exit(main())
