"""Training-time augmentation: CIFAR's random crop (4-pixel zero padding) and horizontal
flip on device; ImageNet's random-resized crop and flip on the host, as its JPEGs are
decoded (`"inception_crop"`, `sgdlab.data.imagenet`).

Each example's draw is a function of (the run's seed, the epoch, its index in the
dataset) alone: `draws` computes it with the epoch's batch order, as one int32 per
example that the order carries beside the index, and `apply` crops and flips the
gathered batch in the scan body before the step. So an example gets the same crop and
flip whatever the device count, the micro-batching, the pipeline (device or grain) or a
resume, and a different one every epoch. Evaluation is never augmented.

A draw d in [0, 162) means: flip if d >= 81; the crop's top-left corner in the padded
image is (row, col) = divmod(d % 81, 9). A host draw is in [0, 2^31 - 1): the seed of
that example's crop and flip.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import ml_collections

from sgdlab.data import imagenet
from sgdlab.errors import ConfigError

AUGMENTS = ("auto", "none", "crop_flip", "inception_crop")
HOST = ("inception_crop",)  # made where the images are decoded, from the order's draws
HOST_DATASETS = imagenet.NAMES  # encoded images: "auto" and HOST apply
PAD = 4
OFFSETS = 2 * PAD + 1  # crop corners per axis: 9, so 81 crops
DRAWS = 2 * OFFSETS * OFFSETS  # with or without a flip
# The draws' root: the order key folded with a number no epoch reaches, so they are
# independent of the epochs' permutations (which fold in the epoch itself).
_ROOT = 2**32 - 1


def mode(cfg: ml_collections.ConfigDict, input_shape: Sequence[int]) -> str:
  """"none" or "crop_flip" for `config.data` ("auto": crop_flip for CIFAR); ConfigError
  for an unknown name or inputs that are not [H, W, C] images bigger than the padding."""
  name = cfg.get("augment", "none")
  if name not in AUGMENTS:
    raise ConfigError("data.augment", name, f"one of {list(AUGMENTS)}")
  if name == "auto":
    name = ("crop_flip" if cfg.name in ("cifar10", "cifar100") else
            "inception_crop" if cfg.name in HOST_DATASETS else "none")
  if (name in HOST) != (cfg.name in HOST_DATASETS) and name != "none":
    raise ConfigError("data.augment", cfg.augment, f"one of {list(HOST)} or 'none' for "
                      f"data.name in {list(HOST_DATASETS)}, and not for others")
  if name == "crop_flip" and len(input_shape) != 3:
    raise ConfigError("data.augment", cfg.augment, "'none' for inputs of shape "
                      f"{tuple(input_shape)}: crop_flip wants [H, W, C] images")
  return name


def on_device(name: str) -> bool:
  """The step crops the batch (the feed carries the draws to the device)."""
  return name not in ("none", *HOST)


def draws(order_key: jax.Array, epoch: jax.Array, idx: jax.Array, host: bool = False
          ) -> jax.Array:
  """int32 draws in [0, DRAWS) (host: [0, 2^31 - 1)), shaped as idx: one per example,
  from its dataset index."""
  root = jax.random.fold_in(jax.random.fold_in(order_key, _ROOT), epoch)
  top = 2**31 - 1 if host else DRAWS
  one = lambda i: jax.random.randint(jax.random.fold_in(root, i), (), 0, top)  # noqa: E731
  return jax.vmap(one)(idx.reshape(-1)).reshape(idx.shape).astype(jnp.int32)


def crop_flip(x: jax.Array, draw: jax.Array) -> jax.Array:
  """Images [k, H, W, C] (any dtype) cropped from their zero-padded selves and flipped
  as `draw` [k] says; the same shape and dtype."""
  k, h, w, c = x.shape
  padded = jnp.pad(x, ((0, 0), (PAD, PAD), (PAD, PAD), (0, 0)))
  row, col = jnp.divmod(draw % (OFFSETS * OFFSETS), OFFSETS)
  crop = lambda image, r, s: jax.lax.dynamic_slice(image, (r, s, 0), (h, w, c))  # noqa: E731
  out = jax.vmap(crop)(padded, row, col)
  flip = (draw >= OFFSETS * OFFSETS).reshape(k, 1, 1, 1)
  return jnp.where(flip, out[:, :, ::-1], out)


def apply(batch: dict[str, jax.Array], feed_step: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """The step's batch (x, y, mask): x augmented when the feed carries draws."""
  out = {key: batch[key] for key in ("x", "y", "mask")}
  if "draw" in feed_step:
    out["x"] = crop_flip(out["x"], feed_step["draw"])
  return out
