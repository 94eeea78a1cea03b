"""Shared test configuration: which test modules exercise the ops (``-m ops``).

CI runs the whole suite on the native kernels, then only the ``ops`` tests again on the
pure-PyTorch reference ops (``SPARSE_OPTIM_BACKEND=reference pytest -m ops``): data loaders,
task streams, metrics, models, distributed recipes, example smoke tests and the CUDA build check
do not depend on the backend.
"""
import pytest

NOT_OPS = {
    "test_continual_metrics", "test_continual_replay", "test_continual_streams", "test_continual_learners",
    "test_cuda_build", "test_data_fewshot", "test_data_mnist", "test_distributed", "test_examples_continual",
    "test_examples_fewshot", "test_models",
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        module = item.module.__name__.rsplit(".", 1)[-1] if item.module is not None else ""
        if module.startswith("test_") and module not in NOT_OPS:
            item.add_marker(pytest.mark.ops)
