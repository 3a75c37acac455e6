"""PPO, CleanRL-style: one readable loop, every hyperparameter from `config.ppo`, the math in plain sight.

Data modes: `rollout` (on-policy: the batched world driven by the current network, a fresh seed each
update and cycle), `replay` (stored rows with their stored log-probs and values), `mixed` (both in the
same shuffled mini-batches, replay rows making up `mixed_replay_fraction`). A PPO stage starts from a BC
checkpoint when given one, and may add `bc_weight x cross-entropy` on expert rows as an anchor.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from townlet_pipelines.data.replay import ReplayDataset
from townlet_pipelines.results import PPOTrainingResult
from townlet_pipelines.training.context import AnnealContext, TrainingContext
from townlet_pipelines.training.device import to_tensors
from townlet_pipelines.training.policy import observation_batch
from townlet_pipelines.training.progress import Progress
from townlet_pipelines.training.torch_support import TrainingError, require_torch
from townlet_pipelines.world.engine import TELEMETRY_KEYS, TownWorld, town_seeds

ROW_KEYS = ("map", "features", "action_mask", "actions", "old_log_probs", "value_preds", "advantages", "returns",
            "rewards")


def gae(rewards, values, dones, bootstrap, gamma: float, lam: float):
    """Generalised advantage estimation over (T, A) arrays.

    Row t holds (obs_t, a_t, r_t, done_t, V(obs_t)); `bootstrap` is V(obs_T), the state after the last step.
    A done (faint or episode end) stops both the bootstrap and the advantage trace.
    """
    advantages = np.zeros_like(rewards, dtype=np.float32)
    last = np.zeros(rewards.shape[1], dtype=np.float32)
    next_value = bootstrap.astype(np.float32)
    for t in range(len(rewards) - 1, -1, -1):
        not_done = 1.0 - dones[t].astype(np.float32)
        delta = rewards[t] + gamma * next_value * not_done - values[t]
        last = delta + gamma * lam * not_done * last
        advantages[t] = last
        next_value = values[t]
    return advantages, advantages + values


@dataclass
class Rollout:
    rows: dict[str, np.ndarray]  # flattened (T * A, ...) rows with advantages and returns
    telemetry: dict[str, float]
    ticks: int
    seconds: float
    entropy: np.ndarray  # per-row policy entropy at collection time


def collect_rollout(model, world: TownWorld, ticks: int, context: TrainingContext, next_seed) -> Rollout:
    """Drive every town with the current network for `ticks` ticks: on-policy data with GAE."""
    torch = require_torch()
    ppo = context.config.ppo
    agents = world.towns * world.agents
    store: dict[str, list] = {key: [] for key in ("map", "features", "action_mask", "actions", "old_log_probs",
                                                  "value_preds", "rewards", "dones", "entropy")}
    totals = {key: 0.0 for key in TELEMETRY_KEYS}
    start = time.perf_counter()
    model.eval()
    for _ in range(ticks):
        observed = observation_batch(world)
        with torch.no_grad():
            batch = to_tensors(observed, context.device, ("map", "features", "action_mask"))
            distribution, values = model.distribution(batch["features"], batch["action_mask"], batch.get("map"))
            actions = distribution.sample()
            log_probs, entropy = distribution.log_prob(actions), distribution.entropy()
        actions_np = actions.cpu().numpy()
        result = world.step(actions_np.reshape(world.towns, world.agents))
        for key in ("map", "features", "action_mask"):
            if key in observed:
                store[key].append(observed[key].copy())
        store["actions"].append(actions_np.astype(np.int8))
        store["old_log_probs"].append(log_probs.cpu().numpy())
        store["value_preds"].append(values.cpu().numpy())
        store["entropy"].append(entropy.cpu().numpy())
        store["rewards"].append(result.rewards.reshape(-1))
        store["dones"].append(result.dones.reshape(-1) | result.truncated)
        for key in TELEMETRY_KEYS:
            totals[key] += float(result.telemetry[key].sum())
        if result.truncated:
            world.reset(next_seed())
    with torch.no_grad():
        batch = to_tensors(observation_batch(world), context.device, ("map", "features", "action_mask"))
        _, bootstrap = model(batch["features"], batch["action_mask"], batch.get("map"))
    arrays = {key: np.stack(values) for key, values in store.items() if values}
    advantages, returns = gae(arrays["rewards"], arrays["value_preds"], arrays["dones"], bootstrap.cpu().numpy(),
                              ppo.gamma, ppo.gae_lambda)
    arrays["advantages"], arrays["returns"] = advantages, returns
    entropy = arrays.pop("entropy").reshape(-1)
    rows = {key: value.reshape(ticks * agents, *value.shape[2:]) for key, value in arrays.items()}
    return Rollout(rows=rows, telemetry=totals, ticks=ticks, seconds=time.perf_counter() - start, entropy=entropy)


def replay_rows(dataset: ReplayDataset, gamma: float, lam: float, seed: int) -> Iterator[dict[str, np.ndarray]]:
    """Endless stream of stored shards with GAE from their stored values, in a fresh order each pass."""
    rng = np.random.default_rng(seed)
    while True:
        for index in rng.permutation(len(dataset.manifest.shards)):
            entry = dataset.manifest.shards[int(index)]
            shard = dataset.load_shard(int(index))
            shape = (entry.ticks, entry.agents)
            advantages, returns = gae(shard["rewards"].reshape(shape), shard["value_preds"].reshape(shape),
                                      shard["dones"].reshape(shape), shard["bootstrap_values"], gamma, lam)
            rows = {key: shard[key] for key in ROW_KEYS if key in shard}
            rows["advantages"], rows["returns"] = advantages.reshape(-1), returns.reshape(-1)
            yield rows


def take_rows(stream: Iterator[dict[str, np.ndarray]], count: int, pending: list) -> dict[str, np.ndarray]:
    """`count` rows from a stream of row blocks, keeping the leftover in `pending` for next time."""
    parts, have = [], 0
    while have < count:
        block = pending.pop() if pending else next(stream)
        need = count - have
        if len(block["actions"]) > need:
            pending.append({key: value[need:] for key, value in block.items()})
            block = {key: value[:need] for key, value in block.items()}
        parts.append(block)
        have += len(block["actions"])
    return {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}


@dataclass
class PPOStrategy:
    init_checkpoint: str | Path | None = None
    updates: int | None = None  # default: config.ppo.updates
    data_mode: str | None = None  # default: config.ppo.data_mode
    replay_dataset: str | Path | None = None  # stored rows for `replay` and `mixed`
    bc_weight: float = 0.0
    anchor_dataset: str | Path | None = None  # expert rows for the bc_weight anchor; default: replay_dataset
    cycle: int = 0
    anneal: AnnealContext | None = None
    out: str | Path | None = None  # checkpoint directory; default <artifacts>/ppo
    name: str = "ppo"
    evaluation: dict[str, float] = field(default_factory=dict)
    resume: bool = False  # also restore init_checkpoint's optimizer moments (continue a PPO run)

    def run(self, context: TrainingContext) -> PPOTrainingResult:
        torch = require_torch()
        from townlet_pipelines.training.checkpoints import model_for, restore_optimizer, save_checkpoint
        from townlet_pipelines.training.evaluation import evaluate
        from townlet_pipelines.training.policy import TorchPolicy

        config, ppo, device = context.config, context.config.ppo, context.device
        mode = self.data_mode or ppo.data_mode
        updates = self.updates or ppo.updates
        dataset = ReplayDataset.open(self.replay_dataset) if self.replay_dataset is not None else None
        anchor = (ReplayDataset.open(self.anchor_dataset) if self.anchor_dataset is not None
                  else dataset) if self.bc_weight > 0 else None
        if dataset is None and mode != "rollout":
            raise TrainingError(f"ppo: data_mode={mode} needs a replay dataset")
        if anchor is None and self.bc_weight > 0:
            raise TrainingError(f"ppo: bc_weight={self.bc_weight} needs expert rows (anchor_dataset)")
        seed = ppo.seed + 7919 * self.cycle  # a new seed per cycle: successive cycles never replay one world
        torch.manual_seed(seed)
        world = TownWorld(config, ppo.rollout_towns)
        episode = [0]

        def next_seed():
            episode[0] += 1
            return town_seeds(seed * 1000 + episode[0] * ppo.rollout_towns, ppo.rollout_towns)

        world.reset(town_seeds(seed * 1000, ppo.rollout_towns))
        model, parent = model_for(world.spec, config.model, device.device, self.init_checkpoint)
        for source in (dataset, anchor):
            if source is not None and source.spec != world.spec:
                raise TrainingError(f"ppo: dataset {source.directory} has another observation spec than the world")
        optimizer = torch.optim.Adam(model.parameters(), lr=ppo.learning_rate, eps=1e-5)
        if self.resume and self.init_checkpoint is not None:
            restore_optimizer(self.init_checkpoint, optimizer, device.device)
        scaler = torch.amp.GradScaler("cuda", enabled=device.amp)
        replay_stream = replay_rows(dataset, ppo.gamma, ppo.gae_lambda, seed) if dataset is not None else None
        anchor_stream = None
        if anchor is not None:
            anchor_stream = (batch for epoch in range(10**9)
                             for batch in anchor.iter_batches(256, seed=seed + epoch))
        pending: list = []
        log = context.log(self.name)
        stats: dict[str, list[float]] = {key: [] for key in (
            "loss_policy", "loss_value", "loss_entropy", "loss_total", "loss_bc", "clip_fraction", "kl", "grad_norm",
            "adv_std")}
        counters = {"zero_std": 0, "clip_triggered": 0, "transitions": 0, "steps": 0, "rollout_seconds": 0.0}
        telemetry = {key: 0.0 for key in TELEMETRY_KEYS}
        entropies, reward_adv = [], []
        start = time.perf_counter()
        progress = Progress(updates, f"ppo cycle {self.cycle}", context.progress)
        for update in range(updates):
            # ---- data for this update
            parts = []
            rollout_rows = ppo.rollout_ticks * world.towns * world.agents
            if mode in ("rollout", "mixed"):
                rollout = collect_rollout(model, world, ppo.rollout_ticks, context, next_seed)
                parts.append(rollout.rows)
                counters["steps"] += rollout.ticks
                counters["rollout_seconds"] += rollout.seconds
                entropies.append(rollout.entropy)
                for key in TELEMETRY_KEYS:
                    telemetry[key] += rollout.telemetry[key]
            if mode in ("replay", "mixed"):
                share = ppo.mixed_replay_fraction if mode == "mixed" else 1.0
                count = rollout_rows if mode == "replay" else int(round(rollout_rows * share / max(1 - share, 1e-6)))
                if count > 0:
                    parts.append(take_rows(replay_stream, count, pending))
            keys = set.intersection(*(set(part) for part in parts))
            data = {key: np.concatenate([part[key] for part in parts]) for key in keys}
            rows = len(data["actions"])
            counters["transitions"] += rows
            reward_adv.append(np.corrcoef(data["rewards"], data["advantages"])[0, 1] if data["rewards"].std() > 0 else 0.0)

            # ---- PPO update: clipped surrogate, clipped value loss, entropy bonus
            model.train()
            minibatch = max(1, rows // ppo.minibatches)
            for epoch in range(ppo.update_epochs):
                order = np.random.default_rng(seed + 31 * update + epoch).permutation(rows)
                for begin in range(0, rows - minibatch + 1, minibatch):
                    index = order[begin : begin + minibatch]
                    batch = to_tensors({key: data[key][index] for key in data}, device, ROW_KEYS)
                    with torch.autocast(device_type=device.device.type, dtype=torch.float16, enabled=device.amp):
                        distribution, new_values = model.distribution(batch["features"], batch["action_mask"],
                                                                      batch.get("map"))
                        new_log_probs = distribution.log_prob(batch["actions"].long())
                        entropy = distribution.entropy().mean()
                        log_ratio = new_log_probs - batch["old_log_probs"]
                        ratio = log_ratio.exp()
                        with torch.no_grad():
                            approx_kl = ((ratio - 1) - log_ratio).mean()
                            clip_fraction = ((ratio - 1.0).abs() > ppo.clip_coef).float().mean()
                        advantages = batch["advantages"]
                        adv_std = advantages.std()
                        if adv_std < 1e-8:  # a batch of identical advantages carries no signal
                            counters["zero_std"] += 1
                            advantages = advantages - advantages.mean()
                        else:
                            advantages = (advantages - advantages.mean()) / (adv_std + 1e-8)
                        policy_loss = torch.max(-advantages * ratio,
                                                -advantages * ratio.clamp(1 - ppo.clip_coef, 1 + ppo.clip_coef)).mean()
                        old_values = batch["value_preds"]
                        clipped_values = old_values + (new_values - old_values).clamp(-ppo.value_clip_coef,
                                                                                      ppo.value_clip_coef)
                        value_loss = 0.5 * torch.max((new_values - batch["returns"]) ** 2,
                                                     (clipped_values - batch["returns"]) ** 2).mean()
                        loss = policy_loss - ppo.entropy_coef * entropy + ppo.value_coef * value_loss
                        bc_loss = torch.zeros((), device=device.device)
                        if anchor_stream is not None:
                            expert = to_tensors(next(anchor_stream), device,
                                                ("map", "features", "action_mask", "expert_actions"))
                            logits, _ = model(expert["features"], expert["action_mask"], expert.get("map"))
                            bc_loss = torch.nn.functional.cross_entropy(logits, expert["expert_actions"].long())
                        total = loss + self.bc_weight * bc_loss
                    if not torch.isfinite(total):
                        raise TrainingError(f"ppo: non-finite loss at update {update}; no checkpoint was written")
                    optimizer.zero_grad(set_to_none=True)
                    scaler.scale(total).backward()
                    scaler.unscale_(optimizer)
                    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), ppo.max_grad_norm)
                    scaler.step(optimizer)
                    scaler.update()
                    for key, value in (("loss_policy", policy_loss), ("loss_value", value_loss),
                                       ("loss_entropy", entropy), ("loss_total", loss), ("loss_bc", bc_loss),
                                       ("clip_fraction", clip_fraction), ("kl", approx_kl), ("grad_norm", grad_norm),
                                       ("adv_std", adv_std)):
                        stats[key].append(float(value.detach()))
                    counters["clip_triggered"] += int(float(clip_fraction) > 0)
            last = {key: float(np.mean(values[-ppo.update_epochs * ppo.minibatches:])) for key, values in stats.items()}
            log.write({"update": update, "cycle": self.cycle, "mode": mode, "rows": rows, **last})
            progress.update(1, loss=last["loss_total"], kl=last["kl"])

        duration = time.perf_counter() - start
        evaluation = evaluate(config, TorchPolicy(model, device, greedy=config.evaluation.greedy).act)
        self.evaluation = evaluation
        last = {key: float(np.mean(values[-ppo.update_epochs * ppo.minibatches:])) for key, values in stats.items()}
        flags = judge(last["loss_total"], evaluation, self.anneal)
        metrics = {**{f"eval_{k}": v for k, v in evaluation.items()}, "loss_total": last["loss_total"],
                   "kl": last["kl"], "clip_fraction": last["clip_fraction"]}
        out = Path(self.out) if self.out is not None else context.artifacts / "ppo"
        source = dataset or anchor
        record = save_checkpoint(out, model, "ppo", config.model_dump(mode="json"),
                                 source.identity if source is not None else None, parent, metrics, optimizer,
                                 progress={"updates": updates, "cycle": self.cycle})
        entropy_all = np.concatenate(entropies) if entropies else np.zeros(1)
        anneal = self.anneal
        baselines = anneal.baselines if anneal is not None else {}
        return PPOTrainingResult(
            epoch=ppo.update_epochs, updates=updates, transitions=counters["transitions"], steps=counters["steps"],
            loss_policy=last["loss_policy"], loss_value=last["loss_value"], loss_entropy=last["loss_entropy"],
            loss_total=last["loss_total"], loss_bc=last["loss_bc"], clip_fraction=float(np.mean(stats["clip_fraction"])),
            clip_fraction_max=float(np.max(stats["clip_fraction"])), adv_mean=float(data["advantages"].mean()),
            adv_std=float(data["advantages"].std()), adv_min_std=float(np.min(stats["adv_std"])),
            adv_zero_std_batches=counters["zero_std"], clip_triggered_minibatches=counters["clip_triggered"],
            grad_norm=float(np.mean(stats["grad_norm"])), grad_norm_max=float(np.max(stats["grad_norm"])),
            kl_divergence=float(np.mean(stats["kl"])), kl_divergence_max=float(np.max(stats["kl"])),
            lr=ppo.learning_rate, batch_entropy_mean=float(entropy_all.mean()), batch_entropy_std=float(entropy_all.std()),
            reward_advantage_corr=float(np.nanmean(reward_adv)), data_mode=mode, cycle_id=self.cycle,
            rollout_ticks=ppo.rollout_ticks, epoch_duration_sec=duration / updates,
            env_steps_per_sec=(counters["steps"] * world.towns * world.agents / counters["rollout_seconds"]
                               if counters["rollout_seconds"] else 0.0),
            device=device.name,
            queue_conflict_events=int(telemetry["queue_conflict_events"]),
            queue_conflict_intensity=float(telemetry["queue_conflict_intensity"]),
            shared_meal_events=int(telemetry["shared_meal_events"]),
            late_help_events=int(telemetry["late_help_events"]),
            shift_takeover_events=int(telemetry["shift_takeover_events"]),
            chat_success_events=int(telemetry["chat_success_events"]),
            chat_failure_events=int(telemetry["chat_failure_events"]),
            chat_quality=telemetry["chat_quality_sum"] / max(telemetry["chat_success_events"], 1.0),
            anneal_cycle=anneal.cycle if anneal else None, anneal_stage=anneal.stage if anneal else None,
            dataset_label=anneal.dataset_label if anneal else None,
            bc_threshold=anneal.bc_threshold if anneal else None,
            baseline_loss=baselines.get("loss"), baseline_queue_events=baselines.get("queue_events"),
            baseline_queue_intensity=baselines.get("queue_intensity"),
            loss_flag=flags["loss_flag"], queue_flag=flags["queue_flag"], intensity_flag=flags["intensity_flag"],
            baseline_dataset_metrics=_dataset_metrics(source), evaluation=evaluation,
            checkpoint_id=record.checkpoint_id, checkpoint_path=str(out), parent_checkpoint_id=parent,
        )


def judge(loss_total: float, evaluation: dict[str, float], anneal: AnnealContext | None) -> dict[str, bool]:
    """The PPO guardrails: loss within tolerance of its baseline; conflicts not rising past theirs."""
    flags = {"loss_flag": False, "queue_flag": False, "intensity_flag": False}
    if anneal is None:
        return flags
    baseline = anneal.baselines
    if baseline.get("loss") is not None and baseline["loss"] != 0:
        flags["loss_flag"] = abs(loss_total - baseline["loss"]) / abs(baseline["loss"]) > anneal.loss_tolerance
    for flag, key, metric, tolerance in (
        ("queue_flag", "queue_events", "queue_conflict_events_per_agent_day", anneal.queue_tolerance),
        ("intensity_flag", "queue_intensity", "queue_conflict_intensity_per_agent_day", anneal.intensity_tolerance),
    ):
        reference = baseline.get(key)
        if reference is not None:
            flags[flag] = evaluation[metric] > reference * (1 + tolerance) + 1e-12
    return flags


def _dataset_metrics(dataset: ReplayDataset | None) -> dict[str, float]:
    if dataset is None:
        return {}
    metrics = dataset.manifest.metrics
    days = max(metrics.agent_days, 1e-9)
    return {
        "reward_mean": metrics.reward_mean,
        "queue_conflict_events_per_agent_day": metrics.queue_conflict_events / days,
        "queue_conflict_intensity_per_agent_day": metrics.queue_conflict_intensity / days,
        "faints_per_agent_day": metrics.faints / days,
        "samples": float(metrics.samples),
    }
