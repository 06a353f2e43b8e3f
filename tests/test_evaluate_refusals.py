"""``evaluate`` refuses what it cannot finish before it starts: ``max_tokens`` past the model's
context (a learned position table, else the length its config declares) before any forward, in the
library and the command; a bad items file (too deeply nested, not UTF-8, items without their fields)
with an error naming the file; and a failed command leaves no ``-o`` folder behind. ``sae train``
with ``-o`` naming an existing file says -o must be a folder."""

from __future__ import annotations

import json

import numpy as np
import pytest

import mlx_steer as ms
from mlx_steer import evaluate as ev
from mlx_steer.cli import main
from torch_fixtures import *  # noqa: F403  (fixtures)
from torch_fixtures import BACKENDS

ITEMS = [{"question": "Is it good?\n\nChoices:\n (A) Yes\n (B) No", "answer_matching": "(A)",
          "answer_not_matching": "(B)"},
         {"question": "Is it bad?\n\nChoices:\n (A) No\n (B) Yes", "answer_matching": "(B)",
          "answer_not_matching": "(A)"}]
PROMPTS = ["The cat sat on the mat", "I love the rain"]
CONTEXT = 512  # tests/tiny_models.py: max_position_embeddings (llama), n_positions (gpt2)


class NoForward(AssertionError):
    pass


def _no_forward(*args, **kwargs):
    raise NoForward("a forward ran before max_tokens was checked")


def _longest(m, prompts) -> int:
    return max(len(m.tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                                   tokenize=True, return_dict=False)) for p in prompts)


# -- max_tokens against the context, in the library -------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("arch", ["llama", "gpt2"])  # rotary (the config's length), a learned position table
def test_evaluate_refuses_max_tokens_past_the_context_before_any_forward(fresh_models, backend, arch, monkeypatch):
    m = fresh_models(backend, arch)
    monkeypatch.setattr(m.backend, "forward", _no_forward)
    longest = _longest(m, PROMPTS)
    with pytest.raises(ValueError) as exc:
        ev.evaluate(m, vector=np.ones(m.hidden_size, np.float32), layers=[1], strengths=[0.0, 2.0], items=ITEMS,
                    prompts=PROMPTS, judge=ev.substring_judge(["the"]), max_tokens=10**9, progress=False)
    assert str(exc.value) == (f"the longest prompt ({longest}) + max_tokens (1000000000) is {longest + 10**9} tokens "
                              f"but this model has {CONTEXT} tokens of context; at most {CONTEXT} tokens fit")


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_bound_is_the_context_exactly(backend_models, backend):
    from mlx_steer.evaluate.evaluation import check_max_tokens

    m = backend_models(backend, "llama")
    assert m.context_length == CONTEXT
    room = CONTEXT - _longest(m, PROMPTS)
    check_max_tokens(m, PROMPTS, max_tokens=room)
    with pytest.raises(ValueError, match=f"at most {CONTEXT} tokens fit"):
        check_max_tokens(m, PROMPTS, max_tokens=room + 1)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_the_server_reads_the_same_context_from_the_folder(backend_models, tiny_dir, arch):
    from mlx_steer.serve.app import context_length_of

    assert context_length_of(tiny_dir(arch)) == backend_models("mlx", arch).context_length == \
        backend_models("torch", arch).context_length == CONTEXT


