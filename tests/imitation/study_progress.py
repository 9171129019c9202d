"""Reading a study's database while another process is still writing it."""
import sqlite3


def statuses_so_far(database):
    """Run statuses recorded so far; empty until the schema exists or while a writer holds the lock."""
    if not database.exists():
        return {}
    try:
        with sqlite3.connect(database) as db:
            return dict(db.execute("SELECT run_id, status FROM runs").fetchall())
    except sqlite3.OperationalError:  # no such table yet, or database is locked
        return {}
