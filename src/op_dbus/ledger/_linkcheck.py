"""Header, link and record checks of an audit log database; standard library only, so it can run as its own process.

    python -I _linkcheck.py LEDGER_DB BUSY_TIMEOUT
    -> JSON {"problems": [[index, message], ...], "suppressed": n, "first_bad": index}

For every block: no gap before it, its header is a JSON object naming its own index, its `prev` is
the SHA-256 of the previous leaf, the kind/time lookup columns agree with it, and the changes and
state records it names are stored and hash to their names (or were compacted). The tree and the
checkpoints are checked by the caller, in parallel.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import sys
from typing import Any

ZERO_HASH = "0" * 64
LIMIT = 50


def _as_bytes(value: object) -> bytes:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass")
    return str(value).encode()


class _Found:
    def __init__(self) -> None:
        self.items: list[tuple[int | None, str]] = []
        self.suppressed = 0
        self.first_bad: int | None = None

    def add(self, index: int | None, message: str) -> None:
        if index is not None and (self.first_bad is None or index < self.first_bad):
            self.first_bad = index
        if len(self.items) < LIMIT:
            self.items.append((index, message))
        else:
            self.suppressed += 1


def check(db_path: str, busy_timeout: float) -> dict[str, Any]:
    conn = sqlite3.connect(db_path, timeout=busy_timeout, isolation_level=None)
    conn.execute("PRAGMA query_only = ON")
    sha256 = hashlib.sha256
    found = _Found()
    try:
        conn.execute("BEGIN")
        good: set[str] = set()
        compacted: set[str] = set()
        bad: set[str] = set()
        for name, data in conn.execute("SELECT lower(hex(hash)), data FROM blobs"):
            if data is None:
                compacted.add(name)
            elif sha256(data if type(data) is bytes else _as_bytes(data)).hexdigest() == name:
                good.add(name)
            else:
                bad.add(name)

        decode = json.JSONDecoder().decode
        prev = ZERO_HASH
        expected = 0
        cursor = conn.execute("SELECT idx, leaf, kind, time FROM blocks ORDER BY idx")
        while rows := cursor.fetchmany(8192):
            for idx, leaf, kind_col, time_col in rows:
                if idx != expected:
                    gap = f"{expected}" if idx == expected + 1 else f"{expected} to {idx - 1}"
                    found.add(expected, f"block {gap} missing: the stored blocks jump from {expected - 1} to {idx}")
                expected = idx + 1
                if type(leaf) is not bytes:
                    leaf = _as_bytes(leaf)
                try:
                    header = decode(leaf.decode())
                except (ValueError, UnicodeDecodeError):
                    header = None
                if type(header) is not dict:
                    found.add(idx, f"block {idx}: the header is not a JSON object")
                    prev = sha256(leaf).hexdigest()
                    continue
                get = header.get
                if get("index") != idx:
                    found.add(idx, f"block {idx}: holds the header of block {get('index')} (blocks swapped or moved)")
                if get("prev") != prev:
                    found.add(idx, f"block {idx}: 'prev' is not the hash of the block before it")
                if get("kind") != kind_col or get("time") != time_col:
                    found.add(idx, f"block {idx}: the kind/time index columns disagree with the header")
                changes, state = get("changes_hash"), get("state_hash")
                if changes not in good and changes not in compacted:
                    what = "does not match the hash in the header (edited)" if changes in bad else "is missing"
                    found.add(idx, f"block {idx}: its changes record {what}")
                if state not in good and state not in compacted:
                    what = "does not match the hash in the header (edited)" if state in bad else "is missing"
                    found.add(idx, f"block {idx}: its state record {what}")
                prev = sha256(leaf).hexdigest()
        conn.execute("COMMIT")
    finally:
        conn.close()
    return {"problems": found.items, "suppressed": found.suppressed, "first_bad": found.first_bad}


def main(argv: list[str]) -> int:
    try:
        result = check(argv[1], float(argv[2]))
    except sqlite3.Error as exc:
        sys.stderr.write(str(exc))
        return 3
    sys.stdout.write(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
