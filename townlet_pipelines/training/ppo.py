"""PPO, CleanRL-style, in Stable-Baselines3's shape: collect, returns and advantages, train, finish.

- collect: `rollouts.collect_rollout` drives the batched world with the current network into storage allocated
  once; `rollouts.rollout_rows` turns it into rows with GAE's returns and advantages (`rollouts.gae`).
- train: `ppo_losses` is one pure mini-batch step with CleanRL's named intermediates (ratio, clipped surrogate,
  clipped value loss, entropy); `PPORun.train` runs `update_epochs` passes of them.
- finish: `PPORun.finish` returns the chosen snapshot, scores it on the guardrail towns, writes the checkpoint.

`PPORun` holds one stage in flight (SB3's OnPolicyAlgorithm): the world, the network, the optimizer, the
constraint and a typed `LoopState`, the part a progress checkpoint saves (`ProgressSteps`); `PPOStrategy.run`
is the loop that calls its phases.

The conflict constraint (`ppo.conflict_budget` > 0, `training/constraint.py`): λ is a Lagrange multiplier on the
rate of queue conflicts per agent-day, with the scripted expert's rate on the validation towns times
`conflict_budget` as the budget; the advantage is (A_r − λ·A_c) / (1 + λ) (PPO-Lagrangian's normalised form).
After every update the PID Lagrangian moves λ on rate / budget − 1, the rate measured over the last day of
rollouts; λ never goes below zero. The world's reward is not changed: evaluation and guardrails see the same
reward as every other policy.

Data modes: `rollout` (on-policy, the default), `replay` (stored rows with their stored log-probs and
values), `mixed` (both in the same shuffled mini-batches, replay rows making up `mixed_replay_fraction`;
replay rows carry no conflict cost). A stage may add `bc_weight × cross-entropy` on expert rows (the BC
anchor) to the PPO loss.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from townlet_pipelines.config import PPO_CYCLE_SEEDS, PPOConfig, TownletConfig
from townlet_pipelines.data.replay import ReplayDataset
from townlet_pipelines.results import PPOTrainingResult
from townlet_pipelines.training import tensorboard
from townlet_pipelines.training.checkpoints import model_for, read_record, restore_optimizer, save_checkpoint
from townlet_pipelines.training.constraint import ConflictMultiplier, SnapshotSelector, validation_scores
from townlet_pipelines.training.cost_critic import PREFIX as COST_CRITIC, CostCriticTrainer
from townlet_pipelines.training.context import TrainingContext
from townlet_pipelines.training.device import to_tensors
from townlet_pipelines.training.distributed import (
    all_sum, average_gradients, barrier, broadcast, require_rollout_mode, same_weights, verify_same_weights,
)
from townlet_pipelines.training.evaluation import evaluate
from townlet_pipelines.training.policy import evaluation_policy
from townlet_pipelines.training.progress import LOGGER, Progress
from townlet_pipelines.training import resume
from townlet_pipelines.training.rollouts import (
    OBS_KEYS, ROW_KEYS, Rollout, RolloutBuffer, collect_rollout, replay_rows, rollout_rows, take_rows,
)
from townlet_pipelines.training.torch_support import TrainingError, require_torch
from townlet_pipelines.world.engine import TELEMETRY_KEYS, TownWorld, town_seeds
from townlet_pipelines.world.policies import ScriptedExpert

if TYPE_CHECKING:
    from townlet_pipelines.config import AnnealStage
    from townlet_pipelines.training.registry import StageInputs

STAT_KEYS = ("loss_policy", "loss_value", "loss_entropy", "loss_total", "loss_bc", "clip_fraction", "kl",
             "grad_norm", "adv_std")
COUNTER_KEYS = ("zero_std", "clip_triggered", "transitions", "steps")
ZERO_SPREAD = 1e-6  # advantage spread, relative to 1 + mean |return|, below which a mini-batch is only centred


# --------------------------------------------------------------------------------------- the update
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
    # Advantages that differ only by float rounding carry no signal: centre them, never scale rounding up to unit
    # spread. Rounding is relative to the returns' size (a scripted expert's replay rows store their discounted
    # returns as values, so every TD error is 0 up to ~1e-7 of the return), hence a relative threshold.
    zero_std = bool(adv_std <= ZERO_SPREAD * (1.0 + batch["returns"].abs().mean()))
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


def explained_variance(values: np.ndarray, returns: np.ndarray) -> float:
    """1 − Var(returns − values) / Var(returns), as CleanRL logs it: 1 is a perfect critic, 0 a constant one,
    below 0 worse than a constant (NaN when the returns do not vary)."""
    spread = float(np.var(returns))
    return float("nan") if spread == 0 else 1.0 - float(np.var(returns - values)) / spread


# ----------------------------------------------------------------------------------- the loop's state
@dataclass
class LoopState:
    """What the loop carries from one update to the next: what a progress step saves and a resumed run restores
    (the weights, moments, RNG and the world's arrays travel beside it, in the step's files)."""

    next: int = 0  # the first update still to run
    seconds: float = 0.0  # training time spent before this process, for a resumed run
    episode: int = 0  # rollout episodes started: episode e takes the e-th block of this cycle's town seeds
    world_tick: int = 0  # the rollout world's tick (its arrays are saved beside)
    anchor_batches: int = 0  # expert batches the BC anchor consumed
    reward_adv: list[float] = field(default_factory=list)  # per update: corr(reward, advantage)
    multipliers: list[float] = field(default_factory=list)  # per update: the λ its advantages used
    adv: list[float] = field(default_factory=lambda: [0.0, 0.0])  # the last update's advantage mean and std
    stats: dict[str, list[float]] = field(default_factory=lambda: {key: [] for key in STAT_KEYS})
    counters: dict[str, float] = field(default_factory=lambda: {**{key: 0 for key in COUNTER_KEYS},
                                                                "rollout_seconds": 0.0})
    telemetry: dict[str, float] = field(default_factory=lambda: {key: 0.0 for key in TELEMETRY_KEYS})
    expert: dict[str, float] | None = None  # the expert's validation scores (the budget's and the choice's base)
    lagrange: dict | None = None  # the multiplier's state (`ConflictMultiplier.state`)
    selected: dict | None = None  # the chosen snapshot's scores and update (its weights: arrays `best.*`)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "LoopState":
        names = {item.name for item in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in names})


class ProgressSteps:
    """A stage's progress checkpoints behind one small interface: `restore` for a resumed run, `save` every
    `runtime.progress_every_updates`, `finish` once the stage's checkpoint is written."""

    def __init__(self, out_dir: Path, config: TownletConfig, scaler) -> None:
        self.folder, self.config, self.scaler = resume.progress_dir(out_dir), config, scaler

    def restore(self, model, optimizer, device, world: TownWorld) -> tuple[LoopState, dict[str, np.ndarray]]:
        loop, arrays = resume.load_progress(self.folder, model, optimizer, device, config=self.config,
                                            scaler=self.scaler)
        resume.restore_world(world, arrays, loop["world_tick"])
        return LoopState.from_json(loop), arrays

    def save(self, step: int, model, optimizer, state: LoopState, world: TownWorld, entropies: list,
             multiplier: ConflictMultiplier | None, selector: SnapshotSelector | None,
             cost_critic: CostCriticTrainer | None) -> None:
        arrays = resume.world_arrays(world)
        if cost_critic is not None:
            arrays.update(cost_critic.arrays())
        if entropies:
            entropies[:] = [np.concatenate(entropies)]
            arrays["entropies"] = entropies[0]
        if multiplier is not None:
            state.lagrange = multiplier.state()
        if selector is not None and selector.best is not None:
            state.selected = {"scores": selector.best, "update": selector.best_update,
                              "start_conflicts": selector.start_conflicts}
            arrays.update({f"best.{name}": tensor.cpu().numpy() for name, tensor in selector.best_state.items()})
        resume.save_progress(self.folder, step, model, optimizer, state.to_json(), arrays, config=self.config,
                      scaler=self.scaler)

    def finish(self) -> None:
        resume.finish_progress(self.folder)


