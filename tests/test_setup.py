"""The set-up of the README's two commands: `scripts/setup.sh` and the Makefile.

They must work where `python3` is Debian's own Python, which refuses `pip install` outside a
virtual environment (PEP 668, "externally managed"). These tests build a venv with that
Python, install a tiny local wheel into it, and read what `make` would run, without
installing the pinned packages (that takes minutes).
"""

import glob
import os
import pathlib
import shutil
import subprocess
import zipfile

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SETUP_SCRIPT = REPO / "scripts" / "setup.sh"
DEBIAN_PYTHON = "/usr/bin/python3"
# Debian and Ubuntu mark their own Python as externally managed with this file.
EXTERNALLY_MANAGED_MARKERS = "/usr/lib/python3*/EXTERNALLY-MANAGED"
DIGITS_HINT = 'make train ARGS="--dataset digits"'

needs_debian_python = pytest.mark.skipif(
    not os.path.exists(DEBIAN_PYTHON), reason=f"no system Python at {DEBIAN_PYTHON}"
)
needs_make = pytest.mark.skipif(shutil.which("make") is None, reason="GNU make not installed")


def _clean_env(**overrides):
    """The environment without pip's settings, which could allow system installs, and without
    those of an enclosing `make` (as in `make test VENV=...`), which would reach the `make` run
    here."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PIP_")}
    for name in ("VIRTUAL_ENV", "MAKEFLAGS", "MFLAGS", "MAKELEVEL"):
        env.pop(name, None)
    env["PIP_CONFIG_FILE"] = os.devnull
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env.update(overrides)
    return env


def _run(command, env=None, cwd=REPO):
    return subprocess.run(
        command, cwd=cwd, env=env or _clean_env(), capture_output=True, text=True, timeout=300
    )


def _write_wheel(folder, name="mln_tf_setup_probe", value=42):
    """A minimal pure-Python wheel of one module that defines `VALUE = value`."""
    version = "0.1"
    dist_info = f"{name}-{version}.dist-info"
    files = {
        f"{name}.py": f"VALUE = {value}\n",
        f"{dist_info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{dist_info}/WHEEL": (
            "Wheel-Version: 1.0\nGenerator: test_setup\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
    }
    record = "".join(f"{path},,\n" for path in files) + f"{dist_info}/RECORD,,\n"
    files[f"{dist_info}/RECORD"] = record
    wheel = pathlib.Path(folder) / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)
    return wheel


@pytest.fixture(scope="module")
def debian_venv(tmp_path_factory):
    """A venv made by `setup.sh venv` with Debian's own Python."""
    if _run([DEBIAN_PYTHON, "-c", "import ensurepip"]).returncode != 0:
        # setup.sh would apt-install python3-venv as root: not something a test should do.
        pytest.skip(f"{DEBIAN_PYTHON} cannot make a venv: python3-venv is not installed")
    venv = tmp_path_factory.mktemp("setup") / "venv"
    result = _run(
        ["bash", str(SETUP_SCRIPT), "venv"],
        env=_clean_env(VENV=str(venv), PYTHON=DEBIAN_PYTHON),
    )
    assert result.returncode == 0, result.stderr
    assert f"Creating the virtual environment {venv} with {DEBIAN_PYTHON}" in result.stdout
    return venv


@needs_debian_python
def test_venv_step_makes_a_virtual_environment_of_the_system_python(debian_venv):
    probe = (
        "import sys; print(sys.prefix); print(sys.base_prefix); "
        "print(f'{sys.version_info[0]}.{sys.version_info[1]}')"
    )
    venv_python = debian_venv / "bin" / "python"
    prefix, base_prefix, version = _run([venv_python, "-c", probe]).stdout.split()
    system_version = _run([DEBIAN_PYTHON, "-c", probe]).stdout.split()[2]
    assert pathlib.Path(prefix) == debian_venv
    assert base_prefix != prefix
    assert version == system_version


