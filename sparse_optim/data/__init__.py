"""Datasets: few-shot episode sampling and loaders (Omniglot, CIFAR-FS,
miniImageNet, offline MNIST / synthetic)."""

# --- few-shot (episode sampler + loaders) ---
from .fewshot import Episode, FewShotSampler, FewShotSplits, augment_with_rotations, split_classes, uint8_to_float
from .omniglot import load_omniglot
from .cifar_fs import CIFAR_FS_TEST_CLASSES, CIFAR_FS_TRAIN_CLASSES, CIFAR_FS_VAL_CLASSES, load_cifar_fs
from .mini_imagenet import load_mini_imagenet
from .offline import load_mnist_fewshot_offline, synthetic_fewshot
from .cross_domain import (CARS_TEST_CLASSES, CARS_TRAIN_CLASSES, CARS_VAL_CLASSES, cub_split, load_cars, load_cub,
                           load_tiered_imagenet)

__all__ = [
    "Episode",
    "FewShotSampler",
    "FewShotSplits",
    "augment_with_rotations",
    "split_classes",
    "uint8_to_float",
    "load_omniglot",
    "load_cifar_fs",
    "CIFAR_FS_TRAIN_CLASSES",
    "CIFAR_FS_VAL_CLASSES",
    "CIFAR_FS_TEST_CLASSES",
    "load_mini_imagenet",
    "load_mnist_fewshot_offline",
    "synthetic_fewshot",
    "load_tiered_imagenet",
    "load_cub",
    "load_cars",
    "cub_split",
    "CARS_TRAIN_CLASSES",
    "CARS_VAL_CLASSES",
    "CARS_TEST_CLASSES",
]

# --- MNIST for the continual-learning streams (sparse_optim.continual.streams) ---
from .mnist import MNISTArrays, load_mnist, load_mnist_auto, load_mnist_offline

__all__ += ["MNISTArrays", "load_mnist", "load_mnist_offline", "load_mnist_auto"]
