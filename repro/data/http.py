"""Resumable HTTP downloads with retries, exponential backoff and mirror fallback (stdlib urllib).

`download(urls, dest)` writes `dest.part`, resuming it with an HTTP Range request when it
already holds bytes (a server that ignores the range restarts the file from zero), and renames
it to `dest` only when the server's announced length has arrived. Connection errors, truncated
bodies, timeouts and 5xx/408/429 answers are retried on the same URL after
`backoff_s * 2**k` seconds (capped at `max_backoff_s`); an attempt that made progress resets
the count. Other 4xx answers (404, 401, 403...) move on to the next URL at once. Checksums are
not this module's job (see `repro.data.checksums`).

A server that announces no length ends the transfer by closing the connection, whether the file
is complete or not. When the file's exact size is known (`exact_bytes`, from the catalogue), a
transfer that ends short of it is a cut transfer: retried like a dropped connection, and when
every URL gave up, `DownloadError` says `transfer cut at X of Y bytes; run the fetch again to
resume` and the `.part` file stays for the next attempt's Range request.
"""

from __future__ import annotations

import http.client
import os
import re
import socket
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable


from repro.errors import ReproError
from repro.util.progress import progress_bar

USER_AGENT = "repro-data/1 (+https://arxiv.org/abs/2401.17632 reproduction)"
_CHUNK = 1 << 20


class DownloadError(ReproError, RuntimeError):
    """Every URL of a file failed; the message lists each URL and why."""


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try one URL before the next mirror."""

    attempts: int = 5
    backoff_s: float = 2.0
    max_backoff_s: float = 120.0
    timeout_s: float = 60.0


class _Retryable(Exception):
    pass


class _Fatal(Exception):
    pass


def part_path(dest: Path) -> Path:
    """The in-progress file of a download."""
    return dest.with_name(dest.name + ".part")


def download(
    urls: list[str],
    dest: str | os.PathLike,
    *,
    policy: RetryPolicy = RetryPolicy(),
    expected_bytes: int | None = None,
    exact_bytes: int | None = None,
    progress: bool = True,
    sleep: Callable[[float], None] = time.sleep,
    log: Callable[[str], None] = print,
) -> str:
    """Download the first URL that works to `dest`; returns that URL.

    Args:
        urls: the file's URL and its mirrors, tried in order.
        dest: final path; the bytes go to `dest.part` until complete.
        expected_bytes: size for the progress bar when the server does not announce one.
        exact_bytes: the file's exact size when known: a transfer without an announced length
            that ends before it is cut (retried, resumed), not complete.
        sleep: how to wait between retries (tests pass a no-op).

    Raises:
        DownloadError: no URL delivered the complete file.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = part_path(dest)
    failures: list[str] = []
    for url in urls:
        errors = 0
        while True:
            have = part.stat().st_size if part.exists() else 0
            try:
                _fetch_once(url, part, have, policy.timeout_s, exact_bytes or expected_bytes, progress, dest.name,
                            exact_bytes)
            except _Fatal as err:
                failures.append(f"{url}: {err}")
                log(f"  {dest.name}: {url} failed ({err})")
                break
            except _Retryable as err:
                now = part.stat().st_size if part.exists() else 0
                errors = 0 if now > have else errors + 1
                if errors >= policy.attempts:
                    failures.append(f"{url}: {err} ({policy.attempts} attempts)")
                    log(f"  {dest.name}: giving up on {url} after {policy.attempts} attempts ({err})")
                    break
                wait = min(policy.max_backoff_s, policy.backoff_s * 2 ** max(errors - 1, 0))
                log(f"  {dest.name}: {err}; resuming at byte {now:,} in {wait:.0f} s")
                sleep(wait)
                continue
            os.replace(part, dest)
            return url
    have = part.stat().st_size if part.exists() else 0
    if exact_bytes is not None and 0 < have < exact_bytes:
        raise DownloadError(
            f"{dest.name}: transfer cut at {have:,} of {exact_bytes:,} bytes; run the fetch again to resume "
            f"(the partial file {part} is kept; " + "; ".join(failures) + ")")
    raise DownloadError(
        f"{dest.name}: could not download from any URL:\n    " + "\n    ".join(failures)
        + f"\n  The partial file (if any) is kept at {part} and resumed next time."
    )


def _fetch_once(url: str, part: Path, have: int, timeout: float, expected: int | None, progress: bool,
                desc: str, exact: int | None = None) -> int:
    """One HTTP request; appends to `part` and returns its final size, or raises _Retryable/_Fatal.
    `exact`: the file's known size, the end to reach when the server announces none."""
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
    req = urllib.request.Request(url, headers=headers)
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:
            total = _range_total(err.headers.get("Content-Range"))
            if total == have:  # the part file already holds the whole file
                return have
            part.unlink(missing_ok=True)
            raise _Retryable("the server refused to resume (HTTP 416); starting again from zero") from err
        if err.code in (408, 429) or err.code >= 500:
            raise _Retryable(f"HTTP {err.code}") from err
        hint = " (this host may require registration)" if err.code in (401, 403) else ""
        raise _Fatal(f"HTTP {err.code} {err.reason}{hint}") from err
    except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
        reason = getattr(err, "reason", err)
        raise _Retryable(f"connection failed ({reason})") from err
    with resp:
        if have and resp.status == 206:
            start = _range_start(resp.headers.get("Content-Range"))
            if start != have:
                part.unlink(missing_ok=True)
                raise _Retryable(f"the server resumed at byte {start}, not {have}; starting again from zero")
            total = _range_total(resp.headers.get("Content-Range"))
            mode = "ab"
        else:
            have = 0  # a 200 answer carries the whole file
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            mode = "wb"
        size = have
        bar = progress_bar(total=total or expected, initial=have, unit="B", unit_scale=True, unit_divisor=1024,
                   desc=desc, disable=not progress, leave=False)
        try:
            with open(part, mode) as f:
                while True:
                    try:
                        chunk = resp.read(_CHUNK)
                    except (OSError, http.client.HTTPException, socket.timeout) as err:
                        raise _Retryable(f"connection dropped at byte {size:,} ({type(err).__name__})") from err
                    if not chunk:
                        break
                    f.write(chunk)
                    size += len(chunk)
                    bar.update(len(chunk))
        finally:
            bar.close()
    if total is not None and size < total:
        raise _Retryable(f"connection dropped at byte {size:,} of {total:,}")
    if total is None and exact is not None and size < exact:
        raise _Retryable(f"transfer cut at {size:,} of {exact:,} bytes (the server announced no length)")
    if total is not None and size > total:
        part.unlink(missing_ok=True)
        raise _Retryable(f"received {size:,} bytes, more than the announced {total:,}; starting again")
    return size


_RANGE = re.compile(r"bytes\s+(\d+|\*)-?(\d*)/(\d+|\*)")


def _range_start(header: str | None) -> int | None:
    m = _RANGE.match(header or "")
    return int(m.group(1)) if m and m.group(1) != "*" else None


def _range_total(header: str | None) -> int | None:
    m = _RANGE.match(header or "")
    return int(m.group(3)) if m and m.group(3) != "*" else None
