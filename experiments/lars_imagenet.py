r"""You, Gitman & Ginsburg (2017), LARS: ResNet-50 on ImageNet at k=32768.

The recipe as the LARS papers and their TPU-pod successors run it: LARS (momentum 0.9,
trust coefficient eta 0.001, weight decay 1e-4 inside the trust ratio, neither on batch
norm's parameters nor on biases), a linear warmup over 5 epochs, then polynomial decay
of power 2 to zero at epoch 90; label smoothing 0.1. The peak lr is the one value to
tune: You et al. tune it per k; 25 here is a starting point (a relative step of
lr x eta = 2.5% per layer at the peak), to sweep with
--config.sweep.product.learning_rate="(15.0,20.0,25.0,30.0)". Data, model and batch
norm as in experiments/goyal_imagenet.py. TensorFlow's LARS optimizer (from Ying and
You) is documented as reaching 76.3% top-1 at k=32768 on a TPU pod.

On a TPU pod or GPU cluster, one process per host:
  gcloud compute tpus tpu-vm ssh $TPU --zone=$ZONE --worker=all --command "cd sgdlab && \
    python -m sgdlab.launch --config=experiments/lars_imagenet.py --multihost \
      --config.data.dir=$TFDS_DATA_DIR --workdir=/mnt/shared/runs/lars"
  python -m sgdlab.launch --config=experiments/lars_imagenet.py --submit=slurm \
    --multihost --submit_nodes=128 --submit_tasks_per_node=8 --submit_gpus_per_task=1 \
    --config.data.dir=$TFDS_DATA_DIR --workdir=$SCRATCH/runs/lars
The lr sweep as a SLURM array of one-host runs (each resumable):
  python -m sgdlab.launch --config=experiments/lars_imagenet.py --submit=slurm \
    --num_workers=4 --submit_gpus_per_task=8 --config.data.dir=$TFDS_DATA_DIR \
    --config.sweep.product.learning_rate="(15.0,20.0,25.0,30.0)" --workdir=$SCRATCH/lars
At k=32768 on 8 devices each holds 4,096 images: the planner's micro-batches and remat
for that are in docs/imagenet.md (`python -m sgdlab.fit`).

  --config=experiments/lars_imagenet.py:small   the recipe on this machine: ResNet-50 at
      width 8 on 32x32 synthetic images, k=64, 6 epochs (about a minute on 2 CPU
      cores; what the tests run)
"""

from sgdlab.config import default_config, recipes


def get_config(variant: str = ""):
  config = default_config()
  recipes.imagenet_resnet(config, 32768)
  config.optimizer.name, config.optimizer.momentum = "lars", 0.9
  config.optimizer.trust_coefficient, config.optimizer.weight_decay = 0.001, 1e-4
  config.optimizer.decay_params = "matrices"
  config.learning_rate, config.label_smoothing = 25.0, 0.1
  config.schedule.name, config.schedule.power, config.schedule.alpha = "polynomial", 2.0, 0.0
  config.schedule.warmup_epochs, config.num_epochs = 5, 90
  if variant == "small":
    config.data.name, config.data.pipeline, config.data.image_size = "synthetic", "device", 0
    config.data.synthetic_input_shape, config.data.synthetic_n_train = (32, 32, 3), 1024
    config.data.synthetic_n_test = 256
    config.model.imagenet_width, config.batch_size, config.eval_batch_size = 8, 64, 256
    config.schedule.warmup_epochs, config.num_epochs = 1, 6
  return config
