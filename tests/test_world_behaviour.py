"""Whole-world properties: determinism, batch independence, observations, config errors, the expert."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from tests.conftest import make_config
from townlet_pipelines.config import ConfigError, TownletConfig, config_from_mapping, load_config
from townlet_pipelines.world.actions import NUM_ACTIONS
from townlet_pipelines.world.engine import TownWorld
from townlet_pipelines.world.observations import FEATURE_NAMES
from townlet_pipelines.world.policies import RandomPolicy, ScriptedExpert
from townlet_pipelines.world.simulate import simulate


def _trajectory(config: TownletConfig, seeds, ticks: int, policy_seed: int | None = None):
    world = TownWorld(config, len(seeds))
    world.reset(np.asarray(seeds, dtype=np.uint64))
    policy = ScriptedExpert(config.expert) if policy_seed is None else RandomPolicy(policy_seed)
    frames = []
    for _ in range(ticks):
        result = world.step(policy.act(world))
        frames.append((result.observation.map, result.observation.features, result.rewards, result.dones,
                       result.action_mask))
    return world, frames


def test_same_config_and_seed_give_bit_identical_trajectories():
    config = TownletConfig()
    world_a, frames_a = _trajectory(config, [3, 4], 300)
    world_b, frames_b = _trajectory(config, [3, 4], 300)
    for frame_a, frame_b in zip(frames_a, frames_b):
        for a, b in zip(frame_a, frame_b):
            assert a.tobytes() == b.tobytes()
    for field in dataclasses.fields(world_a.state):
        a, b = getattr(world_a.state, field.name), getattr(world_b.state, field.name)
        assert np.array_equal(a, b), field.name
    _, frames_c = _trajectory(config, [5, 4], 300)
    assert frames_c[-1][2][0].tobytes() != frames_a[-1][2][0].tobytes()  # another seed, another town


def test_a_town_in_a_batch_equals_the_same_town_run_alone():
    config = TownletConfig()
    batch, frames_batch = _trajectory(config, [11, 12, 13], 400)
    alone, frames_alone = _trajectory(config, [12], 400)
    for frame_batch, frame_alone in zip(frames_batch, frames_alone):
        for a, b in zip(frame_batch, frame_alone):
            assert np.array_equal(a[1], b[0])
    for field in dataclasses.fields(batch.state):
        value = getattr(batch.state, field.name)
        if isinstance(value, np.ndarray):
            assert np.array_equal(value[1], getattr(alone.state, field.name)[0]), field.name


@pytest.mark.parametrize("variant, channels, window", [("hybrid", 4, 11), ("full", 9, 21), ("compact", None, None)])
def test_observation_variants_match_their_spec(variant, channels, window):
    config = make_config({"agents_per_town": 4}, observations={"variant": variant})
    world = TownWorld(config, 3)
    observation, mask = world.reset(0)
    spec = world.spec
    assert observation.features.shape == (3, 4, len(FEATURE_NAMES)) == (3, 4, spec.feature_dim)
    assert observation.features.dtype == np.float32 and np.isfinite(observation.features).all()
    assert mask.shape == (3, 4, NUM_ACTIONS) and mask.dtype == bool
    if channels is None:
        assert observation.map is None and spec.map_shape is None
    else:
        assert spec.map_shape == (channels, window, window) == observation.map.shape[2:]
        assert observation.map.dtype == np.uint8
        centre = window // 2
        assert (observation.map[:, :, 0, centre, centre] == 1).all()  # the self channel
        assert observation.map[:, :, 0].sum() == 3 * 4
    assert len(set(FEATURE_NAMES)) == len(FEATURE_NAMES)


def test_hybrid_map_shows_other_agents_objects_and_the_edge():
    world = TownWorld(make_config({"agents_per_town": 2}), 1)
    world.reset(0)
    s = world.state
    s.y[0], s.x[0] = [5, 5], [5, 7]
    observation = world.observer.observe(s)
    grid = observation.map[0, 0]  # agent 0 at (5, 5), window 11: offset (y - 5, x - 5)
    assert grid[1, 5, 7] == 1 and grid[1, 5, 5] == 0  # agent 1 two tiles east; self not counted
    fridge = world.layout.type_slots[0, 0]
    assert grid[2, world.layout.object_y[fridge], world.layout.object_x[fridge]] == 1  # fridge code 1
    s.y[0, 0], s.x[0, 0] = 0, 0
    edge = world.observer.observe(s).map[0, 0]  # window rows/columns 0-4 lie beyond the edge
    assert (edge[2, :5, :] == 6).all() and (edge[2, :, :5] == 6).all()
    assert edge[2, 5, 5] == 0 and edge[2, 6, 6] == 1  # the agent's tile; the fridge at (1, 1)


def test_features_name_what_they_hold():
    world = TownWorld(TownletConfig(), 1)
    world.reset(0)
    s = world.state
    features = world.observer.observe(s).features[0]
    index = {name: i for i, name in enumerate(FEATURE_NAMES)}
    np.testing.assert_allclose(features[:, index["hunger"]], s.needs[0, :, 0])
    np.testing.assert_allclose(features[:, index["extroversion"]], s.personality[0, :, 0])
    assert features[:, index["time_cos"]].tolist() == [1.0] * world.agents


@pytest.mark.parametrize(
    "world, field",
    [
        ({"needs": {"hunger_decay": -0.1}}, "needs.hunger_decay"),
        ({"jobs": {"jobs": [{"name": "x", "shift_start": 1400, "shift_end": 1500}]}}, "shift_start/shift_end"),
        ({"grid_size": 6}, "grid_size"),
        ({"agents_per_town": 0}, "agents_per_town"),
        ({"teleporters": 3}, "teleporters"),
    ],
)
def test_bad_world_config_is_refused_naming_the_field(world, field):
    with pytest.raises(ConfigError) as error:
        config_from_mapping({"world": world}, "test.yaml")
    assert field in str(error.value) and "test.yaml" in str(error.value)


def test_config_file_errors_name_the_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("world: [unclosed")
    with pytest.raises(ConfigError, match="broken.yaml"):
        load_config(path)
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "missing.yaml")
    path.write_text("world:\n  grid_size: 48\n")
    assert load_config(path).world.grid_size == 48
    assert load_config("smoke").profile == "smoke"


def test_expert_keeps_every_agent_of_the_default_town_alive_for_a_week_over_ten_seeds():
    config = TownletConfig()
    report = simulate(config, towns=10, ticks=config.world.episode_ticks, policy=ScriptedExpert(config.expert),
                      seed=0, observe=False)
    assert report.faints == 0
    assert report.absences_per_agent_day < 0.05
    assert report.mean_wallet > config.world.initial_wallet  # solvent: earns more than it spends
    # Rewards are informative, not pinned at the clip.
    assert -config.rewards.clip < report.reward_percentiles["p1"]
    assert report.reward_percentiles["p99"] < config.rewards.clip


def test_random_policy_does_measurably_worse_than_the_expert():
    config = TownletConfig()
    ticks = 2 * config.world.day_ticks
    expert = simulate(config, 4, ticks, ScriptedExpert(config.expert), seed=1, observe=False)
    random = simulate(config, 4, ticks, RandomPolicy(1), seed=1, observe=False)
    assert expert.faints == 0 and random.faints >= 4 * config.world.agents_per_town
    assert random.wages_per_agent_day < 0.25 * expert.wages_per_agent_day
    assert random.reward_per_agent_day < expert.reward_per_agent_day


def test_incremental_tie_features_equal_a_fresh_computation():
    """The observer recomputes tie features only for changed rows; a fresh observer computes them all."""
    from townlet_pipelines.world.observations import ObservationBuilder

    config = TownletConfig()
    world = TownWorld(config, 4)
    world.reset(2)
    expert = ScriptedExpert(config.expert)
    for tick in range(600):
        result = world.step(expert.act(world))
        if tick % 150 == 149:
            fresh = ObservationBuilder(config, world.layout).features(world.state)
            assert np.array_equal(result.observation.features, fresh)
    assert world.state.tie.any()  # the run did build relationships
    world.state.rel[0, 0, 1] = [0.9, 0.9, 0.9]  # a hand edit is picked up as well
    world.state.tie[0, 0, 1] = True
    np.testing.assert_array_equal(world.observer.features(world.state),
                                  ObservationBuilder(config, world.layout).features(world.state))


@pytest.mark.parametrize("variant", ["hybrid", "full", "compact"])
def test_a_running_observer_sees_what_a_fresh_one_sees(variant):
    """The observer keeps a map grid, index arrays and tie snapshots between ticks (and between batch sizes);
    none of it may leak into what it returns: a fresh observer, and each part computed alone, agree."""
    from townlet_pipelines.world.observations import ObservationBuilder

    config = make_config({"agents_per_town": 4}, observations={"variant": variant})
    world, other = TownWorld(config, 3), TownWorld(config, 1)
    world.reset(5)
    other.reset(9)
    policy = RandomPolicy(5)
    for tick in range(240):
        result = world.step(policy.act(world))
        if tick % 60 != 59:
            continue
        world.observer.observe(other.state)  # another batch size in between
        mask, observation = ObservationBuilder(config, world.layout).mask_and_observe(world.state)
        np.testing.assert_array_equal(result.action_mask, mask)
        np.testing.assert_array_equal(world.observer.action_mask(world.state), mask)
        np.testing.assert_array_equal(result.observation.features, observation.features)
        np.testing.assert_array_equal(world.observer.features(world.state), observation.features)
        if variant != "compact":
            np.testing.assert_array_equal(result.observation.map, observation.map)
            np.testing.assert_array_equal(world.observer.maps(world.state), observation.map)


def test_table_driven_features_and_moves_match_the_layout_and_the_clock():
    """Nearest objects, legal moves and the shift clock are read from tables built once; on every tile and at
    several times of day they equal a direct computation from the layout and the config."""
    from townlet_pipelines.world.actions import MOVE_DELTAS, MOVE_N, OBJECT_TYPES

    config = TownletConfig()
    world = TownWorld(config, 1)
    world.reset(0)
    layout, s, size = world.layout, world.state, world.layout.size
    index = {name: i for i, name in enumerate(FEATURE_NAMES)}
    for y in range(size):
        for x in range(size):
            s.y[0], s.x[0] = y, x
            features, mask = world.observer.features(s)[0], world.observer.action_mask(s)[0]
            for agent in range(world.agents):
                for kind, name in enumerate(OBJECT_TYPES):
                    ids = layout.type_slots[kind][layout.type_slots[kind] >= 0]
                    ids = [layout.desk_of_agent[agent]] if name == "desk" else ids
                    obj = ids[np.argmin(layout.distance[ids, y, x])]
                    assert features[agent, index[f"{name}_dx"]] == np.float32((layout.object_x[obj] - x) / size)
                    assert features[agent, index[f"{name}_dy"]] == np.float32((layout.object_y[obj] - y) / size)
                    distance = np.float32(layout.distance[obj, y, x] / (2 * size))
                    assert features[agent, index[f"{name}_distance"]] == distance
                for code, (dy, dx) in enumerate(MOVE_DELTAS):
                    ny, nx = y + dy, x + dx
                    legal = 0 <= ny < size and 0 <= nx < size and bool(layout.passable[ny, nx])
                    assert mask[agent, MOVE_N + code] == legal
    day, rules = config.world.day_ticks, world.rules
    for tick in (0, 1, 359, 479, 480, 1000, day - 1, day + 7, 3 * day + 500):
        s.tick = tick
        features, tod = world.observer.features(s)[0], tick % day
        on_shift = (tod >= rules.shift_start) & (tod < rules.shift_end)
        until = (rules.shift_start - tod) % day
        assert (features[:, index["time_sin"]] == np.float32(np.sin(2 * np.pi * tod / day))).all()
        assert (features[:, index["time_cos"]] == np.float32(np.cos(2 * np.pi * tod / day))).all()
        assert (features[:, index["on_shift"]] == on_shift).all()
        assert (features[:, index["shift_soon"]] == ((until <= config.expert.job_arrival_buffer) & ~on_shift)).all()
        phase = np.where(on_shift, (tod - rules.shift_start) / (rules.shift_end - rules.shift_start), 0.0)
        assert (features[:, index["shift_phase"]] == phase.astype(np.float32)).all()
        assert (features[:, index["ticks_to_shift"]] == (until / day).astype(np.float32)).all()


def test_drawing_single_numbers_gives_the_numbers_of_the_whole_stream():
    """The world draws only the numbers it needs (`uniform_at`); they are the full draw's, bit for bit."""
    from townlet_pipelines.world import rng

    generator = np.random.default_rng(0)
    seeds = generator.integers(0, 2**63, 50).astype(np.uint64)
    for tick, stream in ((0, rng.STREAM_TIE_BREAK), (977, rng.STREAM_CHAT_SUCCESS), (10**6, rng.STREAM_CHAT_QUALITY)):
        index = generator.integers(0, 8, len(seeds))
        full = rng.uniform(seeds, tick, stream, (8,))
        assert np.array_equal(rng.uniform_at(seeds, tick, stream, index), full[np.arange(len(seeds)), index])


def test_negative_seeds_are_refused_with_a_clear_error():
    world = TownWorld(TownletConfig(), 2)
    with pytest.raises(ValueError, match="non-negative"):
        world.reset(-1)
    with pytest.raises(ValueError, match="non-negative"):
        world.reset(np.array([3, -4]))


def test_the_smoke_world_requires_eating_and_sleeping_and_the_expert_lives_in_it():
    from townlet_pipelines.config import load_config
    from townlet_pipelines.training.evaluation import evaluate
    from townlet_pipelines.world.actions import WAIT
    from townlet_pipelines.world.policies import ScriptedExpert

    config = load_config("smoke")
    seeds = tuple(range(200, 216))
    expert = evaluate(config, ScriptedExpert(config.expert).act, seeds=seeds, ticks=3 * config.world.day_ticks)
    assert expert["faints_per_agent_day"] == 0
    assert expert["meals_eaten_per_agent_day"] > 0.5 and expert["sleeps_per_agent_day"] > 0.3
    idle = evaluate(config, lambda world: np.full((world.towns, world.agents), WAIT), seeds=seeds)
    assert idle["faints_per_agent_day"] > 0.1  # doing nothing is not a way to live here
