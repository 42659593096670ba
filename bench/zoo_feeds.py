"""Realistic, deterministic inputs for the zoo's downloaded models (see ``bench/models.py``).

Random noise is a poor input for a real model: a detector answers ~0 everywhere, a classifier sits
in one corner of its softmax, and any result then passes an absolute tolerance. These generators
make inputs of the kind each model was trained on, from a seed: scene photos for YOLO, speech for
the voice-activity and wake-word models, music for the pitch tracker, file bytes for Magika. Only
numpy is used, so that the feeds do not depend on the runtime under test.
"""

from __future__ import annotations

import numpy as np

Feeds = dict[str, np.ndarray]

SAMPLE_RATE = 16000
VAD_CHUNK, VAD_CONTEXT = 512, 64  # silero-vad's wrapper prepends the previous 64 samples


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


# ------------------------------------------------------------------ openWakeWord
MEL_FFT, MEL_WINDOW, MEL_HOP, MEL_BANDS = 512, 400, 160, 32


def wakeword_audio_feeds(name: str, shape: tuple[int, int], seed: int) -> Feeds:
    """openWakeWord's melspectrogram input: 16 kHz speech as raw int16 sample values in float32
    (the library feeds its int16 microphone buffer unscaled), one row per batch entry."""
    rows = [speech_like(shape[1], seed * 1000 + row) * 32767.0 for row in range(shape[0])]
    return {name: np.round(np.stack(rows)).astype(np.float32)}


