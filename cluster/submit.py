"""Submit a ``dcgan`` command to a running Ray cluster through the Ray Jobs API.

    python -m dcgan_cluster.submit --address http://127.0.0.1:8265 -- \
        dcgan train-distributed --out /storage/runs/mnist --workers 2 --storage /storage/ray

The command runs on the head node as the job's driver (so ``train-distributed`` and ``tune``
find the cluster through the RAY_ADDRESS the job gets, and their metrics endpoint lives on
the head). Logs stream here; the exit status is the job's. Token authentication: set
RAY_AUTH_TOKEN (``make cluster-up`` writes it to cluster/.env) or keep it in
~/.ray/auth_token.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import shlex
import socket
import sys
import time
from urllib.parse import urlparse

from dcgan.errors import error_line, first_line

CONNECT_TIMEOUT_S = 5.0
FINISHED = ("SUCCEEDED", "FAILED", "STOPPED")


class SubmitError(Exception):
    pass


HEARTBEAT_S = 3.0  # how often the head is probed while the job's log is followed
LOST_AFTER_S = 30.0  # the head unreachable this long: stop following, say so in one line


class LostContact(SubmitError):
    """The head stopped answering while the job was followed (the job may still run)."""


def check_reachable(address: str) -> None:
    """A one-line error within seconds when nothing answers at ``address``."""
    parsed = urlparse(address)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise SubmitError(f"--address {address!r}: give the Ray dashboard URL, e.g. "
                          "http://127.0.0.1:8265")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        raise SubmitError(f"no Ray cluster answers at {address} ({exc.strerror or exc}); "
                          "start one (make cluster-up) or check --address") from None


def _client(address: str):
    from ray.job_submission import JobSubmissionClient

    # The SDK logs its websocket's life at INFO on stderr: keep stderr for our one-line error.
    logging.getLogger("ray.dashboard.modules.job.sdk").setLevel(logging.WARNING)

    try:
        return JobSubmissionClient(address)
    except Exception as exc:  # noqa: BLE001 - Ray raises plain exceptions here
        raise SubmitError(f"the Ray cluster at {address} refused the connection: "
                          f"{first_line(exc, limit=300)}") from None


async def _stream(client, job_id: str, errors: list[str]) -> None:
    async for lines in client.tail_job_logs(job_id):
        print(lines, end="", flush=True)
        errors += [line for line in lines.splitlines() if line.startswith("error: ")]


def _answers(address: str) -> str | None:
    """None when the head's dashboard port accepts a connection, else why not."""
    parsed = urlparse(address)
    try:
        with socket.create_connection((parsed.hostname, parsed.port or 80),
                                      timeout=HEARTBEAT_S):
            return None
    except OSError as exc:
        return exc.strerror or str(exc) or type(exc).__name__


async def _follow(client, job_id: str, errors: list[str], address: str,
                  lost_after: float) -> None:
    """The job's log, while the head answers: a cut link leaves the log's websocket silent
    for as long as TCP retries, so the head is probed beside it and, after ``lost_after``
    seconds without an answer, following stops with ``LostContact``."""
    stream = asyncio.ensure_future(_stream(client, job_id, errors))
    lost_since: float | None = None
    try:
        while not stream.done():
            await asyncio.wait({stream}, timeout=HEARTBEAT_S)
            if stream.done():
                break
            why = await asyncio.to_thread(_answers, address)
            if why is None:
                lost_since = None
                continue
            lost_since = lost_since or time.monotonic() - HEARTBEAT_S
            if time.monotonic() - lost_since >= lost_after:
                raise LostContact(f"lost contact with the Ray head at {address} for "
                                  f"{lost_after:g} s ({why}); job {job_id} keeps running "
                                  "there if the head is up: follow it again with `ray job "
                                  f"logs --follow {job_id} --address {address}`, or rerun "
                                  "the same command with --resume if it stopped")
        stream.result()
    finally:
        stream.cancel()


def _status(client, job_id: str, address: str, lost_after: float):
    """The job's status, refusing to hang on a head that stopped answering."""
    deadline = time.monotonic() + lost_after
    while True:
        why = _answers(address)
        if why is None:
            return client.get_job_status(job_id)
        if time.monotonic() > deadline:
            raise LostContact(f"lost contact with the Ray head at {address} ({why}) before "
                              f"job {job_id} finished; `ray job status {job_id} --address "
                              f"{address}` tells how it ended")
        time.sleep(1)


def submit(address: str, command: list[str], env: dict[str, str] | None = None,
           follow: bool = True, lost_after: float = LOST_AFTER_S) -> int:
    check_reachable(address)
    client = _client(address)
    runtime_env = {"env_vars": env} if env else None
    job_id = client.submit_job(entrypoint=shlex.join(command), runtime_env=runtime_env)
    print(f"Submitted job {job_id} to {address}: {shlex.join(command)}", flush=True)
    if not follow:
        return 0
    errors: list[str] = []  # dcgan's own one-line errors, from the job's log
    try:
        asyncio.run(_follow(client, job_id, errors, address, lost_after))
    except KeyboardInterrupt:
        print(f"\nStopped following; the job keeps running (ray job stop {job_id} "
              f"--address {address} stops it)", file=sys.stderr)
        return 130
    status = _status(client, job_id, address, lost_after)
    while str(status) not in FINISHED and status.value not in FINISHED:
        time.sleep(1)
        status = _status(client, job_id, address, lost_after)
    state = status.value if hasattr(status, "value") else str(status)
    if state != "SUCCEEDED":
        reason = errors[-1][len("error: "):] if errors else \
            (client.get_job_info(job_id).message or "").strip()[:300]
        print(f"error: job {job_id} {state.lower()}: {reason}", file=sys.stderr)
        return 1
    print(f"Job {job_id} succeeded", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dcgan_cluster.submit", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--address", required=True, help="the Ray dashboard URL (Jobs API)")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                   help="environment variable for the job (repeatable)")
    p.add_argument("--no-follow", action="store_true", help="submit and return")
    p.add_argument("--lost-after", type=float, default=LOST_AFTER_S, metavar="SECONDS",
                   help="stop following when the head has not answered for this long "
                        f"(default {LOST_AFTER_S:g}; the job itself keeps running)")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- dcgan ...")
    args = p.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        print("error: give the command to run after --", file=sys.stderr)
        return 2
    env = dict(pair.split("=", 1) for pair in args.env if "=" in pair)
    try:
        if not args.lost_after > 0:
            raise SubmitError(f"--lost-after must be > 0 (got {args.lost_after:g})")
        return submit(args.address, command, env, follow=not args.no_follow,
                      lost_after=args.lost_after)
    except SubmitError as exc:
        print(error_line(exc), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
