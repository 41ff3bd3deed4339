"""The results store: one durable SQLite row per measurement.

Durability is the point (docs/design.md, "Contracts"): `add` commits (WAL,
synchronous=FULL) before it returns, so a crash loses at most the measurement in flight,
and a UNIQUE key per campaign lets `--resume` skip what is already stored.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import UserError
from .records import BOARD_STATES, BoardState, CorruptionRun, GridRun, Measurement, TrainingRun

if TYPE_CHECKING:
    import pandas as pd
    from _typeshed import DataclassInstance

SCHEMA_VERSION = 4  # 2: measurements.pad_value; 3: measurement_series, measurement_counts, campaign_progress;
# 4: measurements.emulated
FILENAME = "results.sqlite"
LATENCY_KEYS = ("min", "median", "mean", "p90", "p99", "std", "max")
AGENT_KEYS = ("cpu_model", "machine", "cores")
DONE_STATUSES = ("ok", "unsupported")  # what --resume skips; failures are retried
FLAG_COLUMNS = ("forced", "emulated")  # booleans, stored as 0/1

# (column, SQL type) in table order; `extra` keeps latency/agent keys beyond the named columns.
COLUMNS: tuple[tuple[str, str], ...] = (
    ("campaign", "TEXT NOT NULL"),
    ("board", "TEXT NOT NULL"),
    ("chip", "TEXT NOT NULL"),
    ("arch", "TEXT NOT NULL"),
    ("algorithm", "TEXT NOT NULL"),
    ("runtime", "TEXT NOT NULL"),
    ("threads", "INTEGER NOT NULL"),
    ("pad_value", "REAL NOT NULL DEFAULT 0"),
    ("status", "TEXT NOT NULL"),
    ("reason", "TEXT NOT NULL"),
    *((f"latency_{k}_ms", "REAL") for k in LATENCY_KEYS),
    ("runs", "INTEGER NOT NULL"),
    ("warmup", "INTEGER NOT NULL"),
    ("model_sha256", "TEXT NOT NULL"),
    ("model_bytes", "INTEGER NOT NULL"),
    ("fp32_model_bytes", "INTEGER NOT NULL"),
    ("speedup_vs_fp32", "REAL"),
    ("fp32_runtime", "TEXT NOT NULL DEFAULT ''"),
    ("storage_ratio", "REAL"),
    ("max_abs_err", "REAL"),
    ("peak_rss_bytes", "INTEGER NOT NULL"),
    ("runtime_version", "TEXT NOT NULL"),
    ("agent_version", "TEXT NOT NULL"),
    *((f"agent_{k}", "INTEGER" if k == "cores" else "TEXT") for k in AGENT_KEYS),
    ("forced", "INTEGER NOT NULL"),
    ("emulated", "INTEGER NOT NULL DEFAULT 0"),
    ("created_at", "REAL NOT NULL"),
    ("samples_ms", "TEXT NOT NULL"),
    ("extra", "TEXT NOT NULL"),
)
KEY_COLUMNS = ("campaign", "board", "arch", "algorithm", "runtime", "threads")
_NAMES = [c for c, _ in COLUMNS]
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS measurements (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    {", ".join(f"{c} {t}" for c, t in COLUMNS)},
    UNIQUE ({", ".join(KEY_COLUMNS)})
);
CREATE INDEX IF NOT EXISTS measurements_board ON measurements (board, created_at);
CREATE INDEX IF NOT EXISTS measurements_series ON measurements
    (board, arch, algorithm, runtime, threads, created_at);
CREATE TABLE IF NOT EXISTS measurement_series (
    board TEXT NOT NULL,
    arch TEXT NOT NULL,
    algorithm TEXT NOT NULL,
    runtime TEXT NOT NULL,
    threads INTEGER NOT NULL,
    last_id INTEGER,
    last_ok_id INTEGER,
    prev_ok_id INTEGER,
    PRIMARY KEY (board, arch, algorithm, runtime, threads)
);
CREATE TABLE IF NOT EXISTS campaign_progress (
    campaign TEXT NOT NULL,
    board TEXT NOT NULL,
    kind TEXT NOT NULL,
    planned INTEGER NOT NULL,
    done INTEGER NOT NULL,
    failed INTEGER NOT NULL,
    started_at REAL NOT NULL,
    last_progress_at REAL NOT NULL,
    finished_at REAL,
    PRIMARY KEY (campaign, board, kind)
);
CREATE TABLE IF NOT EXISTS measurement_counts (
    board TEXT NOT NULL,
    status TEXT NOT NULL,
    filed INTEGER NOT NULL,
    PRIMARY KEY (board, status)
);
CREATE TABLE IF NOT EXISTS training_runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    task TEXT NOT NULL, arch TEXT NOT NULL, algorithm TEXT NOT NULL, scale TEXT NOT NULL,
    seed INTEGER NOT NULL, config_hash TEXT NOT NULL, data_version TEXT NOT NULL,
    data_source TEXT NOT NULL, metric_name TEXT NOT NULL, metric REAL NOT NULL, epochs INTEGER NOT NULL,
    train_seconds REAL NOT NULL, device TEXT NOT NULL, threads INTEGER NOT NULL, config TEXT NOT NULL,
    host TEXT NOT NULL, created_at REAL NOT NULL,
    UNIQUE (task, arch, algorithm, scale, seed, config_hash, data_version)
);
CREATE TABLE IF NOT EXISTS corruption_runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    task TEXT NOT NULL, arch TEXT NOT NULL, algorithm TEXT NOT NULL, scale TEXT NOT NULL,
    seed INTEGER NOT NULL, config_hash TEXT NOT NULL, data_version TEXT NOT NULL,
    corruption_source TEXT NOT NULL, corruption_version TEXT NOT NULL, corruption TEXT NOT NULL,
    severity INTEGER NOT NULL, n_images INTEGER NOT NULL, metric REAL NOT NULL, device TEXT NOT NULL,
    host TEXT NOT NULL, created_at REAL NOT NULL,
    UNIQUE (task, arch, algorithm, scale, seed, config_hash, data_version, corruption_version, corruption, severity)
);
CREATE TABLE IF NOT EXISTS grid_runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    task TEXT NOT NULL, arch TEXT NOT NULL, algorithm TEXT NOT NULL, setting TEXT NOT NULL,
    optimizer TEXT NOT NULL, lr REAL NOT NULL, schedule TEXT NOT NULL, scale TEXT NOT NULL,
    seed INTEGER NOT NULL, recipe_hash TEXT NOT NULL, data_version TEXT NOT NULL, data_source TEXT NOT NULL,
    status TEXT NOT NULL, metric REAL, epochs INTEGER NOT NULL, train_seconds REAL NOT NULL,
    seconds_per_epoch REAL NOT NULL, worker TEXT NOT NULL, executor TEXT NOT NULL, attempts INTEGER NOT NULL,
    error TEXT NOT NULL, created_at REAL NOT NULL,
    UNIQUE (task, arch, algorithm, setting, scale, seed, recipe_hash, data_version)
);
CREATE TABLE IF NOT EXISTS board_health (
    board TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    reason TEXT NOT NULL,
    since REAL NOT NULL
);
"""


