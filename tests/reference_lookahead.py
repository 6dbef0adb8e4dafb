"""NumPy transcription of lookahead with a fixed α (paper, Algorithm 1; seed 004).

``lookahead(inner_rule, sync_period, alpha)`` turns any rule of ``reference.py`` (contract:
``step(theta, state, grad_fn, t, **hp) -> (theta, state)``, ``t = 1, 2, ...``) into the rule
of the wrapped optimizer: the inner rule steps every t; after the step of every t that is a
multiple of k the slow weights move, φ ← φ + α(θ − φ), and θ jumps to φ.
"""


def lookahead(inner_rule, sync_period=5, alpha=0.5):
    def rule(theta, state, grad_fn, t, **hp):
        slow = state.get("slow", theta.copy())
        theta, inner = inner_rule(theta, state.get("inner", {}), grad_fn, t, **hp)
        if t % sync_period == 0:
            slow = slow + alpha * (theta - slow)
            theta = slow.copy()
        return theta, {"slow": slow, "inner": inner}

    return rule
