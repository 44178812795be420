"""CoFi structured pruning (Xia et al. 2022) for stock Hugging Face BERT encoders.

Recipe (adapters, if any, must be added before ``attach_gates``)::

    pruner = L0Pruner(model.config, target_sparsity=0.6, warmup_steps=n).to(device)
    opt = torch.optim.AdamW(pruner.param_groups(lr=gate_lr, lambda_lr=lambda_lr))  # lambdas: maximize=True
    with attach_gates(model, pruner):          # train forwards sample gates, eval forwards are deterministic
        for step, batch in ...:
            loss = task_loss(model(**batch))   # forward first (it also clamps log_alpha) ...
            loss = loss + pruner.lagrangian_loss(step).loss   # ... then the constraint
            loss.backward(); model_opt.step(); opt.step(); zero grads
        gates = pruner.deterministic_gates()
    structure = export_pruned(model, gates)    # in place; also in model.config.pda_structure
    pda.checkpoint.save_model(model, out_dir)  # load_model calls apply_structure
"""

from .export import (
    ConstantLayer,
    ConstantSublayer,
    PrunedAttention,
    PrunedIntermediate,
    apply_structure,
    export_pruned,
)
from .gates import GATE_GROUPS, HardConcreteGate, L0Pruner, LagrangianTerms
from .masking import GateHandles, attach_gates, check_gates, has_gate_hooks
from .sparsity import (
    encoder_weight_count,
    expected_encoder_weights,
    full_encoder_weights,
    lagrangian_term,
    structure_from_gates,
    structure_full_weights,
    structure_sparsity,
    structure_weights,
    target_at,
    validate_target_sparsity,
)

__all__ = [
    "GATE_GROUPS",
    "ConstantLayer",
    "ConstantSublayer",
    "GateHandles",
    "HardConcreteGate",
    "L0Pruner",
    "LagrangianTerms",
    "PrunedAttention",
    "PrunedIntermediate",
    "apply_structure",
    "attach_gates",
    "check_gates",
    "encoder_weight_count",
    "expected_encoder_weights",
    "export_pruned",
    "full_encoder_weights",
    "has_gate_hooks",
    "lagrangian_term",
    "structure_from_gates",
    "structure_full_weights",
    "structure_sparsity",
    "structure_weights",
    "target_at",
    "validate_target_sparsity",
]
