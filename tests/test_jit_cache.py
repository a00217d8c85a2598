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


def test_the_stable_folder_survives_torchs_own_default(tmp_path):
    """``import tensordict`` makes torch write its default (``/tmp/torchinductor_<user>``) into
    ``TORCHINDUCTOR_CACHE_DIR``; that is torch's choice, not the user's, so the stable folder
    still wins (a fresh process, as ``tdppo train`` runs)."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("TORCHINDUCTOR_CACHE_DIR",
                                                            "TDPPO_CACHE_DIR")}  # fmt: skip
    env["XDG_CACHE_HOME"] = str(tmp_path / "xdg")
    code = (
        "import os, tensordict\n"
        "from torch._inductor.runtime.cache_dir_utils import default_cache_dir\n"
        "assert os.environ['TORCHINDUCTOR_CACHE_DIR'] == os.path.abspath(default_cache_dir())\n"
        "from tdppo import jit\n"
        "print(jit.cache_dir())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(tmp_path / "xdg" / "tdppo" / "inductor")


def test_torchs_default_folder_is_torchs(monkeypatch, tmp_path):
    """tdppo writes torch's ``default_cache_dir()`` out (importing it imports torch._inductor and
    torch._dynamo): the two agree, for this user and for a name with characters torch replaces."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    assert jit._torch_default_dir() == os.path.abspath(default_cache_dir())
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr("tempfile.tempdir", None)
    monkeypatch.setattr("getpass.getuser", lambda: 'a/b:c*d?"e<f>g|h\\i')
    assert jit._torch_default_dir() == os.path.abspath(default_cache_dir())
    assert jit._torch_default_dir().startswith(str(tmp_path))
