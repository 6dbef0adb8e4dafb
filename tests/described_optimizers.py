"""Optimizers whose description (gradx._training.identity.optimizer_arguments) test_checkpoint
compares across processes: every named gradx optimizer and the wrappers around them."""

import optax

import gradx
import gradx.compat.optax


def optimizers():
    out = {name: make(0.01) for name, make in gradx.OPTIMIZERS.items()}
    out.update(
        lookahead=gradx.lookahead(gradx.adam(1e-3, state_dtype="int8"), sync_period=3),
        adamw_mask=gradx.adamw(1e-3, mask={"w": True, "b": False}),
        schedule=gradx.adam(optax.warmup_cosine_decay_schedule(0.0, 1e-3, 10, 100)),
        gradx_schedule=gradx.adam(gradx.schedules.linear_schedule(0.0, 1e-3, 10)),
        chain=optax.chain(optax.clip_by_global_norm(1.0), gradx.sgd(0.1, 0.9, nesterov=True)),
        multi_steps=optax.MultiSteps(gradx.adam(1e-3), 4).gradient_transformation(),
        groups=gradx.param_groups(gradx.adamw(1e-3), embed=("embed", {"learning_rate": 1e-4})),
        compat=gradx.compat.optax.adamw(1e-3),
    )
    return out