class DuplicateMeasurement(UserError):
    """The campaign already holds a successful row for this key: resume it, or start a new campaign."""


class ResultsSchemaError(UserError):
    """The file was written by a newer bihost; refusing to read (or corrupt) it."""


class ResultsStore:
    """`<directory>/results.sqlite`; safe to share between processes (each call opens its own connection)."""

    def __init__(self, directory: Path | str, timeout: float = 30.0):
        self.directory = Path(directory)
        self.path = self.directory / FILENAME
        self.timeout = timeout
        self.directory.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")  # persistent: readers never block the writer
            db.execute("BEGIN IMMEDIATE")
            db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            version = db.execute("SELECT MAX(version) FROM schema_version").fetchone()[0]
            if version is not None and version > SCHEMA_VERSION:
                raise ResultsSchemaError(
                    f"{self.path} has results schema version {version}, this bihost reads up to "
                    f"{SCHEMA_VERSION}: upgrade bihost"
                )
            for stmt in filter(str.strip, _SCHEMA.split(";")):
                db.execute(stmt)
            # Columns added since version 1 (a store written before them gets their defaults).
            have = {r[1] for r in db.execute("PRAGMA table_info(measurements)")}
            for name, sql_type in COLUMNS:
                if name not in have:
                    db.execute(f"ALTER TABLE measurements ADD COLUMN {name} {sql_type}")
            if version is not None and version < 3:  # index what the older store holds, once
                _rebuild_series(db)
            if version is None:
                db.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
            elif version < SCHEMA_VERSION:
                db.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION,))
            db.execute("COMMIT")

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        # A connection per call: the metrics server reads from its own threads, the scheduler writes.
        db = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)
        try:
            db.execute("PRAGMA synchronous=FULL")
            yield db
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        finally:
            db.close()

    def add(self, m: Measurement) -> None:
        """Store `m`, committed on return. A stored non-"ok" row with the same key is replaced (a retry).

        A zero `created_at` is stored as the time of the call: "latest row wins" needs an order.
        """
        values = _flatten(m)
        key = [values[c] for c in KEY_COLUMNS]
        where = " AND ".join(f"{c} = ?" for c in KEY_COLUMNS)
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")  # the check and the write are one atomic step
            old = db.execute(f"SELECT status FROM measurements WHERE {where}", key).fetchone()
            if old is not None and old[0] == "ok":
                db.execute("ROLLBACK")
                raise DuplicateMeasurement(
                    f"campaign {m.campaign} already has an ok result for board {m.board}, {m.arch}/"
                    f"{m.algorithm} on {m.runtime} with {m.threads} threads: use --resume or a new campaign"
                )
            if old is not None:
                db.execute(f"DELETE FROM measurements WHERE {where}", key)
            db.execute(
                f"INSERT INTO measurements ({', '.join(_NAMES)}) VALUES ({', '.join('?' * len(_NAMES))})",
                [values[c] for c in _NAMES],
            )
            _refresh_series(db, [values[c] for c in SERIES_COLUMNS])
            db.execute(
                "INSERT INTO measurement_counts (board, status, filed) VALUES (?, ?, 1) "
                "ON CONFLICT(board, status) DO UPDATE SET filed = filed + 1",
                (m.board, m.status),
            )
            db.execute("COMMIT")

    def latest_series(self) -> list[Series]:
        """Per (board, arch, algorithm, runtime, threads), whatever its campaign: the newest row, the
        newest ok row and the ok row before it. Reads one row per series (an index kept on write), never the history,
        and leaves raw samples out: what a scrape needs, at a cost that does not grow with time."""
        columns = ", ".join(f"m.{c}" for c in _NAMES if c != "samples_ms")
        found: dict[tuple, dict[str, Measurement]] = {}
        with self._connect() as db:
            db.row_factory = sqlite3.Row
            for which in ("last_id", "last_ok_id", "prev_ok_id"):
                for r in db.execute(
                    f"SELECT {columns}, '[]' AS samples_ms FROM measurement_series s "
                    f"JOIN measurements m ON m.id = s.{which} ORDER BY m.created_at, m.id"
                ):
                    m = _unflatten(dict(r))
                    found.setdefault((m.board, m.arch, m.algorithm, m.runtime, m.threads), {})[which] = m
        return [
            Series(d["last_id"], d.get("last_ok_id"), d.get("prev_ok_id"))
            for d in found.values()
            if "last_id" in d
        ]

    # -- campaign progress (what a running `profile` or `bench` has planned and done) ---------
    def start_campaign(self, campaign: str, board: str, kind: str, planned: int, done: int = 0) -> None:
        """Record a campaign's plan on one board as it starts (or resumes: `done` already stored)."""
        now = time.time()
        with self._connect() as db:
            db.execute(
                "INSERT INTO campaign_progress (campaign, board, kind, planned, done, failed, started_at, "
                "last_progress_at, finished_at) VALUES (?, ?, ?, ?, ?, 0, ?, ?, NULL) "
                "ON CONFLICT(campaign, board, kind) DO UPDATE SET planned = excluded.planned, "
                "done = excluded.done, failed = 0, started_at = excluded.started_at, "
                "last_progress_at = excluded.last_progress_at, finished_at = NULL",
                (campaign, board, kind, planned, done, now, now),
            )

    def campaign_step(self, campaign: str, board: str, kind: str, ok: bool) -> None:
        """One planned item finished (ok: stored as done; else it failed and a re-run retries it)."""
        column = "done" if ok else "failed"
        with self._connect() as db:
            db.execute(
                f"UPDATE campaign_progress SET {column} = {column} + 1, last_progress_at = ? "
                "WHERE campaign = ? AND board = ? AND kind = ?",
                (time.time(), campaign, board, kind),
            )

    def finish_campaign(self, campaign: str, board: str, kind: str) -> None:
        with self._connect() as db:
            db.execute(
                "UPDATE campaign_progress SET finished_at = ? WHERE campaign = ? AND board = ? AND kind = ?",
                (time.time(), campaign, board, kind),
            )

    def campaign_progress(self) -> list[CampaignProgress]:
        """Every unfinished campaign (running, or its process died) and the newest finished one
        per (board, kind): what a farm view shows, bounded by boards, not by history."""
        with self._connect() as db:
            rows = db.execute(
                "SELECT campaign, board, kind, planned, done, failed, started_at, last_progress_at, "
                "finished_at FROM campaign_progress WHERE finished_at IS NULL OR rowid IN ("
                "SELECT rowid FROM campaign_progress p WHERE finished_at IS NOT NULL AND finished_at = ("
                "SELECT MAX(finished_at) FROM campaign_progress q WHERE q.board = p.board AND q.kind = p.kind)) "
                "ORDER BY started_at"
            ).fetchall()
        return [CampaignProgress(*r) for r in rows]

    def measurement_counts(self) -> dict[tuple[str, str], int]:
        """(board, status) -> measurements ever filed: only rises (a retry replacing a failed row
        still counts both), so it is exported as a counter."""
        with self._connect() as db:
            rows = db.execute("SELECT board, status, filed FROM measurement_counts ORDER BY board, status")
            return {(b, st): n for b, st, n in rows}

    # -- training runs (the accuracy tracks) ----------------------------------------------
    def add_training_run(self, run: TrainingRun) -> None:
        """Store a finished training run, committed on return; the same key again replaces it
        (a run retrained on purpose), never duplicates it."""
        d = run.as_dict()
        d["config"] = json.dumps(d["config"], sort_keys=True)
        d["created_at"] = d["created_at"] or time.time()
        self._insert_or_replace("training_runs", [d])

    def training_runs(self, **where: Any) -> list[TrainingRun]:
        """Stored training runs, oldest first, filtered by equality on any of their fields."""
        return [
            TrainingRun(**{**d, "config": json.loads(d["config"])})
            for d in self._select_records("training_runs", TrainingRun, "training-run", where)
        ]

    def _select_records(
        self, table: str, record: type[DataclassInstance], kind: str, where: dict[str, Any]
    ) -> list[dict[str, Any]]:
        """Rows of a record table as dicts of the dataclass's fields, oldest first, filtered by equality."""
        fields = list(record.__dataclass_fields__)
        unknown = set(where) - set(fields)
        if unknown:
            raise ValueError(f"unknown {kind} fields: {', '.join(sorted(unknown))}")
        clause = " AND ".join(f"{k} = ?" for k in where)
        with self._connect() as db:
            db.row_factory = sqlite3.Row
            found = db.execute(
                f"SELECT {', '.join(fields)} FROM {table} {'WHERE ' + clause if clause else ''} "
                "ORDER BY created_at, id",
                list(where.values()),
            ).fetchall()
        return [dict(r) for r in found]

    def _insert_or_replace(self, table: str, rows: list[dict[str, Any]]) -> None:
        """Write rows (same keys) in one committed transaction; a row with a stored key replaces it."""
        if not rows:
            return
        names = list(rows[0])
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            db.executemany(
                f"INSERT OR REPLACE INTO {table} ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
                [[d[n] for n in names] for d in rows],
            )
            db.execute("COMMIT")

    # -- corruption runs (the robustness track) --------------------------------------------
    def add_corruption_runs(self, runs: list[CorruptionRun]) -> None:
        """Store one model's corrupted-set metrics in one transaction, committed on return."""
        self._insert_or_replace(
            "corruption_runs",
            [{**run.as_dict(), "created_at": run.created_at or time.time()} for run in runs],
        )

    def corruption_runs(self, **where: Any) -> list[CorruptionRun]:
        """Stored corruption runs, oldest first, filtered by equality on any of their fields."""
        return [
            CorruptionRun(**d)
            for d in self._select_records("corruption_runs", CorruptionRun, "corruption-run", where)
        ]

    # -- training-consumption grid -----------------------------------------------------------
    def add_grid_run(self, run: GridRun) -> None:
        """Store one grid run, committed on return; the same key again (a retry) replaces it."""
        d = run.as_dict()
        d["worker"] = json.dumps(d["worker"], sort_keys=True)
        d["created_at"] = d["created_at"] or time.time()
        d["metric"] = None if d["metric"] != d["metric"] else d["metric"]  # NaN is stored as NULL
        self._insert_or_replace("grid_runs", [d])

    def grid_runs(self, **where: Any) -> list[GridRun]:
        """Stored grid runs, oldest first, filtered by equality on any of their fields."""
        return [
            GridRun(
                **{
                    **d,
                    "worker": json.loads(d["worker"]),
                    "metric": float("nan") if d["metric"] is None else d["metric"],
                }
            )
            for d in self._select_records("grid_runs", GridRun, "grid-run", where)
        ]

    # -- board health -------------------------------------------------------------------
    def board_state(self, board: str) -> BoardState:
        """The board's health state; a board never marked is `good`."""
        with self._connect() as db:
            row = db.execute(
                "SELECT state, reason, since FROM board_health WHERE board = ?", (board,)
            ).fetchone()
        return BoardState(*row) if row else BoardState()

    def board_states(self) -> dict[str, BoardState]:
        with self._connect() as db:
            rows = db.execute(
                "SELECT board, state, reason, since FROM board_health ORDER BY board"
            ).fetchall()
        return {r[0]: BoardState(*r[1:]) for r in rows}

    def set_board_state(self, board: str, state: str, reason: str = "") -> None:
        if state not in BOARD_STATES:
            raise UserError(f"unknown board state {state!r}; states: {', '.join(BOARD_STATES)}")
        with self._connect() as db:
            db.execute(
                "INSERT INTO board_health (board, state, reason, since) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(board) DO UPDATE SET state = excluded.state, reason = excluded.reason, "
                "since = excluded.since",
                (board, state, reason[:500], time.time()),
            )

    def done_keys(self, campaign: str) -> set[tuple[str, str, str, str, str, int]]:
        """Keys (as `Measurement.key()`) that `--resume` skips: rows that succeeded or cannot run at all."""
        marks = ", ".join("?" * len(DONE_STATUSES))
        with self._connect() as db:
            found = db.execute(
                f"SELECT board, arch, algorithm, runtime, campaign, threads FROM measurements "
                f"WHERE campaign = ? AND status IN ({marks})",
                (campaign, *DONE_STATUSES),
            ).fetchall()
        return {tuple(r) for r in found}

    def rows(self, campaign: str | None = None, board: str | None = None) -> list[Measurement]:
        """Stored measurements, oldest first, optionally of one campaign and/or one board."""
        return [_unflatten(r) for r in self._select(campaign, board)]

    def frame(
        self, campaign: str | None = None, board: str | None = None, samples: bool = False
    ) -> pd.DataFrame:
        """A flat DataFrame (one column per stored column); raw samples only when asked (they are large)."""
        import pandas as pd

        records = []
        for r in self._select(campaign, board):
            r.pop("extra")
            raw = r.pop("samples_ms")
            if samples:
                r["samples_ms"] = json.loads(raw)
            r.update({c: bool(r[c]) for c in FLAG_COLUMNS})
            records.append(r)
        columns = [c for c in _NAMES if c != "extra" and (samples or c != "samples_ms")]
        df = pd.DataFrame.from_records(records, columns=columns)
        for column, sql in COLUMNS:  # missing values are NaN/NA, not object columns of None
            if sql == "REAL" or sql.startswith("REAL "):
                df[column] = df[column].astype("float64")
            elif sql.startswith("INTEGER") and column not in FLAG_COLUMNS:
                df[column] = df[column].astype("int64" if "NOT NULL" in sql else "Int64")
        return df

    def campaigns(self) -> list[str]:
        """Campaign ids, the most recently written first."""
        with self._connect() as db:
            found = db.execute(
                "SELECT campaign FROM measurements GROUP BY campaign "
                "ORDER BY MAX(created_at) DESC, MAX(id) DESC"
            ).fetchall()
        return [r[0] for r in found]

    def latest_campaign(self) -> str | None:
        found = self.campaigns()
        return found[0] if found else None

    def _select(self, campaign: str | None, board: str | None) -> list[dict[str, Any]]:
        clauses, params = [], []
        for column, value in (("campaign", campaign), ("board", board)):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        with self._connect() as db:
            db.row_factory = sqlite3.Row
            found = db.execute(
                f"SELECT {', '.join(_NAMES)} FROM measurements {where} ORDER BY created_at, id", params
            ).fetchall()
        return [dict(r) for r in found]


