"""What ``--help`` says beyond the options: the top-level description and each command's examples.

Kept apart from :mod:`ownmark.cli.parser` so that the examples read as one document and the
option definitions stay short. :func:`add_epilogs` attaches the examples after the parser is
built, to every command and sub-command by its path (``"key show"``); a command without
examples here gets none, which ``tests/test_cli_info.py`` catches.
"""

from __future__ import annotations

import argparse
import textwrap
from typing import Any

__all__ = ["DESCRIPTION", "EPILOG", "EXAMPLES", "HelpFormatter", "add_epilogs", "subcommands"]

#: ``ownmark --help``: what ownmark does for a user, the main flow, and the exit codes.
DESCRIPTION = """\
ownmark watermarks image classifiers and proves ownership of copies that turn up
behind someone else's prediction API, from the API's answers alone.

The main flow:
  ownmark keygen   make a secret watermark key (trigger images and their labels);
                   --reference MODEL ... calibrates its false-match rate p0 on
                   innocent models
  ownmark embed    train a model that answers the key's labels on its triggers,
                   and bind the released model's SHA-256 into the key
  ownmark verify   query a suspect model or API with the key and its decoys; get a
                   verdict with a p-value and an evidence file anyone holding the
                   key can re-check ('ownmark evidence check')

Try the whole flow on the built-in MNIST digits: ownmark demo (about 100 s on
2 CPU cores). 'ownmark env' reports versions and devices; 'ownmark inspect FILE'
describes a key, model or evidence file. 'ownmark --json COMMAND ...' prints the
command's result as one JSON object on stdout (its usual text goes to stderr).

Exit codes: 0 success / owned, 1 not owned, 2 bad input or usage (one line on
stderr, no file left behind), 3 inconclusive, 130 interrupted; 'evidence check':
0 intact and signed by the pinned key, 1 invalid, 4 intact but unsigned."""

#: ``ownmark --help``'s closing lines.
EPILOG = """\
Examples:
  ownmark demo --out ownmark-demo
  ownmark keygen --scheme content --out key.safetensors
  ownmark embed --key key.safetensors --epochs 20 --out marked.safetensors
  ownmark verify --key key.safetensors --url http://127.0.0.1:8000/v2/models/marked

'ownmark COMMAND --help' lists a command's options (with their defaults) and examples."""

#: Examples per command path; each becomes that command's "Examples:" epilog.
EXAMPLES: dict[str, str] = {
    "list": """\
  ownmark list                 # every scheme, model, attack, data set, protocol, backend
  ownmark list schemes         # the watermark schemes and their parameters""",
    "data": """\
  ownmark data download mnist --to data/mnist""",
    "data download": """\
  ownmark data download mnist --to data/mnist       # official files, MD5-checked
  ownmark data download cifar10 --to data/cifar10 --mirror https://example.org/cifar""",
    "keygen": """\
  ownmark keygen --scheme content --out key.safetensors --preview key.png
  ownmark keygen --scheme content --out key.safetensors \\
      --reference ref1.safetensors ref2.safetensors other-ref.safetensors  # calibrates p0
  ownmark keygen --scheme noise --num-keys 50 --alpha 1e-4 --out key.safetensors""",
    "key": """\
  ownmark key show key.safetensors
  ownmark key timestamp key.safetensors --tsa https://freetsa.org/tsr""",
    "key timestamp": """\
  ownmark key timestamp key.safetensors --tsa https://freetsa.org/tsr
  ownmark key timestamp key.safetensors --tsa https://tsa.example --tsa-cert tsa.pem""",
    "key show": """\
  ownmark key show key.safetensors
  ownmark key show key.safetensors --json | jq .p0_source""",
    "calibrate": """\
  ownmark calibrate key.safetensors --out calibrated.safetensors \\
      --reference ref1.safetensors ref2.safetensors other-ref.safetensors""",
    "preview": """\
  ownmark preview key.safetensors --out key.png --count 8""",
    "train": """\
  ownmark train --epochs 20 --out clean.safetensors
  ownmark train --model lenet5 --seed 8 --out ref2.safetensors
  ownmark train --data mnist --data-path data/mnist --out mnist.safetensors \\
      --checkpoint run.ckpt       # after an interruption: the same line plus --resume""",
    "embed": """\
  ownmark embed --key key.safetensors --epochs 20 --out marked.safetensors
  ownmark embed --key key.safetensors --from clean.safetensors --epochs 5 \\
      --out marked.safetensors --key-out released-key.safetensors""",
    "verify": """\
  ownmark verify --key key.safetensors --model suspect.safetensors
  ownmark verify --key key.safetensors --url http://127.0.0.1:8000/v2/models/marked \\
      --first-seen 2026-06-01 --evidence case.json
  ownmark verify --key key.safetensors --url http://host:8080/v2/models/mnist \\
      --input-name input-0 --input-datatype FP32 --scale unit --input-shape 1,28,28""",
    "trace": """\
  for i in 1 2 3 4 5; do ownmark keygen --scheme udh --licensee $i --out keys/l$i.safetensors; done
  ownmark trace --keys keys --url http://127.0.0.1:8000/v2/models/suspect   # 0: named, 1: none
  ownmark trace --keys keys --model suspect.safetensors --alpha 1e-3""",
    "evidence": """\
  ownmark evidence keypair owner
  ownmark evidence check case.json --key key.safetensors --public-key owner.pub""",
    "evidence check": """\
  ownmark evidence check case.json --key key.safetensors                  # 4: unsigned
  ownmark evidence check case.json --key key.safetensors --public-key owner.pub""",
    "evidence keypair": """\
  ownmark evidence keypair owner        # owner (private, keep it) and owner.pub""",
    "serve": """\
  ownmark serve marked.safetensors --port 8000
  ownmark serve marked.onnx --backend onnxruntime --answer topk --top-k 3""",
    "export": """\
  ownmark export marked.safetensors --onnx marked.onnx""",
    "attack": """\
  ownmark attack prune --model marked.safetensors --key key.safetensors --sweep rate=0.1..0.9
  ownmark attack finetune --model marked.safetensors --key key.safetensors -p epochs=5 \\
      --out tuned.safetensors""",
    "matrix": """\
  ownmark matrix --out matrix/ --seeds 0,1
  ownmark matrix --out matrix/ --attacks "prune:rate=0.1..0.9,finetune:epochs=5" \\
      --schemes content,noise --epochs 4""",
    "demo": """\
  ownmark demo                          # writes ownmark-demo/
  ownmark demo --out demo-noise --scheme noise --seed 1 > demo.log 2>&1""",
    "env": """\
  ownmark env
  ownmark env --json > environment.json       # attach to a bug report""",
    "inspect": """\
  ownmark inspect key.safetensors
  ownmark inspect marked.safetensors
  ownmark inspect case.json --json""",
    "completion": """\
  ownmark completion bash >> ~/.bashrc          # then open a new shell
  eval "$(ownmark completion zsh)"              # this zsh session only
  ownmark completion bash --script > ~/.local/share/bash-completion/completions/ownmark""",
}


