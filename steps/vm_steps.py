"""Steps about the Proxmox VM (@deploy @gpu, and the GPU passthrough @failure scenarios).
Each step: one call into ``context.deployment`` (:mod:`provisioners.pipeline`) plus an assertion."""
from behave import given, step, then, when


def _problems(problems: list[str]) -> None:
    assert not problems, "\n".join(problems)


@given("the Proxmox host of the target passes the pre-flight checks")
def step_preflight(context):
    blocking = context.deployment.preflight()
    assert not blocking, "pre-flight found blocking problems:\n" + "\n".join(str(f) for f in blocking)


@when("the VM is deployed from the catalog")
def step_deploy_vm(context):
    context.vm_results = context.deployment.ensure_vm()


@when("a deployment of the VM from the catalog is attempted")
def step_attempt_deploy(context):
    context.error = context.deployment.deploy_expecting_failure()


@then("VM {vmid:d} exists on the node with the catalog's cores, memory and disk")
def step_vm_resources(context, vmid):
    assert context.deployment.vmid == vmid, f"the catalog's VM is {context.deployment.vmid}, not {vmid}"
    _problems(context.deployment.resource_problems())


@then("its configuration is set for GPU passthrough")
def step_passthrough_config(context):
    _problems(context.deployment.config_problems({row["setting"]: row["value"] for row in context.table}))


@then("cloud-init is configured with the catalog's user, SSH key and address")
def step_cloud_init(context):
    _problems(context.deployment.cloud_init_problems())


@then("the VM carries the deployer's managed marker")
def step_managed_marker(context):
    assert context.deployment.managed_marker_present(), "the VM has no managed marker"


@step("VM {vmid:d} is running")
def step_vm_running(context, vmid):
    state = context.deployment.vm_state()
    assert state == "running", f"VM {vmid} is {state}, expected running"


@then('the deployment stops with an error quoting "{text}"')
def step_error_quotes(context, text):
    assert text in str(context.error) + "\n".join(context.error.evidence.values()), \
        f"the error does not quote {text!r}:\n{context.error}"


@then("the error names the PCI device and says to check {what}")
def step_error_explains(context, what):
    missing = context.deployment.error_explanation_problems(context.error, what)
    _problems(missing)


@then("VM {vmid:d} does not exist on the node afterwards")
def step_vm_absent(context, vmid):
    state = context.deployment.vm_state()
    assert state == "absent", f"VM {vmid} is {state}: the failed deployment left it behind"
