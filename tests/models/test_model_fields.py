"""Model sizes are per model, with their defaults written out: no field means one thing
for the ResNet and another for the Transformer."""

import pytest

from sgdlab import models
from sgdlab.errors import ConfigError


def test_each_model_reads_its_own_sizes_with_explicit_defaults():
  cfg = models.default_config()
  cfg.name = "resnet"
  resnet = models.build(cfg, 10)
  assert (resnet.depth, resnet.width) == (8, 16)
  cfg.name = "transformer"
  transformer = models.build(cfg, 256, seq_len=8)
  assert (transformer.depth, transformer.width) == (2, 128)
  cfg.transformer_depth, cfg.resnet_depth = 1, 20  # one model's size leaves the other's
  assert models.build(cfg, 256, seq_len=8).depth == 1
  cfg.name = "resnet"
  assert models.build(cfg, 10).depth == 20


@pytest.mark.parametrize("field,hint", [("depth", "resnet_depth or transformer_depth"),
                                        ("width", "resnet_width or transformer_width"),
                                        ("widht", "a typo")])
def test_a_field_no_model_reads_is_refused(field, hint):
  cfg = models.default_config()
  cfg.name = "resnet"
  cfg[field] = 8
  with pytest.raises(ConfigError, match=hint) as e:
    models.validate(cfg)
  assert e.value.field == f"model.{field}"


@pytest.mark.parametrize("name,field,value", [("resnet", "resnet_depth", 10),
                                              ("resnet", "resnet_width", 0),
                                              ("transformer", "transformer_depth", 0),
                                              ("transformer", "heads", 3)])
def test_invalid_sizes_name_their_field(name, field, value):
  cfg = models.default_config()
  cfg.name = name
  cfg[field] = value
  with pytest.raises(ConfigError) as e:
    models.validate(cfg)
  assert e.value.field == f"model.{field}"
