"""The batched Townlet simulation: one `step` advances every town by one tick.

All rules of TOWNLET.md section 1 run as array operations over (towns, agents); pairwise questions
(who is ahead in a queue, who is adjacent, who eats together) are (towns, agents, agents) comparisons,
which for a handful of agents per town are cheaper than any sort. The step's phases, in order:
option switch, movement, queue joins, acquisition, conflicts, use and completion, work and shifts,
chat, needs and faints, rewards, relationships, respawn, day boundary, then masks and observations.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from townlet_pipelines.config import TownletConfig, UsageError
from townlet_pipelines.world import rng
from townlet_pipelines.world.actions import (
    CHAT, COOK, EAT, MOVE_N, NUM_ACTIONS, OBJECT_OPTIONS, OPTION_OBJECT_TYPE, SHOWER, SLEEP,
    WAIT, WORK,
)
from townlet_pipelines.world.layout import Layout, build_layout, move_destinations
from townlet_pipelines.world.observations import Observation, ObservationBuilder, ObservationSpec
from townlet_pipelines.world.relationships import FAMILIARITY, RIVALRY, TRUST, EventBuffer, apply_events
from townlet_pipelines.world.relationships import decay_daily
from townlet_pipelines.world.state import WorldState, initial_state
from townlet_pipelines.world.tables import rule_tables

TELEMETRY_KEYS: tuple[str, ...] = (
    "queue_conflict_events", "queue_conflict_intensity", "queued_politely_events", "shared_meal_events",
    "late_help_events", "shift_takeover_events", "chat_success_events", "chat_failure_events",
    "chat_quality_sum", "late_arrivals", "on_time_arrivals", "absences", "faints", "wages",
    "meals_eaten", "meals_cooked", "showers", "sleeps", "failed_actions", "invalid_actions",
)

_IS_OBJECT_OPTION = np.zeros(NUM_ACTIONS, dtype=bool)
_IS_OBJECT_OPTION[list(OBJECT_OPTIONS)] = True
_OPTION_TYPE = np.array(OPTION_OBJECT_TYPE, dtype=np.int64)
_STAY = 4  # move code of no move (codes 0..3: n, e, s, w)
# ticket = tick * 2^38 + (older first) * 2^22 + seeded draw * N + agent: the draw (< 2^16) times up to 64 agents
# (< 2^22) stays below the age field, so age decides before the draw in towns of any allowed size
_TICKET_AGE_SHIFT = 22
_TICKET_TICK = np.int64(1 << (_TICKET_AGE_SHIFT + 16))


@dataclass
class ConflictEvents:
    """This tick's queue conflicts: who was blocked, by whom, and the queue length it joined."""

    town: np.ndarray
    blocked: np.ndarray
    blocker: np.ndarray
    queue_length: np.ndarray
    intensity: np.ndarray


@dataclass
class StepResult:
    observation: Observation | None
    rewards: np.ndarray  # (B, N) float32
    dones: np.ndarray  # (B, N) bool: the agent fainted this tick (and has respawned)
    truncated: bool  # the episode's last tick was played
    action_mask: np.ndarray  # (B, N, A) bool for the next tick
    telemetry: dict[str, np.ndarray] = field(default_factory=dict)  # each (B,)
    conflicts: ConflictEvents | None = None


def town_seeds(seed: int, towns: int) -> np.ndarray:
    """Seeds of a batch: town k gets seed + k, so any town can be replayed alone."""
    return np.arange(seed, seed + towns, dtype=np.uint64)


