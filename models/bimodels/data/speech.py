"""Keyword-spotting audio: log-mel features, WAV reading, espeak-ng synthesis, and the
Speech Commands folder layout.

Features follow the Speech Commands baselines: 1 s of 16 kHz audio, 25 ms Hann windows every
10 ms (98 frames), a 512-point FFT, 40 mel bands (HTK mel scale), natural log.

Generated data speaks the 10 keywords (and other words, as "unknown") with espeak-ng in
several voices, speeds and pitches, shifts them in time, and adds noise at a random SNR;
"silence" is noise alone. Without espeak-ng the task says so and cannot run.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import wave
from pathlib import Path

import numpy as np

from .errors import DataError

RATE = 16000
KEYWORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
LABELS = (*KEYWORDS, "silence", "unknown")
UNKNOWN_WORDS = (
    "bed",
    "bird",
    "cat",
    "dog",
    "happy",
    "house",
    "marvin",
    "sheila",
    "tree",
    "wow",
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
)
VOICES = ("en-us", "en-gb", "en-gb-scotland", "en-us+f3", "en-gb+f2", "en-us+m3", "en-gb-x-rp", "en-029")


def mel_filterbank(bands: int = 40, fft: int = 512, rate: int = RATE) -> np.ndarray:
    def mel(f):
        return 2595.0 * np.log10(1.0 + f / 700.0)

    def hz(m):
        return 700.0 * (10 ** (m / 2595.0) - 1.0)

    points = hz(np.linspace(mel(20.0), mel(rate / 2), bands + 2))
    bins = np.floor((fft + 1) * points / rate).astype(int)
    fb = np.zeros((bands, fft // 2 + 1))
    for i in range(bands):
        left, centre, right = bins[i], bins[i + 1], max(bins[i + 2], bins[i + 1] + 1)
        fb[i, left:centre] = (np.arange(left, centre) - left) / max(1, centre - left)
        fb[i, centre:right] = (right - np.arange(centre, right)) / max(1, right - centre)
    return fb


_FB = mel_filterbank()


def log_mel(audio: np.ndarray) -> np.ndarray:
    """1 s of 16 kHz audio (float, any scale) -> 40 x 98 log-mel features (float32)."""
    audio = np.asarray(audio, np.float64)
    frames = np.lib.stride_tricks.sliding_window_view(audio, 400)[::160]
    spectrum = np.abs(np.fft.rfft(frames * np.hanning(400), n=512)) ** 2
    return np.log(spectrum @ _FB.T + 1e-6).T.astype(np.float32)


def read_wav(data: bytes | Path, name: str = "") -> tuple[np.ndarray, int]:
    """(mono float samples in [-1, 1], rate) of a 16-bit PCM WAV file or its bytes."""
    where = Path(name or str(data)) if isinstance(data, Path) else Path(name or "<wav>")
    try:
        with wave.open(io.BytesIO(data) if isinstance(data, bytes) else str(data), "rb") as w:
            if w.getsampwidth() != 2:
                raise DataError(where, f"expected 16-bit PCM samples, got {8 * w.getsampwidth()}-bit")
            raw = w.readframes(w.getnframes())
            channels, rate = w.getnchannels(), w.getframerate()
    except (wave.Error, EOFError) as exc:
        raise DataError(where, f"not a valid WAV file: {exc}") from None
    except FileNotFoundError:
        raise DataError(where, "file not found") from None
    samples = np.frombuffer(raw, "<i2").astype(np.float32) / 32768.0
    return samples.reshape(-1, channels).mean(axis=1), rate


def fit_second(audio: np.ndarray, rate: int, shift: int = 0) -> np.ndarray:
    """Resample to 16 kHz (linear), then centre in 1 s (cropped or zero-padded), shifted by `shift` samples."""
    if rate != RATE:
        audio = np.interp(
            np.arange(int(len(audio) * RATE / rate)) * rate / RATE, np.arange(len(audio)), audio
        )
    out = np.zeros(RATE, np.float64)
    audio = audio[:RATE]
    start = min(max(0, (RATE - len(audio)) // 2 + shift), RATE - len(audio))
    out[start : start + len(audio)] = audio
    return out


def espeak_available() -> bool:
    return shutil.which("espeak-ng") is not None


def speak(
    word: str, voice: str, speed: int, pitch: int, attempts: int = 3, timeout: float = 30.0
) -> tuple[np.ndarray, int]:
    """One word spoken by espeak-ng. A synthesis that hangs (or a host too loaded to finish
    it in time) is retried; only a repeated failure stops the run, with what to check."""
    cmd = ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout", word]
    where = shutil.which("espeak-ng") or "espeak-ng"  # what a DataError names
    for _ in range(attempts):
        try:
            proc = subprocess.run(cmd, capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            continue
        if proc.returncode != 0 or not proc.stdout:
            raise DataError(where, f"failed for {word!r} in voice {voice}: {proc.stderr.decode()[-200:]}")
        return read_wav(proc.stdout, f"espeak-ng {voice} {word}")
    raise DataError(
        where,
        f"did not finish {word!r} in voice {voice} within {timeout:.0f} s, {attempts} times: "
        f"check that `{' '.join(cmd)}` runs here",
    )


def generate(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(features count x 40 x 98, labels) spoken by espeak-ng; labels balanced over the 12 classes."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(count) % len(LABELS))
    features = np.empty((count, 40, 98), np.float32)
    for i, label in enumerate(labels):
        noise = rng.normal(0, 1, RATE)
        if LABELS[label] == "silence":
            audio = noise * 10 ** rng.uniform(-3.5, -1.5)
        else:
            word = LABELS[label] if label < len(KEYWORDS) else UNKNOWN_WORDS[rng.integers(len(UNKNOWN_WORDS))]
            voice = VOICES[rng.integers(len(VOICES))]
            speech, rate = speak(word, voice, int(rng.integers(110, 210)), int(rng.integers(20, 85)))
            audio = fit_second(speech, rate, shift=int(rng.integers(-2000, 2000)))
            power = max(float(np.mean(audio**2)), 1e-10)
            snr_db = rng.uniform(0, 25)
            audio = audio + noise * np.sqrt(power / 10 ** (snr_db / 10))
        features[i] = log_mel(audio)
    return features, labels.astype(np.int64)


def read_speech_commands(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Features and labels of the Speech Commands folder (word folders of 1 s 16 kHz WAVs, with
    testing_list.txt / validation_list.txt naming the held-out files); other words are "unknown"."""
    root = Path(root)
    listed = root / "testing_list.txt"
    if not listed.exists():
        raise DataError(listed, "file not found (the Speech Commands folder has testing_list.txt)")
    test = set(listed.read_text().split())
    held = test | (
        set((root / "validation_list.txt").read_text().split())
        if (root / "validation_list.txt").exists()
        else set()
    )
    files = sorted(p for p in root.glob("*/*.wav") if not p.parent.name.startswith("_"))
    if not files:
        raise DataError(root, "no word folders of .wav files")
    features, labels = [], []
    for path in files:
        rel = f"{path.parent.name}/{path.name}"
        if (split == "test") != (rel in test) or (split == "train" and rel in held):
            continue
        audio, rate = read_wav(path)
        features.append(log_mel(fit_second(audio, rate)))
        word = path.parent.name
        labels.append(LABELS.index(word) if word in KEYWORDS else LABELS.index("unknown"))
    if not features:
        raise DataError(root, f"no {split} files")
    return np.stack(features), np.asarray(labels, dtype=np.int64)