# -- the command line ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_dir, shared_models) -> dict:
    d = tmp_path_factory.mktemp("evaluate_refusals")
    m = shared_models("llama")
    ms.save_vector(ms.extract(m, ["I love it", "great"], ["I hate it", "awful"], sites=["layers.1"]),
                   d / "vec.safetensors")
    (d / "items.jsonl").write_text("".join(json.dumps(i) + "\n" for i in ITEMS))
    (d / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    deep = "[" * 100_000 + "]" * 100_000
    (d / "deep.json").write_text(deep)
    (d / "deep_line.jsonl").write_text(json.dumps(ITEMS[0]) + "\n" + deep + "\n")
    (d / "latin1.jsonl").write_bytes(json.dumps(ITEMS[0]).replace("good", "gr\xfcn").encode("latin-1"))
    (d / "fieldless.jsonl").write_text('{"question": "q"}\n')
    (d / "empty.jsonl").write_text("\n")
    return {"dir": d, "model": str(tiny_dir("llama")), "vec": str(d / "vec.safetensors")}


def _evaluate(files: dict, out, *args: str) -> list[str]:
    return ["evaluate", "--model", files["model"], "--vector", files["vec"], "--layers", "1", "--strengths", "0", "2",
            "--no-progress", "-o", str(out), *args]


def user_error(argv: list[str], capsys) -> str:
    """``main(argv)`` returns 2 with one ``error: ...`` line on stderr; returns the message."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err[len("error: "):].rstrip("\n")


@pytest.mark.parametrize("name, message", [
    ("deep.json", "{path}: JSON nested too deeply; give a JSON list of items or one item per line"),
    ("deep_line.jsonl", "{path}: line 2: JSON nested too deeply; expected one item per line"),
    ("latin1.jsonl", "{path}: not UTF-8 text (invalid start byte at byte {byte}); give a JSON list or one item per line"),
    ("fieldless.jsonl", "{path}: A/B item 0 needs 'question', 'answer_matching' and 'answer_not_matching' "
                        "(or CAA's *_behavior names); it has ['question']"),
    ("empty.jsonl", "{path}: no A/B items given"),
])
def test_bad_items_files_are_named_and_leave_no_output_folder(files, name, message, tmp_path, capsys):
    out = tmp_path / "out"
    path = str(files["dir"] / name)
    byte = (files["dir"] / name).read_bytes().find(b"\xfc")  # where the latin-1 u-umlaut is
    assert user_error(_evaluate(files, out, "--items", path), capsys) == message.format(path=path, byte=byte)
    assert not out.exists()


@pytest.mark.parametrize("args, message", [
    (["--layers", "99"], "layer 99 out of range for a 4-layer model; valid: -4..3"),  # known once it loads
    (["--max-tokens", "1000000000"], "max_tokens (1000000000) is"),
])
def test_a_run_refused_after_loading_leaves_no_output_folder(files, args, message, tmp_path, capsys, monkeypatch):
    from mlx_steer.cli import loading

    real = loading.load_model

    def load_without_forwards(*a, **kw):
        m = real(*a, **kw)
        monkeypatch.setattr(m.backend, "forward", _no_forward)  # nothing runs before the refusal
        return m

    monkeypatch.setattr(loading, "load_model", load_without_forwards)
    out = tmp_path / "out"
    argv = _evaluate(files, out, "--items", str(files["dir"] / "items.jsonl"), "--prompts-file",
                     str(files["dir"] / "prompts.txt"), "--judge", "substring:the", *args)
    assert message in user_error(argv, capsys)
    assert not out.exists()


def test_a_failed_write_removes_the_folder_it_made(files, tmp_path, capsys, monkeypatch):
    def broken_plot(self, path, **kwargs):
        raise OSError(f"cannot write {path}: disk full")

    monkeypatch.setattr(ev.EvalTable, "plot", broken_plot)
    made, kept = tmp_path / "made", tmp_path / "kept"
    kept.mkdir()
    (kept / "notes.txt").write_text("mine")
    for out in (made, kept):
        argv = _evaluate(files, out, "--items", str(files["dir"] / "items.jsonl"), "--max-tokens", "2")
        assert user_error(argv, capsys) == f"cannot write {out / 'plot.png'}: disk full"
    assert not made.exists()
    assert (kept / "notes.txt").read_text() == "mine"  # a folder it did not make stays


def test_a_successful_run_still_writes_into_a_new_folder(files, tmp_path, capsys):
    out = tmp_path / "new"
    assert main(_evaluate(files, out, "--items", str(files["dir"] / "items.jsonl"))) == 0, capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["plot.png", "table.csv", "table.json"]


# -- sae train -o FILE ---------------------------------------------------------------------------------
def test_sae_train_into_an_existing_file_says_o_is_a_folder(files, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("mlx_steer.cli.loading.load_model", _no_forward)
    target = tmp_path / "sae.bin"
    target.write_bytes(b"keep")
    for extra in ([], ["--overwrite"]):
        with pytest.raises(SystemExit) as exc:
            main(["sae", "train", "--model", files["model"], "--site", "layers.1", "--prompts",
                  str(files["dir"] / "prompts.txt"), "-o", str(target), *extra])
        err = capsys.readouterr().err
        assert exc.value.code == 2 and "Traceback" not in err
        line = err.strip().splitlines()[-1]
        assert line.endswith(f"error: {target} is an existing file; -o must be a folder path (a new or empty folder)")
        assert "--overwrite" not in line
    assert target.read_bytes() == b"keep"
