"""PPO, CleanRL-style, in Stable-Baselines3's order: collect, returns and advantages, update, finish.

- `collect_rollout` drives the batched world with the current network (on-policy) and stores
  (obs_t, mask_t, a_t, r_t, c_t, done_t, logp_t, v_t), where c_t is the agent's share of this tick's queue
  conflicts: half of each to the blocked agent, half to the one holding the object.
- `gae` turns rewards into advantages and returns, bootstrapped from the value of the state after the
  last step. With the conflict constraint on, the advantage is (A_r − λ·A_c) / (1 + λ) (PPO-Lagrangian's
  normalised form; `rollout_rows`).
- `ppo_losses` is one pure update step with CleanRL's named intermediates (ratio, clipped surrogate,
  clipped value loss, entropy); `PPOStrategy.run` is the loop that calls them and writes the checkpoint.

The conflict constraint (`ppo.conflict_budget` > 0): λ is a Lagrange multiplier on the rate of queue
conflicts per agent-day, with the scripted expert's own rate on this stage's rollout towns times
`conflict_budget` as the budget. After every update, dual ascent moves λ by `lagrange_lr` × (rate / budget
− 1), the rate measured over the last day of rollouts; λ never goes below zero. The world's reward is not
changed: evaluation and guardrails see the same reward as every other policy.

Data modes: `rollout` (on-policy, the default), `replay` (stored rows with their stored log-probs and
values), `mixed` (both in the same shuffled mini-batches, replay rows making up `mixed_replay_fraction`;
replay rows carry no conflict cost). A stage may add `bc_weight × cross-entropy` on expert rows (the BC
anchor) to the PPO loss.
"""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from townlet_pipelines.config import PPO_CYCLE_SEEDS, PPOConfig, TownletConfig
from townlet_pipelines.data.replay import ReplayDataset
from townlet_pipelines.results import PPOTrainingResult
from townlet_pipelines.training import tensorboard
from townlet_pipelines.training.context import TrainingContext
from townlet_pipelines.training.device import DeviceContext, to_tensors
from townlet_pipelines.training.distributed import (
    all_sum, average_gradients, barrier, broadcast, require_rollout_mode, same_weights, verify_same_weights,
)
from townlet_pipelines.training.policy import observation_batch
from townlet_pipelines.training.progress import LOGGER, Progress
from townlet_pipelines.training.torch_support import TrainingError, require_torch
from townlet_pipelines.world.engine import TELEMETRY_KEYS, TownWorld, town_seeds

OBS_KEYS = ("map", "features", "action_mask")
ROW_KEYS = (*OBS_KEYS, "actions", "old_log_probs", "value_preds", "advantages", "returns", "rewards")
STAT_KEYS = ("loss_policy", "loss_value", "loss_entropy", "loss_total", "loss_bc", "clip_fraction", "kl",
             "grad_norm", "adv_std")


# ------------------------------------------------------------------------------------------- collect
@dataclass
class Rollout:
    arrays: dict[str, np.ndarray]  # (T, A, ...) per tick and agent
    bootstrap: np.ndarray  # (A,) V(obs_T), the state after the last step
    telemetry: dict[str, float]
    ticks: int
    seconds: float


