"""Tiny random models built from configs, saved as HF folders that mlx-lm and transformers both load.

Nothing is downloaded: the tokenizer is a byte-level BPE trained here on a fixed corpus, the
weights are drawn from a seeded torch generator. Each folder is built once per test session.
"""

from __future__ import annotations

import json
from pathlib import Path

VOCAB = 384
HIDDEN = 64
LAYERS = 4
HEADS = 4

ARCHS = ("llama", "qwen2", "gemma2", "phi3", "gpt2")

CORPUS = [
    "I love this wonderful day and I hate the rain.",
    "The weather is great, happy people walk in the sun.",
    "This is terrible, awful and sad news for everyone.",
    "Tell me a story about a cat who lives on a boat.",
    "Paris is the capital of France. Berlin is in Germany.",
    "def add(a, b): return a + b  # numbers 0 1 2 3 4 5 6 7 8 9",
    "Q: What is two plus two? A: Four. The answer is correct.",
] * 20

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def _config(arch: str):
    import transformers as tf

    common = dict(vocab_size=VOCAB, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    attn = dict(
        hidden_size=HIDDEN,
        intermediate_size=2 * HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        max_position_embeddings=512,
    )
    if arch == "llama":
        return tf.LlamaConfig(**common, **attn, num_key_value_heads=2, tie_word_embeddings=False)
    if arch == "qwen2":
        return tf.Qwen2Config(**common, **attn, num_key_value_heads=2, tie_word_embeddings=True)
    if arch == "gemma2":
        return tf.Gemma2Config(
            **common, **attn, num_key_value_heads=2, head_dim=HIDDEN // HEADS,
            query_pre_attn_scalar=HIDDEN // HEADS, sliding_window=512,  # mlx-lm gemma2 has no window
        )
    if arch == "phi3":
        return tf.Phi3Config(**common, **attn, num_key_value_heads=HEADS, tie_word_embeddings=False)
    if arch == "gpt2":
        return tf.GPT2Config(
            vocab_size=VOCAB, n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS, n_positions=512, n_ctx=512,
            bos_token_id=1, eos_token_id=2,
        )
    raise ValueError(f"unknown tiny architecture {arch!r}; valid: {ARCHS}")


MARKERS = ("<think>", "</think>", "<tool_call>", "</tool_call>")  # added tokens of a "reasoning" tokenizer


def build_tokenizer(*, markers: bool = False):
    """The tiny byte-level BPE; ``markers=True`` adds :data:`MARKERS` as special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>"]
    specials += list(MARKERS) if markers else []
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB, special_tokens=specials, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def fix_rope_theta(folder: Path) -> None:
    """mlx-lm reads a top-level rope_theta; transformers 5 nests it in rope_parameters."""
    path = Path(folder) / "config.json"
    cfg = json.loads(path.read_text())
    rope = cfg.get("rope_parameters") or {}
    if "rope_theta" in rope and "rope_theta" not in cfg:
        cfg["rope_theta"] = rope["rope_theta"]
        path.write_text(json.dumps(cfg, indent=2))


def build(arch: str, folder: Path, *, seed: int = 0, markers: bool = False) -> Path:
    """Save a seeded random `arch` model (fp32) and the tiny tokenizer to `folder` (with the
    reasoning markers as added tokens when ``markers``)."""
    import torch
    from transformers import AutoModelForCausalLM

    folder = Path(folder)
    if (folder / "config.json").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    config = _config(arch)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():  # default init is tiny; widen it so layers actually change the stream
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.08)
    model.save_pretrained(folder)
    build_tokenizer(markers=markers).save_pretrained(folder)
    fix_rope_theta(folder)
    if arch == "gpt2":
        _strip_gpt2_prefix(folder)
    return folder


def _strip_gpt2_prefix(folder: Path) -> None:
    """Save gpt2 weights the way the original checkpoints are (`h.0...`), which mlx-lm expects."""
    from safetensors.numpy import load_file, save_file

    path = folder / "model.safetensors"
    weights = load_file(path)
    weights = {k.removeprefix("transformer."): v for k, v in weights.items() if k != "lm_head.weight"}
    save_file(weights, path, metadata={"format": "pt"})
