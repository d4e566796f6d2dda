

def test_a_python_without_fts5_is_refused_with_what_to_do(monkeypatch):
    """An SQLite built without FTS5 cannot be made here: its refusal to create the table is simulated."""
    import sqlite3

    from twisted.python import usage

    from fulabd import tap
    from fulabd.index import sqlite

    real_connect = sqlite3.connect

    class NoFts5:
        def __init__(self, *args, **kwargs):
            self.connection = real_connect(*args, **kwargs)

        def execute(self, sql, *args):
            if "fts5" in sql:
                raise sqlite3.OperationalError("no such module: fts5")
            return self.connection.execute(sql, *args)

        def close(self):
            self.connection.close()

    monkeypatch.setattr(sqlite.sqlite3, "connect", NoFts5)
    with pytest.raises(sqlite.FTS5Missing, match="--no-index"):
        sqlite.check_fts5()
    with pytest.raises(usage.UsageError, match="without FTS5"):
        tap.Options().parseOptions([])
    options = tap.Options()
    options.parseOptions(["--no-index"])
    assert options["no-index"]
