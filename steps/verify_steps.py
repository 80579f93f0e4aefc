"""Read-only verification steps (@verify). Each step: one call into ``context.deployment``
(the verify ladder over the run's SSH session) plus an assertion."""
from behave import then, when

AREAS = {"GPU": "gpu", "driver": "driver", "vLLM": "vllm", "Ollama": "ollama"}


@when("the {area} checks of the verify ladder run")
def step_run_ladder(context, area):
    assert area in AREAS, f"unknown verify area {area!r}; known: {', '.join(AREAS)}"
    context.checks = context.deployment.run_verify_ladder(AREAS[area])


@then("every check passes, each with its evidence attached")
def step_checks_pass(context):
    problems = context.deployment.check_problems([row["check"] for row in context.table])
    assert not problems, "\n".join(problems)


@then("the GPU checks of the verify ladder still pass")
def step_gpu_still_ok(context):
    failed = [c for c in context.deployment.run_verify_ladder("gpu") if not c.passed]
    assert not failed, "\n".join(f"{c.name}: expected {c.expected}, got {c.actual}" for c in failed)
