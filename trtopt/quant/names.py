"""The three names of a layer in an exported model: ONNX node, ONNX tensor, PyTorch module.

The exporters name a parameter's initializer after the PyTorch parameter (``_blocks.13._expand_conv.weight``;
a batch norm folded into the conv gives ``..._expand_conv.weight_bias``), while nodes and activations get
exporter-internal names (``node_Conv_835``, ``getitem_69``). So the module of a node is the module of the
parameters it reads, and a node without parameters (the ReLU after a conv) belongs to the module of what
feeds it. `resolve_layer_names` turns any of the three names into node names, for ``quantize --exclude``;
`node_modules` labels per-layer error plots with modules.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from trtopt.errors import TrtoptError


def _own_modules(model: Any) -> dict[str, str]:
    """node name → module of the parameters (initializers named ``<module>.<param>``) it reads directly."""
    inits = {i.name for i in model.graph.initializer}
    own = {}
    for node in model.graph.node:
        module = next((name.rsplit(".", 1)[0] for name in node.input if name in inits and "." in name), None)
        if module:
            own[node.name] = module
    return own


def node_modules(model: Any) -> dict[str, str]:
    """node name → PyTorch module path, for every node whose module can be told (an ``onnx.ModelProto``).

    A node reading a parameter belongs to that parameter's module; any other node inherits the module of
    the node producing its first input that has one (graph order is topological), so an activation is
    labelled with the layer it follows.
    """
    own = _own_modules(model)
    by_tensor: dict[str, str] = {}
    modules = {}
    for node in model.graph.node:
        module = own.get(node.name) or next((by_tensor[i] for i in node.input if i in by_tensor), None)
        if module:
            modules[node.name] = module
            by_tensor.update(dict.fromkeys(node.output, module))
    return modules


#: Ops that make a model worth quantizing at all (they hold the MACs); an --exclude error offers their nodes.
COMPUTE_OP_TYPES = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def resolve_layer_names(model: Any, names: Iterable[str], model_name: str = "the model") -> dict[str, tuple[str, list[str]]]:
    """Each of ``names`` → (what it named: "node", "tensor" or "module", the node names it stands for).

    A node name stands for itself; a tensor name for the node that produces it; a PyTorch module path
    (``_blocks.13._expand_conv``, or a parent such as ``_blocks.13``) for every node reading that module's
    parameters. Node names win over tensor names, tensor names over modules.

    Raises:
        TrtoptError: a name that is none of the three; the fix names some of the model's layers.
    """
    nodes = {n.name for n in model.graph.node}
    producer = {out: n.name for n in model.graph.node for out in n.output}
    own = _own_modules(model)
    resolved = {}
    for name in names:
        if name in nodes:
            resolved[name] = ("node", [name])
        elif name in producer:
            resolved[name] = ("tensor", [producer[name]])
        else:
            matched = [node for node, module in own.items() if module == name or module.startswith(name + ".")]
            if not matched:
                # the fix names real layers: trtopt has no command that lists them
                compute = [n.name for n in model.graph.node if n.op_type in COMPUTE_OP_TYPES] or sorted(nodes)
                modules = sorted(set(own.values()))
                examples = ", ".join(compute[:4]) + (f" (of {len(compute)})" if len(compute) > 4 else "")
                module_hint = f"a module path such as {modules[0]}" if modules else "a PyTorch module path"
                raise TrtoptError(f"--exclude names {name!r}, which is no node, tensor or PyTorch module of {model_name}",
                                  f"give a node name ({model_name} has e.g. {examples}), an activation tensor name, or "
                                  f"{module_hint}; or exclude by op type")
            resolved[name] = ("module", matched)
    return resolved
