"""Config fields by dotted name: set, flatten, serialize; and which fields change results.

The one place that sets a field by name (sweeps, `train_network_decay`, tests) and the
one list of fields a result does not depend on (point ids, stored-config checks).
"""

from __future__ import annotations

from typing import Any

import ml_collections

from sgdlab.config import batch_schedule
from sgdlab.errors import ConfigError

# Fields that only label a run; population members may differ in these and MEMBER_FIELDS.
LABEL_FIELDS = ("name", "sweep")
# The fields population members may differ in: numbers the train step reads from its state.
MEMBER_FIELDS = ("learning_rate", "lr_decay", "seed")
# Fields that hold an int or "auto".
AUTO_FIELDS = ("batch_size", "microbatch_size")
# Fields that do not change a run's results: point ids and stored configs ignore them.
NON_RESULT_FIELDS = LABEL_FIELDS + ("checkpoint_every_epochs", "population", "steps_per_call")


def set_field(config: ml_collections.ConfigDict, path: str, value: Any, *,
              where: str | None = None) -> None:
  """Set a dotted field, refusing names the config does not have (typos lose runs).

  where: the field the ConfigError names (e.g. "sweep field lr"); default the path.
  """
  *parents, leaf = path.split(".")
  node = config
  for i, p in enumerate(parents):
    if not isinstance(node, ml_collections.ConfigDict) or p not in node:
      raise ConfigError(where or path, value,
                        f"a known field; '{'.'.join(parents[:i + 1])}' does not exist")
    node = node[p]
  if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
    valid = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
    raise ConfigError(where or path, value, f"a known field (known here: {', '.join(valid)})")
  value = tuple(value) if isinstance(value, list) else value
  if leaf in AUTO_FIELDS:
    # An int or "auto": a config whose references were resolved (copy_and_resolve_
    # references) has lost the field's object type, so the type is not checked.
    with node.ignore_type():
      node[leaf] = value
  else:
    node[leaf] = value


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
  """A nested dict as {"dotted.name": leaf}: how fields are compared and overridden."""
  out = {}
  for key, value in d.items():
    if isinstance(value, dict):
      out.update(flatten(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def to_dict(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """JSON-ready plain dict."""
  return config.to_dict()


def from_dict(d: dict[str, Any]) -> ml_collections.ConfigDict:
  """Inverse of to_dict, merged over the defaults so files from older versions load."""
  from sgdlab.config.defaults import default_config  # pylint: disable=g-import-not-at-top
  config = default_config()
  _merge(config, d)
  return config


def _merge(target: ml_collections.ConfigDict, d: dict[str, Any]) -> None:
  for key, value in d.items():
    if isinstance(value, dict) and isinstance(target.get(key), ml_collections.ConfigDict):
      _merge(target[key], value)
    else:
      target[key] = tuple(value) if isinstance(value, list) else value


def result_fields(config: ml_collections.ConfigDict | dict[str, Any]) -> dict[str, Any]:
  """The flattened fields a run's results depend on."""
  d = to_dict(config) if isinstance(config, ml_collections.ConfigDict) else dict(config)
  for key in NON_RESULT_FIELDS:
    d.pop(key, None)
  return flatten(d)


def shared_fields(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """Every field a population's members must agree on, flattened to dotted names."""
  d = to_dict(config)
  for key in MEMBER_FIELDS + LABEL_FIELDS:
    d.pop(key, None)
  return flatten(d)


def check_members(configs: list[ml_collections.ConfigDict]) -> None:
  """ConfigError naming the first field a population member does not share with member 0."""
  if any(c.batch_size == "auto" for c in configs):
    raise ConfigError("batch_size", "auto", f"a fixed k in a population of {len(configs)} "
                      "members (the memory estimate is for one run)")
  first = shared_fields(configs[0])
  for i, c in enumerate(configs[1:], 1):
    mine = shared_fields(c)
    for key in sorted(set(first) | set(mine)):
      if first.get(key) != mine.get(key):
        raise ConfigError(key, mine.get(key),
                          f"{first.get(key)!r} as in member 0, since population members "
                          f"may differ only in {', '.join(MEMBER_FIELDS)} (member {i})")


def run_name(config: ml_collections.ConfigDict) -> str:
  """A short label for legends and logs: the fields a batch-size study varies."""
  if config.name:
    return config.name
  return (f"k={batch_schedule.label(config)} lr={config.learning_rate:g} "
          f"decay={config.lr_decay:g}")
