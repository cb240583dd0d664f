"""Kaggle as a fake machine root: its variables, /kaggle/input (read-only datasets) and /kaggle/working, the
session limit that drives a budget, where a project and its runs live."""

from __future__ import annotations

import os
import re

import pytest
from conftest import NO_DRIVER
from fakes.kagglevm import make_kaggle
from fakes.nvml import GIB, FakeDevice, FakeNvml

from colabkit import _kaggle, _runtime
from colabkit._spec import RunSpec

HOUR = 3600.0


def test_kaggle_session_age_is_its_containers(kaggle):
    rt = _runtime.detect_runtime()
    assert rt.kind == "kaggle" and rt.is_kaggle and not rt.is_colab
    assert rt.uptime_s == pytest.approx(3600.0, abs=0.02)  # pid 1's age, not the VM's 2 h uptime
    assert rt.vm_limit_s == 12 * HOUR
    assert rt.time_left_s == pytest.approx(11 * HOUR, abs=0.02)
    assert rt.limit_label == "the Kaggle session's ~12 h limit"
    assert rt.describe() == "Kaggle (Interactive), up 1h00m of ~12h00m"


def test_a_committed_run_has_nine_hours(tmp_path, monkeypatch):
    make_kaggle(tmp_path, monkeypatch, run_type="Batch", session_s=0.0)
    rt = _runtime.detect_runtime()
    assert rt.vm_limit_s == 9 * HOUR
    assert rt.limit_label == "the Kaggle committed run's ~9 h limit"


def test_kaggle_wins_over_colab_marks_its_image_inherits(kaggle, monkeypatch):
    monkeypatch.setenv("COLAB_RELEASE_TAG", "release-colab_20260101-060000_RC00")
    (kaggle.sysroot / "var" / "colab").mkdir(parents=True)
    (kaggle.sysroot / "var" / "colab" / "hostname").write_text("x\n")
    rt = _runtime.detect_runtime()
    assert rt.kind == "kaggle" and rt.front_end is None


def test_unreadable_pid1_falls_back_to_the_uptime(kaggle):
    (kaggle.sysroot / "proc" / "1" / "stat").unlink()
    assert _runtime.detect_runtime().uptime_s == pytest.approx(7200.5)


def test_the_session_limit_drives_the_budget(kaggle):
    rt = _runtime.detect_runtime()
    with pytest.warns(Warning) as caught:
        budget = RunSpec.build("t.py", budget="12h", grace=60).plan(rt)
    assert budget.kill_at == pytest.approx(11 * HOUR, abs=0.02) and budget.vm_limited
    assert budget.term_at == pytest.approx(11 * HOUR - 60, abs=0.02)
    assert len(caught) == 1


# -- folders -----------------------------------------------------------------------------------------


def test_locate_a_project(kaggle):
    working, inputs = kaggle.working, kaggle.input
    (working / "proj").mkdir()
    (inputs / "cifar-demo").mkdir()
    (inputs / "my-code" / "proj2").mkdir(parents=True)
    assert _kaggle.locate(".") == working and _kaggle.locate("") == working
    assert _kaggle.locate("proj") == working / "proj"
    assert _kaggle.locate("cifar-demo") == inputs / "cifar-demo"
    assert _kaggle.locate("proj2") == inputs / "my-code" / "proj2"
    assert _kaggle.locate(str(inputs / "cifar-demo")) == inputs / "cifar-demo"
    assert _kaggle.locate("nope") is None
    assert _kaggle.candidates("cifar-dem") == ("cifar-demo",)


def test_a_project_working_folder_wins_over_a_dataset_of_the_same_name(kaggle):
    (kaggle.working / "proj").mkdir()
    (kaggle.input / "proj").mkdir()
    assert _kaggle.locate("proj") == kaggle.working / "proj"


def test_a_dataset_writes_to_the_working_folder(kaggle):
    working, inputs = kaggle.working, kaggle.input
    assert _kaggle.is_input(inputs / "cifar-demo" / "train")
    assert not _kaggle.is_input(working / "proj")
    assert _kaggle.writable_home(inputs / "cifar-demo") == working
    assert _kaggle.writable_home(working / "proj") == working / "proj"


# -- setup() on Kaggle ----------------------------------------------------------------------------------


def test_setup_opens_the_working_folder_and_mounts_nothing(kaggle, capsys):
    import colabkit

    session = colabkit.setup(gpu=False)
    working = kaggle.working
    assert session.mount is None
    assert session.project.path == working and os.getcwd() == str(working)
    assert colabkit.current_project().path == working
    out = capsys.readouterr().out
    assert "Drive    not used on Kaggle: the notebook's files are in /kaggle/working" in out
    assert "Runtime  Kaggle (Interactive), up 1h00m of ~12h00m" in out


