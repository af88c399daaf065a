#!/usr/bin/python3
"""Checks that a C++ model's exported weights load into the equivalent PyTorch module.

Runs `fl-model-dump MODEL WORKDIR`, reads model/input/output.safetensors by hand (8-byte
little-endian header length, JSON header, raw little-endian F32 bytes), builds the PyTorch module
below for MODEL, loads the weights with load_state_dict(strict=True) and compares its eval-mode
logits with the C++ ones: max|a-b| / max|b| must stay below 1e-5.

The definitions here are the reference for the C++ parameter names (models/classifiers.h).
Run with Debian's /usr/bin/python3 (python3-torch, python3-torchvision). Exit code 77: skipped.
"""
import argparse
import json
import os
import struct
import subprocess
import sys

try:
    import numpy as np
    import torch
    import torch.nn.functional as F
    import torchvision
    from torch import nn
except ImportError as e:  # reported to CTest as a skip, not a pass
    print(f"SKIP: {e}", file=sys.stderr)
    sys.exit(77)


def read_safetensors(path):
    """Returns ({name: float32 tensor}, metadata), validating the layout."""
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack("<Q", blob[:8])
    assert 8 + n <= len(blob), f"{path}: header length {n} exceeds file"
    header = json.loads(blob[8:8 + n].decode("utf-8"))
    data = blob[8 + n:]
    metadata = header.pop("__metadata__", {})
    tensors, covered = {}, 0
    for name, info in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
        begin, end = info["data_offsets"]
        assert info["dtype"] == "F32", f"{name}: dtype {info['dtype']}"
        assert begin == covered, f"{name}: gap or overlap at {begin}"
        shape = info["shape"]
        assert end - begin == 4 * int(np.prod(shape, dtype=np.int64)), f"{name}: size"
        array = np.frombuffer(data, dtype="<f4", count=(end - begin) // 4, offset=begin)
        tensors[name] = torch.from_numpy(array.copy()).reshape(shape)
        covered = end
    assert covered == len(data), f"{path}: {len(data) - covered} unclaimed bytes"
    return tensors, metadata


class SmallCnn(nn.Module):
    """models "smallcnn": 4 x [conv3x3 - GroupNorm(8) - ReLU - maxpool2], avg pool, fc."""

    def __init__(self, in_channels, num_outputs):
        super().__init__()
        layers, c = [], in_channels
        for width in (16, 32, 64, 64):
            layers += [nn.Conv2d(c, width, 3, padding=1, bias=False), nn.GroupNorm(8, width),
                       nn.ReLU(), nn.MaxPool2d(2)]
            c = width
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(c, num_outputs)

    def forward(self, x):
        x = F.adaptive_avg_pool2d(self.features(x), 1).flatten(1)
        return self.fc(x)


def conv_gn_mish(cin, cout, pool=False):
    layers = [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.GroupNorm(32, cout), nn.Mish()]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class ResNet9(nn.Module):
    """models "resnet9": the ResNet-9 of the DP chest-radiograph work (GroupNorm, Mish)."""

    def __init__(self, in_channels, num_outputs):
        super().__init__()
        self.prep = conv_gn_mish(in_channels, 64)
        self.layer1 = conv_gn_mish(64, 128, pool=True)
        self.res1 = nn.Sequential(conv_gn_mish(128, 128), conv_gn_mish(128, 128))
        self.layer2 = conv_gn_mish(128, 256, pool=True)
        self.layer3 = conv_gn_mish(256, 512, pool=True)
        self.res2 = nn.Sequential(conv_gn_mish(512, 512), conv_gn_mish(512, 512))
        self.fc = nn.Linear(1024, num_outputs)

    def forward(self, x):
        x = self.layer1(self.prep(x))
        x = x + self.res1(x)
        x = self.layer3(self.layer2(x))
        x = x + self.res2(x)
        x = torch.cat([F.adaptive_max_pool2d(x, 1), F.adaptive_avg_pool2d(x, 1)], 1).flatten(1)
        return self.fc(x)


def torchvision_resnet(depth, in_channels, num_outputs):
    """models "resnet18"/"resnet50": torchvision's ResNet, GroupNorm(32) for BatchNorm."""
    factory = {18: torchvision.models.resnet18, 50: torchvision.models.resnet50}[depth]
    model = factory(num_classes=num_outputs, norm_layer=lambda c: nn.GroupNorm(32, c))
    model.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
    return model


def build(name, in_channels=1, num_outputs=8):
    if name == "smallcnn":
        return SmallCnn(in_channels, num_outputs)
    if name == "resnet9":
        return ResNet9(in_channels, num_outputs)
    if name in ("resnet18", "resnet50"):
        return torchvision_resnet(int(name[6:]), in_channels, num_outputs)
    raise ValueError(f"unknown model {name}")


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dump", required=True, help="path of fl-model-dump")
    parser.add_argument("--model", required=True)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--tolerance", type=float, default=1e-5)
    args = parser.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    subprocess.run([args.dump, args.model, args.workdir], check=True)

    weights, metadata = read_safetensors(os.path.join(args.workdir, "model.safetensors"))
    assert metadata.get("model") == args.model, metadata
    inputs, _ = read_safetensors(os.path.join(args.workdir, "input.safetensors"))
    outputs, _ = read_safetensors(os.path.join(args.workdir, "output.safetensors"))

    model = build(args.model)
    model.load_state_dict(weights, strict=True)
    model.eval()
    with torch.no_grad():
        got = model(inputs["input"])
    want = outputs["output"]
    assert got.shape == want.shape, f"shape {tuple(got.shape)} vs C++ {tuple(want.shape)}"
    rel = ((got - want).abs().max() / want.abs().max().clamp_min(1e-12)).item()
    print(f"{args.model}: {len(weights)} tensors, max relative error {rel:.3g}")
    if not rel < args.tolerance:
        print(f"FAIL: relative error {rel} >= {args.tolerance}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
