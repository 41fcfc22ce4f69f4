"""Pruning: zeros (unstructured), removed channels (structured, Torch-Pruning) and 2:4 sparsity.

The lesson these variants teach is measured, not assumed: zeros in a dense tensor cost exactly
what non-zeros cost; removing channels shrinks the arithmetic but a GPU at batch 1 is rarely
limited by it; 2:4 sparsity needs the sparse tensor cores of Ampere and newer GPUs.
"""
from __future__ import annotations

import importlib.util

import torch
from torch import nn
from torch.nn.utils import prune

from optlab.compress.base import (FINETUNE, CompressionRefused, Param, Variant, classifier, layer_kinds, method, number,
                                  of_layers, one_of, require, weighted_layers)
from optlab.compress.context import Context
from optlab.compress.training import fit, steps_for


def finetune(model: nn.Module, spec: dict, ctx: Context) -> dict:
    """A short fine-tune at a fraction of the run's learning rate, on the run's pipeline."""
    steps = steps_for(ctx, spec["finetune_epochs"], spec["finetune_steps"])
    return fit(model, ctx, steps=steps, lr_at_256=ctx.lr * spec["lr_scale"], optimizer=ctx.optimizer,
               weight_decay=ctx.weight_decay)


def _finetune_note(done: dict) -> str:
    return (f"fine-tuned {done['steps']} steps ({done['images']} images) at the run's pipeline" if done["steps"]
            else "not fine-tuned: accuracy is what pruning alone leaves")


# -- unstructured ----------------------------------------------------------------------------------
@method("prune_unstructured", title="unstructured pruning",
        summary="global magnitude pruning: the smallest weights of every Conv/Linear set to zero (shapes unchanged)",
        params={"sparsity": Param(0.5, "a fraction in (0, 1), e.g. 0.5", number(0, 1, low_open=True, high_open=True)),
                **FINETUNE})
def prune_unstructured(model: nn.Module, spec: dict, ctx: Context) -> Variant:
    targets = [(m, "weight") for _, m in weighted_layers(model)]
    prune.global_unstructured(targets, pruning_method=prune.L1Unstructured, amount=spec["sparsity"])
    done = finetune(model, spec, ctx)        # the masks stay applied while fine-tuning
    for m, name in targets:
        prune.remove(m, name)                # make the zeros permanent: plain weights again
    zeros = sum(int((m.weight == 0).sum()) for m, _ in targets)
    total = sum(m.weight.numel() for m, _ in targets)
    return Variant(
        name=f"unstructured {spec['sparsity']:.0%}", model=model, device=ctx.device,
        layers_converted=of_layers(len(targets), model) + " zeroed in place",
        notes=[_finetune_note(done),
               "unstructured zeros: dense kernels multiply zeros like any other weight, so no speed-up is "
               "expected at any batch size; the measured ratios below say what happened",
               "the saved file does not shrink either: zeros are stored densely"],
        extra={"weight_sparsity": zeros / total, "pruned_weights": total, "finetune": done})


# -- structured (Torch-Pruning) ------------------------------------------------------------------------
def _torch_pruning_missing() -> str | None:
    if importlib.util.find_spec("torch_pruning") is None:
        return "needs Torch-Pruning, which is not installed here (pip install torch-pruning)"
    return None


@method("prune_structured", title="structured (channel) pruning",
        summary="channel pruning with Torch-Pruning: whole channels removed across dependent layers "
                "(the network really shrinks); the classifier keeps its outputs",
        params={"ratio": Param(0.3, "a fraction of channels to remove in (0, 1), e.g. 0.3",
                               number(0, 1, low_open=True, high_open=True)),
                "round_to": Param(8, "a whole number of channels 1..64 (keeps widths friendly to GPU kernels)",
                                  number(1, 64, integer=True)),
                **FINETUNE},
        library=_torch_pruning_missing)
