"""A night's own config: the base recipe with that night's towns, derived from the partition date alone.

Each nightly partition learns from new experience: its PPO rollouts (`seeds.ppo`), the champion's rollouts
(`seeds.policy_rollouts`), the towns PPO chooses its snapshot on (`seeds.validation`: a chain of nights
choosing on the same 64 towns would fit them) and its guardrail towns (`seeds.guardrail`) move into the
night's slot of the `nightly` block. Everything else stays: the expert demonstrations and DAgger (so BC is
reused across nights), and the held-out test towns, which no night touches. The recipe (and so the
candidate id its pass streak counts under) does not change from night to night.
"""

from __future__ import annotations

import datetime
import os
import re
import zoneinfo

from townlet_pipelines.config import (
    NIGHTLY_RANGES, ConfigError, SeedRange, TownletConfig, UsageError, config_from_mapping,
)

# Each night is the day that ends at 02:00: the schedule runs night D at 02:00 on D+1, in $TOWNLET_TIMEZONE
# (default UTC). A night's towns come from its date alone, so the first night only bounds what may be run.
TIMEZONE = os.environ.get("TOWNLET_TIMEZONE", "UTC")
FIRST_NIGHT = os.environ.get("TOWNLET_FIRST_NIGHT", "2026-11-01")
NIGHT_ENDS_AT_HOUR = 2


def last_ended_night(now: datetime.datetime | None = None) -> str:
    """The latest night that has ended (its 02:00 has passed in TIMEZONE): the nightly partitions' last key."""
    now = now or datetime.datetime.now(zoneinfo.ZoneInfo(TIMEZONE))
    return ((now - datetime.timedelta(hours=NIGHT_ENDS_AT_HOUR)).date() - datetime.timedelta(days=1)).isoformat()


def check_night(night: str) -> str:
    """A night that may be run (`scripts/run.sh`, `townlet train anneal --night`): a date (YYYY-MM-DD) on or
    after the first night that has ended; otherwise a UsageError in one sentence."""
    last = last_ended_night()
    try:
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", night):
            raise ValueError
        datetime.date.fromisoformat(night)
    except ValueError:
        raise UsageError(f"night {night!r}: not a date; a night is named YYYY-MM-DD (the last that ended: {last})") \
            from None
    if night < FIRST_NIGHT:
        raise UsageError(f"night {night}: before the first night, {FIRST_NIGHT} (TOWNLET_FIRST_NIGHT)")
    if night > last:
        raise UsageError(f"night {night}: it has not ended yet (a night ends at 02:00 {TIMEZONE}; the last that "
                         f"ended: {last})")
    return night


def night_date(partition_key: str | datetime.date) -> datetime.date:
    """The date of a daily partition key (YYYY-MM-DD)."""
    if isinstance(partition_key, datetime.date):
        return partition_key
    try:
        return datetime.date.fromisoformat(partition_key)
    except ValueError:
        raise ConfigError(f"night {partition_key!r}: not a date (a daily partition key is YYYY-MM-DD)") from None


def night_slot(config: TownletConfig, night: str | datetime.date) -> int:
    return night_date(night).toordinal() % config.nightly.slots


def night_seeds(config: TownletConfig, night: str | datetime.date) -> dict[str, SeedRange]:
    """The night's PPO, policy-rollout, validation and guardrail ranges, back to back in its slot, keeping
    their sizes."""
    nightly = config.nightly
    start = nightly.start + night_slot(config, night) * nightly.stride
    ranges = {}
    for name in NIGHTLY_RANGES:
        count = getattr(config.seeds, name).count
        ranges[name] = SeedRange(start=start, count=count)
        start += count
    return ranges


def night_config(config: TownletConfig, night: str | datetime.date) -> TownletConfig:
    """`config` as night `night` runs it (validated again: its ranges stay disjoint from every other use)."""
    if config.nightly.night is not None:
        raise ConfigError(f"night_config: this config is night {config.nightly.night}'s already")
    date = night_date(night)
    data = config.model_dump(mode="json")
    for name, seeds in night_seeds(config, date).items():
        data["seeds"][name] = seeds.model_dump()
    data["nightly"]["night"] = date.isoformat()
    return config_from_mapping(data, f"night {date.isoformat()}")
