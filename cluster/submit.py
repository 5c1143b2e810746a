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

from dcgan.errors import first_line

CONNECT_TIMEOUT_S = 5.0
FINISHED = ("SUCCEEDED", "FAILED", "STOPPED")


class SubmitError(Exception):
    pass


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


def submit(address: str, command: list[str], env: dict[str, str] | None = None,
           follow: bool = True) -> int:
    check_reachable(address)
    client = _client(address)
    runtime_env = {"env_vars": env} if env else None
    job_id = client.submit_job(entrypoint=shlex.join(command), runtime_env=runtime_env)
    print(f"Submitted job {job_id} to {address}: {shlex.join(command)}", flush=True)
    if not follow:
        return 0
    errors: list[str] = []  # dcgan's own one-line errors, from the job's log
    try:
        asyncio.run(_stream(client, job_id, errors))
    except KeyboardInterrupt:
        print(f"\nStopped following; the job keeps running (ray job stop {job_id} "
              f"--address {address} stops it)", file=sys.stderr)
        return 130
    status = client.get_job_status(job_id)
    while str(status) not in FINISHED and status.value not in FINISHED:
        time.sleep(1)
        status = client.get_job_status(job_id)
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
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- dcgan ...")
    args = p.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        print("error: give the command to run after --", file=sys.stderr)
        return 2
    env = dict(pair.split("=", 1) for pair in args.env if "=" in pair)
    try:
        return submit(args.address, command, env, follow=not args.no_follow)
    except SubmitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
