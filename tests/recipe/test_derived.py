"""What a recipe implies beyond its keys: here, CUDA_VISIBLE_DEVICES for `hardware.gpus`."""

import pytest

from swiftpipe.core.errors import RecipeError
from swiftpipe.recipe import derived

UUID = "GPU-8f3c2b1a-1111-2222-3333-444455556666"


def test_gpu_indices_out_of_the_visible_devices_are_refused(monkeypatch):
    """`hardware.gpus` indexes CUDA_VISIBLE_DEVICES (a scheduler's UUID list): index 1 of one device is refused.
    visible_devices reads only the variable, so no (fake) GPU is needed."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", UUID)
    with pytest.raises(RecipeError, match="index 1 is out of range"):
        derived.visible_devices([1])