SERIES_COLUMNS = ("board", "arch", "algorithm", "runtime", "threads")


@dataclass(frozen=True)
class Series:
    """One measured series: its newest row (any status), its newest ok row and the ok row
    before that, if any (what a latency regression is judged against)."""

    last: Measurement
    last_ok: Measurement | None
    previous_ok: Measurement | None = None


@dataclass(frozen=True)
class CampaignProgress:
    """A campaign's plan and progress on one board (kind: profile or bench)."""

    campaign: str
    board: str
    kind: str
    planned: int
    done: int
    failed: int
    started_at: float
    last_progress_at: float
    finished_at: float | None

    @property
    def running(self) -> bool:
        return self.finished_at is None


def _refresh_series(db: sqlite3.Connection, key: list[Any]) -> None:
    """Point the series of `key` at its newest row, its newest ok row and the ok row before
    that (three indexed lookups)."""
    where = " AND ".join(f"{c} = ?" for c in SERIES_COLUMNS)
    order = "ORDER BY created_at DESC, id DESC LIMIT 1"
    db.execute(
        f"INSERT INTO measurement_series ({', '.join(SERIES_COLUMNS)}, last_id, last_ok_id, prev_ok_id) "
        f"VALUES (?, ?, ?, ?, ?, (SELECT id FROM measurements WHERE {where} {order}), "
        f"(SELECT id FROM measurements WHERE {where} AND status = 'ok' {order}), "
        f"(SELECT id FROM measurements WHERE {where} AND status = 'ok' {order} OFFSET 1)) "
        f"ON CONFLICT({', '.join(SERIES_COLUMNS)}) DO UPDATE SET last_id = excluded.last_id, "
        "last_ok_id = excluded.last_ok_id, prev_ok_id = excluded.prev_ok_id",
        [*key, *key, *key, *key],
    )