# ------------------------------------------------------------------------------------- one stage in flight
@dataclass
class Collected:
    """One update's training rows, and the rollout they came from (none in `replay` mode)."""

    data: dict[str, np.ndarray]
    rollout: Rollout | None
    cost_rows: dict[str, np.ndarray] | None  # the rollout's observations, cost values and λ-returns (the critic's)
    conflict_rate: float | None  # the rollouts' rate (λ's trailing one when λ follows them; None: no constraint)


class PPORun:
    """One PPO stage in flight, SB3's OnPolicyAlgorithm: set up (or resumed) once, then `collect_rollouts`,
    `train`, `after_update` per update, then `finish`."""

    def __init__(self, strategy: "PPOStrategy", context: TrainingContext) -> None:
        torch = require_torch()
        self.strategy, self.context = strategy, context
        self.config, self.ppo, self.device, self.ranks = (context.config, context.config.ppo, context.device,
                                                          context.ranks)
        self.mode = strategy.data_mode or self.ppo.data_mode
        self.updates = strategy.updates or self.ppo.updates
        self.dataset, self.anchor = self._open_datasets()
        self.log = tensorboard.mirror(context.log(strategy.name), context.artifacts / tensorboard.FOLDER, strategy.name)
        self.seed = self.ppo.seed + 7919 * strategy.cycle
        torch.manual_seed(self.seed)
        require_rollout_mode(self.mode, self.ranks)
        self.state = LoopState()
        self.world = self._open_world()
        self.agents = self.world.towns * self.world.agents
        self.model, self.parent = model_for(self.world.spec, self.config.model, self.device.device,
                                            strategy.init_checkpoint)
        same_weights(self.model, self.ranks)
        for source in (self.dataset, self.anchor):
            if source is not None and source.spec != self.world.spec:
                raise TrainingError(f"ppo: dataset {source.directory} has another observation spec than the world")
        if (self.mode in ("replay", "mixed") and self.dataset is not None
                and self.dataset.manifest.value_source == "discounted_return"):  # rollout mode trains on none of them
            LOGGER.warning("ppo: the %s rows of %s store their discounted returns as values (a policy without a "
                           "critic captured them), so their advantages are 0: they train the value head, not the "
                           "policy", self.mode, self.dataset.directory)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=self.ppo.learning_rate, eps=1e-5)
        if strategy.continue_optimizer and strategy.init_checkpoint is not None:
            restore_optimizer(strategy.init_checkpoint, self.optimizer, self.device.device)
        self.out_dir = Path(strategy.out) if strategy.out is not None else context.artifacts / "ppo"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.device.amp)
        self.steps = ProgressSteps(self.out_dir, self.config, self.scaler)
        arrays = self._resume() if strategy.resume else {}
        self.multiplier, self.selector = self._constraint(arrays)
        self.cost_critic, self.cost_loss = None, float("nan")
        if self.multiplier is not None and self.ppo.cost_critic:
            self.cost_critic = CostCriticTrainer(self.world.spec, self.config.model, self.ppo, self.device,
                                                 self.ranks, self.seed + 1)
            if any(name.startswith(COST_CRITIC) for name in arrays):
                self.cost_critic.restore(arrays)
        self._open_streams()
        self.entropies = [arrays["entropies"]] if "entropies" in arrays else []
        self.buffer = RolloutBuffer(self.ppo.rollout_ticks)
        self.start = time.perf_counter() - self.state.seconds
        self.progress = Progress(self.updates, f"ppo cycle {strategy.cycle}", context.progress)
        self.progress.skip(self.state.next)

    # ---- set-up
    def _open_datasets(self) -> tuple[ReplayDataset | None, ReplayDataset | None]:
        strategy = self.strategy
        dataset = ReplayDataset.open(strategy.replay_dataset) if strategy.replay_dataset is not None else None
        anchor = (ReplayDataset.open(strategy.anchor_dataset) if strategy.anchor_dataset is not None
                  else dataset) if strategy.bc_weight > 0 else None
        if dataset is None and self.mode != "rollout":
            raise TrainingError(f"ppo: data_mode={self.mode} needs a replay dataset")
        if anchor is None and strategy.bc_weight > 0:
            raise TrainingError(f"ppo: bc_weight={strategy.bc_weight} needs expert rows (anchor_dataset)")
        return dataset, anchor

    def _open_world(self) -> TownWorld:
        """This cycle's own towns (a slice of seeds.ppo), each rank its own block of them."""
        config, ppo, ranks = self.config, self.ppo, self.ranks
        self.first_town = config.seeds.ppo.start + PPO_CYCLE_SEEDS * self.strategy.cycle
        episode_ticks = min(config.world.episode_ticks, ppo.episode_ticks or config.evaluation.ticks)
        needed = ppo.rollout_towns * ranks.world * (2 + self.updates * ppo.rollout_ticks // episode_ticks)
        if needed > PPO_CYCLE_SEEDS:
            raise TrainingError(f"ppo: {ranks.world} ranks need {needed} town seeds per cycle, more than its "
                                f"{PPO_CYCLE_SEEDS}; use fewer ranks, rollout_towns or updates")
        world = TownWorld(config, ppo.rollout_towns)
        world.reset(town_seeds(self.first_town + ranks.rank * ppo.rollout_towns, ppo.rollout_towns))
        return world

    def next_seed(self):
        """Episode e of rank r takes block e × world + r of this cycle's slice."""
        self.state.episode += 1
        block = self.state.episode * self.ranks.world + self.ranks.rank
        return town_seeds(self.first_town + block * self.ppo.rollout_towns, self.ppo.rollout_towns)

    def _resume(self) -> dict[str, np.ndarray]:
        """The killed run's loop state, weights, moments and RNG; its world mid-episode."""
        if self.ranks.active:
            raise TrainingError("ppo: a data-parallel run keeps no progress checkpoints; start it again")
        self.state, arrays = self.steps.restore(self.model, self.optimizer, self.device.device, self.world)
        self.log.truncate("update", self.state.next)
        return arrays

    def _constraint(self, arrays: dict[str, np.ndarray]):
        """The conflict multiplier and the snapshot choice, both based on the expert's validation scores."""
        torch = require_torch()
        ppo, state = self.ppo, self.state
        priced = ppo.conflict_budget > 0 and self.mode != "replay"
        # What λ follows: the validation towns' conflicts (every validate_every updates: hundreds of agent-days
        # of the policy as evaluation plays it), or the rollouts' (every update, but a few conflicts a day).
        self.price_on_validation = priced and ppo.lagrange_measure == "validation" and ppo.validate_every > 0
        if not (priced or ppo.validate_every):
            return None, None
        if state.expert is None:
            state.expert = validation_scores(self.config, ScriptedExpert(self.config.expert).act)
            self.log.write({"update": -1, "cycle": self.strategy.cycle, "validation": "expert", **state.expert})
        multiplier = None
        if priced:
            multiplier = ConflictMultiplier(
                budget=max(ppo.conflict_budget * state.expert["queue_conflict_events_per_agent_day"], 1e-3),
                ki=ppo.lagrange_lr, kp=ppo.lagrange_kp, kd=ppo.lagrange_kd, integral=ppo.lagrange_init,
                window=1 if self.price_on_validation else max(1, -(-self.config.world.day_ticks // ppo.rollout_ticks)))
            if state.lagrange is not None:
                multiplier.restore(state.lagrange)
        selector = SnapshotSelector(state.expert, ppo.select_conflict_ratio, ppo.select_wage_ratio)
        if state.selected is not None:
            selector.best, selector.best_update = state.selected["scores"], state.selected["update"]
            selector.start_conflicts = state.selected.get("start_conflicts")
            selector.best_state = {name[len("best."):]: torch.from_numpy(value).to(self.device.device)
                                   for name, value in arrays.items() if name.startswith("best.")}
        elif ppo.select_keep_start and ppo.validate_every and state.next == 0:
            self._offer_start(selector, multiplier)
        return multiplier, selector

    def _offer_start(self, selector: SnapshotSelector, multiplier: ConflictMultiplier | None) -> None:
        """The starting weights (the champion's or the BC clone's) compete as update 0: a stage that finds no
        snapshot better under the constraints returns its start, never a worse snapshot. Their conflicts set
        the first price when λ follows the validation towns."""
        scores = broadcast(validation_scores(self.config, evaluation_policy(self.model, self.device, self.config).actions),
                           self.ranks)
        selector.offer(0, scores, self.model, start=True)
        if self.price_on_validation:
            multiplier.update(scores["queue_conflict_events_per_agent_day"], 1.0)
        self.log.write({"update": -1, "cycle": self.strategy.cycle, "validation": "policy", "start": True,
                        "chosen": True, **scores, **self._price(multiplier)})
        LOGGER.info("ppo cycle %d validation of its start: reward %.2f, conflicts %.3f, wages %.2f per agent-day "
                    "(kept unless a snapshot does better)", self.strategy.cycle, scores["reward_per_agent_day"],
                    scores["queue_conflict_events_per_agent_day"], scores["wages_per_agent_day"])

    def _price(self, multiplier: ConflictMultiplier | None) -> dict[str, float]:
        """λ and its budget for a validation log entry, when λ follows the validation towns."""
        if multiplier is None or not self.price_on_validation:
            return {}
        return {"conflict_budget": multiplier.budget, "lagrange_multiplier": multiplier.value}

    def _open_streams(self) -> None:
        """Stored rows (replay, mixed) and the anchor's expert batches, where a resumed run left them."""
        ppo, state = self.ppo, self.state
        self.replay_stream = (replay_rows(self.dataset, ppo.gamma, ppo.gae_lambda, self.seed)
                              if self.dataset is not None else None)
        self.pending: list = []
        target, share = ppo.rollout_ticks * self.agents, ppo.mixed_replay_fraction
        self.replay_count = (target if self.mode == "replay" else
                             int(round(target * share / max(1 - share, 1e-6))) if self.mode == "mixed" else 0)
        for _ in range(state.next if self.mode in ("replay", "mixed") and self.replay_count > 0 else 0):
            take_rows(self.replay_stream, self.replay_count, self.pending)
        self.anchor_stream = None
        if self.anchor is not None:
            self.anchor_stream = (batch for epoch in range(10**9)
                                  for batch in self.anchor.iter_batches(256, seed=self.seed + epoch))
            for _ in range(state.anchor_batches):
                next(self.anchor_stream)

    # ---- collect
    def collect_rollouts(self, update: int) -> Collected:
        """This update's rows: a rollout of the current network (advantages priced by λ), stored rows, or both."""
        ppo, state = self.ppo, self.state
        parts, rollout, rate, cost_rows = [], None, None, None
        if self.mode in ("rollout", "mixed"):
            rollout = collect_rollout(self.model, self.world, ppo.rollout_ticks, self.device, self.next_seed,
                                      ppo.episode_ticks or self.config.evaluation.ticks, self.buffer)
            penalty = self.multiplier.value if self.multiplier is not None else 0.0
            cost_values = None
            if self.cost_critic is not None:
                if update == 0:
                    self.cost_critic.warm_up(rollout)
                cost_values = self.cost_critic.values(rollout)
            parts.append(rollout_rows(rollout, penalty, ppo, cost_values))
            if cost_values is not None:
                returns = parts[-1].pop("cost_returns")
                cost_rows = {key: parts[-1][key] for key in ("features", "map") if key in parts[-1]}
                cost_rows["cost_returns"], cost_rows["cost_values"] = returns, cost_values[0].reshape(-1)
            state.counters["steps"] += rollout.ticks
            state.counters["rollout_seconds"] += rollout.seconds
            self.entropies.append(rollout.arrays["entropy"].reshape(-1).copy())  # the buffer is overwritten next
            for key in TELEMETRY_KEYS:
                state.telemetry[key] += rollout.telemetry[key]
            if self.multiplier is not None:  # priced on every rank's towns, so every rank holds the same price
                state.multipliers.append(penalty)
                conflicts, agent_days = all_sum([rollout.telemetry["queue_conflict_events"],
                                                 self.agents * rollout.ticks / self.config.world.day_ticks], self.ranks)
                rate = (conflicts / agent_days if self.price_on_validation
                        else self.multiplier.update(conflicts, agent_days))
        if self.mode in ("replay", "mixed") and self.replay_count > 0:
            parts.append(take_rows(self.replay_stream, self.replay_count, self.pending))
        keys = set.intersection(*(set(part) for part in parts))
        data = {key: np.concatenate([part[key] for part in parts]) for key in keys}
        state.counters["transitions"] += len(data["actions"])
        state.reward_adv.append(np.corrcoef(data["rewards"], data["advantages"])[0, 1] if data["rewards"].std() > 0
                                else 0.0)
        return Collected(data, rollout, cost_rows, rate)

    # ---- train
    def train(self, collected: Collected, update: int) -> None:
        """`update_epochs` passes of shuffled mini-batches over this update's rows (SB3's `train`); then the
        cost critic's own passes over the rollout's cost λ-returns."""
        data = collected.data
        self.model.train()
        rows = len(data["actions"])
        if rows < 2 * self.ppo.minibatches:  # advantages are normalised per mini-batch: one row has no spread
            raise TrainingError(f"ppo: update {update} has {rows} rows, too few for ppo.minibatches="
                                f"{self.ppo.minibatches} mini-batches of at least 2 rows; lower ppo.minibatches or "
                                "collect more rows a rollout (ppo.rollout_towns, ppo.rollout_ticks)")
        minibatch = rows // self.ppo.minibatches
        for epoch in range(self.ppo.update_epochs):
            order = np.random.default_rng(self.seed + 31 * update + epoch).permutation(rows)
            for begin in range(0, rows - minibatch + 1, minibatch):
                batch = to_tensors({key: data[key][order[begin:begin + minibatch]] for key in data}, self.device,
                                   ROW_KEYS)
                self._gradient_step(batch, update)
        if self.cost_critic is not None and collected.cost_rows is not None:
            rows = {key: value for key, value in collected.cost_rows.items() if key != "cost_values"}
            self.cost_loss = self.cost_critic.fit(rows, salt=(1, update))

    def _gradient_step(self, batch: dict, update: int) -> None:
        """One mini-batch: PPO's loss (plus the BC anchor's), AMP-scaled backward, gradient clip, Adam."""
        torch = require_torch()
        device, stats, counters = self.device, self.state.stats, self.state.counters
        with torch.autocast(device_type=device.device.type, dtype=torch.float16, enabled=device.amp):
            out = ppo_losses(self.model, batch, self.ppo)
            loss_bc = torch.zeros((), device=device.device)
            if self.anchor_stream is not None:
                loss_bc = anchor_loss(self.model, to_tensors(next(self.anchor_stream), device,
                                                             (*OBS_KEYS, "expert_actions")))
                self.state.anchor_batches += 1
            objective = out["loss"] + self.strategy.bc_weight * loss_bc
        if not torch.isfinite(objective):
            raise TrainingError(f"ppo: non-finite loss at update {update}; no checkpoint was written")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(objective).backward()
        average_gradients(self.model, self.ranks)
        self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.ppo.max_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        for key, value in (("loss_policy", out["pg_loss"]), ("loss_value", out["v_loss"]),
                           ("loss_entropy", out["entropy_loss"]), ("loss_total", out["loss"]), ("loss_bc", loss_bc),
                           ("clip_fraction", out["clipfrac"]), ("kl", out["approx_kl"]), ("grad_norm", grad_norm),
                           ("adv_std", out["adv_std"])):
            stats[key].append(float(value.detach()))
        counters["zero_std"] += int(out["zero_std"])
        counters["clip_triggered"] += int(float(out["clipfrac"]) > 0)

    # ---- after each update: log, validate, save progress
    def after_update(self, update: int, collected: Collected) -> None:
        self._log_update(update, collected)
        if self.ppo.validate_every and ((update + 1) % self.ppo.validate_every == 0 or update + 1 == self.updates):
            self._validate(update)
        state, data = self.state, collected.data
        state.next, state.world_tick = update + 1, self.world.state.tick
        state.seconds = time.perf_counter() - self.start
        state.adv = [float(data["advantages"].mean()), float(data["advantages"].std())]
        # A data-parallel run keeps no progress checkpoints: each rank's towns are its own world state.
        if ((update + 1) % self.config.runtime.progress_every_updates == 0 and update + 1 < self.updates
                and not self.ranks.active):
            self.steps.save(update + 1, self.model, self.optimizer, state, self.world, self.entropies,
                            self.multiplier, self.selector, self.cost_critic)

    def _log_update(self, update: int, collected: Collected) -> None:
        data, rollout, rate, multiplier = collected.data, collected.rollout, collected.conflict_rate, self.multiplier
        last = _recent(self.state.stats, self.ppo)
        entry = {"update": update, "cycle": self.strategy.cycle, "mode": self.mode, "rows": len(data["actions"]),
                 **last, "explained_variance": explained_variance(data["value_preds"], data["returns"])}
        if rollout is not None:  # what the rollouts earned and cost, per agent-day (the trade the price steers)
            rollout_days = self.agents * rollout.ticks / self.config.world.day_ticks
            entry.update(rollout_reward_per_agent_day=float(rollout.arrays["rewards"].sum()) / rollout_days)
        if multiplier is not None:
            entry.update(conflict_rate=rate, conflict_budget=multiplier.budget, lagrange_multiplier=multiplier.value)
        if collected.cost_rows is not None:
            entry.update(loss_cost_value=self.cost_loss, cost_explained_variance=explained_variance(
                collected.cost_rows["cost_values"], collected.cost_rows["cost_returns"]))
        self.log.write(entry)
        self.progress.update(1, phase=self.mode, loss=last["loss_total"], kl=last["kl"], clip=last["clip_fraction"],
                             reward=entry.get("rollout_reward_per_agent_day"),
                             steps_per_s=rollout.ticks * self.agents / rollout.seconds if rollout is not None else None,
                             **({"conflicts": rate, "budget": multiplier.budget, "lam": multiplier.value}
                                if multiplier is not None else {}))

    def _validate(self, update: int) -> None:
        """Score the policy on the validation towns and offer it to the snapshot choice (rank 0's scores: one
        choice on every rank)."""
        scores = broadcast(validation_scores(self.config, evaluation_policy(self.model, self.device, self.config).actions),
                           self.ranks)
        chosen = self.selector.offer(update + 1, scores, self.model)
        if self.price_on_validation:
            self.multiplier.update(scores["queue_conflict_events_per_agent_day"], 1.0)
        self.log.write({"update": update, "cycle": self.strategy.cycle, "validation": "policy", "chosen": chosen,
                        **scores, **self._price(self.multiplier)})
        LOGGER.info("ppo cycle %d validation after update %d: reward %.2f, conflicts %.3f, wages %.2f per agent-day%s",
                    self.strategy.cycle, update + 1, scores["reward_per_agent_day"],
                    scores["queue_conflict_events_per_agent_day"], scores["wages_per_agent_day"],
                    " (the best so far: kept)" if chosen else "")

    # ---- finish
    def finish(self) -> PPOTrainingResult:
        """The chosen snapshot becomes the stage's result: scored on the guardrail towns (per town too, so the
        champion is compared on the same towns, paired), written by one rank, recorded."""
        selected = self.updates  # the update whose weights the stage returns
        if self.selector is not None and self.selector.best is not None:
            self.model.load_state_dict(self.selector.best_state)
            selected = self.selector.best_update
        duration = time.perf_counter() - self.start
        evaluation, towns = {}, {}
        if self.strategy.evaluate_towns:
            evaluation = evaluate(self.config, evaluation_policy(self.model, self.device, self.config).actions,
                                  per_town=towns)
        last = _recent(self.state.stats, self.ppo)
        metrics = {**{f"eval_{k}": v for k, v in evaluation.items()}, "loss_total": last["loss_total"],
                   "kl": last["kl"], "clip_fraction": last["clip_fraction"]}
        source = self.dataset or self.anchor
        verify_same_weights(self.model, self.ranks)
        if self.ranks.main:  # one writer; the other ranks hold the very same weights
            save_checkpoint(self.out_dir, self.model, "ppo", self.config.model_dump(mode="json"),
                            source.identity if source is not None else None, self.parent, metrics, self.optimizer,
                            progress={"updates": self.updates, "cycle": self.strategy.cycle,
                                      "selected_update": selected})
            self.steps.finish()
        barrier(self.ranks)
        return self._result(selected, duration, evaluation, towns, source)

    def _result(self, selected: int, duration: float, evaluation: dict, towns: dict,
                source: ReplayDataset | None) -> PPOTrainingResult:
        state, counters, telemetry, stats = self.state, self.state.counters, self.state.telemetry, self.state.stats
        multiplier, selector, ppo = self.multiplier, self.selector, self.ppo
        record = read_record(self.out_dir)
        rate, transitions = all_sum([counters["steps"] * self.agents / counters["rollout_seconds"]
                                     if counters["rollout_seconds"] else 0.0, counters["transitions"]], self.ranks)
        last = _recent(stats, ppo)
        entropy_all = np.concatenate(self.entropies) if self.entropies else np.zeros(1)
        reward_adv = state.reward_adv
        return PPOTrainingResult(
            epoch=ppo.update_epochs, updates=self.updates, transitions=int(transitions), steps=counters["steps"],
            loss_policy=last["loss_policy"], loss_value=last["loss_value"], loss_entropy=last["loss_entropy"],
            loss_total=last["loss_total"], loss_bc=last["loss_bc"],
            clip_fraction=float(np.mean(stats["clip_fraction"])),
            clip_fraction_max=float(np.max(stats["clip_fraction"])),
            adv_mean=state.adv[0], adv_std=state.adv[1],
            adv_min_std=float(np.min(stats["adv_std"])), adv_zero_std_batches=counters["zero_std"],
            clip_triggered_minibatches=counters["clip_triggered"],
            grad_norm=float(np.mean(stats["grad_norm"])), grad_norm_max=float(np.max(stats["grad_norm"])),
            kl_divergence=float(np.mean(stats["kl"])), kl_divergence_max=float(np.max(stats["kl"])),
            lr=ppo.learning_rate, batch_entropy_mean=float(entropy_all.mean()),
            batch_entropy_std=float(entropy_all.std()),
            reward_advantage_corr=float(np.nan_to_num(np.nanmean(reward_adv)) if np.isfinite(reward_adv).any()
                                        else 0.0),
            data_mode=self.mode, cycle_id=self.strategy.cycle, rollout_ticks=ppo.rollout_ticks,
            epoch_duration_sec=duration / self.updates,
            env_steps_per_sec=float(rate),  # every rank's towns
            device=self.device.name,
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
            lagrange_multiplier_mean=float(np.mean(state.multipliers)) if state.multipliers else None,
            selected_update=selected,
            evaluation_town_rewards=[float(value) for value in towns.get("reward_per_agent_day", [])],
            validation=dict(selector.best) if selector is not None and selector.best is not None else {},
            validation_expert=dict(selector.expert) if selector is not None else {},
            baseline_dataset_metrics=_dataset_metrics(source), evaluation=evaluation,
            checkpoint_id=record.checkpoint_id, checkpoint_path=str(self.out_dir), parent_checkpoint_id=self.parent,
        )


# ----------------------------------------------------------------------------------------- the strategy
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
    phase: ClassVar[str] = "ppo"  # the anneal's half it runs in (training/registry.py)

    @classmethod
    def for_stage(cls, stage: "AnnealStage", inputs: "StageInputs") -> "PPOStrategy":
        """An anneal stage's PPO: from the checkpoint carried forward, anchored on the expert's rows."""
        return cls(init_checkpoint=inputs.init_checkpoint, updates=stage.epochs, replay_dataset=inputs.replay_dataset,
                   anchor_dataset=inputs.dataset, bc_weight=stage.bc_weight, cycle=stage.cycle, out=inputs.out,
                   name=inputs.name)

    def run(self, context: TrainingContext) -> PPOTrainingResult:
        run = PPORun(self, context)
        for update in range(run.state.next, run.updates):
            collected = run.collect_rollouts(update)  # collect, with returns and advantages
            run.train(collected, update)
            run.after_update(update, collected)
        return run.finish()


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
