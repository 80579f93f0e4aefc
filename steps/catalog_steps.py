"""Steps about the infrastructure catalog (@catalog). Each step: one call into
:class:`provisioners.pipeline.Deployment` (``context.deployment``) plus an assertion."""
from behave import given, then, when


def _problems(problems: list[str]) -> None:
    assert not problems, "\n".join(problems)


@given("the infrastructure catalog of the selected target")
def step_catalog_of_target(context):
    path = context.deployment.catalog_path
    assert path.is_file(), f"catalog {path} does not exist (choose another with -D catalog=PATH)"


@when("the catalog is loaded and validated")
def step_load_catalog(context):
    context.catalog = context.deployment.load_and_validate()


@then('it defines the VM "{name}" with')
def step_vm_defined_with(context, name):
    assert context.deployment.vm_name == name, \
        f"this run acts on VM {context.deployment.vm_name!r}, the scenario on {name!r}"
    _problems(context.deployment.vm_setting_mismatches({row["setting"]: row["value"] for row in context.table}))


@then("its resources are stated in explicit units")
def step_resources_units(context):
    _problems(context.deployment.unit_problems({row["setting"]: row["unit"] for row in context.table}))


@then("the GPU is given both as a resource mapping and as a raw PCI address")
def step_gpu_reference(context):
    _problems(context.deployment.gpu_reference_problems())


@then("its boot image is referenced by volume, download URL and sha256, and by the installer ISO on a real host")
def step_image_reference(context):
    _problems(context.deployment.image_reference_problems())


@then("yamllint finds no problem in the catalog file")
def step_yamllint(context):
    _problems(context.deployment.lint_problems())


@then("the deployment plan derived from the catalog is attached to the report")
def step_catalog_plan(context):
    assert context.deployment.catalog_plan().strip(), "the catalog plan is empty"
