"""Relationship ties: dense (towns, agents, agents, 3) arrays of trust, familiarity and rivalry.

With a handful of agents per town a dense matrix is smaller and faster than a sparse structure; the cap
on ties per agent is kept by a boolean `tie` mask: a new tie evicts the weakest existing one. All events
of a tick are buffered and applied in one scatter at the end of the step.
"""

from __future__ import annotations

import numpy as np

from townlet_pipelines.config import RelationshipConfig

TRUST, FAMILIARITY, RIVALRY = 0, 1, 2


class EventBuffer:
    """Collects (town, from-agent, to-agent, delta) rows during a step."""

    def __init__(self) -> None:
        self._rows: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []

    def add(self, town, source, other, delta, work_event: bool = False) -> None:
        town = np.asarray(town, dtype=np.int64)
        if town.size == 0:
            return
        delta = np.broadcast_to(np.asarray(delta, dtype=np.float32), (town.size, 3))
        self._rows.append(
            (town, np.asarray(source, np.int64), np.asarray(other, np.int64), delta,
             np.full(town.size, work_event))
        )

    def __bool__(self) -> bool:
        return bool(self._rows)

    def arrays(self):
        return tuple(np.concatenate(column) for column in zip(*self._rows))


def apply_events(
    rel: np.ndarray, tie: np.ndarray, personality: np.ndarray, events: EventBuffer, config: RelationshipConfig
) -> None:
    """Apply buffered deltas in place, scaled by the receiving agent's forgiveness and ambition."""
    if not events:
        return
    town, source, other, delta, work = events.arrays()
    delta = delta.copy()
    forgiveness = personality[town, source, 1]
    ambition = personality[town, source, 2]
    # Harmful deltas (less trust or familiarity, more rivalry) shrink linearly to min_scale at +1.
    scale = 1.0 - (1.0 - config.forgiveness_min_scale) * (forgiveness + 1.0) / 2.0
    harmful = np.stack([delta[:, 0] < 0, delta[:, 1] < 0, delta[:, 2] > 0], axis=1)
    delta = np.where(harmful, delta * scale[:, None], delta)
    boost = np.where(work, 1.0 + config.ambition_rivalry_boost * np.maximum(ambition, 0.0), 1.0)
    delta[:, 2] = np.where(delta[:, 2] > 0, delta[:, 2] * boost, delta[:, 2])

    was_tie = tie[town, source, other]
    np.add.at(rel, (town, source, other), delta.astype(rel.dtype))
    # Only the touched entries can leave [-1, 1] (decay and eviction shrink toward 0), so only they are clipped.
    rel[town, source, other] = np.minimum(np.maximum(rel[town, source, other], -1.0), 1.0)
    tie[town, source, other] = True

    touched = np.zeros(tie.shape[:2], dtype=bool)
    touched[town, source] = True
    towns, agents = np.nonzero(touched)  # only agents that gained a tie can be over the cap
    counts = tie[towns, agents].sum(axis=1)
    over = counts > config.max_ties
    if not over.any():
        return
    towns, agents, counts = towns[over], agents[over], counts[over]
    strength = np.abs(rel[towns, agents]).sum(axis=-1)  # (M, N)
    strength = np.where(tie[towns, agents], strength, np.inf)
    new = np.zeros(tie.shape, dtype=bool)
    new[town, source, other] = ~was_tie
    strength = np.where(new[towns, agents], strength + 1e6, strength)  # new ties are never the evicted
    order = np.argsort(strength, axis=1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(order.shape[1])[None, :].repeat(len(order), 0), axis=1)
    evict = rank < (counts - config.max_ties)[:, None]
    evict_town, evict_other = np.nonzero(evict)
    tie[towns[evict_town], agents[evict_town], evict_other] = False
    rel[towns[evict_town], agents[evict_town], evict_other] = 0.0


def decay_daily(rel: np.ndarray, config: RelationshipConfig) -> None:
    rel *= np.float32(1.0 - config.daily_decay)
