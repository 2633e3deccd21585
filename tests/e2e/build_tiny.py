"""Build a tiny random Llama model and three LoRA adapters for end-to-end vLLM tests.

Run with the vLLM venv's interpreter (needs torch, transformers, tokenizers, peft)::

    $VENV/bin/python tests/e2e/build_tiny.py OUTDIR

Creates, fully offline and deterministically (fixed seeds, fixed training text):

- ``OUTDIR/model``   tiny ``LlamaForCausalLM`` (vocab 2048, hidden 128, 2 layers, 4 heads,
  2 kv heads, head dim 32, float32) with a byte-level BPE tokenizer trained on the Python
  standard library's source and a one-line chat template;
- ``OUTDIR/lora-a``, ``OUTDIR/lora-b``  two LoRA adapters (r=8, q_proj/v_proj) with
  different random weights;
- ``OUTDIR/lora-a2`` "new weights for adapter A", used to test an in-place weight swap
  (``POST /v1/load_lora_adapter {"lora_name": "lora-a", "lora_path": ..lora-a2,
  "load_inplace": true}``).

Each adapter changes the greedy output versus the base model and versus the others.
A stamp file ``OUTDIR/.build-stamp`` marks a complete build: rerunning is a no-op.
Prints OUTDIR on its last stdout line.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import sys
import sysconfig
from pathlib import Path

BUILD_VERSION = "tiny-llama-v2"
VOCAB_SIZE = 2048
SPECIALS = ["<s>", "</s>", "<pad>"]  # ids 0, 1, 2
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)
MODEL_SEED = 1234
LORA_SEEDS = {"lora-a": 1, "lora-b": 2, "lora-a2": 3}
STAMP_NAME = ".build-stamp"
MAX_TRAIN_CHARS = 1_500_000


def _stamp_text() -> str:
    return json.dumps(
        {
            "version": BUILD_VERSION,
            "vocab": VOCAB_SIZE,
            "model_seed": MODEL_SEED,
            "lora_seeds": LORA_SEEDS,
        },
        sort_keys=True,
    )


def is_complete(outdir: Path) -> bool:
    stamp = outdir / STAMP_NAME
    if not stamp.is_file() or stamp.read_text() != _stamp_text():
        return False
    needed = [outdir / "model" / "config.json", outdir / "model" / "tokenizer.json"]
    needed += [outdir / name / "adapter_config.json" for name in LORA_SEEDS]
    return all(p.is_file() for p in needed)


def _training_text() -> list[str]:
    """Deterministic local corpus: the stdlib's top-level .py files, in sorted order."""
    stdlib = sysconfig.get_paths()["stdlib"]
    texts: list[str] = []
    total = 0
    for path in sorted(glob.glob(os.path.join(stdlib, "*.py"))):
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
        texts.append(text)
        total += len(text)
        if total >= MAX_TRAIN_CHARS:
            break
    return texts


def build_tokenizer(model_dir: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_training_text(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        model_max_length=512,
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(str(model_dir))


def build_model(model_dir: Path) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(MODEL_SEED)
    config = LlamaConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=2,
        tie_word_embeddings=False,
        # Larger than the default 0.02 so greedy output is varied (not one repeated token),
        # for the base model and with each adapter: token-exact checks stay meaningful.
        initializer_range=0.1,
        torch_dtype="float32",
    )
    model = LlamaForCausalLM(config).to(torch.float32)
    model.save_pretrained(str(model_dir), safe_serialization=True)


def build_lora(model_dir: Path, lora_dir: Path, seed: int) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    base = LlamaForCausalLM.from_pretrained(str(model_dir), torch_dtype=torch.float32)
    torch.manual_seed(seed)
    cfg = LoraConfig(
        r=8,
        lora_alpha=16,
        target_modules=["q_proj", "v_proj"],
        lora_dropout=0.0,
        bias="none",
        task_type="CAUSAL_LM",
        init_lora_weights=False,
    )
    peft_model = get_peft_model(base, cfg)
    peft_model.save_pretrained(str(lora_dir), safe_serialization=True)


def build(outdir: Path) -> Path:
    outdir.mkdir(parents=True, exist_ok=True)
    if is_complete(outdir):
        print(f"build_tiny: {outdir} is already complete", file=sys.stderr)
        return outdir
    stamp = outdir / STAMP_NAME
    stamp.unlink(missing_ok=True)
    # Build into a scratch dir, then move into place, so a crash never leaves a half build.
    tmp = outdir / ".building"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    model_dir = tmp / "model"
    build_tokenizer(model_dir)
    build_model(model_dir)
    for name, seed in LORA_SEEDS.items():
        build_lora(model_dir, tmp / name, seed)
    for name in ["model", *LORA_SEEDS]:
        shutil.rmtree(outdir / name, ignore_errors=True)
        (tmp / name).rename(outdir / name)
    shutil.rmtree(tmp, ignore_errors=True)
    # Adapters record the base path they were built from; point it at the final location.
    for name in LORA_SEEDS:
        cfg_path = outdir / name / "adapter_config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg["base_model_name_or_path"] = str((outdir / "model").resolve())
        cfg["target_modules"] = sorted(cfg["target_modules"])  # saved from a set
        cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True))
    stamp.write_text(_stamp_text())
    return outdir


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(f"usage: {argv[0]} OUTDIR", file=sys.stderr)
        return 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    out = build(Path(argv[1]).resolve())
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
