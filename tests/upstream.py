"""Files in upstream formats, for tests on every layer (a shared module, so any test file can be
run alone: tests/ is on pytest's pythonpath, tests/builder/ is not)."""

from __future__ import annotations

import torch

from neuralstyle.builder.networks import TransformerNet


def make_upstream_checkpoint(path, seed: int = 0) -> TransformerNet:
    """A checkpoint in exactly pytorch/examples' format, seeded random weights (not a style).

    Old upstream checkpoints also hold InstanceNorm running stats, which loading must drop.
    """
    torch.manual_seed(seed)
    net = TransformerNet()
    state = net.state_dict()
    for key in list(state):
        if key.endswith(".weight") and key.split(".")[-2].startswith("in"):
            prefix = key[: -len("weight")]
            state[prefix + "running_mean"] = torch.zeros_like(state[key])
            state[prefix + "running_var"] = torch.ones_like(state[key])
    torch.save(state, path)
    return net.eval()
