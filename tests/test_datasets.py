"""Rollout capture, the manifest contract and the replay service (docs/DATASETS.md)."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import make_config
from townlet_pipelines.data.capture import acting_policy, capture, read_telemetry
from townlet_pipelines.data.files import npz_bytes, sha256_file
from townlet_pipelines.data.manifest import DatasetError, read_manifest
from townlet_pipelines.data.replay import ReplayDataset, mixed_batches
from townlet_pipelines.world.engine import TELEMETRY_KEYS, TownWorld
from townlet_pipelines.world.policies import ScriptedExpert

SMALL = {"agents_per_town": 4, "day_ticks": 120, "episode_days": 1,
         "jobs": {"jobs": [{"name": "j", "shift_start": 40, "shift_end": 90}], "work_window_before": 20}}


def small_config(**sections):
    return make_config(SMALL, **sections)


def small_capture(path: Path, seed: int = 0, towns: int = 3, ticks: int = 150, shard_rows: int = 96, **sections):
    config = small_config(**sections)
    return capture(config, acting_policy("scripted", config), towns, ticks, seed, path, shard_rows=shard_rows)


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "expert"
    small_capture(path)
    return path


def test_capture_round_trip_stores_what_the_policy_saw_did_and_got(dataset_dir):
    dataset = ReplayDataset.open(dataset_dir)
    manifest = dataset.manifest
    assert manifest.rows == 3 * 4 * 150 and len(manifest.shards) > 3
    assert manifest.episodes == 6  # 150 ticks of 120-tick episodes: a second episode per town
    rows = {name: np.concatenate([dataset.load_shard(i)[name] for i in range(len(manifest.shards))])
            for name in ("features", "map", "actions", "action_mask", "rewards", "dones", "tick", "episode")}
    # Replay the same world: row (t, town, agent) holds obs_t, mask_t, a_t and the reward that followed.
    config = small_config()
    world = TownWorld(config, 3)
    observation, mask = world.reset(0)
    expert = ScriptedExpert(config.expert)
    agents = 12
    for t in range(150):
        block = slice(t * agents, (t + 1) * agents)
        assert np.array_equal(rows["features"][block], observation.features.reshape(agents, -1))
        assert np.array_equal(rows["map"][block], observation.map.reshape(agents, *observation.map.shape[2:]))
        assert np.array_equal(rows["action_mask"][block], mask.reshape(agents, -1))
        actions = expert.act(world)
        assert np.array_equal(rows["actions"][block], actions.reshape(-1))
        result = world.step(actions)
        assert np.array_equal(rows["rewards"][block], result.rewards.reshape(-1))
        assert (rows["tick"][block] == t).all()
        if result.truncated:
            assert rows["dones"][block].all()
            observation, mask = world.reset(np.arange(3, 6, dtype=np.uint64))
            assert (rows["episode"][(t + 1) * agents:] >= 3).all()
        else:
            observation, mask = result.observation, result.action_mask


def test_expert_values_are_discounted_returns(dataset_dir):
    dataset = ReplayDataset.open(dataset_dir, verify="none")
    gamma = dataset.manifest.discount
    assert dataset.manifest.value_source == "discounted_return"
    for index, entry in enumerate(dataset.manifest.shards):
        shard = dataset.load_shard(index)
        values = shard["value_preds"].reshape(entry.ticks, entry.agents)
        rewards = shard["rewards"].reshape(entry.ticks, entry.agents)
        dones = shard["dones"].reshape(entry.ticks, entry.agents)
        following = np.concatenate([values[1:], shard["bootstrap_values"][None]])
        np.testing.assert_allclose(values, rewards + gamma * (1 - dones) * following, rtol=1e-4, atol=1e-5)
    assert dataset.load_shard(len(dataset.manifest.shards) - 1)["bootstrap_values"].tolist() == [0.0] * 12


def test_manifest_metrics_match_the_telemetry_table(dataset_dir):
    manifest = read_manifest(dataset_dir)
    table = read_telemetry(dataset_dir)
    assert len(table) == manifest.telemetry.rows == 150 * 3
    assert set(TELEMETRY_KEYS) <= set(table.columns)
    metrics = manifest.metrics
    assert metrics.queue_conflict_events == table["queue_conflict_events"].sum()
    assert metrics.queue_conflict_intensity == pytest.approx(table["queue_conflict_intensity"].sum())
    assert metrics.chat_success_events == table["chat_success_events"].sum()
    assert metrics.wages == pytest.approx(table["wages"].sum(), rel=1e-5)
    dataset = ReplayDataset.open(dataset_dir, verify="none")
    rewards = np.concatenate([dataset.load_shard(i)["rewards"] for i in range(len(manifest.shards))])
    assert metrics.reward_sum == pytest.approx(float(rewards.sum(dtype=np.float64)), rel=1e-6)
    assert metrics.samples == len(rewards) and sum(metrics.action_counts.values()) == len(rewards)


def test_identity_follows_config_and_seed(tmp_path, dataset_dir):
    same = small_capture(tmp_path / "same")
    assert same.identity == ReplayDataset.open(dataset_dir, verify="none").identity
    assert small_capture(tmp_path / "seed", seed=1).identity != same.identity
    other_rules = small_capture(tmp_path / "rules", rewards={"survival": 0.003})
    assert other_rules.identity != same.identity


def test_batches_cover_every_row_exactly_once_per_epoch(dataset_dir):
    dataset = ReplayDataset.open(dataset_dir, verify="none")
    for shuffle, batch_size in ((True, 50), (False, 64), (True, 7)):
        keys = []
        sizes = []
        for batch in dataset.iter_batches(batch_size, shuffle=shuffle, seed=3):
            sizes.append(len(batch["tick"]))
            keys += list(zip(batch["tick"].tolist(), batch["town"].tolist(), batch["agent"].tolist()))
        assert len(keys) == len(set(keys)) == dataset.rows
        assert all(size == batch_size for size in sizes[:-1]) and 0 < sizes[-1] <= batch_size
    first = next(dataset.iter_batches(32, seed=1))["tick"]
    assert not np.array_equal(first, next(dataset.iter_batches(32, seed=2))["tick"])  # the seed shuffles


def test_kept_shards_give_the_same_batches_without_decoding_again(dataset_dir, monkeypatch):
    streamed = ReplayDataset.open(dataset_dir, verify="none")
    kept = ReplayDataset.open(dataset_dir, verify="none").keep_in_memory(("features", "expert_actions"))
    episodes = streamed.split(0.3, seed=0)[0]
    for seed in (0, 1):  # the second epoch reads the kept shards
        for a, b in zip(streamed.iter_batches(33, seed=seed, episodes=episodes),
                        kept.iter_batches(33, seed=seed, episodes=episodes), strict=True):
            assert set(b) == {"features", "expert_actions", "tick", "episode"}
            assert all(np.array_equal(a[key], b[key]) for key in b)
    monkeypatch.setattr(kept, "load_shard", lambda index: pytest.fail("decoded a kept shard again"))
    assert sum(len(batch["tick"]) for batch in kept.iter_batches(64, episodes=episodes)) > 0


def test_split_is_by_whole_episodes(dataset_dir):
    dataset = ReplayDataset.open(dataset_dir, verify="none")
    train, val = dataset.split(0.34, seed=0)
    assert len(val) == 2 and set(train).isdisjoint(val) and sorted([*train, *val]) == list(range(6))
    seen = np.concatenate([batch["episode"] for batch in dataset.iter_batches(64, episodes=val)])
    assert set(seen.tolist()) == set(val.tolist())
    ticks_of = {episode: 120 if episode < 3 else 30 for episode in range(6)}  # 150 ticks: 120 + 30
    assert len(seen) == sum(4 * ticks_of[episode] for episode in val.tolist())


def _peak_bytes(dataset: ReplayDataset) -> int:
    tracemalloc.start()
    for _ in dataset.iter_batches(64, seed=0):
        pass
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def test_streaming_memory_does_not_grow_with_the_number_of_shards(tmp_path):
    few = ReplayDataset.open(small_capture(tmp_path / "few", ticks=40, shard_rows=120).path, verify="none")
    many = ReplayDataset.open(small_capture(tmp_path / "many", ticks=400, shard_rows=120).path, verify="none")
    assert len(many.manifest.shards) >= 8 * len(few.manifest.shards)
    assert _peak_bytes(many) < 1.5 * _peak_bytes(few)


def test_mixed_batches_take_the_stated_ratio():
    def source(marker: int, rows: int, size: int = 10):
        for start in range(0, rows, size):
            count = min(size, rows - start)
            yield {"tick": np.full(count, marker), "x": np.arange(start, start + count)}

    batches = list(mixed_batches([(source(0, 100), 0.25), (source(1, 300), 0.75)], batch_size=16))
    assert all((batch["tick"] == 0).sum() == 4 and (batch["tick"] == 1).sum() == 12 for batch in batches[:-1])
    assert sum((batch["tick"] == 0).sum() for batch in batches) == 100
    assert sum((batch["tick"] == 1).sum() for batch in batches) == 300


def test_a_failed_capture_leaves_nothing_and_an_existing_dataset_is_never_touched(tmp_path, dataset_dir):
    config = small_config()

    class Exploding:
        generator = acting_policy("scripted", config).generator

        def __init__(self):
            self.inner, self.calls = acting_policy("scripted", config), 0

        def act(self, world):
            self.calls += 1
            if self.calls == 100:
                raise RuntimeError("policy crashed")
            return self.inner.act(world)

        def bootstrap_values(self, world):
            return None

    with pytest.raises(RuntimeError, match="policy crashed"):
        capture(config, Exploding(), 2, 150, 0, tmp_path / "broken", shard_rows=40)
    assert list(tmp_path.iterdir()) == []
    before = {path.name: sha256_file(path) for path in dataset_dir.iterdir()}
    with pytest.raises(FileExistsError):
        small_capture(dataset_dir)
    assert {path.name: sha256_file(path) for path in dataset_dir.iterdir()} == before


# ---------------------------------------------------------------------- bad input
def _copy(dataset_dir: Path, tmp_path: Path) -> Path:
    import shutil

    target = tmp_path / "copy"
    shutil.copytree(dataset_dir, target)
    return target


def _rewrite_shard(directory: Path, index: int, mutate) -> Path:
    manifest = json.loads((directory / "manifest.json").read_text())
    entry = manifest["shards"][index]
    path = directory / entry["path"]
    with np.load(path) as archive:
        arrays = {name: archive[name] for name in archive.files}
    mutate(arrays)
    path.write_bytes(npz_bytes(arrays))
    entry["sha256"], entry["bytes"] = sha256_file(path), path.stat().st_size
    (directory / "manifest.json").write_text(json.dumps(manifest))
    return path


def _edit_manifest(directory: Path, edit) -> None:
    manifest = json.loads((directory / "manifest.json").read_text())
    edit(manifest)
    (directory / "manifest.json").write_text(json.dumps(manifest))


def _corrupt(kind: str, directory: Path) -> str:
    """Damage a copy of the dataset; return text the error must contain."""
    shard = directory / "shard-00001.npz"
    if kind == "not json":
        (directory / "manifest.json").write_text("{not json")
        return "manifest.json: not valid JSON"
    if kind == "missing shard":
        shard.unlink()
        return "shards[1].path: shard-00001.npz does not exist"
    if kind == "sha mismatch":
        data = bytearray(shard.read_bytes())
        data[len(data) // 2] ^= 0xFF
        shard.write_bytes(bytes(data))
        return "shard-00001.npz: sha256 mismatch"
    if kind == "truncated":
        shard.write_bytes(shard.read_bytes()[:-100])
        return "shard-00001.npz: "
    if kind == "shapes":
        _rewrite_shard(directory, 1, lambda a: a.update(features=a["features"][:, :-1].copy()))
        return "shard-00001.npz: features has shape"
    if kind == "action":
        _rewrite_shard(directory, 1, lambda a: a["actions"].__setitem__(5, 99))
        return "shard-00001.npz: actions[5] = 99 is outside the action space"
    if kind == "nan reward":
        _rewrite_shard(directory, 1, lambda a: a["rewards"].__setitem__(7, np.nan))
        return "shard-00001.npz: rewards[7] is not finite"
    if kind == "escape":
        _edit_manifest(directory, lambda m: m["shards"][1].update(path="../outside.npz"))
        return "shards[1].path '../outside.npz' escapes the dataset directory"
    if kind == "schema":
        _edit_manifest(directory, lambda m: m.update(schema_version=99))
        return "schema_version 99 is not supported"
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind", ["not json", "missing shard", "sha mismatch", "truncated", "shapes", "action", "nan reward", "escape", "schema"]
)
def test_bad_datasets_are_refused_with_an_error_naming_the_file_and_field(kind, dataset_dir, tmp_path):
    directory = _copy(dataset_dir, tmp_path)
    expected = _corrupt(kind, directory)
    before = {path.name: path.stat().st_mtime_ns for path in directory.iterdir()}
    with pytest.raises(DatasetError) as error:
        ReplayDataset.open(directory)
    assert expected in str(error.value)
    if kind == "truncated":
        assert "truncated" in str(error.value)
    assert {path.name: path.stat().st_mtime_ns for path in directory.iterdir()} == before  # nothing written
