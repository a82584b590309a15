r"""Goyal et al. (2017), "Accurate, Large Minibatch SGD": ResNet-50 at k=8192 in 90 epochs.

The recipe: momentum 0.9, lr 0.1 x k/256 (3.2 at k=8192) reached by a linear warmup
from 0.1 over 5 epochs, divided by 10 at epochs 30, 60 and 80; weight decay 1e-4 on the
weights only (no decay on batch norm's scale and offset, nor on the biases); batch norm
statistics per device share of 32 images; the last batch norm scale of every residual
block starting at zero. ImageNet from TFDS (`tfds build imagenet2012
--file_format=array_record`), random-resized crops of 224 with flips, evaluation on
the 50,000 validation images (resize 256, central 224). Goyal et al. report 23.74%
top-1 error at k=8192 (76.3% accuracy) on 256 GPUs in one hour.

On a TPU pod or GPU cluster, one process per host, every host seeing the TFDS folder:
  gcloud compute tpus tpu-vm ssh $TPU --zone=$ZONE --worker=all --command "cd sgdlab && \
    python -m sgdlab.launch --config=experiments/goyal_imagenet.py --multihost \
      --config.data.dir=$TFDS_DATA_DIR --workdir=/mnt/shared/runs/goyal"
  python -m sgdlab.launch --config=experiments/goyal_imagenet.py --submit=slurm \
    --multihost --submit_nodes=32 --submit_tasks_per_node=8 --submit_gpus_per_task=1 \
    --config.data.dir=$TFDS_DATA_DIR --workdir=$SCRATCH/runs/goyal  (or srun ... --multihost)
Seeds or k as a SLURM array of one-host runs (each worker a point, resumable):
  python -m sgdlab.launch --config=experiments/goyal_imagenet.py --submit=slurm \
    --num_workers=4 --submit_gpus_per_task=8 --config.data.dir=$TFDS_DATA_DIR \
    --workdir=$SCRATCH/runs/goyal_seeds --config.sweep.product.seed="(0,1,2,3)"
Its cost: 90 epochs of ResNet-50, an hour on 256 P100 GPUs in Goyal et al. Which
micro-batch, remat and dtype fit a device: docs/imagenet.md (`python -m sgdlab.fit`).

  --config=experiments/goyal_imagenet.py:k256   the k=256 baseline (lr 0.1, 8 devices)
  --config=experiments/goyal_imagenet.py:small   the recipe on this machine: ResNet-50 at
      width 8 on 32x32 synthetic images, k=64 (lr 0.1 x 64/16, warmed up over one
      epoch), 6 epochs (about a minute on 2 CPU cores; what the tests run)
"""

from sgdlab.config import default_config, recipes


def get_config(variant: str = ""):
  config = default_config()
  k = 256 if variant == "k256" else 8192
  recipes.imagenet_resnet(config, k)
  config.optimizer.name, config.optimizer.momentum = "momentum", 0.9
  config.optimizer.weight_decay, config.optimizer.decay_params = 1e-4, "matrices"
  config.learning_rate, config.lr_scaling, config.base_batch_size = 0.1, "linear", 256
  config.schedule.name, config.schedule.factor = "step", 0.1
  config.schedule.warmup_epochs, config.schedule.warmup_from = 5, "base"
  epochs, decays, warmup, n_train = 90, (30, 60, 80), 5, recipes.IMAGENET_TRAIN
  if variant == "small":
    config.data.name, config.data.pipeline, config.data.image_size = "synthetic", "device", 0
    config.data.synthetic_input_shape, config.data.synthetic_n_train = (32, 32, 3), 1024
    config.data.synthetic_n_test = 256
    config.model.imagenet_width, config.batch_size, config.eval_batch_size = 8, 64, 256
    epochs, decays, warmup, n_train = 6, (3, 4, 5), 1, 1024
    config.schedule.warmup_epochs, config.base_batch_size = warmup, 16  # 0.1 -> 0.4
  if k == 256:
    config.schedule.warmup_epochs = 0  # the baseline needs none
    warmup = 0
  config.num_epochs = epochs
  config.schedule.boundaries = recipes.step_boundaries(decays, warmup, config.batch_size,
                                                       n_train)
  return config
