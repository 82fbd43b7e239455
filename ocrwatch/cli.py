"""The `ocrwatch` command: argparse subcommands, logging set-up, and the one place errors become exit codes."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from ocrwatch import __version__
from ocrwatch.config import (
    Config,
    Credentials,
    config_path,
    load_config,
    load_settings,
)
from ocrwatch.errors import ApiError, ConfigError, OcrwatchError
from ocrwatch.journal import Journal, journal_exists
from ocrwatch.log import configure_logging
from ocrwatch.profiles import resolve_fetch, resolve_profile

if TYPE_CHECKING:
    from ocrwatch.emulator import Emulator, Faults

log = structlog.get_logger()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ocrwatch",
        description="Watch folders and submit new images to Aspose.OCR Cloud.",
    )
    parser.add_argument(
        "--version", action="version", version=f"ocrwatch {__version__}"
    )
    logging_opts = argparse.ArgumentParser(add_help=False)
    logging_opts.add_argument(
        "--log-level",
        default=None,
        choices=["debug", "info", "warning", "error"],
        help="default: info",
    )
    logging_opts.add_argument(
        "--log-format",
        default="auto",
        choices=["auto", "json", "console"],
        help="auto: console on a terminal, JSON lines otherwise (default: auto)",
    )
    common = argparse.ArgumentParser(add_help=False, parents=[logging_opts])
    common.add_argument(
        "-c",
        "--config",
        help="config file (default: $OCRWATCH_CONFIG, else /etc/ocrwatch/config.yaml)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, summary: str, description: str, **kw: Any) -> Any:
        return sub.add_parser(
            name,
            help=summary,
            description=f"{summary[0].upper()}{summary[1:]}. {description}",
            **kw,
        )

    command(
        "run",
        "the daemon: watch, queue, submit, write sidecars",
        "Runs in the foreground until SIGTERM or SIGINT; SIGHUP reloads the config. "
        "Exit 0 after a clean stop, 2 for a bad config, 1 for a fatal runtime error.",
        parents=[common],
    )
    p = command(
        "submit",
        "submit the given files or folders once, then exit",
        "Folders are expanded by their include/exclude rules; a file with a current "
        "sidecar is skipped. Uses the same journal as `run`. On a terminal it shows a "
        "progress bar and logs warnings only. Exit 0 if all were "
        "submitted, 1 if any failed, 2 for a bad config or usage.",
        parents=[common],
    )
    p.add_argument("--profile", help="profile to use instead of the folder's")
    p.add_argument(
        "paths",
        nargs="+",
        type=Path,
        metavar="PATH",
        help="an image, or a folder of them (its include/exclude rules apply)",
    )
    p = command(
        "fetch",
        "write the results of files that have a .guid and no results yet",
        "Asks the service for each task a .guid names and writes its result files next "
        "to the file (folders expanded by their rules; no PATH: every configured folder). "
        "Uses the same journal as `run`; on_complete runs as in the daemon. A task the "
        "service no longer has (it keeps them 24 h) ends in .error unless --resubmit. "
        "Exit 0 if all were fetched, 1 if any failed, 2 for a bad config.",
        parents=[common],
    )
    p.add_argument("paths", nargs="*", type=Path, metavar="PATH")
    p.add_argument(
        "--resubmit",
        action="store_true",
        help="upload a file again (billed) whose task the service no longer has",
    )
    p = command(
        "check",
        "validate the config and show each folder's settings",
        "Prints each folder with its resolved profile and the exact settings that will "
        "be sent. Exit 0 if valid, 2 if not; with --online, 1 if the token endpoint "
        "or the credentials fail.",
        parents=[common],
    )
    p.add_argument(
        "--online",
        action="store_true",
        help="also fetch one access token, to check the URL and the credentials",
    )
    p = command(
        "status",
        "is a daemon running, are uploads paused, counts, queue, failures",
        "Reads the journal in state_dir (read-only, whether or not the daemon runs): "
        "the daemon and its pid, an upload pause and why, counts per state, the queue, "
        "submissions in the last hour and day, held files and recent failures. Exit 0.",
        parents=[common],
    )
    p.add_argument(
        "--json", action="store_true", help="machine-readable output (see README)"
    )
    p.add_argument(
        "--failed",
        action="store_true",
        help="list every failed and rejected file, with time and reason",
    )
    p = command(
        "retry",
        "queue failed or rejected files again and remove their .error",
        "Use it once the cause is fixed: each file is queued as if new. A running daemon sends them within seconds; otherwise "
        "the next `ocrwatch run` does. A folder stands for the failed and rejected files "
        "under it. Exit 0; 2 if neither or both of PATH and --all-failed are given; 1 if "
        "the journal cannot be opened.",
        parents=[common],
    )
    p.add_argument(
        "paths",
        nargs="*",
        type=Path,
        metavar="PATH",
        help="a failed or rejected file, or a folder of them",
    )
    p.add_argument(
        "--all-failed",
        action="store_true",
        help="every failed and rejected file in the journal",
    )

    p = command(
        "emulator",
        "a local Aspose.OCR Cloud-compatible server",
        "For trying ocrwatch offline, and for tests and benchmarks. It prints its URL "
        "first and serves until SIGTERM or SIGINT.",
        parents=[logging_opts],
    )
    p.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)"
    )
    p.add_argument(
        "--port",
        type=int,
        default=8089,
        help="0 picks a free port; the bound URL is printed first (default: 8089)",
    )
    p.add_argument(
        "--client-id",
        default="emulator",
        help="the accepted client id (default: emulator)",
    )
    p.add_argument(
        "--client-secret",
        default=None,
        help="accepted secret (default: $OCRWATCH_EMULATOR_SECRET, else emulator-secret)",
    )
    p.add_argument(
        "--token-ttl",
        type=float,
        default=3600.0,
        help="token lifetime, seconds (default: 3600)",
    )
    p.add_argument(
        "--latency",
        type=float,
        default=0.0,
        help="added to every response, seconds (default: 0)",
    )
    p.add_argument(
        "--pending",
        type=float,
        default=0.0,
        help="seconds a task stays Pending (default: 0)",
    )
    p.add_argument(
        "--processing",
        type=float,
        default=0.0,
        help="seconds a task stays Processing (default: 0)",
    )
    p.add_argument(
        "--fail-503",
        type=float,
        default=0.0,
        metavar="RATE",
        help="fraction of uploads answered 503 (default: 0)",
    )
    p.add_argument(
        "--fail-429",
        type=float,
        default=0.0,
        metavar="RATE",
        help="fraction answered 429 with Retry-After (default: 0)",
    )
    p.add_argument(
        "--retry-after",
        default="1",
        help="Retry-After value sent with injected 429s (default: 1)",
    )
    p.add_argument(
        "--drop",
        type=float,
        default=0.0,
        metavar="RATE",
        help="fraction of connections dropped unanswered (default: 0)",
    )
    p.add_argument(
        "--accept-drop",
        type=float,
        default=0.0,
        metavar="RATE",
        help="fraction accepted, then dropped unanswered (default: 0)",
    )
    p.add_argument(
        "--token-429",
        type=float,
        default=0.0,
        metavar="RATE",
        help="fraction of token calls answered 429 with Retry-After (rate limiting) (default: 0)",
    )
    p.add_argument(
        "--task-error",
        type=float,
        default=0.0,
        metavar="RATE",
        help="fraction of accepted tasks that end in Error (default: 0)",
    )
    p.add_argument(
        "--task-lost",
        type=float,
        default=0.0,
        metavar="RATE",
        help="fraction of accepted tasks that read as NotExist (default: 0)",
    )
    p.add_argument(
        "--task-warning",
        default="",
        metavar="TEXT",
        help="a warning put in every finished task's error.warnings (default: none)",
    )
    p.add_argument(
        "--bad-image",
        choices=["reject", "task-error"],
        default="reject",
        help="a corrupt image: a 400 at upload, or a task that ends in Error (default: reject)",
    )
    p.add_argument(
        "--empty-401",
        action="store_true",
        help="answer 401 with an empty body instead of ProblemDetails",
    )
    p.add_argument(
        "--seed", type=int, default=None, help="seed for the fault injection's dice"
    )
    p.add_argument(
        "--tls-cert",
        type=Path,
        default=None,
        help="serve HTTPS with this certificate chain",
    )
    p.add_argument("--tls-key", type=Path, default=None, help="the key for --tls-cert")
    p.add_argument(
        "--log",
        type=Path,
        default=None,
        help="JSON-lines log of what was received (no image bytes)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # Paths are printed as they are, and a name that is not UTF-8 must not crash a summary.
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "retry" and bool(args.paths) == args.all_failed:
        print(
            "ocrwatch retry: give the files or folders to retry, or --all-failed "
            "(not both)",
            file=sys.stderr,
        )
        return 2
    interactive = sys.stderr.isatty()
    level = args.log_level or (
        "warning" if interactive and args.command in ("submit", "fetch") else "info"
    )
    fmt = None if args.log_format == "auto" else args.log_format == "json"
    configure_logging(json=fmt, level=level)
    try:
        return int(COMMANDS[args.command](args))
    except OcrwatchError as exc:
        print(f"ocrwatch: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `ocrwatch check | head -2`: the reader left. Python's advice: point stdout at
        # /dev/null, so that the flush at exit does not fail again, and exit as shells do.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141


def cmd_run(args: argparse.Namespace) -> int:
    from ocrwatch.daemon import Daemon

    with Daemon.open(config_path(args.config, os.environ), os.environ) as daemon:
        return daemon.run()


def cmd_submit(args: argparse.Namespace) -> int:
    from ocrwatch.batch import Summary, expand, submit_all
    from ocrwatch.jobloop import JobLoop
    from ocrwatch.runtime import Runtime

    config, credentials = load_settings(
        config_path(args.config, os.environ), os.environ
    )
    if args.profile is not None and args.profile not in config.profiles:
        raise ConfigError(
            f"--profile: unknown profile `{args.profile}`; known: {', '.join(config.profiles)}"
        )
    summary = Summary()
    jobs = expand(args.paths, config, args.profile, summary)
    journal = Journal(config.journal_path)
    try:
        loop = JobLoop(journal, Runtime.build(config, credentials), one_shot=True)
        submit_all(loop, journal, jobs, summary, progress=sys.stderr.isatty())
    finally:
        journal.close()
    print(
        f"submitted {len(summary.submitted)}, reused {len(summary.reused)}, "
        f"skipped {len(summary.skipped)} (sidecar present), failed {len(summary.failed)}"
    )
    for path, reason in sorted(summary.failed):
        print(f"  failed: {path}: {reason}")
    return summary.exit_code


def cmd_fetch(args: argparse.Namespace) -> int:
    from ocrwatch.fetchbatch import FetchSummary, fetch_all, find_targets
    from ocrwatch.jobloop import JobLoop
    from ocrwatch.runtime import Runtime

    config, credentials = load_settings(
        config_path(args.config, os.environ), os.environ
    )
    summary = FetchSummary()
    journal = Journal(config.journal_path)
    try:
        targets = find_targets(args.paths, config, journal, summary)
        loop = JobLoop(journal, Runtime.build(config, credentials), one_shot=True)
        fetch_all(
            loop,
            journal,
            targets,
            summary,
            progress=sys.stderr.isatty(),
            resubmit=args.resubmit,
        )
    finally:
        journal.close()
    again = (
        f" ({len(summary.resubmitted)} uploaded again, billed)"
        if summary.resubmitted
        else ""
    )
    print(
        f"fetched {len(summary.fetched)}{again}, skipped {len(summary.skipped)} "
        f"(results written already), failed {len(summary.failed)}"
    )
    for path, reason in sorted(summary.failed):
        print(f"  failed: {path}: {reason}")
    return summary.exit_code


def cmd_check(args: argparse.Namespace) -> int:
    source = config_path(args.config, os.environ)
    config, credentials = load_settings(source, os.environ)
    print(f"config: {source} (valid)")
    mode = (
        "trial (RecognizeImageTrial, no credentials)"
        if credentials is None
        else f"client_id {credentials.client_id}, secret found"
    )
    print(
        f"api: {config.api.base_url} token_url {config.api.resolved_token_url}; {mode}; concurrency {config.api.concurrency}"
    )
    print(f"state_dir: {config.state_dir}")
    for folder in config.folders:
        settings = resolve_profile(folder.profile, config.profiles).to_wire()
        watch = (
            f"polling every {folder.poll_interval:g}s" if folder.polling else "inotify"
        )
        exists = (
            ""
            if folder.path.is_dir()
            else "  (missing: will be watched once it appears)"
        )
        print(f"folder: {folder.path}{exists}")
        print(f"  profile: {folder.profile} {json.dumps(settings)}")
        fetch = resolve_fetch(folder.profile, config.profiles)
        if fetch.enabled or fetch.on_complete:
            hook = (
                f", on_complete {list(fetch.on_complete)}" if fetch.on_complete else ""
            )
            print(
                f"  results: {'fetched' if fetch.enabled else 'not fetched'}, "
                f"fetch_timeout {fetch.timeout_s:g}s{hook}"
            )
        print(
            f"  {watch}, {'recursive' if folder.recursive else 'top level only'}, settle {folder.settle_seconds:g}s"
        )
        print(f"  include {list(folder.include)} exclude {list(folder.exclude)}")
    if args.online:
        check_online(config, credentials)
    return 0


def check_online(config: Config, credentials: Credentials | None) -> None:
    """One token fetch, nothing billed: do the URL and the credentials work?

    Only one try: the token endpoint locks out credentials it refused several times.
    """
    from ocrwatch.client import OcrClient

    url = config.api.resolved_token_url
    try:
        checked = OcrClient(config.api, credentials).check_credentials()
    except ApiError as exc:
        print(f"online: failed at {url}", flush=True)
        # Exit 1: the config is valid, the service or the credentials are not.
        where = "" if url in str(exc) else f"{url}: "
        raise ApiError(f"check --online: {where}{exc}") from None
    if checked:
        print(f"online: {url} issued a token; the credentials work")
    else:
        print("online: trial mode has no credentials to check; nothing was sent")


def cmd_status(args: argparse.Namespace) -> int:
    from ocrwatch.report import format_failed, format_status, status_report

    config = load_config(config_path(args.config, os.environ))
    now = time.time()
    report = status_report(config, now, failed=args.failed)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        lines = format_failed(report) if args.failed else format_status(report, now)
        print("\n".join(lines))
    return 0


def cmd_retry(args: argparse.Namespace) -> int:
    from ocrwatch.requeue import retry, targets

    config = load_config(config_path(args.config, os.environ))
    if not journal_exists(config.journal_path):
        print(f"nothing to retry: no journal yet at {config.journal_path}")
        return 0
    journal = Journal(config.journal_path)
    try:
        done = retry(
            journal, targets(journal, args.paths, args.all_failed), time.time()
        )
    finally:
        journal.close()
    print(f"re-queued {len(done.requeued)}, not re-queued {len(done.skipped)}")
    for path in done.requeued:
        print(f"  re-queued: {path}")
    for path, why in done.skipped:
        print(f"  not re-queued: {path}: {why}")
    return 0


def cmd_emulator(args: argparse.Namespace) -> int:
    # Imported here: the test server is not part of what `run` loads.
    from ocrwatch.emulator import Faults

    faults = Faults(
        rate_503=args.fail_503,
        rate_429=args.fail_429,
        retry_after=args.retry_after,
        rate_drop=args.drop,
        rate_accept_drop=args.accept_drop,
        token_rate_429=args.token_429,
        rate_task_error=args.task_error,
        rate_task_lost=args.task_lost,
        task_warning=args.task_warning,
    )
    if (args.tls_cert is None) != (args.tls_key is None):
        raise ConfigError("--tls-cert and --tls-key go together; give both or neither")
    for flag, path in (("--tls-cert", args.tls_cert), ("--tls-key", args.tls_key)):
        if path is not None and not path.is_file():
            raise ConfigError(f"{flag}: {path} is not a file; give a PEM file")
    try:
        emulator = start_emulator(args, faults)
    except OSError as exc:
        raise ConfigError(
            f"emulator: cannot listen on {args.host}:{args.port} "
            f"({exc.strerror or exc}); choose another --port, or --port 0 for a free one"
        ) from None
    print(emulator.url, flush=True)

    def on_signal(signum: int, frame: object) -> None:
        # Shutting down from here would deadlock serve_forever; a helper thread does it.
        threading.Thread(target=emulator.stop, daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    emulator.serve_forever()
    return 0


def start_emulator(args: argparse.Namespace, faults: Faults) -> Emulator:
    from ocrwatch.emulator import Emulator

    return Emulator(
        host=args.host,
        port=args.port,
        client_id=args.client_id,
        client_secret=args.client_secret
        or os.environ.get("OCRWATCH_EMULATOR_SECRET", "emulator-secret"),
        token_ttl_s=args.token_ttl,
        latency_s=args.latency,
        pending_s=args.pending,
        processing_s=args.processing,
        faults=faults,
        bad_image=args.bad_image,
        empty_401=args.empty_401,
        seed=args.seed,
        log_path=args.log,
        tls=None if args.tls_cert is None else (args.tls_cert, args.tls_key),
    )


COMMANDS = {
    "run": cmd_run,
    "submit": cmd_submit,
    "check": cmd_check,
    "status": cmd_status,
    "retry": cmd_retry,
    "fetch": cmd_fetch,
    "emulator": cmd_emulator,
}