def _slaney_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale (librosa's default): linear below 1 kHz, logarithmic above."""
    step, log_step = 200.0 / 3, np.log(6.4) / 27
    return np.where(hz < 1000, hz / step, 15 + np.log(np.maximum(hz, 1e-9) / 1000) / log_step)


def _slaney_hz(mel: np.ndarray) -> np.ndarray:
    step, log_step = 200.0 / 3, np.log(6.4) / 27
    return np.where(mel < 15, mel * step, 1000 * np.exp(log_step * (mel - 15)))


def _mel_filters(rate: int, low: float = 60.0, high: float = 3800.0) -> np.ndarray:
    """[MEL_FFT // 2 + 1, MEL_BANDS] triangular filters on Slaney's mel scale, each scaled to
    unit area (librosa's ``norm="slaney"``), as in openWakeWord's melspectrogram model."""
    edges = _slaney_hz(np.linspace(*_slaney_mel(np.array([low, high])), MEL_BANDS + 2))
    freqs = np.linspace(0, rate / 2, MEL_FFT // 2 + 1)[:, None]
    rising = (freqs - edges[:-2]) / (edges[1:-1] - edges[:-2])
    falling = (edges[2:] - freqs) / (edges[2:] - edges[1:-1])
    return np.maximum(0, np.minimum(rising, falling)) * 2 / (edges[2:] - edges[:-2])


def wakeword_mel_feeds(name: str, shape: tuple[int, int, int, int], seed: int) -> Feeds:
    """openWakeWord's embedding-model input: [batch, frames, 32, 1] log-mel frames of speech,
    computed as its melspectrogram model does (25 ms Hann windows every 10 ms, 512-point FFT,
    32 Slaney mel bands from 60 to 3800 Hz, power in dB floored 80 dB below the peak) and rescaled as the library does
    (``x / 10 + 2``), which puts speech at about 6.5 to 11.5."""
    batch, frames, bands, _ = shape
    assert bands == MEL_BANDS
    samples = (frames - 1) * MEL_HOP + MEL_FFT
    filters = _mel_filters(SAMPLE_RATE)
    # A periodic 400-sample (25 ms) Hann window centred in the 512-point frame.
    window = np.zeros(MEL_FFT)
    window[(MEL_FFT - MEL_WINDOW) // 2 :][:MEL_WINDOW] = np.hanning(MEL_WINDOW + 1)[:-1]
    rows = []
    for row in range(batch):
        audio = speech_like(samples, seed * 1000 + row).astype(np.float64) * 32767.0
        starts = np.arange(frames) * MEL_HOP
        framed = audio[starts[:, None] + np.arange(MEL_FFT)] * window
        power = np.abs(np.fft.rfft(framed, axis=1)) ** 2
        db = 10 * np.log10(np.maximum(power @ filters, 1e-10))
        rows.append(np.maximum(db, db.max() - 80.0) / 10 + 2)
    return {name: np.stack(rows)[..., None].astype(np.float32)}


# ------------------------------------------------------------------ Basic Pitch
def music_like(samples: int, seed: int, rate: int = 22050) -> np.ndarray:
    """A few overlapping plucked notes (MIDI 45 to 84, eight decaying harmonics each, 0.15 to
    0.6 s long) over a little noise, peak about 0.5 (float32): what a pitch tracker expects."""
    rng = np.random.default_rng(seed)
    wave = np.zeros(samples)
    start = 0
    while start < samples:
        length = int(rng.uniform(0.15, 0.6) * rate)
        t = np.arange(min(2 * length, samples - start)) / rate
        freq = 440.0 * 2 ** ((int(rng.integers(45, 85)) - 69) / 12)
        note = sum(np.sin(2 * np.pi * k * freq * t + rng.uniform(0, 6.3)) / k for k in range(1, 9))
        envelope = np.exp(-t * rng.uniform(2.0, 6.0)) * np.minimum(1.0, t * 200)
        wave[start : start + t.size] += rng.uniform(0.4, 1.0) * note * envelope
        start += length
    wave = 0.5 * wave / np.abs(wave).max() + rng.normal(0, 0.003, samples)
    return wave.astype(np.float32)


def music_feeds(name: str, shape: tuple[int, int, int], seed: int) -> Feeds:
    """Basic Pitch's input: [batch, 43844, 1] windows of 22.05 kHz mono music."""
    rows = [music_like(shape[1], seed * 1000 + row) for row in range(shape[0])]
    return {name: np.stack(rows)[..., None]}


# ------------------------------------------------------------------ Magika
MAGIKA_PADDING = 256  # the token after the 256 byte values, for "no byte here"


def _text_file(rng: np.random.Generator, kind: int) -> bytes:
    """A few kilobytes of a plausible text file: Python, CSV or JSON, by ``kind``."""
    words = ["value", "count", "name", "total", "index", "items", "result", "path", "size"]
    lines: list[str] = []
    if kind == 0:
        lines += ["import os", "import sys", ""]
        for i in range(40):
            a, b = rng.choice(words, 2)
            lines += [f"def {a}_{i}({b}):", f"    return {b} * {int(rng.integers(1, 99))}", ""]
    elif kind == 1:
        lines.append(",".join(words[:5]))
        for _ in range(120):
            lines.append(",".join(str(round(float(v), 3)) for v in rng.normal(0, 50, 5)))
    else:
        for i in range(60):
            a = rng.choice(words)
            lines.append(f'  {{"{a}": {int(rng.integers(0, 1000))}, "id": {i}}},')
        lines = ["[", *lines, "]"]
    return ("\n".join(lines) + "\n").encode()


def file_bytes_feeds(name: str, shape: tuple[int, int], seed: int) -> Feeds:
    """Magika's input: [batch, 2048] int32, the first and the last 1024 bytes of a text file
    (leading and trailing whitespace stripped, as Magika does), padded with token 256."""
    rng = np.random.default_rng(seed)
    half = shape[1] // 2
    rows = []
    for row in range(shape[0]):
        content = _text_file(rng, (seed + row) % 3).strip()
        head = np.frombuffer(content[:half], np.uint8).astype(np.int32)
        tail = np.frombuffer(content[-half:], np.uint8).astype(np.int32)
        out = np.full(shape[1], MAGIKA_PADDING, np.int32)
        out[: head.size] = head
        out[shape[1] - tail.size :] = tail
        rows.append(out)
    return {name: np.stack(rows)}


# ------------------------------------------------------------------ OSKut (Thai word segmentation)
OSKUT_WINDOW, OSKUT_CHARS, OSKUT_TYPES = 21, 178, 12


def thai_window_feeds(names: tuple[str, str, str], chars: int, seed: int) -> Feeds:
    """OSKut's LSTM refiner inputs for a ``chars``-character text, one row per character, as
    float32 [chars, 21]: the ids of the next 10 characters, the previous 10 (reversed) and the
    character itself (space = id 0 pads the ends); their character classes; and the extra
    features row (entropy and probability truncated to ints, as Keras' embedding does, dictionary
    word-start and -end flags, zero padding). Character ids follow a Zipf-like law, as letters do.
    """
    rng = np.random.default_rng(seed)
    ranks = np.arange(1, OSKUT_CHARS)
    text = rng.choice(ranks, chars, p=(1 / ranks) / (1 / ranks).sum())
    classes = np.random.default_rng(0).integers(0, OSKUT_TYPES, OSKUT_CHARS)  # a fixed table
    half = (OSKUT_WINDOW - 1) // 2
    padded = np.concatenate([np.zeros(half, int), text, np.zeros(half, int)])
    windows = np.stack(
        [
            np.concatenate([padded[i + 1 : i + half + 1], padded[i - half : i][::-1], [padded[i]]])
            for i in range(half, half + chars)
        ]
    )
    extra = np.zeros((chars, OSKUT_WINDOW))
    extra[:, 0] = rng.integers(0, 3, chars)  # entropy in nats, truncated
    starts = rng.random(chars) < 0.3  # dictionary words of about three characters
    extra[:, 2] = starts
    extra[:, 3] = np.roll(starts, -1)
    arrays = (windows, classes[windows], extra)
    return {name: a.astype(np.float32) for name, a in zip(names, arrays, strict=True)}