@needs_debian_python
def test_venv_step_leaves_an_existing_venv_alone(debian_venv):
    marker = debian_venv / "kept.txt"
    marker.write_text("kept")
    result = _run(
        ["bash", str(SETUP_SCRIPT), "venv"],
        env=_clean_env(VENV=str(debian_venv), PYTHON=DEBIAN_PYTHON),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert marker.read_text() == "kept"


@needs_debian_python
def test_pip_installs_into_the_venv(debian_venv, tmp_path):
    wheel = _write_wheel(tmp_path)
    python = debian_venv / "bin" / "python"
    install = _run([python, "-m", "pip", "install", "--no-deps", "--no-index", wheel])
    assert install.returncode == 0, install.stderr
    imported = _run([python, "-c", "import mln_tf_setup_probe as m; print(m.VALUE, m.__file__)"])
    value, module_file = imported.stdout.split()
    assert value == "42"
    assert pathlib.Path(module_file).is_relative_to(debian_venv)


@needs_debian_python
@pytest.mark.skipif(
    not glob.glob(EXTERNALLY_MANAGED_MARKERS), reason="the system Python is not externally managed"
)
def test_system_pip_refuses_to_install(tmp_path):
    if _run([DEBIAN_PYTHON, "-m", "pip", "--version"]).returncode != 0:
        pytest.skip(f"{DEBIAN_PYTHON} has no pip")
    wheel = _write_wheel(tmp_path)
    # --dry-run: should the refusal ever not come, nothing is installed into the system.
    result = _run([DEBIAN_PYTHON, "-m", "pip", "install", "--dry-run", "--no-deps", "--no-index",
                   wheel])  # fmt: skip
    assert result.returncode != 0
    assert "externally-managed-environment" in result.stderr


def _fake_id_on_path(folder, uid):
    """A folder holding an `id` that answers `uid`, to run setup.sh as a non-root user."""
    bin_dir = pathlib.Path(folder) / "fake_bin"
    bin_dir.mkdir()
    fake_id = bin_dir / "id"
    fake_id.write_text(f"#!/bin/sh\necho {uid}\n")
    fake_id.chmod(0o755)
    return f"{bin_dir}{os.pathsep}{os.environ['PATH']}"


def test_data_step_without_root_points_to_the_digits(tmp_path):
    missing = tmp_path / "no-fashion-mnist"
    env = _clean_env(PATH=_fake_id_on_path(tmp_path, 1000), FASHION_DIR=str(missing))
    result = _run(["bash", str(SETUP_SCRIPT), "data"], env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert f"NOTE: Fashion-MNIST files not found in {missing}." in result.stderr
    assert "sudo apt-get install dataset-fashion-mnist" in result.stderr
    assert DIGITS_HINT in result.stderr


def test_data_step_is_silent_when_the_files_are_there(tmp_path):
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"")
    env = _clean_env(PATH=_fake_id_on_path(tmp_path, 1000), FASHION_DIR=str(tmp_path))
    result = _run(["bash", str(SETUP_SCRIPT), "data"], env=env)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_unknown_step_prints_the_usage():
    result = _run(["bash", str(SETUP_SCRIPT), "everything"])
    assert result.returncode == 2
    assert "usage:" in result.stderr and "[data|venv|python|all]" in result.stderr


@needs_make
def test_make_train_runs_the_venv_python(tmp_path):
    venv = tmp_path / "venv"
    result = _run(["make", "-n", "train", f"VENV={venv}", "ARGS=--dataset digits"])
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[-1] == f"{venv}/bin/python -m mln_tf train --dataset digits"
    # The venv is missing, so the set-up runs first, with the system's python3.
    assert f"PYTHON=python3 VENV={venv} bash scripts/setup.sh" in lines
    assert f"touch {venv}/.installed" in lines


@needs_make
def test_make_test_runs_the_linter_and_pytest_of_the_venv(tmp_path):
    venv = tmp_path / "venv"
    result = _run(["make", "-n", "test", f"VENV={venv}", "PYTEST_ARGS=-k x"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-2:] == [
        f"{venv}/bin/python -m ruff check mln_tf tests benchmarks",
        f"{venv}/bin/python -m pytest -q -k x",
    ]


@needs_make
def test_make_setup_reinstalls_when_requirements_change(tmp_path):
    project = tmp_path / "project"
    (project / "scripts").mkdir(parents=True)
    for name in ("Makefile", "requirements.txt", "pyproject.toml", "scripts/setup.sh"):
        shutil.copy(REPO / name, project / name)
    stamp = project / ".venv" / ".installed"
    stamp.parent.mkdir()
    stamp.touch()
    inputs_time = stamp.stat().st_mtime - 60
    for name in ("requirements.txt", "pyproject.toml", "scripts/setup.sh"):
        os.utime(project / name, (inputs_time, inputs_time))

    up_to_date = _run(["make", "-n", "setup"], cwd=project)
    assert up_to_date.returncode == 0, up_to_date.stderr
    assert "setup.sh" not in up_to_date.stdout

    os.utime(project / "requirements.txt", (inputs_time + 120, inputs_time + 120))
    changed = _run(["make", "-n", "setup"], cwd=project)
    assert changed.returncode == 0, changed.stderr
    assert changed.stdout.splitlines() == [
        "PYTHON=python3 VENV=.venv bash scripts/setup.sh",
        "touch .venv/.installed",
    ]