def _attack_example(name: str, entry: Any) -> str:
    """Examples for ``ownmark attack NAME`` (one sub-command per registered attack).

    Built from the attack's declared parameters, so an attack registered by a plug-in gets
    examples too: its first numeric parameter (other than the seed) is set and swept.
    """
    numeric = [
        p
        for p in entry.params.values()
        if isinstance(p.default, (int, float)) and not isinstance(p.default, bool)
        if p.name != "seed"
    ]
    start = f"  ownmark attack {name} --model marked.safetensors --key key.safetensors"
    if not numeric:
        return f"{start} \\\n      --out marked-{name}.safetensors"
    p = numeric[0]
    values = "0.1..0.9" if isinstance(p.default, float) else "1,2,5"
    return (
        f"{start} -p {p.name}={p.default} \\\n      --out marked-{name}.safetensors\n"
        f"{start} --sweep {p.name}={values}"
    )


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Examples kept as written, prose wrapped, and every default said.

    Like :class:`argparse.RawDescriptionHelpFormatter`, a description or epilog paragraph
    that is laid out by hand (several lines) is printed as written, so examples stay one per
    line; unlike it, a one-line paragraph (most command descriptions) is wrapped to the
    terminal. Like :class:`argparse.ArgumentDefaultsHelpFormatter`, every option's default
    is shown, except where the help text already says it in its own words ("default: the
    key's plan, 100"), and flags, required options and options without a default get no
    "(default: None)" noise.
    """

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        paragraphs = []
        for paragraph in text.split("\n\n"):
            if "\n" in paragraph.strip("\n"):
                paragraphs.append("".join(indent + line for line in paragraph.splitlines(True)))
            else:
                paragraphs.append(
                    textwrap.fill(
                        " ".join(paragraph.split()),
                        width,
                        initial_indent=indent,
                        subsequent_indent=indent,
                    )
                )
        return "\n\n".join(paragraphs)

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help
        if not text or "default" in text or action.required:
            return text
        if action.default in (None, False, [], argparse.SUPPRESS):
            return text
        if isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            return text
        return f"{text} (default: %(default)s)"


def subcommands(parser: argparse.ArgumentParser, path: str = "") -> dict[str, Any]:
    """Every command under ``parser`` by its path (``"key show"``), depth first."""
    found: dict[str, Any] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                full = f"{path} {name}".strip()
                found[full] = sub
                found.update(subcommands(sub, full))
    return found


def add_epilogs(parser: argparse.ArgumentParser) -> None:
    """Give the top-level parser and every command its "Examples:" epilog (see EXAMPLES)."""
    from ownmark.attacks import ATTACKS

    parser.epilog = EPILOG
    for path, sub in subcommands(parser).items():
        text = EXAMPLES.get(path)
        words = path.split()
        if text is None and len(words) == 2 and words[0] == "attack" and words[1] in ATTACKS:
            text = _attack_example(words[1], ATTACKS.entry(words[1]))
        if text is not None:
            sub.epilog = "Examples:\n" + text
