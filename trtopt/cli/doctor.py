"""``trtopt doctor``: what this machine can run, and what to install.
"""

from __future__ import annotations

import argparse

from trtopt._version import __version__
from trtopt.cli._common import JSON_HELP, write_json_output


def cmd_doctor(args: argparse.Namespace) -> int:
    """``trtopt doctor``: print what this machine can run and what to install; exit status."""
    from trtopt.doctor import diagnose

    found = diagnose()
    if args.json:
        write_json_output(args.json, found, force=False)
        return 0
    env = found["environment"]
    print(f"trtopt {__version__} · Python {env['python']} · {env['cpu_model']} ({env['cpu_count_logical']} CPUs)")
    for name, pkg in sorted(env["packages"].items()):
        print(f"  {name:18} {pkg}")
    print("backends:")
    for name, b in found["backends"].items():
        print(f"  {name:12} {'yes' if b['available'] else 'no ':3}  {b['detail']}")
    ort = found["onnxruntime"]
    if ort["available"]:
        print(f"onnxruntime providers: {', '.join(ort['providers'])}")
    cuda = found["cuda"]
    print(f"CUDA: {str(cuda['device_count']) + ' device(s)' if cuda['available'] else cuda['reason']}")
    print(f"GPU: {', '.join(g['name'] for g in found['gpus']) or 'none'}")
    trt = found["tensorrt"]
    print(f"TensorRT: {trt['version'] or 'not installed'}; CUDA libraries: {', '.join(trt['cuda_libraries']) or 'none'}; "
          f"GPUs (CUDA): {', '.join(d['name'] + ' sm_' + d['compute_capability'] for d in cuda.get('devices', [])) or 'none'}")
    mo = found["modelopt"]
    print(f"ModelOpt: {mo['version'] or 'not installed'}" + (f" (missing: {', '.join(mo['missing'])})" if mo["missing"] else ""))
    for line in found["advice"]:
        print(f"advice: {line}")
    return 0


def add_commands(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Register this family's subcommands on ``sub`` (``common``: the flags every subcommand takes)."""
    p = sub.add_parser("doctor", parents=[common], help="what this machine can run and what to install")
    p.add_argument("--json", nargs="?", const="-", metavar="FILE", help=JSON_HELP + " (alone: standard output)")
    p.set_defaults(func=cmd_doctor)
