#!/usr/bin/env python3
"""Export torchvision's resnet18 with 10 classes and random weights, for 32x32 input, to ONNX.

The large-model case of issue #21 (`paoding fit` on 11.2 M parameters). The file is 45 MB, so
it is not committed: build it where you need it, e.g.

    python tests/large/export_resnet18.py target/resnet18_32.onnx
    target/release/paoding fit target/resnet18_32.onnx --profile boards/cortex-m7.toml

The network is torchvision.models.resnet18's, unchanged but for 10 classes: a 7x7 stride-2
stem convolution, a 3x3 stride-2 max pool, BasicBlocks [2, 2, 2, 2] at widths 64-128-256-512,
global average pooling and a dense layer (11,181,642 parameters in PyTorch, 11,176,842 once the
batch norms are folded; 37 M MACs at 32x32, where layer4 runs at 1x1). It is written out here so that only torch is needed (torchvision is
often not installed); the weights are initialised as torchvision does (Kaiming normal, fan out,
for convolutions; unit batch norms), seed 0, in the order that gave the file the README's
figures were measured on (the stem is built last). Exported with the TorchScript exporter
(dynamo=False, opset 13, eval mode, constant folding: every BatchNorm is folded into its
convolution).
"""

import sys

import torch
from torch import nn


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


def kaiming(conv):
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")


class ResNet18(nn.Module):
    def __init__(self, classes=10):
        super().__init__()
        # A placeholder stem, replaced below (it only consumes random numbers, so that seed 0
        # still gives the measured file).
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        blocks, cin = [], 64
        for cout, stride in [(64, 1), (128, 2), (256, 2), (512, 2)]:
            blocks.append(nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)))
            cin = cout
        self.layer1, self.layer2, self.layer3, self.layer4 = blocks
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                kaiming(m)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
        # torchvision's stem.
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        kaiming(self.conv1)
        self.maxpool = nn.MaxPool2d(3, 2, 1)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "resnet18_32.onnx"
    torch.manual_seed(0)
    m = ResNet18().eval()
    params = sum(p.numel() for p in m.parameters())
    x = torch.rand(1, 3, 32, 32)
    torch.onnx.export(
        m, (x,), out, dynamo=False, opset_version=13, input_names=["input"],
        output_names=["logits"], do_constant_folding=True,
    )
    print(f"wrote {out}: {params} parameters")


if __name__ == "__main__":
    main()
