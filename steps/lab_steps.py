"""Steps that arrange the lab: fault-injected Proxmox hosts and GPU profiles; only for
``-D target=lab``. Scenarios using them are tagged @lab and skipped on a real host (environment.py).
Each step: one call into ``context.deployment`` plus context bookkeeping or an assertion."""
from behave import given, step, then


@given('a lab Proxmox host with the fault "{fault}"')
def step_lab_fault_host(context, fault):
    context.unmanaged_before = context.deployment.use_lab_fault_host(fault)


@then("the unmanaged VM {vmid:d} is unchanged")
def step_unmanaged_unchanged(context, vmid):
    now = context.deployment.lab_vm_snapshot(vmid)
    assert now and now == context.unmanaged_before, \
        f"VM {vmid} changed:\nbefore {context.unmanaged_before}\nafter  {now}"


@step('the lab GPU profile is "{profile}"')
def step_lab_profile(context, profile):
    context.deployment.set_lab_profile(profile)
