"""The rules of TOWNLET.md section 1, each pinned on a hand-arranged town."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import act, calm, make_world, place
from townlet_pipelines.world.actions import CHAT, EAT, MOVE_N, MOVE_W, SHOWER, WAIT, WORK
from townlet_pipelines.world.relationships import FAMILIARITY, RIVALRY, TRUST, EventBuffer, apply_events

ONE_JOB = {"jobs": [{"name": "shop", "shift_start": 100, "shift_end": 200, "wage": 0.02}], "work_window_before": 30}


def steps(env, n, **chosen):
    result = None
    for _ in range(n):
        result = env.step(act(env, **chosen))
    return result


def test_needs_decay_every_tick_and_clamp_at_zero(small_world):
    env = small_world
    calm(env)
    env.state.needs[0, 0] = [0.0003, 0.5, 1.0]
    env.step(act(env))
    decay = env.config.world.needs
    np.testing.assert_allclose(
        env.state.needs[0, 0], [0.0, 0.5 - decay.hygiene_decay, 1.0 - decay.energy_decay], rtol=1e-6
    )


def test_eating_charges_at_start_and_applies_effects_on_completion(small_world):
    env = small_world
    calm(env)
    s = env.state
    fridge = env.layout.type_slots[0, 0]
    place(env, 0, env.layout.access_y[fridge], env.layout.access_x[fridge])
    s.needs[0, 0] = [0.3, 1.0, 0.5]
    meals = int(s.meals[0])
    env.step(act(env, a0=EAT))
    assert s.holder[0, fridge] == 0
    assert s.wallet[0, 0] == pytest.approx(1.0 - 0.40)
    assert s.meals[0] == meals - 1
    steps(env, 13, a0=EAT)
    assert s.holding[0, 0]  # 14 of 15 ticks: not done yet, no effect yet
    decay = env.config.world.needs
    assert s.needs[0, 0, 0] == pytest.approx(0.3 - 14 * decay.hunger_decay, abs=1e-6)
    result = env.step(act(env, a0=EAT))
    assert not s.holding[0, 0] and s.holder[0, fridge] == -1
    assert s.needs[0, 0, 0] == pytest.approx(0.3 - 15 * decay.hunger_decay + 0.40, abs=1e-6)
    assert s.needs[0, 0, 2] == pytest.approx(0.5 - 15 * decay.energy_decay + 0.05, abs=1e-6)
    assert result.telemetry["meals_eaten"][0] == 1
    assert result.telemetry["shared_meal_events"][0] == 0  # a solo meal is not a shared one
    # Fairness: the same fridge is off limits for the cooldown; the next meal targets the other one.
    assert s.cooldown_until[0, 0, fridge] == 15 + env.config.world.queues.cooldown_ticks
    other = env.layout.type_slots[0, 1]
    target = env.choose_targets(s, np.array([0]), np.array([0]), np.array([EAT]))
    assert target[0] == other


def test_eat_fails_without_meal_or_money_and_is_masked(small_world):
    env = small_world
    calm(env)
    env.state.meals[0] = 0
    env.action_mask = env.observer.action_mask(env.state)
    assert not env.action_mask[0, 0, EAT]
    env.state.meals[0] = 3
    env.state.wallet[0, 0] = 0.1
    env.action_mask = env.observer.action_mask(env.state)
    assert not env.action_mask[0, 0, EAT] and not env.action_mask[0, 0, SHOWER]
    result = env.step(act(env, a0=EAT))  # a masked action is played as `wait` and counted
    assert result.telemetry["invalid_actions"][0] == 1
    assert not env.state.active[0, 0]


def _shower_race(seed: int, older_agent: int | None):
    env = make_world({"agents_per_town": 2, "objects": {"showers": 1}}, seed=seed)
    calm(env)
    shower = env.layout.type_slots[2, 0]
    ay, ax = env.layout.access_y[shower], env.layout.access_x[shower]
    if older_agent is None:
        place(env, 0, ay, ax - 1)
        place(env, 1, ay, ax + 1)
        return env, env.step(act(env, a0=SHOWER, a1=SHOWER))
    younger = 1 - older_agent
    place(env, older_agent, ay, ax - 2)
    place(env, younger, ay, ax + 1)
    env.step(act(env, **{f"a{older_agent}": SHOWER}))
    return env, env.step(act(env, a0=SHOWER, a1=SHOWER))


def test_two_arrivals_conflict_and_older_option_wins_the_tie():
    for seed in range(6):
        env, result = _shower_race(seed, older_agent=1)
        s = env.state
        assert s.holding[0, 1] and s.queued[0, 0]
        conflict = result.conflicts
        assert (conflict.blocked.tolist(), conflict.blocker.tolist()) == ([0], [1])
        assert conflict.queue_length.tolist() == [1]
        assert conflict.intensity.tolist() == [pytest.approx(1.5)]
        assert result.telemetry["queue_conflict_events"][0] == 1
        assert result.telemetry["queue_conflict_intensity"][0] == pytest.approx(1.5)
        assert s.rel[0, 0, 1, RIVALRY] == pytest.approx(0.15 * 1.5)
        assert s.rel[0, 0, 1, FAMILIARITY] == pytest.approx(-0.05)
        assert s.rel[0, 1, 0, RIVALRY] == pytest.approx(0.15 * 1.5)


def test_the_older_option_wins_the_tie_in_towns_of_every_allowed_size():
    """The seeded draw breaks ties of equal age only: in a town of 64 agents (the most agents_per_town allows)
    the draw times the agent count once spilled into the age field, so a younger option won 10 races in 40."""
    for agents, grid in ((17, 24), (64, 48)):
        for seed in range(12):
            env = make_world({"agents_per_town": agents, "grid_size": grid, "objects": {"showers": 1}}, seed=seed)
            calm(env)
            shower = env.layout.type_slots[2, 0]
            ay, ax = env.layout.access_y[shower], env.layout.access_x[shower]
            place(env, 0, ay, ax - 2)  # agent 0 sets out a tick earlier, from two tiles away
            place(env, 1, ay, ax + 1)
            env.step(act(env, a0=SHOWER))
            env.step(act(env, a0=SHOWER, a1=SHOWER))
            assert env.state.holder[0, shower] == 0, (agents, seed)


def test_equal_age_arrivals_are_broken_by_a_seeded_draw():
    winners = {seed: int(np.flatnonzero(_shower_race(seed, None)[0].state.holding[0])[0]) for seed in range(16)}
    assert set(winners.values()) == {0, 1}  # the draw really decides
    assert all(int(np.flatnonzero(_shower_race(seed, None)[0].state.holding[0])[0]) == winner
               for seed, winner in list(winners.items())[:4])  # and the same seed decides the same way


def test_waiting_turn_is_polite_after_the_conflict():
    env, _ = _shower_race(0, older_agent=1)
    s = env.state
    duration = env.config.world.affordances.use_shower.duration
    result = steps(env, duration - 1, a0=SHOWER, a1=SHOWER)
    assert not s.holding[0, 1]  # agent 1 finished; agent 0 takes over on the next tick
    result = env.step(act(env, a0=SHOWER, a1=SHOWER))
    assert s.holding[0, 0]
    assert result.telemetry["queued_politely_events"][0] == 1
    assert result.telemetry["queue_conflict_events"][0] == 0
    assert s.rel[0, 0, 1, TRUST] == pytest.approx(0.05)
    assert s.rel[0, 0, 1, FAMILIARITY] == pytest.approx(-0.05 + 0.05, abs=1e-7)
    assert s.rel[0, 0, 1, RIVALRY] == pytest.approx(0.15 * 1.5 - 0.05)


def _late_coworker(ambition: float):
    env = make_world({"agents_per_town": 2, "jobs": ONE_JOB})
    calm(env)
    s = env.state
    s.personality[0, 0, 2] = ambition
    s.tick = 95
    desk = env.layout.desk_of_agent[0]
    place(env, 0, env.layout.access_y[desk], env.layout.access_x[desk])
    result = env.step(act(env, a0=WORK))
    assert result.telemetry["on_time_arrivals"][0] == 1
    cover = steps(env, 20, a0=WORK)  # through tick 115 = shift start + takeover delay
    assert s.tick == 116
    return env, cover


def test_a_late_coworker_is_taken_over_by_an_ambitious_one():
    env, result = _late_coworker(ambition=0.5)
    s = env.state
    assert result.telemetry["shift_takeover_events"][0] == 1
    assert result.telemetry["late_help_events"][0] == 0
    assert s.rel[0, 1, 0, TRUST] == pytest.approx(-0.10)
    assert s.rel[0, 1, 0, RIVALRY] == pytest.approx(0.30)
    wage = 0.02
    assert s.wallet[0, 0] == pytest.approx(1.0 + wage * 16 + wage * 15, abs=1e-5)  # 16 worked + the slot bonus
    # The late agent arrives at last: late, counted, penalised.
    desk = env.layout.desk_of_agent[1]
    place(env, 1, env.layout.access_y[desk], env.layout.access_x[desk])
    result = env.step(act(env, a0=WORK, a1=WORK))
    assert result.telemetry["late_arrivals"][0] == 1 and s.lateness[0, 1] == 1
    weights = np.array(env.config.rewards.need_weights())
    expected = -0.10 - 0.05 * float(np.square(1 - s.needs[0, 1]) @ weights) + 0.002 + 0.02
    assert result.rewards[0, 1] == pytest.approx(expected, abs=1e-6)


def test_a_late_coworker_is_helped_by_an_unambitious_one():
    env, result = _late_coworker(ambition=-0.5)
    assert result.telemetry["late_help_events"][0] == 1
    assert result.telemetry["shift_takeover_events"][0] == 0
    np.testing.assert_allclose(env.state.rel[0, 1, 0], [0.20, 0.10, -0.10], rtol=1e-6)


def test_absence_is_counted_when_the_shift_ends():
    env = make_world({"agents_per_town": 2, "jobs": ONE_JOB})
    calm(env)
    env.state.tick = 150
    result = steps(env, 50)
    assert env.state.tick == 200
    assert result.telemetry["absences"][0] == 2
    assert env.state.shifts_elapsed[0].tolist() == [1, 1]


def test_shared_meal_counts_each_pair_once():
    env = make_world({"agents_per_town": 3})
    calm(env)
    for agent in range(2):
        fridge = env.layout.type_slots[0, agent]
        place(env, agent, env.layout.access_y[fridge], env.layout.access_x[fridge])
    total = 0
    for _ in range(15):
        total += env.step(act(env, a0=EAT, a1=EAT)).telemetry["shared_meal_events"][0]
    assert total == 1
    for i, j in ((0, 1), (1, 0)):
        np.testing.assert_allclose(env.state.rel[0, i, j], [0.10, 0.25, 0.0], rtol=1e-6)
    assert not env.state.tie[0, 2].any()


def test_faint_terminates_the_agent_alone_and_respawns_it(small_world):
    env = small_world
    calm(env)
    s = env.state
    s.needs[0, 0, 0] = 0.0
    s.starving[0, 0] = env.config.world.needs.faint_ticks - 1
    s.y[0, 0], s.x[0, 0] = 5, 9
    result = env.step(act(env))
    assert result.dones[0].tolist() == [True, False]
    assert result.rewards[0, 0] < -0.9 and result.rewards[0, 1] > -0.1
    assert result.telemetry["faints"][0] == 1
    np.testing.assert_allclose(s.needs[0, 0], env.config.world.needs.respawn_level)
    home = env.layout.home_bed[0]
    assert (s.y[0, 0], s.x[0, 0]) == (env.layout.access_y[home], env.layout.access_x[home])


def test_chat_moves_both_ties_and_starts_a_cooldown(small_world):
    env = small_world
    calm(env)
    place(env, 0, 5, 9)
    place(env, 1, 5, 10)
    assert env.action_mask[0, 0, CHAT]
    result = env.step(act(env, a0=CHAT))
    success = result.telemetry["chat_success_events"][0]
    assert success + result.telemetry["chat_failure_events"][0] == 1
    s = env.state
    np.testing.assert_allclose(s.rel[0, 0, 1], s.rel[0, 1, 0])
    if success:
        quality = result.telemetry["chat_quality_sum"][0]
        np.testing.assert_allclose(s.rel[0, 0, 1], [0.05 * quality, 0.10 * quality, 0.0], rtol=1e-5)
    else:
        np.testing.assert_allclose(s.rel[0, 0, 1], [0.0, -0.05, 0.05], rtol=1e-6)
    assert not env.action_mask[0, 0, CHAT] and env.action_mask[0, 1, CHAT]


def test_chat_success_rate_follows_the_formula():
    env = make_world({"agents_per_town": 2}, towns=400)
    calm(env)
    env.state.y[:] = 5
    env.state.x[:, 0], env.state.x[:, 1] = 9, 10
    env.action_mask = env.observer.action_mask(env.state)
    result = env.step(act(env, a0=CHAT))
    rate = result.telemetry["chat_success_events"].mean()
    assert abs(rate - 0.7) < 0.08  # trust = familiarity = 0: p = 0.7


def test_mask_blocks_walls_edges_and_work_outside_the_window(small_world):
    env = small_world
    calm(env)
    fridge = env.layout.type_slots[0, 0]
    place(env, 0, env.layout.access_y[fridge], env.layout.access_x[fridge])
    place(env, 1, 0, 0)
    mask = env.action_mask[0]
    assert not mask[0, MOVE_N]  # the fridge stands there
    assert not mask[1, MOVE_N] and not mask[1, MOVE_W]  # the town's edge
    assert mask[0, WAIT] and mask[1, WAIT]
    assert not mask[0, WORK]  # tick 0 is hours before any shift
    start = env.config.world.jobs.jobs[0].shift_start
    env.state.tick = start - env.config.world.jobs.work_window_before
    env.action_mask = env.observer.action_mask(env.state)
    assert env.action_mask[0, 0, WORK]
    assert not env.action_mask[0, 0, CHAT]  # nobody adjacent


def test_relationship_events_scale_by_forgiveness_and_ambition():
    rel = np.zeros((1, 3, 3, 3), dtype=np.float32)
    tie = np.zeros((1, 3, 3), dtype=bool)
    personality = np.zeros((1, 3, 3), dtype=np.float32)
    personality[0, 0] = [0.0, 1.0, 0.0]  # fully forgiving
    personality[0, 1] = [0.0, -1.0, 1.0]  # unforgiving, fully ambitious
    from townlet_pipelines.config import RelationshipConfig

    config = RelationshipConfig()
    events = EventBuffer()
    events.add([0], [0], [1], (-0.10, 0.0, 0.30), work_event=True)
    events.add([0], [1], [0], (-0.10, 0.0, 0.30), work_event=True)
    apply_events(rel, tie, personality, events, config)
    np.testing.assert_allclose(rel[0, 0, 1], [-0.05, 0.0, 0.15], rtol=1e-6)
    np.testing.assert_allclose(rel[0, 1, 0], [-0.10, 0.0, 0.30 * 1.3], rtol=1e-6)


def test_a_new_tie_evicts_the_weakest_beyond_the_cap():
    agents = 8
    rel = np.zeros((1, agents, agents, 3), dtype=np.float32)
    tie = np.zeros((1, agents, agents), dtype=bool)
    personality = np.zeros((1, agents, 3), dtype=np.float32)
    from townlet_pipelines.config import RelationshipConfig

    config = RelationshipConfig()
    events = EventBuffer()
    for other, familiarity in zip(range(1, 7), (0.3, 0.1, 0.5, 0.6, 0.2, 0.4)):
        events.add([0], [0], [other], (0.0, familiarity, 0.0))
    apply_events(rel, tie, personality, events, config)
    assert tie[0, 0].sum() == 6
    events = EventBuffer()
    events.add([0], [0], [7], (0.0, 0.05, 0.0))
    apply_events(rel, tie, personality, events, config)
    assert tie[0, 0].sum() == config.max_ties
    assert tie[0, 0, 7] and not tie[0, 0, 2]  # the new tie stays, the weakest (0.1) goes
    assert rel[0, 0, 2].tolist() == [0.0, 0.0, 0.0]


def test_ties_decay_each_day():
    env = make_world({"agents_per_town": 2, "day_ticks": 60, "jobs": {"jobs": [
        {"name": "j", "shift_start": 30, "shift_end": 50}], "work_window_before": 10}})
    calm(env)
    env.state.rel[0, 0, 1] = [0.5, 0.5, 0.5]
    env.state.tie[0, 0, 1] = True
    steps(env, 59)
    np.testing.assert_allclose(env.state.rel[0, 0, 1], 0.5)
    env.step(act(env))
    np.testing.assert_allclose(env.state.rel[0, 0, 1], 0.5 * (1 - env.config.world.relationships.daily_decay))


def test_an_optional_conflict_penalty_is_charged_to_the_blocked_agent():
    plain, plain_result = _shower_race(0, older_agent=1)
    env = make_world({"agents_per_town": 2, "objects": {"showers": 1}}, rewards={"queue_conflict_penalty": 0.1})
    calm(env)
    shower = env.layout.type_slots[2, 0]
    ay, ax = env.layout.access_y[shower], env.layout.access_x[shower]
    place(env, 1, ay, ax - 2)
    place(env, 0, ay, ax + 1)
    env.step(act(env, a1=SHOWER))
    result = env.step(act(env, a0=SHOWER, a1=SHOWER))
    assert result.conflicts.blocked.tolist() == [0]
    assert result.rewards[0, 0] == pytest.approx(plain_result.rewards[0, 0] - 0.1, abs=1e-6)
    assert result.rewards[0, 1] == pytest.approx(plain_result.rewards[0, 1], abs=1e-6)


def _two_showers(**queues):
    env = make_world({"agents_per_town": 3, "objects": {"showers": 2}, "queues": queues})
    calm(env)
    first, second = env.layout.type_slots[2, 0], env.layout.type_slots[2, 1]
    return env, first, second


def test_agents_setting_out_on_one_tick_claim_different_objects():
    env, first, second = _two_showers()
    ay, ax = env.layout.access_y[first], env.layout.access_x[first]
    place(env, 0, ay, ax + 1)
    place(env, 1, ay, ax + 1)  # both stand next to the first shower
    env.step(act(env, a0=SHOWER, a1=SHOWER))
    assert sorted(env.state.target[0, :2].tolist()) == sorted([first, second])
    env, first, second = _two_showers(claim_penalty=0.0)  # without the rule both walk to the nearest one
    place(env, 0, ay, ax + 1)
    place(env, 1, ay, ax + 1)
    env.step(act(env, a0=SHOWER, a1=SHOWER))
    assert env.state.target[0, :2].tolist() == [first, first]


def test_a_walker_whose_object_is_taken_re_picks_a_free_one():
    env, first, second = _two_showers(claim_penalty=0.5)  # small: agent 0 below still takes the first one
    ay, ax = env.layout.access_y[first], env.layout.access_x[first]
    place(env, 0, ay, ax)  # on the first shower's access tile: takes it at once
    place(env, 1, ay + 3, ax)  # a few tiles away
    env.step(act(env, a1=SHOWER))
    assert env.state.target[0, 1] == first  # nearest, and free when it set out
    env.step(act(env, a0=SHOWER, a1=SHOWER))
    assert env.state.holding[0, 0] and env.state.target[0, 0] == first
    env.step(act(env, a0=SHOWER, a1=SHOWER))
    assert env.state.target[0, 1] == second
    env, first, second = _two_showers(claim_penalty=0.5, retarget_walkers=False)
    place(env, 0, ay, ax)
    place(env, 1, ay + 3, ax)
    env.step(act(env, a1=SHOWER))
    steps(env, 2, a0=SHOWER, a1=SHOWER)
    assert env.state.target[0, 1] == first  # without the rule it walks on into the queue


def test_the_attendance_ratio_counts_the_current_shift_once_the_agent_arrives():
    """Attended over the shifts that count: the ended ones and, once the agent has arrived, the current one. It
    was attended over ended shifts alone, so an arrival counted before its shift did: 2.0 mid-way through a
    second attended shift, and 1.0 for an agent that had missed one of three."""
    from townlet_pipelines.world.observations import FEATURE_NAMES

    jobs = {"jobs": [{"name": "shop", "shift_start": 100, "shift_end": 200, "wage": 0.02}], "work_window_before": 30}
    env = make_world({"agents_per_town": 1, "day_ticks": 300, "jobs": jobs})
    calm(env)
    s, column = env.state, FEATURE_NAMES.index("attendance_ratio")
    desk = env.layout.desk_of_agent[0]
    place(env, 0, env.layout.access_y[desk], env.layout.access_x[desk])
    read = []
    for day, action in enumerate((WORK, WAIT, WORK)):  # attend, miss, attend
        s.needs[:] = 1.0
        s.tick = day * 300 + 95
        env.action_mask = env.observer.action_mask(s)
        for _ in range(10):
            env.step(act(env, a0=action))
        read.append(float(env.observation.features[0, 0, column]))  # mid-shift
        while s.tick % 300 != 200:
            env.step(act(env, a0=action))
        read.append(float(env.observation.features[0, 0, column]))  # the shift over
    assert read == pytest.approx([1.0, 1.0, 1.0, 0.5, 2 / 3, 2 / 3])