def test_setup_opens_a_dataset_and_says_once_where_runs_go(kaggle, capsys):
    import colabkit

    dataset = kaggle.input / "my-project"
    dataset.mkdir()
    session = colabkit.setup("my-project", gpu=False)
    assert session.project.path == dataset
    out = capsys.readouterr().out
    note = f"colabkit: {dataset} is a read-only Kaggle dataset: runs and checkpoints go to {kaggle.working}"
    assert out.count(note) == 1


def test_setup_names_close_kaggle_folders(kaggle):
    import colabkit
    from colabkit.errors import ProjectNotFound

    (kaggle.input / "my-project").mkdir()
    with pytest.raises(ProjectNotFound) as err:
        colabkit.setup("my-projet", gpu=False)
    assert err.value.message == "project 'my-projet' not found in /kaggle/working or /kaggle/input"
    assert err.value.hint == "Did you mean 'my-project'?"
    assert err.value.candidates == ("my-project",)


@NO_DRIVER
def test_setup_without_gpu_on_kaggle_names_both_accelerators(kaggle):
    import colabkit
    from colabkit.errors import NoGpuError

    with pytest.raises(NoGpuError) as err:
        colabkit.setup(gpu="require")
    assert err.value.runtime == "kaggle"
    assert "Settings → Accelerator → GPU T4 x2 (two GPUs; or GPU P100, one;" in err.value.hint


def test_project_by_name_on_kaggle(kaggle):
    import colabkit

    (kaggle.working / "proj").mkdir()
    assert colabkit.project("proj").path == kaggle.working / "proj"
    assert os.getcwd() == str(kaggle.working / "proj")


def test_staging_a_kaggle_dataset_is_a_no_op(kaggle, capsys):
    import colabkit

    data = kaggle.dataset("images")
    (data / "a.png").write_bytes(b"png")
    assert colabkit.stage(data) == data
    assert capsys.readouterr().out == f"colabkit: {data} is a Kaggle dataset on local disk already: using it where it is\n"
    assert sorted(p.name for p in data.iterdir()) == ["a.png"]  # nothing packed beside it


def test_release_on_kaggle_says_there_is_nothing_to_release(kaggle, capsys):
    import colabkit

    colabkit.release()
    out = capsys.readouterr().out
    assert out.startswith("colabkit: this is Kaggle: there is nothing to release from here. Stop the session")
    assert "weekly GPU quota" in out


# -- run() on Kaggle ----------------------------------------------------------------------------------------


def test_a_dataset_projects_runs_and_checkpoints_land_in_the_working_folder(kaggle, capsys):
    import colabkit

    dataset = kaggle.dataset("my-code")
    (dataset / "train.py").write_text("import os\nprint(os.environ['COLABKIT_CHECKPOINT_DIR'])\n")
    colabkit.setup("my-code", gpu=False)
    r = colabkit.run("train.py", monitor=False)
    assert r.log_dir.parent == kaggle.working / "runs"
    assert r.log_path.read_text() == f"{kaggle.working / 'checkpoints'}\n"
    assert not (dataset / "runs").exists()
    colabkit.run("train.py", monitor=False)
    out = capsys.readouterr().out
    assert out.count("is a read-only Kaggle dataset: runs and checkpoints go to") == 1  # said once


def test_a_dataset_scripts_own_output_folder_is_written_and_resumed_in_the_working_folder(kaggle, capsys):
    """nanoGPT-style ``--out_dir out`` from a read-only dataset: the script writes where colabkit looks."""
    import colabkit

    dataset = kaggle.dataset("my-code")
    (dataset / "ngpt.py").write_text(
        "import os, sys\n"
        "out = sys.argv[sys.argv.index('--out_dir') + 1]\n"
        "start = int(open(os.path.join(out, 'ckpt.pt')).read()) if '--init_from=resume' in sys.argv else 0\n"
        "os.makedirs(out, exist_ok=True)\n"
        "for it in range(start, start + 3):\n"
        "    print('iter', it, flush=True)\n"
        "open(os.path.join(out, 'ckpt.pt'), 'w').write(str(start + 3))\n"
    )
    colabkit.setup("my-code", gpu=False)
    first = colabkit.run("ngpt.py", "--out_dir", "out", monitor=False)
    assert (kaggle.working / "out" / "ckpt.pt").read_text() == "3" and not (dataset / "out").exists()
    said = f"colabkit: {dataset} is a read-only Kaggle dataset: the script gets --out_dir {kaggle.working / 'out'} instead of out"
    assert said in capsys.readouterr().out
    assert first.args == ("--out_dir", str(kaggle.working / "out"))
    again = colabkit.run("ngpt.py", "--out_dir", "out", resume=True, resume_arg="--init_from=resume", monitor=False)
    assert again.resumed_from == kaggle.working / "out" / "ckpt.pt"
    assert again.log_path.read_text().splitlines() == ["iter 3", "iter 4", "iter 5"]  # on from the first run's end


