"""The oracle of exported edits: each model steered in-process, its export loaded by the plain
framework in a process that never imports mlx_steer (``export_worker.py``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

PROMPT = "The weather is great, happy people walk"
WORKER = Path(__file__).with_name("export_worker.py")


def export_and_load_plain(backend: str, root: Path, cases: dict) -> dict:
    """``cases``: {key: (model, interventions)}. Per key: (base logits, steered logits, steered
    greedy, eos ids, folder, plain logits, plain greedy), the model checked unchanged by its export."""
    jobs, expected = [], {}
    for key, (m, spec) in cases.items():
        tokens = m.encode(PROMPT)
        base = m.to_numpy(m.run([tokens]).logits)[0]
        logits = m.to_numpy(m.run([tokens], interventions=spec).logits)[0]
        greedy = m.generate_tokens(tokens, max_tokens=32, interventions=spec)
        folder = m.export(root / "-".join(key) if isinstance(key, tuple) else root / key, spec)
        np.testing.assert_array_equal(m.to_numpy(m.run([tokens]).logits)[0], base)  # the model is not changed
        jobs.append([str(folder), tokens])
        expected[key] = (base, logits, greedy, m.eos_token_ids, folder)
    (root / "jobs.json").write_text(json.dumps(jobs))
    done = subprocess.run([sys.executable, str(WORKER), backend, str(root / "jobs.json"), str(root / "out.npz")],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    plain = np.load(root / "out.npz")
    return {key: (*expected[key], plain[f"{i}/logits"], plain[f"{i}/greedy"].tolist()) for i, key in enumerate(expected)}