class TownWorld:
    """A batch of independent towns sharing one config and one static layout."""

    def __init__(self, config: TownletConfig, towns: int) -> None:
        if towns < 1:
            raise UsageError(f"towns must be at least 1, got {towns}")
        self.config = config
        self.towns = towns
        self.agents = config.world.agents_per_town
        self.layout: Layout = build_layout(config.world)
        self.observer = ObservationBuilder(config, self.layout)
        self._tables()
        self.state: WorldState | None = None
        self.action_mask: np.ndarray | None = None
        self.observation: Observation | None = None  # the latest observation (None after observe=False)
        self._index_cache: dict | None = None

    @property
    def spec(self) -> ObservationSpec:
        return self.observer.spec

    def _tables(self) -> None:
        world, layout = self.config.world, self.layout
        self.rules = rule_tables(world, layout)
        self.duration, self.cost, self.effects = self.rules.duration, self.rules.cost, self.rules.effects
        self.shift_start, self.shift_end, self.wage = self.rules.shift_start, self.rules.shift_end, self.rules.wage
        job = layout.job_of_agent
        self.same_job = job[:, None] == job[None, :]
        self.decay = np.array(world.needs.decay(), dtype=np.float32)
        self.need_weights = np.array(self.config.rewards.need_weights(), dtype=np.float32)
        # Movement as gathers over tiles (y * size + x): where move code 0..4 lands, each object's access tile,
        # and the next move toward each object from each tile.
        self.dest_y, self.dest_x = move_destinations(layout)  # (tiles * 5,)
        self.access_tile = (layout.access_y * layout.size + layout.access_x).astype(np.int32)  # (O,)
        self.next_move = layout.next_move.reshape(-1)  # (O * tiles,)
        self.tiles = layout.size * layout.size
        # Per time of day and agent (the shift rules depend on nothing else), so a tick reads one row.
        tod = np.arange(world.day_ticks)[:, None]
        self.on_shift = (tod >= self.shift_start) & (tod < self.shift_end)  # (day, N)
        self.cover_tick = tod == self.shift_start + world.jobs.takeover_delay  # late coworkers get covered
        self.shift_over = tod + 1 == self.shift_end  # the shift's last tick
        self.any_cover_tick, self.any_shift_over = self.cover_tick.any(axis=1), self.shift_over.any(axis=1)
        self.any_on_shift = self.on_shift.any(axis=1)

    # ------------------------------------------------------------------ reset
    def reset(self, seeds: Sequence[int] | np.ndarray | int = 0) -> tuple[Observation, np.ndarray]:
        """Start every town afresh. An int seed gives town k the seed `seed + k`."""
        if isinstance(seeds, (int, np.integer)):
            if seeds < 0:
                raise UsageError(f"seeds: a seed must be a non-negative integer, got {seeds}")
            seeds = town_seeds(int(seeds), self.towns)
        raw = np.asarray(seeds)
        if raw.dtype.kind not in "ui" or (raw.dtype.kind == "i" and (raw < 0).any()):
            raise ValueError(f"seeds: expected non-negative integers, got {raw.dtype} {raw.tolist()[:4]}")
        seeds = raw.astype(np.uint64)
        if seeds.shape != (self.towns,):
            raise ValueError(f"seeds: expected {self.towns} seeds, got shape {seeds.shape}")
        self.state = initial_state(self.config.world, self.layout, seeds)
        self.action_mask, self.observation = self.observer.mask_and_observe(self.state)
        return self.observation, self.action_mask

    # ------------------------------------------------------------------ helpers
    def _index(self) -> dict[str, np.ndarray]:
        """Arrays of the batch's shape, built once: the observer's `rows` (B, 1), `mask_row` (B, N) and
        `object_base` (B, 1) (one set for the step and the observations), the needs' `decay` (B, N, 3), and an
        empty `ConflictEvents`' arrays."""
        if self._index_cache is None:
            B, N = self.towns, self.agents
            shared = self.observer.batch_index(B, N)
            none = np.zeros(0, dtype=np.intp)
            self._index_cache = dict(
                rows=shared["rows"], mask_row=shared["mask_row"], object_base=shared["object_base"],
                decay=np.broadcast_to(self.decay, (B, N, len(self.decay))).copy(),  # full size: no short-axis broadcast
                no_conflicts=dict(town=none, blocked=none, blocker=np.zeros(0, dtype=np.int32), queue_length=none,
                                  intensity=np.zeros(0, dtype=np.float32)),
            )
        return self._index_cache

    def _no_conflicts(self) -> ConflictEvents:
        """The usual tick's conflicts: none (the empty arrays are shared; nothing can be written to them)."""
        return ConflictEvents(**self._index()["no_conflicts"])

    def _occupancy(self, s: WorldState) -> np.ndarray:
        """(B, O) agents at each object: its user and its queue."""
        return (s.holder >= 0) + self.observer.queue_counts(s)

    def _release(self, s: WorldState, who: np.ndarray) -> None:
        """Stop the option of `who` (B, N): free a held object, leave a queue (nothing to do, most ticks)."""
        if who.any():
            self._release_at(s, *np.nonzero(who))

    def _release_at(self, s: WorldState, town: np.ndarray, agent: np.ndarray) -> None:
        """Stop the options of the agents (town[i], agent[i])."""
        holding = s.holding[town, agent]
        holder_town, holder = town[holding], agent[holding]
        held = s.target[holder_town, holder]
        s.holder[holder_town, held] = -1
        s.last_holder[holder_town, held] = holder
        s.holding[town, agent] = False
        s.queued[town, agent] = False
        s.active[town, agent] = False
        s.target[town, agent] = -1
        s.progress[town, agent] = 0

    def choose_targets(self, s: WorldState, town: np.ndarray, agent: np.ndarray, options: np.ndarray,
                       extra_claims: np.ndarray | None = None, occupancy: np.ndarray | None = None) -> np.ndarray:
        """Object each (town, agent)'s option would walk to (-1: none eligible); only starters pay for this.

        Nearest by path, where each occupant (user or waiter) counts as `busy_penalty` tiles, each agent
        already walking to it as `claim_penalty` tiles, and a rival among the occupants as `rival_penalty`;
        objects on the agent's fairness cooldown are excluded. `occupancy`: `_occupancy(s)` when the caller has it.
        """
        layout, queues = self.layout, self.config.world.queues
        otype = _OPTION_TYPE[options]
        cand = layout.type_slots[np.maximum(otype, 0)]  # (M, K)
        safe = np.maximum(cand, 0)
        dist = layout.distance[safe, s.y[town, agent][:, None], s.x[town, agent][:, None]].astype(np.float32)
        occupancy = self._occupancy(s) if occupancy is None else occupancy  # (B, O)
        rivals = s.rel[town, agent, :, RIVALRY] > queues.rival_threshold  # (M, N)
        present = np.where(s.holding | s.queued, s.target, -1)[town]  # (M, N) object each other agent is at
        rival_at = (rivals[:, :, None] & (present[:, :, None] == cand[:, None, :])).any(axis=1)  # (M, K)
        score = dist + queues.busy_penalty * occupancy[town[:, None], safe] + queues.rival_penalty * rival_at
        if queues.claim_penalty:
            walking = s.active & (s.target >= 0) & ~s.holding & ~s.queued  # (B, N)
            flat = (self._index()["object_base"] + s.target)[walking]
            claims = np.bincount(flat, minlength=self.towns * layout.num_objects).reshape(self.towns, -1)
            if extra_claims is not None:
                claims = claims + extra_claims
            score = score + queues.claim_penalty * claims[town[:, None], safe]
        cooling = s.cooldown_until[town[:, None], agent[:, None], safe] > s.tick
        score = np.where((cand >= 0) & (otype >= 0)[:, None] & ~cooling, score, np.inf)
        best = np.argmin(score, axis=1)
        target = np.where(np.isfinite(score[np.arange(len(best)), best]), cand[np.arange(len(best)), best], -1)
        return np.where(options == WORK, layout.desk_of_agent[agent], target).astype(np.int32)

    def _spread_same_tick_claims(self, s, t, town, agent, options, targets, occupancy, rounds: int = 2) -> np.ndarray:
        """Agents that set out on the same tick claim in a seeded order: a later starter that picked an object an
        earlier one already claimed this tick chooses again, seeing those claims (a couple of rounds suffice)."""
        objects = self.layout.num_objects
        priority = rng.uniform_at(s.seeds[town], t, rng.STREAM_TIE_BREAK, agent)
        order = np.lexsort((priority, town))  # by town, then the seeded draw
        for _ in range(rounds):
            key = np.where(targets >= 0, town * objects + targets, -1 - np.arange(len(town)))[order]
            _, first = np.unique(key, return_index=True)
            later = np.ones(len(order), dtype=bool)
            later[first] = False
            if not later.any():
                break
            redo = order[later]
            kept = order[~later]
            kept = kept[targets[kept] >= 0]
            extra = np.bincount(town[kept] * objects + targets[kept], minlength=self.towns * objects)
            targets = targets.copy()
            targets[redo] = self.choose_targets(s, town[redo], agent[redo], options[redo],
                                                extra.reshape(self.towns, objects), occupancy)
        return targets

    # ------------------------------------------------------------------ step
    def step(self, actions: np.ndarray, observe: bool = True) -> StepResult:
        if self.state is None:
            raise RuntimeError("call reset() before step()")
        s, world = self.state, self.config.world
        B, N = self.towns, self.agents
        actions = self._checked(actions)
        t = s.tick
        tod = t % world.day_ticks
        allowed = self.action_mask.take(self._index()["mask_row"] + actions)
        tel = dict(zip(TELEMETRY_KEYS, np.zeros((len(TELEMETRY_KEYS), B), dtype=np.float64)))  # (B,) rows
        if allowed.all():  # the usual tick: nothing masked was chosen
            actions = actions.astype(np.int64)
        else:
            tel["invalid_actions"] += (~allowed).sum(axis=1)
            actions = np.where(allowed, actions, WAIT).astype(np.int64)
        reward = np.zeros((B, N), dtype=np.float32)
        events = EventBuffer()

        # 1. Option switch: choosing the active option again continues it; anything else stops it.
        is_object = _IS_OBJECT_OPTION[actions]
        continuing = is_object & s.active & (s.option == actions)
        self._release(s, s.active & ~continuing)
        starting = is_object & ~continuing
        s.option_age = (s.option_age + 1) * continuing
        s.option = actions
        occupancy = None  # (B, O) users and waiters per object: unchanged until the queue joins, built if needed
        if starting.any():
            occupancy = self._occupancy(s)
            town, agent = np.nonzero(starting)
            targets = self.choose_targets(s, town, agent, actions[town, agent], occupancy=occupancy)
            if self.config.world.queues.claim_penalty and len(town) > 1:
                targets = self._spread_same_tick_claims(s, t, town, agent, actions[town, agent], targets, occupancy)
            s.target[town, agent] = targets
            s.active[town[targets >= 0], agent[targets >= 0]] = True
            tel["failed_actions"] += np.bincount(town[targets < 0], minlength=B)

        # 1b. Walkers re-pick: an agent still walking (not yet queued) to an object that someone now holds or
        # waits at switches to a better one of the type if there is one (claims of others count as before).
        if world.queues.retarget_walkers:
            self._retarget_walkers(s, starting, occupancy)

        # 2. Movement: explicit moves, and one step along the shortest path for walking options.
        safe_target = np.maximum(s.target, 0)
        access = self.access_tile.take(safe_target)
        tile = s.y * self.layout.size + s.x
        walking = s.active & ~s.holding & ~s.queued & (tile != access)
        code = np.where(actions >= MOVE_N, actions - MOVE_N, _STAY)
        if walking.any():
            path_code = self.next_move.take(safe_target * self.tiles + tile)
            code = np.where(walking & (path_code >= 0), path_code, code)
        move = tile * (_STAY + 1) + code
        s.y, s.x = self.dest_y.take(move), self.dest_x.take(move)

        # 3. Queue joins: arrivals take a ticket; older options go first, then a seeded draw.
        arrivals = s.active & ~s.holding & ~s.queued & (s.y * self.layout.size + s.x == access)
        any_arrivals = arrivals.any()
        if any_arrivals:
            town, agent = np.nonzero(arrivals)  # only arrivals draw and take a ticket
            draw = (rng.uniform_at(s.seeds[town], t, rng.STREAM_TIE_BREAK, agent) * 65535).astype(np.int64)
            youth = (1 << 16) - 1 - np.minimum(s.option_age[town, agent], (1 << 16) - 1).astype(np.int64)
            s.ticket = s.ticket.copy()
            s.ticket[town, agent] = t * _TICKET_TICK + (youth << _TICKET_AGE_SHIFT) + draw * N + agent
            s.queued = s.queued | arrivals

        # 4. Acquisition: the head of each free object's queue takes it (costs charged now).
        if s.queued.any():
            self._acquire(s, t, tod, reward, tel, events)

        # 5. Conflicts: an arrival still waiting was blocked by the holder.
        conflicts = self._conflicts(s, arrivals & s.queued, tel, events) if any_arrivals else self._no_conflicts()
        if len(conflicts.town):
            reward[conflicts.town, conflicts.blocked] -= self.config.rewards.queue_conflict_penalty

        # 6. Use and completion of timed affordances.
        self._use(s, t, tel, events)

        # 7. Work, shifts, takeovers and late help.
        self._work(s, tod, reward, tel, events)

        # 8. Chat with an adjacent agent.
        chatting = actions == CHAT
        if chatting.any():
            self._chat(s, t, chatting, reward, tel, events)

        # 9. Needs decay, faints.
        fainted = self._decay_needs(s)

        # 10. Rewards: homeostasis, survival, then the clip; the faint penalty lands after it.
        reward = self._rewards(s, reward, fainted)

        # 11. Relationships, respawn, day boundary.
        apply_events(s.rel, s.tie, s.personality, events, world.relationships)
        if fainted.any():
            tel["faints"] += fainted.sum(axis=1)
            self._respawn(s, fainted)
        if (t + 1) % world.day_ticks == 0:
            decay_daily(s.rel, world.relationships)
        s.tick = t + 1
        self.action_mask, self.observation = self.observer.mask_and_observe(s, observe)
        return StepResult(
            observation=self.observation,
            rewards=reward,
            dones=fainted,
            truncated=s.tick >= world.episode_ticks,
            action_mask=self.action_mask,
            telemetry=tel,
            conflicts=conflicts,
        )

    def _checked(self, actions) -> np.ndarray:
        """The actions as an array, refused unless (towns, agents) integer ids of actions."""
        actions = np.asarray(actions)
        B, N = self.towns, self.agents
        if actions.shape != (B, N) or actions.dtype.kind not in "iu":
            raise ValueError(f"actions: expected integer array of shape {(B, N)}, got {actions.dtype} {actions.shape}")
        low, high = np.minimum.reduce(actions, axis=None), np.maximum.reduce(actions, axis=None)
        if low < 0 or high >= NUM_ACTIONS:
            raise ValueError(f"actions: ids must lie in [0, {NUM_ACTIONS}), got {low}..{high}")
        return actions

    def _decay_needs(self, s: WorldState) -> np.ndarray:
        """Needs fall by their decay, clamped to [0, 1] in place; (B, N) agents that starved long enough faint."""
        needs = s.needs
        np.subtract(needs, self._index()["decay"], out=needs)
        np.maximum(needs, 0.0, out=needs)  # np.clip's values, without its per-call overhead
        np.minimum(needs, 1.0, out=needs)
        lowest = np.minimum(np.minimum(needs[..., 0], needs[..., 1]), needs[..., 2])  # short-axis min is slow
        s.starving = (s.starving + 1) * (lowest <= 0.0)
        return s.starving >= self.config.world.needs.faint_ticks

    def _rewards(self, s: WorldState, reward: np.ndarray, fainted: np.ndarray) -> np.ndarray:
        """(B, N) float32: the tick's reward plus homeostasis and survival, clipped; the faint penalty after."""
        rewards_cfg = self.config.rewards
        deficit = np.square(1.0 - s.needs) @ self.need_weights
        reward += -rewards_cfg.homeostasis_scale * deficit + rewards_cfg.survival
        np.maximum(reward, -rewards_cfg.clip, out=reward)
        np.minimum(reward, rewards_cfg.clip, out=reward)
        if not fainted.any():
            return reward
        return (reward - rewards_cfg.faint_penalty * fainted).astype(np.float32)

    # ------------------------------------------------------------------ phases
    def _retarget_walkers(self, s: WorldState, starting: np.ndarray, occupancy: np.ndarray | None) -> None:
        """Walkers (not starters, not commuters to their own desk) whose target got taken choose again."""
        walkers = s.active & ~s.holding & ~s.queued & ~starting & (s.option != WORK)
        if not walkers.any():
            return
        occupancy = self._occupancy(s) if occupancy is None else occupancy
        town, agent = np.nonzero(walkers)
        target = np.maximum(s.target[town, agent], 0)
        taken = occupancy[town, target] > 0  # someone holds it or waits at it
        town, agent, target = town[taken], agent[taken], target[taken]
        if len(town):
            s.target[town, agent] = -1  # its own claim must not count against the alternatives
            again = self.choose_targets(s, town, agent, s.option[town, agent], occupancy=occupancy)
            s.target[town, agent] = np.where(again >= 0, again, target)

    def _acquire(self, s, t, tod, reward, tel, events) -> None:
        """Queued agents with nobody ahead of them take their free object; only queued agents are examined."""
        world = self.config.world
        town, agent = np.nonzero(s.queued)
        obj = s.target[town, agent]
        same = (s.target[town] == obj[:, None]) & s.queued[town]  # (M, N) others queued for the same object
        head = ~(same & (s.ticket[town] < s.ticket[town, agent][:, None])).any(axis=1)
        keep = head & (s.holder[town, obj] < 0)
        town, agent, obj = town[keep], agent[keep], obj[keep]
        if len(town) == 0:
            return
        option = s.option[town, agent]
        ticket = s.ticket[town, agent]
        ok = s.wallet[town, agent] >= self.cost[option]
        # Meals: of the eaters taking a fridge at once, only as many as the pantry holds succeed.
        eater = ok & (option == EAT)
        earlier = (eater[None, :] & (town[None, :] == town[:, None]) & (ticket[None, :] < ticket[:, None])).sum(axis=1)
        ok &= (option != EAT) | (earlier < s.meals[town])
        if not ok.all():
            bad_town, bad_agent = town[~ok], agent[~ok]
            tel["failed_actions"] += np.bincount(bad_town, minlength=self.towns)
            s.queued[bad_town, bad_agent] = False
            s.active[bad_town, bad_agent] = False
            s.target[bad_town, bad_agent] = -1
            town, agent, obj, option, ticket = town[ok], agent[ok], obj[ok], option[ok], ticket[ok]
        if len(town) == 0:
            return
        previous = s.last_holder[town, obj]
        polite = (ticket // _TICKET_TICK < t) & (previous >= 0) & (previous != agent)
        events.add(town[polite], agent[polite], previous[polite], world.relationships.queued_politely.vector())
        tel["queued_politely_events"] += np.bincount(town[polite], minlength=self.towns)
        s.holder[town, obj] = agent
        s.holding[town, agent] = True
        s.queued[town, agent] = False
        s.progress[town, agent] = 0
        s.wallet[town, agent] -= self.cost[option]
        s.meals -= np.bincount(town[option == EAT], minlength=self.towns).astype(np.int32)
        # Arriving at one's desk for the current shift: on time or late.
        desk = (option == WORK) & ~s.arrived[town, agent] & (tod < self.shift_end[agent])
        if desk.any():
            town, agent = town[desk], agent[desk]
            late = tod > self.shift_start[agent]
            rewards = self.config.rewards
            reward[town, agent] += np.where(late, -rewards.lateness_penalty, rewards.punctuality_bonus)
            s.arrived[town, agent] = True
            s.late[town, agent] = late
            s.lateness[town, agent] += late
            s.shifts_attended[town, agent] += 1
            tel["late_arrivals"] += np.bincount(town[late], minlength=self.towns)
            tel["on_time_arrivals"] += np.bincount(town[~late], minlength=self.towns)

    def _conflicts(self, s, blocked_now, tel, events) -> ConflictEvents:
        if not blocked_now.any():  # the usual tick: nobody arrived at a held object
            return self._no_conflicts()
        queues, rel_cfg = self.config.world.queues, self.config.world.relationships
        safe_target = np.maximum(s.target, 0)
        blocker = s.holder[self._index()["rows"], safe_target]
        blocked = blocked_now & (blocker >= 0)
        town, agent = np.nonzero(blocked)
        obj = s.target[town, agent]
        length = self.observer.queue_counts(s)[town, obj]
        intensity = np.clip(
            queues.intensity_base + queues.intensity_per_waiter * (length - 1),
            queues.intensity_min, queues.intensity_max,
        ).astype(np.float32)
        by = blocker[town, agent]
        rivalry = queues.rivalry_per_intensity * intensity
        own = np.asarray(rel_cfg.queue_conflict.vector(), dtype=np.float32)[None, :].repeat(len(town), 0)
        own[:, RIVALRY] += rivalry
        other = np.zeros_like(own)
        other[:, RIVALRY] = rivalry
        events.add(town, agent, by, own)
        events.add(town, by, agent, other)
        tel["queue_conflict_events"] += np.bincount(town, minlength=self.towns)
        tel["queue_conflict_intensity"] += np.bincount(town, weights=intensity, minlength=self.towns)
        return ConflictEvents(town=town, blocked=agent, blocker=by, queue_length=length, intensity=intensity)

    def _use(self, s, t, tel, events) -> None:
        timed = s.holding & (s.option != WORK)
        s.progress += timed
        town, agent = np.nonzero(timed & (s.progress >= self.duration[s.option]))
        if len(town) == 0:
            return
        option, obj = s.option[town, agent], s.target[town, agent]
        s.needs[town, agent] = np.minimum(np.maximum(s.needs[town, agent] + self.effects[option], 0.0), 1.0)
        eaten = option == EAT
        if eaten.any():
            # A shared meal: an eater finishing while another eats (pairs finishing together count once).
            eat_town, eat_agent = town[eaten], agent[eaten]
            eating = s.holding[eat_town] & (s.option[eat_town] == EAT)  # (M, N)
            finishing = np.zeros_like(eating)
            same_town = eat_town[:, None] == eat_town[None, :]
            finishing[np.nonzero(same_town)[0], eat_agent[np.nonzero(same_town)[1]]] = True
            others = np.arange(self.agents)[None, :]
            pair = eating & (others != eat_agent[:, None]) & (~finishing | (others > eat_agent[:, None]))
            which, j = np.nonzero(pair)
            i, pair_town = eat_agent[which], eat_town[which]
            meal = self.config.world.relationships.shared_meal.vector()
            events.add(np.concatenate([pair_town, pair_town]), np.concatenate([i, j]), np.concatenate([j, i]), meal)
            tel["shared_meal_events"] += np.bincount(pair_town, minlength=self.towns)
        completed = np.bincount(town * NUM_ACTIONS + option, minlength=self.towns * NUM_ACTIONS)  # one count for all
        completed = completed.reshape(self.towns, NUM_ACTIONS)
        for key, done_option in (("meals_eaten", EAT), ("meals_cooked", COOK), ("showers", SHOWER), ("sleeps", SLEEP)):
            tel[key] += completed[:, done_option]
        s.meals += completed[:, COOK].astype(np.int32)
        s.cooldown_until[town, agent, obj] = t + 1 + self.config.world.queues.cooldown_ticks
        self._release_at(s, town, agent)

    def _work(self, s, tod, reward, tel, events) -> None:
        world = self.config.world
        if self.any_on_shift[tod]:  # off every shift, nobody earns (most of the day)
            working = s.holding & (s.option == WORK) & self.on_shift[tod][None, :]
            wages = np.where(working, self.wage[None, :], 0.0).astype(np.float32)
            s.wallet = s.wallet + wages
            reward += self.config.rewards.wage_scale * wages
            tel["wages"] += wages.sum(axis=1)

        if self.any_cover_tick[tod]:
            cover_tick = self.cover_tick[tod]  # (N,)
            late = cover_tick[None, :] & ~s.arrived
            helper = s.arrived & ~s.late & s.holding & (s.option == WORK)
            pairs = late[:, :, None] & helper[:, None, :] & self.same_job[None]
            if pairs.any():
                # The coworker who has been at their desk longest covers; its ambition decides how.
                ambition = s.personality[..., 2]
                cover = np.argmin(np.where(pairs, s.ticket[:, None, :], np.iinfo(np.int64).max), axis=2)
                covered = pairs.any(axis=2)
                takes = covered & (np.take_along_axis(ambition, cover, axis=1) > world.jobs.takeover_ambition)
                helps = covered & ~takes
                rel = world.relationships
                for mask, delta, key in ((takes, rel.shift_takeover, "shift_takeover_events"),
                                         (helps, rel.late_help, "late_help_events")):
                    town, agent = np.nonzero(mask)
                    events.add(town, agent, cover[town, agent], delta.vector(), work_event=True)
                    tel[key] += mask.sum(axis=1)
                # The taker is paid for the slot it took over.
                town, agent = np.nonzero(takes)
                bonus = self.wage[agent] * world.jobs.takeover_delay
                np.add.at(s.wallet, (town, cover[town, agent]), bonus.astype(np.float32))

        if self.any_shift_over[tod]:
            shift_over = self.shift_over[tod]  # (N,): this was the shift's last tick
            ending = shift_over[None, :] & np.ones((self.towns, 1), dtype=bool)
            tel["absences"] += (ending & ~s.arrived).sum(axis=1)
            s.shifts_elapsed = s.shifts_elapsed + ending
            self._release(s, ending & s.active & (s.option == WORK))
            s.arrived &= ~ending
            s.late &= ~ending

    def _chat(self, s, t, chatting, reward, tel, events) -> None:
        """Each chatting agent talks to its most familiar neighbour; only chatting agents are examined."""
        world, rewards, chat = self.config.world, self.config.rewards, self.config.world.chat
        town, agent = np.nonzero(chatting)
        adjacent = (np.abs(s.y[town] - s.y[town, agent][:, None]) + np.abs(s.x[town] - s.x[town, agent][:, None])) <= 1
        adjacent &= np.arange(self.agents)[None, :] != agent[:, None]  # (M, N)
        has_partner = adjacent.any(axis=1)
        town, agent, adjacent = town[has_partner], agent[has_partner], adjacent[has_partner]
        familiarity = s.rel[town, agent, :, FAMILIARITY]  # (M, N)
        other = np.argmax(np.where(adjacent, familiarity, -np.inf), axis=1)
        trust, fam = s.rel[town, agent, other, TRUST], s.rel[town, agent, other, FAMILIARITY]
        p = np.clip(chat.base_success * (1 + chat.trust_coef * trust) * (1 + chat.familiarity_coef * fam), 0, 1)
        draws = rng.uniform_at(s.seeds[town], t, rng.STREAM_CHAT_SUCCESS, agent)
        success = draws < p
        noise = rng.uniform_at(s.seeds[town], t, rng.STREAM_CHAT_QUALITY, agent)
        extroversion = s.personality[town, agent, 0] + s.personality[town, other, 0]
        quality = np.clip(0.5 + 0.25 * fam + 0.125 * extroversion + chat.quality_noise * (2 * noise - 1), 0.0, 1.0)
        rel = world.relationships
        for mask, delta in ((success, np.asarray(rel.chat_success.vector())[None, :] * quality[:, None]),
                            (~success, np.asarray(rel.chat_failure.vector())[None, :])):
            delta = np.broadcast_to(delta, (len(town), 3))[mask]
            both = np.concatenate
            events.add(both([town[mask]] * 2), both([agent[mask], other[mask]]), both([other[mask], agent[mask]]),
                       both([delta, delta]))
        bonus = rewards.chat_base + rewards.chat_trust * trust + rewards.chat_familiarity * fam
        reward[town[success], agent[success]] += bonus[success].astype(np.float32)
        s.chat_ready_at[town, agent] = t + 1 + chat.cooldown_ticks
        tel["chat_success_events"] += np.bincount(town[success], minlength=self.towns)
        tel["chat_failure_events"] += np.bincount(town[~success], minlength=self.towns)
        tel["chat_quality_sum"] += np.bincount(town[success], weights=quality[success], minlength=self.towns)

    def _respawn(self, s, fainted) -> None:
        """A fainted agent wakes at home with fresh needs; the rest of the town goes on."""
        self._release(s, fainted)
        home = np.broadcast_to(self.layout.home_bed[None, :], fainted.shape)
        s.y = np.where(fainted, self.layout.access_y[home], s.y).astype(np.int32)
        s.x = np.where(fainted, self.layout.access_x[home], s.x).astype(np.int32)
        s.needs = np.where(fainted[..., None], np.float32(self.config.world.needs.respawn_level), s.needs)
        s.starving[fainted] = 0
        s.option[fainted] = WAIT
