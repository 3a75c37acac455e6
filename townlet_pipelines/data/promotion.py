"""Promotion: every anneal result is an evaluation; a candidate is promoted only after passing ones.

A PASS extends the candidate's pass streak, anything else resets it; the candidate is `ready` when the
streak reaches `required_passes`. A candidate is a training recipe for a dataset label (see
`training.anneal.candidate_id`): a streak belongs to one candidate, so a new candidate starts at zero.
Promoting records a release (checkpoint id, hashes, metrics, the previous release) and copies the
checkpoint into `releases/<release id>/` (stored relative to the state folder, so the artifacts root can
move), and a release never depends on a run folder. A rollback makes a named earlier release current again
and withdraws the checkpoint it replaced: the rule never promotes that checkpoint again, only an operator
who says why (`override`, recorded in the history). Recording an evaluation is idempotent by (run,
checkpoint): judging the same run's candidate twice counts once. The history (evaluations, promotions,
rollbacks, failed runs) is append-only. State is one JSON file, `promotion.json`, replaced atomically under
a lock.
"""

from __future__ import annotations

import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, FiniteFloat

from townlet_pipelines.data.state_file import StateModel, finite_metrics, locked_state, read_state

PROMOTION_SCHEMA_VERSION = 1
State = Literal["monitoring", "ready", "promoted"]


class PromotionError(RuntimeError):
    """A promotion or rollback that the rules do not allow."""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


