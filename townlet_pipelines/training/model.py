"""The policy network: a linear encoder of the egocentric map (optionally behind small conv layers), an MLP
over the features, two heads.

Built from an `ObservationSpec`, which it keeps: a checkpoint refuses data of another shape. Masked
actions get no probability: their logits are set to the dtype's minimum before the softmax.
"""

from __future__ import annotations

import numpy as np

from townlet_pipelines.config import ModelConfig
from townlet_pipelines.training.inputs import MAP_SCALE
from townlet_pipelines.training.torch_support import require_torch
from townlet_pipelines.world.actions import (
    ACTION_NAMES, COOK, EAT, OBJECT_TYPES, OPTION_OBJECT_TYPE, SHOWER, SLEEP,
)
from townlet_pipelines.world.observations import ObservationSpec

torch = require_torch()
nn = torch.nn

SHIELDED_OPTIONS = ((EAT, "hunger"), (COOK, "hunger"), (SHOWER, "hygiene"), (SLEEP, "energy"))  # option, its need


def _layer(layer, std: float = float(np.sqrt(2)), bias: float = 0.0):
    nn.init.orthogonal_(layer.weight, std)
    nn.init.constant_(layer.bias, bias)
    return layer


class PolicyNetwork(nn.Module):
    def __init__(self, spec: ObservationSpec, config: ModelConfig = ModelConfig()) -> None:
        super().__init__()
        self.spec = spec
        self.model_config = config
        hidden = config.hidden
        self.encoder = None
        trunk_in = hidden
        if spec.map_shape is not None:
            channels, window, _ = spec.map_shape
            layers, size, previous = [], window, channels
            for index, out in enumerate(config.conv_channels):
                stride = 1 if index == 0 else 2
                layers += [_layer(nn.Conv2d(previous, out, 3, stride=stride, padding=1)), nn.ReLU()]
                size = (size + 2 - 3) // stride + 1
                previous = out
            self.encoder = nn.Sequential(*layers, nn.Flatten(), _layer(nn.Linear(previous * size * size, hidden)),
                                         nn.ReLU())
            trunk_in = 2 * hidden
        self.features = nn.Sequential(_layer(nn.Linear(spec.feature_dim, hidden)), nn.ReLU())
        self.trunk = nn.Sequential(_layer(nn.Linear(trunk_in, hidden)), nn.ReLU())
        self.policy_head = _layer(nn.Linear(hidden, len(spec.action_names)), std=0.01)
        self.value_head = _layer(nn.Linear(hidden, 1), std=1.0)
        self._shield = None
        names = spec.feature_names
        if config.conflict_shield and all(f"{kind}_free" in names for kind in OBJECT_TYPES):
            options = [(action, need) for action, need in SHIELDED_OPTIONS if f"option_{ACTION_NAMES[action]}" in names]
            # Index tensors made once (plain attributes, not buffers: the checkpoint format is unchanged); a Python
            # list as an index is converted to a tensor on every call, most of the shield's time on small batches.
            self._shield = tuple(torch.tensor(columns, dtype=torch.long) for columns in (
                [action for action, _ in options],
                [names.index(f"option_{ACTION_NAMES[action]}") for action, _ in options],
                [names.index(need) for _, need in options],
                [names.index(f"{OBJECT_TYPES[OPTION_OBJECT_TYPE[action]]}_free") for action, _ in options],
            ))

    def shield_mask(self, features, action_mask):
        """The action mask with the conflict shield applied (see `ModelConfig.conflict_shield`).

        Read from the observation itself (needs, the active option, the share of free objects of each type),
        so acting, PPO's ratios and evaluation all see the same mask; BC's loss sees the unshielded one,
        since the expert's label may be a queue the shield would have avoided.
        """
        if self._shield is None:
            return action_mask
        if self._shield[0].device != features.device:  # once per device (the model moved to a GPU)
            self._shield = tuple(columns.to(features.device) for columns in self._shield)
        actions, active, needs, free = self._shield
        starting = features.index_select(1, active) < 0.5  # (R, S): this option is not already in progress
        blocked = (starting & (features.index_select(1, free) <= 0.0)
                   & (features.index_select(1, needs) > self.model_config.shield_floor))
        shielded = action_mask.clone()
        shielded[:, actions] &= ~blocked
        return shielded

    def forward(self, features, action_mask, map=None, shield: bool = True):
        """Masked logits (float32) and values for a batch; `shield=False` leaves the conflict shield out. `map`
        is the world's uint8 cells, or already `scaled_map` (float)."""
        if shield:
            action_mask = self.shield_mask(features, action_mask)
        parts = [self.features(features)]
        if self.encoder is not None:
            parts.insert(0, self.encoder(map.float() / MAP_SCALE if map.dtype == torch.uint8 else map))
        hidden = self.trunk(torch.cat(parts, dim=1))
        logits = self.policy_head(hidden).float()
        logits = logits.masked_fill(~action_mask, torch.finfo(logits.dtype).min)
        return logits, self.value_head(hidden).float().squeeze(-1)

    def distribution(self, features, action_mask, map=None):
        """The masked policy and the values. The distribution skips torch's argument checks (a scan of every
        logit per call): the logits are finite by construction, masked ones the dtype's minimum."""
        logits, value = self(features, action_mask, map)
        return torch.distributions.Categorical(logits=logits, validate_args=False), value


class CostCritic(nn.Module):
    """The conflicts' critic of constrained PPO (OmniSafe's cost value head, as a network of its own): V_c(obs),
    the expected discounted conflict cost ahead. It sees what the policy sees (the map through a linear
    encoder, the features through an MLP) and lives only while a PPO stage trains: it is not part of the
    policy's checkpoint, so a checkpoint plays and loads as before."""

    def __init__(self, spec: ObservationSpec, config: ModelConfig = ModelConfig()) -> None:
        super().__init__()
        hidden = config.hidden
        self.encoder = None
        trunk_in = hidden
        if spec.map_shape is not None:
            channels, window, _ = spec.map_shape
            self.encoder = nn.Sequential(nn.Flatten(), _layer(nn.Linear(channels * window * window, hidden)), nn.ReLU())
            trunk_in = 2 * hidden
        self.features = nn.Sequential(_layer(nn.Linear(spec.feature_dim, hidden)), nn.ReLU())
        self.trunk = nn.Sequential(_layer(nn.Linear(trunk_in, hidden)), nn.ReLU(), _layer(nn.Linear(hidden, 1), std=1.0))

    def forward(self, features, map=None):
        parts = [self.features(features)]
        if self.encoder is not None:
            parts.insert(0, self.encoder(map.float() / MAP_SCALE))
        return self.trunk(torch.cat(parts, dim=1)).float().squeeze(-1)