def collect_rollout(model, world: TownWorld, ticks: int, device: DeviceContext, next_seed,
                    episode_ticks: int | None = None) -> Rollout:
    """Drive every town with the current network (sampling) for `ticks` ticks; a finished episode (or one
    `episode_ticks` long) restarts on fresh seeds from `next_seed()`."""
    torch = require_torch()
    agents = world.towns * world.agents
    store: dict[str, list] = collections.defaultdict(list)
    totals = {key: 0.0 for key in TELEMETRY_KEYS}
    start = time.perf_counter()
    model.eval()
    for _ in range(ticks):
        observed = observation_batch(world)
        with torch.no_grad():
            batch = to_tensors(observed, device, OBS_KEYS)
            distribution, values = model.distribution(batch["features"], batch["action_mask"], batch.get("map"))
            actions = distribution.sample()
            log_probs, entropy = distribution.log_prob(actions), distribution.entropy()
        actions_np = actions.cpu().numpy()
        result = world.step(actions_np.reshape(world.towns, world.agents))
        costs = np.zeros((world.towns, world.agents), dtype=np.float32)
        if result.conflicts is not None and len(result.conflicts.town):
            # A conflict takes two: half its cost to the agent that was blocked, half to the one holding the
            # object (a policy that hogs the fridge causes the conflicts of others).
            np.add.at(costs, (result.conflicts.town, result.conflicts.blocked), 0.5)
            np.add.at(costs, (result.conflicts.town, result.conflicts.blocker), 0.5)
        for key in OBS_KEYS:
            if key in observed:
                store[key].append(observed[key].copy())
        store["actions"].append(actions_np.astype(np.int8))
        store["old_log_probs"].append(log_probs.cpu().numpy())
        store["value_preds"].append(values.cpu().numpy())
        store["entropy"].append(entropy.cpu().numpy())
        store["rewards"].append(result.rewards.reshape(-1))
        store["costs"].append(costs.reshape(-1))
        restart = result.truncated or (episode_ticks is not None and world.state.tick >= episode_ticks)
        store["dones"].append(result.dones.reshape(-1) | restart)
        for key in TELEMETRY_KEYS:
            totals[key] += float(result.telemetry[key].sum())
        if restart:
            world.reset(next_seed())
    with torch.no_grad():
        batch = to_tensors(observation_batch(world), device, OBS_KEYS)
        _, bootstrap = model(batch["features"], batch["action_mask"], batch.get("map"))
    arrays = {key: np.stack(values) for key, values in store.items()}
    assert arrays["actions"].shape[:2] == (ticks, agents)
    return Rollout(arrays, bootstrap.cpu().numpy(), totals, ticks, time.perf_counter() - start)


# ------------------------------------------------------------------------------- returns/advantages
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


def rollout_rows(rollout: Rollout, penalty: float, ppo: PPOConfig) -> dict[str, np.ndarray]:
    """Flattened training rows of a rollout, with PPO-Lagrangian's advantage (A_r − λ·A_c) / (1 + λ).

    A_r is GAE on the world's reward against the value head, which learns the reward's return alone (its
    targets do not move when λ does); A_c is the conflicts' discounted cost-to-go over GAE's horizon (γ·λ_GAE,
    about 17 ticks: from the choice to walk to an object to the queue it meets), without a critic of its own.
    Dividing by 1 + λ (as OpenAI's safety-starter-agents and OmniSafe do) keeps the advantage on the reward's
    scale however high the price goes.
    """
    arrays = rollout.arrays
    reward_advantages, returns = gae(arrays["rewards"], arrays["value_preds"], arrays["dones"], rollout.bootstrap,
                                     ppo.gamma, ppo.gae_lambda)
    if penalty > 0:
        penalty = np.float64(penalty)  # in float64 whether the price comes from this run or from a resumed one's JSON
        cost_to_go, _ = gae(arrays["costs"], np.zeros_like(arrays["costs"]), arrays["dones"],
                            np.zeros_like(rollout.bootstrap), ppo.gamma, ppo.gae_lambda)
        advantages = (reward_advantages - penalty * cost_to_go) / (1.0 + penalty)
    else:
        advantages = reward_advantages
    rows = {key: arrays[key] for key in (*OBS_KEYS, "actions", "old_log_probs", "value_preds", "rewards")
            if key in arrays}
    rows["advantages"], rows["returns"] = advantages, returns
    count = rollout.ticks * arrays["actions"].shape[1]
    return {key: value.reshape(count, *value.shape[2:]) for key, value in rows.items()}


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


