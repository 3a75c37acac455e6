"""Data-quality verdicts on a captured dataset: verified against its manifest, finite, a sane action spread."""

from __future__ import annotations

import numpy as np

from townlet_pipelines.data.manifest import DatasetError
from townlet_pipelines.data.replay import ReplayDataset
from townlet_pipelines.results import Verdict

CHECKED_ARRAYS = ("rewards", "value_preds", "old_log_probs", "features")


def manifest_verified(path, verified_before: bool = False) -> Verdict:
    """Paths, sizes, sha256, array headers and every row agree with the manifest (read once per run: a
    dataset already verified in full, e.g. before a cache reuse, is not read again)."""
    if verified_before:
        return Verdict("manifest_verified", True, "verified in full before reuse", {"verified_by": "the cache"})
    try:
        dataset = ReplayDataset.open(path, verify="full")
    except DatasetError as error:
        return Verdict("manifest_verified", False, str(error), {"path": str(path)})
    return Verdict("manifest_verified", True, f"{dataset.rows} rows in {len(dataset.manifest.shards)} shards agree "
                   "with the manifest", {"rows": dataset.rows, "dataset_identity": dataset.identity})


def no_nan(dataset: ReplayDataset) -> Verdict:
    """Rewards, values, log-probs and features are finite in every shard."""
    bad = {}
    for entry in dataset.manifest.shards:
        with np.load(dataset.directory / entry.path) as archive:
            for name in CHECKED_ARRAYS:
                count = int((~np.isfinite(archive[name])).sum())
                if count:
                    bad[f"{entry.path}:{name}"] = count
    sentence = "every value is finite" if not bad else f"{sum(bad.values())} non-finite values: " + ", ".join(
        f"{where} ({count})" for where, count in sorted(bad.items())[:5])
    return Verdict("no_nan", not bad, sentence, {"non_finite": bad})


def action_distribution_sane(counts: dict[str, int]) -> Verdict:
    """More than one action is used and none is nearly everything (a warning, never a block)."""
    total = max(sum(counts.values()), 1)
    top = max(counts.values(), default=0) / total
    used = sum(1 for value in counts.values() if value)
    passed = used >= 2 and top < 0.98
    return Verdict("action_distribution_sane", passed, f"{used} actions used; the commonest is {top:.0%} of rows",
                   {"top_action_share": top, "actions_used": used}, warning_only=True)


def skipped(reason: str) -> list[Verdict]:
    """The three verdicts of a dataset that was deliberately not captured."""
    return [Verdict(name, True, f"skipped: {reason}", {"skipped": reason}, warning_only=name == "action_distribution_sane")
            for name in ("manifest_verified", "no_nan", "action_distribution_sane")]
