"""Resume that fits real scripts: the newest complete checkpoint in each layout (colabkit's, HF Trainer's
``checkpoint-N/``, Lightning's ``.ckpt``, ``ckpt.pt``/``checkpoint.pth.tar`` files), where it is looked for,
the resume argument templates, and the start line; the four layout scripts resumed by hand with those arguments."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import layouts
import pytest

from colabkit import _checkpoint, _resume
from colabkit._resume import Found, Where


def _touch(path: Path, mtime: float, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.utime(path, (mtime, mtime))
    return path


def _hf(folder: Path, step: int, *, complete: bool = True, mtime: float = 1000.0) -> Path:
    path = folder / f"checkpoint-{step}"
    _touch(path / "model.safetensors", mtime)
    if complete:
        _touch(path / "trainer_state.json", mtime, json.dumps({"global_step": step}).encode())
    return path


# -- finding -----------------------------------------------------------------------------------------
def test_nothing_there(tmp_path):
    assert _resume.find(tmp_path / "missing") is None
    assert _resume.find(tmp_path) is None
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    assert _resume.find(tmp_path) is None


def test_colabkit_layout_is_read_through_latest_and_only_that_way(tmp_path):
    first = _checkpoint.save({"step": 1}, tmp_path)
    second = _checkpoint.save({"step": 2}, tmp_path)
    _touch(tmp_path / "pretrained.pt", 4e9)  # newer, but not save()'s: never handed over
    assert first != second
    assert _resume.find(tmp_path) == Found(second, "colabkit")


def test_hf_newest_complete_checkpoint_by_number(tmp_path):
    _hf(tmp_path, 500, mtime=3000)
    _hf(tmp_path, 1000, mtime=1000)  # older on disk, higher number: the Trainer's order
    _hf(tmp_path, 1500, complete=False, mtime=4000)  # cut off before trainer_state.json
    (tmp_path / "checkpoint-2000").write_text("a file, not a folder")
    _touch(tmp_path / "training_args.bin", 5000)
    found = _resume.find(tmp_path)
    assert (found.path, found.layout, found.step) == (tmp_path / "checkpoint-1000", "hf", 1000)
    assert found.skipped == (tmp_path / "checkpoint-1500",)
    assert found.describe() == "checkpoint-1000 (Hugging Face Trainer, step 1,000)"
    assert not found.fixed_name


def test_hf_with_no_complete_checkpoint_finds_nothing(tmp_path):
    _hf(tmp_path, 100, complete=False)
    _touch(tmp_path / "checkpoint-100/optimizer.pt", 2000)  # inside a checkpoint folder: never a file checkpoint
    assert _resume.find(tmp_path) is None


def test_lightning_ckpt_files_anywhere_below_newest_first_last_on_a_tie(tmp_path):
    v0 = tmp_path / "lightning_logs/version_0/checkpoints"
    v1 = tmp_path / "lightning_logs/version_1/checkpoints"
    _touch(v0 / "epoch=3-step=400.ckpt", 1000)
    _touch(v1 / "epoch=5-step=600.ckpt", 2000)
    _touch(v1 / "last.ckpt", 2000)
    found = _resume.find(tmp_path)
    assert (found.path, found.layout, found.step) == (v1 / "last.ckpt", "lightning", None)
    assert found.fixed_name
    os.utime(v1 / "epoch=5-step=600.ckpt", (2001, 2001))
    found = _resume.find(tmp_path)
    assert (found.path, found.step) == (v1 / "epoch=5-step=600.ckpt", 600) and not found.fixed_name


def test_files_by_modification_time_best_only_when_alone_and_torn_ones_skipped(tmp_path):
    layouts.save({"epoch": 3}, tmp_path / "checkpoint.pth.tar")
    os.utime(tmp_path / "checkpoint.pth.tar", (1000, 1000))
    layouts.save({"epoch": 3}, tmp_path / "model_best.pth.tar")  # shutil.copyfile after it: newer
    os.utime(tmp_path / "model_best.pth.tar", (1001, 1001))
    found = _resume.find(tmp_path)
    assert (found.path, found.layout, found.fixed_name) == (tmp_path / "checkpoint.pth.tar", "file", True)

    whole = (tmp_path / "checkpoint.pth.tar").read_bytes()
    _touch(tmp_path / "ckpt.pt", 2000, whole[: len(whole) // 2])  # torch.save killed half-way: no end record
    found = _resume.find(tmp_path)
    assert found.path == tmp_path / "checkpoint.pth.tar" and found.skipped == (tmp_path / "ckpt.pt",)
    _touch(tmp_path / "empty.pth", 3000, b"")
    assert _resume.find(tmp_path).path == tmp_path / "checkpoint.pth.tar"
    _touch(tmp_path / "weights_step_700.pth", 4000, b"legacy pickle format")  # not a zip: counted as it is
    found = _resume.find(tmp_path)
    assert (found.name, found.step) == ("weights_step_700.pth", 700)

    (tmp_path / "checkpoint.pth.tar").unlink()
    for p in tmp_path.iterdir():
        if p.is_file() and p.name != "model_best.pth.tar":
            p.unlink()
    assert _resume.find(tmp_path).path == tmp_path / "model_best.pth.tar"  # the best, when it is all there is


# -- where -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--output_dir", "out", "--save_steps", "5"], ("--output_dir", "out")),
        (["config/train.py", "--out_dir=out-shakespeare-char"], ("--out_dir", "out-shakespeare-char")),
        (["fit", "--trainer.default_root_dir=runs/lit"], ("--trainer.default_root_dir", "runs/lit")),
        (["--default_root_dir", "lit", "--default_root_dir", "lit2"], ("--default_root_dir", "lit2")),  # the last wins
        (["--output_dir", "--other"], None),
        (["--output_dir="], None),
        (["--output", "x", "--outdir", "y"], None),
    ],
)
def test_the_scripts_own_output_folder_argument(args, expected):
    assert _resume.output_dir(args) == expected


def test_where_prefers_checkpoint_dir_then_the_output_argument_then_the_default(tmp_path):
    assert _resume.where("ck", ["--output_dir", "out"], tmp_path) == Where(tmp_path / "ck", "checkpoint_dir=")
    assert _resume.where(None, ["--output_dir", "out"], tmp_path) == Where(tmp_path / "out", "--output_dir out")
    assert _resume.where(None, [], tmp_path) == Where(tmp_path / "checkpoints", "the default checkpoint_dir")
    assert _resume.where("/abs/ck", [], tmp_path).path == Path("/abs/ck")
    assert _resume.where(".", [], tmp_path).describe() == f"{tmp_path} (checkpoint_dir=)"


# -- handing it over ---------------------------------------------------------------------------------
def test_resume_templates_with_and_without_path_as_text_or_arguments():
    ckpt = Path("/content/drive/MyDrive/my run/out/checkpoint-500")
    assert _resume.resume_tokens("--resume_from_checkpoint {path}", ckpt) == ["--resume_from_checkpoint", str(ckpt)]
    assert _resume.resume_tokens("--resume={path}", ckpt) == [f"--resume={ckpt}"]  # a space in the path stays
    assert _resume.resume_tokens("--init_from=resume", ckpt) == ["--init_from=resume"]
    assert _resume.resume_tokens(["--ckpt_path", "{path}"], ckpt) == ["--ckpt_path", str(ckpt)]
    assert _resume.resume_tokens(["--tag", "a b"], ckpt) == ["--tag", "a b"]  # a list is never split
    assert _resume.resume_tokens(None, ckpt) == []


def test_start_notes(tmp_path):
    at = Where(tmp_path / "out", "--out_dir out")
    ckpt = Found(tmp_path / "out/ckpt.pt", "file")
    hf = Found(tmp_path / "out/checkpoint-500", "hf", 500, (tmp_path / "out/checkpoint-600",))
    ours = Found(tmp_path / "out/ckpt-000003.pkl", "colabkit")
    assert _resume.start_note(None, at, resume=False, resume_arg=None) == ""
    assert _resume.start_note(None, at, resume=True, resume_arg=None) == (
        f"colabkit: no checkpoint in {tmp_path / 'out'} (--out_dir out) yet; starting fresh"
    )
    assert _resume.start_note(ckpt, at, resume=True, resume_arg="--init_from=resume") == (
        f"colabkit: resuming from ckpt.pt (checkpoint file) in {tmp_path / 'out'} (--out_dir out); passing --init_from=resume"
    )
    assert _resume.start_note(hf, at, resume=True, resume_arg="--resume_from_checkpoint {path}") == (
        f"colabkit: resuming from checkpoint-500 (Hugging Face Trainer, step 500) in {tmp_path / 'out'} (--out_dir out) "
        f"(checkpoint-600 is incomplete: a save was cut off); passing --resume_from_checkpoint {hf.path}"
    )
    assert _resume.start_note(ckpt, at, resume=False, resume_arg=None) == (
        f"colabkit: ckpt.pt (checkpoint file) is in {tmp_path / 'out'} (--out_dir out) and this run does not resume "
        "from it: it starts fresh and will overwrite it at its first save. To continue from it instead, run the "
        "same cell with resume=True, resume_arg='--init_from=resume'"
    )
    cli = _resume.start_note(hf, at, resume=False, resume_arg=None, surface="cli")
    assert cli.endswith(
        "it starts fresh and may overwrite it. To continue from it instead, run `colabkit run --resume "
        "--resume-arg='--resume_from_checkpoint {path}' SCRIPT ...` (colabkit's options go before the script)"
    )
    assert _resume.start_note(hf, at, resume=True, resume_arg=None).endswith(
        "only $COLABKIT_RESUME names it: a script that does not read it starts fresh and may overwrite it. "
        "To hand it to the script, run the same cell with resume_arg='--resume_from_checkpoint {path}'"
    )
    assert _resume.start_note(ours, at, resume=True, resume_arg=None) == f"colabkit: resuming from {ours.path} ($COLABKIT_RESUME)"
    assert _resume.start_note(ours, at, resume=False, resume_arg=None).endswith(
        "it starts fresh and may overwrite it. To continue from it instead, run the same cell with resume=True"
    )
    lightning = Found(tmp_path / "lightning_logs/version_0/checkpoints/last.ckpt", "lightning")
    assert _resume.suggest_arg(lightning) == "--ckpt_path {path}"
    assert _resume.suggest_arg(Found(tmp_path / "checkpoint.pth.tar", "file")) == "--resume {path}"


# -- the four scripts, resumed by hand with what find() and resume_tokens() give -----------------------
CASES = {
    "nanogpt": (["--out_dir=out", "--max_iters=6"], ["--out_dir=out", "--max_iters=12"], "--init_from=resume", "out"),
    "hf": (["--output_dir", "out", "--max_steps", "6"], ["--output_dir", "out", "--max_steps", "12"],
           "--resume_from_checkpoint {path}", "out"),
    "imagenet": (["--epochs", "6"], ["--epochs", "12"], "--resume {path}", "."),
    "lightning": (["fit", "--trainer.max_steps=6", "--trainer.default_root_dir=lit"],
                  ["fit", "--trainer.max_steps=12", "--trainer.default_root_dir=lit"], "--ckpt_path {path}", None),
}  # fmt: skip


def _model(layout: str, work: Path, found: Found) -> list[int]:
    if layout == "nanogpt":
        return layouts.load(found.path)["model"]
    if layout == "hf":
        return layouts.load(found.path / "model.safetensors")
    return layouts.load(found.path)["state_dict"]


@pytest.mark.parametrize("layout", list(CASES))
def test_each_script_resumes_from_what_find_gives_with_no_step_lost_or_repeated(tmp_path, layout):
    first, second, template, checkpoint_dir = CASES[layout]
    work = tmp_path / "proj"
    script = layouts.write(work, layout)
    env = {**os.environ, "LAYOUT_STEP_S": "0"}
    subprocess.run([sys.executable, str(script), *first], cwd=work, env=env, check=True, capture_output=True)
    at = _resume.where(checkpoint_dir, first, work)
    found = _resume.find(at.path)
    assert found is not None and found.layout == ("file" if layout in ("nanogpt", "imagenet") else layout)
    done = subprocess.run(
        [sys.executable, str(script), *second, *_resume.resume_tokens(template, found.path)],
        cwd=work, env=env, check=True, capture_output=True, text=True,
    )
    assert "Traceback" not in done.stderr
    final = _resume.find(at.path)
    model = _model(layout, work, final)
    expected = {"nanogpt": list(range(12)), "hf": list(range(1, 13)), "imagenet": list(range(12)), "lightning": list(range(12))}
    assert model == expected[layout]
