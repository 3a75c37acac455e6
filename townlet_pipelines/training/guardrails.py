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
    sentence = (f"BC validation accuracy {accuracy:.3f} {'>=' if passed else '<'} threshold {threshold:.3f}"
                + ("" if passed else ": the schedule stopped, nothing is promoted"))
    return Verdict("bc_accuracy_guardrail", passed, sentence,
                   {"measured_val_accuracy": accuracy, "threshold": threshold})


def loss_within(loss: float, baseline: float | None, tolerance: float) -> bool:
    """|loss − baseline| / |baseline| <= tolerance; no baseline (or a zero one) holds nothing."""
    return baseline is None or baseline == 0 or abs(loss - baseline) / abs(baseline) <= tolerance + SLACK


def ppo_loss(stages: list[tuple[int, float, float | None]], tolerance: float) -> Verdict:
    """`stages`: (cycle, loss, the baseline that stage is judged against) for every PPO stage."""
    parts, passed = [], True
    for cycle, loss, baseline in stages:
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
                    "per_stage": [loss for _, loss, _ in stages]})


def rate_within(measured: float, baseline: float | None, tolerance: float) -> bool:
    """A conflict rate passes when it rose at most `tolerance` above its baseline (a zero baseline: none at all)."""
    return baseline is None or measured <= baseline * (1 + tolerance) + SLACK


def queue_conflicts(measured: dict[str, float], baselines: dict[str, float | None], tolerances: dict[str, float],
                    towns: int) -> Verdict:
    """`measured`/`baselines`/`tolerances` keyed by `conflicts` and `intensity` (per agent-day; `measured` also
    holds `<name>_ci95`)."""
    parts, passed = [], True
    for name in ("conflicts", "intensity"):
        value, baseline, tolerance = measured[name], baselines.get(name), tolerances[name]
        if baseline is None:
            limit = "no baseline"
        else:
            ok = rate_within(value, baseline, tolerance)
            passed &= ok
            limit = (f"{'<=' if ok else '>'} limit {baseline * (1 + tolerance):.3f} = baseline {baseline:.3f} "
                     f"+ {tolerance:.0%}")
        parts.append(f"{name} {value:.3f} ± {measured[name + '_ci95']:.3f} per agent-day over {towns} towns; {limit}")
    return Verdict("queue_conflict_guardrail", passed, "; ".join(parts), {
        "measured_conflicts_per_agent_day": measured["conflicts"], "measured_conflicts_ci95": measured["conflicts_ci95"],
        "measured_intensity_per_agent_day": measured["intensity"], "measured_intensity_ci95": measured["intensity_ci95"],
        "baseline_conflicts": baselines.get("conflicts"), "baseline_intensity": baselines.get("intensity"),
        "tolerance": tolerances["conflicts"], "intensity_tolerance": tolerances["intensity"], "evaluation_towns": towns})


def _not_worse(name: str, comparison: dict, reference: str, label: str) -> tuple[bool, str]:
    """Whether the candidate's reward is no worse than `reference`'s beyond the 95% interval of the paired
    per-town difference, and the sentence that says so (naming the interval it used)."""
    difference, half = comparison["difference"], comparison["difference_ci95"]
    passed = difference + half >= -SLACK
    sentence = (f"{name} {comparison['candidate_reward']:.3f} vs {label} {comparison[f'{reference}_reward']:.3f} "
                f"reward per agent-day: {difference:+.3f} ± {half:.3f} (95% Student-t, paired) on the same "
                f"{comparison['towns']} towns; {'no worse' if passed else 'worse'} within the interval")
    return passed, sentence


def champion(comparison: dict | None) -> Verdict:
    """The challenger passes unless its reward is worse than the champion's beyond the 95% interval of the
    paired difference on the same towns; with no champion (nothing released yet) there is nothing to beat."""
    if comparison is None:
        return Verdict("champion_guardrail", True, "no champion yet: the first release is judged against the "
                       "scripted expert (expert_guardrail)", {"champion": "none"})
    passed, sentence = _not_worse("challenger", comparison, "champion", f"champion ({comparison['release_id']})")
    return Verdict("champion_guardrail", passed, sentence, dict(comparison))


def expert(comparison: dict | None) -> Verdict:
    """The candidate passes unless its reward is worse than the scripted expert's beyond the 95% interval of the
    paired difference on the same guardrail towns: the nightly never releases a policy worse than the
    baseline it exists to beat (a later release must also beat its champion: `champion`)."""
    if comparison is None:
        return Verdict("expert_guardrail", True, "no PPO stage ran: nothing to compare with the expert",
                       {"expert": "none"})
    passed, sentence = _not_worse("candidate", comparison, "expert", "scripted expert")
    return Verdict("expert_guardrail", passed, sentence, dict(comparison))
