"""Small, real training scripts in the shape of the four that people resume (pytorch/examples imagenet,
nanoGPT, HF Trainer, Lightning), for the resume tests.

Each one trains a "model" that is the list of steps applied to it, so a resumed run shows at once whether a
step was lost or repeated. They keep each original's command line, checkpoint layout and resume behaviour
(read from their sources; none of their code): checkpoints are zip archives holding ``archive/data.pkl``, as
``torch.save`` writes them, and each script saves through a temp name and ``os.replace`` so that Stop, a
budget's SIGTERM or a dead launcher never leaves half a file (the real ones call ``torch.save`` in place).

- ``nanogpt``: nanoGPT ``train.py``: ``--key=value`` overrides of its globals only (``configurator.py``),
  ``--out_dir=``, ``--init_from=resume`` loads ``out_dir/ckpt.pt``; it saves before the step of each
  ``eval_interval`` (``iter_num`` is the next iteration) and prints ``iter N: loss ...``.
- ``hf``: HF ``run_clm.py`` with the Trainer: ``--output_dir``, ``--max_steps``, ``--save_steps``,
  ``--save_total_limit``, ``--resume_from_checkpoint PATH``; ``checkpoint-N/`` holds the weights, the
  optimizer and, written last, ``trainer_state.json`` (``global_step``); a tqdm bar ``N/M [``.
- ``imagenet``: pytorch/examples ``imagenet/main.py``: ``--epochs``, ``--resume PATH``;
  ``checkpoint.pth.tar`` in the working folder (``epoch`` is the next one), copied to
  ``model_best.pth.tar`` when best; prints ``Epoch: [E][ i/N]``.
- ``lightning``: a LightningCLI script: ``fit --trainer.max_steps=N --trainer.default_root_dir=D
  --ckpt_path PATH``; ``D/lightning_logs/version_K/checkpoints/epoch=0-step=S.ckpt`` (the newest only) and
  ``last.ckpt``, a new ``version_K`` for each run, as Lightning does.

``LAYOUT_STEP_S`` sets the time one step takes (default 0.02 s).
"""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path

COMMON = '''
import io, os, pickle, sys, time, zipfile

STEP_S = float(os.environ.get("LAYOUT_STEP_S", "0.02"))


def save(obj, path):
    """As torch.save writes: a zip archive holding archive/data.pkl (through a temp name)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps(obj))
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(buffer.getvalue())
    os.replace(tmp, path)


def load(path):
    with zipfile.ZipFile(path) as archive:
        return pickle.loads(archive.read("archive/data.pkl"))


def train_step(model, step):
    time.sleep(STEP_S)
    model.append(step)
'''

NANOGPT = COMMON + '''
out_dir = "out"
eval_interval = 1
always_save_checkpoint = True
init_from = "scratch"
max_iters = 20
for arg in sys.argv[1:]:  # configurator.py: --key=value overrides of the globals above, nothing else
    assert arg.startswith("--") and "=" in arg, arg
    key, val = arg[2:].split("=")
    if key not in globals():
        raise ValueError(f"Unknown config key: {key}")
    globals()[key] = type(globals()[key])(val) if not isinstance(globals()[key], bool) else val == "True"
os.makedirs(out_dir, exist_ok=True)
iter_num = 0
model = []
if init_from == "resume":
    print(f"Resuming training from {out_dir}")
    checkpoint = load(os.path.join(out_dir, "ckpt.pt"))
    iter_num, model = checkpoint["iter_num"], checkpoint["model"]
while True:
    if iter_num % eval_interval == 0 and iter_num > 0 and always_save_checkpoint:
        print(f"step {iter_num}: train loss 1.0, val loss 1.0")
        print(f"saving checkpoint to {out_dir}")
        save({"model": model, "iter_num": iter_num}, os.path.join(out_dir, "ckpt.pt"))
    train_step(model, iter_num)
    print(f"iter {iter_num}: loss 1.0000, time 20.00ms, mfu -100.00%", flush=True)
    iter_num += 1
    if iter_num > max_iters:
        break
'''

