"""The fleet collector: a C2SP tlog-witness for every enrolled host's audit log, over SQLite or PostgreSQL.

    db.py       the schema (SQLAlchemy Core) and its versioned migrations
    witness.py  add-checkpoint: parse, authenticate, prove, compare-and-swap, cosign; evidence and alerts
    app.py      the HTTP interface (Starlette on uvicorn) with its limits
    client.py   the host side (standard library only): send a checkpoint, keep the cosignatures

Only the collector imports the web and database stack; hosts import `client` alone (import-linter holds it).
"""
