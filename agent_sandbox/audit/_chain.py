"""The hash chain of JSONL audit files: how a record is hashed, and checking a file."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._log import canonical_json, sha256_hex

GENESIS_HASH = "0" * 64
"""``prev_hash`` of the first record of a chain."""


def record_hash(prev_hash: str, record: Mapping[str, Any]) -> str:
    body = {k: v for k, v in record.items() if k != "hash"}
    return sha256_hex(prev_hash + canonical_json(body))


def last_hash(fd: int) -> str:
    """The ``hash`` of the last complete line of an open file (genesis when empty)."""
    size = os.fstat(fd).st_size
    if size == 0:
        return GENESIS_HASH
    block = 4096
    offset = size
    tail = b""
    while offset > 0:
        step = min(block, offset)
        offset -= step
        tail = os.pread(fd, step, offset) + tail
        lines = tail.rstrip(b"\n").split(b"\n")
        if len(lines) > 1 or offset == 0:
            last = lines[-1]
            break
        block *= 2
    try:
        value = json.loads(last)["hash"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"the audit file's last line is not a chained record: {exc}") from exc
    if not isinstance(value, str):
        raise ValueError("the audit file's last record has no hash")
    return value


@dataclass(frozen=True)
class VerifyReport:
    """The outcome of :func:`verify_chain`.

    Attributes:
        ok: every line parsed and chained.
        records: how many records were checked and found good.
        bad_line: 1-based number of the first bad line (``None`` when ok).
        reason: what is wrong with it.
        last_hash: the hash of the last good record (anchor it elsewhere to detect truncation).
    """

    ok: bool
    records: int
    bad_line: int | None = None
    reason: str = ""
    last_hash: str = GENESIS_HASH

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "ok": self.ok,
            "records": self.records,
            "bad_line": self.bad_line,
            "reason": self.reason,
            "last_hash": self.last_hash,
        }


def verify_chain(path: str | Path, *, expect_last_hash: str | None = None) -> VerifyReport:
    """Check the hash chain of a JSONL audit file.

    Every line must be JSON with ``prev_hash`` equal to the previous line's ``hash`` (64 zeros
    on the first line) and ``hash`` recomputing from it. ``expect_last_hash`` (a hash noted
    elsewhere earlier) also catches lines cut off the end.

    Raises:
        FileNotFoundError: no such file.
    """
    prev = GENESIS_HASH
    count = 0
    seen_anchor = expect_last_hash is None
    with open(path, "rb") as fh:
        for number, raw in enumerate(fh, start=1):
            if not raw.endswith(b"\n"):
                return VerifyReport(False, count, number, "incomplete last line", prev)
            try:
                record = json.loads(raw)
            except ValueError as exc:
                return VerifyReport(False, count, number, f"not JSON: {exc}", prev)
            if not isinstance(record, dict) or "hash" not in record or "prev_hash" not in record:
                return VerifyReport(False, count, number, "no prev_hash/hash fields", prev)
            if record["prev_hash"] != prev:
                return VerifyReport(
                    False,
                    count,
                    number,
                    "prev_hash does not match the previous record's hash "
                    "(a record was removed, inserted or reordered)",
                    prev,
                )
            if record_hash(prev, record) != record["hash"]:
                return VerifyReport(
                    False, count, number, "hash mismatch (the record was modified)", prev
                )
            prev = record["hash"]
            count += 1
            if prev == expect_last_hash:
                seen_anchor = True
    if not seen_anchor:
        return VerifyReport(
            False, count, None, "the expected last hash is not in the file (truncated?)", prev
        )
    return VerifyReport(True, count, None, "", prev)


def verify_main(argv: Sequence[str]) -> int:
    """``agent-sandbox audit verify FILE [--json] [--expect-hash H]``: 0 ok, 1 broken, 2 error."""
    parser = argparse.ArgumentParser(
        prog="agent-sandbox audit verify", description="Check the hash chain of an audit log."
    )
    parser.add_argument("file", help="the JSONL audit file")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument(
        "--expect-hash", help="a last hash noted earlier; its absence means truncation"
    )
    args = parser.parse_args(list(argv))
    try:
        report = verify_chain(args.file, expect_last_hash=args.expect_hash)
    except OSError as exc:
        message = f"cannot read {args.file}: {exc.strerror or exc}"
        if args.json:
            print(json.dumps({"ok": False, "error": message}))
        else:
            print(f"agent-sandbox: {message}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report.to_dict()))
    elif report.ok:
        print(f"OK: {report.records} records, chain intact; last hash {report.last_hash}")
    else:
        where = f"line {report.bad_line}" if report.bad_line is not None else "end of file"
        print(
            f"BROKEN at {where}: {report.reason} ({report.records} good records before it)",
        )
    return 0 if report.ok else 1