# ----------------------------------------------------------------------------------- the constraint
@dataclass
class ConflictMultiplier:
    """The PID Lagrangian of Stooke, Achiam & Abbeel (2020) on queue conflicts: λ prices one conflict in reward.

    The error is e = rate / budget − 1, the rate being conflicts per agent-day over a trailing window of updates
    that covers about one day of every rollout town (meal-time peaks and quiet nights averaged, not chased):

        I ← max(0, I + ki·e)                      the integral: plain dual ascent (PPO-Lagrangian) when kp = kd = 0
        λ = max(0, kp·e + I + kd·max(0, rate − previous rate) / budget)

    The proportional term answers an overshoot within the update instead of after the integral has wound up,
    and the derivative term brakes a rate that is climbing; together they damp the oscillation of plain dual
    ascent. The integral starts at `lagrange_init`, so conflicts are priced from the first update.
    """

    budget: float  # conflicts per agent-day
    ki: float
    kp: float = 0.0
    kd: float = 0.0
    integral: float = 0.0
    value: float = 0.0
    window: int = 1
    previous_rate: float | None = None
    history: collections.deque = field(default_factory=collections.deque)

    def __post_init__(self) -> None:
        self.value = max(0.0, self.integral)

    def update(self, conflicts: float, agent_days: float) -> float:
        self.history.append((conflicts, agent_days))
        while len(self.history) > self.window:
            self.history.popleft()
        rate = sum(c for c, _ in self.history) / max(sum(d for _, d in self.history), 1e-9)
        budget = max(self.budget, 1e-9)
        error = rate / budget - 1.0
        self.integral = max(0.0, self.integral + self.ki * error)
        rising = max(0.0, rate - self.previous_rate) / budget if self.previous_rate is not None else 0.0
        self.value = max(0.0, self.kp * error + self.integral + self.kd * rising)
        self.previous_rate = rate
        return rate

    def state(self) -> dict:
        return {"value": self.value, "integral": self.integral, "previous_rate": self.previous_rate,
                "history": [list(item) for item in self.history]}

    def restore(self, state: dict) -> None:
        self.value = state["value"]
        self.integral = state.get("integral", state["value"])
        self.previous_rate = state.get("previous_rate")
        self.history.extend(tuple(item) for item in state["history"])


VALIDATION_KEYS = ("reward_per_agent_day", "faints_per_agent_day", "queue_conflict_events_per_agent_day",
                   "wages_per_agent_day")


def validation_scores(config: TownletConfig, act) -> dict[str, float]:
    """A greedy policy's KPIs on the seeds.validation towns (never the guardrail or the held-out towns)."""
    from townlet_pipelines.training.evaluation import evaluate

    report = evaluate(config, act, seeds=config.seeds.validation.seeds())
    return {key: report[key] for key in VALIDATION_KEYS}


@dataclass
class SnapshotSelector:
    """Early stopping under the constraint: keep the snapshot with the highest validation reward among those
    whose conflicts stay within `ratio` × the expert's, whose faints do not exceed the expert's and whose
    wages reach `wage_ratio` × the expert's; while none qualifies, the one with the fewest conflicts."""

    expert: dict[str, float]
    ratio: float
    wage_ratio: float = 0.0
    best: dict[str, float] | None = None
    best_state: dict | None = None
    best_update: int = 0

    def feasible(self, scores: dict[str, float]) -> bool:
        return (scores["queue_conflict_events_per_agent_day"]
                <= self.ratio * self.expert["queue_conflict_events_per_agent_day"] + 1e-9
                and scores["faints_per_agent_day"] <= self.expert["faints_per_agent_day"] + 1e-9
                and scores["wages_per_agent_day"] >= self.wage_ratio * self.expert["wages_per_agent_day"] - 1e-9)

    def offer(self, update: int, scores: dict[str, float], model) -> bool:
        better = self.best is None
        if not better:
            if self.feasible(scores) != self.feasible(self.best):
                better = self.feasible(scores)
            elif self.feasible(scores):
                better = scores["reward_per_agent_day"] > self.best["reward_per_agent_day"]
            else:
                better = (scores["queue_conflict_events_per_agent_day"]
                          < self.best["queue_conflict_events_per_agent_day"])
        if better:
            self.best, self.best_update = dict(scores), update
            self.best_state = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
        return better


