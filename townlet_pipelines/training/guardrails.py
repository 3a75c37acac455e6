"""The guardrails as functions of measured values: each returns a verdict with a one-line reason.

The anneal judges its stages with these, and the Dagster checks call the same functions on the values the
asset measured, so the check in the UI and the verdict in `anneal_summary.json` can never disagree.
Torch-free: only numbers go in.
"""

from __future__ import annotations

from townlet_pipelines.results import Verdict

SLACK = 1e-12  # a value equal to its limit passes, whatever the float rounding


def bc_accuracy(accuracy: float, threshold: float) -> Verdict:
    passed = accuracy >= threshold - SLACK
    digits = 3
    while not passed and digits < 8 and f"{accuracy:.{digits}f}" == f"{threshold:.{digits}f}":
        digits += 1  # a miss by less than the last shown digit must not read "0.900 < threshold 0.900"
    sentence = (f"BC validation accuracy {accuracy:.{digits}f} {'>=' if passed else '<'} threshold "
                f"{threshold:.{digits}f}" + ("" if passed else ": the schedule stopped, nothing is promoted"))
    return Verdict("bc_accuracy_guardrail", passed, sentence,
                   {"measured_val_accuracy": accuracy, "threshold": threshold})


def loss_within(loss: float, baseline: float | None, tolerance: float) -> bool:
    """|loss − baseline| / |baseline| <= tolerance; no baseline (or a zero one) holds nothing."""
    return baseline is None or baseline == 0 or abs(loss - baseline) / abs(baseline) <= tolerance + SLACK


def ppo_loss(stages: list[tuple], tolerance: float) -> Verdict:
    """`stages`: (cycle, loss, the baseline that stage is judged against[, kept its start]) for every PPO stage; a
    stage that kept its start returns weights no update touched, so the loss of the updates it discarded is not
    judged."""
    parts, passed = [], True
    for cycle, loss, baseline, *kept in stages:
        if kept and kept[0]:
            parts.append(f"cycle {cycle}: kept its start (no snapshot did better): the loss {loss:.4g} of the "
                         "updates it discarded is not judged")
            continue
        if baseline is None or baseline == 0:
            parts.append(f"cycle {cycle}: PPO loss {loss:.4g}; no baseline yet (this stage sets it)")
            continue
        ok = loss_within(loss, baseline, tolerance)
        passed &= ok
        change = (loss - baseline) / abs(baseline)
        parts.append(f"cycle {cycle}: PPO loss {loss:.4g} is {change:+.1%} from the baseline {baseline:.4g} "
                     f"({'within' if ok else 'outside'} ±{tolerance:.0%})")
    last = stages[-1] if stages else (None, None, None)
    return Verdict("ppo_loss_guardrail", passed, "; ".join(parts) or "no PPO stage ran",
                   {"measured_loss": last[1], "baseline": last[2], "tolerance": tolerance,
                    "per_stage": [stage[1] for stage in stages]})


MAX_INTENSITY = 5.0  # one conflict's intensity is clamped to [0.1, 5] (the world's rule)


def rate_limit(baseline: float, tolerance: float, resolution: float = 0.0) -> float:
    """The highest rate that passes: `tolerance` above the baseline, or, where that is finer than the evaluation
    can tell apart, the baseline plus `resolution` (a few events over all its towns, per agent-day)."""
    return max(baseline * (1 + tolerance), baseline + resolution)


def rate_within(measured: float, baseline: float | None, tolerance: float, resolution: float = 0.0) -> bool:
    """A conflict rate passes when it rose at most `tolerance` above its baseline (or `resolution`, whichever
    allows more: on 4 smoke towns one conflict is 0.06 per agent-day, and a zero baseline would flag it)."""
    return baseline is None or measured <= rate_limit(baseline, tolerance, resolution) + SLACK


def resolutions(events: float, agent_days: float) -> dict[str, float]:
    """`events` conflicts over the evaluation's agent-days, as a rate and (each at the highest intensity) as an
    intensity: the smallest rise the queue guardrail holds a candidate for."""
    per_day = events / agent_days if agent_days > 0 else 0.0
    return {"conflicts": per_day, "intensity": per_day * MAX_INTENSITY}