HF = COMMON + '''
import argparse, json, shutil
parser = argparse.ArgumentParser()
parser.add_argument("--output_dir", required=True)
parser.add_argument("--max_steps", type=int, default=20)
parser.add_argument("--save_steps", type=int, default=1)
parser.add_argument("--save_total_limit", type=int, default=2)
parser.add_argument("--resume_from_checkpoint", default=None)
args = parser.parse_args()
os.makedirs(args.output_dir, exist_ok=True)
model, step = [], 0
if args.resume_from_checkpoint is not None:
    with open(os.path.join(args.resume_from_checkpoint, "trainer_state.json")) as f:
        state = json.load(f)
    step = state["global_step"]
    model = load(os.path.join(args.resume_from_checkpoint, "model.safetensors"))
    print(f"Continuing training from global step {step}")
while step < args.max_steps:
    step += 1
    train_step(model, step)
    pct = int(100 * step / args.max_steps)
    sys.stdout.write(f"\\r{pct:3d}%|{'#' * (pct // 10):10s}| {step}/{args.max_steps} [00:01<00:01, 50.00it/s]")
    sys.stdout.flush()
    if step % args.save_steps == 0:
        folder = os.path.join(args.output_dir, f"checkpoint-{step}")
        os.makedirs(folder, exist_ok=True)
        save(model, os.path.join(folder, "model.safetensors"))
        save({"lr": 1e-3}, os.path.join(folder, "optimizer.pt"))
        with open(os.path.join(folder, "trainer_state.json"), "w") as f:  # last: the checkpoint is complete
            json.dump({"global_step": step, "max_steps": args.max_steps}, f)
        kept = sorted((int(n.split("-")[1]), n) for n in os.listdir(args.output_dir) if n.startswith("checkpoint-"))
        for _, old in kept[: -args.save_total_limit]:
            shutil.rmtree(os.path.join(args.output_dir, old))
print()
save(model, os.path.join(args.output_dir, "model.safetensors"))
with open(os.path.join(args.output_dir, "trainer_state.json"), "w") as f:  # save_state(): not a checkpoint
    json.dump({"global_step": step}, f)
'''

IMAGENET = COMMON + '''
import argparse, shutil
parser = argparse.ArgumentParser()
parser.add_argument("data", nargs="?", default="imagenet")
parser.add_argument("--epochs", default=20, type=int)
parser.add_argument("--start-epoch", default=0, type=int)
parser.add_argument("--resume", default="", type=str, metavar="PATH")
args = parser.parse_args()
model, best = [], -1
if args.resume:
    if os.path.isfile(args.resume):
        print(f"=> loading checkpoint '{args.resume}'")
        checkpoint = load(args.resume)
        args.start_epoch, model, best = checkpoint["epoch"], checkpoint["state_dict"], checkpoint["best_acc1"]
        print(f"=> loaded checkpoint '{args.resume}' (epoch {checkpoint['epoch']})")
    else:
        print(f"=> no checkpoint found at '{args.resume}'")
for epoch in range(args.start_epoch, args.epochs):
    train_step(model, epoch)
    print(f"Epoch: [{epoch}][ 1/ 1]\\tTime  0.020 ( 0.020)\\tLoss 1.0000e+00", flush=True)
    acc1 = epoch % 3  # best now and then
    is_best = acc1 > best
    best = max(acc1, best)
    save({"epoch": epoch + 1, "state_dict": model, "best_acc1": best}, "checkpoint.pth.tar")
    if is_best:
        shutil.copyfile("checkpoint.pth.tar", "model_best.pth.tar")
'''

LIGHTNING = COMMON + '''
import argparse, glob
assert sys.argv[1] == "fit", "LightningCLI: the subcommand comes first"
parser = argparse.ArgumentParser()
parser.add_argument("--trainer.max_steps", dest="max_steps", type=int, default=20)
parser.add_argument("--trainer.default_root_dir", dest="root", default=".")
parser.add_argument("--ckpt_path", default=None)
args = parser.parse_args(sys.argv[2:])
logs = os.path.join(args.root, "lightning_logs")
versions = [int(p.rsplit("_", 1)[1]) for p in glob.glob(os.path.join(logs, "version_*"))]
folder = os.path.join(logs, f"version_{max(versions, default=-1) + 1}", "checkpoints")
os.makedirs(folder)
model, step = [], 0
if args.ckpt_path is not None:
    checkpoint = load(args.ckpt_path)
    model, step = checkpoint["state_dict"], checkpoint["global_step"]
    print(f"Restored all states from the checkpoint at {args.ckpt_path}")
while step < args.max_steps:
    train_step(model, step)
    step += 1
    sys.stdout.write(f"\\rEpoch 0: {int(100 * step / args.max_steps)}%| | {step}/{args.max_steps} [00:01<00:01, 50.00it/s, v_num=0]")
    sys.stdout.flush()
    state = {"state_dict": model, "global_step": step, "epoch": 0}
    for old in glob.glob(os.path.join(folder, "epoch=*.ckpt")):
        os.remove(old)
    save(state, os.path.join(folder, f"epoch=0-step={step}.ckpt"))
    save(state, os.path.join(folder, "last.ckpt"))
print()
'''

SCRIPTS = {"nanogpt": ("train.py", NANOGPT), "hf": ("run_clm.py", HF), "imagenet": ("main.py", IMAGENET), "lightning": ("main.py", LIGHTNING)}


def write(folder: Path, layout: str) -> Path:
    """Put the ``layout`` script in ``folder``; its path."""
    name, source = SCRIPTS[layout]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(source)
    return path


def save(obj: object, path: Path) -> None:
    """A checkpoint file as the scripts (and torch.save) write one."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps(obj))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue())


def load(path: Path) -> object:
    with zipfile.ZipFile(path) as archive:
        return pickle.loads(archive.read("archive/data.pkl"))