def prune_structured(model: nn.Module, spec: dict, ctx: Context) -> Variant:
    require("prune_structured", spec, ctx)
    import torch_pruning as tp
    model.eval()  # tracing runs a forward pass: batch-norm statistics must not move
    head = classifier(model)
    before = {name: tuple(m.weight.shape) for name, m in weighted_layers(model)}
    example = ctx.example(ctx.device)
    pruner = tp.pruner.MetaPruner(model, example, importance=tp.importance.GroupMagnitudeImportance(p=2),
                                  pruning_ratio=spec["ratio"], round_to=spec["round_to"],
                                  ignored_layers=[head] if head is not None else [])
    pruner.step()
    narrowed = sum(1 for name, m in weighted_layers(model) if tuple(m.weight.shape) != before.get(name))
    done = finetune(model, spec, ctx)
    return Variant(
        name=f"structured {spec['ratio']:.0%} channels", model=model, device=ctx.device,
        layers_converted=f"{narrowed} of {len(before)} {layer_kinds(model)} narrowed",
        notes=[_finetune_note(done),
               "channels removed: parameters and MACs really drop; whether time drops depends on the batch "
               "(a GPU at batch 1 is launch-bound): the measured ratios below say what happened",
               "reload with optlab.compress.checkpoint.fit_to_state_dict: the architecture is narrower than the registry's"],
        extra={"finetune": done, "ignored_layers": 1 if head is not None else 0})


# -- 2:4 semi-structured -----------------------------------------------------------------------------
def _sparse_tensor_cores(info, spec) -> str | None:
    if not info.is_gpu:
        return (f"2:4 semi-structured sparsity runs on NVIDIA GPUs with compute capability 8.0+ (Ampere or newer) "
                f"only; this device is {info.label}. Use prune_unstructured or prune_structured on the CPU")
    if info.capability is not None and tuple(info.capability) < (8, 0):
        return (f"2:4 semi-structured sparsity needs compute capability 8.0+ (sparse tensor cores); "
                f"{info.name} is {info.capability[0]}.{info.capability[1]}")
    return None


def mask_2to4(weight: torch.Tensor) -> torch.Tensor:
    """Keep the 2 largest-magnitude weights in every group of 4 along the input dimension."""
    groups = weight.detach().abs().reshape(-1, 4)
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(1, groups.topk(2, dim=1).indices, True)
    return keep.reshape(weight.shape)


@method("prune_2to4", title="2:4 sparsity",
        summary="2:4 semi-structured sparsity (2 of every 4 weights zero) on Linear layers, run by the sparse "
                "tensor cores of compute capability 8.0+ GPUs; convolutions stay dense",
        params={"dtype": Param("fp16", "fp16 or bf16 (the sparse kernels' input types)", one_of("fp16", "bf16"))},
        needs=_sparse_tensor_cores)
def prune_2to4(model: nn.Module, spec: dict, ctx: Context) -> Variant:
    require("prune_2to4", spec, ctx)
    from torch.sparse import to_sparse_semi_structured
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[spec["dtype"]]
    model = model.to(dtype).eval()
    converted, skipped = 0, []
    for name, m in weighted_layers(model):
        rows, cols = m.weight.shape[:2]
        # The kernels need at least 32 rows and 64 columns, in multiples of those.
        if not isinstance(m, nn.Linear) or rows % 32 or cols % 64:
            skipped.append(name)
            continue
        dense = m.weight.detach() * mask_2to4(m.weight)
        m.weight = nn.Parameter(to_sparse_semi_structured(dense), requires_grad=False)
        converted += 1
    if converted == 0:
        raise CompressionRefused(
            "prune_2to4: no layer of this model can use 2:4 kernels (they apply to Linear weights of at least "
            f"32 x 64, in multiples of those; {len(skipped)} Conv/Linear layers do not qualify)")
    return Variant(
        name=f"2:4 sparse ({spec['dtype']})", model=model, device=ctx.device, input_dtype=dtype,
        layers_converted=of_layers(converted, model) + " to 2:4",
        notes=["not fine-tuned: half of each converted weight is zero, accuracy may drop",
               f"runs in {spec['dtype']}: compare with the {spec['dtype']} variant to separate sparsity from precision",
               "convolutions stay dense (the 2:4 kernels are matrix multiplications)"],
        extra={"converted_layers": converted, "dense_layers": len(skipped)})
