"""End-to-end checks on the model zoo: import, run on the numpy target, export, against onnxruntime.

Every zoo entry is loaded with ``eqsat.load`` (specialized to the entry's input shapes, with its bound
constants), run with the numpy reference target and compared output by output with onnxruntime on
the original model. The exported model (``eqsat.to_onnx``) must pass the ONNX checker and give the
same outputs under onnxruntime. The real models from wheels (all but the PP-OCRv4 ones, which
test_cpu_conformance and test_optimize cover) also run on the cpu target and through
``eqsat.optimize``; those whose entry says ``slow`` only under ``-m slow``. Downloaded entries are
skipped, with the reason, only when their download fails.
"""

from __future__ import annotations

import subprocess
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

import eqsat
from bench import models as zoo

ort = pytest.importorskip("onnxruntime")

RTOL, ATOL = 1e-3, 1e-4
# Entries whose numpy-target run takes more than a minute on a 2-core machine.
SLOW: set[str] = set()
# Real models whose cpu-target and optimize() runs are checked here: every downloaded source but
# "ppocr" (covered by test_cpu_conformance and test_optimize). Entries with ``slow`` set (more than
# ~20 s with a cold kernel cache) are slow-marked.
NOT_REAL = {"synthetic", "ppocr"}


def _params() -> list[Any]:
    return [
        pytest.param(name, marks=[pytest.mark.slow] if name in SLOW else [], id=name)
        for name in zoo.ZOO
    ]


def _model(entry: zoo.ZooEntry) -> onnx.ModelProto | Path:
    try:
        return entry.model()
    except zoo.ZooDownloadError as exc:
        pytest.skip(f"{entry.name}: download failed: {exc}")


def _session(model: onnx.ModelProto | Path) -> Any:
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    options = ort.SessionOptions()
    # The oracle is the model as written, not onnxruntime's fused rewrite of it.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def _run_ort(model: onnx.ModelProto | Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = _session(model)
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds), strict=True))


def _compare(name: str, got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert list(got) == list(want), f"{name}: outputs {list(got)}, onnxruntime has {list(want)}"
    for key, expected in want.items():
        actual = np.asarray(got[key])
        assert actual.dtype == expected.dtype, f"{name}/{key}: dtype {actual.dtype}"
        assert actual.shape == expected.shape, f"{name}/{key}: shape {actual.shape}"
        np.testing.assert_allclose(
            actual, expected, rtol=RTOL, atol=ATOL, err_msg=f"{name}: output {key!r}"
        )


class _Case:
    """What both tests of one entry share: the model, its feeds, onnxruntime's outputs, the graph."""

    def __init__(self, entry: zoo.ZooEntry):
        self.entry = entry
        self.model = _model(entry)
        self.feeds = entry.feeds(0)
        self.expected = _run_ort(self.model, self.feeds)
        self.graph = eqsat.load(self.model, **entry.load_args())


@pytest.fixture(scope="module")
def cases() -> dict[str, _Case]:
    return {}


def _case(cases: dict[str, _Case], name: str) -> _Case:
    if name not in cases:
        cases[name] = _Case(zoo.get(name))
    return cases[name]


# ------------------------------------------------------------------ the zoo itself
@pytest.mark.parametrize("name", zoo.ZOO)
def test_entry_is_a_valid_model(name: str) -> None:
    entry = zoo.get(name)
    model = _model(entry)
    proto = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))
    onnx.checker.check_model(proto, full_check=True)
    session = _session(model)
    feeds = entry.feeds(0)
    names = set(entry.input_shapes) | set(entry.constants)
    assert not set(entry.input_shapes) & set(entry.constants)
    assert {i.name for i in session.get_inputs()} == set(feeds) == names
    assert set(entry.input_feeds(0)) == set(entry.input_shapes)
    for spec in session.get_inputs():
        array = feeds[spec.name]
        dtypes = {"tensor(float)": np.float32, "tensor(int64)": np.int64, "tensor(int32)": np.int32}
        assert array.dtype == dtypes[spec.type]
        np.testing.assert_array_equal(array, entry.feeds(0)[spec.name])  # deterministic
        if spec.name in entry.constants:
            np.testing.assert_array_equal(array, entry.constants[spec.name])
            continue
        assert array.shape == entry.input_shapes[spec.name]
        # Different seeds give different data; a recurrent state starts at zero whatever the seed.
        if array.any():
            assert not np.array_equal(array, entry.feeds(1)[spec.name])
    for output in session.run(None, feeds):
        assert np.isfinite(output).all()


