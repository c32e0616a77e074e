#!/usr/bin/env python3
"""Regenerate the "unseen" benchmark zoo in tests/unseen/.

These are small, really trained models that paoding's data-free pruning and fidelity estimate
were NOT tuned on (issues #15 and #21). They use a different data split from tests/fixtures
(random_state=7 instead of 0), other architectures, widths and depths, other training recipes,
a second input size (digits upsampled to 16x16) and a second task (standardized tabular data).

Run from the repository root:

    pip install -r tests/unseen/requirements.txt
    python tests/unseen/generate.py            # everything, ~5 min on 1 CPU thread
    python tests/unseen/generate.py torch      # only the PyTorch models
    python tests/unseen/generate.py tf         # only the Keras/tf2onnx models

Data (all bundled with scikit-learn, nothing is downloaded):
  * digits: sklearn.datasets.load_digits, pixels / 16 in [0, 1],
    train_test_split(test_size=0.25, random_state=7, stratify=y) -> 1347 train / 450 test.
  * digits16: the same split, each 8x8 image upsampled to 16x16 with bilinear interpolation
    (half-pixel centres, edge clamped: torch's F.interpolate(align_corners=False)), in [0, 1].
  * breast_cancer: sklearn.datasets.load_breast_cancer (30 features, 2 classes),
    train_test_split(test_size=0.25, random_state=7, stratify=y) -> 426 / 143, standardized
    with the training split's mean and std (the standardization is outside the model).

Every model is exported by a real exporter, checked with onnx.checker (full_check=True), run
with onnxruntime at batch 1 (every test sample) and at the full test batch, and its
onnxruntime accuracy must equal the framework's. Everything is written next to this script.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper
from sklearn.datasets import load_breast_cancer, load_digits
from sklearn.model_selection import train_test_split

OUT = Path(__file__).resolve().parent
SPLIT_SEED = 7  # tests/fixtures uses random_state=0
N_THREADS = 1

# Op types that appear in tests/fixtures (paoding's importer is known to read these).
FIXTURE_OPS = {
    "Add", "BatchNormalization", "Cast", "Clip", "Concat", "Constant", "Conv",
    "DequantizeLinear", "Flatten", "Gather", "Gemm", "GlobalAveragePool", "Identity",
    "MatMul", "MaxPool", "ReduceMean", "Relu", "Reshape", "Shape", "Slice", "Softmax",
    "Transpose",
}

warnings.filterwarnings("ignore")


# --------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    try:
        import torch

        torch.manual_seed(seed)
    except ImportError:
        pass


def bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] 1-D bilinear interpolation, half-pixel centres, edges clamped."""
    a = np.zeros((n_out, n_in), dtype=np.float64)
    scale = n_in / n_out
    for i in range(n_out):
        src = max((i + 0.5) * scale - 0.5, 0.0)
        i0 = min(int(np.floor(src)), n_in - 1)
        i1 = min(i0 + 1, n_in - 1)
        w = src - i0
        a[i, i0] += 1.0 - w
        a[i, i1] += w
    return a


def upsample16(x8: np.ndarray) -> np.ndarray:
    a = bilinear_matrix(8, 16)
    up = np.einsum("oi,nij,pj->nop", a, x8.astype(np.float64), a)
    return np.clip(up, 0.0, 1.0).astype(np.float32)


def load_data() -> dict:
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)  # [1797, 8, 8] in [0, 1]
    y = digits.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=0.25, random_state=SPLIT_SEED, stratify=y
    )
    assert x_te.shape == (450, 8, 8), x_te.shape

    bc = load_breast_cancer()
    xb = bc.data.astype(np.float64)
    yb = bc.target.astype(np.int64)
    xb_tr, xb_te, yb_tr, yb_te = train_test_split(
        xb, yb, test_size=0.25, random_state=SPLIT_SEED, stratify=yb
    )
    mu, sd = xb_tr.mean(0), xb_tr.std(0)
    xb_tr = ((xb_tr - mu) / sd).astype(np.float32)
    xb_te = ((xb_te - mu) / sd).astype(np.float32)
    return {
        "digits": (x_tr, y_tr, x_te, y_te),
        "digits16": (upsample16(x_tr), y_tr, upsample16(x_te), y_te),
        "cancer": (xb_tr, yb_tr, xb_te, yb_te),
        "cancer_stats": (mu, sd),
    }


def as_layout(x: np.ndarray, layout: str) -> np.ndarray:
    n = x.shape[0]
    if layout == "NCHW":
        return np.ascontiguousarray(x.reshape(n, 1, *x.shape[1:]), dtype=np.float32)
    if layout == "NHWC":
        return np.ascontiguousarray(x.reshape(n, *x.shape[1:], 1), dtype=np.float32)
    if layout == "flat":
        return np.ascontiguousarray(x.reshape(n, -1), dtype=np.float32)
    raise ValueError(layout)


# (task, layout) -> test file, input shape at batch 1, input range
TEST_FILES = {
    ("digits", "NCHW"): ("digits_rs7_test_x_nchw.npy", [1, 1, 8, 8]),
    ("digits", "NHWC"): ("digits_rs7_test_x_nhwc.npy", [1, 8, 8, 1]),
    ("digits", "flat"): ("digits_rs7_test_x_flat.npy", [1, 64]),
    ("digits16", "NCHW"): ("digits16_rs7_test_x_nchw.npy", [1, 1, 16, 16]),
    ("cancer", "flat"): ("breast_cancer_rs7_test_x.npy", [1, 30]),
}
TEST_Y_FILES = {
    "digits": "digits_rs7_test_y.npy",
    "digits16": "digits_rs7_test_y.npy",
    "cancer": "breast_cancer_rs7_test_y.npy",
}


