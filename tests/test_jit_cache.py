"""Where tdppo keeps torch's compile caches (``tdppo.jit.cache_dir``): a user's own
``TORCHINDUCTOR_CACHE_DIR`` wins and is left as it was; otherwise a stable folder under
``TDPPO_CACHE_DIR`` or the XDG cache home, which torch is then told to use."""

from __future__ import annotations

import os

from tdppo import jit


def test_a_users_own_setting_is_kept(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    monkeypatch.setenv("TDPPO_CACHE_DIR", str(tmp_path / "tdppo"))
    assert jit.cache_dir() == tmp_path / "mine"
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "mine")
    assert not (tmp_path / "tdppo").exists()


def test_stable_folder_when_unset(monkeypatch, tmp_path):
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.delenv("TDPPO_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert jit.cache_dir() == tmp_path / "xdg" / "tdppo" / "inductor"
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "xdg" / "tdppo" / "inductor")
    assert (tmp_path / "xdg" / "tdppo" / "inductor").is_dir()

    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    monkeypatch.setenv("TDPPO_CACHE_DIR", str(tmp_path / "t"))
    assert jit.cache_dir() == tmp_path / "t" / "inductor"
    # torch reads the same variable when it compiles
    from torch._inductor.runtime.cache_dir_utils import cache_dir as torch_cache_dir

    assert torch_cache_dir() == str(tmp_path / "t" / "inductor")
