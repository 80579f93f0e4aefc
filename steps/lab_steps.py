"""Steps that arrange the lab (fault injection, GPU profiles); only for ``-D target=lab``.
Scenarios using them are tagged @lab and skipped on a real host (see environment.py)."""
from behave import given, step, then


@given("the lab Proxmox host has no VM {vmid:d}")
def step_lab_no_vm(context, vmid):
    context.deployment.lab_call("ensure_no_vm", vmid)


@given('the lab Proxmox host will fail with "{error}"')
def step_lab_fail(context, error):
    context.deployment.lab_call("inject_pve_failure", error)


@given("the lab Proxmox host has an unmanaged VM {vmid:d}")
def step_lab_unmanaged(context, vmid):
    context.unmanaged_before = context.deployment.lab_call("create_unmanaged_vm", vmid)


@step('the lab GPU profile is "{profile}"')
def step_lab_profile(context, profile):
    context.deployment.lab_call("set_gpu_profile", profile)


@then("the unmanaged VM {vmid:d} is unchanged")
def step_unmanaged_unchanged(context, vmid):
    now = context.deployment.lab_call("vm_config", vmid)
    assert now == context.unmanaged_before, \
        f"VM {vmid} changed:\nbefore {context.unmanaged_before}\nafter  {now}"