def test_synthetic_path_is_cached_and_stable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EQSAT_CACHE", str(tmp_path))
    entry = zoo.get("mlp")
    path = entry.path()
    assert path == (tmp_path / "zoo" / "mlp.onnx").resolve()
    mtime = path.stat().st_mtime_ns
    assert entry.path() == path and path.stat().st_mtime_ns == mtime  # unchanged: not rewritten
    assert onnx.load(str(path)).graph.name == "mlp"
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_failed_download_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EQSAT_CACHE", str(tmp_path))

    def no_network(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: Could not find a version\n")

    monkeypatch.setattr(zoo.subprocess, "run", no_network)
    with pytest.raises(zoo.ZooDownloadError, match=r"rapidocr-onnxruntime==1\.4\.4.*exited with 1"):
        zoo.fetch_ppocr()
    assert not list((tmp_path / "zoo").iterdir())  # the temporary download folder is gone


def test_corrupt_download_is_rejected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EQSAT_CACHE", str(tmp_path))

    def fake_wheel(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        folder = Path(cmd[cmd.index("-d") + 1])
        with zipfile.ZipFile(folder / "nudenet-3.4.2-py3-none-any.whl", "w") as wheel:
            wheel.writestr(zoo.NUDENET_MEMBER_DIR + "320n.onnx", b"not the model")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(zoo.subprocess, "run", fake_wheel)
    with pytest.raises(zoo.ZooIntegrityError, match=r"320n\.onnx .* has sha256 .*expected c15d82"):
        zoo.fetch_nudenet()
    assert not list((tmp_path / "zoo" / "nudenet").iterdir())  # nothing half-written is left


def test_bound_constants_reach_the_loader() -> None:
    entry = zoo.get("silero_vad")
    assert entry.load_args() == {
        "input_shapes": entry.input_shapes,
        "constants": {"sr": entry.constants["sr"]},
    }
    assert int(entry.constants["sr"]) == 16000 and entry.constants["sr"].dtype == np.int64
    assert "sr" in entry.feeds(0) and "sr" not in entry.input_feeds(0)


def test_realistic_feeds() -> None:
    image = zoo.scene_image_feeds("images", (1, 3, 64, 64), 0)["images"]
    assert image.min() >= 0 and image.max() <= 1 and image.std() > 0.1
    audio = zoo.speech_like(16000, 0)
    assert np.abs(audio).max() < 0.4
    spectrum = np.abs(np.fft.rfft(audio))
    assert spectrum[80:4000].sum() > 0.9 * spectrum.sum()  # the energy is in the voice band
    seq = zoo.vad_feeds(0, state="hc", sr=False, chunks=3)
    # Consecutive windows overlap by the 64-sample context, as silero-vad's wrapper feeds them.
    np.testing.assert_array_equal(seq["input"][1, :64], seq["input"][0, -64:])
    assert set(seq) == {"input", "h", "c"}


def test_new_feeds_are_realistic() -> None:
    # Log-mel frames of speech sit where openWakeWord's own front end puts them (about 6.5-11.5).
    mel = zoo.zoo_feeds.wakeword_mel_feeds("x", (1, 76, 32, 1), 0)["x"]
    assert mel.shape == (1, 76, 32, 1) and 5.0 < mel.mean() < 12.0 and mel.std() > 0.5
    audio = zoo.zoo_feeds.wakeword_audio_feeds("x", (1, 1760), 0)["x"]
    assert 3000 < np.abs(audio).max() < 32768 and np.array_equal(audio, np.round(audio))
    music = zoo.zoo_feeds.music_like(22050, 0)
    spectrum = np.abs(np.fft.rfft(music))
    assert np.abs(music).max() < 0.6 and spectrum[100:5000].sum() > 0.9 * spectrum.sum()
    tokens = zoo.zoo_feeds.file_bytes_feeds("bytes", (2, 2048), 0)["bytes"]
    assert tokens.dtype == np.int32 and tokens.min() >= 0 and tokens.max() <= 256
    # Text: printable bytes, the head starts with content (stripped) and padding ends each half.
    head = tokens[0, :1024]
    assert 32 < head[0] < 127 and np.isin(head[head < 256], [9, 10, *range(32, 127)]).all()
    thai = zoo.zoo_feeds.thai_window_feeds(("c", "t", "x"), 30, 0)
    assert thai["c"].shape == (30, 21) and thai["c"].max() < zoo.zoo_feeds.OSKUT_CHARS
    # Each row ends with its own character, which starts the next row's reversed left context.
    np.testing.assert_array_equal(thai["c"][1:, 10], thai["c"][:-1, 20])


def test_wheel_sources_pin_their_downloads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EQSAT_CACHE", str(tmp_path))
    commands = []

    def no_network(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        commands.append(cmd)
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: no network\n")

    monkeypatch.setattr(zoo.subprocess, "run", no_network)
    sources = {e.source for e in zoo.ZOO.values()} - {"synthetic", "ppocr", "nudenet", "silero"}
    for source in sorted(sources):
        with pytest.raises(zoo.ZooDownloadError, match=r"==[0-9.]+.*exited with 1"):
            zoo.fetch_package(source)
    assert len(commands) == len(sources) >= 6
    # Magika's pure wheel holds the model; its platform wheels add a 12 MB binary.
    magika = next(c for c in commands if any(a.startswith("magika==") for a in c))
    assert magika[magika.index("--platform") + 1] == "any"


def test_cli(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("EQSAT_CACHE", str(tmp_path))
    assert zoo.main(["list"]) == 0
    listing = capsys.readouterr().out
    assert all(name in listing for name in zoo.ZOO)
    assert zoo.main(["path", "resnet_block"]) == 0
    printed = Path(capsys.readouterr().out.strip())
    assert printed.is_absolute() and printed.is_file()


# ------------------------------------------------------------------ eqsat on the zoo
@pytest.mark.parametrize("name", _params())
def test_numpy_target_matches_onnxruntime(cases: dict[str, _Case], name: str) -> None:
    case = _case(cases, name)
    for value in case.graph.inputs:
        if value.name in case.entry.input_shapes:
            assert value.shape == case.entry.input_shapes[value.name]
    got = eqsat.compile(case.graph, target="numpy").run(case.entry.input_feeds(0))
    _compare(name, got, case.expected)


def _real_params() -> list[Any]:
    return [
        pytest.param(name, marks=[pytest.mark.slow] if entry.slow else [], id=name)
        for name, entry in zoo.ZOO.items()
        if entry.source not in NOT_REAL
    ]


@pytest.mark.parametrize("name", _real_params())
def test_cpu_target_matches_onnxruntime(cases: dict[str, _Case], name: str) -> None:
    case = _case(cases, name)
    got = eqsat.compile(case.graph, target="cpu").run(case.entry.input_feeds(0))
    _compare(f"{name} (cpu)", got, case.expected)


@pytest.mark.parametrize("name", _real_params())
def test_optimize_matches_onnxruntime(cases: dict[str, _Case], name: str) -> None:
    case = _case(cases, name)
    result = eqsat.optimize(case.model, target="cpu", **case.entry.load_args())
    assert result.report.cost_after <= result.report.cost_before
    got = eqsat.compile(result.graph, target="cpu").run(case.entry.input_feeds(0))
    _compare(f"{name} (optimized)", got, case.expected)


@pytest.mark.parametrize("name", _params())
def test_export_round_trip(cases: dict[str, _Case], name: str) -> None:
    case = _case(cases, name)
    exported = eqsat.to_onnx(case.graph)
    assert isinstance(exported, onnx.ModelProto)
    onnx.checker.check_model(exported, full_check=True)
    for spec in exported.graph.input:
        dims = tuple(d.dim_value for d in spec.type.tensor_type.shape.dim)
        assert dims == case.entry.input_shapes[spec.name], f"{name}: exported input {spec.name}"
    session = _session(exported)
    feeds = {i.name: case.feeds[i.name] for i in session.get_inputs()}
    names = [o.name for o in session.get_outputs()]
    got = dict(zip(names, session.run(names, feeds), strict=True))
    _compare(f"{name} (exported)", got, case.expected)


def test_symbolic_dims_fold_away(cases: dict[str, _Case]) -> None:
    # Specializing the symbolic batch/sequence dims turns the traced Shape->Gather->Concat shape
    # arithmetic into constants, leaving Reshapes with known target shapes.
    graph = _case(cases, "transformer_dynamic").graph
    counts = graph.op_counts()
    assert not {"Shape", "Gather", "Concat"} & set(counts), counts
    reshapes = [n for n in graph.nodes if n.op == "Reshape"]
    assert len(reshapes) == 4 and all(n.inputs[1].is_const for n in reshapes)
