"""The recording conditions (app/audio/conditions.py) do what their names say, on real speech.

They are the one definition the int8 export's calibration and gate, the start-up self-check and the
benchmarks derive their audio with, so each is checked against its own description here.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
import soundfile as sf

from app.audio.conditions import (
    AS_RECORDED,
    CLIPPED,
    CONDITION_NAMES,
    NOISY,
    QUIETER,
    TELEPHONE,
    derive,
)
from tests.support.data import speech_files

SR = 16000


@pytest.fixture(scope="module")
def speech() -> npt.NDArray[np.float32]:
    wave, rate = sf.read(speech_files()["vctk_p226"][0], dtype="float32")
    assert rate == SR
    return np.asarray(wave, dtype=np.float32)


def _band_energy(wave: npt.NDArray[np.float32], low: float, high: float) -> float:
    spectrum = np.abs(np.fft.rfft(wave.astype(np.float64))) ** 2
    freqs = np.fft.rfftfreq(wave.size, 1 / SR)
    return float(spectrum[(freqs >= low) & (freqs < high)].sum())


def test_the_conditions_in_the_order_manifests_list_them() -> None:
    assert CONDITION_NAMES == (AS_RECORDED, TELEPHONE, QUIETER, CLIPPED, NOISY)


def test_every_condition_keeps_length_and_type_and_is_deterministic(speech: npt.NDArray[np.float32]) -> None:
    for condition in CONDITION_NAMES:
        first, again = derive(condition, speech), derive(condition, speech)
        assert first.dtype == np.float32, condition
        assert first.shape == speech.shape, condition
        assert float(np.abs(first).max()) <= 1.0, condition
        np.testing.assert_array_equal(first, again, err_msg=condition)
    np.testing.assert_array_equal(derive(AS_RECORDED, speech), speech)


def test_telephone_band_holds_nothing_above_4_khz_and_the_speech_below(
    speech: npt.NDArray[np.float32],
) -> None:
    narrow = derive(TELEPHONE, speech)
    total = _band_energy(narrow, 0, SR / 2)
    assert _band_energy(speech, 4000, SR / 2) / _band_energy(speech, 0, SR / 2) > 1e-3  # wideband before
    assert _band_energy(narrow, 4000, SR / 2) / total < 1e-6  # the 8 kHz file's band
    # Below 3.4 kHz it is the same speech, through mu-law (about 38 dB SNR) and two resamplings.
    ratio = _band_energy(narrow, 100, 3400) / _band_energy(speech, 100, 3400)
    assert 0.9 < ratio < 1.1
    assert float(np.corrcoef(narrow, speech)[0, 1]) > 0.95


def test_quieter_clipped_and_noisy_are_what_they_say(speech: npt.NDArray[np.float32]) -> None:
    np.testing.assert_allclose(derive(QUIETER, speech), speech * np.float32(0.1), rtol=1e-6)
    clipped = derive(CLIPPED, speech)
    assert float(np.abs(clipped).max()) == 1.0
    assert float(np.mean(np.abs(clipped) == 1.0)) > 0.01  # really clipped, not just louder
    noise = derive(NOISY, speech).astype(np.float64) - speech
    snr_db = 10 * np.log10(np.mean(np.square(speech, dtype=np.float64)) / np.mean(noise**2))
    assert snr_db == pytest.approx(10.0, abs=0.1)
    assert abs(float(np.corrcoef(noise, np.roll(noise, 1))[0, 1])) < 0.05  # white


def test_an_unknown_condition_is_refused(speech: npt.NDArray[np.float32]) -> None:
    with pytest.raises(ValueError, match="unknown recording condition 'underwater'; known: as recorded"):
        derive("underwater", speech)
