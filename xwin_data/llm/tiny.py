"""Tiny local models the toolkit makes for itself, so every recipe runs offline on a fresh machine.

A byte-level BPE tokenizer trained with `tokenizers` on the package's own text, a chat template whose assistant
turns sit in `{% generation %}` blocks (TRL's assistant-only loss needs them), a Llama-style causal LM and a
Llama-style reward model with random weights (head_dim 32, as vLLM's CPU kernels require). They are written to a
cache folder once and loaded like any other model, with `from_pretrained(path)`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from xwin_data.core.errors import MissingModelError
from xwin_data.core.origins import looks_local, missing_model_message
from xwin_data.core.fingerprint import stable_hash
from xwin_data.core.home import xwin_home

TINY_VERSION = "1"

CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message['role'] == 'assistant' %}"
    "{{- '<|assistant|>\\n' }}{% generation %}{{- message['content'] + '<|end|>' }}{% endgeneration %}{{- '\\n' }}"
    "{%- else %}"
    "{{- '<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|assistant|>\\n' }}{%- endif %}"
)
SPECIAL_TOKENS = ["<pad>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>", "<unk>"]

# Sizes: "tiny" for tests (about 0.2M parameters); "small" (about 27M) for generation benchmarks. A size's
# cache folder is named by a hash of its settings, so changing them here never reuses an older model.
SIZES = {
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                 num_key_value_heads=2, head_dim=32, vocab_size=1024),
    "small": dict(hidden_size=512, intermediate_size=1408, num_hidden_layers=7, num_attention_heads=8,
                  num_key_value_heads=8, head_dim=64, vocab_size=4096),
}


@dataclass(frozen=True)
class TinyModels:
    tokenizer: Path
    policy: Path
    reward: Path


def _corpus() -> list[str]:
    """The project's own text (its early sources and docs), frozen so the tokenizer is the same everywhere."""
    from importlib import resources

    text = (resources.files("xwin_data") / "resources" / "tiny_corpus.txt").read_text(encoding="utf-8")
    return [line for line in text.splitlines() if line.strip()]


def build_tokenizer(out: Path, vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=None, eos_token="<|end|>", pad_token="<pad>",
                                   unk_token="<unk>")
    fast.chat_template = CHAT_TEMPLATE
    fast.padding_side = "left"
    fast.save_pretrained(str(out))
    return fast


def _save_model(kind: str, out: Path, tokenizer, size: str, seed: int) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

    torch.manual_seed(seed)
    dims = {k: v for k, v in SIZES[size].items() if k != "vocab_size"}
    config = LlamaConfig(vocab_size=len(tokenizer), max_position_embeddings=2048, tie_word_embeddings=False,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                         bos_token_id=None, **dims)
    if kind == "reward":
        config.num_labels = 1
        model = LlamaForSequenceClassification(config)
    else:
        model = LlamaForCausalLM(config)
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))


def ensure_tiny_models(home: str | Path | None = None, size: str = "tiny") -> TinyModels:
    """Create (once) and return the paths of the tiny tokenizer, policy and reward model."""
    if size not in SIZES:
        raise ValueError(f"unknown tiny model size {size!r} (sizes: {', '.join(SIZES)})")
    root = Path(home) if home else xwin_home()
    base = root / "tiny-models" / f"v{TINY_VERSION}-{size}-{stable_hash(SIZES[size], length=8)}"
    paths = TinyModels(base / "tokenizer", base / "policy", base / "reward")
    done = base / ".complete"
    if done.exists():
        return paths
    base.mkdir(parents=True, exist_ok=True)
    with FileLock(str(base) + ".lock"):
        if done.exists():
            return paths
        tokenizer = build_tokenizer(paths.tokenizer, SIZES[size]["vocab_size"])
        _save_model("policy", paths.policy, tokenizer, size, seed=1234)
        _save_model("reward", paths.reward, tokenizer, size, seed=4321)
        done.write_text("ok\n")
    return paths


def resolve_model(name: str, home: str | Path | None = None) -> str:
    """`tiny-policy`, `tiny-reward`, `small-policy`, ... name the toolkit's own models; anything else (a local
    path or a hub id) is returned as is for `from_pretrained`."""
    for size in SIZES:
        for kind in ("policy", "reward", "tokenizer"):
            if name == f"{size}-{kind}":
                return str(getattr(ensure_tiny_models(home, size), kind))
    if looks_local(name) and not Path(name).expanduser().exists():
        raise MissingModelError(missing_model_message(name))
    return name