def write_test_data(data: dict) -> dict:
    """Write the .npy test files; return the input range per task."""
    ranges = {}
    for (task, layout), (name, _) in TEST_FILES.items():
        np.save(OUT / name, as_layout(data[task][2], layout))
    for task, name in TEST_Y_FILES.items():
        np.save(OUT / name, data[task][3].astype(np.int64))
    ranges["digits"] = [0.0, 1.0]
    ranges["digits16"] = [0.0, 1.0]
    xb = np.concatenate([data["cancer"][0], data["cancer"][2]]).astype(np.float64)
    # observed range of the standardized features over the whole data set, rounded outward
    ranges["cancer"] = [round(float(np.floor(xb.min() * 10)) / 10, 1),
                        round(float(np.ceil(xb.max() * 10)) / 10, 1)]
    return ranges


# --------------------------------------------------------------------------------------
# ONNX verification helpers
# --------------------------------------------------------------------------------------


def op_types(model: onnx.ModelProto) -> list[str]:
    return sorted({n.op_type for n in model.graph.node})


def default_opset(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    raise ValueError("no default-domain opset import")


def ort_session(path: Path) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = N_THREADS
    so.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def verify_and_score(path: Path, x_test: np.ndarray, y_test: np.ndarray, n_cls: int) -> dict:
    onnx.checker.check_model(str(path), full_check=True)
    model = onnx.load(str(path))
    sess = ort_session(path)
    init_names = {i.name for i in model.graph.initializer}
    feed = [i for i in sess.get_inputs() if i.name not in init_names]
    assert len(feed) == 1, [i.name for i in feed]
    in_name, out_name = feed[0].name, sess.get_outputs()[0].name
    full = sess.run([out_name], {in_name: x_test})[0]
    assert full.shape == (len(x_test), n_cls), full.shape
    single = np.concatenate(
        [sess.run([out_name], {in_name: x_test[i : i + 1]})[0] for i in range(len(x_test))]
    )
    max_diff = float(np.max(np.abs(single - full)))
    assert max_diff < 1e-3, f"batch-1 vs full batch mismatch {max_diff}"
    ops = op_types(model)
    assert set(ops) <= FIXTURE_OPS, f"{path.name}: ops outside the fixtures' set: {set(ops) - FIXTURE_OPS}"
    return {
        "accuracy": float((full.argmax(1) == y_test).mean()),
        "pred": full.argmax(1),
        "ops": ops,
        "opset": default_opset(model),
        "ir_version": int(model.ir_version),
        "input_name": in_name,
        "output_name": out_name,
        "batch1_max_diff": max_diff,
    }


# --------------------------------------------------------------------------------------
# PyTorch models
# --------------------------------------------------------------------------------------


def torch_models():
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    class PlainCNN(nn.Module):
        """conv-relu-maxpool x2, dense (narrower than the fixture's cnn_pool: 12/24/48)."""

        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(1, 12, 3, padding=1)
            self.conv2 = nn.Conv2d(12, 24, 3, padding=1)
            self.fc1 = nn.Linear(24 * 2 * 2, 48)
            self.fc2 = nn.Linear(48, 10)

        def forward(self, x):
            x = F.max_pool2d(F.relu(self.conv1(x)), 2)  # 12x4x4
            x = F.max_pool2d(F.relu(self.conv2(x)), 2)  # 24x2x2
            x = torch.flatten(x, 1)
            return self.fc2(F.relu(self.fc1(x)))

    def conv_bn(cin, cout, k=3, stride=1, groups=1):
        return nn.Sequential(
            nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
        )

    class ResBlock(nn.Module):
        """Two 3x3 conv+BN at constant width, identity shortcut."""

        def __init__(self, c):
            super().__init__()
            self.a = conv_bn(c, c)
            self.b = conv_bn(c, c)

        def forward(self, x):
            return F.relu(self.b(F.relu(self.a(x))) + x)

    class ResNet21(nn.Module):
        """The architecture of issue #21."""

        def __init__(self):
            super().__init__()
            self.stem = conv_bn(1, 16)  # 16x8x8
            self.block1 = ResBlock(16)
            self.block2 = ResBlock(16)
            self.down = conv_bn(16, 32, 3, stride=2)  # 32x4x4
            self.block3 = ResBlock(32)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(32, 10)

        def forward(self, x):
            x = F.relu(self.stem(x))
            x = self.block2(self.block1(x))
            x = F.relu(self.down(x))
            x = self.block3(x)
            return self.fc(torch.flatten(self.pool(x), 1))

    def conv_bn_relu(cin, cout, k, stride=1, groups=1):
        return nn.Sequential(conv_bn(cin, cout, k, stride, groups), nn.ReLU())

    class DSCNN(nn.Module):
        """Depthwise-separable CNN, plain ReLU, 24/48/64/64, three DS blocks, dropout head."""

        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(
                conv_bn_relu(1, 24, 3),  # 24x8x8
                conv_bn_relu(24, 24, 3, groups=24),  # depthwise
                conv_bn_relu(24, 48, 1),  # pointwise
                conv_bn_relu(48, 48, 3, stride=2, groups=48),  # depthwise, 48x4x4
                conv_bn_relu(48, 64, 1),  # pointwise
                conv_bn_relu(64, 64, 3, groups=64),  # depthwise
                conv_bn_relu(64, 64, 1),  # pointwise
            )
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.drop = nn.Dropout(0.2)
            self.fc = nn.Linear(64, 10)

        def forward(self, x):
            x = torch.flatten(self.pool(self.features(x)), 1)
            return self.fc(self.drop(x))

    class MLPBN(nn.Module):
        """Flat 64-d input: Linear-BN1d-ReLU-Dropout x2, Linear."""

        def __init__(self, n_in=64, h1=256, h2=128, n_out=10, p=0.3):
            super().__init__()
            self.net = nn.Sequential(
                nn.Linear(n_in, h1),
                nn.BatchNorm1d(h1),
                nn.ReLU(),
                nn.Dropout(p),
                nn.Linear(h1, h2),
                nn.BatchNorm1d(h2),
                nn.ReLU(),
                nn.Dropout(p),
                nn.Linear(h2, n_out),
            )

        def forward(self, x):
            return self.net(x)

    class WideCNN(nn.Module):
        """32/64/64 channels, two max pools, global mean, one dense."""

        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
            self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
            self.conv3 = nn.Conv2d(64, 64, 3, padding=1)
            self.fc = nn.Linear(64, 10)

        def forward(self, x):
            x = F.relu(self.conv1(x))
            x = F.max_pool2d(F.relu(self.conv2(x)), 2)  # 64x4x4
            x = F.max_pool2d(F.relu(self.conv3(x)), 2)  # 64x2x2
            x = x.mean(dim=(2, 3))
            return self.fc(x)

    class DeepCNN16(nn.Module):
        """Six 3x3 convs (16,16 | 32,32 | 48,48) on 16x16 input, two max pools, GAP, dense."""

        def __init__(self):
            super().__init__()
            chans = [(1, 16), (16, 16), (16, 32), (32, 32), (32, 48), (48, 48)]
            self.convs = nn.ModuleList([nn.Conv2d(a, b, 3, padding=1) for a, b in chans])
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(48, 10)

        def forward(self, x):
            for i, c in enumerate(self.convs):
                x = F.relu(c(x))
                if i in (1, 3):
                    x = F.max_pool2d(x, 2)  # 16x16 -> 8x8 -> 4x4
            return self.fc(torch.flatten(self.pool(x), 1))

    return PlainCNN, ResNet21, DSCNN, MLPBN, WideCNN, DeepCNN16


def shift_augment(x, g):
    """Random translation by -1, 0 or +1 pixel along H and W (zero fill); x is NCHW."""
    import torch
    import torch.nn.functional as F

    n, _, h, w = x.shape
    xp = F.pad(x, (1, 1, 1, 1))
    dy = torch.randint(0, 3, (n,), generator=g)
    dx = torch.randint(0, 3, (n,), generator=g)
    out = torch.empty_like(x)
    for a in range(3):
        for b in range(3):
            m = (dy == a) & (dx == b)
            if m.any():
                out[m] = xp[m, :, a : a + h, b : b + w]
    return out


def train_torch(model, x_tr, y_tr, x_te, y_te, *, epochs, lr, seed, batch=32, opt="adam",
                wd=0.0, label_smoothing=0.0, augment=False):
    import torch
    import torch.nn.functional as F

    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    xt, yt = torch.from_numpy(x_tr), torch.from_numpy(y_tr)
    if opt == "adam":
        o = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=wd)
    elif opt == "adamw":
        o = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd)
    elif opt == "sgd":
        o = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=wd)
    else:
        raise ValueError(opt)
    steps_per_epoch = (len(xt) + batch - 1) // batch
    sched = torch.optim.lr_scheduler.OneCycleLR(
        o, max_lr=lr, total_steps=epochs * steps_per_epoch, pct_start=0.2
    ) if opt == "sgd" else torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=epochs)
    n = len(xt)
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(n, generator=g)
        for i in range(0, n, batch):
            idx = perm[i : i + batch]
            if len(idx) < 2:  # BatchNorm1d needs >1 sample in training mode
                continue
            xb = xt[idx]
            if augment:
                xb = shift_augment(xb, g)
            o.zero_grad()
            loss = F.cross_entropy(model(xb), yt[idx], label_smoothing=label_smoothing)
            loss.backward()
            o.step()
            if opt == "sgd":
                sched.step()
        if opt != "sgd":
            sched.step()
    model.eval()
    with torch.no_grad():
        pred = model(torch.from_numpy(x_te)).argmax(1).numpy()
    return float((pred == y_te).mean()), pred


