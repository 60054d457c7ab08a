"""Each family's preparation recipe: which model of the user's folder each step reads, the
fallbacks and the ``--prep`` overrides; MEMO's audio_proj in fp32."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from diffusers import AutoencoderKL
from test_memo import MEMO_MEL, _randomized

from talkfast.errors import InputError
from talkfast.models import loading
from talkfast.pipeline.conditioning import AudioConditioner
from talkfast.pipeline.memo import MemoPipeline
from talkfast.pipeline.recipes import parse_overrides, plan_preparation

HALLO_TASK = "face_analysis/models/face_landmarker_v2_with_blendshapes.task"


def _touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_hallo_folder_with_every_model_runs_every_original_step(tmp_path):
    task = _touch(tmp_path / HALLO_TASK)
    _touch(tmp_path / "face_analysis/models/scrfd_10g_bnkps.onnx")
    kim = _touch(tmp_path / "audio_separator/Kim_Vocal_2.onnx")
    plan = plan_preparation("hallo", tmp_path)
    assert list(plan.sources) == ["landmarks", "identity", "vocals"]
    assert plan.path("landmarks") == task and plan.path("vocals") == kim
    assert plan.path("identity") == tmp_path / "face_analysis/models"
    rec = plan.record()
    assert rec["vocals"] == {"ran": "original", "model": str(kim)}


def test_missing_models_fall_back_with_one_warning_each_naming_the_file(tmp_path, caplog):
    _touch(tmp_path / "audio_separator/Kim_Vocal_2.onnx")
    plan = plan_preparation("hallo", tmp_path)
    assert plan.path("landmarks") is None and plan.path("identity") is None
    with caplog.at_level(logging.WARNING):
        plan.warn_fallbacks()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert any(str(tmp_path / HALLO_TASK) in m and "Haar" in m for m in lines)
    assert plan.record()["identity"]["ran"] == "fallback"
    assert "not found" in plan.record()["identity"]["why"]


def test_overrides_name_a_file_skip_a_step_or_fail_clearly(tmp_path):
    other = _touch(tmp_path / "elsewhere" / "kim.onnx")
    plan = plan_preparation("memo", tmp_path, parse_overrides([f"vocals={other}", "emotion=none"]))
    assert plan.path("vocals") == other and plan.path("emotion") is None
    assert plan.record()["emotion"]["why"] == "skipped with --prep"
    with pytest.raises(InputError, match="no such file"):
        plan_preparation("hallo", tmp_path, {"vocals": str(tmp_path / "absent.onnx")})
    with pytest.raises(InputError, match="not a preparation step of hallo"):
        plan_preparation("hallo", tmp_path, {"emotion": "none"})
    with pytest.raises(InputError, match="unknown step"):
        parse_overrides(["lips=x"])
    with pytest.raises(InputError, match="STEP=PATH"):
        parse_overrides(["vocals"])


def test_embedded_model_keeps_its_own_preparation(tmp_path):
    assert plan_preparation("small", tmp_path).sources == {}


def test_echomimic_face_box_comes_from_the_facenet_pytorch_package(tmp_path):
    plan = plan_preparation("echomimic", tmp_path)
    src = plan.sources["face_box"]
    if src.path is None:
        assert "not installed" in src.why
    else:
        assert (src.path / "data" / "pnet.pt").is_file()


def test_memo_audio_proj_runs_in_fp32_as_memo_does():
    net = _randomized(MEMO_MEL)
    fp32_proj = copy.deepcopy(net.audioproj).float()
    vae = AutoencoderKL(**loading.small_vae_config(MEMO_MEL)).eval()
    pipe = MemoPipeline(net, vae, AudioConditioner("mel"), dtype=torch.bfloat16)
    feats = torch.randn(4, 5, MEMO_MEL.audio_layers, MEMO_MEL.audio_feature_dim)
    with torch.no_grad():
        out = pipe.audio_tokens(feats)
        want = fp32_proj(feats[None]).to(torch.bfloat16)
        half = pipe.net.audioproj(feats[None].to(torch.bfloat16))
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, want, rtol=0, atol=0)
    assert not torch.equal(out, half)  # the bf16 module gives other tokens