class Release(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    release_id: str
    candidate_id: str
    checkpoint_id: str
    path: str | None = None  # the release's own copy of the checkpoint, relative to the state folder
    hashes: dict[str, str] = {}
    metrics: dict[str, FiniteFloat] = {}
    previous_release_id: str | None = None
    promoted_at: str
    first_release: bool = False


class Event(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["evaluation", "promotion", "rollback", "failure"]
    at: str
    candidate_id: str | None = None
    status: str | None = None
    pass_streak: int | None = Field(default=None, ge=0)
    metrics: dict[str, FiniteFloat] = {}
    checkpoint: dict[str, str | None] = {}
    note: str = ""
    release_id: str | None = None
    run_id: str | None = None
    night: str | None = None  # the nightly partition an evaluation judged (a streak counts different nights)


class PromotionState(StateModel):
    SCHEMA_VERSION = PROMOTION_SCHEMA_VERSION

    candidate_id: str | None = None
    pass_streak: int = 0
    state: State = "monitoring"
    current_release_id: str | None = None
    releases: list[Release] = Field(default_factory=list)
    history: list[Event] = Field(default_factory=list)


class PromotionStatus(BaseModel):
    """A snapshot for users and callers."""

    model_config = ConfigDict(frozen=True)

    state: State
    candidate_id: str | None
    pass_streak: int
    required_passes: int
    ready: bool
    current_release: Release | None
    releases: int
    last_evaluations: list[Event]


class PromotionStore:
    FILE = "promotion.json"

    def __init__(self, root: str | Path, required_passes: int = 2, release_proven: bool = True) -> None:
        if required_passes < 1:
            raise ValueError(f"required_passes must be at least 1, got {required_passes}")
        self.root, self.required_passes = Path(root), required_passes
        self.release_proven = release_proven  # a challenger proven better than the champion needs no streak
        self.path = self.root / self.FILE

    @classmethod
    def for_config(cls, root: str | Path, config) -> "PromotionStore":
        """The store at `root` under `config.promotion`'s rule: every entry point judges by the same one."""
        return cls(root, required_passes=config.promotion.required_passes,
                   release_proven=config.promotion.release_proven)

    def _state(self, state: PromotionState) -> State:
        """Readiness follows the streak and *this* store's required_passes, whatever was stored."""
        if state.pass_streak >= self.required_passes:
            return "ready"
        return "promoted" if state.state == "promoted" else "monitoring"

    def _snapshot(self, state: PromotionState) -> PromotionStatus:
        current = next((r for r in state.releases if r.release_id == state.current_release_id), None)
        current = self._resolved(current) if current is not None else None
        evaluations = [event for event in state.history if event.kind == "evaluation"]
        effective = self._state(state)
        return PromotionStatus(
            state=effective, candidate_id=state.candidate_id, pass_streak=state.pass_streak,
            required_passes=self.required_passes, ready=effective == "ready", current_release=current,
            releases=len(state.releases), last_evaluations=evaluations[-5:],
        )

    def _resolved(self, release: Release) -> Release:
        """The release with its copy's absolute path (stored relative to this store's folder)."""
        if release.path is None or Path(release.path).is_absolute():
            return release
        return release.model_copy(update={"path": str(self.root / release.path)})

    def _read(self) -> PromotionState:
        state = read_state(self.path, PromotionState)
        state.releases = [self._resolved(release) for release in state.releases]
        return state

    def status(self) -> PromotionStatus:
        return self._snapshot(self._read())

    def history(self) -> list[Event]:
        return list(self._read().history)

    def releases(self) -> list[Release]:
        return list(self._read().releases)

    def withdrawn(self, checkpoint_id: str) -> Event | None:
        """The rollback that withdrew this checkpoint, unless an operator re-promoted it since."""
        return self._withdrawn(self._read(), checkpoint_id)

    @staticmethod
    def _withdrawn(state: PromotionState, checkpoint_id: str) -> Event | None:
        found = None
        for event in state.history:
            if event.kind == "rollback" and event.checkpoint.get("withdrawn_checkpoint_id") == checkpoint_id:
                found = event
            elif event.kind == "promotion" and event.checkpoint.get("checkpoint_id") == checkpoint_id and found:
                found = None  # an explicit override re-promoted it
        return found

    def record_evaluation(self, candidate_id: str, status: str, metrics: dict[str, float] | None = None,
                          checkpoint: dict | None = None, note: str = "", run_id: str | None = None,
                          night: str | None = None) -> PromotionStatus:
        """Record one evaluation; a second record for the same (run_id, checkpoint id) changes nothing.

        The pass streak counts different nights: a PASS for a `night` the streak already counted (a re-run
        of that night's partition) is recorded but does not lengthen it.
        """
        if status not in ("PASS", "FAIL", "HOLD"):
            raise ValueError(f"status must be PASS, FAIL or HOLD, got {status!r}")
        checkpoint_id = (checkpoint or {}).get("checkpoint_id")
        with locked_state(self.path, PromotionState) as holder:
            state = holder[0]
            if run_id is not None and any(
                    event.kind == "evaluation" and event.run_id == run_id
                    and event.checkpoint.get("checkpoint_id") == (None if checkpoint_id is None else str(checkpoint_id))
                    for event in state.history):
                return self._snapshot(state)  # already judged: one evaluation per (run, checkpoint)
            streak = state.pass_streak if state.candidate_id == candidate_id else 0
            counted = {event.night for event in self._streak_events(state)} if streak else set()
            if status != "PASS":
                streak = 0
            elif night is None or night not in counted:
                streak += 1
            state.candidate_id, state.pass_streak = candidate_id, streak
            state.state = "ready" if streak >= self.required_passes else "monitoring"
            state.history.append(Event(
                kind="evaluation", at=_now(), candidate_id=candidate_id, status=status, pass_streak=streak,
                metrics=finite_metrics(metrics, "record_evaluation"),
                checkpoint={k: (None if v is None else str(v)) for k, v in (checkpoint or {}).items()}, note=note,
                run_id=run_id, night=night,
            ))
            return self._snapshot(state)

    @staticmethod
    def _streak_events(state: PromotionState) -> list[Event]:
        """The PASS evaluations since the current streak began (newest last): back to the last promotion, or to
        an evaluation that was not this candidate's PASS. Re-runs of a counted night are among them, and count
        no new night. A failed run judged nothing and a rollback does not reset the streak: both are passed over."""
        events = []
        for event in reversed(state.history):
            if event.kind in ("failure", "rollback"):
                continue
            if event.kind != "evaluation" or event.status != "PASS" or event.candidate_id != state.candidate_id:
                break
            events.append(event)
        return events[::-1] if state.pass_streak else []

    def promote(self, candidate_id: str, checkpoint_id: str, hashes: dict[str, str] | None = None,
                metrics: dict[str, float] | None = None, path: str | Path | None = None,
                first_release: bool = False, override: str | None = None, proven_better: bool = False,
                replaces: str | None = None) -> Release:
        """Promote when the candidate is ready, or (`first_release`) when nothing was ever released, or
        (`proven_better`, the caller having judged the challenger better than the champion beyond the paired
        interval) when a release exists and this candidate's latest evaluation passed.

        `replaces` names the release the candidate was compared with: it is refused when another is current by
        the time it would be released (two nights judged against the same champion, the first released), since
        it was never compared with that one. A checkpoint an operator rolled back is refused unless `override`
        says why; the reason is recorded.
        """
        if override is not None and not override.strip():
            raise PromotionError(f"checkpoint {checkpoint_id}: an operator override needs a reason (it was blank)")
        stored = None
        try:
            with locked_state(self.path, PromotionState) as holder:
                state = holder[0]
                # Under the lock: a rollback that withdraws this checkpoint while the promotion waits is seen.
                withdrawn = self._withdrawn(state, checkpoint_id)
                if withdrawn is not None and not override:
                    raise PromotionError(
                        f"checkpoint {checkpoint_id} was rolled back at {withdrawn.at} (to release "
                        f"{withdrawn.release_id}); it is not promoted again unless an operator overrides: townlet "
                        f"promotion promote --candidate {candidate_id} --checkpoint CHECKPOINT_FOLDER --override 'why'")
                if not override and replaces is not None and state.current_release_id != replaces:
                    raise PromotionError(
                        f"candidate {candidate_id} was compared with release {replaces}, but the current release is "
                        f"{state.current_release_id} now: the champion moved on since this night was judged")
                if override:
                    pass  # the operator's explicit decision replaces the readiness rule
                elif first_release:
                    if state.releases:
                        raise PromotionError(f"{self.path}: a first release exists already "
                                             f"({state.releases[0].release_id})")
                elif proven_better:
                    if not state.releases or not self.release_proven:
                        raise PromotionError(f"{self.path}: a release on a proven improvement needs a champion to "
                                             "improve on, and a store that allows it")
                    if state.candidate_id != candidate_id or state.pass_streak < 1:
                        raise PromotionError(f"candidate {candidate_id} has no passing evaluation to release on "
                                             f"(candidate {state.candidate_id}, pass streak {state.pass_streak})")
                elif self._state(state) != "ready" or state.candidate_id != candidate_id:
                    raise PromotionError(
                        f"candidate {candidate_id} is not ready: state {state.state}, candidate {state.candidate_id}, "
                        f"pass streak {state.pass_streak}/{self.required_passes}")
                release_id = f"r{len(state.releases) + 1:04d}-{checkpoint_id[:12]}"
                stored = self._store_checkpoint(release_id, path) if path else None
                release = Release(
                    release_id=release_id, candidate_id=candidate_id, checkpoint_id=checkpoint_id, path=stored,
                    hashes=dict(hashes or {}), metrics=finite_metrics(metrics, "promote"),
                    previous_release_id=state.current_release_id, promoted_at=_now(), first_release=first_release,
                )
                state.releases.append(release)
                state.current_release_id = release_id
                state.state, state.pass_streak = "promoted", 0
                state.history.append(Event(kind="promotion", at=release.promoted_at, candidate_id=candidate_id,
                                           release_id=release_id, checkpoint={"checkpoint_id": checkpoint_id},
                                           note=f"operator override: {override}" if override else ""))
        except BaseException:  # a full disk, a kill: a copy that no release names does not stay behind
            if stored is not None and not any(r.path == stored for r in read_state(self.path, PromotionState).releases):
                shutil.rmtree(self.root / stored, ignore_errors=True)
            raise
        return self._resolved(release)

    def _store_checkpoint(self, release_id: str, source: str | Path) -> str:
        """Copy the checkpoint next to the state: a release never depends on a run folder."""
        target = self.root / "releases" / release_id
        if target.exists():  # no release names it yet (we hold the lock): a copy left by a failed write
            shutil.rmtree(target)
        temporary = target.with_name(f".{release_id}.tmp")
        shutil.rmtree(temporary, ignore_errors=True)
        try:
            shutil.copytree(source, temporary)
            temporary.rename(target)
        except BaseException:  # a full disk, a kill: no half copy stays behind
            shutil.rmtree(temporary, ignore_errors=True)
            raise
        return str(target.relative_to(self.root))

    def rollback(self, release_id: str) -> Release:
        with locked_state(self.path, PromotionState) as holder:
            state = holder[0]
            release = next((r for r in state.releases if r.release_id == release_id), None)
            if release is None:
                known = ", ".join(r.release_id for r in state.releases) or "none"
                raise PromotionError(f"no release {release_id!r} to roll back to (releases: {known})")
            left = next((r for r in state.releases if r.release_id == state.current_release_id), None)
            state.current_release_id = release_id
            state.state = "promoted"
            withdrawn = left.checkpoint_id if left is not None and left.checkpoint_id != release.checkpoint_id else None
            state.history.append(Event(kind="rollback", at=_now(), release_id=release_id,
                                       checkpoint={"checkpoint_id": release.checkpoint_id,
                                                   "withdrawn_checkpoint_id": withdrawn}))
            return self._resolved(release)

    def record_failure(self, run_id: str, message: str) -> None:
        """A run that failed before judging (a crash, not a guardrail): kept in the history."""
        with locked_state(self.path, PromotionState) as holder:
            holder[0].history.append(Event(kind="failure", at=_now(), run_id=run_id, note=message[:2000]))
