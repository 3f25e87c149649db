"""A monitor's state: checkpointed to the state file, taken up on assignment, committed.

A checkpoint is the windows' snapshot (their profiles, every partition's position and
event time, the window markers), the retraining streak, and per partition the first
invalid record whose dead-letter copy is not yet acknowledged, written in one SQLite
transaction with the results of the windows closed since the last one. Only the profiles
that changed are written again. Offsets are committed to Kafka only from a checkpoint
already written, so the committed offset is never ahead of the state that covers it.

On assignment (`adopt`) the state is taken up from the last checkpoint when it is at least
as far as the committed offsets (this instance's own restart, or a standby on the same
volume): reading goes on from the checkpoint's positions, so a restart re-reads at most
what came after the last checkpoint. Otherwise another reader went further (an instance
with another state file was active since): the windows start over from the committed
offsets, and the log says which running windows that drops.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

from .profile import ProfileFormatError
from .store import ResultRow, Store
from .windows import Snapshot, TumblingWindows, describe

log = logging.getLogger("driftline.monitor")

STATE_VERSION = 2
MAX_OPEN_IN_METADATA = 16  # windows in progress named in the commit metadata (beyond: none)


class MonitorState:
    def __init__(self, name: str, topic: str, windows: TumblingWindows, store: Store | None,
                 signature: dict[str, Any], interval: float, clock: Callable[[], float] = time.time,
                 first_pending: Callable[[], dict[int, int]] = dict) -> None:
        self.name, self.topic, self.windows, self._store = name, topic, windows, store
        # what the stored windows were built for (features, window shape): a checkpoint made
        # for another shape starts the windows over
        self._signature = signature
        self._interval, self._clock = interval, clock
        self.first_pending = first_pending  # dead letters not yet acknowledged (set by the consumer)
        self._written: dict[str, int] = {}  # profile key -> stamp of the bytes stored
        self._saved: dict[str, Any] | None = None  # the last meta written
        self._saved_at = -float("inf")
        self._holding = False  # the windows in memory are the last checkpoint's, partitions revoked
        self.extra: dict[str, Any] = {}  # restored with the windows (the retraining streak)
        self.redo: dict[int, int] = {}  # partition -> position: records before it are accounted for

    # -- writing ----------------------------------------------------------------------------
    def due(self) -> bool:
        return self._clock() - self._saved_at >= self._interval

    def save(self, results: list[ResultRow], extra: dict[str, Any], force: bool = False) -> bool:
        """Write a checkpoint if there are results, one is due, or `force`; not while the
        windows have no partitions (a standby writes nothing). Caller serialises calls."""
        if self.windows.paused and not force:
            return False
        if not (results or force or self.due()):
            return False
        snap: Snapshot = self.windows.snapshot(self._written)
        # read after the snapshot: a copy pending for a record before its positions is in it
        redo = self.first_pending()
        meta = {"version": STATE_VERSION, "topic": self.topic, "signature": self._signature,
                "windows": snap.meta, "redo_from": {str(p): o for p, o in redo.items()}, **extra,
                "seq": (self._saved or {}).get("seq", 0) + 1}
        if self._store is not None:
            try:
                self._store.save_state(self.name, meta, snap.blobs, set(snap.stamps), results, self._clock())
            except Exception:
                # Kafka offsets stay where the last checkpoint left them: nothing is lost, what
                # was read since is read again after a restart
                log.exception("monitor %s: checkpoint not written", self.name)
                return False
        self._written = snap.stamps
        self._saved, self._saved_at = meta, self._clock()
        return True

    def committable(self) -> dict[int, tuple[int, str]]:
        """Per partition, the offset (with its metadata) that the last checkpoint covers: its
        position, or the first record whose dead-letter copy is not acknowledged."""
        saved = self._saved
        if saved is None:
            return {}
        store = self._store.store_id if self._store is not None else ""
        # the windows in progress, so that a reader without this state file can say which ones
        # start over (a few dozen bytes; Kafka keeps commit metadata, the local broker does not)
        summary = saved["windows"].get("summary", {})
        in_progress = {"open": summary} if len(summary) <= MAX_OPEN_IN_METADATA else {}
        metadata = json.dumps({"driftline": STATE_VERSION, "store": store, "seq": saved["seq"],
                               "closed": saved["windows"].get("closed_index"), **in_progress},
                              separators=(",", ":"))
        redo = {int(p): o for p, o in saved["redo_from"].items()}
        return {int(p): (min(o, redo.get(int(p), o)), metadata) for p, o in saved["windows"]["positions"].items()}

    def forget_positions(self) -> None:
        """The topic was recreated (offsets start again at 0): no position of the old one is
        read from again; the windows in progress stay."""
        self.windows.forget_positions()
        if self._saved is not None:
            self._saved = {**self._saved, "windows": {**self._saved["windows"], "positions": {}}, "redo_from": {}}
        self.redo = {}

    def release(self, results: list[ResultRow], extra: dict[str, Any]) -> dict[int, tuple[int, str]]:
        """The partitions are being revoked: checkpoint now, hold the windows (nothing
        closes) until `adopt`, and return the offsets to commit."""
        self.save(results, extra, force=True)
        self.windows.pause()
        self._holding = True
        return self.committable()

    # -- taking partitions up ----------------------------------------------------------------
    def adopt(self, committed: dict[int, tuple[int, str] | None]) -> dict[int, int]:
        """Partitions assigned, with their committed (offset, metadata): take up the state
        (see the module docstring) and return where each is read from."""
        if self._holding:
            state: tuple[dict[str, Any], dict[str, bytes]] | None = None  # (the windows in memory are it)
            meta = self._saved
        else:
            state = self._load()
            meta = state[0] if state is not None else None
        self._holding = False
        usable, why = self._usable(meta, committed)
        starts: dict[int, int | None] = {p: (c[0] if c is not None else None) for p, c in committed.items()}
        self.redo = {}
        if usable and meta is not None and state is not None:
            try:
                self._written = self.windows.restore(meta["windows"], state[1])
            except (ProfileFormatError, KeyError, ValueError, TypeError) as exc:
                usable, why = False, f"the checkpoint's windows cannot be read ({exc})"
            else:
                self._saved, self._saved_at = meta, self._clock()
                self.extra = {k: v for k, v in meta.items() if k == "streak"}
        if usable and meta is not None:
            redo = {int(p): int(o) for p, o in meta.get("redo_from", {}).items()}
            for key, value in meta["windows"]["positions"].items():
                p, o = int(key), int(value)
                if p in starts:
                    start = starts[p] = min(o, redo.get(p, o))
                    if start < o:
                        self.redo[p] = o  # read again for the dead letters only
            log.info("monitor %s: windows in progress %s from the checkpoint (%d events); reading %s", self.name,
                     "restored" if state is not None else "kept", self.windows.open_events(), _fmt(starts))
        else:
            closed = max((c for c in (_closed_of(v) for v in committed.values()) if c is not None), default=None)
            dropped = self.windows.reset(closed, announce=any(c is not None for c in committed.values()))
            if meta is not None and not dropped:  # (the checkpoint's windows were not taken up)
                dropped = [describe(*w) for w in meta.get("windows", {}).get("summary", {}).values()]
            self._written, self._saved = {}, None
            if why:
                log.warning("monitor %s: %s; %s, reading from the committed offsets %s", self.name, why,
                            f"these windows start over: {'; '.join(dropped)}" if dropped
                            else "no window was in progress", _fmt(starts))
            elif any(c is not None for c in committed.values()):
                named = _open_of(committed)
                log.warning("monitor %s: no checkpoint of it in this state file: reading from the committed "
                            "offsets %s; %s", self.name, _fmt(starts),
                            f"the windows in progress at the instance before start over here with the events from "
                            f"them on (it keeps the events it read of them): {'; '.join(named)}" if named else
                            "a window in progress at the instance before (the broker did not keep which) starts "
                            "over here with the events from them on")
            else:
                log.info("monitor %s: a new consumer group: reading from kafka.auto_offset_reset", self.name)
        self.windows.assign(starts)
        return {p: o for p, o in starts.items() if o is not None}

    def _load(self) -> tuple[dict[str, Any], dict[str, bytes]] | None:
        if self._store is None:
            return None
        try:
            state = self._store.load_state(self.name)
        except Exception:
            log.exception("monitor %s: the stored state could not be read", self.name)
            return None
        return state

    def _usable(self, meta: dict[str, Any] | None, committed: dict[int, tuple[int, str] | None]
                ) -> tuple[bool, str]:
        """Whether a checkpoint may be taken up, and why not (empty: there is none)."""
        if meta is None:
            return False, ""
        if meta.get("version") != STATE_VERSION:
            return False, "the checkpoint was written by another version of driftline"
        if meta.get("topic") != self.topic:
            return False, f"the checkpoint is of topic {meta.get('topic')!r}"
        if meta.get("signature") != self._signature:
            return False, "the features or the window settings changed since the checkpoint"
        positions = {int(p): int(o) for p, o in meta["windows"].get("positions", {}).items()}
        ahead = {p: c[0] for p, c in committed.items() if c is not None and c[0] > positions.get(p, -1)}
        if ahead:
            return False, (f"another instance read further than this one's checkpoint (committed {_fmt(ahead)}, "
                           f"checkpoint {_fmt({p: positions.get(p) for p in ahead})})")
        return True, ""


def _closed_of(got: tuple[int, str] | None) -> int | None:
    """The last closed bucket in a committed offset's metadata, if driftline wrote it."""
    if got is None or not got[1].startswith("{"):
        return None
    try:
        d = json.loads(got[1])
        return int(d["closed"]) if d.get("driftline") == STATE_VERSION and d.get("closed") is not None else None
    except (ValueError, KeyError, TypeError):
        return None


def _open_of(committed: dict[int, tuple[int, str] | None]) -> list[str]:
    """The windows in progress that a committed offset's metadata names (its reader's)."""
    for got in committed.values():
        if got is None or not got[1].startswith("{"):
            continue
        try:
            d = json.loads(got[1])
            if d.get("driftline") == STATE_VERSION and d.get("open"):
                return [describe(*w) for w in sorted(d["open"].values())]
        except (ValueError, TypeError):
            continue
    return []


def _fmt(offsets: dict[int, Any]) -> str:
    return ", ".join(f"{p}: {o}" for p, o in sorted(offsets.items())) or "(no partition)"