def count_torch_params(model) -> int:
    return int(sum(p.numel() for p in model.parameters() if p.requires_grad))


def export_torchscript(model, path: Path, example, opset=13, **kw) -> None:
    import torch

    model.eval()
    torch.onnx.export(
        model,
        (example,),
        str(path),
        dynamo=False,
        opset_version=opset,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
        **kw,
    )


def export_dynamo(model, path: Path, example) -> list[str]:
    """dynamo exporter, opset 18, weights inline (no external data), symbolic batch."""
    import torch

    model.eval()
    batch = torch.export.Dim("batch", min=1, max=4096)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp) / path.name
        torch.onnx.export(
            model,
            (example,),
            str(tmp_path),
            dynamo=True,
            opset_version=18,
            external_data=False,
            input_names=["input"],
            output_names=["logits"],
            dynamic_shapes=({0: batch},),
        )
        m = onnx.load(str(tmp_path), load_external_data=True)
    # dynamo writes IR v10 with onnx-ir metadata; save as one self-contained file
    onnx.save_model(m, str(path), save_as_external_data=False)
    return op_types(m)


def build_torch(data, results: list) -> None:
    import torch

    torch.set_num_threads(N_THREADS)
    torch.set_num_interop_threads(1)
    torch.use_deterministic_algorithms(True)
    PlainCNN, ResNet21, DSCNN, MLPBN, WideCNN, DeepCNN16 = torch_models()
    x_tr, y_tr, x_te, y_te = data["digits"]
    tr, te = as_layout(x_tr, "NCHW"), as_layout(x_te, "NCHW")
    ex8 = torch.zeros(1, 1, 8, 8)

    def log(name, acc, t0):
        print(f"[torch] {name}: pytorch test acc {acc:.4f} ({time.time() - t0:.0f} s)", flush=True)

    # ---- 1. plain CNN ----------------------------------------------------------------
    t0 = time.time()
    seed_all(11)
    m = PlainCNN()
    recipe = dict(epochs=40, lr=3e-3, seed=11, opt="adam", wd=1e-4, batch=32)
    acc, pred = train_torch(m, tr, y_tr, te, y_te, **recipe)
    log("cnn_plain", acc, t0)
    export_torchscript(m, OUT / "cnn_plain_torch.onnx", ex8)
    results.append(dict(
        file="cnn_plain_torch.onnx", exporter="torch-torchscript", task="digits", layout="NCHW",
        architecture="Conv(1->12,3x3,pad1)+ReLU -> MaxPool2 -> Conv(12->24,3x3,pad1)+ReLU -> "
        "MaxPool2 -> Flatten -> Linear(96,48)+ReLU -> Linear(48,10) (logits)",
        params=count_torch_params(m), framework_accuracy=acc, framework_pred=pred,
        recipe="Adam lr 3e-3, weight decay 1e-4, cosine over 40 epochs, batch 32, seed 11, no augmentation",
        notes="torch.onnx.export(dynamo=False, opset_version=13), dynamic batch axis 'N'. "
        "Narrower than the fixture cnn_pool_torch (12/24/48 instead of 16/32/64).",
    ))

    # ---- 2./3. residual CNN of issue #21, BN folded and BN kept --------------------------
    t0 = time.time()
    seed_all(21)
    res = ResNet21()
    recipe = dict(epochs=30, lr=0.05, seed=21, opt="sgd", wd=5e-4, batch=64, augment=True)
    acc, pred = train_torch(res, tr, y_tr, te, y_te, **recipe)
    log("resnet21", acc, t0)
    arch = (
        "issue #21 residual CNN: stem Conv(1->16,3x3,no bias)+BN+ReLU; 2 x residual block at 16 "
        "[Conv(16->16,3x3)+BN+ReLU, Conv(16->16,3x3)+BN, + identity, ReLU]; "
        "Conv(16->32,3x3,stride2)+BN+ReLU; 1 x residual block at 32 [Conv(32->32,3x3)+BN+ReLU, "
        "Conv(32->32,3x3)+BN, + identity, ReLU]; GlobalAveragePool -> Flatten -> Linear(32,10) (logits)"
    )
    rec_txt = ("SGD momentum 0.9 nesterov, one-cycle lr max 0.05 (20% warm-up), weight decay 5e-4, "
               "30 epochs, batch 64, seed 21, random +-1 pixel translation augmentation")
    n_buf = sum(b.numel() for k, b in res.named_buffers() if "running" in k)
    export_torchscript(res, OUT / "resnet_folded_torch.onnx", ex8)
    mf = onnx.load(str(OUT / "resnet_folded_torch.onnx"))
    assert "BatchNormalization" not in op_types(mf)
    results.append(dict(
        file="resnet_folded_torch.onnx", exporter="torch-torchscript", task="digits", layout="NCHW",
        architecture=arch, params=count_torch_params(res), framework_accuracy=acc,
        framework_pred=pred, recipe=rec_txt,
        notes="Default TorchScript export (eval, constant folding): every BatchNorm is folded into "
        "its Conv (which gains a bias), so no BN statistics survive - the case of issue #21. "
        "Same trained weights as resnet_bn_torch.onnx.",
    ))
    res.eval()
    export_torchscript(res, OUT / "resnet_bn_torch.onnx", ex8,
                       training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False)
    mb = onnx.load(str(OUT / "resnet_bn_torch.onnx"))
    n_bn = sum(n.op_type == "BatchNormalization" for n in mb.graph.node)
    assert n_bn == sum(isinstance(x, torch.nn.BatchNorm2d) for x in res.modules()), n_bn
    assert all(len(n.output) == 1 for n in mb.graph.node if n.op_type == "BatchNormalization")
    idents = [f"{n.output[0]} = Identity({n.input[0]})" for n in mb.graph.node if n.op_type == "Identity"]
    results.append(dict(
        file="resnet_bn_torch.onnx", exporter="torch-torchscript", task="digits", layout="NCHW",
        architecture="same trained model (and weights) as resnet_folded_torch.onnx, BatchNorm kept",
        params=count_torch_params(res), framework_accuracy=acc, framework_pred=pred, recipe=rec_txt,
        notes="Exported in eval() mode with training=TrainingMode.PRESERVE and "
        f"do_constant_folding=False: the {n_bn} BatchNormalization nodes stay (inference form, "
        "one output, running mean/var as initializers, epsilon 1e-5); the Convs have no bias. "
        f"params counts trainable parameters only (BN running mean/var are {n_buf} more floats). "
        + (f"Identity nodes on initializers: {idents}." if idents else "No Identity nodes."),
    ))

    # ---- 4. depthwise-separable CNN, plain ReLU ---------------------------------------
    t0 = time.time()
    seed_all(4)
    ds = DSCNN()
    recipe = dict(epochs=40, lr=4e-3, seed=4, opt="adamw", wd=1e-2, batch=32)
    acc, pred = train_torch(ds, tr, y_tr, te, y_te, **recipe)
    log("dscnn_relu", acc, t0)
    export_torchscript(ds, OUT / "dscnn_relu_torch.onnx", ex8)
    md = onnx.load(str(OUT / "dscnn_relu_torch.onnx"))
    assert "BatchNormalization" not in op_types(md) and "Clip" not in op_types(md)
    groups = sorted({a.i for n in md.graph.node if n.op_type == "Conv" for a in n.attribute if a.name == "group"})
    results.append(dict(
        file="dscnn_relu_torch.onnx", exporter="torch-torchscript", task="digits", layout="NCHW",
        architecture="DS-CNN, ReLU: Conv(1->24,3x3)+BN+ReLU; DS [dw Conv(24,3x3,g24)+BN+ReLU, "
        "pw Conv(24->48,1x1)+BN+ReLU]; DS [dw Conv(48,3x3,stride2,g48)+BN+ReLU, pw Conv(48->64,1x1)"
        "+BN+ReLU]; DS [dw Conv(64,3x3,g64)+BN+ReLU, pw Conv(64->64,1x1)+BN+ReLU]; "
        "GlobalAveragePool -> Flatten -> Dropout(0.2) -> Linear(64,10) (logits)",
        params=count_torch_params(ds), framework_accuracy=acc, framework_pred=pred,
        recipe="AdamW lr 4e-3, weight decay 1e-2, cosine over 40 epochs, batch 32, seed 4",
        notes="torch.onnx.export(dynamo=False, opset_version=13), default folding: BN folded into "
        f"the convs; plain ReLU (not ReLU6, unlike the fixture dscnn); Conv group values {groups}; "
        "Dropout disappears in eval export.",
    ))

    # ---- 5. MLP with BatchNorm1d and Dropout ------------------------------------------
    t0 = time.time()
    seed_all(5)
    mlp = MLPBN()
    trf, tef = as_layout(x_tr, "flat"), as_layout(x_te, "flat")
    recipe = dict(epochs=60, lr=2e-3, seed=5, opt="adam", wd=0.0, batch=64, label_smoothing=0.05)
    acc, pred = train_torch(mlp, trf, y_tr, tef, y_te, **recipe)
    log("mlp_bn_dropout", acc, t0)
    export_torchscript(mlp, OUT / "mlp_bn_dropout_torch.onnx", torch.zeros(1, 64))
    mm = onnx.load(str(OUT / "mlp_bn_dropout_torch.onnx"))
    n_bn = sum(n.op_type == "BatchNormalization" for n in mm.graph.node)
    n_buf = sum(b.numel() for k, b in mlp.named_buffers() if "running" in k)
    results.append(dict(
        file="mlp_bn_dropout_torch.onnx", exporter="torch-torchscript", task="digits", layout="flat",
        architecture="MLP, flat [N,64] input: Linear(64,256) -> BatchNorm1d -> ReLU -> Dropout(0.3) -> "
        "Linear(256,128) -> BatchNorm1d -> ReLU -> Dropout(0.3) -> Linear(128,10) (logits)",
        params=count_torch_params(mlp), framework_accuracy=acc, framework_pred=pred,
        recipe="Adam lr 2e-3, cosine over 60 epochs, batch 64, label smoothing 0.05, seed 5",
        notes="torch.onnx.export(dynamo=False, opset_version=13), default settings (eval). "
        + (f"The TorchScript exporter does not fold BatchNorm1d into the preceding Gemm: {n_bn} "
           "BatchNormalization nodes on rank-2 [N,C] tensors remain, with running mean/var "
           f"initializers ({n_buf} floats, not counted in params). "
           if n_bn else "BatchNorm1d was folded into the Gemms. ")
        + "Dropout disappears in eval export.",
    ))

    # ---- 6. wider CNN, dynamo exporter ------------------------------------------------
    t0 = time.time()
    seed_all(6)
    wide = WideCNN()
    recipe = dict(epochs=30, lr=2e-3, seed=6, opt="adamw", wd=5e-2, batch=32, label_smoothing=0.1)
    acc, pred = train_torch(wide, tr, y_tr, te, y_te, **recipe)
    log("cnn_wide_dynamo", acc, t0)
    ops = export_dynamo(wide, OUT / "cnn_wide_dynamo.onnx", torch.zeros(4, 1, 8, 8))
    mw = onnx.load(str(OUT / "cnn_wide_dynamo.onnx"))
    rm = [n for n in mw.graph.node if n.op_type == "ReduceMean"]
    rm_note = (f" ReduceMean takes its axes as an int64 initializer input (opset 18), keepdims="
               f"{[a.i for a in rm[0].attribute if a.name == 'keepdims'] or [1]}." if rm else "")
    assert default_opset(mw) == 18, default_opset(mw)
    assert all(t.data_location != onnx.TensorProto.EXTERNAL for t in mw.graph.initializer)
    results.append(dict(
        file="cnn_wide_dynamo.onnx", exporter="torch-dynamo", task="digits", layout="NCHW",
        architecture="Conv(1->32,3x3,pad1)+ReLU -> Conv(32->64,3x3,pad1)+ReLU -> MaxPool2 -> "
        "Conv(64->64,3x3,pad1)+ReLU -> MaxPool2 -> mean over H,W (ReduceMean) -> Linear(64,10) (logits)",
        params=count_torch_params(wide), framework_accuracy=acc, framework_pred=pred,
        recipe="AdamW lr 2e-3, weight decay 5e-2, cosine over 30 epochs, batch 32, label smoothing 0.1, seed 6",
        notes="torch.onnx.export(dynamo=True, opset_version=18, external_data=False, dynamic_shapes "
        "batch dim 'batch'); weights inline in one file (unlike the fixture cnn_dynamo_torch). "
        f"IR version {mw.ir_version}. Op types {ops}." + rm_note,
    ))

    # ---- 7. deeper CNN on 16x16 upsampled digits --------------------------------------
    t0 = time.time()
    seed_all(7)
    deep = DeepCNN16()
    x16_tr, _, x16_te, _ = data["digits16"]
    tr16, te16 = as_layout(x16_tr, "NCHW"), as_layout(x16_te, "NCHW")
    recipe = dict(epochs=40, lr=2e-3, seed=7, opt="adam", wd=0.0, batch=32, augment=True)
    acc, pred = train_torch(deep, tr16, y_tr, te16, y_te, **recipe)
    log("cnn_deep16", acc, t0)
    export_torchscript(deep, OUT / "cnn_deep16_torch.onnx", torch.zeros(1, 1, 16, 16))
    results.append(dict(
        file="cnn_deep16_torch.onnx", exporter="torch-torchscript", task="digits16", layout="NCHW",
        architecture="16x16 input; Conv(1->16)+ReLU -> Conv(16->16)+ReLU -> MaxPool2 -> "
        "Conv(16->32)+ReLU -> Conv(32->32)+ReLU -> MaxPool2 -> Conv(32->48)+ReLU -> Conv(48->48)+ReLU "
        "(all 3x3 pad1, with bias, no BN) -> GlobalAveragePool -> Flatten -> Linear(48,10) (logits)",
        params=count_torch_params(deep), framework_accuracy=acc, framework_pred=pred,
        recipe="Adam lr 2e-3, cosine over 40 epochs, batch 32, seed 7, random +-1 pixel "
        "translation augmentation (on the 16x16 images)",
        notes="torch.onnx.export(dynamo=False, opset_version=13), dynamic batch axis 'N'. Input is "
        "the digits upsampled bilinearly to 16x16 (same split and order as the 8x8 files).",
    ))

    # ---- 10. tabular MLP (breast cancer) with BN1d + Dropout, dynamo -------------------
    t0 = time.time()
    seed_all(10)
    xb_tr, yb_tr, xb_te, yb_te = data["cancer"]
    tab = MLPBN(n_in=30, h1=64, h2=32, n_out=2, p=0.2)
    recipe = dict(epochs=60, lr=1e-3, seed=10, opt="adam", wd=1e-4, batch=32)
    acc, pred = train_torch(tab, xb_tr, yb_tr, xb_te, yb_te, **recipe)
    log("mlp_tabular_dynamo", acc, t0)
    ops = export_dynamo(tab, OUT / "mlp_tabular_dynamo.onnx", torch.zeros(4, 30))
    mt = onnx.load(str(OUT / "mlp_tabular_dynamo.onnx"))
    assert default_opset(mt) == 18
    n_bn = sum(n.op_type == "BatchNormalization" for n in mt.graph.node)
    xall = np.concatenate([xb_tr, xb_te])
    lo, hi = np.percentile(xall, [1, 99])
    tab_tail = (f"98% of all values lie in [{lo:.2f}, {hi:.2f}] and the tail is long on the "
                f"positive side (max {xall.max():.2f}, min {xall.min():.2f})")
    results.append(dict(
        file="mlp_tabular_dynamo.onnx", exporter="torch-dynamo", task="cancer", layout="flat",
        architecture="tabular MLP, [N,30] standardized features: Linear(30,64) -> BatchNorm1d -> ReLU -> "
        "Dropout(0.2) -> Linear(64,32) -> BatchNorm1d -> ReLU -> Dropout(0.2) -> Linear(32,2) (logits)",
        params=count_torch_params(tab), framework_accuracy=acc, framework_pred=pred,
        recipe="Adam lr 1e-3, weight decay 1e-4, cosine over 60 epochs, batch 32, seed 10",
        notes="sklearn load_breast_cancer (2 classes: 0 malignant, 1 benign), split "
        "train_test_split(test_size=0.25, random_state=7, stratify=y), each feature standardized "
        "with the training split's mean/std OUTSIDE the model. The inputs are not in [0,1]: "
        f"input_range is the observed min/max over the whole data set; {tab_tail}. "
        "torch.onnx.export(dynamo=True, opset_version=18, "
        "external_data=False). "
        + (f"{n_bn} BatchNormalization nodes kept. " if n_bn else
           "The dynamo exporter's graph optimizer folded both BatchNorm1d into the preceding "
           "Gemm, so no BN statistics survive. ")
        + f"Op types {ops}. Two output classes, not ten.",
    ))


