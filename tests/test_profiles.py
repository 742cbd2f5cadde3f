"""Device profiles: every shipped one validates; a broken one fails with a clear line; auto picks sensibly."""

from __future__ import annotations

from pathlib import Path

import pytest

from bcaudio.config import StreamSettings
from bcaudio.runtime.package.profiles import DeviceInfo, ProfileError, load_profile, pick_profile, shipped_profiles

SHIPPED = ["cpu-2core", "cpu-8core-avx512", "desktop-rtx4090", "jetson-orin", "datacenter-h100", "kiosk-lowpower"]


def test_every_shipped_profile_validates() -> None:
    assert set(SHIPPED) <= set(shipped_profiles())
    for name in SHIPPED:
        profile = load_profile(name)
        assert profile.session.provider in ("cpu", "cuda")
        if profile.session.provider == "cuda":  # the int8 trap: dynamic int8 is slower than fp32 on CUDA
            assert "int8" not in profile.recipe.values()
        else:  # fp16 on CPU is slower than fp32
            assert "fp16" not in profile.recipe.values()


@pytest.mark.parametrize("body,pattern", [
    ("[session]\nprovider = 'tpu'\n", r"session.provider 'tpu'"),
    ("[session]\nthreads = 2\n", r"unknown key\(s\) \['threads'\]"),
    ("[session]\nintra_op_threads = 'two'\n", r"intra_op_threads: expected int, got str"),
    ("[recipe]\nspeller = 'int4'\n", r"unknown graph 'speller'"),
    ("[recipe]\nllm = 'int3'\n", r"recipe.llm = 'int3'"),
    ("[extras]\nx = 1\n", r"unknown section"),
    ("[session\n", r"not valid TOML"),
    ("[generation]\nstream_chunk_growth = 0.5\n", r"stream_chunk_growth must be in \[1, 4\]"),
    ("[generation]\nstream_max_chunk_frames = -1\n", r"stream_max_chunk_frames >= 0"),
    ("[generation]\nflow_steps = 6\nstream_first_flow_steps = 7\n",
     r"stream_first_flow_steps = 7; set it to 1 .. flow_steps \(6\), or 0"),
    ("[generation]\nstream_first_flow_steps = -1\n", r"stream_first_flow_steps = -1; set it to 1 .. flow_steps"),
])
def test_broken_profile_fails_with_one_clear_line(tmp_path: Path, body: str, pattern: str) -> None:
    path = tmp_path / "mine.toml"
    path.write_text(body)
    with pytest.raises(ProfileError, match=pattern) as info:
        load_profile(str(path))
    assert "\n" not in str(info.value) and "mine.toml" in str(info.value)


def test_unknown_name_lists_the_shipped_ones() -> None:
    with pytest.raises(ProfileError, match="shipped: .*cpu-2core"):
        load_profile("toaster")


def test_auto_pick() -> None:
    assert pick_profile(DeviceInfo(2, ["avx2"], "")).name == "cpu-2core"
    assert pick_profile(DeviceInfo(16, ["avx2", "avx512_vnni"], "")).name == "cpu-8core-avx512"
    assert pick_profile(DeviceInfo(16, [], "NVIDIA H100 80GB HBM3")).name == "datacenter-h100"
    assert pick_profile(DeviceInfo(16, [], "NVIDIA GeForce RTX 4090")).name == "desktop-rtx4090"


def test_stream_settings_come_from_the_profile_and_the_flag_overrides_them() -> None:
    from bcaudio.runtime.package.profiles import stream_settings

    profile = load_profile("cpu-2core")
    assert stream_settings(None, None) is None  # the package's own: whole segments
    assert stream_settings(profile, None).chunk_frames == profile.generation.stream_chunk_frames
    assert stream_settings(profile, 0).chunk_frames == 0
    assert stream_settings(profile, None).first_flow_steps == profile.generation.stream_first_flow_steps
    assert stream_settings(None, 5).left_context_frames == StreamSettings().left_context_frames
    with pytest.raises(ProfileError, match="--stream-chunk-frames must be >= 0"):
        stream_settings(profile, -1)
