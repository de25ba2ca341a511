"""Hugging Face transformers on a mount: `save_pretrained` of a model and
its tokenizer (whole and in shards, then saved again over them) and a
`Trainer` run that writes checkpoints, rotates them (`save_total_limit`
deletes the oldest with `shutil.rmtree`) and resumes from one. Each run on
the mount is compared with the same run on local disk: the same files, the
same bytes where the library writes the same bytes, and the same weights
loaded back by `from_pretrained` through a fresh read-only mount."""
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402
from tokenizers import Tokenizer, models, pre_tokenizers  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    AutoTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedTokenizerFast,
    Trainer,
    TrainingArguments,
)

VOCAB = 1000


def tiny_model():
    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=VOCAB, n_positions=64, bos_token_id=0,
                     eos_token_id=0)
    return GPT2LMHeadModel(cfg)


def tiny_tokenizer():
    vocab = {"[UNK]": 0, **{f"w{i}": i for i in range(1, VOCAB)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", eos_token="[UNK]")


def tree(root):
    """Relative path -> bytes of every file under root."""
    root = Path(root)
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def new_registry(run, registry, tmp_path):
    (tmp_path / "README.md").write_text("models\n")
    run("import", tmp_path / "README.md", f"{registry}/README.md")
    return registry


def test_save_pretrained_then_from_pretrained_through_a_fresh_mount(run, registry, mount, tmp_path):
    model, tok = tiny_model(), tiny_tokenizer()
    mnt, local = mount(new_registry(run, registry, tmp_path)), tmp_path / "local"
    for root in (mnt, local):
        model.save_pretrained(root / "gpt2-tiny")
        tok.save_pretrained(root / "gpt2-tiny")
        # Sharded, then saved again whole over the shards (transformers
        # deletes the shards it no longer needs).
        model.save_pretrained(root / "gpt2-sharded", max_shard_size="200KB")
    assert len([n for n in os.listdir(mnt / "gpt2-sharded") if n.startswith("model-0")]) > 2
    for root in (mnt, local):
        model.save_pretrained(root / "gpt2-sharded", max_shard_size="10MB")
    assert tree(mnt / "gpt2-tiny") == tree(local / "gpt2-tiny")
    assert tree(mnt / "gpt2-sharded") == tree(local / "gpt2-sharded")

    ro = mount(registry, "--read-only")
    for name in ("gpt2-tiny", "gpt2-sharded"):
        loaded = AutoModelForCausalLM.from_pretrained(ro / name)
        assert same_weights(model, loaded), name
    text = "w1 w2 w999 unknown"
    assert AutoTokenizer.from_pretrained(ro / "gpt2-tiny")(text)["input_ids"] == tok(text)["input_ids"]


class Tokens(torch.utils.data.Dataset):
    def __len__(self):
        return 32

    def __getitem__(self, i):
        ids = torch.randint(0, VOCAB, (16,), generator=torch.Generator().manual_seed(i))
        return {"input_ids": ids, "labels": ids}


def train(out, steps, resume=None):
    args = TrainingArguments(output_dir=str(out), max_steps=steps, save_steps=2, save_total_limit=2,
                             per_device_train_batch_size=8, report_to=[], logging_steps=1000, use_cpu=True,
                             disable_tqdm=True, seed=0)
    Trainer(model=tiny_model(), args=args, train_dataset=Tokens()).train(resume_from_checkpoint=resume)


def test_trainer_checkpoints_rotate_and_resume(run, registry, mount, tmp_path):
    mnt, local = mount(new_registry(run, registry, tmp_path)), tmp_path / "local"
    for root in (mnt, local):
        train(root / "run", 6)
        assert sorted(os.listdir(root / "run")) == ["checkpoint-4", "checkpoint-6"]
        train(root / "run", 8, resume=str(root / "run" / "checkpoint-6"))
        assert sorted(os.listdir(root / "run")) == ["checkpoint-6", "checkpoint-8"]
    on_mount, on_disk = tree(mnt / "run"), tree(local / "run")
    assert on_mount.keys() == on_disk.keys()
    assert {"model.safetensors", "optimizer.pt", "trainer_state.json"} <= {Path(p).name for p in on_mount}

    ro = mount(registry, "--read-only")
    state = (ro / "run" / "checkpoint-8" / "trainer_state.json").read_text()
    assert '"global_step": 8' in state
    # Training on CPU is deterministic: a resume that read back anything
    # other than what was saved (weights, optimizer, RNG states) ends apart.
    loaded = AutoModelForCausalLM.from_pretrained(ro / "run" / "checkpoint-8")
    assert same_weights(loaded, AutoModelForCausalLM.from_pretrained(local / "run" / "checkpoint-8"))
    optimizer = torch.load(ro / "run" / "checkpoint-8" / "optimizer.pt", weights_only=True)
    assert optimizer["state"], "the optimizer's state was saved"
