r"""Steps to a target validation loss versus k for a byte-level Transformer language
model, with McCandlish et al.'s fit and B_simple beside it.

  python experiments/lm_steps_to_target.py --workdir=runs/lm --config.data.path=corpus.txt

Any UTF-8 file (bytes are the tokens). Without data.path the corpus is Python's own
documentation (`pydoc_data.topics`, in every CPython install; about 0.5 MB), written
once to python-docs.txt in the cache folder (data.cache_dir, default ~/.cache/sgdlab).
A 2-block Transformer of width 64 (4 heads, tied embedding) at context 64, heavy-ball
momentum 0.9 at a constant lr as in Shallue et al. (2018), the lr tuned per k on a
sqrt(2) grid, 10% of the training bytes held out: steps until the validation loss
first falls to 2.6 bits per byte, the mean over seeds 0 and 1, the test figure at that
step reported. k = 8, 32, 128 windows; 47 minutes on 2 CPU cores. The README's
table comes from this default. Larger: --config.model.transformer_width=256
--config.model.transformer_depth=6 --config.data.seq_len=256, a GPU, and a bigger corpus.

What it shows: the same three regimes as for images (perfect scaling, diminishing
returns, none), here for next-byte prediction, and B_simple measured online in an
ordinary run (k = 32, the tuned lr) against the fitted B_noise, both in
steps_to_target.png. k counts windows of seq_len tokens. There are no exact
per-example checkpoints: the online estimate is the one measured.

  --config=experiments/lm_steps_to_target.py:small   a tiny model on a corpus the tests
      write (seconds; set --config.data.path)

Writes results.json, table.md, steps_to_target.png, noise_scale.png to the workdir
(sgdlab.studies.steps_to_target does the work).
"""

from __future__ import annotations

import os

import ml_collections

from sgdlab import cli
from sgdlab.studies import corpus, steps_config, steps_to_target


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  """variant "": the module docstring's run; "small": a tiny model on a corpus the tests
  write (seconds)."""
  c = steps_config.base_config()
  c.model.name, c.model.heads = "transformer", 4
  c.model.transformer_width, c.model.transformer_depth = 64, 2
  c.optimizer.name, c.optimizer.momentum = "momentum", 0.9
  c.data.name, c.data.seq_len, c.data.validation_fraction = "text", 64, 0.1
  c.data.test_fraction = 0.1
  c.learning_rate = 0.1
  c.eval_batch_size = 256
  s = c.steps_to_target
  s.metric, s.target, s.seeds = "validation_bits_per_byte", 2.6, (0, 1)
  s.batch_sizes, s.max_lrs, s.max_steps, s.max_examples = (8, 32, 128), 5, 20_000, 2_000_000
  s.noise_batch_size, s.noise_checkpoints, s.noise_length = 32, 0, 2.0
  c.noise_groups = 0  # two halves, as the README's figures were measured
  s.noise_probe_batches = 8  # B_simple at each epoch's end from 8 batches (256 windows)
  if variant == "small":
    c.model.transformer_width, c.model.transformer_depth, c.model.heads = 16, 1, 2
    c.data.seq_len = 16
    s.target, s.batch_sizes, s.max_lrs, s.max_steps = 6.0, (4, 16), 2, 100
    s.noise_batch_size, s.noise_length, s.noise_probe_batches = 8, 1.0, 2
  return c


def main(argv: list[str]) -> None:
  del argv
  config = cli.config()
  if not config.data.path:  # Python's documentation, written once to the cache folder
    config.data.path = corpus.cached_python_docs(config.data.cache_dir)
  cli.call(lambda: steps_to_target.validate(config))
  steps_to_target.study(config, cli.workdir())


if __name__ == "__main__":
  cli.define_config_flags(os.path.abspath(__file__))
  cli.main(main)