# --------------------------------------------------------------------------------------- update
def ppo_losses(model, batch: dict, ppo: PPOConfig) -> dict:
    """One mini-batch of CleanRL's PPO objective; every intermediate is returned under its CleanRL name."""
    torch = require_torch()
    distribution, newvalue = model.distribution(batch["features"], batch["action_mask"], batch.get("map"))
    newlogprob = distribution.log_prob(batch["actions"].long())
    entropy = distribution.entropy()
    logratio = newlogprob - batch["old_log_probs"]
    ratio = logratio.exp()
    with torch.no_grad():
        approx_kl = ((ratio - 1) - logratio).mean()  # the low-variance estimator of KL(old || new)
        clipfrac = ((ratio - 1.0).abs() > ppo.clip_coef).float().mean()
    mb_advantages = batch["advantages"]
    adv_std = mb_advantages.std()
    zero_std = bool(adv_std < 1e-8)  # identical advantages carry no signal: centre only
    mb_advantages = mb_advantages - mb_advantages.mean()
    if not zero_std:
        mb_advantages = mb_advantages / (adv_std + 1e-8)
    # Clipped surrogate: the pessimistic of the plain and the clipped importance-weighted advantage.
    pg_loss1 = -mb_advantages * ratio
    pg_loss2 = -mb_advantages * torch.clamp(ratio, 1 - ppo.clip_coef, 1 + ppo.clip_coef)
    pg_loss = torch.max(pg_loss1, pg_loss2).mean()
    # Clipped value loss: the new value may not move further than value_clip_coef from the old one for free.
    v_loss_unclipped = (newvalue - batch["returns"]) ** 2
    v_clipped = batch["value_preds"] + torch.clamp(newvalue - batch["value_preds"], -ppo.value_clip_coef,
                                                   ppo.value_clip_coef)
    v_loss_clipped = (v_clipped - batch["returns"]) ** 2
    v_loss = 0.5 * torch.max(v_loss_unclipped, v_loss_clipped).mean()
    entropy_loss = entropy.mean()
    loss = pg_loss - ppo.entropy_coef * entropy_loss + ppo.value_coef * v_loss
    return {"loss": loss, "pg_loss": pg_loss, "v_loss": v_loss, "entropy_loss": entropy_loss,
            "approx_kl": approx_kl, "clipfrac": clipfrac, "adv_std": adv_std, "zero_std": zero_std}


def anchor_loss(model, expert: dict):
    """The BC anchor: cross-entropy of the network against the expert's labels on demonstration rows."""
    torch = require_torch()
    logits, _ = model(expert["features"], expert["action_mask"], expert.get("map"), shield=False)
    return torch.nn.functional.cross_entropy(logits, expert["expert_actions"].long())