def test_runs_of_the_working_folder_land_in_its_runs_folder(kaggle):
    import colabkit

    (kaggle.working / "train.py").write_text("print('hi')\n")
    colabkit.setup(gpu=False)
    r = colabkit.run("train.py", monitor=False)
    assert r.log_dir.parent == kaggle.working / "runs"


def test_a_budget_past_the_session_is_cut_with_kaggles_words(kaggle):
    rt = _runtime.detect_runtime()
    with pytest.warns(Warning) as caught:
        RunSpec.build("t.py", budget="12h", grace=60).plan(rt)
    assert str(caught[0].message) == (
        "budget='12h' goes past the Kaggle session's ~12h00m limit: the session has about 11h00m left, so colabkit "
        "sends SIGTERM 1m before that instead. Save checkpoints to /kaggle/working and re-run with resume=True in "
        "a new session."
    )


def test_a_run_the_session_ended_says_so(tmp_path):
    from colabkit._result import RunResult

    r = RunResult(
        returncode=-15, status="stopped", duration_s=39600.0, log_dir=tmp_path, log_path=tmp_path / "output.log",
        script="train.py", reason="budget", budget=12 * HOUR, grace=60.0, stop_at=11 * HOUR,
        limit_label="the Kaggle session's ~12 h limit",
    )  # fmt: skip
    assert r.error().message.startswith(
        "train.py was stopped by the Kaggle session's ~12 h limit (before budget=12h) after 11h00m"
    )


def test_more_gpus_than_the_accelerator_has_names_the_t4x2_and_starts_nothing(kaggle):
    import colabkit
    from colabkit import _nvml
    from colabkit.errors import NotEnoughGpus

    (kaggle.working / "train.py").write_text("open('started', 'w').close()\n")
    colabkit.setup(gpu=False)
    p100 = FakeNvml([FakeDevice(name="Tesla P100-PCIE-16GB", total=16 * GIB, cc=(6, 0))])
    with _nvml._use_library(p100), pytest.raises(NotEnoughGpus) as err:
        colabkit.run("train.py", gpus=2)
    exc = err.value
    assert (exc.wanted, exc.visible, exc.runtime) == (2, 1, "kaggle")
    assert exc.message == "gpus=2 asks for 2 GPUs, but this machine shows 1 GPU"
    assert exc.hint.startswith("In the notebook editor open Settings → Accelerator → GPU T4 x2 (the one Kaggle")
    assert not (kaggle.working / "runs").exists() and not (kaggle.working / "started").exists()


def test_a_run_near_the_end_of_the_session_is_stopped_by_it_in_kaggles_words(tmp_path, monkeypatch):
    import colabkit
    from colabkit.errors import ColabkitWarning

    kaggle = make_kaggle(tmp_path, monkeypatch, uptime_s=12 * HOUR, session_s=12 * HOUR - 4)  # 4 s left
    (kaggle.working / "train.py").write_text(
        "import signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *a: (print('saving to /kaggle/working', flush=True), sys.exit(0)))\n"
        "print('training', flush=True)\ntime.sleep(60)\n"
    )
    colabkit.setup(gpu=False)
    with pytest.warns(ColabkitWarning, match=r"^budget='1h' goes past the Kaggle session's ~12h00m limit"):
        r = colabkit.run("train.py", budget="1h", grace=1, check=False, monitor=False)
    assert (r.status, r.reason, r.returncode) == ("stopped", "budget", 0)
    assert r.limit_label == "the Kaggle session's ~12 h limit"
    log = r.log_path.read_text()
    assert log.startswith("training\n") and "\nsaving to /kaggle/working\n" in log  # the script saved on SIGTERM
    assert re.search(  # the log names what ended the run, not the budget that never ran out
        r"^\[colabkit\] the Kaggle session's ~12 h limit \(before the budget of 1h\): sent SIGTERM after ", log, re.M
    ), log
    assert 2.5 < r.duration_s < 10  # SIGTERM a grace before the session's end, not after the hour asked
    assert r.error().message.startswith("train.py was stopped by the Kaggle session's ~12 h limit (before budget=1h)")