# --------------------------------------------------------------------------------------
# Keras models through tf2onnx
# --------------------------------------------------------------------------------------


def keras_to_onnx(model, path: Path, spec, out_name="probabilities") -> str:
    import tensorflow as tf
    import tf2onnx

    # Keras 3 + tf2onnx 1.17: from_keras needs model.output_names set (KeyError otherwise).
    model.output_names = [out_name]
    try:
        tf2onnx.convert.from_keras(model, input_signature=spec, opset=13, output_path=str(path))
        return "tf2onnx.convert.from_keras(opset=13) after setting model.output_names=['probabilities']"
    except Exception as e:  # pragma: no cover - fallback kept for other Keras versions
        print(f"[keras] from_keras failed ({type(e).__name__}: {e}); using from_function")
        fn = tf.function(lambda x: model(x, training=False), input_signature=spec)
        tf2onnx.convert.from_function(fn, input_signature=spec, opset=13, output_path=str(path))
        return f"tf2onnx.convert.from_function(opset=13) (from_keras failed: {type(e).__name__})"


def keras_trainable(model) -> int:
    return int(sum(int(np.prod(w.shape)) for w in model.trainable_weights))


def build_tf(data, results: list) -> None:
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(N_THREADS)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    tf.config.experimental.enable_op_determinism()
    keras = tf.keras
    x_tr, y_tr, x_te, y_te = data["digits"]
    tr, te = as_layout(x_tr, "NHWC"), as_layout(x_te, "NHWC")
    spec = (tf.TensorSpec((None, 8, 8, 1), tf.float32, name="input"),)

    def fit(model, epochs, lr, batch):
        sched = keras.optimizers.schedules.CosineDecay(lr, decay_steps=epochs * ((len(tr) + batch - 1) // batch))
        model.compile(optimizer=keras.optimizers.Adam(sched),
                      loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        model.fit(tr, y_tr, epochs=epochs, batch_size=batch, shuffle=True, verbose=0)
        pred = model.predict(te, verbose=0).argmax(1)
        return float((pred == y_te).mean()), pred

    # ---- 8. Keras CNN with global average pooling --------------------------------------
    t0 = time.time()
    keras.utils.set_random_seed(8)
    cnn = keras.Sequential([
        keras.Input(shape=(8, 8, 1), name="input"),
        keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
        keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(48, 3, padding="same", activation="relu"),
        # keepdims=True + Flatten: tf2onnx emits GlobalAveragePool + Reshape; without keepdims it
        # emits GlobalAveragePool + Squeeze (an op type the fixtures do not use).
        keras.layers.GlobalAveragePooling2D(keepdims=True),
        keras.layers.Flatten(),
        keras.layers.Dropout(0.2),
        keras.layers.Dense(10, activation="softmax"),
    ], name="cnn_gap_keras")
    acc, pred = fit(cnn, epochs=40, lr=3e-3, batch=32)
    print(f"[keras] cnn_gap: keras test acc {acc:.4f} ({time.time() - t0:.0f} s)", flush=True)
    path = OUT / "cnn_gap_keras_tf2onnx.onnx"
    how = keras_to_onnx(cnn, path, spec)
    mk = onnx.load(str(path))
    results.append(dict(
        file=path.name, exporter="tf2onnx-keras", task="digits", layout="NHWC",
        architecture="Keras, NHWC: Conv2D(16,3,same,relu) -> Conv2D(32,3,same,relu) -> MaxPooling2D -> "
        "Conv2D(48,3,same,relu) -> GlobalAveragePooling2D -> Dropout(0.2) -> Dense(10,softmax) (probabilities)",
        params=keras_trainable(cnn), framework_accuracy=acc, framework_pred=pred,
        recipe="Keras Adam, cosine-decayed lr from 3e-3 over 40 epochs, batch 32, "
        "keras.utils.set_random_seed(8)",
        notes=f"{how}, input_signature [TensorSpec([None,8,8,1])]. " + describe_tf2onnx(mk),
    ))

    # ---- 9. Keras depthwise-separable CNN with BN and ReLU6 ----------------------------
    t0 = time.time()
    keras.utils.set_random_seed(9)
    L = keras.layers

    def cbr(x, f, k=1):
        x = L.Conv2D(f, k, padding="same", use_bias=False)(x)
        return L.ReLU(6.0)(L.BatchNormalization()(x))

    def dr(x, s=1):
        # Depthwise conv with bias and no BatchNorm: tf2onnx 1.17 folds a BN that follows a
        # regular Conv into it, but leaves a BN after a DepthwiseConv2D as Mul + Add nodes
        # (Mul is not among the fixtures' op types), so the depthwise convs carry a bias.
        x = L.DepthwiseConv2D(3, strides=s, padding="same", use_bias=True)(x)
        return L.ReLU(6.0)(x)

    inp = keras.Input(shape=(8, 8, 1), name="input")
    x = cbr(inp, 16, 3)
    x = cbr(dr(x), 32)
    x = cbr(dr(x, 2), 64)  # 4x4
    x = cbr(dr(x), 64)
    x = L.Flatten()(L.GlobalAveragePooling2D(keepdims=True)(x))
    out = L.Dense(10, activation="softmax")(x)
    ds = keras.Model(inp, out, name="dscnn_keras")
    acc, pred = fit(ds, epochs=40, lr=3e-3, batch=32)
    print(f"[keras] dscnn: keras test acc {acc:.4f} ({time.time() - t0:.0f} s)", flush=True)
    path = OUT / "dscnn_keras_tf2onnx.onnx"
    how = keras_to_onnx(ds, path, spec)
    mk = onnx.load(str(path))
    groups = sorted({a.i for n in mk.graph.node if n.op_type == "Conv" for a in n.attribute if a.name == "group"})
    n_bn = sum(n.op_type == "BatchNormalization" for n in mk.graph.node)
    n_ntr = int(sum(int(np.prod(w.shape)) for w in ds.non_trainable_weights))
    results.append(dict(
        file=path.name, exporter="tf2onnx-keras", task="digits", layout="NHWC",
        architecture="Keras, NHWC: Conv2D(16,3x3,no bias)+BN+ReLU6; DepthwiseConv2D(3x3,bias)+ReLU6, "
        "Conv2D(32,1x1,no bias)+BN+ReLU6; DepthwiseConv2D(3x3,stride2,bias)+ReLU6, Conv2D(64,1x1)+BN+"
        "ReLU6; DepthwiseConv2D(3x3,bias)+ReLU6, Conv2D(64,1x1)+BN+ReLU6; "
        "GlobalAveragePooling2D(keepdims) -> Flatten -> Dense(10,softmax) (probabilities)",
        params=keras_trainable(ds), framework_accuracy=acc, framework_pred=pred,
        recipe="Keras Adam, cosine-decayed lr from 3e-3 over 40 epochs, batch 32, "
        "keras.utils.set_random_seed(9)",
        notes=f"{how}, input_signature [TensorSpec([None,8,8,1])]. "
        + (f"{n_bn} BatchNormalization nodes remain. " if n_bn else
           "tf2onnx folded every BatchNormalization into its Conv (no BN statistics survive). ")
        + f"DepthwiseConv2D became Conv with group; group values {groups}. "
        f"params counts trainable weights (BN moving mean/var are {n_ntr} more floats). "
        + describe_tf2onnx(mk),
    ))


def describe_tf2onnx(m: onnx.ModelProto) -> str:
    ops = op_types(m)
    first_conv = next(n for n in m.graph.node if n.op_type == "Conv")
    producer = {o: n for n in m.graph.node for o in n.output}.get(first_conv.input[0])
    parts = []
    if producer is None:
        parts.append("The first Conv reads the graph input directly.")
    elif producer.op_type == "Transpose":
        parts.append("A Transpose (NHWC->NCHW) feeds the first Conv.")
    else:
        inits = {t.name: t for t in m.graph.initializer}
        shape = (numpy_helper.to_array(inits[producer.input[1]]).tolist()
                 if producer.op_type == "Reshape" and producer.input[1] in inits else "?")
        parts.append(f"The NHWC->NCHW change in front of the first Conv is a {producer.op_type} to "
                     f"{shape} (C=1, so tf2onnx's optimizer replaced the Transpose).")
    n_tr = sum(n.op_type == "Transpose" for n in m.graph.node)
    parts.append(f"{n_tr} Transpose node(s) in the graph.")
    for n in m.graph.node:
        pads = [list(a.ints) for a in n.attribute if a.name == "pads"]
        if n.op_type == "Conv" and pads and pads[0][:2] != pads[0][2:]:
            parts.append(f"Conv {n.name or n.output[0]} has asymmetric pads {pads[0]} (Keras 'same' "
                         "padding with stride 2 on an even size pads only bottom/right).")
    for n in m.graph.node:
        if n.op_type == "ReduceMean":
            axes = [list(a.ints) for a in n.attribute if a.name == "axes"]
            kd = [a.i for a in n.attribute if a.name == "keepdims"]
            parts.append(f"GlobalAveragePooling2D is ReduceMean (opset-13 form, axes attribute {axes}, "
                         f"keepdims {kd or [1]}).")
        if n.op_type == "Clip":
            parts.append("ReLU6 is Clip with min/max initializer inputs.")
            break
    if "MatMul" in ops:
        parts.append("Dense is MatMul + Add (no Gemm).")
    parts.append(f"Op types {ops}. Output is softmax probabilities.")
    return " ".join(dict.fromkeys(parts))


# --------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------

ORDER = [
    "cnn_plain_torch.onnx",
    "resnet_folded_torch.onnx",
    "resnet_bn_torch.onnx",
    "dscnn_relu_torch.onnx",
    "mlp_bn_dropout_torch.onnx",
    "cnn_wide_dynamo.onnx",
    "cnn_deep16_torch.onnx",
    "cnn_gap_keras_tf2onnx.onnx",
    "dscnn_keras_tf2onnx.onnx",
    "mlp_tabular_dynamo.onnx",
]


def paoding_inspect(path: Path) -> str:
    exe = OUT.parent.parent / "target" / "debug" / "paoding"
    if not exe.exists():
        return "skipped (no target/debug/paoding)"
    r = subprocess.run([str(exe), "inspect", str(path)], capture_output=True, text=True, timeout=300)
    return "ok" if r.returncode == 0 else f"exit {r.returncode}: {(r.stderr or r.stdout).strip()[:300]}"


def main() -> int:
    data = load_data()
    ranges = write_test_data(data)
    only = set(sys.argv[1:])
    results: list[dict] = []
    if not only or "torch" in only:
        build_torch(data, results)
    if not only or "tf" in only:
        build_tf(data, results)

    manifest_path = OUT / "manifest.json"
    entries = {}
    if only and manifest_path.exists():
        entries = {e["file"]: e for e in json.loads(manifest_path.read_text())}
    for r in results:
        task, layout = r["task"], r["layout"]
        x_name, shape = TEST_FILES[(task, layout)]
        x_te = np.load(OUT / x_name)
        y_te = np.load(OUT / TEST_Y_FILES[task])
        n_cls = int(y_te.max()) + 1
        v = verify_and_score(OUT / r["file"], x_te, y_te, n_cls)
        agree = float((v["pred"] == r["framework_pred"]).mean())
        assert abs(v["accuracy"] - r["framework_accuracy"]) < 1e-9, (r["file"], v["accuracy"], r["framework_accuracy"])
        size = (OUT / r["file"]).stat().st_size
        insp = paoding_inspect(OUT / r["file"])
        print(f"{r['file']:30s} opset {v['opset']:2d} params {r['params']:6d} {size/1024:6.1f} KB "
              f"ort acc {v['accuracy']:.4f} (framework {r['framework_accuracy']:.4f}, "
              f"pred agreement {agree:.4f}) paoding inspect: {insp}  ops {v['ops']}", flush=True)
        entries[r["file"]] = {
            "file": r["file"],
            "exporter": r["exporter"],
            "opset": v["opset"],
            "ir_version": v["ir_version"],
            "architecture": r["architecture"],
            "input_name": v["input_name"],
            "output_name": v["output_name"],
            "input_shape": shape,
            "input_layout": layout,
            "input_range": ranges[task],
            "output": "probabilities (softmax)" if "Softmax" in v["ops"] else "logits",
            "test_x": x_name,
            "test_y": TEST_Y_FILES[task],
            "params": r["params"],
            "onnxruntime_accuracy": round(v["accuracy"], 6),
            "framework_accuracy": round(r["framework_accuracy"], 6),
            "onnx_ops": v["ops"],
            "notes": r["notes"],
            "task": {"digits": "digits 8x8, split random_state=7",
                     "digits16": "digits upsampled to 16x16 (bilinear), split random_state=7",
                     "cancer": "breast_cancer (standardized), split random_state=7"}[task],
            "num_classes": n_cls,
            "test_size": int(len(y_te)),
            "training": r["recipe"],
        }
    manifest = [entries[f] for f in ORDER if f in entries]
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"wrote {manifest_path} ({len(manifest)} models)")
    return 0


if __name__ == "__main__":
    # tf2onnx derives some names from set iteration order (string hash seed): pin it.
    if os.environ.get("PYTHONHASHSEED") != "0":
        os.environ["PYTHONHASHSEED"] = "0"
        os.execv(sys.executable, [sys.executable, os.path.abspath(__file__), *sys.argv[1:]])
    sys.exit(main())