def queue_conflicts(measured: dict[str, float], baselines: dict[str, float | None], tolerances: dict[str, float],
                    towns: int, resolution: dict[str, float] | None = None) -> Verdict:
    """`measured`/`baselines`/`tolerances` keyed by `conflicts` and `intensity` (per agent-day; `measured` also
    holds `<name>_ci95`); `resolution` the smallest rise held, by the same keys (`resolutions`)."""
    resolution = resolution or {}
    parts, passed = [], True
    for name in ("conflicts", "intensity"):
        value, baseline, tolerance = measured[name], baselines.get(name), tolerances[name]
        if baseline is None:
            limit = "no baseline"
        else:
            ok = rate_within(value, baseline, tolerance, resolution.get(name, 0.0))
            passed &= ok
            limit = f"{'<=' if ok else '>'} {limit_text(baseline, tolerance, resolution.get(name, 0.0))}"
        parts.append(f"{name} {value:.3f} ± {measured[name + '_ci95']:.3f} per agent-day over {towns} towns; {limit}")
    return Verdict("queue_conflict_guardrail", passed, "; ".join(parts), {
        "measured_conflicts_per_agent_day": measured["conflicts"], "measured_conflicts_ci95": measured["conflicts_ci95"],
        "measured_intensity_per_agent_day": measured["intensity"], "measured_intensity_ci95": measured["intensity_ci95"],
        "baseline_conflicts": baselines.get("conflicts"), "baseline_intensity": baselines.get("intensity"),
        "tolerance": tolerances["conflicts"], "intensity_tolerance": tolerances["intensity"], "evaluation_towns": towns})


def limit_text(baseline: float, tolerance: float, resolution: float = 0.0) -> str:
    """How a rate's limit was made, in the words every sentence uses."""
    limit = rate_limit(baseline, tolerance, resolution)
    if limit > baseline * (1 + tolerance):
        return f"limit {limit:.3f} = baseline {baseline:.3f} + the evaluation's resolution {resolution:.3f}"
    return f"limit {limit:.3f} = baseline {baseline:.3f} + {tolerance:.0%}"


def _not_worse(name: str, comparison: dict, reference: str, label: str, tolerance: float = 0.0) -> tuple[bool, str]:
    """Whether the candidate's reward is no worse than `reference`'s beyond the 95% interval of the paired
    per-town difference (less `tolerance` × |the reference's reward|), and the sentence that says so."""
    difference, half = comparison["difference"], comparison["difference_ci95"]
    allowed = tolerance * abs(comparison[f"{reference}_reward"])
    passed = difference + half >= -allowed - SLACK
    sentence = (f"{name} {comparison['candidate_reward']:.3f} vs {label} {comparison[f'{reference}_reward']:.3f} "
                f"reward per agent-day: {difference:+.3f} ± {half:.3f} (95% Student-t, paired) on the same "
                f"{comparison['towns']} towns; {'no worse' if passed else 'worse'} within the interval"
                + (f" and a tolerance of {tolerance:.0%} ({allowed:.3f})" if tolerance else ""))
    return passed, sentence


def champion(comparison: dict | None) -> Verdict:
    """The challenger passes unless its reward is worse than the champion's beyond the 95% interval of the
    paired difference on the same towns; with no champion (nothing released yet) there is nothing to beat."""
    if comparison is None:
        return Verdict("champion_guardrail", True, "no champion yet: the first release is judged against the "
                       "scripted expert (expert_guardrail)", {"champion": "none"})
    passed, sentence = _not_worse("challenger", comparison, "champion", f"champion ({comparison['release_id']})")
    return Verdict("champion_guardrail", passed, sentence, dict(comparison))


def expert(comparison: dict | None, tolerance: float = 0.0) -> Verdict:
    """The candidate passes unless its reward is worse than the scripted expert's beyond the 95% interval of the
    paired difference on the same guardrail towns: the nightly never releases a policy worse than the
    baseline it exists to beat (a later release must also beat its champion: `champion`)."""
    if comparison is None:
        return Verdict("expert_guardrail", True, "no PPO stage ran: nothing to compare with the expert",
                       {"expert": "none"})
    passed, sentence = _not_worse("candidate", comparison, "expert", "scripted expert", tolerance)
    return Verdict("expert_guardrail", passed, sentence, {**comparison, "tolerance": tolerance})
