"""The estimator on the papers' workloads: ResNet's batch norm, the Transformer's
attention and embedding, as rows of the layer table of a search that finds a k."""

from __future__ import annotations

import conftest
from memory_support import GiB, budget
from sgdlab.memory import search


def test_a_resnet_search_has_a_batch_norm_row_after_every_conv(mesh1):
  config = conftest.tiny_config(**{
      "model.name": "resnet", "model.resnet_width": 4, "data.synthetic_input_shape": (8, 8, 3),
      "model.conv_impl": "xla", "drop_remainder": True, "batch_size": "auto",
      "dtype": "float32"})
  report = search.find_batch_size(config, budget(GiB), mesh=mesh1, exact=False,
                                  check_trainer=False)
  assert report.largest_power_of_two >= 1
  kinds = [l.kind for l in report.layers]
  assert kinds.count("conv") == kinds.count("batchnorm") == 9  # stem, 3 x 2, 2 shortcuts
  assert [kinds[i + 1] for i, k in enumerate(kinds) if k == "conv"] == ["batchnorm"] * 9
  by_name = {l.name: l for l in report.layers}
  bn = by_name["stage1_block0/bn0"]
  assert bn.params == 2 * 8 and bn.output_shape == (4, 4, 8)  # scale and bias; width 8
  assert bn.activation_bytes == 4 * 4 * 4 * 8


def test_a_transformer_search_has_embedding_and_attention_rows(mesh1, tmp_path):
  path = tmp_path / "corpus.txt"
  path.write_text("the quick brown fox jumps over the lazy dog. " * 40, encoding="utf-8")
  config = conftest.tiny_config(**{
      "data.name": "text", "data.path": str(path), "data.seq_len": 16,
      "model.name": "transformer", "model.transformer_width": 16, "model.transformer_depth": 2,
      "model.heads": 2,
      "batch_size": "auto", "dtype": "float32"})
  report = search.find_batch_size(config, budget(GiB), mesh=mesh1, exact=False,
                                  check_trainer=False)
  assert report.largest_power_of_two >= 1
  kinds = [l.kind for l in report.layers]
  assert kinds.count("attention") == 2 and kinds.count("layernorm") == 5
  assert "embedding" in kinds
  attention = next(l for l in report.layers if l.kind == "attention")
  # Its output and q, k, v (4 x L x width floats), and the [heads, L, L] probabilities.
  assert attention.activation_bytes == 4 * 4 * 16 * 16 + 4 * 2 * 16 * 16
  assert attention.params == 4 * (16 * 16 + 16)  # q, k, v and output projections
