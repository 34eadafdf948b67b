"""Information commands: env (the environment report), inspect (a key, model or evidence file),
completion (shell completion), and the key description ``ownmark key show`` shares."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from ownmark.cli.common import EXIT_OK
from ownmark.errors import ConfigError

#: The console script that shell completion is registered for.
PROG = "ownmark"


def _print_json(info: dict[str, Any]) -> None:
    # allow_nan=False: a JSON consumer must never meet NaN; fail loudly instead.
    print(json.dumps(info, indent=2, sort_keys=True, allow_nan=False))


def _shape(shape: list[int]) -> str:
    return "x".join(str(d) for d in shape)


def _value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def key_lines(info: dict[str, Any]) -> list[str]:
    """A key description (:func:`ownmark.inspection.describe_key`) as lines of text."""
    secret = set(info["secret_params"])
    params = ", ".join(
        f"{'*' if name in secret else ''}{name}={_value(value)}"
        for name, value in sorted(info["params"].items())
        if name != "secret"
    )
    extra = f" (+{info['extra_classes']} extra)" if info["extra_classes"] else ""
    lines = [
        f"commitment {info['commitment']}",
        f"scheme {info['scheme']}, {info['key_samples']} key samples (key labels "
        f"{info['key_labels']}), {info['decoys']} decoys, data {info['dataset']}",
        f"classes {info['num_classes']}{extra}, images {_shape(info['image_shape'])}",
        "parameters (resolved; * = secret, shown because the key file itself is secret): "
        + (params or "none"),
    ]
    source = info["p0_source"]
    if isinstance(source, dict):
        references = "; ".join(source.get("references", [])) or "none listed"
        lines.append(
            f"p0 {info['p0']:.4g}, calibrated at {source.get('confidence', '?')} confidence on "
            f"{len(source.get('references', []))} references ({references}): "
            f"{source.get('matches', '?')}/{source.get('trials', '?')} false matches, "
            f"{source.get('dropped', 0)} key samples dropped"
        )
    else:
        lines.append(f"p0 {info['p0']:.4g} ({source}, not calibrated on reference models)")
    lines.append(f"plan: alpha {info['alpha']:g}, budget {info['max_queries']}")
    seed = (
        f"seed {info['seed']} (given: anyone who knows it can remake the key)"
        if info["seed_source"] == "given"
        else "seed secret (drawn at random)"
    )
    lines.append(f"{seed}; created (self-declared) {info['created']}")
    lines.append(f"released model sha256: {info['released_model_sha256'] or 'none bound'}")
    lines.append("time stamp: " + ("attached" if info["timestamp"] else "none (no trusted date)"))
    tensors = ", ".join(
        f"{name} ({t['dtype']} {_shape(t['shape'])})" for name, t in info["extra_tensors"].items()
    )
    lines.append(f"extra tensors: {tensors or 'none'}")
    return lines


def model_lines(info: dict[str, Any]) -> list[str]:
    """A model description (:func:`ownmark.inspection.describe_model`) as lines of text."""
    accuracy = info["test_accuracy"]
    shown = {
        k: v
        for k, v in info["metadata"].items()
        if k not in ("test_accuracy", "seed", "key_commitment")
    }
    return [
        f"architecture {info['arch']}, {info['num_classes']} classes, input "
        f"{_shape(info['input_shape'])}",
        f"normalisation: mean {info['mean']}, std {info['std']}",
        f"parameters {info['parameters']:,} in {info['tensors']} tensors "
        f"({', '.join(info['dtypes'])}), file {info['size_bytes']:,} bytes",
        "test accuracy "
        + ("not recorded" if accuracy is None else f"{100 * accuracy:.2f}%")
        + f", seed {info['seed'] if info['seed'] is not None else 'not recorded'}",
        "key commitment: "
        + (info["key_commitment"] or "none (no key embedded by 'ownmark embed')"),
        "other metadata: " + (", ".join(f"{k}={v}" for k, v in shown.items()) or "none"),
        f"sha256 {info['sha256']}",
    ]


def evidence_lines(info: dict[str, Any]) -> list[str]:
    """An evidence description (:func:`ownmark.inspection.describe_evidence`) as lines."""
    suspect, key, test, control = info["suspect"], info["key"], info["test"], info["control"]
    if control is None:
        control_text = "none (no decoys were sent)"
    else:
        control_text = (
            f"{control.get('answered')} decoys answered, {control.get('correct')} correctly, "
            f"{control.get('key_label_hits')} with the key label: "
            + ("passed" if control.get("passed") else "FAILED")
        )
    return [
        f"verdict {str(info['verdict']).upper()}, p-value {info['p_value']:.3e} against alpha "
        f"{test['alpha']:g}, p0 {test['p0']:.4g}",
        f"suspect {suspect['address']} ({suspect['protocol']})",
        f"key commitment {key['commitment']} ({key['scheme']}, data {key['dataset']}; time "
        f"stamp {'attached' if key['timestamp'] else 'none'})",
        f"queries: {info['matches']} of {info['queries']} key queries matched, "
        f"{info['errors']} failed, {info['decoys']} decoys, {info['requests']} requests; "
        f"stopped: {info['stop_reason']}",
        f"control group: {control_text}",
        "signature: " + (f"Ed25519 key {info['signer']}" if info["signed"] else "none (unsigned)"),
        f"format {info['format_version']}, ownmark {info['ownmark_version']}, run "
        f"{info['started']} to {info['finished']}",
        "not re-checked here: run 'ownmark evidence check FILE --key KEY'",
    ]


def show_key(path: Any, as_json: bool) -> None:
    """Print the key file at ``path`` (``ownmark key show`` and ``ownmark inspect``)."""
    from ownmark.inspection import describe_key
    from ownmark.keys import load_key

    info = {"path": str(path), **describe_key(load_key(path))}
    if as_json:
        _print_json(info)
    else:
        print("\n".join(key_lines(info)))


def cmd_inspect(args: argparse.Namespace) -> int:
    from ownmark.inspection import inspect_file

    info = inspect_file(args.path)
    if args.json:
        _print_json(info)
        return EXIT_OK
    kind = info["kind"]
    render: Callable[[dict[str, Any]], list[str]] = {
        "key": key_lines,
        "model": model_lines,
        "evidence": evidence_lines,
    }[kind]
    note = " (secret: keep it private)" if kind == "key" else ""
    print(f"{args.path}: ownmark {kind} file, format {info['format_version']}{note}")
    print("\n".join(render(info)))
    return EXIT_OK


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def env_lines(report: dict[str, Any]) -> list[str]:
    """The environment report (:func:`ownmark.envinfo.environment_report`) as lines."""
    torch_info, python, machine = report["torch"], report["python"], report["platform"]
    backends = torch_info["backends"]
    available = (
        ", ".join(
            name for name in ("cuda", "mps", "cudnn", "mkl", "mkldnn", "openmp") if backends[name]
        )
        or "none"
    )
    cores = f"{machine['cores']} cores"
    if machine["usable_cores"] is not None and machine["usable_cores"] != machine["cores"]:
        cores += f" ({machine['usable_cores']} usable by this process)"
    lines = [
        f"ownmark      {report['ownmark']}",
        f"python       {python['version']} ({python['implementation']}, {python['executable']})",
        f"torch        {torch_info['version']}, build {torch_info['build']}",
        f"backends     available: {available}; MPS built: {_yes(backends['mps_built'])}",
    ]
    if torch_info["cuda_devices"]:
        lines.append(f"gpus         {', '.join(torch_info['cuda_devices'])}")
    lines += [
        f"device       {report['device']} (what --device auto picks: CUDA, then MPS, then CPU)",
        f"threads      {torch_info['threads']} intra-op, {torch_info['interop_threads']} inter-op",
    ]
    for name, version in report["packages"].items():
        lines.append(f"{name:12s} {version or 'not installed'}")
    lines += [
        f"platform     {machine['description']} ({machine['machine']})",
        f"cpu          {machine['cpu'] or 'unknown'}, {cores}",
    ]
    for name, value in report["variables"].items():
        lines.append(f"env          {name}={value}")
    return lines


def cmd_env(args: argparse.Namespace) -> int:
    from ownmark.envinfo import environment_report

    report = environment_report()
    if args.json:
        _print_json(report)
    else:
        print("\n".join(env_lines(report)))
    return EXIT_OK


def completion_script(shell: str) -> str:
    """What to ``eval`` in ``shell`` to complete ``ownmark`` (argcomplete's registration).

    argcomplete's ``register-python-argcomplete`` writes a shell function that calls
    ``ownmark`` with the command line in environment variables; :func:`ownmark.cli.main`
    answers those calls with the parser's commands and options (so completion always
    matches the installed version).

    Raises:
        ConfigError: argcomplete is not installed.
    """
    try:
        from argcomplete.shell_integration import shellcode
    except ImportError:
        raise ConfigError(
            "shell completion needs argcomplete: pip install 'ownmark[completion]'"
        ) from None
    return str(shellcode([PROG], shell=shell))


def cmd_completion(args: argparse.Namespace) -> int:
    if args.script:
        print(completion_script(args.shell), end="")
        return EXIT_OK
    completion_script(args.shell)  # fails here, with the install line, if it cannot work
    rc_file = {"bash": "~/.bashrc", "zsh": "~/.zshrc"}[args.shell]
    print(f"# {PROG} completion for {args.shell} (argcomplete); add these lines to {rc_file}")
    if args.shell == "zsh":
        print("autoload -U compinit && compinit")
    print(f'eval "$(register-python-argcomplete {PROG})"')
    return EXIT_OK