def _rebuild_series(db: sqlite3.Connection) -> None:
    """Fill the series index and the counts from the rows a store written before them holds."""
    keys = db.execute(f"SELECT DISTINCT {', '.join(SERIES_COLUMNS)} FROM measurements").fetchall()
    for key in keys:
        _refresh_series(db, list(key))
    db.execute(
        "INSERT OR REPLACE INTO measurement_counts (board, status, filed) "
        "SELECT board, status, COUNT(*) FROM measurements GROUP BY board, status"
    )


def latest_rows(rows, prefer_ok: bool = False) -> list[Measurement]:
    """One row per (board, arch, algorithm, runtime, threads), whatever its campaign: the newest,
    or with `prefer_ok` the newest ok one when there is one (a number to cite survives a later
    failed retry; a live view shows the failure)."""
    latest: dict[tuple[str, str, str, str, int], Measurement] = {}
    for m in rows:
        key = (m.board, m.arch, m.algorithm, m.runtime, m.threads)
        old = latest.get(key)
        rank = (prefer_ok and m.status == "ok", m.created_at)
        if old is None or rank >= (prefer_ok and old.status == "ok", old.created_at):
            latest[key] = m
    return list(latest.values())


def _flatten(m: Measurement) -> dict[str, Any]:
    d = m.as_dict(samples=True)
    latency, agent = dict(d.pop("latency_ms")), dict(d.pop("agent"))
    for k in LATENCY_KEYS:
        d[f"latency_{k}_ms"] = latency.pop(k, None)
    for k in AGENT_KEYS:
        d[f"agent_{k}"] = agent.pop(k, None)
    d.update({c: int(d[c]) for c in FLAG_COLUMNS})
    d["samples_ms"] = json.dumps(d["samples_ms"])
    d["extra"] = json.dumps({"latency_ms": latency, "agent": agent})
    if not d["created_at"]:
        d["created_at"] = time.time()
    return d


def _unflatten(r: dict[str, Any]) -> Measurement:
    extra = json.loads(r.pop("extra"))
    latency = {k: r.pop(f"latency_{k}_ms") for k in LATENCY_KEYS}
    agent = {k: r.pop(f"agent_{k}") for k in AGENT_KEYS}
    r["latency_ms"] = {k: v for k, v in latency.items() if v is not None} | extra["latency_ms"]
    r["agent"] = {k: v for k, v in agent.items() if v is not None} | extra["agent"]
    r.update({c: bool(r[c]) for c in FLAG_COLUMNS})
    r["samples_ms"] = json.loads(r["samples_ms"])
    return Measurement(**r)
