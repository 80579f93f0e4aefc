"""Steps about the guest stack (@deploy @driver @vllm @ollama @idempotency and the driver
@failure scenario). Each step: one call into ``context.deployment`` plus an assertion."""
from behave import given, then, when


@given("VM {vmid:d} is running and reachable over SSH")
def step_reachable(context, vmid):
    assert context.deployment.vmid == vmid, f"the catalog's VM is {context.deployment.vmid}, not {vmid}"
    context.guest_identity = context.deployment.reach()


@then("VM {vmid:d} is still running and reachable over SSH")
def step_still_reachable(context, vmid):
    assert context.deployment.reach() == context.guest_identity, f"VM {vmid} answers as another machine now"


@when("the guest is bootstrapped")
def step_bootstrap(context):
    context.deployment.bootstrap_guest()


@when('the "{component}" component is converged')
def step_converge(context, component):
    context.component_results = context.deployment.converge(component)


@when('converging the "{component}" component is attempted')
def step_converge_attempt(context, component):
    context.error = context.deployment.converge_expecting_failure(component)


@then("every component reports changed or ok, none failed")
def step_none_failed(context):
    failed = context.deployment.failed_records(context.scenario.name)
    assert not failed, "failed operations:\n" + "\n".join(failed)


@then('the "{component}" component reports changed or ok')
def step_component_ok(context, component):
    failed = [r for r in context.component_results if r.status == "failed"]
    assert not failed, f"{component}: " + "; ".join(str(r) for r in failed)


@then("the deployment summary is attached to the report")
def step_summary_attached(context):
    assert context.deployment.summary_text(context.scenario.name).strip(), "nothing was deployed"


@given("the main PID and start time of vllm.service and ollama.service are recorded")
def step_snapshot(context):
    context.service_snapshot = context.deployment.snapshot_services(["vllm.service", "ollama.service"])


@when("the deployment runs again from the catalog")
def step_redeploy(context):
    context.redeploy_records = context.deployment.redeploy()


@then("the VM and every component report 0 changed")
def step_zero_changed(context):
    changed = [f"{r.component}: {r.result}" for r in context.redeploy_records if r.result.status != "ok"]
    assert not changed, "the second deployment changed:\n" + "\n".join(changed)


@then("vllm.service and ollama.service have the same main PID and start time")
def step_same_services(context):
    after = context.deployment.snapshot_services(["vllm.service", "ollama.service"])
    assert after == context.service_snapshot, f"services restarted:\nbefore {context.service_snapshot}\nafter  {after}"


@given("VM {vmid:d} is re-created from the catalog and its guest bootstrapped")
def step_recreate(context, vmid):
    assert context.deployment.vmid == vmid, f"the catalog's VM is {context.deployment.vmid}, not {vmid}"
    context.deployment.recreate_vm()


@then("the deployment stops at the driver with the command, its exit code, the last log lines and a remedy")
def step_driver_failure_explained(context):
    problems = context.deployment.driver_failure_problems(context.error)
    assert not problems, "\n".join(problems) + f"\n\nthe error:\n{context.error}"


@then("the driver error is diagnosed as a Secure Boot rejection, with its remedy")
def step_secure_boot_diagnosis(context):
    problems = context.deployment.secure_boot_error_problems(context.error)
    assert not problems, "\n".join(problems) + f"\n\nthe error:\n{context.error}"


@then("the re-run reports every component changed or ok, none failed")
def step_rerun_ok(context):
    failed = [f"{r.component}: {r.result}" for r in context.redeploy_records if r.result.status == "failed"]
    assert not failed, "the re-run failed:\n" + "\n".join(failed)


@then("VM {vmid:d} was not re-created")
def step_not_recreated(context, vmid):
    now = context.deployment.reach()
    assert now == context.guest_identity, f"VM {vmid} was re-created:\nbefore {context.guest_identity}\nnow    {now}"
