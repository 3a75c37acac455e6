"""One night of the nightly anneal as plain functions, one job a module, each step returning a typed outcome
(nightly/outcome.py: the record, the metadata, the verdicts) that the Dagster assets report as they are:

- context.py: the night a step works on (the recipe, the night's config derived once, the run's folder);
- datasets.py: the expert's data from the content-addressed cache, the champion's rollouts;
- candidate.py: the BC stages (cached) and the PPO stages from the champion, each judged by its guardrails;
- verdict.py: the night judged and its verdict recorded for promotion (a FAIL or HOLD by the step that held it);
- report.py: the held-out report and its town-day pictures;
- release.py: the promotion rule and the release over a day;
- describe.py: stage tables, training curves and TensorBoard folders, for people;
- night.py: a whole night end to end (`townlet train anneal --night`, the benchmarks).

No module here imports Dagster (.importlinter); pipeline/ wires these steps into assets.
"""
