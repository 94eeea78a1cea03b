"""Continual-learning utilities: reservoir replay, accuracy-matrix metrics, MNIST task streams."""
from sparse_optim.continual.metrics import (
    AccuracyMatrix,
    backward_transfer,
    forward_transfer,
    retained_accuracy,
)
from sparse_optim.continual.alignment import gradient_alignment, task_gradient
from sparse_optim.continual.gem_files import load_gem_file, save_gem_file
from sparse_optim.continual.heads import MultiHeadLoss
from sparse_optim.continual.learners import LaERLearner, LaMAMLLearner, ReplayLearner
from sparse_optim.continual.replay import ReservoirBuffer
from sparse_optim.continual.vision import (ImageSplits, augment_batch, class_split_tasks, load_cifar,
                                          load_tiny_imagenet)
from sparse_optim.continual.streams import (
    Task,
    iterate_stream,
    iterate_task_batches,
    mnist_many_permutations,
    mnist_permutations,
    mnist_rotations,
    rotate_images,
)

__all__ = [
    "ReservoirBuffer",
    "LaMAMLLearner",
    "LaERLearner",
    "MultiHeadLoss",
    "load_gem_file",
    "save_gem_file",
    "gradient_alignment",
    "task_gradient",
    "ImageSplits",
    "load_cifar",
    "load_tiny_imagenet",
    "class_split_tasks",
    "augment_batch",
    "ReplayLearner",
    "AccuracyMatrix",
    "retained_accuracy",
    "backward_transfer",
    "forward_transfer",
    "Task",
    "mnist_rotations",
    "mnist_permutations",
    "mnist_many_permutations",
    "iterate_task_batches",
    "iterate_stream",
    "rotate_images",
]

from sparse_optim.continual import osaka  # noqa: E402  (OSAKA stream, loaders, boundary detection, C-MAML)
from sparse_optim.continual.osaka import ContinualMAML, OSAKAStream, detect_task_boundary, load_osaka_data  # noqa: E402

__all__ += ["osaka", "ContinualMAML", "OSAKAStream", "detect_task_boundary", "load_osaka_data"]
