"""Synthesizing the serving stacks without a model, for commands that deploy none of them.

The CDK CLI synthesizes the whole app even for ``cdk bootstrap`` and ``cdk destroy`` (it reads
the stacks' environments and names from the cloud assembly), so on a clean checkout those
commands would stop at "No exported model". With ``-c without_model=true`` the serving stacks
are built around a placeholder model reference instead, and each gets a CloudFormation rule
that fails every create, update and change set of that template: such an assembly can
bootstrap an environment or name a stack to delete, but it can never be deployed by mistake.
(An empty stack would not do: the CLI deletes a deployed stack whose new template has no
resources.)
"""

from __future__ import annotations

from aws_cdk import CfnParameter, CfnRule, CfnRuleAssertion, Fn, Stack

from stacks.model_source import ModelSource, ModelSourceError, model_key

_NO_SHA256 = "0" * 64
NO_MODEL = ModelSource.published(key=model_key(_NO_SHA256), sha256=_NO_SHA256)
"""A model reference nothing will ever serve: the digest of no model."""

GUARD_PARAMETER = "SynthesizedWithoutModel"
GUARD_RULE = "NeverDeployWithoutModel"
GUARD_MESSAGE = (
    "This template was synthesized with -c without_model=true (for cdk bootstrap/destroy) "
    "and must not be deployed: run `make model`, then `make deploy`."
)
_TRUE = ("true", "1", "yes")
_FALSE = ("false", "0", "no")


def parse_flag(name: str, value: object) -> bool:
    """A boolean CDK context value: ``-c name=true`` arrives as the string ``"true"``."""
    if value is None or isinstance(value, bool):
        return bool(value)
    text = str(value).strip().lower()
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    raise ModelSourceError(f"-c {name}= takes true or false, got {value!r}")


def guard_against_deploy(stack: Stack) -> None:
    """Make CloudFormation refuse to create or update ``stack`` from this template.

    The parameter admits only ``"true"`` and the rule requires ``"false"``, so no
    ``--parameters`` override can satisfy it; rules are evaluated before any resource changes.
    """
    guard = CfnParameter(
        stack,
        GUARD_PARAMETER,
        type="String",
        default="true",
        allowed_values=["true"],
        description="Set by -c without_model=true; see the NeverDeployWithoutModel rule.",
    )
    CfnRule(
        stack,
        GUARD_RULE,
        assertions=[
            CfnRuleAssertion(
                assert_=Fn.condition_equals(guard.value_as_string, "false"),
                assert_description=GUARD_MESSAGE,
            )
        ],
    )