# ----------------------------------------------------------------------------------------- the loop
@dataclass
class PPOStrategy:
    init_checkpoint: str | Path | None = None
    updates: int | None = None  # default: config.ppo.updates
    data_mode: str | None = None  # default: config.ppo.data_mode
    replay_dataset: str | Path | None = None  # stored rows for `replay` and `mixed`
    bc_weight: float = 0.0
    anchor_dataset: str | Path | None = None  # expert rows for the bc_weight anchor; default: replay_dataset
    cycle: int = 0
    out: str | Path | None = None  # checkpoint directory; default <artifacts>/ppo
    name: str = "ppo"
    continue_optimizer: bool = False  # also restore init_checkpoint's optimizer moments (continue a PPO run)
    resume: bool = False  # continue a killed run of this stage from its progress checkpoint (`<out>.progress`)
    evaluate_towns: bool = True  # score the result on the guardrail towns (the anneal judges from it)

    def run(self, context: TrainingContext) -> PPOTrainingResult:
        torch = require_torch()
        from townlet_pipelines.training.checkpoints import model_for, read_record, restore_optimizer, save_checkpoint
        from townlet_pipelines.training.evaluation import evaluate
        from townlet_pipelines.training.policy import evaluation_policy
        from townlet_pipelines.training.resume import finish_progress, load_progress, progress_dir, restore_world
        from townlet_pipelines.world.policies import ScriptedExpert

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

        # ---- set-up: this cycle's own towns (a slice of seeds.ppo), the network, the optimizer
        log = tensorboard.mirror(context.log(self.name), context.artifacts / tensorboard.FOLDER, self.name)
        seed = ppo.seed + 7919 * self.cycle
        torch.manual_seed(seed)
        ranks = context.ranks
        require_rollout_mode(mode, ranks)
        first_town = config.seeds.ppo.start + PPO_CYCLE_SEEDS * self.cycle
        episode_ticks = min(config.world.episode_ticks, ppo.episode_ticks or config.evaluation.ticks)
        needed = ppo.rollout_towns * ranks.world * (2 + updates * ppo.rollout_ticks // episode_ticks)
        if needed > PPO_CYCLE_SEEDS:
            raise TrainingError(f"ppo: {ranks.world} ranks need {needed} town seeds per cycle, more than its "
                                f"{PPO_CYCLE_SEEDS}; use fewer ranks, rollout_towns or updates")
        world = TownWorld(config, ppo.rollout_towns)
        episode = [0]

        def next_seed():  # each rank its own towns: episode e of rank r takes block e x world + r of the slice
            episode[0] += 1
            return town_seeds(first_town + (episode[0] * ranks.world + ranks.rank) * ppo.rollout_towns,
                              ppo.rollout_towns)

        world.reset(town_seeds(first_town + ranks.rank * ppo.rollout_towns, ppo.rollout_towns))
        model, parent = model_for(world.spec, config.model, device.device, self.init_checkpoint)
        same_weights(model, ranks)
        for source in (dataset, anchor):
            if source is not None and source.spec != world.spec:
                raise TrainingError(f"ppo: dataset {source.directory} has another observation spec than the world")
        optimizer = torch.optim.Adam(model.parameters(), lr=ppo.learning_rate, eps=1e-5)
        if self.continue_optimizer and self.init_checkpoint is not None:
            restore_optimizer(self.init_checkpoint, optimizer, device.device)
        out_dir = Path(self.out) if self.out is not None else context.artifacts / "ppo"
        progress_folder = progress_dir(out_dir)
        loop: dict = {"next": 0, "seconds": 0.0, "anchor_batches": 0, "reward_adv": [], "multipliers": [],
                      "adv": [0.0, 0.0], "stats": {key: [] for key in STAT_KEYS}, "counters": {
                          "zero_std": 0, "clip_triggered": 0, "transitions": 0, "steps": 0, "rollout_seconds": 0.0},
                      "telemetry": {key: 0.0 for key in TELEMETRY_KEYS}}
        arrays: dict[str, np.ndarray] = {}
        scaler = torch.amp.GradScaler("cuda", enabled=device.amp)
        if self.resume and ranks.active:
            raise TrainingError("ppo: a data-parallel run keeps no progress checkpoints; start it again")
        if self.resume:  # the killed run's loop state, weights, moments and RNG; its world mid-episode
            loop, arrays = load_progress(progress_folder, model, optimizer, device.device, config=config, scaler=scaler)
            restore_world(world, arrays, loop["world_tick"])
            episode[0] = loop["episode"]
            log.truncate("update", loop["next"])
        multiplier, selector = None, None
        if (ppo.conflict_budget > 0 and mode != "replay") or ppo.validate_every:
            expert = loop.get("expert") or validation_scores(config, ScriptedExpert(config.expert).act)
            selector = SnapshotSelector(expert, ppo.select_conflict_ratio, ppo.select_wage_ratio)
            if "expert" not in loop:
                log.write({"update": -1, "cycle": self.cycle, "validation": "expert", **expert})
            loop["expert"] = expert
            if loop.get("selected") is not None:
                selector.best, selector.best_update = loop["selected"]["scores"], loop["selected"]["update"]
                selector.best_state = {name[len("best."):]: torch.from_numpy(value).to(device.device)
                                       for name, value in arrays.items() if name.startswith("best.")}
            elif ppo.select_keep_start and ppo.validate_every and loop["next"] == 0:
                self._offer_start(config, model, device, selector, log, ranks)
        if ppo.conflict_budget > 0 and mode != "replay":
            expert_rate = expert["queue_conflict_events_per_agent_day"]
            multiplier = ConflictMultiplier(
                budget=max(ppo.conflict_budget * expert_rate, 1e-3), ki=ppo.lagrange_lr, kp=ppo.lagrange_kp,
                kd=ppo.lagrange_kd, integral=ppo.lagrange_init,
                window=max(1, -(-config.world.day_ticks // ppo.rollout_ticks)))
            if "lagrange" in loop:
                multiplier.restore(loop["lagrange"])
        agents = world.towns * world.agents
        replay_stream = replay_rows(dataset, ppo.gamma, ppo.gae_lambda, seed) if dataset is not None else None
        pending: list = []
        replay_count = self._replay_count(mode, ppo.rollout_ticks * agents, ppo.mixed_replay_fraction)
        for _ in range(loop["next"] if mode in ("replay", "mixed") and replay_count > 0 else 0):
            take_rows(replay_stream, replay_count, pending)  # resumed: the stream where the killed run left it
        anchor_stream = None
        if anchor is not None:
            anchor_stream = (batch for epoch in range(10**9)
                             for batch in anchor.iter_batches(256, seed=seed + epoch))
            for _ in range(loop["anchor_batches"]):
                next(anchor_stream)
        stats, counters, telemetry = loop["stats"], loop["counters"], loop["telemetry"]
        reward_adv, multipliers = loop["reward_adv"], loop["multipliers"]
        entropies = [arrays["entropies"]] if "entropies" in arrays else []
        start = time.perf_counter() - loop["seconds"]
        progress = Progress(updates, f"ppo cycle {self.cycle}", context.progress)
        progress.update(loop["next"])
        for update in range(loop["next"], updates):
            # ---- collect
            parts, rate = [], None
            if mode in ("rollout", "mixed"):
                rollout = collect_rollout(model, world, ppo.rollout_ticks, device, next_seed,
                                          ppo.episode_ticks or config.evaluation.ticks)
                penalty = multiplier.value if multiplier is not None else 0.0
                parts.append(rollout_rows(rollout, penalty, ppo))
                counters["steps"] += rollout.ticks
                counters["rollout_seconds"] += rollout.seconds
                entropies.append(rollout.arrays["entropy"].reshape(-1))
                for key in TELEMETRY_KEYS:
                    telemetry[key] += rollout.telemetry[key]
                if multiplier is not None:  # priced on every rank's towns, so every rank holds the same price
                    multipliers.append(penalty)
                    conflicts, agent_days = all_sum([rollout.telemetry["queue_conflict_events"],
                                                     agents * rollout.ticks / config.world.day_ticks], ranks)
                    rate = multiplier.update(conflicts, agent_days)
            if mode in ("replay", "mixed") and replay_count > 0:
                parts.append(take_rows(replay_stream, replay_count, pending))
            keys = set.intersection(*(set(part) for part in parts))
            data = {key: np.concatenate([part[key] for part in parts]) for key in keys}
            rows = len(data["actions"])
            counters["transitions"] += rows
            reward_adv.append(np.corrcoef(data["rewards"], data["advantages"])[0, 1] if data["rewards"].std() > 0
                              else 0.0)

            # ---- update: update_epochs passes of shuffled mini-batches
            model.train()
            minibatch = max(1, rows // ppo.minibatches)
            for epoch in range(ppo.update_epochs):
                order = np.random.default_rng(seed + 31 * update + epoch).permutation(rows)
                for begin in range(0, rows - minibatch + 1, minibatch):
                    batch = to_tensors({key: data[key][order[begin:begin + minibatch]] for key in data}, device,
                                       ROW_KEYS)
                    with torch.autocast(device_type=device.device.type, dtype=torch.float16, enabled=device.amp):
                        out = ppo_losses(model, batch, ppo)
                        loss_bc = torch.zeros((), device=device.device)
                        if anchor_stream is not None:
                            loss_bc = anchor_loss(model, to_tensors(next(anchor_stream), device,
                                                                    (*OBS_KEYS, "expert_actions")))
                            loop["anchor_batches"] += 1
                        objective = out["loss"] + self.bc_weight * loss_bc
                    if not torch.isfinite(objective):
                        raise TrainingError(f"ppo: non-finite loss at update {update}; no checkpoint was written")
                    optimizer.zero_grad(set_to_none=True)
                    scaler.scale(objective).backward()
                    average_gradients(model, ranks)
                    scaler.unscale_(optimizer)
                    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), ppo.max_grad_norm)
                    scaler.step(optimizer)
                    scaler.update()
                    for key, value in (("loss_policy", out["pg_loss"]), ("loss_value", out["v_loss"]),
                                       ("loss_entropy", out["entropy_loss"]), ("loss_total", out["loss"]),
                                       ("loss_bc", loss_bc), ("clip_fraction", out["clipfrac"]),
                                       ("kl", out["approx_kl"]), ("grad_norm", grad_norm), ("adv_std", out["adv_std"])):
                        stats[key].append(float(value.detach()))
                    counters["zero_std"] += int(out["zero_std"])
                    counters["clip_triggered"] += int(float(out["clipfrac"]) > 0)
            last = _recent(stats, ppo)
            entry = {"update": update, "cycle": self.cycle, "mode": mode, "rows": rows, **last,
                     "explained_variance": explained_variance(data["value_preds"], data["returns"])}
            if mode != "replay":  # what the rollouts earned and cost, per agent-day (the trade the price steers)
                rollout_days = agents * rollout.ticks / config.world.day_ticks
                entry.update(rollout_reward_per_agent_day=float(rollout.arrays["rewards"].sum()) / rollout_days)
            if multiplier is not None:
                entry.update(conflict_rate=rate, conflict_budget=multiplier.budget, lagrange_multiplier=multiplier.value)
            log.write(entry)
            progress.update(1, phase=mode, loss=last["loss_total"], kl=last["kl"], clip=last["clip_fraction"],
                            reward=entry.get("rollout_reward_per_agent_day"),
                            steps_per_s=(rollout.ticks * agents / rollout.seconds if mode != "replay" else None),
                            **({"conflicts": rate, "budget": multiplier.budget, "lam": multiplier.value}
                               if multiplier is not None else {}))
            if ppo.validate_every and ((update + 1) % ppo.validate_every == 0 or update + 1 == updates):
                scores = broadcast(validation_scores(config, evaluation_policy(model, device, config).act), ranks)
                chosen = selector.offer(update + 1, scores, model)  # rank 0's scores: one choice on every rank
                log.write({"update": update, "cycle": self.cycle, "validation": "policy", "chosen": chosen, **scores})
                LOGGER.info("ppo cycle %d validation after update %d: reward %.2f, conflicts %.3f, wages %.2f "
                            "per agent-day%s", self.cycle, update + 1, scores["reward_per_agent_day"],
                            scores["queue_conflict_events_per_agent_day"], scores["wages_per_agent_day"],
                            " (the best so far: kept)" if chosen else "")
            loop.update(next=update + 1, seconds=time.perf_counter() - start, episode=episode[0],
                        world_tick=world.state.tick,
                        adv=[float(data["advantages"].mean()), float(data["advantages"].std())])
            # A data-parallel run keeps no progress checkpoints: each rank's towns are its own world state.
            if (update + 1) % config.runtime.progress_every_updates == 0 and update + 1 < updates and not ranks.active:
                self._save_progress(progress_folder, update + 1, model, optimizer, loop, world, entropies,
                                    multiplier, selector, config, scaler)
        selected = updates  # the update whose weights the stage returns
        if selector is not None and selector.best is not None:
            model.load_state_dict(selector.best_state)  # the chosen snapshot becomes the stage's result
            selected = selector.best_update

        # ---- finish: score on the guardrail towns, write the checkpoint, build the record
        duration = time.perf_counter() - start
        evaluation, towns = {}, {}
        if self.evaluate_towns:  # per town too: the champion is compared on the same towns, paired
            evaluation = evaluate(config, evaluation_policy(model, device, config).act,
                                  per_town=towns)
        last = _recent(stats, ppo)
        metrics = {**{f"eval_{k}": v for k, v in evaluation.items()}, "loss_total": last["loss_total"],
                   "kl": last["kl"], "clip_fraction": last["clip_fraction"]}
        source = dataset or anchor
        verify_same_weights(model, ranks)
        if ranks.main:  # one writer; the other ranks hold the very same weights
            save_checkpoint(out_dir, model, "ppo", config.model_dump(mode="json"),
                            source.identity if source is not None else None, parent, metrics, optimizer,
                            progress={"updates": updates, "cycle": self.cycle, "selected_update": selected})
            finish_progress(progress_folder)
        barrier(ranks)
        record = read_record(out_dir)
        rate, transitions = all_sum([counters["steps"] * agents / counters["rollout_seconds"]
                                     if counters["rollout_seconds"] else 0.0, counters["transitions"]], ranks)
        entropy_all = np.concatenate(entropies) if entropies else np.zeros(1)
        return PPOTrainingResult(
            epoch=ppo.update_epochs, updates=updates, transitions=int(transitions), steps=counters["steps"],
            loss_policy=last["loss_policy"], loss_value=last["loss_value"], loss_entropy=last["loss_entropy"],
            loss_total=last["loss_total"], loss_bc=last["loss_bc"],
            clip_fraction=float(np.mean(stats["clip_fraction"])), clip_fraction_max=float(np.max(stats["clip_fraction"])),
            adv_mean=loop["adv"][0], adv_std=loop["adv"][1],
            adv_min_std=float(np.min(stats["adv_std"])), adv_zero_std_batches=counters["zero_std"],
            clip_triggered_minibatches=counters["clip_triggered"],
            grad_norm=float(np.mean(stats["grad_norm"])), grad_norm_max=float(np.max(stats["grad_norm"])),
            kl_divergence=float(np.mean(stats["kl"])), kl_divergence_max=float(np.max(stats["kl"])),
            lr=ppo.learning_rate, batch_entropy_mean=float(entropy_all.mean()),
            batch_entropy_std=float(entropy_all.std()), reward_advantage_corr=float(np.nan_to_num(np.nanmean(reward_adv) if np.isfinite(reward_adv).any() else 0.0)),
            data_mode=mode, cycle_id=self.cycle, rollout_ticks=ppo.rollout_ticks,
            epoch_duration_sec=duration / updates,
            env_steps_per_sec=float(rate),  # every rank's towns
            device=device.name,
            queue_conflict_events=int(telemetry["queue_conflict_events"]),
            queue_conflict_intensity=float(telemetry["queue_conflict_intensity"]),
            shared_meal_events=int(telemetry["shared_meal_events"]),
            late_help_events=int(telemetry["late_help_events"]),
            shift_takeover_events=int(telemetry["shift_takeover_events"]),
            chat_success_events=int(telemetry["chat_success_events"]),
            chat_failure_events=int(telemetry["chat_failure_events"]),
            chat_quality=telemetry["chat_quality_sum"] / max(telemetry["chat_success_events"], 1.0),
            conflict_budget=multiplier.budget if multiplier is not None else None,
            lagrange_multiplier=multiplier.value if multiplier is not None else None,
            lagrange_multiplier_mean=float(np.mean(multipliers)) if multipliers else None,
            selected_update=selected,
            evaluation_town_rewards=[float(value) for value in towns.get("reward_per_agent_day", [])],
            validation=dict(selector.best) if selector is not None and selector.best is not None else {},
            validation_expert=dict(selector.expert) if selector is not None else {},
            baseline_dataset_metrics=_dataset_metrics(source), evaluation=evaluation,
            checkpoint_id=record.checkpoint_id, checkpoint_path=str(out_dir), parent_checkpoint_id=parent,
        )


    def _offer_start(self, config: TownletConfig, model, device: DeviceContext, selector: "SnapshotSelector",
                     log, ranks) -> None:
        """The starting weights (the champion's or the BC clone's) compete as update 0: a stage that finds no
        snapshot better under the constraints returns its start, never a worse snapshot."""
        from townlet_pipelines.training.policy import evaluation_policy

        scores = broadcast(validation_scores(config, evaluation_policy(model, device, config).act), ranks)
        selector.offer(0, scores, model)
        log.write({"update": -1, "cycle": self.cycle, "validation": "policy", "start": True, "chosen": True, **scores})
        LOGGER.info("ppo cycle %d validation of its start: reward %.2f, conflicts %.3f, wages %.2f per agent-day "
                    "(kept unless a snapshot does better)", self.cycle, scores["reward_per_agent_day"],
                    scores["queue_conflict_events_per_agent_day"], scores["wages_per_agent_day"])

    @staticmethod
    def _replay_count(mode: str, target: int, share: float) -> int:
        """Stored rows per update: all of it in `replay`, `share` of the mini-batches in `mixed`."""
        if mode == "replay":
            return target
        return int(round(target * share / max(1 - share, 1e-6))) if mode == "mixed" else 0

    @staticmethod
    def _save_progress(folder: Path, step: int, model, optimizer, loop: dict, world: TownWorld, entropies: list,
                       multiplier: ConflictMultiplier | None, selector: SnapshotSelector | None, config,
                       scaler=None) -> None:
        from townlet_pipelines.training.resume import save_progress, world_arrays

        arrays = world_arrays(world)
        if entropies:
            entropies[:] = [np.concatenate(entropies)]
            arrays["entropies"] = entropies[0]
        if multiplier is not None:
            loop["lagrange"] = multiplier.state()
        if selector is not None and selector.best is not None:
            loop["selected"] = {"scores": selector.best, "update": selector.best_update}
            arrays.update({f"best.{name}": tensor.cpu().numpy() for name, tensor in selector.best_state.items()})
        save_progress(folder, step, model, optimizer, loop, arrays, config=config, scaler=scaler)


def explained_variance(values: np.ndarray, returns: np.ndarray) -> float:
    """1 − Var(returns − values) / Var(returns), as CleanRL logs it: 1 is a perfect critic, 0 a constant one,
    below 0 worse than a constant (NaN when the returns do not vary)."""
    spread = float(np.var(returns))
    return float("nan") if spread == 0 else 1.0 - float(np.var(returns - values)) / spread


def _recent(stats: dict[str, list[float]], ppo: PPOConfig) -> dict[str, float]:
    """Means over the last update's mini-batches: the figures an update is logged and judged by."""
    window = ppo.update_epochs * ppo.minibatches
    return {key: float(np.mean(values[-window:])) for key, values in stats.items()}


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
